"""The one structure every text encoder returns and every model consumes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TextEmbedding:
    """Token features, their padding mask and a pooled vector for a batch of prompts.

    tokens: (B, L, D) float; mask: (B, L) bool, True where a token is real; pooled: (B, P) float.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, *args, **kwargs) -> TextEmbedding:
        mask = self.mask.to(device=self.tokens.to(*args, **kwargs).device)
        return TextEmbedding(self.tokens.to(*args, **kwargs), mask, self.pooled.to(*args, **kwargs))

    def __getitem__(self, index) -> TextEmbedding:
        return TextEmbedding(self.tokens[index], self.mask[index], self.pooled[index])

    def repeat_interleave(self, repeats: int) -> TextEmbedding:
        return TextEmbedding(
            self.tokens.repeat_interleave(repeats, 0),
            self.mask.repeat_interleave(repeats, 0),
            self.pooled.repeat_interleave(repeats, 0),
        )

    @staticmethod
    def cat(parts: list[TextEmbedding]) -> TextEmbedding:
        """Concatenate along the batch, right-padding token sequences to the longest one."""
        length = max(p.tokens.shape[1] for p in parts)
        tokens = [F.pad(p.tokens, (0, 0, 0, length - p.tokens.shape[1])) for p in parts]
        masks = [F.pad(p.mask, (0, length - p.mask.shape[1]), value=False) for p in parts]
        return TextEmbedding(torch.cat(tokens), torch.cat(masks), torch.cat([p.pooled for p in parts]))
