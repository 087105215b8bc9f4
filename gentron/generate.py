"""Sample a trained cell into a sample folder (DESIGN.md "A sample folder").

    generate(cfg, "run/checkpoints/last.pt", prompts, "run/samples/compshapes_test")
    python -m gentron.generate CONFIG.yaml --checkpoint CKPT --out DIR [--prompts FILE | --prompt-set NAME]

`prompts` is a list of {prompt, seed, index, category, prompt_id}. Each sample's starting noise
comes from its own seed, so an image does not depend on the batch it was drawn in. Files are written
atomically and listed in samples.jsonl after each batch: a killed run resumes where it stopped, and
a finished one is a no-op.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from gentron.checkpoint import load_checkpoint
from gentron.config import CellConfig, load_config, resolve, to_dict
from gentron.data.features import model_dtype, to_model_dtype
from gentron.diffusion import Diffusion
from gentron.errors import exits_on_user_error
from gentron.io import atomic_save_gif, atomic_save_image, atomic_write_text
from gentron.model import GenTron, GenTronConfig
from gentron.text import PromptCache, build_text_encoders
from gentron.text.base import TextEmbedding
from gentron.vae import build_vae

log = logging.getLogger(__name__)

MANIFEST = "samples.jsonl"
GIF_FRAME_MS = 250  # 4 FPS, the paper's training frame rate


# What a config must agree on with the checkpoint it samples from, beyond the network (model_config)
# and the text encoders: what the network's output means, and the space it works in.
MEANING_KEYS = ("model.prediction", "model.noise_schedule", "model.learn_sigma",
                "vae.kind", "vae.path", "vae.scaling_factor")


def load_ema_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> GenTron:
    """The EMA weights of a training checkpoint in a model built from its stored config."""
    return _ema_model(load_checkpoint(checkpoint), device)


def _ema_model(state: dict, device) -> GenTron:
    model = GenTron(GenTronConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["ema"])
    return model.to(device).eval()


def checkpoint_mismatches(cfg: CellConfig, state: dict, encoders: list, vae) -> list[str]:
    """How `cfg` (with its built text encoders and VAE) disagrees with the run that wrote the checkpoint
    `state`: text encoder fingerprints, the network it describes, and MEANING_KEYS. Checkpoints that
    predate a stored item are compared on what they hold."""
    found = []
    stored_encoders = state.get("text_encoders")
    if stored_encoders is not None:
        here = [e.name for e in encoders]
        if len(here) != len(stored_encoders):
            found.append(f"{len(here)} text encoders here, {len(stored_encoders)} in the checkpoint")
        found += [f"text encoder {i} is {a!r} here, {b!r} in the checkpoint"
                  for i, (a, b) in enumerate(zip(here, stored_encoders)) if a != b]
    built = resolve(cfg, [e.shape for e in encoders], (vae.channels, vae.downsample)).to_dict()
    stored_model = state.get("model_config", {})
    for key, value in built.items():
        if key in ("grad_checkpointing", "max_frames") or key not in stored_model:
            continue
        if _plain(stored_model[key]) != _plain(value):
            found.append(f"model {key} is {_plain(value)} here, {_plain(stored_model[key])} in the checkpoint")
    if cfg.data.video and cfg.data.num_frames > stored_model.get("max_frames", cfg.data.num_frames):
        found.append(f"data.num_frames={cfg.data.num_frames} exceeds the checkpoint's {stored_model['max_frames']} frames")
    stored_cfg = state.get("config")
    if stored_cfg:
        here = to_dict(cfg)
        for key in MEANING_KEYS:
            section, name = key.split(".")
            if name in stored_cfg.get(section, {}) and stored_cfg[section][name] != here[section][name]:
                found.append(f"{key} is {here[section][name]!r} here, {stored_cfg[section][name]!r} in the checkpoint")
    return found


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def sample_file(record: dict, video: bool) -> str:
    key = record["prompt_id"] if record.get("prompt_id", -1) >= 0 else record["index"]
    stem = f"{record.get('category') or 'all'}/{key:06d}_{record['seed']}"
    return stem + (".gif" if video else ".png")


def _read_done(out_dir: Path) -> dict[str, dict]:
    """Manifest rows whose files exist: these samples are not drawn again."""
    manifest = out_dir / MANIFEST
    if not manifest.exists():
        return {}
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["file"]: r for r in rows if (out_dir / r["file"]).exists()}


def _write_manifest(out_dir: Path, rows: list[dict]) -> None:
    atomic_write_text(out_dir / MANIFEST, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> an RGB image."""
    array = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def _save(out_dir: Path, row: dict, x: torch.Tensor) -> None:
    if x.ndim == 3:
        atomic_save_image(out_dir / row["file"], to_pil(x))
        return
    frames = [to_pil(f) for f in x]
    for i, frame in enumerate(frames):
        atomic_save_image(out_dir / row["frames"] / f"{i:03d}.png", frame)
    atomic_save_gif(out_dir / row["file"], frames, GIF_FRAME_MS)


def _batch_text(cache: PromptCache, prompts: list[str], device, dtype: torch.dtype) -> list[TextEmbedding]:
    """The batch's text features from the prompt cache (each prompt encoded once, padding zeroed,
    so a prompt's features do not depend on its batch-mates), in the model's dtype."""
    return to_model_dtype(cache.encode(prompts), dtype, device)


@torch.no_grad()
def generate(cfg: CellConfig | dict | str | Path, checkpoint: str | Path, prompts: list[dict],
             out_dir: str | Path) -> Path:
    cfg = load_config(cfg)
    out_dir = Path(out_dir)
    video = cfg.data.video
    rows = []
    for i, record in enumerate(prompts):
        row = {"prompt": record["prompt"], "seed": int(record["seed"]), "index": int(record.get("index", i)),
               "category": record.get("category", ""), "prompt_id": int(record.get("prompt_id", -1))}
        row["file"] = sample_file(row, video)
        if video:
            row["frames"] = row["file"][: -len(".gif")] + "/"
        rows.append(row)
    files = [r["file"] for r in rows]
    if len(set(files)) != len(files):
        raise ValueError("two prompts map to the same file: (category, prompt_id, seed) must be unique per sample")

    done = _read_done(out_dir)
    todo = [r for r in rows if r["file"] not in done]
    if not todo:
        log.info("%s already holds all %d samples", out_dir, len(rows))
        _write_manifest(out_dir, rows)
        return out_dir

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = load_checkpoint(checkpoint)
    vae = build_vae(cfg.vae).to(device)
    encoders = build_text_encoders(cfg.text_encoders, device)
    mismatches = checkpoint_mismatches(cfg, state, encoders, vae)
    if mismatches:
        raise ValueError(f"the config does not match checkpoint {checkpoint}: {'; '.join(mismatches)}; sample with "
                         "the config it was trained with (its run folder's config.yaml)")
    model = _ema_model(state, device)
    del state
    dtype = model_dtype(model)
    cache = PromptCache(encoders)
    diffusion = Diffusion.from_config(cfg.model)
    clip = cfg.sample.clip_x0 if cfg.sample.clip_x0 is not None else cfg.vae.kind == "identity"
    side = cfg.data.resolution // vae.downsample
    frame_shape = (vae.channels, side, side)
    s = cfg.sample

    for start in tqdm(range(0, len(todo), s.batch_size), desc=f"sampling {out_dir.name}", leave=False):
        batch = todo[start:start + s.batch_size]
        text = _batch_text(cache, [r["prompt"] for r in batch], device, dtype)
        null = _batch_text(cache, [""] * len(batch), device, dtype)
        shape = (len(batch), cfg.data.num_frames, *frame_shape) if video else (len(batch), *frame_shape)
        # One generator per sample: its noise depends on its seed only, not on the batch.
        generators = [torch.Generator().manual_seed(r["seed"]) for r in batch]
        latents = diffusion.sample(model, text, null, shape, sampler=s.sampler, steps=s.steps,
                                   cfg_scale=s.cfg_scale, mfg_scale=s.mfg_scale if video else None,
                                   generator=generators, clip_x0=clip)
        images = vae.decode(latents.flatten(0, 1) if video else latents).cpu()
        if video:
            images = images.unflatten(0, (len(batch), cfg.data.num_frames))
        for row, x in zip(batch, images):
            _save(out_dir, row, x)
            done[row["file"]] = row
        _write_manifest(out_dir, [r for r in rows if r["file"] in done])
    log.info("wrote %d samples to %s", len(todo), out_dir)
    return out_dir


def prompt_set(name: str, seeds: list[int], images_per_prompt: int = 1) -> list[dict]:
    """Prompt records for a named set: `compshapes_test` (the held-out image prompts of every
    category) or `compshapes_motion` (video). One record per (prompt, seed)."""
    from gentron.data import compshapes

    categories = {"compshapes_test": compshapes.IMAGE_CATEGORIES,
                  "compshapes_motion": compshapes.VIDEO_CATEGORIES}.get(name)
    if categories is None:
        raise ValueError(f"unknown prompt set {name!r}; known: compshapes_test, compshapes_motion, "
                         "or pass a file of prompts")
    records = []
    for category in categories:
        for prompt_id, prompt in enumerate(compshapes.test_prompts(category)):
            for index, seed in enumerate(seeds_for(seeds, images_per_prompt)):
                records.append({"prompt": prompt, "seed": seed, "index": index, "category": category,
                                "prompt_id": prompt_id})
    return records


def seeds_for(seeds: list[int], images_per_prompt: int) -> list[int]:
    """images_per_prompt seeds: the given ones, continued upward from the last."""
    out = list(seeds[:images_per_prompt])
    while len(out) < images_per_prompt:
        out.append(out[-1] + 1)
    return out


def read_prompt_file(path: Path, seeds: list[int], images_per_prompt: int) -> list[dict]:
    """Records of a prompt file, one per (prompt, seed): a .txt with one prompt per line
    (T2I-CompBench's layout: the category is the file stem without _val) or a .jsonl of
    {prompt, category, prompt_id} rows. A UTF-8 byte order mark is not part of the first prompt;
    a file without prompts, a bad line or a row without a prompt string is refused with its line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drops a byte order mark
    except UnicodeDecodeError as e:
        raise ValueError(f"prompt file {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"prompt file {path} holds no prompts: give one prompt per line (.txt) or one JSON "
                         "object with a 'prompt' per line (.jsonl)")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number} is not valid JSON ({e.msg}); one object per line, "
                                 'e.g. {"prompt": "a red circle", "category": "color", "prompt_id": 0}') from e
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{number} lacks 'prompt' (a string): {line.strip()[:80]}")
            if not isinstance(row.get("prompt_id", 0), int) or isinstance(row.get("prompt_id"), bool):
                raise ValueError(f"{path}:{number}: prompt_id={row['prompt_id']!r} must be an integer")
            rows.append(row)
    else:
        category = path.stem.removesuffix("_val")
        rows = [{"prompt": line.strip(), "category": category, "prompt_id": i} for i, (_, line) in enumerate(lines)]
    return [{**row, "seed": seed, "index": index} for row in rows
            for index, seed in enumerate(seeds_for(seeds, images_per_prompt))]


@exits_on_user_error("python -m gentron.generate")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gentron.generate", description="Sample a trained GenTron cell into a sample folder.")
    parser.add_argument("config")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--prompts", type=Path, help=".txt (one prompt per line) or .jsonl of records")
    group.add_argument("--prompt-set", default="compshapes_test")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config)
    s = cfg.sample
    records = (read_prompt_file(args.prompts, s.seeds, s.images_per_prompt) if args.prompts
               else prompt_set(args.prompt_set, s.seeds, s.images_per_prompt))
    print(generate(cfg, args.checkpoint, records, args.out))


if __name__ == "__main__":
    main()
