"""What moves with the step in every trainer: the learning-rate schedule and the EMA of the weights.

Both are closed forms of the step, so a resumed run needs no scheduler state: the diffusion trainer
(gentron.train) and the tiny text encoders' (gentron.text.pretrain) share the schedule.
"""
from __future__ import annotations

import math

import torch

from gentron import distributed as D


def lr_at(step: int, lr: float, steps: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """The learning rate of optimizer step `step` (from 0) of `steps`: linear warmup to lr * (step + 1) /
    warmup_steps, then a cosine decay to 0 at `steps` (`schedule: cosine`) or `lr` (`constant`)."""
    # Kept by hand: diffusers' cosine schedule equals it after warmup but starts warmup at lr 0, and
    # torch's chained LinearLR + CosineAnnealingLR drifts by ~1e-13 (test_lr_schedule_against_libraries).
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr


def ema_decay_at(step: int, decay: float) -> float:
    """Warm the EMA up: early weights are poor, and a short run must not average them in."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """ema <- ema + (1 - decay) (weights - ema), every tensor in one fused call (FSDP2: each rank its shards)."""
    names, params = zip(*D.unwrap(model).named_parameters())
    torch._foreach_lerp_([ema[name] for name in names], [p.detach() for p in params], 1 - decay)
