"""Baselines: diffusers pipelines (tiny random PixArt-alpha and Stable Diffusion, built from configs and
saved to folders) sampled like a trained cell, scored by the same evaluators, planned in a grid beside a
trained arm, shown in its table and results, and compared with it in a blind study."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ablations.prompt_sets import prompt_records
from ablations.generate import main as generate_main
from gentron.config import default_config
from gentron.generate import sample_rows

PROMPT_SET = "compshapes_smoke"  # 2 prompts per category, 12 in all


def save_tiny_pixart(path: Path) -> Path:
    """PixArtTransformer2DModel + AutoencoderKL (factor 2) + T5 encoder over bytes (ByT5's tokenizer)."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        block_out_channels=[8, 8], layers_per_block=1, latent_channels=4, norm_num_groups=4)
    transformer = PixArtTransformer2DModel(sample_size=10, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                           in_channels=4, out_channels=8, patch_size=2, cross_attention_dim=16,
                                           caption_channels=32, use_additional_conditions=False)
    text = T5EncoderModel(T5Config(vocab_size=384, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                                   dropout_rate=0.0, feed_forward_proj="gated-gelu"))
    PixArtAlphaPipeline(tokenizer=ByT5Tokenizer(), text_encoder=text, vae=vae, transformer=transformer,
                        scheduler=DPMSolverMultistepScheduler()).save_pretrained(path)
    return path


def save_tiny_sd(path: Path) -> Path:
    """UNet2DConditionModel + AutoencoderKL (factor 2) + CLIP text model with an offline CLIP tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from eval.tiny_models import _CLIP_TEXT, _clip_tokenizer

    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        block_out_channels=[8, 8], layers_per_block=1, latent_channels=4, norm_num_groups=4)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, in_channels=4, out_channels=4)
    tokenizer = _clip_tokenizer()
    tokenizer.model_max_length = 77  # the pipeline pads every prompt to it
    StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**_CLIP_TEXT)),
                            tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {"pixart": save_tiny_pixart(root / "pixart"), "sd": save_tiny_sd(root / "sd")}


def sample(pipeline: Path, out: Path, *extra: str) -> Path:
    generate_main(["--pipeline", str(pipeline), "--prompt-set", PROMPT_SET, "--out", str(out), "--steps", "2",
                   "--batch-size", "5", "--resolution", "24", *extra])
    return out


def pixels(folder: Path) -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    return {r["file"]: np.asarray(Image.open(folder / r["file"])) for r in rows}


@pytest.mark.parametrize("kind", ["pixart", "sd"])
def test_a_pipeline_samples_the_rows_a_cell_samples_and_records_its_protocol(pipelines, kind, tmp_path):
    out = sample(pipelines[kind], tmp_path / kind, "--guidance", "3.5")
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    cell = sample_rows(prompt_records(PROMPT_SET, default_config().sample), video=False)
    assert rows == cell  # same prompt ids, seeds, indices and file names as a trained cell's folder
    assert {Image.open(out / r["file"]).size for r in rows} == {(24, 24)}
    protocol = json.loads((out / "generation.json").read_text())
    expected_class = {"pixart": "PixArtAlphaPipeline", "sd": "StableDiffusionPipeline"}[kind]
    assert protocol["pipeline_class"] == expected_class and protocol["pipeline"] == str(pipelines[kind])
    assert protocol["pipeline_folder"] == str(pipelines[kind])
    assert (protocol["steps"], protocol["cfg_scale"], protocol["dtype"], protocol["batch_size"]) == (2, 3.5, "float32", 5)
    assert protocol["scheduler"] == {"pixart": "DPMSolverMultistepScheduler", "sd": "DDIMScheduler"}[kind]
    assert protocol["scheduler_config"]["num_train_timesteps"] == 1000 and protocol["noise"] == "seed"
    images = pixels(out)
    assert len({a.tobytes() for a in images.values()}) == len(images)  # every image its own noise and prompt


def test_shards_write_the_same_folder_and_a_swapped_scheduler_is_recorded(pipelines, tmp_path):
    whole = sample(pipelines["pixart"], tmp_path / "whole")
    for k in range(3):
        sample(pipelines["pixart"], tmp_path / "sharded", "--shard", f"{k}/3")
    assert (tmp_path / "sharded" / "samples.jsonl").read_text() == (whole / "samples.jsonl").read_text()
    a, b = pixels(whole), pixels(tmp_path / "sharded")
    assert a.keys() == b.keys() and all(np.array_equal(a[f], b[f]) for f in a)
    assert json.loads((tmp_path / "sharded" / "generation.json").read_text())["runs"] == 3
    ddim = sample(pipelines["pixart"], tmp_path / "ddim", "--scheduler", "DDIMScheduler")
    assert json.loads((ddim / "generation.json").read_text())["scheduler"] == "DDIMScheduler"
    assert any(not np.array_equal(a[f], pixels(ddim)[f]) for f in a)  # another sampler, other images


def test_missing_weights_and_bad_settings_are_refused_in_one_line(pipelines, tmp_path, capsys):
    cases = [(["--pipeline", "no-such-org/no-such-pipeline"], "huggingface-cli download no-such-org/no-such-pipeline"),
             (["--pipeline", str(tmp_path)], "no model_index.json"),
             (["--pipeline", str(pipelines["sd"]), "--scheduler", "NoSuchScheduler"], "is not a diffusers scheduler"),
             (["--pipeline", str(pipelines["sd"]), "--steps", "0"], "steps must be at least 1"),
             (["--pipeline", str(pipelines["sd"]), "--prompt-set", "no_such_set"], "unknown prompt set")]
    for args, message in cases:
        args = args if "--prompt-set" in args else [*args, "--prompt-set", PROMPT_SET]
        with pytest.raises(SystemExit) as exit_:
            generate_main([*args, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
    assert not (tmp_path / "out" / "samples.jsonl").exists()


def test_the_evaluators_score_a_baseline_folder(pipelines, tmp_path):
    from eval import fid, judge

    out = sample(pipelines["sd"], tmp_path / "sd")
    judged = judge.evaluate(out)
    assert len(judged["per_image"]) == 12 and judged["protocol"]["generation"]["pipeline_class"] == \
        "StableDiffusionPipeline"
    reference = sample(pipelines["pixart"], tmp_path / "pixart")
    scored = fid.evaluate(out, ref=str(reference), extractor="random")
    assert np.isfinite(scored["aggregate"]["fid"]["mean"]) and scored["aggregate"]["fid"]["mean"] > 0
    assert scored["protocol"]["generation"]["scheduler"] == "DDIMScheduler"



def benchmark_prompts(root: Path, monkeypatch) -> None:
    """Tiny T2I-CompBench, COCO-30K and GenEval prompt files where the registry's variables point."""
    dataset = root / "compbench"
    dataset.mkdir()
    (dataset / "color_val.txt").write_text("a red car and a blue bench\na green cat and a black dog\n")
    (dataset / "numeracy_val.txt").write_text("three cats\n")  # an extended category the set leaves out
    captions = root / "captions30k.jsonl"
    captions.write_text("".join(json.dumps({"prompt": c, "category": "coco", "prompt_id": i}) + "\n"
                                for i, c in enumerate(["a dog on a bench", "a man riding a bicycle"])))
    (root / "geneval").mkdir()
    (root / "geneval" / "generation_prompts.txt").write_text("a photo of a cat\na photo of two dogs\n")
    monkeypatch.setenv("T2I_COMPBENCH_DATASET", str(dataset))
    monkeypatch.setenv("COCO30K_CAPTIONS", str(captions))
    monkeypatch.setenv("GENEVAL_PROMPTS", str(root / "geneval"))


@pytest.mark.parametrize("name, images, noise", [("t2i_compbench_val", 4, "seed"), ("coco30k", 2, "per_prompt"),
                                                 ("geneval", 8, "seed")])
def test_benchmark_prompt_sets_sample_as_a_cell_samples_them(pipelines, tmp_path, monkeypatch, name, images, noise):
    benchmark_prompts(tmp_path, monkeypatch)
    out = tmp_path / name
    generate_main(["--pipeline", str(pipelines["sd"]), "--prompt-set", name, "--out", str(out), "--steps", "2",
                   "--resolution", "24", "--seeds", "42", "43", "--images-per-prompt", "2"])
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    sample = dataclasses.replace(default_config().sample, seeds=[42, 43], images_per_prompt=2)
    assert rows == sample_rows(prompt_records(name, sample), video=False) and len(rows) == images
    assert json.loads((out / "generation.json").read_text())["noise"] == noise  # the prompt set's rule
    if name == "t2i_compbench_val":  # seeds 42 and 43 of each prompt, as the benchmark's own generator names them
        assert {(r["category"], r["seed"]) for r in rows} == {("color", 42), ("color", 43)}


def test_compbench_scores_a_baseline_folder(pipelines, tmp_path, monkeypatch):
    from eval.compbench import evaluate
    from eval.tiny_models import save_tiny_blip_vqa

    benchmark_prompts(tmp_path, monkeypatch)
    out = tmp_path / "compbench"
    generate_main(["--pipeline", str(pipelines["pixart"]), "--prompt-set", "t2i_compbench_val", "--out", str(out),
                   "--steps", "2", "--resolution", "24", "--seeds", "42", "43", "--images-per-prompt", "2"])
    scored = evaluate(out, blip=str(save_tiny_blip_vqa(tmp_path / "blip")))
    assert set(scored["aggregate"]) == {"color"} and scored["aggregate"]["color"]["n"] == 2  # prompts
    assert set(scored["aggregate_by_seed"]) == {"42", "43"} and len(scored["per_image"]) == 4
    assert scored["protocol"]["generation"]["pipeline_class"] == "PixArtAlphaPipeline"


GRID = """description: one trained arm beside a tiny diffusers baseline
seeds: [0]
axes:
  conditioning:
    cross_attn: {model.conditioning: cross_attn}
baselines:
  tiny_pixart: {pipeline: %s, steps: 2, guidance: 4.5, resolution: 24}
profiles:
  embedded: {}
"""
TINY = ["train.steps=20", "train.ckpt_every=10", "train.batch_size=16", "data.num_train=256", "sample.steps=5",
        "eval.metrics=[compshapes_judge]",
        f"sample.prompt_sets=[{PROMPT_SET}]", "local.workers=1"]


def test_a_baseline_is_refused_in_one_line_when_its_pipeline_or_keys_are_wrong(pipelines, tmp_path, capsys):
    from ablations.grid import plan
    from ablations.launch import main as run_grid
    from gentron.errors import ConfigError

    grid = tmp_path / "with_baseline.yaml"
    good = GRID % pipelines["pixart"]
    for text, message in [(good.replace("steps: 2", "steps: 0"), "steps must be at least 1"),
                          (good.replace("steps: 2", "stepz: 2"), "did you mean 'baselines.tiny_pixart.steps'"),
                          (good.replace("tiny_pixart: {", "cross_attn: {"), "an arm of the grid has the same name"),
                          (good.replace("guidance: 4.5", "guidance: 4.5, scheduler: Nope"), "not a diffusers scheduler"),
                          (good.replace(", resolution: 24", ""), "multiple of 8, and the cells' data.resolution is 20")]:
        grid.write_text(text)
        with pytest.raises(ConfigError, match=message):
            plan([f"grid={grid}", f"runs_dir={tmp_path / 'runs'}"])
    grid.write_text(good.replace(str(pipelines["pixart"]), "no-such-org/no-such-pipeline"))
    assert run_grid([f"grid={grid}", f"runs_dir={tmp_path / 'runs'}", "dry_run=true"]) == 2
    err = capsys.readouterr().err
    assert "baseline 'tiny_pixart'" in err and "huggingface-cli download no-such-org/no-such-pipeline" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_grid_runs_a_trained_arm_and_a_baseline_into_one_table_and_a_study(pipelines, tmp_path, capsys):
    from ablations.grid import plan
    from ablations.launch import main as run_grid
    from ablations.stages import is_complete
    from reports import study
    from reports.results import arm_columns, load_grid, metric_table

    grid_file, runs = tmp_path / "with_baseline.yaml", tmp_path / "runs"
    grid_file.write_text(GRID % pipelines["pixart"])
    args = [f"grid={grid_file}", *TINY, f"runs_dir={runs}"]
    trained, baseline = plan(args).cells
    assert baseline.baseline["pipeline"] == str(pipelines["pixart"]) and trained.baseline is None
    assert baseline.axes == {"conditioning": "tiny_pixart (baseline)", "seed": 0} and baseline.config.sample.steps == 2
    # the plan's costs: the baseline is a pipeline that trains nothing, not the grid's model
    from ablations import costs
    planned = plan(args)
    (pipeline_row,) = [r for c, r in zip(planned.cells, costs.cost_columns(planned, 8)) if c.baseline]
    assert pipeline_row["params"] == "pipeline" and pipeline_row["train GPU-h (est.)"] == "0"
    estimate = costs.estimate(planned, costs.load_costs())
    assert any(m.startswith("baseline ") and "its sampling" in m for m in estimate["missing"])
    assert estimate["groups"] == 1  # only the trained arm trains
    assert run_grid(args) == 0
    out = capsys.readouterr().out
    grid_dir = runs / "with_baseline"
    assert "tiny_pixart (baseline)" in out and "cross_attn" in out
    # the baseline trained nothing: its train stage is done with no outputs, and no checkpoint exists
    cell = grid_dir / baseline.cell_id
    stages = json.loads((cell / "manifest.json").read_text())["stages"]
    assert stages["train"]["outputs"] == {} and stages["train"]["pretrained"] == str(pipelines["pixart"])
    assert not (cell / "checkpoints").exists() and (grid_dir / trained.cell_id / "checkpoints/last.pt").is_file()
    assert json.loads((cell / "samples" / PROMPT_SET / "generation.json").read_text())["pipeline_class"] == \
        "PixArtAlphaPipeline"
    trained_rows = (grid_dir / trained.cell_id / "samples" / PROMPT_SET / "samples.jsonl").read_text()
    assert (cell / "samples" / PROMPT_SET / "samples.jsonl").read_text() == trained_rows  # same prompts and seeds
    # the same evaluator scored both; results.parquet marks the baseline and holds its verdict against the arm
    table = pd.read_parquet(grid_dir / "results.parquet")
    marked = table.groupby("cell_id")["baseline"].first().to_dict()
    assert marked == {trained.cell_id: False, baseline.cell_id: True}
    rows = table[table["cell_id"] == baseline.cell_id]
    assert set(rows["pipeline"]) == {str(pipelines["pixart"])} and rows["mean"].notna().all()
    assert set(rows["verdict.control"].dropna()) == {"conditioning=cross_attn"}
    assert set(rows["metric"]) == set(table.loc[table["cell_id"] == trained.cell_id, "metric"])
    assert all(is_complete(grid_dir / c.cell_id) for c in (trained, baseline))
    # the browser's tables show the baseline as an arm of the grid
    data = load_grid(grid_dir)
    shown = metric_table(data.results, data.cells, arm_columns(data.cells))
    assert any("conditioning=tiny_pixart (baseline)" in str(column) for column in shown.columns)
    # a blind study of the trained arm against the baseline, from the grid
    db = tmp_path / "votes.sqlite"
    assert study.main(["create", "--db", str(db), "--grid", str(grid_dir), "--arms", "cross_attn,tiny_pixart",
                       "--raters", "2"]) == 0
    import sqlite3

    with sqlite3.connect(db) as conn:
        systems = dict(conn.execute("SELECT name, folder FROM systems").fetchall())
        pairs = conn.execute("SELECT COUNT(*) FROM pairs WHERE kind = 'compare'").fetchone()[0]
    assert systems == {"cross_attn": str((grid_dir / trained.cell_id / "samples" / PROMPT_SET).resolve()),
                       "tiny_pixart": str((cell / "samples" / PROMPT_SET).resolve())}
    assert pairs == 12
    assert study.main(["create", "--db", str(db), "--grid", str(grid_dir), "--arms", "cross_attn,no_such_arm"]) == 2
    assert "no planned cell" in capsys.readouterr().err


def test_a_baseline_cell_samples_in_shards_and_never_trains(pipelines, tmp_path):
    from ablations import launch, stages
    from ablations.grid import plan

    grid_file = tmp_path / "with_baseline.yaml"
    grid_file.write_text(GRID % pipelines["pixart"])
    p = plan([f"grid={grid_file}", *TINY, "sample.batch_size=5", f"runs_dir={tmp_path / 'runs'}"])
    launch.prepare(p)
    trained, baseline = (p.grid_dir / c.cell_id for c in p.cells)
    info = json.loads((baseline / "cell.json").read_text())
    assert info["train_key"] != json.loads((trained / "cell.json").read_text())["train_key"]  # shares no checkpoint
    assert stages.states(baseline) == {"train": "done", "sample": "pending", "evaluate": "pending", "record": "pending"}
    stages.train_stage(str(baseline))  # a no-op: nothing trains, no checkpoint appears
    assert not (baseline / "checkpoints").exists()
    for k in range(2):
        stages.sample_shard(str(baseline), k, 2)
    folder = baseline / "samples" / PROMPT_SET
    # the last shard merged the folder; the stage is done only when the stage itself has checked it
    assert (folder / "samples.jsonl").is_file() and stages.states(baseline)["sample"] == "pending"
    stages.run_cell(str(baseline), {"sample": 2})  # merges the shards, then scores and records
    assert stages.is_complete(baseline) and stages.states(trained)["train"] == "pending"
    protocol = json.loads((folder / "generation.json").read_text())
    assert protocol["runs"] == 2 and protocol["pipeline_class"] == "PixArtAlphaPipeline"
    assert "compshapes_judge/color" in json.loads((baseline / "metrics.json").read_text())
