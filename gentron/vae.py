"""The autoencoder between pixels and the diffusion model's space: identity (pixel-space
diffusion, for the CPU default) or a diffusers AutoencoderKL (the Stable Diffusion VAE).

Both are frozen and map images in [-1, 1] to scaled latents and back, for images (B, C, H, W) and
videos (B, T, C, H, W) alike.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from gentron.text.encoder import load_hf, parse_dtype

logger = logging.getLogger(__name__)


class VAE(nn.Module):
    """Frozen autoencoder. `channels` and `downsample` describe the latent the model sees."""

    channels: int
    downsample: int
    scaling_factor: float

    def train(self, mode: bool = True) -> VAE:
        return super().train(False)  # frozen: stays in eval mode inside a training module

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        *lead, _, h, w = image_shape
        return (*lead, self.channels, h // self.downsample, w // self.downsample)


class IdentityVAE(VAE):
    """Pixel space: latents are the images."""

    channels, downsample, scaling_factor = 3, 1, 1.0

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class AutoencoderKLVAE(VAE):
    """A diffusers AutoencoderKL; latents are (z - shift_factor) * scaling_factor.

    `encode` returns the posterior mean by default: deterministic, so latents can be cached and
    a run is reproducible; the SD VAE's posterior std is tiny (~1e-2 of the latent scale), so this
    differs from sampling only marginally. `sample=True` draws from the posterior as DiT's
    training script does (pass a generator for reproducibility).
    """

    def __init__(self, model: nn.Module, scaling_factor: float | None = None, sample: bool = False, batch_size: int = 16):
        super().__init__()
        self.model = model
        config = model.config
        self.channels = config.latent_channels
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.sample = sample
        self.batch_size = batch_size
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        def encode_chunk(x):
            dist = self.model.encode(x.to(self.model.dtype)).latent_dist
            z = dist.sample(generator) if self.sample else dist.mode()
            return (z.float() - self.shift_factor) * self.scaling_factor

        return self._batched(encode_chunk, images)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        def decode_chunk(z):
            z = z / self.scaling_factor + self.shift_factor
            return self.model.decode(z.to(self.model.dtype)).sample.float().clamp(-1, 1)

        return self._batched(decode_chunk, latents)

    def _batched(self, fn, x: torch.Tensor) -> torch.Tensor:
        # Videos are encoded frame by frame; chunks bound the activation memory at high resolution.
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        out = torch.cat([fn(chunk) for chunk in flat.split(self.batch_size)])
        return out.reshape(*lead, *out.shape[1:])


def build_vae(spec: Any) -> VAE:
    """The VAE of a spec (gentron.config.VAEConfig, or a mapping validated as one): pixel space for
    `identity` (scaling 1, whatever scaling_factor says), else a diffusers AutoencoderKL."""
    from gentron.config import VAEConfig
    from gentron.schema import parse

    spec = parse(VAEConfig, spec, "vae")
    if spec.kind == "identity":
        return IdentityVAE()
    return build_autoencoder_kl(path=spec.path, scaling_factor=spec.scaling_factor, subfolder=spec.subfolder,
                                sample=spec.sample, batch_size=spec.batch_size, dtype=spec.dtype)


def build_autoencoder_kl(*, path: str | None, scaling_factor: float | None, subfolder: str | None, sample: bool,
                         batch_size: int, dtype: str) -> AutoencoderKLVAE:
    from diffusers import AutoencoderKL

    path = path or "stabilityai/sd-vae-ft-ema"  # the Stable Diffusion VAE GenTron uses
    model = load_hf(lambda p: AutoencoderKL.from_pretrained(p, subfolder=subfolder), path, "VAE")
    vae = AutoencoderKLVAE(model.to(parse_dtype(dtype)), scaling_factor, sample, batch_size)
    logger.info("loaded VAE %s (scaling %.5f, %dx down, %d channels)", path, vae.scaling_factor, vae.downsample, vae.channels)
    return vae
