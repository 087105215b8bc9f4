"""What the paper-profile rehearsal (tests/test_paper_rehearsal.py) loads, tiny, saved as the real
counterparts are: WebDataset shards and MP4 clips of CompShapes, an SD-VAE-shaped AutoencoderKL, a T5
checkpoint, an open_clip folder, T2I-CompBench / COCO / GenEval prompt files, FID reference statistics, and
a tiny CLIP trained on CompShapes captions (so a CLIP score means something: matching captions score above
shuffled ones)."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent.parent
RESOLUTION = 64
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
T5_WIDTH, CLIP_WIDTH = 48, 32


# --- data ---------------------------------------------------------------------------------------

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def compshapes_images(split: str, count: int, seed: int):
    """[(PIL image, caption)] of `count` CompShapes scenes at RESOLUTION."""
    from PIL import Image

    from gentron.data import compshapes

    data = compshapes.CompShapes(split=split, resolution=RESOLUTION, num_samples=count, seed=seed)
    scenes = [data.scene(i) for i in range(count)]
    return [(Image.fromarray(compshapes.render(s, RESOLUTION)), s.caption) for s in scenes]


def write_shards(root: Path, images: int, shards: int) -> str:
    """CompShapes training images as WebDataset shards (key.png + key.txt); shard 0 also holds one
    corrupt image. Returns the brace pattern a user passes as data.path."""
    root.mkdir(parents=True, exist_ok=True)
    tars = [tarfile.open(root / f"train-{s:05d}.tar", "w") for s in range(shards)]
    _add(tars[0], "corrupt.png", b"\x89PNG\r\n\x1a\n not an image")
    _add(tars[0], "corrupt.txt", b"a broken sample")
    for i, (image, caption) in enumerate(compshapes_images("train", images, 0)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        _add(tars[i % shards], f"{i:06d}.png", buffer.getvalue())
        _add(tars[i % shards], f"{i:06d}.txt", caption.encode())
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


def save_trained_clip(path: Path, pairs: int = 512, steps: int = 150, batch: int = 32, seed: int = 0) -> Path:
    """eval.tiny_models' transformers CLIP, trained contrastively on `pairs` CompShapes images and their
    captions (~10 s on a CPU): its cosines rank a caption's own image above the others' (a random CLIP's
    do not, and its CLIP score, max(100 * mean cos, 0), clamps to 0)."""
    from transformers import CLIPModel, CLIPProcessor

    from eval.tiny_models import save_tiny_clip

    save_tiny_clip(path, seed)
    model, processor = CLIPModel.from_pretrained(path), CLIPProcessor.from_pretrained(path)
    images, captions = zip(*compshapes_images("train", pairs, seed))
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    tokens = processor(text=list(captions), return_tensors="pt", padding=True)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(pairs, generator=generator)[:batch]
        loss = model(input_ids=tokens["input_ids"][idx], attention_mask=tokens["attention_mask"][idx],
                     pixel_values=pixels[idx], return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(path)
    return path


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


def geneval_prompts(official: Path, out: Path) -> tuple[Path, list[str]]:
    """The official prompts/ folder cut to the first prompt of each of GenEval's six tasks, both files
    cut alike (line n of generation_prompts.txt is line n of evaluation_metadata.jsonl); (the folder, the
    object classes they name)."""
    from eval.geneval.rules import TAGS

    src = official / "prompts"
    prompts = src.joinpath("generation_prompts.txt").read_text().splitlines()
    metadata = src.joinpath("evaluation_metadata.jsonl").read_text().splitlines()
    tags = [json.loads(line)["tag"] for line in metadata]
    chosen = [tags.index(tag) for tag in TAGS]
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation_prompts.txt").write_text("".join(prompts[i] + "\n" for i in chosen))
    (out / "evaluation_metadata.jsonl").write_text("".join(metadata[i] + "\n" for i in chosen))
    classes = sorted({c["class"] for i in chosen for c in json.loads(metadata[i])["include"]})
    return out, classes


def fid_reference(folder: Path, stats: Path, images: int) -> Path:
    """Reference images and their statistics (`python -m eval.fid make-stats`), as eval.coco refs
    and make-stats give them for COCO val2014."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, _) in enumerate(compshapes_images("test", images, 1)):
        image.save(folder / f"{i:05d}.png")
    subprocess.run([sys.executable, "-m", "eval.fid", "make-stats", str(folder), str(stats), "--extractor", "random"],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    return stats
