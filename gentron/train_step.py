"""One optimizer step of the trainer (gentron.train), without a round trip to the host.

- `StepNoise`: the step's timesteps and noise. On CPUs they are drawn for the global batch from the
  step generator, which the data's draws share, and each rank keeps its slice: a run is the same on
  any number of ranks, and the embedded default is bit-identical to before. On GPUs each rank draws
  for its own part of the batch, on its device, from a generator seeded from (train.seed, rank)
  whose state every checkpoint holds (one per rank).
- `forward_backward`: the loss of the local batch in `train.grad_accum` micro-batches, gradients
  accumulated and reduced across ranks once, on the last.
- `FiniteWatch`: a device-side record of the first step whose loss or gradient norm was NaN/inf,
  read every `train.log_every` steps and before every checkpoint (reading it waits for the device).
"""
from __future__ import annotations

import hashlib
import logging
import torch

from gentron import distributed as D
from gentron.errors import ConfigError
from gentron.optim import ema_decay_at, update_ema

log = logging.getLogger(__name__)

# Per-rank noise on the device: None chooses by device (GPU yes, CPU no); the tests set it to run the
# GPU's scheme on CPUs.
PER_RANK_NOISE: bool | None = None


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A 63-bit seed for rank `rank`'s noise generator (from step `step` on)."""
    digest = hashlib.blake2b(f"gentron-noise/{seed}/{rank}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class StepNoise:
    """Timesteps and noise of a step for this rank's part of the batch (see the module docstring)."""

    def __init__(self, diffusion, batch_size: int, seed: int, grad_accum: int, info: D.DistInfo,
                 device: torch.device):
        self.diffusion, self.batch_size, self.seed, self.info = diffusion, batch_size, seed, info
        self.local = D.local_slice(batch_size, info)
        if (self.local.stop - self.local.start) % grad_accum:
            raise ConfigError(f"train.grad_accum={grad_accum} must divide each rank's batch (train.batch_size="
                              f"{batch_size} over {info.world_size} processes = {self.local.stop - self.local.start})")
        per_rank = device.type != "cpu" if PER_RANK_NOISE is None else PER_RANK_NOISE
        self.generator = torch.Generator(device).manual_seed(rank_seed(seed, info.rank)) if per_rank else None

    def draw(self, step_generator: torch.Generator, sample_shape: tuple[int, ...], device: torch.device):
        """(timesteps, noise) for this rank's samples, on `device`."""
        if self.generator is None:
            timesteps = self.diffusion.sample_timesteps(self.batch_size, step_generator)
            noise = torch.randn((self.batch_size, *sample_shape), generator=step_generator)
            return timesteps[self.local].to(device), noise[self.local].to(device)
        n = self.local.stop - self.local.start
        timesteps = self.diffusion.sample_timesteps(n, self.generator)
        return timesteps, torch.randn((n, *sample_shape), generator=self.generator, device=self.generator.device)

    def state(self) -> list[torch.Tensor] | None:
        """Every rank's generator state, in rank order (collective), or None when the noise comes from
        the step generator."""
        if self.generator is None:
            return None
        return D.all_gather_object(self.generator.get_state(), self.info)

    def restore(self, states: list[torch.Tensor] | None, step: int) -> None:
        """Continue each rank's stream from a checkpoint's `states`. Written by another number of
        ranks (or by the step generator's scheme), the streams start afresh from (seed, rank, step):
        the run continues correctly, with other noise than an uninterrupted run would draw."""
        if self.generator is None:
            return
        if states is not None and len(states) == self.info.world_size:
            self.generator.set_state(states[self.info.rank])
            return
        if self.info.is_main:
            log.warning("the checkpoint holds noise streams of %s ranks, this run has %d: each rank's noise "
                        "starts afresh at step %d", len(states) if states else "no", self.info.world_size, step)
        self.generator.manual_seed(rank_seed(self.seed, self.info.rank, step))


def forward_backward(model, diffusion, batch, timesteps, noise, accum: int, autocast) -> dict:
    """Loss and gradients of the local batch in `accum` micro-batches (accum=1: one pass). Returns
    the losses averaged over the micro-batches, detached except for accum=1."""
    x0, text, motion_free = batch
    if accum == 1:
        with autocast:
            losses = diffusion.training_loss(model, x0, text, motion_free=motion_free, t=timesteps, noise=noise)
        losses["loss"].backward()
        return losses
    n = len(x0) // accum
    totals: dict = {}
    for i in range(accum):
        part = slice(i * n, (i + 1) * n)
        with D.gradient_sync(model, sync=i == accum - 1):
            with autocast:
                losses = diffusion.training_loss(model, x0[part], [e[part] for e in text],
                                                 motion_free=None if motion_free is None else motion_free[part],
                                                 t=timesteps[part], noise=noise[part])
            (losses["loss"] / accum).backward()
        for key, value in losses.items():
            share = None if value is None else value.detach() / accum
            totals[key] = share if totals.get(key) is None else totals[key] + share
    return totals


def training_step(model, optimizer, ema, diffusion, data, generator, noise, device, autocast, watch, *,
                  step: int, lr: float, grad_accum: int, grad_clip: float, ema_decay: float):
    """Step number `step` of training, the one body the trainer and the GPU benchmark run: the learning
    rate set, the next batch and its noise drawn, loss and gradients over `grad_accum` micro-batches,
    the gradient norm clipped, AdamW, the EMA at its decay for `step`, and the finite watch (no host
    wait). Returns (losses, grad_norm, batch)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    batch = data.next_batch(generator)
    timesteps, eps = noise.draw(generator, tuple(batch[0].shape[1:]), device)
    optimizer.zero_grad(set_to_none=True)
    losses = forward_backward(model, diffusion, batch, timesteps, eps, grad_accum, autocast)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    optimizer.step()
    update_ema(ema, model, ema_decay_at(step, ema_decay))
    watch.update(step, losses["loss"], grad_norm)
    return losses, grad_norm, batch


class FiniteWatch:
    """The first step whose loss or gradient norm was not finite, kept on the device (`update` per
    step: no wait); `first_bad()` reads it (every rank gets the same answer)."""

    def __init__(self, device: torch.device, info: D.DistInfo):
        self.info = info
        self.step = torch.zeros((), dtype=torch.long, device=device)  # 0: none yet
        self.values = torch.zeros(2, device=device)  # its loss and gradient norm

    @torch.no_grad()
    def update(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        values = torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().reshape(())])
        first = ~torch.isfinite(values).all() & (self.step == 0)
        self.step.masked_fill_(first, step)
        self.values = torch.where(first, values, self.values)

    def first_bad(self) -> tuple[int, str] | None:
        """(step, what was not finite) of the first non-finite step on any rank, or None."""
        step = int(D.all_reduce_max(self.step, self.info))
        if step == 0:
            return None
        if int(self.step) != step:
            return step, "the loss or gradient norm on another rank was not finite"
        return step, f"loss={float(self.values[0])}, grad_norm={float(self.values[1])}"


def compile_blocks(model, enabled: bool | None, device: torch.device) -> bool:
    """torch.compile each transformer block in place (state-dict names unchanged); `enabled` None:
    on CUDA only. Returns whether it compiled."""
    if enabled is None:
        enabled = device.type == "cuda"
    if enabled:
        for block in model.blocks:
            block.compile()
    return enabled


def device_settings(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (float32 weights, ~10-bit mantissa products)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_for(precision: str, device: torch.device):
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        log.warning("train.precision=bf16 applies on GPU only; training in fp32 on %s", device)
    return torch.autocast(device.type, enabled=False)
