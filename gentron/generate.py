"""Sample a trained cell into a sample folder (DESIGN.md "A sample folder").

    generate(cfg, "run/checkpoints/last.pt", prompts, "run/samples/compshapes_test")
    generate(cfg, ckpt, prompts, out_dir, shard=(k, K))    # shard k of K, e.g. one SLURM array task
    merge_shards(out_dir)                                  # samples.jsonl once every shard is drawn
    python -m gentron.generate CONFIG.yaml --checkpoint CKPT --out DIR [--prompts FILE | --prompt-set NAME]
                                [--shard k/K] [--precision auto|fp32|bf16] [--noise seed|per_prompt]

`prompts` is a list of {prompt, seed, index, category, prompt_id}. Each sample's starting noise comes
from its own generator, seeded from its row alone (`noise_seed`: by default the row's seed), and the
rows are drawn in fixed batches of `sample.batch_size` in prompt order: batch b holds rows
b*B .. b*B+B-1 whatever else happens. Shard k of K draws a contiguous run of whole batches
(gentron.partition), so 1, 2 or K shards write bit-identical files.

Files are written atomically. Each image, once written, is appended to its shard's manifest part
(`.shards/part-<k>-of-<K>.jsonl`); a killed shard resumes at the first unrecorded image, drawing
that image's whole batch again (so its batch-mates are those of an uninterrupted run) but writing
only the images not yet recorded. A finished shard is a no-op. When every row is drawn (the last
shard to finish notices, or `merge_shards`), samples.jsonl lists them in prompt order and
generation.json gives the sampling protocol (sampler, steps, guidance, precision, devices,
batch size, noise, checkpoint), which evaluators copy into their protocol. An unsharded run is
shard 0 of 1.

Precision: on CUDA the model runs under bf16 autocast with TF32 float32 matmuls (`precision="auto"`
or "bf16"; "fp32" turns both off); on a CPU it runs in float32, as before sharding existed. The
scheduler's arithmetic stays float32 everywhere.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gentron.checkpoint import load_checkpoint
from gentron.config import CellConfig, load_config, resolve, to_dict
from gentron.data.features import model_dtype, to_model_dtype
from gentron.diffusion import Diffusion
from gentron.errors import exits_on_user_error
from gentron.io import (atomic_save_gif, atomic_save_image, atomic_write_json, atomic_write_text,
                        remove_stale_temporaries)
from gentron.model import GenTron, GenTronConfig
from gentron.partition import Shard, check_shard, shard_range
from gentron.progress import progress
from gentron.text import PromptCache, build_text_encoders
from gentron.text.base import TextEmbedding
from gentron.vae import build_vae

log = logging.getLogger(__name__)

MANIFEST = "samples.jsonl"
SHARDS = ".shards"  # the plan, each shard's manifest part and its runs' sampling protocol
PLAN = "plan.jsonl"
GENERATION = "generation.json"  # the sampling protocol of the folder, which evaluators copy into theirs
GIF_FRAME_MS = 250  # 4 FPS, the paper's training frame rate
PRECISIONS = ("auto", "fp32", "bf16")
BF16 = "bf16 autocast, tf32 matmuls"
NOISES = ("seed", "per_prompt")


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


def sample_rows(prompts: list[dict], video: bool) -> list[dict]:
    """The manifest row of every prompt record, in order (file names from category, prompt id and seed)."""
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
    return rows


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def _read_rows(path: Path) -> list[dict]:
    """The rows of a manifest or manifest part; a torn or foreign line (a killed writer's) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("file"), str):
            rows.append(row)
    return rows


def _part_path(out_dir: Path, shard: Shard) -> Path:
    return out_dir / SHARDS / f"part-{shard[0]:05d}-of-{shard[1]:05d}.jsonl"


def _recorded(out_dir: Path, rows: list[dict]) -> set[str]:
    """Files of `rows` already drawn: listed with the same row in the manifest or in any shard's part
    (whatever K wrote it), and on disk. These samples are not drawn again."""
    planned = {r["file"]: r for r in rows}
    listed = _read_rows(out_dir / MANIFEST)
    for part in sorted((out_dir / SHARDS).glob("part-*.jsonl")):
        listed += _read_rows(part)
    return {r["file"] for r in listed if planned.get(r["file"]) == r and (out_dir / r["file"]).exists()}


def _write_manifest(out_dir: Path, rows: list[dict]) -> None:
    text = _lines(rows)
    path = out_dir / MANIFEST
    if not (path.exists() and path.read_text(encoding="utf-8") == text):
        atomic_write_text(path, text)


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


def noise_seed(row: dict, noise: str = "seed") -> int:
    """The seed of a sample's starting noise. `seed`: the row's seed, so a prompt's image n starts from
    the same noise in every prompt (and every cell), as T2I-CompBench's seeds 42..51 do. `per_prompt`:
    a hash of (seed, category, prompt_id, index), so every sample of a set starts from its own noise
    (what a set-level metric such as FID assumes of independent samples)."""
    if noise == "seed":
        return row["seed"]
    if noise == "per_prompt":
        key = f"{row['seed']}/{row['category']}/{row['prompt_id']}/{row['index']}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
    raise ValueError(f"noise {noise!r} is unknown; choose one of {list(NOISES)}")


def precision_name(device: torch.device, precision: str = "auto") -> str:
    """What `precision` means on `device`: bf16 autocast with TF32 float32 matmuls on CUDA ('auto' or
    'bf16'), float32 everywhere else (and with 'fp32', TF32 off)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; choose one of {list(PRECISIONS)}")
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return BF16
    if precision == "bf16":
        log.warning("precision=bf16 applies on CUDA only; sampling in fp32 on %s", device)
    return "fp32"


@contextlib.contextmanager
def _numerics(device: torch.device, name: str):
    """The model's forward passes at `name` (precision_name); the flags are restored afterwards."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    tf32 = name == BF16
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=tf32):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@torch.no_grad()
def generate(cfg: CellConfig | dict | str | Path, checkpoint: str | Path, prompts: list[dict],
             out_dir: str | Path, *, shard: Shard | str | None = None, precision: str = "auto",
             noise: str = "seed") -> Path:
    """Draw the samples of `prompts` into the sample folder `out_dir`, or with `shard=(k, K)` shard k's
    share of them (module docstring). Returns `out_dir`; its samples.jsonl lists every sample once all
    shards are drawn."""
    cfg = load_config(cfg)
    shard = check_shard(shard)
    if noise not in NOISES or precision not in PRECISIONS:
        raise ValueError(f"noise={noise!r}, precision={precision!r}: noise is one of {list(NOISES)}, precision one of "
                         f"{list(PRECISIONS)}")
    video = cfg.data.video
    s = cfg.sample

    def start():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        numerics = precision_name(device, precision)
        state = load_checkpoint(checkpoint)
        vae = build_vae(cfg.vae).to(device)
        encoders = build_text_encoders(cfg.text_encoders, device)
        mismatches = checkpoint_mismatches(cfg, state, encoders, vae)
        if mismatches:
            raise ValueError(f"the config does not match checkpoint {checkpoint}: {'; '.join(mismatches)}; sample "
                             "with the config it was trained with (its run folder's config.yaml)")
        model = _ema_model(state, device)
        del state
        dtype = model_dtype(model)
        cache = PromptCache(encoders)
        diffusion = Diffusion.from_config(cfg.model)
        clip = s.clip_x0 if s.clip_x0 is not None else cfg.vae.kind == "identity"
        side = cfg.data.resolution // vae.downsample
        frame_shape = (vae.channels, side, side)
        protocol = {"sampler": s.sampler, "steps": s.steps, "cfg_scale": s.cfg_scale,
                    "mfg_scale": s.mfg_scale if video else None, "clip_x0": clip, "batch_size": s.batch_size,
                    "precision": numerics, "device": _device_name(device), "noise": noise,
                    "checkpoint": str(checkpoint), "torch": torch.__version__}

        def draw(batch: list[dict]) -> torch.Tensor:
            text = _batch_text(cache, [r["prompt"] for r in batch], device, dtype)
            null = _batch_text(cache, [""] * len(batch), device, dtype)
            shape = (len(batch), cfg.data.num_frames, *frame_shape) if video else (len(batch), *frame_shape)
            # One generator per sample: its noise depends on its row only, not on the batch or the shard.
            generators = [torch.Generator().manual_seed(noise_seed(r, noise)) for r in batch]
            with _numerics(device, numerics):
                latents = diffusion.sample(model, text, null, shape, sampler=s.sampler, steps=s.steps,
                                           cfg_scale=s.cfg_scale, mfg_scale=s.mfg_scale if video else None,
                                           generator=generators, clip_x0=clip)
            images = vae.decode(latents.flatten(0, 1) if video else latents).cpu()
            return images.unflatten(0, (len(batch), cfg.data.num_frames)) if video else images

        return protocol, draw

    return write_samples(out_dir, sample_rows(prompts, video), s.batch_size, shard, start)


def write_samples(out_dir: str | Path, rows: list[dict], batch_size: int, shard: Shard,
                  start: Callable[[], tuple[dict, Callable[[list[dict]], torch.Tensor]]]) -> Path:
    """The sample-folder writer every sampler shares (generate, and eval.baseline's diffusers pipelines):
    shard k of K draws its contiguous run of whole batches of `batch_size` rows (sample_rows), resuming
    at the first unrecorded image. `start()` runs only when something is left to draw: it loads the
    sampler and returns this run's sampling protocol (kept for generation.json) and `draw(batch)`, the
    batch's images in [-1, 1] ((B, 3, H, W), or (B, F, 3, H, W) clips). samples.jsonl and
    generation.json are written once every row is drawn."""
    out_dir = Path(out_dir)
    span = shard_range(len(rows), batch_size, shard)
    mine = rows[span.start:span.stop]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    done = _recorded(out_dir, rows)
    todo = [batch for batch in batches if any(r["file"] not in done for r in batch)]
    if not todo:
        log.info("%s already holds the %d samples of shard %d/%d", out_dir, len(mine), *shard)
        _merge_if_complete(out_dir, rows)
        return out_dir
    protocol, draw = start()
    _write_plan(out_dir, rows)
    part = _part_path(out_dir, shard)
    _record_run(part, protocol)
    _remove_own_temporaries(out_dir, [r for batch in todo for r in batch if r["file"] not in done], part, shard)
    planned = {r["file"]: r for r in mine}
    kept = {r["file"]: r for r in _read_rows(part) if r["file"] in done and planned.get(r["file"]) == r}
    atomic_write_text(part, _lines(list(kept.values())))  # the part without torn, stale or repeated lines
    drawn = 0
    with open(part, "a", encoding="utf-8") as ledger:
        for batch in progress(todo, desc=f"sampling {out_dir.name} {shard[0]}/{shard[1]}", unit="batch", leave=False):
            # The whole batch is drawn even where some of its samples exist, so that every sample has the
            # batch-mates of an uninterrupted run; only the missing ones are written.
            for row, x in zip(batch, draw(batch)):
                if row["file"] in done:
                    continue
                _save(out_dir, row, x)
                ledger.write(_lines([row]))
                ledger.flush()
                done.add(row["file"])
                drawn += 1
            os.fsync(ledger.fileno())
    log.info("wrote %d samples of shard %d/%d to %s", drawn, *shard, out_dir)
    _merge_if_complete(out_dir, rows)
    return out_dir


def _remove_own_temporaries(out_dir: Path, missing: list[dict], part: Path, shard: Shard) -> None:
    """Temporaries that killed writes of this shard left: of its missing samples and its part. Other
    shards may be writing into the same folder now, so their files' temporaries are left alone; a
    single shard owns the whole folder and also clears the manifest's and the plan's."""
    by_folder: dict[Path, list[str]] = {}
    for row in missing:
        path = out_dir / row["file"]
        by_folder.setdefault(path.parent, []).append(path.name)
        if row.get("frames"):
            remove_stale_temporaries(out_dir / row["frames"])
    by_folder.setdefault(part.parent, []).extend([part.name, part.with_suffix(".json").name])
    if shard[1] == 1:
        by_folder.setdefault(out_dir, []).extend([MANIFEST, GENERATION])
        by_folder[part.parent].append(PLAN)
    for folder, names in by_folder.items():
        remove_stale_temporaries(folder, names)


def _write_plan(out_dir: Path, rows: list[dict]) -> None:
    """Every row of the folder, in order: what merge_shards lists once all are drawn."""
    path = out_dir / SHARDS / PLAN
    text = _lines(rows)
    if not (path.exists() and path.read_text(encoding="utf-8") == text):
        atomic_write_text(path, text)


def _record_run(part: Path, protocol: dict) -> None:
    """Append this run's sampling protocol to its shard's list of runs (a resumed shard has several)."""
    path = part.with_suffix(".json")
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        runs = []
    atomic_write_json(path, {"runs": [*runs, protocol]})


def _merge_if_complete(out_dir: Path, rows: list[dict]) -> bool:
    """Write the folder's manifest and generation.json when every row is drawn (by whichever shard)."""
    if _recorded(out_dir, rows) != {r["file"] for r in rows}:
        return False
    _write_manifest(out_dir, rows)
    _write_generation(out_dir)
    return True


def _write_generation(out_dir: Path) -> None:
    runs = []
    for path in sorted((out_dir / SHARDS).glob("part-*.json")):
        try:
            runs += json.loads(path.read_text(encoding="utf-8"))["runs"]
        except (ValueError, KeyError, TypeError):
            continue
    if not runs:
        return
    summary: dict = {}
    for key in sorted({k for run in runs for k in run}):
        values = sorted({json.dumps(run.get(key), sort_keys=True) for run in runs})
        summary[key] = json.loads(values[0]) if len(values) == 1 else [json.loads(v) for v in values]
    summary["runs"] = len(runs)
    path = out_dir / GENERATION
    if not (path.exists() and json.loads(path.read_text(encoding="utf-8")) == summary):
        atomic_write_json(path, summary)


def merge_shards(out_dir: str | Path) -> Path:
    """The sample folder's samples.jsonl (every planned row, in order) and generation.json from its
    shards' parts. Idempotent; a ValueError names the samples not drawn yet."""
    out_dir = Path(out_dir)
    rows = _read_rows(out_dir / SHARDS / PLAN)
    if not rows:
        if (out_dir / MANIFEST).exists():
            return out_dir  # written unsharded by an earlier version: nothing to merge
        raise FileNotFoundError(f"{out_dir} holds no sample plan ({SHARDS}/{PLAN}) and no {MANIFEST}: "
                                "run generate(..., shard=(k, K)) for its shards first")
    if not _merge_if_complete(out_dir, rows):
        missing = [r["file"] for r in rows if r["file"] not in _recorded(out_dir, rows)]
        raise ValueError(f"{out_dir}: {len(missing)} of {len(rows)} samples are not drawn yet (e.g. {missing[0]}); "
                         f"run the shards that hold them (generate(..., shard=(k, K)) resumes each where it "
                         f"stopped) and merge again")
    return out_dir


def sampling_cost(cfg: CellConfig | dict | str | Path, images: int) -> SamplingCost:
    """Forward FLOPs of drawing `images` samples (clips for video) with the cell's sampler: model
    evaluations per sample x guided branches per evaluation (2 with classifier-free guidance, 3 with
    motion-free guidance, all in one batched forward) x samples x FLOPs of one branch of one sample
    (gentron.sizes.count_flops of the cell's model at its encoders' token counts, every frame of a clip).
    The text encoders (once per prompt) and the VAE decode are not counted."""
    from gentron.config import encoder_shapes
    from gentron.sizes import count_flops

    cfg = load_config(cfg)
    s, video = cfg.sample, cfg.data.video
    nfe = s.steps  # DDPM, DDIM and second-order multistep DPM-Solver++: one model evaluation per step
    branches = 3 if video and s.mfg_scale is not None else 2
    per_forward = count_flops(resolve(cfg), tuple(e.tokens for e in encoder_shapes(cfg)),
                              frames=cfg.data.num_frames if video else 1)
    return SamplingCost(nfe=nfe, branches=branches, images=int(images), flops_per_forward=per_forward,
                        flops=nfe * branches * int(images) * per_forward)


@dataclass(frozen=True)
class SamplingCost:
    nfe: int
    branches: int
    images: int
    flops_per_forward: int
    flops: int


def prompt_set(name: str, seeds: list[int], images_per_prompt: int = 1) -> list[dict]:
    """Prompt records for a named set: `compshapes_test` (the held-out image prompts of the six
    T2I-CompBench categories), `compshapes_motion` (video; `compshapes_motion_seen`: motion prompts
    of seen colour-shape pairs only) or `compshapes_geneval` (GenEval's six tasks over CompShapes,
    category = task). One record per (prompt, seed)."""
    from gentron.data import compshapes, compshapes_geneval

    categories, pools = {"compshapes_test": (compshapes.IMAGE_CATEGORIES, compshapes.test_prompts),
                         "compshapes_motion": (compshapes.VIDEO_CATEGORIES, compshapes.test_prompts),
                         "compshapes_motion_seen": (compshapes.VIDEO_CATEGORIES, compshapes.seen_prompts),
                         "compshapes_geneval": (compshapes_geneval.TASKS, compshapes_geneval.test_prompts),
                         }.get(name, (None, None))
    if categories is None:
        raise ValueError(f"unknown prompt set {name!r}; known: compshapes_test, compshapes_motion, "
                         "compshapes_motion_seen, compshapes_geneval, or pass a file of prompts")
    records = []
    for category in categories:
        for prompt_id, prompt in enumerate(pools(category)):
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
    parser.add_argument("--shard", default=None, help="k/K: draw shard k of K (e.g. 0/8), resuming where it stopped")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--noise", default="seed", choices=NOISES)
    parser.add_argument("--merge", action="store_true", help="only merge the shards' parts into samples.jsonl")
    args = parser.parse_args(argv)
    if args.merge:
        print(merge_shards(args.out))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config)
    s = cfg.sample
    records = (read_prompt_file(args.prompts, s.seeds, s.images_per_prompt) if args.prompts
               else prompt_set(args.prompt_set, s.seeds, s.images_per_prompt))
    print(generate(cfg, args.checkpoint, records, args.out, shard=args.shard, precision=args.precision,
                   noise=args.noise))


if __name__ == "__main__":
    main()
