"""Every package the code imports is declared in pyproject.toml: nothing works only because another
dependency happens to pull it in today."""
from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from tests.test_layers import imported_packages

REPO = Path(__file__).resolve().parent.parent
OWN = {"gentron", "ablations", "eval", "reports", "slurm", "benchmarks", "tests"}
LIBRARY_FOLDERS = ("gentron", "ablations", "eval", "reports", "slurm")  # what `pip install .` must run
DEV_FOLDERS = ("tests", "benchmarks")                                    # what the dev extra adds


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extra: str | None) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return {_canonical(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in specs}


def undeclared(folders: tuple[str, ...], allowed: set[str]) -> list[str]:
    distributions = metadata.packages_distributions()
    missing = []
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for module in sorted(imported_packages(path) - OWN - set(sys.stdlib_module_names)):
                owners = {_canonical(d) for d in distributions.get(module, [])}
                if not owners & allowed:
                    missing.append(f"{path.relative_to(REPO)}: {module} (from {sorted(owners) or 'nowhere'})")
    return missing


def test_the_library_imports_only_declared_dependencies():
    assert undeclared(LIBRARY_FOLDERS, declared(None)) == []


def test_tests_and_benchmarks_import_only_declared_dependencies():
    assert undeclared(LIBRARY_FOLDERS + DEV_FOLDERS, declared("dev")) == []
