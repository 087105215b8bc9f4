"""The test suite. A package so that `tests.support` is imported by the same name from the tests,
the benchmarks (`python -m benchmarks.<name>` from the checkout) and the command line; pytest puts
the checkout first on the import path (its rootdir), ahead of any installed top-level `tests`."""
