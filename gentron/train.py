"""Train one GenTron cell: `train(cfg, run_dir) -> run_dir/checkpoints/last.pt`.

    python -m gentron.train CONFIG.yaml --run-dir DIR [train.steps=300 model.conditioning=adaln ...]

The data reaches the step through one interface, TrainingData.next_batch (`data.encode`):
- `memory` (small data, the embedded default): the data set is encoded once (VAE latents, or pixels
  for `vae.kind: identity`) into a cache file shared by every cell with the same data and VAE, and
  every training prompt once by the frozen text encoders (PromptCache): a step is a gather;
- `per_batch` (paper scale): loader workers stream samples (gentron.data.stream: split by rank and
  worker, shuffled per epoch through a bounded buffer, resumable) and the VAE and text encoders run
  on each batch on the device; `shards` streams latents written by gentron.data.encode instead.
Either way features meet the model's dtype in gentron.data.features.to_model_dtype.

Exact resume: every random draw of a step (caption dropout, motion-free steps, timesteps, noise)
comes from one torch.Generator whose state is checkpointed; the batch order is a pure function of
(seed, epoch, position) in memory, and each loader worker's position is checkpointed when streaming,
so a resumed run ends bit-identical to an uninterrupted one. All ranks draw the same numbers for the
*global* batch and keep their slice (gentron.distributed).

Stages: `train.init_from` starts from another run's checkpoint. Same model family (e.g. stage 2 at a
higher resolution): weights, EMA and optimizer state are kept, position embeddings are recomputed
for the new grid, the step count restarts. T2I checkpoint into a video model (`data.video: true`):
GenTron.load_t2i_weights, new temporal layers zero-initialised, fresh optimizer.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import math
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from filelock import FileLock
from tqdm import tqdm

from gentron import distributed as D
from gentron.checkpoint import (LAST, capture_rng, checkpoint_dir, load_checkpoint, restore_rng, resume_checkpoint,
                                save_rotating)
from gentron.config import RUN_ONLY_KEYS, CellConfig, default_config, load_config, save_config, to_dict
from gentron.data import compshapes
from gentron.data.features import to_model_dtype
from gentron.diffusion import Diffusion
from gentron.errors import ConfigError, exits_on_user_error
from gentron.io import atomic_torch_save, atomic_write_text, remove_stale_temporaries
from gentron.model import GenTron, GenTronConfig
from gentron.sizes import model_config
from gentron.text import PromptCache, build_text_encoder
from gentron.text.base import TextEmbedding
from gentron.vae import build_vae

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "config.yaml"
CACHE_VERSION = 1  # bump when the cached-data layout changes (what CompShapes draws: its VERSION)
# Data settings that do not change what an encoded data set holds.
NOT_IN_DATA_KEY = ("cache_dir", "on_error", "encode", "num_workers", "shuffle_buffer", "features_dir")


# A run folder also resumes across a change of sampling and evaluation settings, and of train.steps
# under a constant learning rate (it only says where the run stops); RUN_ONLY_KEYS: gentron.config.
RUN_ONLY_SECTIONS = ("sample", "eval")
# No weight of a healthy run comes near this: AdamW moves a weight by about lr per step and the config
# caps lr, so a larger (or non-finite) model or EMA weight means the run diverged, and a checkpoint of
# it must not replace the last good one (resuming from it diverges at any learning rate).
WEIGHT_LIMIT = 1e6


class TrainingDiverged(RuntimeError):
    """The loss, a gradient or a weight became NaN/inf (or absurd); the last good checkpoint was left
    untouched."""


# --- building blocks shared with generation -------------------------------------------------------

def build_encoders(cfg: CellConfig, device: torch.device | str = "cpu") -> list:
    return [build_text_encoder(spec).to(device) for spec in cfg.text_encoders]


def build_model_config(cfg: CellConfig, encoders: list, vae) -> GenTronConfig:
    """The GenTronConfig a cell describes: size from the registry, then the cell's overrides."""
    m = cfg.model
    overrides = {k: getattr(m, k) for k in ("patch_size", "depth", "hidden_size", "mlp_hidden_size", "num_heads")
                 if getattr(m, k) is not None}
    return model_config(
        m.size, **overrides,
        input_size=cfg.data.resolution // vae.downsample,
        in_channels=vae.channels,
        conditioning=m.conditioning,
        learn_sigma=m.learn_sigma,
        text_widths=tuple(e.width for e in encoders),
        pooled_widths=tuple(e.pooled_width for e in encoders),
        temporal=cfg.data.video,
        max_frames=max(cfg.data.num_frames, 8),
        grad_checkpointing=cfg.train.grad_checkpointing,
    )


def default_cache_dir(cfg: CellConfig, run_dir: Path) -> Path:
    """Shared by the cells of a grid (runs/<grid>/cache), so each data set is encoded once."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir.parent / "cache"


# --- data: encoded once, then gathered by index ---------------------------------------------------

@dataclass
class TrainingSet:
    """Encoded training samples. `images` (N, C, h, w) with `image_prompts` (N,) indices into
    `prompts`; for video also `clips` (M, T, C, h, w) with `clip_prompts` (M,)."""
    prompts: list[str]
    images: torch.Tensor
    image_prompts: torch.Tensor
    clips: torch.Tensor | None = None
    clip_prompts: torch.Tensor | None = None


def _iter_dataset(cfg: CellConfig, video: bool):
    """Items {"image" | "video": tensor in [-1, 1], "caption": str} of the configured data."""
    data = cfg.data
    if data.kind == "compshapes":
        dataset = compshapes.from_config({**to_dict(cfg)["data"], "video": video})
        return (dataset[i] for i in range(len(dataset))), len(dataset)
    from gentron.data.real import build_real_dataset

    dataset = build_real_dataset(data)
    return iter(dataset), None


@torch.no_grad()
def _encode_items(items, total, vae, key: str, device, batch_size: int = 256):
    """Encode every item once through the VAE; returns (latents, captions)."""
    latents, captions, pending = [], [], []

    def flush():
        x = torch.stack([p[key] for p in pending]).to(device)
        frames = x.shape[1] if key == "video" else None
        z = vae.encode(x.flatten(0, 1) if frames else x)
        latents.append((z.unflatten(0, (-1, frames)) if frames else z).float().cpu())
        captions.extend(p["caption"] for p in pending)
        pending.clear()

    for item in tqdm(items, total=total, desc=f"encoding {key}s", leave=False):
        pending.append(item)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not latents:
        raise ValueError(f"the training data yielded no {key}s; check data.kind and data.path")
    return torch.cat(latents), captions


def load_training_set(cfg: CellConfig, vae, cache_dir: Path, info: D.DistInfo, device) -> TrainingSet:
    """Rank 0 encodes the data once into `cache_dir/data-<hash>.pt`; everyone loads that file."""
    key = json.dumps({"data": {k: v for k, v in to_dict(cfg)["data"].items() if k not in NOT_IN_DATA_KEY},
                      "vae": to_dict(cfg)["vae"], "version": CACHE_VERSION,
                      "compshapes": compshapes.VERSION if cfg.data.kind == "compshapes" else None}, sort_keys=True)
    path = cache_dir / f"data-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    payload = None
    if info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The cells of a grid share this cache and may start together: one encodes, the others wait.
        with FileLock(f"{path}.lock"):
            remove_stale_temporaries(path.parent, [path.name])  # its writers hold this lock
            if path.exists():
                payload = _read_data_cache(path)
            if payload is None:
                _encode_training_set(cfg, vae, key, path, device)
    D.barrier(info)
    if payload is None:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    return TrainingSet(payload["prompts"], payload["images"], payload["image_prompts"],
                       payload.get("clips"), payload.get("clip_prompts"))


def _read_data_cache(path: Path) -> dict | None:
    """The encoded data set in `path`, or None (with a warning) when the file is unreadable, e.g.
    truncated by a full disk or a copy: it is only a cache, so it is encoded again."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(payload, dict) and {"prompts", "images", "image_prompts"} <= payload.keys():
            return payload
        problem = "it lacks the encoded images"
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        problem = " ".join(str(e).split()).split(". ")[0][:160]  # torch goes on about checkpoints
    log.warning("data cache %s is unreadable (%s); encoding the data again into it", path, problem)
    return None


def _encode_training_set(cfg: CellConfig, vae, key: str, path: Path, device) -> None:
    t0 = time.time()
    prompts: dict[str, int] = {}
    ids = lambda caps: torch.tensor([prompts.setdefault(c, len(prompts)) for c in caps])  # noqa: E731
    images, image_caps = _encode_items(*_iter_dataset(cfg, video=False), vae, "image", device) \
        if cfg.data.kind != "video_folder" else (None, None)
    payload = {"key": key}
    if cfg.data.video:
        clips, clip_caps = _encode_items(*_iter_dataset(cfg, video=True), vae, "video", device)
        if images is None:  # a video folder has no separate images: middle frames stand in
            images, image_caps = clips[:, clips.shape[1] // 2].clone(), clip_caps
        payload.update(clips=clips, clip_prompts=ids(clip_caps))
    payload.update(images=images, image_prompts=ids(image_caps), prompts=list(prompts))
    atomic_torch_save(path, payload)
    log.info("encoded training data into %s in %.1fs", path, time.time() - t0)


def epoch_indices(n: int, seed: int, stream: int, epoch: int) -> torch.Tensor:
    """The order of an epoch: a pure function of its numbers, so a position is all a resume needs."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + stream * 10_007 + epoch))


def take(n: int, count: int, position: int, seed: int, stream: int) -> torch.Tensor:
    """`count` indices starting at `position` of the endless sequence of shuffled epochs."""
    out = []
    while count:
        epoch, offset = divmod(position, n)
        chunk = epoch_indices(n, seed, stream, epoch)[offset:offset + count]
        out.append(chunk)
        count -= len(chunk)
        position += len(chunk)
    return torch.cat(out)


class PromptTable:
    """Every training prompt (and the empty one) encoded once; a batch is a gather."""

    def __init__(self, cache: PromptCache, prompts: list[str], device, dtype: torch.dtype = torch.float32):
        self.null_id = len(prompts)
        self.embeddings = to_model_dtype(cache.encode(list(prompts) + [""]), dtype, device)

    def lookup(self, ids: torch.Tensor) -> list[TextEmbedding]:
        out = []
        for emb in self.embeddings:
            sub = emb[ids]
            length = max(int(sub.mask.sum(1).max()), 1)  # drop padding no prompt of the batch uses
            out.append(TextEmbedding(sub.tokens[:, :length], sub.mask[:, :length], sub.pooled))
        return out


# --- optimisation -------------------------------------------------------------------------------

def lr_at(step: int, cfg: CellConfig) -> float:
    """Warmup to step (step + 1) / warmup_steps, then cosine or constant. Closed form, a pure
    function of the step, so a resume needs no scheduler state."""
    # Kept by hand: diffusers' cosine schedule equals it after warmup but starts warmup at lr 0, and
    # torch's chained LinearLR + CosineAnnealingLR drifts by ~1e-13 (test_lr_schedule_against_libraries).
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        return t.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return t.lr


def ema_decay_at(step: int, decay: float) -> float:
    """Warm the EMA up: early weights are poor, and a short run must not average them in."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    for name, p in D.unwrap(model).named_parameters():
        ema[name].lerp_(p.detach(), 1 - decay)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A full CPU tensor from a plain or FSDP-sharded (DTensor) one."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def _autocast(cfg: CellConfig, device: torch.device):
    if device.type == "cuda" and cfg.train.precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cfg.train.precision == "bf16":
        log.warning("train.precision=bf16 applies on GPU only; training in fp32 on %s", device)
    return torch.autocast(device.type, enabled=False)


# --- the run ------------------------------------------------------------------------------------

class _StopRequest:
    """SIGINT/SIGTERM between steps: finish the step, write a checkpoint, stop (resume later)."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        log.warning("signal %d: stopping after this step and writing a checkpoint", signum)
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class MetricsLog:
    """run_dir/train_log.jsonl, one line per log step; on resume, lines past the step are dropped, and
    so is a line torn by a kill mid-write (with a warning)."""

    def __init__(self, path: Path, resume_step: int, enabled: bool, tensorboard_dir: Path | None):
        self.path, self.enabled, self.writer = path, enabled, None
        if not enabled:
            return
        if path.exists():
            kept = []
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    step = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    log.warning("%s line %d is torn or not a log row (%r); dropped it", path, number, line[:60])
                    continue
                if step <= resume_step:
                    kept.append(line)
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1)
            except ImportError:
                log.warning("train.tensorboard=true but tensorboard is not installed; logging JSONL only")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    self.writer.add_scalar(f"train/{k}", v, row["step"])

    def close(self):
        if self.writer is not None:
            self.writer.close()


def _init_from(path: str, model: GenTron, ema: dict) -> dict | None:
    """Start a new stage from another run's checkpoint (see the module docstring); returns the
    optimizer state to carry over, or None for a fresh optimizer."""
    state = load_checkpoint(path)
    was_video = state["model_config"].get("temporal", False)
    if model.config.temporal and not was_video:
        model.load_t2i_weights(state["model"])
        ema_model = copy.deepcopy(model)
        ema_model.load_t2i_weights(state["ema"])
        ema.update({k: v.clone() for k, v in ema_model.state_dict().items() if k in ema})
        log.info("initialised a T2V model from T2I checkpoint %s (temporal layers start at zero)", path)
        return None
    model.load_state_dict(state["model"])
    ema.update({k: state["ema"][k].to(device=v.device, dtype=v.dtype, copy=True) for k, v in ema.items()})
    log.info("initialised from %s (weights, EMA and optimizer state; positions recomputed for %dx%d)",
             path, model.config.input_size, model.config.input_size)
    return state["optimizer"]


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and prefix == "":  # sections; a text encoder spec stays one value
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_changes(cfg: CellConfig, stored: dict) -> list[str]:
    """`key: old -> new` for every key of `cfg` that differs from the `stored` config a run folder was
    trained with, except keys that change how the run is carried out (RUN_ONLY_KEYS, RUN_ONLY_SECTIONS),
    and train.steps under a constant learning rate. Keys the stored config lacks take their defaults."""
    old = {**_flatten(to_dict(default_config())), **_flatten(stored)}
    new = _flatten(to_dict(cfg))
    steps_matter = cfg.train.lr_schedule != "constant" or old.get("train.lr_schedule") != "constant"
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in RUN_ONLY_KEYS or key.split(".")[0] in RUN_ONLY_SECTIONS or (key == "train.steps" and not steps_matter):
            continue
        if old.get(key, "(absent)") != new.get(key, "(absent)"):
            changes.append(f"{key}: {old.get(key, '(absent)')} -> {new.get(key, '(absent)')}")
    return changes


def check_same_run(cfg: CellConfig, stored: dict, source: Path) -> None:
    """Refuse to resume a run folder with another config than the one in `source` (its checkpoint or
    config.yaml), naming the keys that differ, unless train.resume=force asks for it."""
    changes = config_changes(cfg, stored)
    if not changes:
        return
    listed = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
    if cfg.train.resume == "force":
        log.warning("train.resume=force: continuing %s with a changed config (%s)", source, listed)
        return
    raise ConfigError(f"{source} holds another config than the one given ({listed}); use another run folder, or "
                      "pass train.resume=force to continue this run with the given config")


def _read_yaml(path: Path) -> dict:
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid YAML ({' '.join(str(e).split())[:120]}); "
                         "restore it or delete it to train this folder with the given config") from e
    if not isinstance(stored, dict):
        raise ValueError(f"{path} is not a config mapping; restore it or delete it to train this folder with the "
                         "given config")
    return stored


def train(cfg: CellConfig | dict | str | Path, run_dir: str | Path) -> Path:
    """Train (or resume) the cell in `run_dir`; returns run_dir/checkpoints/last.pt.

    A run folder resumes only with the config it was trained with (check_same_run); a corrupt
    checkpoint is refused (gentron.checkpoint), and temporaries of killed saves are removed first."""
    cfg = load_config(cfg)
    run_dir = Path(run_dir)
    info = D.init_distributed()
    device = info.device()
    t = cfg.train
    folder = checkpoint_dir(run_dir)
    last_path = folder / LAST
    if info.is_main:  # this run's own files: nobody else writes them
        remove_stale_temporaries(folder)
        remove_stale_temporaries(run_dir, [LOG_FILE, CONFIG_FILE])
    resume_from = resume_checkpoint(folder)
    state = load_checkpoint(resume_from) if resume_from is not None else None
    if state is not None and "config" in state:
        check_same_run(cfg, state["config"], resume_from)
    elif (run_dir / CONFIG_FILE).exists():
        check_same_run(cfg, _read_yaml(run_dir / CONFIG_FILE), run_dir / CONFIG_FILE)
    # What the run records: the permission to resume with another config is not part of it.
    recorded = dataclasses.replace(cfg, train=dataclasses.replace(t, resume="auto"))
    if info.is_main:
        save_config(recorded, run_dir / CONFIG_FILE)

    cache_dir = default_cache_dir(cfg, run_dir)
    encoders = build_encoders(cfg, device)
    fingerprints = [e.name for e in encoders]
    vae = build_vae(to_dict(cfg)["vae"]).to(device)
    dtype = torch.float32  # the model's parameters, and so its compute dtype (autocast lowers it on GPU)
    data = build_training_data(cfg, info, device, dtype, vae, encoders, cache_dir, state and state["data"])
    del encoders, vae  # the data keeps what it runs per batch

    torch.manual_seed(t.seed)
    model = GenTron(build_model_config(cfg, [_Width(*w) for w in data.widths], _Latent(cfg, data))).to(device)
    ema = {k: v.detach().clone() for k, v in model.named_parameters()}
    generator = torch.Generator().manual_seed(t.seed)
    step, optimizer_state = 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        ema = {k: state["ema"][k].to(device) for k in ema}
        step, optimizer_state = state["step"], state["optimizer"]
        restore_rng(state["rng"], generator)
        log.info("resuming %s at step %d from %s", run_dir, step, resume_from)
    elif t.init_from:
        optimizer_state = _init_from(t.init_from, model, ema)
    saved_step = step if state is not None else None  # the step of the newest checkpoint on disk
    del state
    if info.is_main:
        log.info("model: %.2fM parameters, %s", model.num_params() / 1e6, model.config)

    # Wrap first, then build the optimizer: FSDP2 replaces the parameters with sharded ones.
    model = D.wrap_model(model, info, t.strategy)
    if info.enabled and t.strategy == "fsdp":  # shard the EMA like the weights it follows
        ema = {n: _like(p, ema[n]) for n, p in D.unwrap(model).named_parameters()}
    # Fused AdamW: one kernel for all parameters instead of ~10 ops per tensor, which is most of the
    # optimizer's cost on a small model (CPU: 0.45 vs 2.6 ms per step). FSDP2's sharded parameters keep
    # the per-tensor path.
    fused = not (info.enabled and t.strategy == "fsdp")
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    if optimizer_state is not None:
        D.load_optimizer_state(model, optimizer, optimizer_state)
    forward = torch.compile(model) if t.compile else model
    diffusion = Diffusion.from_config(cfg.model)
    metrics = MetricsLog(run_dir / LOG_FILE, step, info.is_main,
                         run_dir / "tensorboard" if t.tensorboard else None)

    def diverged(problem: str) -> TrainingDiverged:
        bar.close()
        metrics.close()
        data.close()
        kept = f"the last good checkpoint {last_path} (step {saved_step}) is untouched" \
            if saved_step is not None and last_path.exists() else "no checkpoint was written yet"
        return TrainingDiverged(
            f"training diverged at step {step}: {problem} (lr={lr_at(max(step - 1, 0), cfg):g}); {kept}. "
            f"Likely fix: lower train.lr (now {t.lr:g}), set/lower train.grad_clip (now {t.grad_clip:g}) or add "
            f"train.warmup_steps (now {t.warmup_steps})")

    def write_checkpoint():
        nonlocal saved_step
        # Only weights a run can go on from become the last good checkpoint.
        problem = poisoned_weight(D.unwrap(model), ema, info)
        if problem:
            raise diverged(problem)
        payload = dict(
            model=D.full_model_state(model),
            ema={k: _full(v) for k, v in ema.items()},
            optimizer=D.full_optimizer_state(model, optimizer),
            step=step, data=data.state_dict(), rng=capture_rng(generator),
            config=to_dict(recorded), model_config=D.unwrap(model).config.to_dict(), text_encoders=fingerprints,
        )
        if info.is_main:
            save_rotating(folder, payload, t.keep_last, saved_step)
        saved_step = step
        D.barrier(info)

    local = D.local_slice(t.batch_size, info)
    bar = tqdm(total=t.steps, initial=step, desc=f"train {run_dir.name}", disable=not info.is_main,
               dynamic_ncols=True)
    window_start, window_steps = time.time(), 0
    model.train()
    with _StopRequest() as stop:
        while step < t.steps and not stop.requested:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x0, text, motion_free = data.next_batch(generator)
            # Timesteps and noise for the whole global batch, so every rank count gives the same run.
            timesteps = diffusion.sample_timesteps(t.batch_size, generator)
            noise = torch.randn((t.batch_size, *x0.shape[1:]), generator=generator)
            with _autocast(cfg, device):
                losses = diffusion.training_loss(forward, x0, text, motion_free=motion_free,
                                                 t=timesteps[local].to(device), noise=noise[local].to(device))
            loss = losses["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            grad_norm = _full(grad_norm) if hasattr(grad_norm, "full_tensor") else grad_norm
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                step += 1
                raise diverged(f"loss={loss.item()}, grad_norm={grad_norm.item()}")
            optimizer.step()
            step += 1
            update_ema(ema, model, ema_decay_at(step, t.ema_decay))
            window_steps += 1
            bar.update(1)

            if step % t.log_every == 0 or step == t.steps:
                elapsed = time.time() - window_start
                steps_per_s = window_steps / max(elapsed, 1e-9)
                row = {"step": step, "lr": lr, "grad_norm": float(grad_norm), "steps_per_s": steps_per_s,
                       "images_per_s": steps_per_s * t.batch_size}
                # Per step, over the window: waiting for the batch, and the encoders run on it.
                row["data_wait_s"], row["encode_s"] = data.wait_s / window_steps, data.encode_s / window_steps
                data.wait_s = data.encode_s = 0.0
                if data.skipped:
                    row["skipped"] = data.skipped  # bad samples this rank's loader workers skipped so far
                for k in ("loss", "mse", "vb"):
                    v = losses.get(k)
                    row[k] = None if v is None else float(D.all_reduce_mean(v.detach().float(), info))
                metrics.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{steps_per_s:.2f}")
                window_start, window_steps = time.time(), 0
            if step % t.ckpt_every == 0 and step < t.steps:
                write_checkpoint()
    if step != saved_step or not last_path.exists():  # a finished run that is rerun stays untouched
        write_checkpoint()
    bar.close()
    metrics.close()
    data.close()
    if stop.requested:
        log.warning("stopped at step %d of %d; run again to resume", step, t.steps)
    D.shutdown(info)
    return last_path


@dataclass
class _Width:
    """An encoder's (token, pooled) widths, as the training data reports them."""
    width: int
    pooled_width: int


class _Latent:
    """The latent space the model works in: the VAE's, or the stored latents' (feature shards)."""

    def __init__(self, cfg: CellConfig, data: TrainingData):
        vae = getattr(data, "vae", None) or build_vae(to_dict(cfg)["vae"])
        self.channels, self.downsample = vae.channels, vae.downsample


def _like(param, full: torch.Tensor):
    """`full` laid out like `param` (an FSDP2 DTensor shard)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements)


@torch.no_grad()
def poisoned_weight(model: torch.nn.Module, ema: dict[str, torch.Tensor], info: D.DistInfo) -> str | None:
    """What makes these weights unfit to resume from: the first model or EMA weight that is NaN, inf or
    beyond WEIGHT_LIMIT in absolute value, or None. Reads the weights only (each rank its own shards;
    every rank gets the same answer)."""
    found = None
    for which, named in (("model", model.named_parameters()), ("ema", ema.items())):
        for name, weight in named:
            local = weight.to_local() if hasattr(weight, "to_local") else weight
            if local.numel() == 0:
                continue
            largest = local.detach().abs().max()
            if not bool(largest <= WEIGHT_LIMIT):  # NaN compares false
                found = f"{which} weight {name} reaches {largest.item():g} (healthy runs stay far below {WEIGHT_LIMIT:g})"
                break
        if found:
            break
    if info.enabled:  # a poisoned shard on any rank stops every rank
        flag = torch.tensor([1.0 if found else 0.0], device=info.device())
        if float(D.all_reduce_mean(flag, info)) > 0 and not found:
            found = "a weight on another rank is non-finite or too large"
    return found


def _batch(cfg: CellConfig, data: TrainingSet, consumed: dict, generator: torch.Generator):
    """The global batch of this step: (x0, prompt ids, motion_free or None). Advances `consumed`."""
    t, n = cfg.train, cfg.train.batch_size
    if not cfg.data.video:
        idx = take(len(data.images), n, consumed["images"], t.seed, stream=0)
        consumed["images"] += n
        return data.images[idx], data.image_prompts[idx], None
    if torch.rand((), generator=generator) < t.p_motion_free:
        # A motion-free step: images as static pseudo-videos, temporal attention masked to identity.
        idx = take(len(data.images), n, consumed["images"], t.seed, stream=0)
        consumed["images"] += n
        x0 = data.images[idx].unsqueeze(1).expand(-1, cfg.data.num_frames, -1, -1, -1)
        return x0, data.image_prompts[idx], torch.ones(n, dtype=torch.bool)
    idx = take(len(data.clips), n, consumed["clips"], t.seed, stream=1)
    consumed["clips"] += n
    return data.clips[idx], data.clip_prompts[idx], torch.zeros(n, dtype=torch.bool)


class TrainingData:
    """What the trainer draws each step, however the data is stored: `next_batch(generator)` ->
    (x0, text, motion_free) for this rank, on the device, in the model's dtype. It makes the step's
    first random draws from `generator`, in this order: the motion-free coin (video), then caption
    dropout for the whole global batch. `widths` are the encoders' (token, pooled) widths."""

    def __init__(self, cfg: CellConfig, info: D.DistInfo, device, dtype: torch.dtype):
        self.cfg, self.info, self.device, self.dtype = cfg, info, device, dtype
        self.local = D.local_slice(cfg.train.batch_size, info)
        self.consumed = {"images": 0, "clips": 0}
        self.widths: list = []
        self.wait_s = 0.0  # seconds blocked waiting for batches (the loader), since the last log row
        self.encode_s = 0.0  # seconds in the frozen encoders per batch, since the last log row

    def motion_free_step(self, generator: torch.Generator) -> bool:
        return bool(torch.rand((), generator=generator) < self.cfg.train.p_motion_free)

    def keep_captions(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.cfg.train.batch_size, generator=generator) >= self.cfg.train.caption_dropout

    @property
    def skipped(self) -> int:
        return 0

    def state_dict(self) -> dict:
        return dict(self.consumed)

    def close(self) -> None:
        pass


class InMemoryData(TrainingData):
    """Small data (the embedded default): latents and every caption's text features encoded once
    (load_training_set, PromptTable), a batch is a gather at positions of a shuffled epoch order."""

    def __init__(self, cfg, info, device, dtype, vae, encoders, cache_dir: Path, state: dict | None):
        super().__init__(cfg, info, device, dtype)
        self.vae = vae
        self.data = load_training_set(cfg, vae, cache_dir, info, device)
        self.table = PromptTable(PromptCache(encoders, cache_dir / "prompts"), self.data.prompts, device, dtype)
        self.widths = [(e.tokens.shape[-1], e.pooled.shape[-1]) for e in self.table.embeddings]
        if state:
            self.consumed = {"images": state["images"], "clips": state["clips"]}

    def next_batch(self, generator):
        started = time.perf_counter()
        x0, ids, motion_free = _batch(self.cfg, self.data, self.consumed, generator)
        keep = self.keep_captions(generator)
        ids = torch.where(keep, ids, torch.full_like(ids, self.table.null_id))
        text = [e[self.local] for e in self.table.lookup(ids.to(self.device))]
        self.wait_s += time.perf_counter() - started
        return (x0[self.local].to(self.device), text,
                None if motion_free is None else motion_free[self.local].to(self.device))


class StreamingData(TrainingData):
    """Large data: local batches streamed by loader workers (gentron.data.stream); the VAE (unless
    the stream holds latents) and the text encoders run on each batch, on the device, under no_grad,
    in their own dtype, and their outputs meet the model's dtype in `to_model_dtype`."""

    def __init__(self, cfg, info, device, dtype, vae, encoders, state: dict | None):
        from gentron.data.stream import Readers, ResumableLoader

        super().__init__(cfg, info, device, dtype)
        self.vae, self.encoders = vae, encoders
        self.widths = [(e.width, e.pooled_width) for e in encoders]
        readers = Readers(info.rank, info.world_size, cfg.data.num_workers)
        state = state or {}
        self.consumed = {"images": state.get("images", 0), "clips": state.get("clips", 0)}
        saved = state.get("streams", {})
        per_rank = self.local.stop - self.local.start
        self.streams = {}
        for name, source in streaming_sources(cfg).items():
            own = saved.get(name)
            self.streams[name] = ResumableLoader(
                source, per_rank, cfg.train.seed + (1 if name == "clips" else 0), readers,
                cfg.data.shuffle_buffer, own[info.rank] if own else None)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.streams.values())

    def next_batch(self, generator):
        n = self.cfg.train.batch_size
        motion_free = None
        name = "images"
        if self.cfg.data.video:
            image_step = self.motion_free_step(generator)
            name = "images" if image_step and "images" in self.streams else "clips"
            motion_free = torch.full((self.local.stop - self.local.start,), image_step, dtype=torch.bool,
                                     device=self.device)
        started = time.perf_counter()
        batch = self.streams[name].next()
        self.wait_s += time.perf_counter() - started
        started = time.perf_counter()
        self.consumed["clips" if motion_free is not None and not bool(motion_free[0]) else "images"] += n
        keep = self.keep_captions(generator)[self.local]
        captions = [c if k else "" for c, k in zip(batch["caption"], keep.tolist())]
        x0 = self._latents(batch)
        if motion_free is not None:
            if x0.ndim == 4:  # images as static pseudo-videos
                x0 = x0.unsqueeze(1).expand(-1, self.cfg.data.num_frames, -1, -1, -1)
            elif bool(motion_free[0]):  # a video folder has no images: middle frames stand in
                x0 = x0[:, x0.shape[1] // 2].unsqueeze(1).expand(-1, x0.shape[1], -1, -1, -1)
        with torch.no_grad():
            text = [encoder.encode(captions) for encoder in self.encoders]
        text = to_model_dtype(text, self.dtype, self.device)
        self.encode_s += time.perf_counter() - started
        return x0, text, motion_free

    @torch.no_grad()
    def _latents(self, batch: dict) -> torch.Tensor:
        if "latent" in batch:
            z = batch["latent"].to(self.device)
        elif "video" in batch:
            x = batch["video"].to(self.device)
            z = self.vae.encode(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        else:
            z = self.vae.encode(batch["image"].to(self.device))
        return z.to(self.dtype)

    def state_dict(self) -> dict:
        streams = {name: s.state_dict() for name, s in self.streams.items()}
        if self.info.enabled:  # every rank's loader position: rank 0 writes them all
            import torch.distributed as dist

            gathered = [None] * self.info.world_size
            dist.all_gather_object(gathered, streams)
            streams = {name: [g[name] for g in gathered] for name in streams}
        else:
            streams = {name: [s] for name, s in streams.items()}
        return {**self.consumed, "streams": streams}

    def close(self) -> None:
        for s in self.streams.values():
            s.close()


def streaming_sources(cfg: CellConfig) -> dict:
    """{"images": source, "clips": source} a streamed cell reads (either may be absent)."""
    from gentron.data.stream import IndexedSource

    data = cfg.data
    if data.encode == "shards":
        from gentron.data.encode import FeatureShards

        return {"clips" if data.video else "images": FeatureShards(data.features_dir)}
    if data.kind == "compshapes":
        sources = {"images": IndexedSource(compshapes.from_config({**to_dict(cfg)["data"], "video": False}))}
        if data.video:
            sources["clips"] = IndexedSource(compshapes.from_config({**to_dict(cfg)["data"], "video": True}))
        return sources
    from gentron.data.real import build_real_dataset

    return {"clips" if data.kind == "video_folder" else "images": build_real_dataset(data)}


def build_training_data(cfg: CellConfig, info: D.DistInfo, device, dtype, vae, encoders, cache_dir: Path,
                        state: dict | None) -> TrainingData:
    if cfg.data.encode == "memory":
        return InMemoryData(cfg, info, device, dtype, vae, encoders, cache_dir, state)
    return StreamingData(cfg, info, device, dtype, vae, encoders, state)


@exits_on_user_error("python -m gentron.train")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gentron.train", description="Train one GenTron cell (resumes if run-dir has a checkpoint).")
    parser.add_argument("config", help="cell config YAML (DESIGN.md 'A cell's config')")
    parser.add_argument("--run-dir", required=True, help="where checkpoints, logs and the resolved config go")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=300 (anywhere on the line)")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from omegaconf import OmegaConf

    for override in args.overrides:
        if "=" not in override or override.startswith("="):
            raise ConfigError(f"'{override}' is not an override: overrides are key=value, e.g. train.steps=300")
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"config {args.config} does not exist; give a cell config YAML "
                                "(DESIGN.md 'A cell's config'), e.g. a cell's config.yaml")
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(args.overrides))
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"{args.config} with overrides {args.overrides} is not a valid config: "
                          f"{str(e).splitlines()[0]}; fix the YAML or the override") from e
    print(train(cfg, args.run_dir))


if __name__ == "__main__":
    main()
