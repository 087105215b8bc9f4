"""A pretrained diffusers pipeline (PixArt-alpha, SD-XL, Stable Diffusion, ...) sampled as a baseline,
under the protocol of a trained cell (docs/baselines.md).

    spec = load_baseline({"pipeline": "PixArt-alpha/PixArt-XL-2-512x512", "steps": 20, "guidance": 4.5})
    generate_pipeline(spec, records, "runs/g/<cell>/samples/compshapes_mini", resolution=512, batch_size=16,
                      shard=(k, K), noise="seed")

The sample folder is gentron.generate's, written by its writer (gentron.generate.write_samples): the
same rows for the same prompt records (prompt ids, seeds, indices, file names), the same batches of
`batch_size` rows in prompt order, the same shards, resume and merge. Each image starts from its own
latents: torch.randn of the pipeline's latent shape (C, H/f, W/f) from a CPU generator seeded by
gentron.generate.noise_seed of its row alone, the rule a trained cell's samples follow (so image n of a
prompt starts from the same seed in every cell). What is the pipeline's own is recorded in the folder's
generation.json: the pipeline and its class, the scheduler and its config, steps, guidance, dtype,
resolution, negative prompt and any further call options.

A pipeline is a local folder (written by `pipeline.save_pretrained`) or a hub name already in the
Hugging Face cache; nothing is downloaded. A missing one is refused in one line naming the
`huggingface-cli download` command that fetches it.
"""
from __future__ import annotations

import inspect
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from gentron import schema
from gentron.errors import ConfigError
from gentron.generate import NOISES, noise_seed, sample_rows, write_samples
from gentron.partition import Shard, check_shard
from gentron.schema import required

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Baseline:
    """A baseline of a grid (`baselines: {name: {...}}`) or of `python -m ablations.generate`."""
    pipeline: str = required("PixArt-alpha/PixArt-XL-2-512x512")  # a diffusers pipeline folder or cached hub name
    steps: int = 20  # num_inference_steps
    guidance: float = 4.5  # guidance_scale (classifier-free guidance)
    # a diffusers scheduler class built from the pipeline's scheduler config (e.g. DPMSolverMultistepScheduler);
    # None: the pipeline's own scheduler
    scheduler: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: float16 on CUDA, float32 on a CPU
    resolution: int | None = None  # height and width of the images; None: the cell's data.resolution
    negative_prompt: str | None = None  # None: the pipeline's own unconditional prompt
    options: dict[str, Any] = field(default_factory=dict)  # further keyword arguments of the pipeline's call

    def check(self, where: str) -> None:
        at = f"{where}." if where else ""
        if not self.pipeline.strip():
            raise ConfigError(f"{at}pipeline is empty; give a diffusers pipeline folder or hub name, e.g. "
                              "PixArt-alpha/PixArt-XL-2-512x512")
        if self.steps < 1 or self.guidance < 0 or (self.resolution is not None and self.resolution < 8):
            raise ConfigError(f"{at}steps={self.steps}, guidance={self.guidance}, resolution={self.resolution}: steps "
                              "must be at least 1, guidance at least 0 and resolution (when given) at least 8 pixels")
        taken = {"prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "height", "width", "latents",
                 "generator", "output_type", "num_images_per_prompt"}
        if taken & set(self.options):
            raise ConfigError(f"{at}options sets {sorted(taken & set(self.options))}, which the protocol sets; use "
                              "the keys steps, guidance, resolution and negative_prompt instead")
        if self.scheduler is not None:
            scheduler_class(self.scheduler, where)

    def record(self) -> dict:
        """The spec as plain data (cell.json `baseline`, generation.json)."""
        return asdict(self)


def load_baseline(values: Any, where: str = "baseline") -> Baseline:
    """A validated Baseline from a mapping (gentron.schema: unknown keys and wrong types in one line)."""
    return schema.parse(Baseline, values, where)


def scheduler_class(name: str, where: str = "baseline"):
    import diffusers

    found = getattr(diffusers, name, None)
    if not (isinstance(found, type) and name.endswith("Scheduler") and hasattr(found, "from_config")):
        raise ConfigError(f"{where}.scheduler={name!r} is not a diffusers scheduler class; give one such as "
                          "DPMSolverMultistepScheduler, EulerDiscreteScheduler or DDIMScheduler, or null")
    return found


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def pipeline_folder(name_or_path: str) -> Path:
    """The local folder of a pipeline: the path itself, or the cached snapshot of a hub name (one line
    naming the download command when it is neither)."""
    from eval.weights import hf_model_path

    folder = hf_model_path(name_or_path, f"baseline pipeline '{name_or_path}'")
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"baseline pipeline '{name_or_path}': {folder} holds no model_index.json, so it is "
                                "not a diffusers pipeline; give the folder written by pipeline.save_pretrained, or "
                                f"fetch the pipeline with `huggingface-cli download {name_or_path}`")
    return folder


def load_pipeline(spec: Baseline, device: torch.device):
    """The pipeline of `spec` on `device` in its dtype, with its scheduler swapped when spec names one."""
    from diffusers import DiffusionPipeline

    folder = pipeline_folder(spec.pipeline)
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch_dtype(spec.dtype, device), local_files_only=True)
    if spec.scheduler is not None:
        pipe.scheduler = scheduler_class(spec.scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def latent_shape(pipe, resolution: int) -> tuple[int, int, int]:
    """(C, H/f, W/f): one image's starting latents for a UNet or transformer pipeline."""
    network = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    channels = getattr(getattr(network, "config", None), "in_channels", None)
    factor = getattr(pipe, "vae_scale_factor", None)
    if channels is None or factor is None:
        raise ValueError(f"{type(pipe).__name__}: no unet/transformer with in_channels or no vae_scale_factor, so its "
                         "starting latents cannot be drawn per image; baselines are UNet or transformer pipelines "
                         "with (C, H/f, W/f) latents (Stable Diffusion, SD-XL, PixArt-alpha/sigma, SD3)")
    if resolution % factor:
        raise ValueError(f"resolution {resolution} is not a multiple of {type(pipe).__name__}'s VAE factor {factor}")
    return channels, resolution // factor, resolution // factor


def _plain(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def generate_pipeline(spec: Baseline, prompts: list[dict], out_dir: str | Path, *, resolution: int, batch_size: int,
                      shard: Shard | str | None = None, noise: str = "seed") -> Path:
    """Draw the samples of `prompts` (gentron.generate's prompt records) with the pipeline of `spec` into
    the sample folder `out_dir` at spec.resolution (else `resolution`) pixels, or with `shard=(k, K)`
    shard k's share of them. Returns `out_dir`."""
    shard = check_shard(shard)
    if noise not in NOISES:
        raise ValueError(f"noise {noise!r} is unknown; choose one of {list(NOISES)}")
    size = spec.resolution or resolution

    def start():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        pipe = load_pipeline(spec, device)
        accepted = inspect.signature(pipe.__call__).parameters
        unknown = sorted(set(spec.options) - set(accepted))
        if unknown or "latents" not in accepted:
            raise ValueError(f"{type(pipe).__name__} takes no {unknown or ['latents']} argument; baseline options "
                             f"are keyword arguments of its call: {', '.join(sorted(accepted))}")
        # square images at exactly `size`: no aspect-ratio binning (a no-op for the pipelines' native sizes)
        options = {**({"use_resolution_binning": False} if "use_resolution_binning" in accepted else {}), **spec.options}
        if spec.negative_prompt is not None:
            options["negative_prompt"] = spec.negative_prompt
        shape = latent_shape(pipe, size)
        dtype = pipe.dtype
        protocol = {"sampler": "diffusers", "pipeline": spec.pipeline, "pipeline_class": type(pipe).__name__,
                    "pipeline_folder": str(pipe.config.get("_name_or_path")),  # a hub snapshot's names its commit
                    "scheduler": type(pipe.scheduler).__name__, "scheduler_config": _plain(dict(pipe.scheduler.config)),
                    "steps": spec.steps, "cfg_scale": spec.guidance, "resolution": size, "batch_size": batch_size,
                    "dtype": str(dtype).removeprefix("torch."), "precision": str(dtype).removeprefix("torch."),
                    "negative_prompt": spec.negative_prompt, "options": _plain(options), "noise": noise,
                    "latents": f"torch.randn({', '.join(map(str, shape))}) per image from noise_seed(row)",
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "diffusers": _version("diffusers"), "torch": torch.__version__}

        def draw(batch: list[dict]) -> torch.Tensor:
            # one generator per image, seeded from its row alone: its latents and any noise its scheduler draws
            generators = [torch.Generator().manual_seed(noise_seed(r, noise)) for r in batch]
            latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, dtype)
            images = pipe(prompt=[r["prompt"] for r in batch], num_inference_steps=spec.steps,
                          guidance_scale=spec.guidance, height=size, width=size, latents=latents,
                          generator=generators, output_type="pt", **options).images
            return images.float().cpu() * 2 - 1  # [0, 1] -> [-1, 1], what the writer takes

        log.info("sampling %s (%s, %s, %d steps, guidance %g) at %d px into %s", spec.pipeline, protocol["pipeline_class"],
                 protocol["scheduler"], spec.steps, spec.guidance, size, out_dir)
        return protocol, torch.no_grad()(draw)

    return write_samples(out_dir, sample_rows(prompts, video=False), batch_size, shard, start)


def generate_baseline(baseline: dict, config, prompts: list[dict], out_dir: str | Path, *, noise: str = "seed",
                      shard: Shard | str | None = None) -> Path:
    """A grid's baseline cell (cell.json `baseline`) drawn with its cell config's resolution and batch size."""
    return generate_pipeline(load_baseline(baseline), prompts, out_dir, resolution=config.data.resolution,
                             batch_size=config.sample.batch_size, shard=shard, noise=noise)


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
