"""Evaluation during training (train.eval_every, run_dir/validation.jsonl) and the export of a runs
folder to TensorBoard and W&B (reports.export)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import eval.judge

from gentron.checkpoint import load_checkpoint
from gentron.config import load_config
from gentron.errors import ConfigError
from gentron.model import GenTronConfig
from gentron.train import train
from gentron.validation import VALIDATION_FILE, Validator
from tests.support import wandb_records
from tests.support.train_fixtures import state_equal, tiny_config, with_changes

EVAL = {"eval_every": 2, "eval_batch": 12, "eval_bins": 4, "eval_prompts": 1, "eval_sample_steps": 2}
VOLATILE = ("seconds",)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / VALIDATION_FILE).read_text().splitlines()]


def _numbers(row):
    return {k: v for k, v in row.items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny cell trained with evaluation every 2 steps (checkpoints every 2 of 6), one without."""
    tmp = tmp_path_factory.mktemp("validation")
    cfg = tiny_config(tmp, train={"steps": 6, "ckpt_every": 2, **EVAL})
    train(cfg, tmp / "with", judge=eval.judge)
    plain = with_changes(cfg, train={"eval_every": 0})
    train(plain, tmp / "without")
    return tmp, cfg


def test_rows_at_the_evaluated_checkpoints_with_binned_losses_and_judge(runs):
    tmp, cfg = runs
    rows = _rows(tmp / "with")
    assert [r["step"] for r in rows] == [2, 4, 6]
    for row in rows:
        assert row["kind"] == "validation" and row["held_out"] is True
        assert row["t_bins"] == [[0, 250], [250, 500], [500, 750], [750, 1000]]
        assert len(row["loss_bins"]) == len(row["mse_bins"]) == 4
        assert all(v > 0 for v in row["loss_bins"])
        # 3 items per bin: the overall loss is the mean of the bins
        assert row["loss"] == pytest.approx(sum(row["loss_bins"]) / 4)
        assert set(row["judge"]) == {"color", "shape", "texture", "spatial", "non_spatial", "complex"}
        assert 0.0 <= row["judge_mean"] <= 1.0 and row["judge_prompts"] == 6
    # the weights change between evaluations, the fixed batch does not: the numbers move
    assert rows[0]["loss_bins"] != rows[2]["loss_bins"]


def test_evaluation_uses_the_same_noise_every_time(runs):
    tmp, cfg = runs
    state = load_checkpoint(tmp / "with/checkpoints/last.pt")
    config = GenTronConfig.from_dict(state["model_config"])
    validator = Validator(cfg, tmp / "elsewhere", "cpu", 0, eval.judge)
    first = validator.evaluate(config, state["ema"])
    second = Validator(cfg, tmp / "elsewhere2", "cpu", 0, eval.judge).evaluate(config, state["ema"])
    assert first == second == validator.evaluate(config, state["ema"])
    # and it is what training logged at that checkpoint (step 6, the last)
    logged = _numbers(_rows(tmp / "with")[-1])
    assert {**first, "kind": "validation", "step": 6} == logged


def test_eval_every_zero_writes_nothing_and_evaluation_leaves_training_bit_identical(runs):
    tmp, _ = runs
    assert not (tmp / "without" / VALIDATION_FILE).exists()
    a = load_checkpoint(tmp / "with/checkpoints/last.pt")
    b = load_checkpoint(tmp / "without/checkpoints/last.pt")
    for key in ("model", "ema", "optimizer", "step", "data"):
        assert state_equal(a[key], b[key]), key
    for stream in ("torch", "generator"):  # the random streams training goes on with
        assert torch.equal(a["rng"][stream], b["rng"][stream]), stream
    assert a["rng"]["python"] == b["rng"]["python"]
    log = lambda d: [{k: v for k, v in json.loads(x).items() if not k.endswith("_s")}  # noqa: E731
                     for x in (tmp / d / "train_log.jsonl").read_text().splitlines()]
    assert log("with") == log("without")


def test_resume_drops_rows_past_the_step_and_a_torn_line(runs):
    tmp, cfg = runs
    run = tmp / "resumed"
    train(with_changes(cfg, train={"steps": 4}), run, judge=eval.judge)
    shutil.copy(run / "checkpoints/last.pt", tmp / "step4.pt")
    train(cfg, run, judge=eval.judge)
    assert [r["step"] for r in _rows(run)] == [2, 4, 6]
    # "crash" back to step 4 after step 6 was evaluated, with a torn line at the end
    shutil.copy(tmp / "step4.pt", run / "checkpoints/last.pt")
    with open(run / VALIDATION_FILE, "a") as f:
        f.write('{"kind": "validation", "st')
    train(cfg, run, judge=eval.judge)
    rows = _rows(run)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert [_numbers(r) for r in rows] == [_numbers(r) for r in _rows(tmp / "with")]


def test_other_data_gets_the_loss_only_on_its_first_items(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a red circle number {i}")
    cfg = tiny_config(tmp_path, data={"kind": "image_folder", "path": str(folder), "num_train": 6},
                      train={"steps": 2, "ckpt_every": 1, "eval_every": 2, "eval_batch": 4, "eval_bins": 2})
    train(cfg, tmp_path / "run")
    (row,) = _rows(tmp_path / "run")
    assert row["step"] == 2 and row["held_out"] is False and "judge" not in row and len(row["loss_bins"]) == 2
    with pytest.raises(ConfigError, match="only 6 validation items"):
        train(with_changes(cfg, train={"eval_batch": 16, "eval_bins": 8}), tmp_path / "run2")


def test_bad_settings_are_refused_when_the_config_is_read(tmp_path):
    """At plan time, with every other key: load_config refuses them."""
    with pytest.raises(ConfigError, match="train.eval_every=-1"):
        load_config({"train": {"eval_every": -1}})
    with pytest.raises(ConfigError, match="eval_bins=10 exceeds train.eval_batch=4"):
        load_config({"train": {"eval_every": 5, "eval_batch": 4}})


def test_eval_keys_do_not_change_the_cell_id():
    from ablations.identity import cell_id

    base = load_config({})
    assert cell_id(base) == cell_id(load_config({"train": {"eval_every": 100, "eval_prompts": 4}}))


# --- export -------------------------------------------------------------------------------------

def _fake_runs(root):
    cell = root / "g1" / "abc123"
    cell.mkdir(parents=True)
    (cell / "cell.json").write_text(json.dumps({"grid": "g1", "cell_id": "abc123",
                                                "axes": {"conditioning": "adaln", "depth": 2, "tags": [1, 2]}}))
    (cell / "config.yaml").write_text("train: {steps: 20}\n")
    (cell / "train_log.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 0.1, "vb": None}) + "\n" for s in (10, 20))
        + '{"step": 3')  # a torn line is skipped
    (cell / VALIDATION_FILE).write_text("".join(json.dumps(
        {"kind": "validation", "step": s, "loss": 0.5, "loss_bins": [0.7, 0.3], "mse_bins": [0.7, 0.3],
         "t_bins": [[0, 500], [500, 1000]], "held_out": True, "judge": {"color": 0.5}, "judge_mean": 0.5}) + "\n"
        for s in (10, 20)))
    (cell / "metrics.json").write_text(json.dumps(
        {"compshapes_judge/color": {"mean": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n": 8}}))
    return cell


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_export_has_the_tags_and_replaces_on_rerun(tmp_path):
    from reports.export import main

    _fake_runs(tmp_path / "runs")
    for _ in range(2):  # idempotent: the second export replaces the first
        main(["tensorboard", str(tmp_path / "runs"), "--out", str(tmp_path / "tb")])
    folder = tmp_path / "tb" / "g1" / "abc123"
    acc, scalars = _scalars(folder)
    assert {"train/loss", "train/lr", "validation/loss", "validation/loss_t0000-0500",
            "validation/loss_t0500-1000", "validation/judge/color", "validation/judge_mean",
            "final/compshapes_judge/color"} <= set(scalars)
    assert "train/vb" not in scalars  # null values are not logged
    assert scalars["train/loss"] == [(10, pytest.approx(0.1)), (20, pytest.approx(0.05))]
    assert scalars["validation/loss_t0000-0500"] == [(10, pytest.approx(0.7)), (20, pytest.approx(0.7))]
    assert scalars["final/compshapes_judge/color"] == [(20, pytest.approx(0.25))]
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")  # the axes as hparams


def test_wandb_export_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from reports.export import export_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _fake_runs(tmp_path / "runs")
    for _ in range(2):
        assert export_wandb(tmp_path / "runs", "gentron-test", tmp_path / "wb") == ["g1-abc123"]
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*-g1-abc123"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_export_refuses_a_missing_runs_folder_and_grid(tmp_path):
    from reports.export import read_runs

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_runs(tmp_path / "nope")
    _fake_runs(tmp_path / "runs")
    with pytest.raises(ValueError, match=r"no grid \['g2'\].*\['g1'\]"):
        read_runs(tmp_path / "runs", ["g2"])


def test_validator_on_cpu_does_not_move_the_global_rng(runs):
    tmp, cfg = runs
    state = load_checkpoint(tmp / "with/checkpoints/last.pt")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    v = Validator(cfg, tmp / "rng", "cpu", 0)
    v.evaluate(GenTronConfig.from_dict(state["model_config"]), state["ema"])
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_write_the_rows_of_one(tmp_path, strategy):
    import torch.multiprocessing as mp

    from tests.test_distributed import WORLD, _free_port, _rank_main

    cfg = tiny_config(tmp_path, train={"steps": 3, "strategy": strategy, "warmup_steps": 0, "lr": 1e-3,
                                       **EVAL, "eval_every": 3, "eval_prompts": 0})
    train(cfg, tmp_path / "single")
    mp.spawn(_rank_main, args=(cfg, tmp_path / strategy, _free_port()), nprocs=WORLD, join=True)
    (single,), (multi,) = _rows(tmp_path / "single"), _rows(tmp_path / strategy)
    assert single["step"] == multi["step"] == 3
    assert multi["loss_bins"] == pytest.approx(single["loss_bins"], rel=1e-4)


# --- live logging while training ------------------------------------------------------------------

def test_live_logging_sends_training_and_validation_to_tensorboard_and_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(tmp_path, train={"steps": 6, "ckpt_every": 2, "log_every": 1, "tensorboard": True,
                                       "wandb": True, "wandb_project": "gentron-test", **EVAL})
    run_dir = tmp_path / "runs" / "g1" / "cell9"
    train(cfg, run_dir, judge=eval.judge)
    rows = _rows(run_dir)

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "validation/loss", "validation/judge/color", "validation/judge_mean",
            "validation/loss_t0000-0250"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [(e.step, e.value) for e in acc.Scalars("validation/loss")] == [
        (r["step"], pytest.approx(r["loss"])) for r in rows]

    (run,) = (run_dir / "wandb").glob("offline-run-*-g1-cell9")  # the id reports.export gives the cell
    history = wandb_records.history(run)
    assert sorted(history) == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert history[r["step"]]["validation/loss"] == pytest.approx(r["loss"])
        assert history[r["step"]]["validation/judge/color"] == pytest.approx(r["judge"]["color"])
    assert all("train/loss" in history[s] for s in history)
    config = wandb_records.config(run)
    assert config["train"]["steps"] == 6 and config["model"]["conditioning"] == cfg.model.conditioning


def test_wandb_without_the_package_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr("importlib.import_module", lambda name, *a: (_ for _ in ()).throw(ImportError(name))
                        if name == "wandb" else real_import(name))
    cfg = tiny_config(tmp_path, train={"steps": 2, "wandb": True})
    with pytest.raises(ConfigError, match=r"train.wandb=true needs the wandb package.*pip install -e .\[wandb\]"):
        train(cfg, tmp_path / "run")


# --- a prompt set sampled by every rank and scored during training (train.eval_prompt_set) ---------

class ScoreFolder:
    """A scorer that records each call (process, folder) and scores with the real CompShapes judge."""

    def __init__(self, log_path):
        self.log_path = log_path

    def __call__(self, folder):
        import os

        rows = (folder / "samples.jsonl").read_text().splitlines()
        with open(self.log_path, "a") as f:
            f.write(f"{os.getpid()} {folder}\n")
        judged = eval.judge.evaluate(folder)["aggregate"]
        return {"count/images": len(rows), "compshapes_judge/color": judged["color"]["mean"]}


def _sampled_eval(log_path):
    from gentron.generate import prompt_set
    from gentron.validation import SampleEvaluation

    records = [r for r in prompt_set("compshapes_test", [0], 1) if r["category"] == "color"][:5]
    return SampleEvaluation("mini", records, ScoreFolder(log_path), "seed")


def _sampling_rank_main(rank, cfg, run_dir, port, evaluation):
    import os

    from tests.test_distributed import WORLD
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(cfg, run_dir, evaluation=evaluation)


def _images(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_rank_samples_its_share_and_the_main_rank_scores_the_whole_set(tmp_path):
    import torch.multiprocessing as mp

    from tests.test_distributed import WORLD, _free_port

    cfg = tiny_config(tmp_path, train={"steps": 3, "warmup_steps": 0, "lr": 1e-3, **EVAL, "eval_every": 3,
                                       "eval_prompts": 0},
                      sample={"steps": 3, "batch_size": 2})
    train(cfg, tmp_path / "single", evaluation=_sampled_eval(tmp_path / "single.log"))
    mp.spawn(_sampling_rank_main, args=(cfg, tmp_path / "multi", _free_port(), _sampled_eval(tmp_path / "multi.log")),
             nprocs=WORLD, join=True)
    (single,), (multi,) = _rows(tmp_path / "single"), _rows(tmp_path / "multi")
    folder = Path("validation") / "step-00000003" / "mini"
    # 5 prompts in batches of 2: 3 batches, shard 0 draws 1 of them and shard 1 two
    parts = sorted((tmp_path / "multi" / folder / ".shards").glob("part-*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in parts] == [2, 3]
    assert len(_images(tmp_path / "multi" / folder)) == 5
    assert _images(tmp_path / "multi" / folder) == _images(tmp_path / "single" / folder)  # whatever the ranks
    assert len((tmp_path / "multi.log").read_text().splitlines()) == 1  # scored once, by the main rank
    assert multi["metrics"] == single["metrics"] and multi["metrics"]["count/images"] == 5
    assert multi["metric_images"] == 5 and "judge" not in multi


def test_the_harness_samples_the_named_set_and_keeps_each_evaluators_result(tmp_path):
    from ablations import prompt_sets

    cfg = tiny_config(tmp_path, train={"steps": 2, "ckpt_every": 2, **EVAL, "eval_every": 2, "eval_prompts": 0,
                                       "eval_prompt_set": "compshapes_smoke", "eval_metrics": ["compshapes_judge"]},
                      sample={"steps": 2, "batch_size": 6})
    evaluation = prompt_sets.sample_evaluation(cfg)
    assert evaluation.name == "compshapes_smoke" and len(evaluation.records) == 12  # 2 prompts x 6 categories
    train(cfg, tmp_path / "run", evaluation=evaluation)
    (row,) = _rows(tmp_path / "run")
    folder = tmp_path / "run" / "validation" / "step-00000002" / "compshapes_smoke"
    kept = json.loads((folder / "compshapes_judge.json").read_text())
    assert row["metrics"] == {f"compshapes_judge/{k}": pytest.approx(v["mean"])
                              for k, v in kept["aggregate"].items() if isinstance(v, dict) and "mean" in v}
    assert {"compshapes_judge/color", "compshapes_judge/spatial"} <= set(row["metrics"])
    assert len((folder / "samples.jsonl").read_text().splitlines()) == 12


def test_eval_prompt_set_and_metrics_are_checked_when_planned(tmp_path):
    from ablations.grid import plan

    base = ["grid=conditioning", f"runs_dir={tmp_path}", "train.eval_every=500"]
    with pytest.raises(ConfigError, match="train.eval_prompt_set needs train.eval_metrics too"):
        plan([*base, "train.eval_prompt_set=coco1k"])
    with pytest.raises(ConfigError, match=r"unknown prompt set 'coco1'.*did you mean 'coco1k'"):
        plan([*base, "train.eval_prompt_set=coco1", "train.eval_metrics=[fid]"])
    with pytest.raises(ConfigError, match=r"train.eval_metrics.*'geneval' reads prompt sets"):
        plan([*base, "train.eval_prompt_set=coco1k", "train.eval_metrics=[geneval]"])
    p = plan([*base, "train.eval_prompt_set=coco1k", "train.eval_metrics=[fid,clip_score]"])
    assert p.cells[0].config.train.eval_metrics == ["fid", "clip_score"]


def test_coco1k_is_the_first_thousand_captions_of_the_coco_plan(tmp_path, monkeypatch):
    from ablations import prompt_sets
    from gentron.config import SampleConfig

    plan_file = tmp_path / "captions30k.jsonl"
    plan_file.write_text("".join(json.dumps({"prompt": f"caption {i}", "category": "coco", "prompt_id": 90_000 - i})
                                 + "\n" for i in range(1500)))
    monkeypatch.setenv("COCO30K_CAPTIONS", str(plan_file))
    sample = SampleConfig(seeds=[42], images_per_prompt=4)
    first = prompt_sets.prompt_records("coco1k", sample)
    assert [r["prompt"] for r in first] == [f"caption {i}" for i in range(1000)]  # one image each, file order
    assert len(prompt_sets.prompt_records("coco30k", sample)) == 1500
    assert prompt_sets.prompt_count("coco1k", sample) == 1000
