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
- text-to-video: the mfg grid from the CLIP cell's T2I checkpoint (`train.init_from`);
- metrics: T2I-CompBench on the first official val prompts of each category, FID against reference
  statistics (random-feature extractor: GENTRON_FID_EXTRACTOR), CLIP score, each on tiny models saved
  as their real counterparts are (eval.tiny_models).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
RESOLUTION = 64
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")


def compbench_kit() -> Path:
    return Path(os.environ.get("T2I_COMPBENCH_DIR", REPO.parent / "shared" / "t2i-compbench"))


# --- data ---------------------------------------------------------------------------------------

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, images: int, shards: int) -> str:
    """CompShapes training images as WebDataset shards (key.png + key.txt); shard 0 also holds one
    corrupt image. Returns the brace pattern a user passes as data.path."""
    from PIL import Image

    from gentron.data import compshapes

    root.mkdir(parents=True, exist_ok=True)
    data = compshapes.CompShapes(split="train", resolution=RESOLUTION, num_samples=images, seed=0)
    tars = [tarfile.open(root / f"train-{s:05d}.tar", "w") for s in range(shards)]
    _add(tars[0], "corrupt.png", b"\x89PNG\r\n\x1a\n not an image")
    _add(tars[0], "corrupt.txt", b"a broken sample")
    for i in range(images):
        scene = data.scene(i)
        buffer = io.BytesIO()
        Image.fromarray(compshapes.render(scene, RESOLUTION)).save(buffer, format="PNG")
        _add(tars[i % shards], f"{i:06d}.png", buffer.getvalue())
        _add(tars[i % shards], f"{i:06d}.txt", scene.caption.encode())
    for tar in tars:
        tar.close()
    return str(root / f"train-{{00000..{shards - 1:05d}}}.tar")


def write_videos(root: Path, clips: int, frames: int, fps: int) -> Path:
    """CompShapes motion clips as MP4 files with .txt captions (a video folder)."""
    import av

    from gentron.data import compshapes

    root.mkdir(parents=True, exist_ok=True)
    data = compshapes.CompShapes(split="train", resolution=RESOLUTION, num_samples=clips, seed=0, video=True,
                                 num_frames=frames)
    for i in range(clips):
        scene = data.scene(i)
        with av.open(str(root / f"{i:04d}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width = stream.height = RESOLUTION
            stream.pix_fmt = "yuv420p"
            for frame in compshapes.render_clip(scene, RESOLUTION):
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        (root / f"{i:04d}.txt").write_text(scene.caption)
    return root


# --- weights, saved as their real counterparts are ----------------------------------------------

def save_vae(path: Path) -> Path:
    """An AutoencoderKL with the SD VAE's layout (4 latent channels, 8x down) at tiny width."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=RESOLUTION)
    vae.save_pretrained(path)
    return path


def save_t5(path: Path) -> Path:
    """A T5 checkpoint (encoder and decoder, as google/flan-t5-xxl ships) with a byte-level tokenizer."""
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=384, d_model=T5_WIDTH, d_kv=12, d_ff=96, num_layers=2, num_decoder_layers=1, num_heads=4,
                      feed_forward_proj="gated-gelu", decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path


def save_openclip(path: Path) -> tuple[str, Path]:
    """An open_clip model folder (open_clip_config.json, as hub repositories hold it) and a separate
    checkpoint file: (the model name a user gives, the checkpoint)."""
    import open_clip

    model_cfg = {"embed_dim": 32, "quick_gelu": True,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**{k: v for k, v in model_cfg.items()})
    checkpoint = path.parent / f"{path.name}.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return f"local-dir:{path}", checkpoint


# --- evaluation data ----------------------------------------------------------------------------

def compbench_prompts(kit: Path, out: Path, per_file: int) -> Path:
    """The first `per_file` prompts of each official val file, and the complex sub-split files, in
    the layout of the official examples/dataset folder."""
    src = kit / "examples" / "dataset"
    out.mkdir(parents=True, exist_ok=True)
    for category in COMPBENCH_CATEGORIES:
        lines = [line for line in (src / f"{category}_val.txt").read_text().splitlines() if line.strip()]
        (out / f"{category}_val.txt").write_text("\n".join(lines[:per_file]) + "\n")
    for name in ("complex_val_spatial.txt", "complex_val_action.txt"):
        shutil.copy(src / name, out / name)
    return out


def coco_plan(out: Path, captions: int) -> Path:
    """prompts.jsonl in the layout `python -m eval.coco plan` writes."""
    from gentron.data import compshapes

    prompts = compshapes.test_prompts("color")[:captions]
    rows = [{"prompt": p, "category": "coco", "prompt_id": i} for i, p in enumerate(prompts)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def fid_reference(folder: Path, stats: Path, images: int) -> Path:
    """Reference images and their statistics (`python -m eval.fid make-stats`), as eval.coco refs
    and make-stats give them for COCO val2014."""
    from PIL import Image

    from gentron.data import compshapes

    folder.mkdir(parents=True, exist_ok=True)
    data = compshapes.CompShapes(split="test", resolution=RESOLUTION, num_samples=images, seed=1)
    for i in range(images):
        Image.fromarray(compshapes.render(data.scene(i), RESOLUTION)).save(folder / f"{i:05d}.png")
    subprocess.run([sys.executable, "-m", "eval.fid", "make-stats", str(folder), str(stats), "--extractor", "random"],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    return stats


# --- the rehearsal ------------------------------------------------------------------------------

IMAGES, SHARDS, CLIPS, FRAMES, FPS = 128, 4, 8, 8, 4
COMPBENCH_PER_FILE, COCO_CAPTIONS, IMAGES_PER_PROMPT = 2, 8, 2
T5_WIDTH, CLIP_WIDTH = 48, 32
# What a cluster user passes too, at CPU size: the size, the data and VAE paths, the steps, the batch.
SIZES = ["model.size=XS/2", f"data.resolution={RESOLUTION}", "data.num_workers=1", "data.shuffle_buffer=32",
         "sample.steps=5", f"sample.images_per_prompt={IMAGES_PER_PROMPT}", "seeds=[0]"]
T2I = ["grid=text_encoder", "profile=paper", *SIZES, "train.steps=20", "train.batch_size=8", "train.ckpt_every=5",
       "train.log_every=5", "train.strategy=fsdp", "train.grad_checkpointing=true"]
T2V = ["grid=mfg", "profile=paper", *SIZES, "train.steps=6", "train.batch_size=4", "train.ckpt_every=3",
       "train.log_every=3", "sample.prompt_sets=[compshapes_motion_smoke]"]


@pytest.fixture(scope="module")
def paper_assets(tmp_path_factory) -> dict:
    """Everything the paper profile loads, tiny, on disk; the environment variables that point at it."""
    kit = compbench_kit()
    if not (kit / "examples" / "dataset" / "color_val.txt").exists():
        pytest.skip(f"the T2I-CompBench reference kit is not at {kit} (set T2I_COMPBENCH_DIR)")
    root = tmp_path_factory.mktemp("paper")
    clip_model, clip_weights = save_openclip(root / "weights" / "open_clip")
    evaluators = __import__("eval.tiny_models", fromlist=["save_all"]).save_all(root / "weights" / "evaluators")
    env = {
        "GENTRON_CLIP_L": clip_model, "GENTRON_CLIP_L_WEIGHTS": str(clip_weights),
        "GENTRON_T5_XXL": str(save_t5(root / "weights" / "flan-t5")),
        "T2I_COMPBENCH_DATASET": str(compbench_prompts(kit, root / "t2i-compbench" / "dataset", COMPBENCH_PER_FILE)),
        "COCO30K_CAPTIONS": str(coco_plan(root / "captions30k.jsonl", COCO_CAPTIONS)),
        "COCO_FID_REF": str(fid_reference(root / "val2014_64", root / "val2014_64.npz", 64)),
        "GENTRON_FID_EXTRACTOR": "random",  # clean-fid's Inception weights are not small
        "GENTRON_BLIP_VQA": str(evaluators["blip_vqa"]), "GENTRON_DETECTOR": str(evaluators["detector"]),
        "GENTRON_CLIP_B32": str(evaluators["clip"]), "GENTRON_CLIP_SCORE_MODEL": str(evaluators["clip"]),
    }
    cluster = root / "cluster.yaml"  # slurm/profiles/example.yaml's keys, two tasks on CPUs
    cluster.write_text(yaml.safe_dump({"cluster": "slurm", "partition": "debug", "nodes": 1, "tasks_per_node": 2,
                                       "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 2, "timeout_min": 30,
                                       "signal_delay_s": 30, "max_num_timeout": 3, "setup": []}))
    return {"root": root, "env": env, "cluster": cluster,
            "shards": write_shards(root / "shards", IMAGES, SHARDS),
            "videos": write_videos(root / "videos", CLIPS, FRAMES, FPS),
            "vae": save_vae(root / "weights" / "sd-vae")}


def run_grid(args: list[str], env: dict, timeout: int = 1200) -> str:
    proc = subprocess.run([sys.executable, "ablations/run.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def wait_for_grid(grid_dir: Path, requeue_cell: str, timeout: float = 1500) -> int:
    """Requeue `requeue_cell`'s training job once it has written a checkpoint (as an admin or a
    preemption would), then wait for the grid's results; returns how many jobs were requeued."""
    from gentron.checkpoint import kept_checkpoints
    from slurm.launcher import grid_status, read_jobs

    folder = grid_dir / requeue_cell / "checkpoints"  # FSDP: sharded-<step>/ during training, last.pt at the end
    deadline = time.time() + timeout
    while not kept_checkpoints(folder):
        assert time.time() < deadline, "training never wrote a checkpoint"
        time.sleep(0.5)
    job = next(e["job_id"] for e in read_jobs(grid_dir)["train"] if e["cell"] == requeue_cell)
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, timeout=60)
    while not (grid_dir / "results.parquet").exists():
        assert time.time() < deadline, f"the grid did not finish: {grid_status(grid_dir)}"
        failed = [j for j in grid_status(grid_dir) if j["state"] in ("FAILED", "CANCELLED", "TIMEOUT")]
        assert not failed, f"jobs failed (logs in {grid_dir / 'slurm'}): {failed}"
        time.sleep(2)
    return 1


@pytest.mark.slurm
@pytest.mark.slow
def test_paper_profile_rehearsed_end_to_end(slurm_cluster, paper_assets, tmp_path):
    from ablations.grid import plan
    from gentron.checkpoint import load_checkpoint
    from gentron.config import load_config
    from gentron.specs import T5Spec

    a, runs = paper_assets, tmp_path / "runs"
    t2i = [*T2I, f"data.path='{a['shards']}'", f"vae.path={a['vae']}", f"runs_dir={runs}"]
    submit = [*t2i, "launcher=slurm", f"slurm={a['cluster']}"]
    dry = run_grid([*submit, "dry_run=true"], a["env"])
    assert "3 cells" in dry and "preflight: every weight, data path and reference the plan loads is in place" in dry

    # Text-to-image: three cells (CLIP, T5 in bfloat16, both interleaved) through SLURM, 2 ranks each.
    os.environ.update(a["env"])
    try:
        cells = {c.arms["text_encoder"]: c for c in plan(t2i).cells}
    finally:
        for key in a["env"]:
            os.environ.pop(key)
    run_grid(submit, a["env"])
    grid_dir = runs / "text_encoder"
    wait_for_grid(grid_dir, cells["clip"].cell_id)

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
        # streamed by 2 ranks (FSDP2), every shard read, the corrupt sample skipped
        streams = state["data"]["streams"]["images"]
        assert len(streams) == 2
        assert sum(w["skipped"] for rank in streams for w in rank["workers"].values()) >= 1
        assert state["step"] == 20
        manifest = json.loads((cell_dir / "manifest.json").read_text())
        assert manifest["status"] == "done"
        assert manifest["stages"]["sample"]["samples"] == {
            "t2i_compbench_val": len(COMPBENCH_CATEGORIES) * COMPBENCH_PER_FILE * IMAGES_PER_PROMPT,
            "coco30k": COCO_CAPTIONS}  # one image per COCO caption, whatever images_per_prompt says
        metrics = json.loads((cell_dir / "metrics.json").read_text())
        for key in ("t2i_compbench/color", "t2i_compbench/spatial", "t2i_compbench/non_spatial",
                    "t2i_compbench/complex", "fid/fid", "fid/kid", "clip_score/clip_score"):
            assert np.isfinite(metrics[key]["mean"]), key
        clip_score = json.loads((cell_dir / "eval" / "clip_score.json").read_text())
        assert a["env"]["GENTRON_CLIP_SCORE_MODEL"] in json.dumps(clip_score["protocol"])
        fid = json.loads((cell_dir / "eval" / "fid.json").read_text())
        assert fid["protocol"]["feature_extractor"].startswith("random") and not fid["comparable_to_paper"]
    requeued = json.loads((grid_dir / cells["clip"].cell_id / "manifest.json").read_text())
    assert requeued["stages"]["train"]["attempts"] >= 2
    assert not (grid_dir / "cache").exists() or not list((grid_dir / "cache").glob("data-*.pt"))  # streamed

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


def test_plan_prints_parameters_gpus_and_gpu_hours(tmp_path, capsys):
    """Parameters counted exactly by gentron.sizes; GPU-hours from DiT-XL/2's published throughput
    scaled by forward FLOPs (adaLN XL/2 with CLIP-L is DiT-XL/2's compute: exactly its throughput)."""
    from ablations import costs as cost_model
    from ablations import launch
    from ablations.grid import plan
    from gentron import sizes

    args = ["grid=conditioning", "profile=paper", "data.path=/data/shards", "seeds=[0]", "slurm=example",
            f"runs_dir={tmp_path}"]
    p = plan(args)
    adaln = next(c for c in p.cells if c.arms["conditioning"] == "adaln")
    costs = cost_model.cell_costs(adaln, gpus=8)
    assert costs["params"] == sizes.count_params(sizes.paper_config("XL/2", "adaln", "CLIP-L"))["total"]
    images = adaln.config.train.steps * adaln.config.train.batch_size
    assert costs["gpu_hours"] == pytest.approx(images / (0.81 * 256 / 8) / 3600)
    assert costs["hours"] == pytest.approx(costs["gpu_hours"] / 8)
    cross = cost_model.cell_costs(next(c for c in p.cells if c.arms["conditioning"] == "cross_attn"), gpus=8)
    assert cross["params"] > costs["params"] and cross["gpu_hours"] > costs["gpu_hours"]
    launch.main([*args, "dry_run=true"])
    out = capsys.readouterr().out
    assert f"{costs['params'] / 1e6:.1f}M" in out and "GPUs" in out and f"{costs['gpu_hours']:,.0f}" in out
    assert "facebookresearch/DiT" in out
