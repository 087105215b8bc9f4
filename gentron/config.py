"""The validated schema of one cell's config (DESIGN.md "A cell's config"): the single source of truth.

Every stage (train, generate, evaluate, the grid runner) reads a cell through `load_config`, which
merges the given keys onto the defaults below and checks each one: an unknown key names its closest
match, a wrong type or value names the key, the value and what is allowed.

    cfg = load_config("cell.yaml")            # or a dict, or an OmegaConf object
    cfg.train.lr, cfg.model.conditioning       # typed attributes
    save_config(cfg, run_dir / "config.yaml")  # the resolved YAML

The defaults ARE the embedded default: a tiny GenTron trained in pixel space on CompShapes in
minutes on one CPU. Why each number, and every variant measured against it, is in
docs/embedded_default.md; the paper profile's values are in ablations/conf/profiles/paper.yaml.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from gentron.errors import ConfigError
from gentron.io import atomic_write_text

TEXT_ENCODER_KINDS = ("clip", "hf_clip", "t5", "tiny_clip", "tiny_t5")
# Training keys that change how a run is carried out, not what it computes: a run folder resumes
# across a change of them (gentron.train), and a grid cell's id leaves them out (ablations.grid).
RUN_ONLY_KEYS = ("train.log_every", "train.ckpt_every", "train.tensorboard", "train.compile",
                 "train.grad_checkpointing", "train.strategy", "train.keep_last", "train.resume", "data.cache_dir")


@dataclass
class ModelConfig:
    size: str = "CS/2"  # a name from gentron.sizes: it sets depth, widths, heads and patch size
    conditioning: Literal["adaln", "cross_attn"] = "cross_attn"
    learn_sigma: bool = False
    prediction: Literal["epsilon", "v"] = "v"  # what the network regresses (DiT: epsilon)
    noise_schedule: Literal["linear", "cosine"] = "cosine"  # betas (DiT: linear); see make_betas
    logsnr_shift: float = 0.0  # added to the schedule's log SNR (> 0: less noise); see make_betas
    min_snr_gamma: Optional[float] = None  # Min-SNR loss weighting (Diffusion.min_snr_weight); None: plain MSE
    timestep_std: Optional[float] = 0.8  # logit-normal training timesteps (Diffusion.sample_timesteps); None: uniform
    patch_size: Optional[int] = None  # must agree with the size name when given
    depth: Optional[int] = None  # explicit overrides of the size (None: the size's own)
    hidden_size: Optional[int] = None
    mlp_hidden_size: Optional[int] = None
    num_heads: Optional[int] = None


@dataclass
class VAEConfig:
    kind: Literal["identity", "autoencoder_kl"] = "identity"
    path: Optional[str] = None  # autoencoder_kl weights: hub id or local folder
    scaling_factor: float = 0.18215


@dataclass
class DataConfig:
    kind: Literal["compshapes", "image_folder", "manifest", "webdataset", "video_folder"] = "compshapes"
    resolution: int = 20
    num_train: int = 20000  # CompShapes only: how many images to draw
    categories: Optional[list[str]] = None  # CompShapes only: training categories (None: all six)
    seed: int = 0
    video: bool = False
    num_frames: int = 8
    fps: float = 4.0  # frames per second sampled from real videos (paper: 8 frames at 4 FPS)
    path: Optional[str] = None  # real data: folder, manifest file, or shard pattern
    cache_dir: Optional[str] = None  # encoded latents; default <run_dir>/cache
    on_error: Literal["skip", "raise"] = "skip"  # corrupt real samples: warn and count, or stop
    # Where the frozen encoders run (docs/training_at_scale.md): `memory` encodes the whole data set
    # once and gathers batches from memory (small data: the embedded default); `per_batch` streams
    # samples through loader workers and runs the VAE and text encoders on each batch on the device;
    # `shards` streams VAE latents that `python -m gentron.data.encode` wrote to features_dir.
    encode: Literal["memory", "per_batch", "shards"] = "memory"
    num_workers: int = 2  # loader worker processes per rank when streaming
    shuffle_buffer: int = 1000  # entries in each worker's shuffle buffer when streaming
    features_dir: Optional[str] = None  # encode=shards: the folder of feature shards


@dataclass
class TrainConfig:
    steps: int = 7000
    batch_size: int = 32
    lr: float = 8.0e-3
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    caption_dropout: float = 0.1
    p_motion_free: float = 0.5
    ckpt_every: int = 500
    log_every: int = 10
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    grad_checkpointing: bool = False
    compile: bool = False
    init_from: Optional[str] = None  # a checkpoint to start from (T2V from T2I, or stage 2 from 1)
    strategy: Literal["ddp", "fsdp"] = "ddp"  # used when launched on more than one process
    tensorboard: bool = False
    keep_last: int = 2  # checkpoints kept: checkpoints/last.pt and keep_last - 1 earlier step-<step>.pt
    # A run folder resumes only with the config it was trained with (up to keys that change how it
    # runs, not what it computes); `force` continues it with this config instead (gentron.train).
    resume: Literal["auto", "force"] = "auto"


@dataclass
class SampleConfig:
    sampler: Literal["dpmsolver++", "ddim", "ddpm"] = "dpmsolver++"
    steps: int = 20
    cfg_scale: float = 4.0
    mfg_scale: Optional[float] = None
    clip_x0: Optional[bool] = None  # clip x0 estimates to [-1, 1]; None: on in pixel space (vae identity)
    images_per_prompt: int = 1
    seeds: list[int] = field(default_factory=lambda: [42])
    prompt_sets: list[str] = field(default_factory=lambda: ["compshapes_mini"])
    batch_size: int = 64


@dataclass
class EvalConfig:
    metrics: list[str] = field(default_factory=lambda: ["compshapes_judge"])


@dataclass
class CellConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    text_encoders: list[dict[str, Any]] = field(default_factory=lambda: [{"kind": "tiny_clip", "seed": 0}])
    vae: VAEConfig = field(default_factory=VAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def default_config() -> CellConfig:
    return CellConfig()


def load_config(source: CellConfig | dict | str | Path | Any | None = None) -> CellConfig:
    """A validated CellConfig from a YAML path, a dict, an OmegaConf object or a CellConfig.

    Missing keys take their defaults; unknown keys and wrong types raise ConfigError."""
    if isinstance(source, CellConfig):
        source = to_dict(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"config {path} does not exist")
        source = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    elif source is not None and not isinstance(source, dict):
        from omegaconf import OmegaConf  # only OmegaConf objects reach here

        source = OmegaConf.to_container(source, resolve=True)
    cfg = _build(CellConfig, source or {}, "")
    _check_values(cfg)
    return cfg


def to_dict(cfg: CellConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: CellConfig, path: str | Path) -> Path:
    return atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --- validation ---------------------------------------------------------------------------------

def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{_join(where, close[0])}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{_join(where, key)}'{hint}")
    kwargs = {}
    for name in names:
        if name in values:
            kwargs[name] = _check(hints[name], values[name], _join(where, name))
    return cls(**kwargs)


def _check(hint, value, key: str):
    """Return `value` converted to `hint`, or raise a ConfigError naming key, value and what is allowed."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_check(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}={value!r} must be of type {hint.__name__}, got {type(value).__name__}")


def _check_values(cfg: CellConfig) -> None:
    """Checks that span more than one field's type."""
    _check_finite(cfg)
    positive = {
        "data.resolution": cfg.data.resolution, "data.num_frames": cfg.data.num_frames,
        "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size, "train.ckpt_every": cfg.train.ckpt_every,
        "train.log_every": cfg.train.log_every, "train.keep_last": cfg.train.keep_last,
        "sample.steps": cfg.sample.steps,
        "sample.images_per_prompt": cfg.sample.images_per_prompt, "sample.batch_size": cfg.sample.batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")
    for key, value in {"train.caption_dropout": cfg.train.caption_dropout,
                       "train.p_motion_free": cfg.train.p_motion_free,
                       "train.ema_decay": cfg.train.ema_decay}.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}={value} must be in [0, 1]")
    _check_size(cfg.model.size)
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr={cfg.train.lr} must be positive (paper: 1e-4)")
    if cfg.model.timestep_std is not None and cfg.model.timestep_std <= 0:
        raise ConfigError(f"model.timestep_std={cfg.model.timestep_std} must be positive (SD3's 1.0) or null "
                          "(uniform timesteps)")
    if cfg.model.min_snr_gamma is not None and cfg.model.min_snr_gamma <= 0:
        raise ConfigError(f"model.min_snr_gamma={cfg.model.min_snr_gamma} must be positive (Min-SNR's 5) "
                          "or null for plain MSE")
    if not cfg.text_encoders:
        raise ConfigError("text_encoders is empty; give at least one, e.g. [{kind: tiny_clip, seed: 0}]")
    for i, spec in enumerate(cfg.text_encoders):
        if spec.get("kind") not in TEXT_ENCODER_KINDS:
            raise ConfigError(f"text_encoders[{i}].kind={spec.get('kind')!r} is not allowed; "
                              f"choose one of {list(TEXT_ENCODER_KINDS)}")
    if cfg.vae.kind == "autoencoder_kl" and not cfg.vae.path:
        raise ConfigError("vae.kind=autoencoder_kl needs vae.path (e.g. stabilityai/sd-vae-ft-ema or a local folder)")
    if cfg.data.kind != "compshapes" and not cfg.data.path:
        raise ConfigError(f"data.kind={cfg.data.kind} needs data.path (a folder, manifest or shard pattern)")
    if cfg.data.encode == "shards" and not cfg.data.features_dir:
        raise ConfigError("data.encode=shards needs data.features_dir (written by python -m gentron.data.encode)")
    if cfg.data.num_workers < 0 or cfg.data.shuffle_buffer < 1:
        raise ConfigError(f"data.num_workers={cfg.data.num_workers} must be >= 0 and data.shuffle_buffer="
                          f"{cfg.data.shuffle_buffer} >= 1")
    if cfg.data.kind == "video_folder" and not cfg.data.video:
        raise ConfigError("data.kind=video_folder needs data.video=true")
    if cfg.data.video and cfg.data.kind not in ("compshapes", "video_folder"):
        raise ConfigError(f"data.video=true needs clips: data.kind compshapes or video_folder, not {cfg.data.kind}")
    _check_ranges(cfg)
    _check_model_shape(cfg)


# The VAE's downsampling per kind, for checks made before any weights load: autoencoder_kl is the
# Stable Diffusion family's 8x (gentron.vae reads the factor of the weights it loads).
VAE_DOWNSAMPLE = {"identity": 1, "autoencoder_kl": 8}
MAX_LR = 1.0  # AdamW moves every weight by about lr per step: beyond 1 nothing trains


def _check_finite(cfg: CellConfig) -> None:
    """NaN passes every comparison unnoticed: no float key may be NaN or infinite (train.grad_clip's
    inf means no clipping and is checked with its range)."""
    for section in dataclasses.fields(cfg):
        node = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(node):
            continue
        for f in dataclasses.fields(node):
            key, value = f"{section.name}.{f.name}", getattr(node, f.name)
            if isinstance(value, float) and not math.isfinite(value) and key != "train.grad_clip":
                raise ConfigError(f"{key}={value} must be a finite number")


def _check_ranges(cfg: CellConfig) -> None:
    t, s, d = cfg.train, cfg.sample, cfg.data
    if not t.grad_clip > 0:  # also NaN
        raise ConfigError(f"train.grad_clip={t.grad_clip} must be positive: it is the largest gradient norm kept "
                          "(0 zeroes every gradient, a negative value reverses them); train.grad_clip=inf turns "
                          "clipping off (the embedded default: 1.0)")
    if t.lr > MAX_LR:
        raise ConfigError(f"train.lr={t.lr} is above {MAX_LR:g}: AdamW moves every weight by about lr per step "
                          "(the embedded default: 8e-3, the paper: 1e-4)")
    at_least_zero = {"train.weight_decay": t.weight_decay, "train.warmup_steps": t.warmup_steps,
                     "train.seed": t.seed, "data.seed": d.seed, "sample.cfg_scale": s.cfg_scale}
    for key, value in at_least_zero.items():
        if value < 0:
            raise ConfigError(f"{key}={value} must be >= 0")
    for key, value in {"data.num_train": d.num_train, "data.fps": d.fps,
                       "vae.scaling_factor": cfg.vae.scaling_factor}.items():
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")
    if s.mfg_scale is not None:
        if s.mfg_scale < 0:
            raise ConfigError(f"sample.mfg_scale={s.mfg_scale} must be >= 0 (the paper: 1.0 to 1.3) or null (off)")
        if not d.video:
            raise ConfigError(f"sample.mfg_scale={s.mfg_scale} needs data.video=true: motion-free guidance "
                              "guides video models; set sample.mfg_scale=null for images")
    if not s.seeds:
        raise ConfigError("sample.seeds=[] is empty; give at least one sampling seed, e.g. sample.seeds=[42]")
    for i, seed in enumerate(s.seeds):
        if seed < 0:
            raise ConfigError(f"sample.seeds[{i}]={seed} must be >= 0")
    if len(set(s.seeds)) != len(s.seeds):
        raise ConfigError(f"sample.seeds={s.seeds} repeats a seed; each seed draws one image per prompt, "
                          "give distinct seeds")
    if d.kind == "compshapes" and d.categories is not None:
        _check_categories(d.categories, d.video)


def _check_categories(categories: list[str], video: bool) -> None:
    from gentron.data.compshapes import CATEGORIES, VIDEO_CATEGORIES

    if not categories:
        raise ConfigError("data.categories=[] is empty; give CompShapes categories or null (all of them)")
    for name in categories:
        if name not in CATEGORIES:
            close = difflib.get_close_matches(name, CATEGORIES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"data.categories: unknown CompShapes category {name!r}{hint}; choose from "
                              f"{list(CATEGORIES)}")
        if name in VIDEO_CATEGORIES and not video:
            raise ConfigError(f"data.categories: {name!r} is a video category; it needs data.video=true")


def _check_model_shape(cfg: CellConfig) -> None:
    """The model the size and its overrides describe can be built, and the images cut into whole
    patches: read from the size registry, nothing is built."""
    from gentron.sizes import SIZES, model_config

    m = cfg.model
    size, patch = SIZES[m.size]
    own = {"depth": size.depth, "hidden_size": size.hidden_size, "mlp_hidden_size": size.mlp_hidden_size,
           "num_heads": size.num_heads, "patch_size": patch}
    for key, default in own.items():
        value = getattr(m, key)
        if value is not None and value < 1:
            raise ConfigError(f"model.{key}={value} must be at least 1 (null: size {m.size}'s {default})")
    if m.patch_size is not None and m.patch_size != patch:
        raise ConfigError(f"model.patch_size={m.patch_size} disagrees with model.size={m.size!r} (patch {patch}); "
                          f"choose the size {m.size.split('/')[0]}/{m.patch_size} instead")
    width = m.hidden_size if m.hidden_size is not None else size.hidden_size
    heads = m.num_heads if m.num_heads is not None else size.num_heads
    if width % 4:
        raise ConfigError(f"model.hidden_size={width} must be a multiple of 4 (the 2D sin-cos positions split "
                          f"the width in four), e.g. {width - width % 4} or {width - width % 4 + 4}")
    if width % heads:
        divisors = [n for n in range(1, width + 1) if width % n == 0]
        if m.num_heads is not None:
            raise ConfigError(f"model.num_heads={heads} does not divide the width {width} (model.hidden_size"
                              f"{'' if m.hidden_size is not None else f' of size {m.size}'}); choose one of {divisors}")
        raise ConfigError(f"model.hidden_size={width} is not divisible by size {m.size}'s {heads} heads; set "
                          f"model.num_heads to one of {divisors} or a width divisible by {heads}")
    down = VAE_DOWNSAMPLE[cfg.vae.kind]
    step = patch * down
    if cfg.data.resolution % step:
        lower = cfg.data.resolution - cfg.data.resolution % step
        raise ConfigError(f"data.resolution={cfg.data.resolution} is not divisible by {step} (patch {patch} x "
                          f"VAE downsampling {down}), so the image does not cut into whole patches; use "
                          f"{', '.join(str(r) for r in (lower, lower + step) if r > 0)}")
    overrides = {k: getattr(m, k) for k in own if getattr(m, k) is not None}
    try:  # anything else the model's own config refuses
        model_config(m.size, **overrides, input_size=cfg.data.resolution // down, conditioning=m.conditioning,
                     learn_sigma=m.learn_sigma, temporal=cfg.data.video, max_frames=max(cfg.data.num_frames, 8))
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e


def _check_size(name: str) -> None:
    from gentron.sizes import SIZES

    if name not in SIZES:
        close = difflib.get_close_matches(name, list(SIZES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"model.size={name!r} is not a known size{hint}; choose one of {list(SIZES)}")


def _join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)
