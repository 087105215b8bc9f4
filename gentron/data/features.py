"""Frozen encoders between the data and the model, and the one place their outputs change dtype.

The text encoders and the VAE run in their own dtype (T5-XXL in bfloat16 on the paper profile);
the model takes its inputs in its compute dtype (its parameters' dtype: autocast lowers matmuls
further on a GPU). `to_model_dtype` is that boundary, used by training and generation alike.
"""
from __future__ import annotations

import torch

from gentron.text.base import TextEmbedding


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model's inputs must have: that of its floating-point parameters."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def to_model_dtype(text: list[TextEmbedding], dtype: torch.dtype, device=None) -> list[TextEmbedding]:
    """Text features cast (and moved) to the model's compute dtype; masks stay boolean.
    A no-op, returning the same tensors, when they already are."""
    return [e.to(device=device, dtype=dtype) if device is not None else e.to(dtype=dtype) for e in text]
