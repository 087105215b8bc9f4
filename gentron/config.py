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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from collections.abc import Sequence

import yaml

from gentron import schema
from gentron.errors import ConfigError
from gentron.io import atomic_write_text
from gentron.specs import Dtype, EncoderShape, TextEncoderSpec, TinyClipSpec, local_json

# Training keys that change how a run is carried out, not what it computes: a run folder resumes
# across a change of them (gentron.checkpoint), and a grid cell's id leaves them out (ablations).
RUN_ONLY_KEYS = ("train.log_every", "train.ckpt_every", "train.tensorboard", "train.wandb", "train.wandb_project",
                 "train.compile",
                 "train.grad_checkpointing", "train.strategy", "train.keep_last", "train.resume", "train.grad_accum",
                 "data.cache_dir", "train.eval_every", "train.eval_batch", "train.eval_bins", "train.eval_prompts",
                 "train.eval_sample_steps", "train.eval_prompt_set", "train.eval_metrics")


@dataclass
class ModelConfig:
    size: str = "CS/2"  # a name from gentron.sizes: it sets depth, widths, heads and patch size
    conditioning: Literal["adaln", "cross_attn"] = "cross_attn"
    learn_sigma: bool = False
    prediction: Literal["epsilon", "v"] = "v"  # what the network regresses (DiT: epsilon)
    noise_schedule: Literal["linear", "cosine"] = "cosine"  # betas (DiT: linear); see make_betas
    timestep_std: float | None = 0.8  # logit-normal training timesteps (Diffusion.sample_timesteps); None: uniform
    patch_size: int | None = None  # must agree with the size name when given
    depth: int | None = None  # explicit overrides of the size (None: the size's own)
    hidden_size: int | None = None
    mlp_hidden_size: int | None = None
    num_heads: int | None = None


@dataclass
class VAEConfig:
    """Pixel space (`identity`) or a KL autoencoder's latents (gentron.vae)."""
    kind: Literal["identity", "autoencoder_kl"] = "identity"
    path: str | None = None  # autoencoder_kl weights: hub id or local folder
    scaling_factor: float | None = 0.18215  # null: the autoencoder's own config's
    subfolder: str | None = None  # e.g. `vae` inside a diffusers pipeline folder
    sample: bool = False  # encode to a draw of the posterior (DiT) instead of its mean
    batch_size: int = 16  # images per VAE call when encoding or decoding
    dtype: Dtype = "float32"

    def check(self, where: str) -> None:
        if self.kind == "identity":
            given = [k for k in ("subfolder", "sample") if getattr(self, k)]
            if given:
                raise ConfigError(f"{schema.join(where, 'kind')}=identity (pixel space) takes no {given}; "
                                  "they are options of autoencoder_kl")
        if self.batch_size < 1:
            raise ConfigError(f"{schema.join(where, 'batch_size')}={self.batch_size} must be at least 1")

    def shape(self) -> tuple[int, int]:
        """(latent channels, downsampling factor), read from a local folder's config.json without its
        weights; a hub name not yet downloaded is taken as the Stable Diffusion family's (4, 8)."""
        if self.kind == "identity":
            return 3, 1
        folder = str(Path(self.path or "").expanduser() / (self.subfolder or "")) if self.path else None
        cfg = local_json(folder, "config.json")
        if not cfg:
            return 4, 8
        return cfg.get("latent_channels", 4), 2 ** (len(cfg.get("block_out_channels", [0] * 4)) - 1)


@dataclass
class DataConfig:
    kind: Literal["compshapes", "image_folder", "manifest", "webdataset", "video_folder"] = "compshapes"
    resolution: int = 20
    num_train: int = 20000  # CompShapes only: how many images to draw
    categories: list[str] | None = None  # CompShapes only: training categories (None: the six and counting)
    seed: int = 0
    video: bool = False
    num_frames: int = 8
    fps: float = 4.0  # frames per second sampled from real videos (paper: 8 frames at 4 FPS)
    path: str | None = None  # real data: folder, manifest file, or shard pattern
    cache_dir: str | None = None  # encoded latents; default <run_dir>/cache
    on_error: Literal["skip", "raise"] = "skip"  # corrupt real samples: warn and count, or stop
    # Where the frozen encoders run (docs/training_at_scale.md): `memory` encodes the whole data set
    # once and gathers batches from memory (small data: the embedded default); `per_batch` streams
    # samples through loader workers and runs the VAE and text encoders on each batch on the device;
    # `shards` streams VAE latents and every encoder's text features that `python -m gentron.data.encode`
    # wrote to features_dir once (one shard per array task): no encoder runs on the training device.
    encode: Literal["memory", "per_batch", "shards"] = "memory"
    num_workers: int = 2  # loader worker processes per rank when streaming
    shuffle_buffer: int = 1000  # entries in each worker's shuffle buffer when streaming
    features_dir: str | None = None  # encode=shards: the folder of feature shards


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
    compile: bool | None = None  # torch.compile the transformer blocks; None: on CUDA, off on CPU
    grad_accum: int = 1  # micro-batches per optimizer step: each rank's batch runs in this many parts
    init_from: str | None = None  # a checkpoint to start from (T2V from T2I, or stage 2 from 1)
    strategy: Literal["ddp", "fsdp"] = "ddp"  # used when launched on more than one process
    tensorboard: bool = False  # live: train and validation scalars to run_dir/tensorboard (gentron.train_log)
    wandb: bool = False  # live: the same to a W&B run, offline unless WANDB_MODE says otherwise
    wandb_project: str = "gentron"
    # Evaluation during training (gentron.validation, run_dir/validation.jsonl): at each checkpoint whose
    # step is a multiple of eval_every (0: off), the EMA weights' loss on a fixed validation batch of
    # eval_batch items in eval_bins timestep bins, and on CompShapes the judge on eval_prompts held-out
    # prompts per category sampled in eval_sample_steps steps (0 prompts: no judge). With eval_prompt_set
    # (a named prompt set of the harness, e.g. 1,000 COCO captions) and eval_metrics (evaluators that
    # score it), every rank samples its share of that set and the main rank scores it.
    eval_every: int = 0
    eval_batch: int = 64
    eval_bins: int = 10
    eval_prompts: int = 24  # 2 moved a judge point in steps of 0.5: no trend visible (docs/results_browser.md)
    eval_sample_steps: int = 10
    eval_prompt_set: str | None = None
    eval_metrics: list[str] = field(default_factory=list)
    keep_last: int = 2  # checkpoints kept: checkpoints/last.pt and keep_last - 1 earlier step-<step>.pt
    # A run folder resumes only with the config it was trained with (up to keys that change how it
    # runs, not what it computes); `force` continues it with this config instead (gentron.train).
    # last_good: go back to the newest kept checkpoint whose weights are all finite.
    resume: Literal["auto", "force", "last_good"] = "auto"


@dataclass
class SampleConfig:
    sampler: Literal["dpmsolver++", "ddim", "ddpm"] = "dpmsolver++"
    steps: int = 20
    cfg_scale: float = 4.0
    mfg_scale: float | None = None
    clip_x0: bool | None = None  # clip x0 estimates to [-1, 1]; None: on in pixel space (vae identity)
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
    text_encoders: list[TextEncoderSpec] = field(default_factory=lambda: [TinyClipSpec(seed=0)])
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
    cfg = schema.parse(CellConfig, source or {})
    _check_values(cfg)
    return cfg


def to_dict(cfg: CellConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: CellConfig, path: str | Path) -> Path:
    return atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --- validation ---------------------------------------------------------------------------------

def _check_values(cfg: CellConfig) -> None:
    """Checks that span more than one field's type."""
    _check_finite(cfg)
    positive = {
        "data.resolution": cfg.data.resolution, "data.num_frames": cfg.data.num_frames,
        "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size, "train.ckpt_every": cfg.train.ckpt_every,
        "train.log_every": cfg.train.log_every, "train.keep_last": cfg.train.keep_last,
        "train.grad_accum": cfg.train.grad_accum,
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
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise ConfigError(f"train.grad_accum={cfg.train.grad_accum} must divide train.batch_size={cfg.train.batch_size} "
                          "(each micro-batch is an equal part of the batch)")
    if cfg.model.timestep_std is not None and cfg.model.timestep_std <= 0:
        raise ConfigError(f"model.timestep_std={cfg.model.timestep_std} must be positive (SD3's 1.0) or null "
                          "(uniform timesteps)")
    if not cfg.text_encoders:
        raise ConfigError("text_encoders is empty; give at least one, e.g. [{kind: tiny_clip, seed: 0}]")
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


MAX_LR = 1.0  # AdamW moves every weight by about lr per step: beyond 1 nothing trains


def _check_finite(cfg: CellConfig) -> None:
    """NaN passes every comparison unnoticed: no float key may be NaN or infinite (train.grad_clip's
    inf means no clipping and is checked with its range)."""
    nodes = [(section.name, getattr(cfg, section.name)) for section in dataclasses.fields(cfg)]
    nodes += [(f"text_encoders[{i}]", spec) for i, spec in enumerate(cfg.text_encoders)]
    for where, node in nodes:
        if not dataclasses.is_dataclass(node):
            continue
        for f in dataclasses.fields(node):
            key, value = f"{where}.{f.name}", getattr(node, f.name)
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
                       "vae.scaling_factor": 1.0 if cfg.vae.scaling_factor is None else cfg.vae.scaling_factor}.items():
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
    _check_limits(cfg)
    _check_evaluation_during_training(cfg)


# Bounds beyond which a value is a typo, not an experiment: each is far past the paper's settings
# (G/2: depth 48, width 1664; 512 px; batch 2048; 8 frames; 50 sampling steps), and past it the run
# would hang or run out of memory for minutes before failing. Seeds feed torch, NumPy and Python
# generators alike, which agree on [0, 2**31).
UPPER = {"model.depth": 512, "model.hidden_size": 16384, "model.mlp_hidden_size": 65536, "model.num_heads": 1024,
         "data.resolution": 8192, "data.num_frames": 1024, "train.batch_size": 1 << 20, "train.steps": 10**9,
         "sample.steps": 10_000, "sample.images_per_prompt": 10_000, "sample.batch_size": 1 << 16,
         "data.num_workers": 256, "data.num_train": 10**9}
SEED_LIMIT = 2**31
HOST_MEMORY_LIMIT = 2 * 1024**4  # bytes: more than any single node holds (data.encode=memory keeps the set in RAM)


def _check_evaluation_during_training(cfg: CellConfig) -> None:
    t = cfg.train
    for key, value in {"train.eval_every": t.eval_every, "train.eval_prompts": t.eval_prompts}.items():
        if value < 0:
            raise ConfigError(f"{key}={value} must be >= 0 (train.eval_every=0 turns evaluation during training off)")
    for key, value in {"train.eval_batch": t.eval_batch, "train.eval_bins": t.eval_bins,
                       "train.eval_sample_steps": t.eval_sample_steps}.items():
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")
    if t.eval_bins > t.eval_batch:
        raise ConfigError(f"train.eval_bins={t.eval_bins} exceeds train.eval_batch={t.eval_batch}: every timestep "
                          "bin needs at least one validation item; raise eval_batch or lower eval_bins")
    if bool(t.eval_prompt_set) != bool(t.eval_metrics):
        given, missing = (("train.eval_prompt_set", "train.eval_metrics") if t.eval_prompt_set
                          else ("train.eval_metrics", "train.eval_prompt_set"))
        raise ConfigError(f"{given} needs {missing} too: a prompt set sampled during training and the metrics "
                          "that score it (e.g. train.eval_prompt_set=coco1k train.eval_metrics=[fid,clip_score])")


def _check_limits(cfg: CellConfig) -> None:
    for key, limit in UPPER.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and value > limit:
            raise ConfigError(f"{key}={value} is above {limit:,}, beyond any run this harness is meant for; "
                              "check the value (the paper's largest settings are far below)")
    seeds = {"train.seed": cfg.train.seed, "data.seed": cfg.data.seed,
             **{f"sample.seeds[{i}]": v for i, v in enumerate(cfg.sample.seeds)},
             **{f"text_encoders[{i}].seed": getattr(e, "seed") for i, e in enumerate(cfg.text_encoders)
                if hasattr(e, "seed")}}
    for key, value in seeds.items():
        if not 0 <= value < SEED_LIMIT:
            raise ConfigError(f"{key}={value} is out of range; seeds are whole numbers in [0, 2**31)")
    d = cfg.data
    if d.kind == "compshapes" and d.encode == "memory":
        channels, down = cfg.vae.shape()
        side = d.resolution // down
        per_image = channels * side * side * 4  # float32
        total = d.num_train * per_image * (1 + (d.num_frames if d.video else 0))
        if total > HOST_MEMORY_LIMIT:
            raise ConfigError(f"data.num_train={d.num_train:,} at {d.resolution} px would hold {total / 1024**4:.1f} TiB "
                              f"in memory (data.encode=memory), more than any machine; lower data.num_train or "
                              "stream it with data.encode=per_batch")


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
    patches: resolved from the registry and the specs' shapes, nothing is built or loaded."""
    from gentron.sizes import SIZES

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
    _, down = cfg.vae.shape()
    step = patch * down
    if cfg.data.resolution % step:
        lower = cfg.data.resolution - cfg.data.resolution % step
        raise ConfigError(f"data.resolution={cfg.data.resolution} is not divisible by {step} (patch {patch} x "
                          f"VAE downsampling {down}), so the image does not cut into whole patches; use "
                          f"{', '.join(str(r) for r in (lower, lower + step) if r > 0)}")
    try:  # anything else the model's own config refuses
        resolve(cfg)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e


# --- the model a cell describes -------------------------------------------------------------------

def encoder_shapes(cfg: CellConfig) -> list[EncoderShape]:
    """Each text encoder's shape as its spec knows it (no weights are loaded)."""
    return [spec.shape() for spec in cfg.text_encoders]


def resolve(cfg: CellConfig, shapes: Sequence[EncoderShape] | None = None,
            latent: tuple[int, int] | None = None):
    """The GenTronConfig a cell describes, and the only place one is derived from a cell: the size
    from the registry, then the cell's overrides, the latent grid of its VAE and the widths of its
    text encoders. `shapes` and `latent` (channels, downsampling) default to what the specs know
    without weights; a caller that has built the encoders or read stored latents passes theirs."""
    from gentron.sizes import model_config

    m = cfg.model
    shapes = encoder_shapes(cfg) if shapes is None else list(shapes)
    channels, down = cfg.vae.shape() if latent is None else latent
    overrides = {k: getattr(m, k) for k in ("patch_size", "depth", "hidden_size", "mlp_hidden_size", "num_heads")
                 if getattr(m, k) is not None}
    return model_config(
        m.size, **overrides,
        input_size=cfg.data.resolution // down,
        in_channels=channels,
        conditioning=m.conditioning,
        learn_sigma=m.learn_sigma,
        text_widths=tuple(s.width for s in shapes),
        pooled_widths=tuple(s.pooled_width for s in shapes),
        temporal=cfg.data.video,
        max_frames=max(cfg.data.num_frames, 8),
        grad_checkpointing=cfg.train.grad_checkpointing,
    )


def _check_size(name: str) -> None:
    from gentron.sizes import SIZES

    if name not in SIZES:
        close = difflib.get_close_matches(name, list(SIZES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"model.size={name!r} is not a known size{hint}; choose one of {list(SIZES)}")

