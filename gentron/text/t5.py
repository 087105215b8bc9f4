"""T5 encoders: transformers T5EncoderModel (e.g. google/flan-t5-xxl) and a tiny random one with
the byte-level ByT5 tokenizer (no download). Pooled vector = masked mean of the token features."""
from __future__ import annotations

import logging

from torch import nn

from gentron.text.base import TextEmbedding
from gentron.text.encoder import HFTextEncoder, load_hf, masked_mean, parse_dtype, seeded, weights_hash

logger = logging.getLogger(__name__)


class T5TextEncoder(HFTextEncoder):
    def __init__(self, model: nn.Module, tokenizer, name: str, max_length: int):
        super().__init__(model, tokenizer, name, max_length, model.config.d_model, model.config.d_model)

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        batch = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt")
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        tokens = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        mask = mask.bool()
        return TextEmbedding(tokens, mask, masked_mean(tokens, mask))


def build_t5(*, path: str, tokenizer: str | None, max_length: int, dtype: str) -> T5TextEncoder:
    """The encoder half of a T5 checkpoint, from a local folder or a hub name. max_length 120 is
    PixArt-alpha's choice for T5-XXL captions."""
    from transformers import AutoTokenizer, T5EncoderModel

    model = load_hf(T5EncoderModel.from_pretrained, path, "T5 encoder")
    tok = load_hf(AutoTokenizer.from_pretrained, tokenizer or path, "T5 tokenizer")
    name = f"t5:{path}:len{max_length}:{dtype}"
    logger.info("loaded text encoder %s", name)
    return T5TextEncoder(model, tok, name, max_length).to(parse_dtype(dtype))


def build_tiny_t5(*, width: int, layers: int, heads: int, max_length: int, seed: int) -> T5TextEncoder:
    """A small random T5 encoder over bytes (ByT5 tokenizer: 256 bytes + 3 specials + 125 extra ids)."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=384, d_model=width, d_kv=width // heads, d_ff=2 * width, num_layers=layers,
        num_heads=heads, dropout_rate=0.0, feed_forward_proj="gated-gelu",
    )
    model = seeded(seed, lambda: T5EncoderModel(config))
    name = f"tiny_t5:w{width}:l{layers}:h{heads}:len{max_length}:s{seed}:{weights_hash(model)}"
    return T5TextEncoder(model, ByT5Tokenizer(), name, max_length)
