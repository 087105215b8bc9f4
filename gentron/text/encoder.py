"""The frozen text-encoder base class and the helpers the concrete encoders share."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TypeVar
from collections.abc import Callable

import torch
from torch import nn

from gentron.text.base import TextEmbedding

T = TypeVar("T")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TextEncoder(nn.Module):
    """A frozen text encoder: prompts in, a `TextEmbedding` out.

    Subclasses set `name` (a stable fingerprint: kind, weights, max length; the prompt cache keys
    its files by it), `width` (token width D) and `pooled_width` (P), and implement `_encode`.
    """

    name: str
    width: int
    pooled_width: int

    def freeze(self) -> TextEncoder:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        # Frozen encoders stay in eval mode even inside a module that the trainer puts in train mode.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        if isinstance(prompts, str):
            raise ValueError("encode() takes a list of prompts, not a single string")
        emb = self._encode(list(prompts))
        return trim(emb)

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        raise NotImplementedError

    @property
    def shape(self):
        """Token width, pooled width and tokens per prompt (gentron.specs.EncoderShape)."""
        from gentron.specs import EncoderShape

        return EncoderShape(self.width, self.pooled_width, getattr(self, "max_length", 77))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, width={self.width}, pooled_width={self.pooled_width}"



class HFTextEncoder(TextEncoder):
    """A transformers text model with its tokenizer; subclasses say how widths and pooling work."""

    def __init__(self, model: nn.Module, tokenizer, name: str, max_length: int, width: int, pooled_width: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length
        self.width, self.pooled_width = width, pooled_width
        self.freeze()

def trim(emb: TextEmbedding) -> TextEmbedding:
    """Cut the batch's token length to its longest real prompt and zero the padding.

    Zeroed padding makes a prompt's features independent of the batch it was encoded in.
    """
    length = int(emb.mask.sum(1).max())
    mask = emb.mask[:, :length]
    tokens = emb.tokens[:, :length] * mask.unsqueeze(-1).to(emb.tokens.dtype)
    return TextEmbedding(tokens, mask, emb.pooled)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)


def weights_hash(module: nn.Module) -> str:
    """A short hash of a (small) module's weights, so a tiny random encoder's fingerprint changes
    whenever its initialisation would (another seed, library version or config)."""
    h = hashlib.sha1()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:8]


def seeded(seed: int, build: Callable[[], T]) -> T:
    """Build a randomly initialised module from `seed` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_hf(load: Callable[[str], T], path: str, what: str) -> T:
    """Call a transformers/diffusers `from_pretrained` loader on a local folder or a hub name.

    A hub name that is neither local nor in the Hugging Face cache becomes a FileNotFoundError
    telling the user how to get the weights, instead of a network stack trace.
    """
    if Path(path).expanduser().exists():
        return load(str(Path(path).expanduser()))
    try:
        return load(path)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(missing_weights_message(path, what, e)) from e


def missing_weights_message(name: str, what: str, error: Exception, repo: str | None = None, local: str = "set the spec's path to a local model folder") -> str:
    from huggingface_hub import constants

    mode = "offline (HF_HUB_OFFLINE=1)" if is_offline() else "the download failed"
    return (
        f"{what} weights {name!r} are not available: not a local path, not in the Hugging Face "
        f"cache ({constants.HF_HUB_CACHE}), and {mode}. Fix: on a machine with internet run "
        f"`huggingface-cli download {repo or name}` and copy that cache folder here (or point "
        f"HF_HOME at it), or {local}. "
        f"(Underlying error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    )
