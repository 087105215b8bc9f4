"""The paper profile, rehearsed end to end: `profile=paper` exactly as a cluster user runs it, every
component real in kind and tiny in size, with only sizes and paths changed, and only through the
keys, overrides and environment variables a user sets.

What is real here, and what a cluster user has instead:
- data: WebDataset tar shards of 64 px CompShapes images (one corrupt sample) / the user's LAION shards;
  MP4 clips in a video folder for the text-to-video stage / the user's clips;
- weights: a diffusers AutoencoderKL folder through `vae.path` / stabilityai/sd-vae-ft-ema; a T5
  checkpoint folder loaded in bfloat16 through GENTRON_T5_XXL / google/flan-t5-xxl; an open_clip model
  folder and checkpoint file through GENTRON_CLIP_L and GENTRON_CLIP_L_WEIGHTS / ViT-L-14 openai;
- model: size XS/2 (XL/2's layout at CPU width) through `model.size`;
- training: FSDP2 with activation checkpointing over 2 ranks (gloo on CPUs, NCCL on GPUs), submitted
  through a real SLURM (the local one-node cluster) with a profile file, one job requeued mid-run;
- sampling and scoring: arrays of 2 shard tasks per cell (the profile's `sample:` and `evaluate:`
  sections), one sampling task requeued mid-shard; the result equals the cell sampled and scored whole;
- text-to-video: the mfg grid from the CLIP cell's T2I checkpoint (`train.init_from`);
- metrics: T2I-CompBench on the first official val prompts of each category, FID against reference
  statistics (random-feature extractor: GENTRON_FID_EXTRACTOR), CLIP score with a tiny CLIP trained on
  CompShapes captions, GenEval on one official prompt of each task with a tiny Mask2Former and open_clip
  (eval.tiny_models, eval.geneval.tiny), each saved as its real counterpart is.

What it proves: the requeued job resumes from the step its signal checkpointed; FSDP split the weights
and optimizer state between the ranks; T5's features reached the model in bfloat16; the loss falls; the
metrics tell the arms apart where they must; a sharded, interrupted sampling stage draws the same bytes
and scores as the unsharded stage.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.support.paper_assets import (CLIP_WIDTH, COMPBENCH_CATEGORIES, RESOLUTION, T5_WIDTH, coco_plan,
                                        compbench_prompts, compshapes_images, fid_reference, geneval_prompts,
                                        save_openclip, save_t5, save_trained_clip, save_vae, write_shards,
                                        write_videos)

REPO = Path(__file__).resolve().parent.parent


def compbench_kit() -> Path:
    return Path(os.environ.get("T2I_COMPBENCH_DIR", REPO.parent / "shared" / "t2i-compbench"))


# --- the rehearsal ------------------------------------------------------------------------------

IMAGES, SHARDS, CLIPS, FRAMES, FPS = 128, 4, 8, 8, 4
COMPBENCH_PER_FILE, COCO_CAPTIONS, IMAGES_PER_PROMPT, GENEVAL_PER_PROMPT = 2, 8, 2, 4
STEPS = 20
# What a cluster user passes too, at CPU size: the size, the data and VAE paths, the steps, the batch.
SIZES = ["model.size=XS/2", f"data.resolution={RESOLUTION}", "data.num_workers=1", "data.shuffle_buffer=32",
         f"sample.images_per_prompt={IMAGES_PER_PROMPT}", "seeds=[0]"]
# One image per batch at 25 steps: a sampling shard runs long enough for a requeue to land mid-shard.
T2I = ["grid=text_encoder", "profile=paper", *SIZES, f"train.steps={STEPS}", "train.batch_size=8",
       "train.ckpt_every=5", "train.log_every=1", "train.lr=1e-3", "train.strategy=fsdp",
       "train.grad_checkpointing=true", "sample.steps=25", "sample.batch_size=1",
       "sample.prompt_sets=[t2i_compbench_val,coco30k,geneval]", "eval.metrics=[t2i_compbench,fid,clip_score,geneval]"]
# The paper profile's video evaluation (VBench's prompt suite and dimensions, tiny extractors) beside
# the exact judge on CompShapes motion prompts.
T2V = ["grid=mfg", "profile=paper", *SIZES, "train.steps=6", "train.batch_size=4", "train.ckpt_every=3",
       "train.log_every=3", "sample.steps=5", "sample.prompt_sets=[compshapes_motion_smoke,vbench]",
       "eval.metrics=[compshapes_judge,vbench]"]
VBENCH_DIMENSIONS = ("subject_consistency", "background_consistency", "temporal_flickering")
SAMPLED = {"t2i_compbench_val": len(COMPBENCH_CATEGORIES) * COMPBENCH_PER_FILE * IMAGES_PER_PROMPT,
           "coco30k": COCO_CAPTIONS,  # one image per COCO caption, whatever images_per_prompt says
           "geneval": 6 * GENEVAL_PER_PROMPT}  # one prompt of each task, 4 images each as the benchmark has


@pytest.fixture(scope="module")
def paper_assets(tmp_path_factory) -> dict:
    """Everything the paper profile loads, tiny, on disk; the environment variables that point at it."""
    from eval.geneval.tiny import save_tiny_clip as save_geneval_clip, save_tiny_detector
    from eval.tiny_models import save_all
    from eval.vbench.models import DINO_ENV, RAFT_ENV, save_tiny_dino, save_tiny_raft
    from tests.test_geneval_conformance import official_files
    from tests.test_vbench import vbench_root

    kit = compbench_kit()
    if not (kit / "examples" / "dataset" / "color_val.txt").exists():
        pytest.skip(f"the T2I-CompBench reference kit is not at {kit} (set T2I_COMPBENCH_DIR)")
    root = tmp_path_factory.mktemp("paper")
    geneval, classes = geneval_prompts(official_files(), root / "geneval" / "prompts")
    clip_model, clip_weights = save_openclip(root / "weights" / "open_clip")
    evaluators = save_all(root / "weights" / "evaluators")
    clip = save_trained_clip(root / "weights" / "clip-compshapes")
    geneval_clip = save_geneval_clip(root / "weights" / "geneval-clip")
    env = {
        "GENTRON_CLIP_L": clip_model, "GENTRON_CLIP_L_WEIGHTS": str(clip_weights),
        "GENTRON_T5_XXL": str(save_t5(root / "weights" / "flan-t5")),
        "T2I_COMPBENCH_DATASET": str(compbench_prompts(kit, root / "t2i-compbench" / "dataset", COMPBENCH_PER_FILE)),
        "COCO30K_CAPTIONS": str(coco_plan(root / "captions30k.jsonl", COCO_CAPTIONS)),
        "COCO_FID_REF": str(fid_reference(root / "val2014_64", root / "val2014_64.npz", 64)),
        "GENTRON_FID_EXTRACTOR": "random",  # clean-fid's Inception weights are not small
        "GENTRON_BLIP_VQA": str(evaluators["blip_vqa"]), "GENTRON_DETECTOR": str(evaluators["detector"]),
        "GENTRON_CLIP_B32": str(clip), "GENTRON_CLIP_SCORE_MODEL": str(clip),
        "GENEVAL_PROMPTS": str(geneval),
        "GENTRON_GENEVAL_DETECTOR": str(save_tiny_detector(root / "weights" / "mask2former", favour=classes)),
        "GENTRON_GENEVAL_CLIP": f"local-dir:{geneval_clip}",
        "GENTRON_GENEVAL_CLIP_WEIGHTS": str(geneval_clip / "open_clip_model.safetensors"),
        # VBench: a three-prompt suite; background consistency uses GENTRON_CLIP_B32 above
        "VBENCH_ROOT": str(vbench_root(root / "VBench")),
        DINO_ENV: str(save_tiny_dino(root / "weights" / "dino")),
        RAFT_ENV: str(save_tiny_raft(root / "weights" / "raft.pth")),
        # RAFT needs 128 px frames; the rehearsal's clips are 64 px (test_vbench scores dynamic degree)
        "GENTRON_VBENCH_DIMENSIONS": ",".join(VBENCH_DIMENSIONS),
    }
    cluster = root / "cluster.yaml"  # slurm/profiles/example.yaml's keys, two tasks on CPUs
    shards = {"tasks_per_node": 1, "shards": 2}  # sampling and scoring: 2 one-task jobs per cell
    cluster.write_text(yaml.safe_dump({"cluster": "slurm", "partition": "debug", "nodes": 1, "tasks_per_node": 2,
                                       "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 2, "timeout_min": 30,
                                       "signal_delay_s": 30, "max_num_timeout": 3, "setup": [],
                                       "sample": shards, "evaluate": shards}))
    return {"root": root, "env": env, "cluster": cluster,
            "shards": write_shards(root / "shards", IMAGES, SHARDS),
            "videos": write_videos(root / "videos", CLIPS, FRAMES, FPS),
            "vae": save_vae(root / "weights" / "sd-vae")}


def run_grid(args: list[str], env: dict, timeout: int = 1200) -> str:
    proc = subprocess.run([sys.executable, "ablations/run.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def job_log(entry: dict) -> str:
    """Rank 0's log of a recorded SLURM job (every run of it: a requeued job appends to its file)."""
    return Path(entry["log_folder"], f"{entry['job_id']}_0_log.err").read_text(errors="replace")


def rehearse(grid_dir: Path, cell: str, timeout: float = 1500) -> int:
    """Requeue `cell`'s training job once it has written a checkpoint (as an admin or a preemption
    would), then shard 1 of its sampling array once that shard has drawn its first image; wait for the
    grid's results. Returns how many images the sampling shard had drawn when it was requeued."""
    from gentron.checkpoint import kept_checkpoints
    from slurm.launcher import grid_status, read_jobs

    def wait(condition, what: str, pause: float = 2) -> None:
        checked = 0.0
        while not condition():
            assert time.time() < deadline, f"{what}: {grid_status(grid_dir)}"
            if time.time() > checked + 2:  # squeue at most every 2 s
                failed = [j for j in grid_status(grid_dir) if j["state"] in ("FAILED", "CANCELLED", "TIMEOUT")]
                assert not failed, f"jobs failed (logs in {grid_dir / 'slurm'}): {failed}"
                checked = time.time()
            time.sleep(pause)

    deadline = time.time() + timeout
    wait(lambda: kept_checkpoints(grid_dir / cell / "checkpoints"), "training never wrote a checkpoint", 0.5)
    job = next(e["job_id"] for e in read_jobs(grid_dir)["train"] if e["cell"] == cell)
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, timeout=60)
    part = grid_dir / cell / "samples" / "t2i_compbench_val" / ".shards" / "part-00001-of-00002.jsonl"
    wait(lambda: part.exists() and part.read_text().count("\n") >= 1, "the sampling shard never drew", 0.1)
    entry = next(e for e in read_jobs(grid_dir)["sample-shards"] if e["cell"] == cell and e["shard"] == 1)
    drawn = part.read_text().count("\n")
    subprocess.run(["scontrol", "requeue", entry["job_id"]], check=True, capture_output=True, timeout=60)
    wait(lambda: (grid_dir / "results.parquet").exists(), "the grid did not finish")
    return drawn


def rerun_unsharded(cell_dir: Path, root: Path, env: dict) -> Path:
    """The trained cell sampled, scored and recorded again as launcher=local runs it: whole, unsharded."""
    copy = root / cell_dir.parent.name / cell_dir.name
    shutil.copytree(cell_dir, copy, ignore=shutil.ignore_patterns("samples", "eval", "metrics.json", "sharded-*"))
    subprocess.run([sys.executable, "-c", f"from ablations.stages import run_cell; run_cell({str(copy)!r})"],
                   cwd=REPO, check=True, capture_output=True, timeout=900, env={**os.environ, **env})
    return copy


def clip_scores(clip: str, folder: Path, shuffle: bool) -> float:
    """The CLIP score of CompShapes test images against their own captions, or against shuffled ones."""
    from eval.clip_score import evaluate
    from eval.common import Sample, write_samples

    pairs = compshapes_images("test", 32, 2)
    captions = [c for _, c in pairs]
    if shuffle:
        captions = captions[1:] + captions[:1]
    folder.mkdir(parents=True)
    for i, (image, _) in enumerate(pairs):
        image.save(folder / f"{i:03d}.png")
    write_samples(folder, [Sample(file=f"{i:03d}.png", prompt=c, seed=0, index=i) for i, c in enumerate(captions)])
    return evaluate(folder, model=clip)["aggregate"]["clip_score"]["mean"]


@pytest.mark.slurm
@pytest.mark.slow
def test_paper_profile_rehearsed_end_to_end(slurm_cluster, paper_assets, tmp_path):
    from ablations.grid import plan
    from gentron.checkpoint import load_checkpoint
    from gentron.config import load_config
    from gentron.specs import T5Spec
    from slurm.launcher import read_jobs

    a, runs = paper_assets, tmp_path / "runs"
    t2i = [*T2I, f"data.path='{a['shards']}'", f"vae.path={a['vae']}", f"runs_dir={runs}"]
    submit = [*t2i, "launcher=slurm", f"slurm={a['cluster']}"]
    dry = run_grid([*submit, "dry_run=true"], a["env"])
    assert "3 cells" in dry and "preflight: every weight, data path and reference the plan loads is in place" in dry
    assert "train 1x0, sample 2x0, evaluate 2x0" in dry  # array tasks per cell x GPUs per task

    # Text-to-image: three cells (CLIP, T5 in bfloat16, both interleaved) through SLURM, 2 ranks each.
    os.environ.update(a["env"])
    try:
        cells = {c.arms["text_encoder"]: c for c in plan(t2i).cells}
    finally:
        for key in a["env"]:
            os.environ.pop(key)
    run_grid(submit, a["env"])
    grid_dir = runs / "text_encoder"
    requeued = grid_dir / cells["clip"].cell_id
    drawn = rehearse(grid_dir, requeued.name)

    # The requeued training job stopped at the step its SIGTERM arrived, checkpointed it (sharded) and the
    # requeued run resumed there, from that checkpoint (sharded-<step>): not a periodic one, not step 0.
    jobs = read_jobs(grid_dir)
    log = job_log(next(e for e in jobs["train"] if e["cell"] == requeued.name))
    stopped = [int(s) for s in re.findall(rf"stopped at step (\d+) of {STEPS}", log)]
    resumed = re.findall(r"resuming \S+ at step (\d+) from (\S+)", log)
    assert len(stopped) == 1 and 0 < stopped[0] < STEPS, log[-3000:]
    assert resumed == [(str(stopped[0]), str(requeued / "checkpoints" / f"sharded-{stopped[0]:08d}"))], log[-3000:]
    manifest = json.loads((requeued / "manifest.json").read_text())
    assert manifest["stages"]["train"]["attempts"] >= 2
    steps = [json.loads(line)["step"] for line in (requeued / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # each step logged once, across the two runs

    # the metrics that read the images through trained or image-dependent models (tiny BLIP-VQA's
    # random answers do not depend on the image: T2I-CompBench's colour, shape, texture stay alike)
    differ = {key: {} for key in ("fid/fid", "t2i_compbench/spatial", "t2i_compbench/non_spatial",
                                  "clip_score/clip_score")}
    for arm, cell in cells.items():
        cell_dir = grid_dir / cell.cell_id
        config = yaml.safe_load((cell_dir / "config.yaml").read_text())
        assert config["data"]["encode"] == "per_batch" and config["vae"]["path"] == str(a["vae"])
        state = load_checkpoint(cell_dir / "checkpoints" / "last.pt")
        mc = state["model_config"]
        # the size named, not the embedded default's widths; SD-VAE latents of 64 px
        assert (mc["depth"], mc["hidden_size"], mc["mlp_hidden_size"], mc["num_heads"]) == (4, 64, 256, 4)
        assert (mc["input_size"], mc["in_channels"], mc["learn_sigma"]) == (8, 4, True)
        widths = {"clip": [CLIP_WIDTH], "t5": [T5_WIDTH], "clip+t5": [CLIP_WIDTH, T5_WIDTH]}[arm]
        assert list(mc["text_widths"]) == widths
        if arm == "clip+t5":  # interleaved: block i reads encoder i mod 2, at its own width
            keys = [state["model"][f"blocks.{i}.cross_attn.kv.weight"].shape[1] for i in range(4)]
            assert keys == [CLIP_WIDTH, T5_WIDTH, CLIP_WIDTH, T5_WIDTH]
        if "t5" in arm:
            t5 = next(s for s in load_config(config).text_encoders if s.kind == "t5")
            assert t5 == T5Spec(path=a["env"]["GENTRON_T5_XXL"], dtype="bfloat16")
        # the dtype each encoder's features had when they reached the model, as the trainer saw them
        assert state["data"]["text_dtypes"] == {"clip": ["float32"], "t5": ["bfloat16"],
                                                "clip+t5": ["float32", "bfloat16"]}[arm]
        # streamed by 2 ranks (FSDP2), every shard read, the corrupt sample skipped
        streams = state["data"]["streams"]["images"]
        assert len(streams) == 2
        assert sum(w["skipped"] for rank in streams for w in rank["workers"].values()) >= 1
        assert state["step"] == STEPS
        # FSDP2 sharded the weights, the EMA and AdamW's moments: each rank wrote about half of them
        files = sorted((cell_dir / "checkpoints" / f"sharded-{STEPS:08d}").glob("*.distcp"))
        sizes = [f.stat().st_size for f in files]
        full = 4 * 4 * sum(v.numel() for v in state["model"].values())  # fp32 weights, EMA, two moments
        assert len(files) == 2 and full < sum(sizes) < 1.5 * full, (sizes, full)  # and DCP's per-tensor records
        assert all(0.4 < s / sum(sizes) < 0.6 for s in sizes), sizes
        # the loss falls over the run (mean of the first and of the last five steps)
        losses = [json.loads(line)["loss"] for line in (cell_dir / "train_log.jsonl").read_text().splitlines()]
        assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
        manifest = json.loads((cell_dir / "manifest.json").read_text())
        assert manifest["status"] == "done"
        assert manifest["stages"]["sample"]["samples"] == SAMPLED and manifest["stages"]["sample"]["shards"] == 2
        metrics = json.loads((cell_dir / "metrics.json").read_text())
        for key in ("t2i_compbench/color", "t2i_compbench/spatial", "t2i_compbench/non_spatial",
                    "t2i_compbench/complex", "fid/fid", "fid/kid", "clip_score/clip_score", "geneval/overall"):
            assert np.isfinite(metrics[key]["mean"]), key
        assert metrics["clip_score/clip_score"]["mean"] > 0  # a CLIP that has learned: no clamp to 0
        for key, scores in differ.items():
            scores[arm] = metrics[key]["mean"]
        clip_score = json.loads((cell_dir / "eval" / "clip_score.json").read_text())
        assert a["env"]["GENTRON_CLIP_SCORE_MODEL"] in json.dumps(clip_score["protocol"])
        fid = json.loads((cell_dir / "eval" / "fid.json").read_text())
        assert fid["protocol"]["feature_extractor"].startswith("random") and not fid["comparable_to_paper"]
        # GenEval through the same path: the tiny Mask2Former and colour CLIP, the official results.jsonl
        geneval = json.loads((cell_dir / "eval" / "geneval.json").read_text())
        assert a["env"]["GENTRON_GENEVAL_DETECTOR"] in json.dumps(geneval["protocol"])
        assert len(geneval["per_image"]) == SAMPLED["geneval"]
    # three models, three sets of images: the metrics tell them apart
    for key, scores in differ.items():
        assert len(set(scores.values())) == 3, (key, scores)
    assert not (grid_dir / "cache").exists() or not list((grid_dir / "cache").glob("data-*.pt"))  # streamed

    # The CLIP behind the CLIP score ranks a caption's own image above another caption's.
    clip = a["env"]["GENTRON_CLIP_SCORE_MODEL"]
    assert clip_scores(clip, tmp_path / "matching", False) > clip_scores(clip, tmp_path / "shuffled", True) + 10

    # Sampling shard 1 of the requeued cell was stopped mid-shard (in whichever of its prompt sets the kill
    # landed) and ran again, resuming at the image: each prompt set's drawing ends once, with a "wrote" line
    # of what that run drew, and the two runs together drew each image once (the killed run's last images
    # are in no line). The sharded, interrupted stages equal the cell sampled and scored whole.
    entry = next(e for e in jobs["sample-shards"] if e["cell"] == requeued.name and e["shard"] == 1)
    text = job_log(entry)
    assert text.count("running ablations.stages.sample_shard(") == 2 and drawn >= 1, (drawn, text[-3000:])
    wrote = {name: [int(n) for n in re.findall(rf"wrote (\d+) samples of shard 1/2 to \S+/{name}$", text, re.M)]
             for name in SAMPLED}
    assert all(len(counts) == 1 for counts in wrote.values()), wrote
    # never more than the shard: what the killed run drew of the set it was in is not drawn again (the
    # kill can land between two prompt sets, where the resumed run has nothing of that set to skip)
    assert sum(counts[0] for counts in wrote.values()) <= sum(SAMPLED.values()) // 2, wrote
    assert len(jobs["sample-shards"]) == len(jobs["evaluate-shards"]) == 2 * len(cells)
    local = rerun_unsharded(requeued, tmp_path / "local", a["env"])
    for name in SAMPLED:
        ours, theirs = requeued / "samples" / name, local / "samples" / name
        rows = (ours / "samples.jsonl").read_text()
        assert rows == (theirs / "samples.jsonl").read_text()
        for row in map(json.loads, rows.splitlines()):
            assert (ours / row["file"]).read_bytes() == (theirs / row["file"]).read_bytes(), row["file"]
    sharded, whole = (json.loads((d / "metrics.json").read_text()) for d in (requeued, local))
    assert sharded.keys() == whole.keys()
    for key in sharded:
        assert sharded[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-12), key

    # Text-to-video from the CLIP cell's T2I checkpoint: the mfg grid on a video folder.
    init = grid_dir / cells["clip"].cell_id / "checkpoints" / "last.pt"
    t2v = [*T2V, f"data.path={a['videos']}", f"train.init_from={init}", f"vae.path={a['vae']}", f"runs_dir={runs}"]
    run_grid(t2v, a["env"])
    t2i_state = load_checkpoint(init)
    trained = [d for d in (runs / "mfg").glob("*/manifest.json")
               if not json.loads(d.read_text())["stages"]["train"].get("reused_from")]
    assert len(trained) == 2  # motion-free training off / on; the guidance scales share the second
    for manifest in trained:
        state = load_checkpoint(manifest.parent / "checkpoints" / "last.pt")
        assert state["model_config"]["temporal"] and state["step"] == 6
        # started from the T2I weights: 6 AdamW steps at lr 1e-4 move a weight by at most ~6e-4
        # (a fresh initialisation is ~0.08 away on average)
        for key in ("blocks.0.attn.qkv.weight", "blocks.3.mlp.fc2.weight", "x_embedder.proj.weight"):
            assert (state["model"][key] - t2i_state["model"][key]).abs().max() < 2e-3, key
        assert any(k.startswith("blocks.0.temporal_attn.") for k in state["model"])
    for cell_json in (runs / "mfg").glob("*/cell.json"):
        samples = [json.loads(line) for line in
                   (cell_json.parent / "samples" / "compshapes_motion_smoke" / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 2 * IMAGES_PER_PROMPT and all(s["file"].endswith(".gif") for s in samples)
        assert len(list((cell_json.parent / "samples" / "compshapes_motion_smoke" / samples[0]["frames"]).glob("*.png"))) == FRAMES
        # VBench's suite sampled (5 clips a prompt, as VBench samples) and scored on each prompt's dimensions
        suite = (cell_json.parent / "samples" / "vbench" / "samples.jsonl").read_text().splitlines()
        assert len(suite) == 3 * 5
        metrics = json.loads((cell_json.parent / "metrics.json").read_text())
        for dimension in VBENCH_DIMENSIONS:
            value = metrics[f"vbench/{dimension}"]
            assert 0.0 <= value["mean"] <= 1.0 and value["n"] > 0, (dimension, value)


# --- the pieces the rehearsal relies on, fast -------------------------------------------------

def test_open_clip_folder_loads_its_checkpoint_never_random_weights(tmp_path):
    """GENTRON_CLIP_L=local-dir:FOLDER with GENTRON_CLIP_L_WEIGHTS=FILE (or the folder's own weights)
    loads those weights; a folder without weights, or a tag with a folder, is refused."""
    import open_clip

    from gentron.text import build_text_encoder

    model, checkpoint = save_openclip(tmp_path / "clip")
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]["token_embedding.weight"]
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        build_text_encoder({"kind": "clip", "model": model, "pretrained": None})
    encoder = build_text_encoder({"kind": "clip", "model": model, "pretrained": str(checkpoint)})
    assert torch.equal(encoder.token_embedding.weight, saved) and encoder.width == CLIP_WIDTH
    shutil.copy(checkpoint, tmp_path / "clip" / "open_clip_pytorch_model.bin")
    own = build_text_encoder({"kind": "clip", "model": model, "pretrained": None})
    assert torch.equal(own.token_embedding.weight, saved)
    assert not torch.equal(open_clip.create_model(model, load_weights=False).token_embedding.weight, saved)
    with pytest.raises(ValueError, match="names its own weights"):
        build_text_encoder({"kind": "clip", "model": model, "pretrained": "openai"})


def test_paper_weights_come_from_the_environment(monkeypatch):
    """The paper grids' encoders are the hub models unless GENTRON_CLIP_L(_WEIGHTS) / GENTRON_T5_XXL
    name local copies; XS/2 is built by XL/2's layout (MLP 4x width, patch 2)."""
    from ablations.grid import plan
    from gentron import sizes
    from gentron.specs import ClipSpec, T5Spec

    base = ["grid=text_encoder", "profile=paper", "data.path='/data/{0..9}.tar'", "seeds=[0]"]
    for key in ("GENTRON_CLIP_L", "GENTRON_CLIP_L_WEIGHTS", "GENTRON_T5_XXL"):
        monkeypatch.delenv(key, raising=False)
    both = plan(base).cells[2].config.text_encoders
    assert both == [ClipSpec(model="ViT-L-14", pretrained="openai"), T5Spec(path="google/flan-t5-xxl", dtype="bfloat16")]
    monkeypatch.setenv("GENTRON_T5_XXL", "/weights/flan-t5-xxl")
    monkeypatch.setenv("GENTRON_CLIP_L_WEIGHTS", "/weights/vit-l-14.pt")
    both = plan(base).cells[2].config.text_encoders
    assert both[0].pretrained == "/weights/vit-l-14.pt" and both[1].path == "/weights/flan-t5-xxl"
    xl, xs = sizes.SIZES["XL/2"], sizes.SIZES["XS/2"]
    assert xs[1] == xl[1] == 2
    assert xs[0].mlp_hidden_size / xs[0].hidden_size == xl[0].mlp_hidden_size / xl[0].hidden_size == 4


# --- the dry run's checks and costs -------------------------------------------------------------

def test_dry_run_names_every_missing_input_with_its_fix(tmp_path, monkeypatch, capsys):
    """Nothing on this machine: each weight, data path and reference is listed with the command or
    setting that supplies it, and a run refuses before anything is written or submitted."""
    from ablations import launch, preflight
    from ablations.grid import plan

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    for key in ("GENTRON_CLIP_L", "GENTRON_CLIP_L_WEIGHTS", "GENTRON_T5_XXL", "GENTRON_FID_EXTRACTOR"):
        monkeypatch.delenv(key, raising=False)
    absent = tmp_path / "absent"
    for key in ("T2I_COMPBENCH_DATASET", "COCO30K_CAPTIONS", "COCO_FID_REF", "GENTRON_BLIP_VQA", "GENTRON_DETECTOR",
                "GENTRON_CLIP_B32", "GENTRON_CLIP_SCORE_MODEL"):
        monkeypatch.setenv(key, str(absent / key.lower()))
    args = ["grid=text_encoder", "profile=paper", f"data.path='{absent}/{{0..3}}.tar'", "seeds=[0]",
            f"runs_dir={tmp_path / 'runs'}"]
    text = "\n".join(n.line() for n in preflight.missing(plan(args)))
    for expected in ("huggingface-cli download timm/vit_large_patch14_clip_224.openai", "GENTRON_CLIP_L_WEIGHTS=",
                     "huggingface-cli download google/flan-t5-xxl", "GENTRON_T5_XXL=",
                     "huggingface-cli download stabilityai/sd-vae-ft-ema", "vae.path=",
                     "4 of 4 WebDataset shards", "data.path=",
                     "T2I_COMPBENCH_DATASET=", "COCO30K_CAPTIONS=", "python -m eval.coco plan",
                     "COCO_FID_REF=", "python -m eval.fid make-stats", "GENTRON_FID_EXTRACTOR=random",
                     "GENTRON_BLIP_VQA=", "GENTRON_DETECTOR=", "GENTRON_CLIP_B32=", "GENTRON_CLIP_SCORE_MODEL="):
        assert expected in text, expected
    assert launch.main([*args, "dry_run=true"]) in (0, 2)  # the plan prints whatever else fails after it
    assert "preflight: " in capsys.readouterr().out
    monkeypatch.setattr(launch, "check_resources", lambda p: None)  # as on a GPU machine
    assert launch.main(args) != 0
    assert "missing (dry_run=true lists them all)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()

    # a T2V grid planned before its T2I checkpoint exists
    t2v = plan(["grid=mfg", "profile=paper", f"data.path={absent}", f"train.init_from={absent}/last.pt", "seeds=[0]"])
    assert any("train.init_from" == n.used_by for n in preflight.missing(t2v))


def test_plan_prints_parameters_gpus_and_gpu_hours(tmp_path, capsys, monkeypatch):
    """Parameters counted exactly by gentron.sizes; GPU-hours from counted FLOPs at the A100 rate of DiT's
    train.py (adaLN XL/2 trained from pixels is its work per image; the cell also encodes its captions).
    Without the prompt files, sampling is costed at the benchmarks' sizes: 18,000 T2I-CompBench images
    (6 x 300 prompts x 10) and 30,000 COCO images."""
    from ablations import costs as cost_model
    from ablations import gpu_hours
    from ablations import launch
    from ablations.grid import plan
    from gentron import sizes

    for key in ("T2I_COMPBENCH_DATASET", "COCO30K_CAPTIONS"):
        monkeypatch.setenv(key, str(tmp_path / "absent" / key.lower()))
    args = ["grid=conditioning", "profile=paper", "data.path=/data/shards", "seeds=[0]", "slurm=example",
            f"runs_dir={tmp_path}"]
    p = plan(args)
    adaln = next(c for c in p.cells if c.arms["conditioning"] == "adaln")
    costs = cost_model.cell_costs(adaln, gpus=8)
    assert costs["params"] == sizes.count_params(sizes.paper_config("XL/2", "adaln", "CLIP-L"))["total"]
    images = adaln.config.train.steps * adaln.config.train.batch_size
    work = gpu_hours.rate() / (0.81 * 256 / 8)  # FLOPs per image of DiT's train.py: its step and VAE encoder
    clip = gpu_hours.text_encoder_flops(adaln.config.text_encoders[0])
    assert costs["gpu_hours"] == pytest.approx(images / (0.81 * 256 / 8) * (work + clip) / work / 3600)
    assert costs["hours"] == pytest.approx(costs["gpu_hours"] / 8)
    assert costs["images"] == 18_000 + 30_000 and costs["sample_gpu_hours"] > 0
    cross = cost_model.cell_costs(next(c for c in p.cells if c.arms["conditioning"] == "cross_attn"), gpus=8)
    assert cross["params"] > costs["params"] and cross["gpu_hours"] > costs["gpu_hours"]
    launch.main([*args, "dry_run=true"])
    out = capsys.readouterr().out
    assert f"{costs['params'] / 1e6:.1f}M" in out and "GPUs" in out and f"{costs['gpu_hours']:,.0f}" in out
    assert "facebookresearch/DiT" in out
