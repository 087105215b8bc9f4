"""The installed commands ([project.scripts]): `pip install -e .` puts each beside the interpreter, and
each answers --help with exit 0 and its own name (or the `python ...` command it is the same as)."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# command -> what its --help names
NAMES = {
    "gentron-grid": "python ablations/run.py",
    "gentron-train": "python -m gentron.train",
    "gentron-eval": "gentron-eval",
    "gentron-browse": "gentron-browse",
    "gentron-vote": "gentron-vote",
}


def test_every_declared_command_is_tested():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(NAMES)


@pytest.mark.parametrize("command", sorted(NAMES))
def test_command_is_installed_and_answers_help(command, tmp_path):
    script = BIN / command
    assert script.is_file(), f"{script} is missing: run `{BIN / 'pip'} install -e .` to install the commands"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert NAMES[command] in proc.stdout


def test_eval_lists_and_routes_to_every_evaluator(tmp_path):
    import importlib

    from eval.cli import EVALUATORS

    listed = subprocess.run([str(BIN / "gentron-eval"), "--help"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120).stdout
    for metric, (module, _) in EVALUATORS.items():
        assert f"  {metric} " in listed
        assert callable(importlib.import_module(module).main)
    proc = subprocess.run([str(BIN / "gentron-eval"), "judge", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m eval.judge" in proc.stdout


def test_eval_refuses_an_unknown_metric_in_one_line(tmp_path):
    proc = subprocess.run([str(BIN / "gentron-eval"), "nope"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gentron-eval: error: unknown metric 'nope'; give one of judge, compbench, fid, clip_score, coco, geneval, "
        "vbench, fvd (see gentron-eval --help)"]
