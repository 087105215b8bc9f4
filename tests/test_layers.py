"""Dependencies point one way: gentron (the library) <- eval <- ablations <- reports, with slurm beside
ablations. The library imports nothing of the harness; the grid runner imports nothing of the UI."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HARNESS = ("ablations", "eval", "reports", "slurm")
DEV = ("tests", "benchmarks")  # not installed: the product never needs them

# package -> top-level packages of this repository it must never import (anywhere in its source,
# lazily inside a function included)
FORBIDDEN = {
    "gentron": HARNESS + DEV,
    "eval": ("ablations", "reports", "slurm") + DEV,
    "ablations": ("reports",) + DEV,
    "slurm": ("ablations", "eval", "reports") + DEV,
    "reports": DEV,
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_direction(package):
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        bad = imported_packages(path) & set(FORBIDDEN[package])
        if bad:
            offenders.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    assert offenders == []


def test_importing_the_library_pulls_in_no_harness_package():
    code = ("import importlib, pkgutil, sys, gentron\n"
            "for m in pkgutil.walk_packages(gentron.__path__, 'gentron.'):\n"
            "    importlib.import_module(m.name)\n"
            f"print(sorted(n for n in sys.modules if n.split('.')[0] in {HARNESS!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_the_scanner_sees_lazy_imports(tmp_path):
    """The static check would be worthless if it missed an import inside a function."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from slurm.launcher import x\n    import reports.results\n")
    assert imported_packages(source) == {"slurm", "reports"}
