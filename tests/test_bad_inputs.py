"""Every bad input a user can give a command line ends in one clear line (the problem and the fix),
a non-zero exit and no traceback, before anything runs. One table, one row per bad input.

Rows run each command's `main(argv)` in this process (a Python command's startup is seconds: a few
rows also run the real script as a subprocess). An outcome is one of:
  clear      exit != 0, the expected message on a line that says `error:`, no traceback
  traceback  an exception escaped main (or "Traceback" on stderr)
  silent     exit 0: the bad input was accepted
  unclear    exit != 0 without the expected message
docs/reliability.md reports the counts.
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gentron.config import default_config, save_config
from gentron.data import compshapes as cs

REPO = Path(__file__).resolve().parent.parent
MAINS = {"run": "ablations.launch", "train": "gentron.train", "generate": "gentron.generate", "judge": "eval.judge",
         "compbench": "eval.compbench.__main__", "fid": "eval.fid", "clip_score": "eval.clip_score",
         "study": "reports.study"}

# a study of two sample folders of the `paths` fixture, for the `study` rows
STUDY = ["--db", "{tmp}/votes.sqlite", "create", "--name", "x", "--system", "a={tmp}/samples/good",
         "--system", "b={tmp}/samples/grayscale"]

# (command, argv, expected message). {tmp}, {config}, {prompts:<name>}, {samples:<name>} and {file} are
# filled in by the `paths` fixture. `run` rows are dry runs (the plan checks everything: nothing may
# slip through to a cell) with runs_dir={tmp}/runs; `train` rows train a tiny model, in case one is
# accepted.
ROWS = [
    # the grid runner: every key and combination checked by the plan (dry run included)
    ("run", ["train.grad_clip=-1"], "train.grad_clip=-1.0 must be positive"),
    ("run", ["train.grad_clip=0"], "train.grad_clip=0.0 must be positive"),
    ("run", ["train.grad_clip=nan"], "train.grad_clip=nan must be positive"),
    ("run", ["model.depth=0"], "model.depth=0 must be at least 1"),
    ("run", ["model.num_heads=0"], "model.num_heads=0 must be at least 1"),
    ("run", ["model.num_heads=5"], "model.num_heads=5 does not divide the width 48"),
    ("run", ["model.hidden_size=50"], "model.hidden_size=50 must be a multiple of 4"),
    ("run", ["model.mlp_hidden_size=0"], "model.mlp_hidden_size=0 must be at least 1"),
    ("run", ["model.patch_size=4"], "model.patch_size=4 disagrees with model.size='CS/2'"),
    ("run", ["data.resolution=21"], "data.resolution=21 is not divisible by 2"),
    ("run", ["data.resolution=0"], "data.resolution=0 must be positive"),
    ("run", ["data.num_train=0"], "data.num_train=0 must be positive"),
    ("run", ["data.fps=0"], "data.fps=0.0 must be positive"),
    ("run", ["data.categories=[colour]"], "did you mean 'color'"),
    ("run", ["data.categories=[]"], "data.categories=[] is empty"),
    ("run", ["sample.seeds=[]"], "sample.seeds=[] is empty"),
    ("run", ["sample.seeds=[1,1]"], "sample.seeds=[1, 1] repeats a seed"),
    ("run", ["sample.seeds=[-3]"], "sample.seeds[0]=-3 must be >= 0"),
    ("run", ["sample.cfg_scale=-1"], "sample.cfg_scale=-1.0 must be >= 0"),
    ("run", ["sample.mfg_scale=1.2"], "sample.mfg_scale=1.2 needs data.video=true"),
    ("run", ["data.video=true", "sample.mfg_scale=-1"], "sample.mfg_scale=-1.0 must be >= 0"),
    ("run", ["sample.steps=0"], "sample.steps=0 must be positive"),
    ("run", ["train.lr=0"], "train.lr=0.0 must be positive"),
    ("run", ["train.lr=nan"], "train.lr=nan must be a finite number"),
    ("run", ["train.lr=inf"], "train.lr=inf must be a finite number"),
    ("run", ["train.lr=5"], "train.lr=5.0 is above 1"),
    ("run", ["train.batch_size=0"], "train.batch_size=0 must be positive"),
    ("run", ["train.steps=-5"], "train.steps=-5 must be positive"),
    ("run", ["train.weight_decay=-1"], "train.weight_decay=-1.0 must be >= 0"),
    ("run", ["train.warmup_steps=-1"], "train.warmup_steps=-1 must be >= 0"),
    ("run", ["train.ema_decay=2"], "train.ema_decay=2.0 must be in [0, 1]"),
    ("run", ["train.caption_dropout=-0.1"], "train.caption_dropout=-0.1 must be in [0, 1]"),
    ("run", ["vae.scaling_factor=0"], "vae.scaling_factor=0.0 must be positive"),
    ("run", ["model.timestep_std=nan"], "model.timestep_std=nan must be a finite number"),
    ("run", ["seeds=[]"], "seeds=[] is empty"),
    ("run", ["seeds=[-1]"], "train.seed=-1 must be >= 0"),
    ("run", ["data.seed=-1"], "data.seed=-1 must be >= 0"),
    ("run", ["local.workers=0"], "local.workers=0 must be at least 1"),
    ("run", ["grid=nope"], "unknown grid 'nope'"),
    ("run", ["--grid", "conditioning"], "'--grid' is not an override"),
    ("run", ["train.steps"], "'train.steps' is not an override"),
    ("run", ["runs_dir={file}"], "is a file, not a folder"),
    # training and sampling one cell
    ("train", ["/nonexistent/cell.yaml", "--run-dir", "{tmp}/run"], "config /nonexistent/cell.yaml does not exist"),
    ("train", ["{config}", "--run-dir", "{tmp}/run", "train.grad_clip=-1"], "train.grad_clip=-1.0 must be positive"),
    ("train", ["{config}", "--run-dir", "{tmp}/run", "train.stepz=3"], "did you mean 'train.steps'"),
    ("train", ["{config}", "--run-dir", "{tmp}/run", "train.steps"], "'train.steps' is not an override"),
    ("generate", ["/nonexistent/cell.yaml", "--checkpoint", "{tmp}/ckpt.pt", "--out", "{tmp}/out"],
     "config /nonexistent/cell.yaml does not exist"),
    ("generate", ["{config}", "--checkpoint", "{tmp}/ckpt.pt", "--out", "{tmp}/out", "--prompts", "{prompts:empty}"],
     "holds no prompts"),
    ("generate", ["{config}", "--checkpoint", "{tmp}/ckpt.pt", "--out", "{tmp}/out", "--prompts", "{prompts:blank}"],
     "holds no prompts"),
    ("generate", ["{config}", "--checkpoint", "{tmp}/ckpt.pt", "--out", "{tmp}/out", "--prompts", "{tmp}/none.txt"],
     "prompt file"),
    ("generate", ["{config}", "--checkpoint", "{tmp}/ckpt.pt", "--out", "{tmp}/out", "--prompts", "{prompts:no_key}"],
     "no_key.jsonl:1 lacks 'prompt'"),
    ("generate", ["{config}", "--checkpoint", "{tmp}/ckpt.pt", "--out", "{tmp}/out", "--prompts", "{prompts:bad_json}"],
     "bad_json.jsonl:2 is not valid JSON"),
    ("generate", ["{config}", "--checkpoint", "{tmp}/ckpt.pt", "--out", "{tmp}/out", "--prompt-set", "nope"],
     "unknown prompt set 'nope'"),
    ("generate", ["{config}", "--checkpoint", "{tmp}/ckpt.pt", "--out", "{tmp}/out", "--prompt-set", "compshapes_test"],
     "ckpt.pt does not exist"),
    # evaluators
    ("judge", ["/nonexistent"], "sample folder /nonexistent does not exist"),
    ("judge", ["{samples:string_seed}"], "samples.jsonl:1: seed='42' must be an integer"),
    ("judge", ["{samples:traversal}"], "samples.jsonl:1: file '../../../../etc/hostname' is outside"),
    ("judge", ["{samples:absolute}"], "samples.jsonl:1: file '/etc/hostname' is outside"),
    ("judge", ["{samples:bad_json}"], "samples.jsonl:1 is not valid JSON"),
    ("judge", ["{samples:empty}"], "lists no samples"),
    ("judge", ["{samples:foreign_prompt}"], "a cat on the moon"),
    ("judge", ["{samples:grayscale}"], "is grayscale"),
    ("judge", ["{samples:not_an_image}"], "is not a readable image"),
    ("compbench", ["{samples:good}", "--batch-size", "-1"], "--batch-size: must be a positive integer, got '-1'"),
    ("compbench", ["{samples:good}", "--batch-size", "0"], "--batch-size: must be a positive integer, got '0'"),
    ("compbench", ["{samples:good}", "--vqa-image-size", "0"], "--vqa-image-size: must be a positive integer"),
    ("compbench", ["/nonexistent", "--category", "color"], "/nonexistent"),
    ("fid", ["/nonexistent", "--ref", "/nonexistent_ref"], "/nonexistent"),
    ("fid", ["{samples:good}", "--ref", "{tmp}", "--batch-size", "0"], "--batch-size: must be a positive integer"),
    ("fid", ["{samples:good}", "--ref", "{tmp}", "--n-boot", "-1"], "--n-boot: must be a positive integer"),
    ("fid", ["shard", "{samples:good}", "--index", "7"], "shard index 7 out of range"),
    ("fid", ["make-stats", "/nonexistent", "{tmp}/stats.npz"], "/nonexistent"),
    ("clip_score", ["/nonexistent"], "/nonexistent"),
    ("clip_score", ["{samples:good}", "--batch-size", "0"], "--batch-size: must be a positive integer"),
    # nothing given: argparse's usage line names what is missing
    ("train", [], "python -m gentron.train: error: the following arguments are required"),
    ("generate", [], "python -m gentron.generate: error: the following arguments are required: config, --checkpoint"),
    ("judge", [], "the following arguments are required: samples_dir"),
    ("fid", [], "the following arguments are required: samples_dir, --ref"),
    ("clip_score", [], "the following arguments are required: samples_dir"),
    ("compbench", [], "the following arguments are required: samples_dir"),
    # a blind study's stimulus format (reports.study create)
    ("study", [*STUDY, "--size", "0x64"], "'0x64' is not a size; give WIDTHxHEIGHT"),
    ("study", [*STUDY, "--size", "64x"], "'64x' is not a size; give WIDTHxHEIGHT"),
    ("study", [*STUDY, "--fit", "stretch"], "invalid choice: 'stretch'"),
    ("study", [*STUDY, "--frames", "1"], "1 is too small; give a whole number of at least 2"),
    ("study", [*STUDY, "--frame-ms", "5"], "5 is too small; give a whole number of at least 20"),
    ("study", [*STUDY, "--frames", "8"], "--frames 8: every image of this study is a still"),
    # evaluators: empty paths and names, numbers out of range, unknown names, damaged images
    ("fid", ["", "--ref", "{tmp}"], "argument samples_dir: is empty"),
    ("fid", ["{samples:good}", "--ref", ""], "argument --ref: is empty"),
    ("fid", ["{samples:good}", "--ref", "{file}"], "is a file but not statistics (.npz)"),
    ("fid", ["{samples:good}", "--ref", "{tmp}/none.npz"], "reference statistics"),
    ("fid", ["{samples:good}", "--ref", "{tmp}", "--seed", "-1"], "argument --seed: -1 is out of range"),
    ("fid", ["{samples:good}", "--ref", "{tmp}", "--device", "gpu"], "argument --device: 'gpu': not a device name"),
    ("fid", ["{samples:good}", "--ref", "{tmp}", "--cache-dir", ""], "argument --cache-dir: is empty"),
    ("fid", ["{samples:good}", "--ref", "{tmp}", "--cache-dir", "{file}"], "a_file is a file"),
    ("fid", ["{samples:good}", "--ref", "{tmp}", "--out", "{tmp}"], "is a folder"),
    ("fid", ["{samples:good}", "--ref", "{tmp}", "--log-level", "LOUD"], "argument --log-level: invalid choice"),
    ("fid", ["{samples:good}", "--ref", "{tmp}", "--no-antialias"], "add --crosscheck"),
    ("fid", ["{samples:good}", "--ref", "{tmp}"], "FID needs at least 2"),
    ("fid", ["{samples:not_an_image}", "--ref", "{tmp}"], "1 of 1 sample images are damaged"),
    ("fid", ["make-stats", "{tmp}", "{tmp}/stats.txt"], "does not end in .npz"),
    ("fid", ["make-stats", "{samples:not_an_image}", "{tmp}/stats.npz"], "1 of 1 reference images are damaged"),
    ("fid", ["shard", "{samples:good}", "--index", "-1"], "argument --index: -1 is out of range"),
    ("compbench", ["{samples:good}", "--blip", ""], "argument --blip: is empty"),
    ("compbench", ["{samples:good}", "--detector", ""], "argument --detector: is empty"),
    ("compbench", ["{samples:good}", "--clip", ""], "argument --clip: is empty"),
    ("compbench", ["{samples:good}", "--clip-pretrained", ""], "argument --clip-pretrained: is empty"),
    ("compbench", ["{samples:good}", "--checkout", "/nonexistent"], "argument --checkout: /nonexistent does not exist"),
    ("compbench", ["{samples:good}", "--official-dir", "{file}"], "a_file is a file"),
    ("compbench", ["{samples:good}", "--detector-confidence", "2"], "--detector-confidence: '2' is not a probability"),
    ("compbench", ["{samples:good}", "--detector-confidence", "nan"], "--detector-confidence: 'nan' is not a probability"),
    ("compbench", ["{samples:good}", "--category", "colour"], "argument --category: invalid choice: 'colour'"),
    ("compbench", ["{samples:not_an_image}", "--category", "color"], "1 of 1 sample images are damaged"),
    ("compbench", ["plan", "--checkout", "{tmp}", "--out", "{tmp}/plan", "--categories", "color", "color"],
     "color given twice"),
    ("clip_score", ["{samples:good}", "--model", ""], "argument --model: is empty"),
    ("clip_score", ["{samples:good}", "--pretrained", ""], "argument --pretrained: is empty"),
    ("clip_score", ["{samples:good}", "--device", "tpu"], "argument --device: 'tpu'"),
    ("clip_score", ["{samples:not_an_image}"], "1 of 1 sample images are damaged"),
    ("judge", [""], "argument samples_dir: is empty"),
    ("judge", ["{samples:good}", "--out", ""], "argument --out: is empty"),
    ("judge", ["{samples:good}", "--out", "{tmp}"], "is a folder"),
    # path traversal: a grid's name is its folder under runs_dir; a grid file outside ablations/grids is
    # named by its path ending in .yaml (its runs still go to <runs_dir>/<its stem>/)
    ("run", ["grid=../../../tmp/x/evil"], "grid='../../../tmp/x/evil' is not a grid name"),
    ("run", ["grid=/etc/passwd"], "grid='/etc/passwd' is not a grid name"),
    ("run", ["grid=conditioning/../../../x"], "is not a grid name"),
    ("run", ["grid=.."], "grid='..' is not a grid name"),
    ("run", ["grid=.hidden"], "grid='.hidden' is not a grid name"),
    ("run", ["grid={tmp}/none.yaml"], "none.yaml does not exist"),
    ("run", ["grid={tmp}/../-x.yaml"], "the file's name '-x' cannot name a runs folder"),
    ("run", ["train.init_from={grid:../../x,arms:{conditioning:adaln}}"], "grid='../../x' is not a grid name"),
    # a file where a folder is needed
    ("run", ["runs_dir={tmp}/file_runs"], "the grid's runs folder {tmp}/file_runs/conditioning is a file"),
    ("run", ["runs_dir={file}/runs"], "{file} is a file, not a folder"),
    ("train", ["{config}", "--run-dir", "{file}/run"], "{file} is a file where a folder is needed"),
]


TINY_TRAIN = ["train.steps=2", "train.batch_size=2", "data.num_train=4", "train.ckpt_every=1"]


def _good_image() -> Image.Image:
    prompt = cs.test_prompts("color", 1)[0]
    return Image.fromarray(cs.render(cs.scene_for_prompt(prompt, 0), 32)), prompt


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_inputs")
    save_config(default_config(), tmp / "cell.yaml")
    (tmp / "a_file").write_text("not a folder\n")
    prompts = tmp / "prompts"
    prompts.mkdir()
    (prompts / "empty.txt").write_text("")
    (prompts / "blank.txt").write_text("\n  \n\t\n")
    (prompts / "no_key.jsonl").write_text(json.dumps({"text": "a red circle"}) + "\n")
    (prompts / "bad_json.jsonl").write_text(json.dumps({"prompt": "a red circle"}) + "\n{oops\n")
    image, prompt = _good_image()
    row = {"file": "a.png", "prompt": prompt, "seed": 42, "index": 0, "category": "color", "prompt_id": 0}
    folders = {
        "good": [row],
        "string_seed": [{**row, "seed": "42"}],
        "traversal": [{**row, "file": "../../../../etc/hostname"}],
        "absolute": [{**row, "file": "/etc/hostname"}],
        "bad_json": "{not json\n",
        "empty": "",
        "foreign_prompt": [{**row, "prompt": "a cat on the moon"}],
        "grayscale": [row],
        "not_an_image": [row],
    }
    samples = {}
    for name, rows in folders.items():
        folder = tmp / "samples" / name
        folder.mkdir(parents=True)
        text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
        (folder / "samples.jsonl").write_text(text)
        if name == "grayscale":
            image.convert("L").save(folder / "a.png")
        elif name == "not_an_image":
            (folder / "a.png").write_bytes(b"\x89PNG truncated")
        else:
            image.save(folder / "a.png")
        samples[name] = folder
    (tmp / "file_runs").mkdir()
    (tmp / "file_runs" / "conditioning").write_text("a file where the grid's folder goes\n")
    return {"tmp": tmp, "config": tmp / "cell.yaml", "file": tmp / "a_file", "prompts": prompts, "samples": samples}


def fill(argv: list[str], paths: dict) -> list[str]:
    out = []
    for arg in argv:
        for kind in ("prompts", "samples"):
            if arg.startswith("{" + kind + ":"):
                name = arg[len(kind) + 2:-1]
                arg = str(paths["samples"][name]) if kind == "samples" else \
                    str(next(paths["prompts"].glob(name + ".*")))
        out.append(arg.replace("{tmp}", str(paths["tmp"])).replace("{config}", str(paths["config"]))
                   .replace("{file}", str(paths["file"])))
    return out


def outcome(code, err: str, message: str, escaped: BaseException | None = None) -> str:
    if escaped is not None or "Traceback" in err:
        return "traceback"
    if code in (0, None):
        return "silent"
    if not any(message in line and "error:" in line for line in err.splitlines()):
        return "unclear"
    return "clear"


def call(command: str, argv: list[str], capsys) -> tuple[object, str, BaseException | None]:
    main = importlib.import_module(MAINS[command]).main
    code, escaped = None, None
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    except Exception as e:  # noqa: BLE001 - what escapes is what the user would see as a traceback
        escaped = e
    return code, capsys.readouterr().err, escaped


@pytest.mark.parametrize("command, argv, message", ROWS, ids=[f"{r[0]}:{' '.join(r[1])}" for r in ROWS])
def test_bad_input_is_one_clear_line(command, argv, message, paths, capsys):
    argv = fill(argv, paths)
    if command == "run":
        argv = [*argv, "dry_run=true"]
        argv += [] if any(a.startswith("runs_dir=") for a in argv) else [f"runs_dir={paths['tmp'] / 'runs'}"]
    if command == "train" and argv:
        argv = [*argv, *TINY_TRAIN]
    code, err, escaped = call(command, argv, capsys)
    result = outcome(code, err, fill([message], paths)[0], escaped)
    assert result == "clear", f"outcome={result} exit={code} escaped={escaped!r}\nstderr: {err[-2000:]}"
    assert not (paths["tmp"] / "runs").exists() or not any((paths["tmp"] / "runs").iterdir())
    assert not Path("/tmp/x/evil").exists()


# A full or read-only disk: the command's writes fail as the kernel fails them (gentron.io turns each
# into one line naming the path). `run` rows are real runs (the first write, grid.yaml, fails).
# (command, argv, fault, expected message); faults: FAULTS below.
DISK_ROWS = [
    ("run", ["grid=conditioning", "runs_dir={tmp}/full"], "enospc", "disk full writing {tmp}/full/conditioning/grid.yaml"),
    ("run", ["grid=conditioning", "runs_dir={tmp}/quota"], "edquot", "disk quota exceeded writing"),
    ("run", ["grid=conditioning", "runs_dir={tmp}/ro"], "erofs", "its file system is read-only; point runs_dir="),
    ("run", ["grid=conditioning", "runs_dir={tmp}/denied"], "eacces", "permission denied on {tmp}/denied"),
    ("train", ["{config}", "--run-dir", "{tmp}/full_run"], "enospc", "disk full writing {tmp}/full_run/config.yaml"),
    ("train", ["{config}", "--run-dir", "{tmp}/ro_run"], "erofs", "its file system is read-only"),
    ("train", ["{config}", "--run-dir", "{tmp}/torch_full_run"], "torch_enospc", "disk full writing"),
    ("judge", ["{samples:good}", "--out", "{tmp}/judge_full.json"], "enospc", "disk full writing {tmp}/judge_full.json"),
    ("judge", ["{samples:good}", "--out", "{tmp}/judge_ro.json"], "eacces", "cannot write {tmp}/judge_ro.json"),
]


def _raising(code: int):
    import errno
    import os

    def fail(*args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
    return fail


def apply_fault(fault: str, monkeypatch) -> None:
    """Make every write through gentron.io fail as a full (ENOSPC, EDQUOT: at fsync, where network file
    systems report it) or read-only (EROFS, EACCES: creating the file) disk fails it; torch_enospc:
    torch's writer fails as it does on a full disk. (Root ignores permissions: a chmod would not do.)"""
    import torch

    import gentron.io as gio

    if fault in ("enospc", "edquot"):
        monkeypatch.setattr(gio.os, "fsync", _raising(fault.upper()))
    elif fault in ("erofs", "eacces"):
        monkeypatch.setattr(gio.tempfile, "mkstemp", _raising(fault.upper()))
    else:
        def full(obj, f, *args, **kwargs):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        monkeypatch.setattr(torch, "save", full)
        monkeypatch.setattr(gio, "_free_bytes", lambda path: 0)


@pytest.mark.parametrize("command, argv, fault, message", DISK_ROWS,
                         ids=[f"{r[2]}:{r[0]}:{' '.join(r[1])}" for r in DISK_ROWS])
def test_a_full_or_read_only_disk_is_one_clear_line(command, argv, fault, message, paths, capsys, monkeypatch):
    argv = fill(argv, paths)
    if command == "train":
        argv = [*argv, *TINY_TRAIN]
    apply_fault(fault, monkeypatch)
    code, err, escaped = call(command, argv, capsys)
    result = outcome(code, err, fill([message], paths)[0], escaped)
    assert result == "clear", f"outcome={result} exit={code} escaped={escaped!r}\nstderr: {err[-2000:]}"
    assert "inline_container" not in err and "Errno" not in err
    assert not list(paths["tmp"].rglob("*.tmp"))


# Damaged outputs of a finished cell (truncated, overwritten, deleted after the fact) are not taken as
# done: the plan (dry run) names the file and why on one line, exit 0, as a run recomputes them
# (tests/test_damaged_outputs.py runs that). Outcomes: `named` (that line), `silent` (the cell shows
# done), `traceback`. (relative path in the grid's first cell, damage, expected words)
DAMAGED_ROWS = [
    ("checkpoints/last.pt", "delete", "train output checkpoints/last.pt is missing"),
    ("checkpoints/last.pt", "truncate", "train output checkpoints/last.pt is 11 bytes, 22 when it was written"),
    ("checkpoints/last.pt", "garbage", "train output checkpoints/last.pt changed since it was written"),
    ("samples/compshapes_mini/samples.jsonl", "truncate", "sample output samples/compshapes_mini/samples.jsonl is"),
    ("samples/compshapes_mini/samples.jsonl", "garbage", "samples.jsonl changed since it was written"),
    ("samples/compshapes_mini/samples.jsonl", "delete", "samples/compshapes_mini/samples.jsonl is missing"),
    ("samples/compshapes_mini/color/000000_42.png", "delete", "samples/compshapes_mini/color/000000_42.png is missing"),
    ("samples/compshapes_mini/color/000000_42.png", "truncate", "samples/compshapes_mini/ images total"),
    ("samples/compshapes_mini/color/000000_42.png", "garbage", "samples/compshapes_mini/ images changed"),
    ("eval/compshapes_judge.json", "truncate", "evaluate output eval/compshapes_judge.json is"),
    ("eval/compshapes_judge.json", "garbage", "eval/compshapes_judge.json changed since it was written"),
    ("eval/compshapes_judge.json", "delete", "eval/compshapes_judge.json is missing"),
    ("metrics.json", "truncate", "record output metrics.json is"),
    ("metrics.json", "garbage", "record output metrics.json changed since it was written"),
    ("metrics.json", "delete", "record output metrics.json is missing"),
    ("manifest.json", "garbage", "manifest.json is not"),
]


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory):
    """The conditioning grid's folder as the runner leaves it finished (its outputs stand-ins, recorded
    in the manifests as the runner records them), without training anything."""
    from ablations import manifest, outputs, runfolder
    from tests.support.report_fixtures import build_planned_grid

    runs = tmp_path_factory.mktemp("finished_runs")
    grid_dir = build_planned_grid(runs, ["grid=conditioning", *FINISHED_GRID_SETS], n_prompts=6)
    for cell_dir in runfolder.cell_dirs(grid_dir):
        found, config = manifest.read(cell_dir), runfolder.read_yaml_or_empty(cell_dir / "config.yaml")
        for stage in runfolder.STAGES:
            found["stages"][stage]["outputs"] = outputs.record_outputs(cell_dir, stage, config)
        manifest.write(cell_dir, found)
        assert runfolder.status(cell_dir).status == "done"
    return grid_dir


# the finished grid's stand-in outputs fill one prompt set and its metric
FINISHED_GRID_SETS = ["sample.prompt_sets=[compshapes_mini]"]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(bytes((b + 1) % 256 for b in data))
    else:
        path.unlink()


@pytest.mark.parametrize("rel, how, message", DAMAGED_ROWS, ids=[f"{r[1]}:{r[0]}" for r in DAMAGED_ROWS])
def test_a_damaged_output_is_named_in_one_line(rel, how, message, finished_grid, tmp_path, capsys):
    import shutil

    from ablations.grid import plan

    runs = tmp_path / "runs"
    shutil.copytree(finished_grid.parent, runs)
    argv = ["grid=conditioning", *FINISHED_GRID_SETS]
    cell = plan(argv).cells[0].cell_id
    _damage(runs / "conditioning" / cell / rel, how)
    from ablations.launch import main

    code = main([*argv, "dry_run=true", f"runs_dir={runs}"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and code == 0, err[-2000:]
    lines = [line for line in out.splitlines() if line.startswith(f"cell {cell}:") and message in line]
    assert len(lines) == 1, f"outcome=silent: no line names {rel}\n{out[-3000:]}"


# The real scripts, as a user types them (their own startup, logging and exit path).
SCRIPTS = [
    (["ablations/run.py", "train.grad_clip=-1"], "train.grad_clip=-1.0 must be positive"),
    (["ablations/run.py", "--nope"], "'--nope' is not an override"),
    (["-m", "eval.judge", "/nonexistent"], "sample folder /nonexistent does not exist"),
    (["-m", "gentron.train", "/nonexistent/cell.yaml", "--run-dir", "/tmp/never"], "does not exist"),
]


@pytest.mark.parametrize("argv, message", SCRIPTS, ids=[" ".join(a) for a, _ in SCRIPTS])
def test_the_scripts_exit_with_one_line(argv, message, tmp_path):
    proc = subprocess.run([sys.executable, *argv, f"runs_dir={tmp_path}"] if argv[0].endswith(".py") else
                          [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert outcome(proc.returncode, proc.stderr, message) == "clear", proc.stderr[-2000:]
    assert proc.returncode == 2
    assert not any(tmp_path.iterdir())


def test_a_prompt_files_byte_order_mark_is_not_part_of_its_first_prompt(tmp_path):
    from gentron.generate import read_prompt_file

    for name, body in (("color_val.txt", "a red circle and a blue square\nsecond\n"),
                       ("rows.jsonl", json.dumps({"prompt": "a red circle and a blue square"}) + "\n")):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
        records = read_prompt_file(path, [0], 1)
        assert records[0]["prompt"] == "a red circle and a blue square"


def test_the_help_of_the_grid_runner_lists_the_overrides(tmp_path):
    proc = subprocess.run([sys.executable, "ablations/run.py", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for word in ("grid=", "profile=", "seeds=", "dry_run=", "launcher=", "slurm=", "local.workers=", "runs_dir=",
                 "action=", "train.steps", "conditioning", "text_encoder", "embedded", "paper"):
        assert word in out, word
    assert "Traceback" not in proc.stderr


def test_samples_are_read_inside_their_folder_only(tmp_path):
    """A samples.jsonl cannot make an evaluator read a file outside its sample folder (a link included)."""
    from eval.common import read_samples

    image, prompt = _good_image()
    outside = tmp_path / "outside.png"
    image.save(outside)
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "link.png").symlink_to(outside)
    (folder / "samples.jsonl").write_text(json.dumps({"file": "link.png", "prompt": prompt, "seed": 0}) + "\n")
    with pytest.raises(ValueError, match="outside"):
        read_samples(folder)
    (folder / "in.png").write_bytes(outside.read_bytes())
    (folder / "samples.jsonl").write_text(json.dumps({"file": "./in.png", "prompt": prompt, "seed": 0}) + "\n")
    assert [s.file for s in read_samples(folder)] == ["./in.png"]
    assert np.asarray(Image.open(folder / "in.png")).shape == (32, 32, 3)
