"""Speed and memory benchmarks, run by hand from the checkout (`make benchmarks`, or one of them:
`python -m benchmarks.<name>`; those that need no test support also run as `python benchmarks/<name>.py`)."""
