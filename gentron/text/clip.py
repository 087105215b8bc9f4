"""CLIP text towers: open_clip models (name + pretrained tag or checkpoint file), transformers
CLIPTextModel(WithProjection) folders, and a tiny random open_clip tower for CPU runs.

Token features are the final layer's outputs after `ln_final`; the pooled vector is the EOT token's
feature projected by `text_projection`, exactly CLIP's text embedding.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

from gentron.text.base import TextEmbedding
from gentron.text.encoder import (
    HFTextEncoder,
    TextEncoder,
    load_hf,
    masked_mean,
    missing_weights_message,
    parse_dtype,
    seeded,
    weights_hash,
)

logger = logging.getLogger(__name__)


class OpenCLIPTextEncoder(TextEncoder):
    """The text half of an open_clip CLIP model (the vision tower is dropped to save memory)."""

    def __init__(self, tower: nn.Module, tokenizer, name: str, pool: str = "eot"):
        super().__init__()
        if pool not in ("eot", "mean"):
            raise ValueError(f"{name}: pool must be 'eot' (CLIP's own) or 'mean', got {pool!r}")
        self.pool = pool
        # open_clip's CLIP keeps these on the model itself, CustomTextCLIP on model.text.
        pool_type = getattr(tower, "text_pool_type", getattr(tower, "pool_type", None))
        if getattr(tower, "cls_emb", None) is not None or tower.attn_mask is None or pool_type not in ("argmax", "eos"):
            raise ValueError(f"{name}: only CLIP-style causal text towers pooled at EOT are supported")
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self.register_buffer("attn_mask", tower.attn_mask, persistent=False)
        self.tokenizer = tokenizer
        self.eot_id = tokenizer.eot_token_id
        self.name = name
        self.width = self.token_embedding.weight.shape[1]
        self.pooled_width = self._project(torch.zeros(1, self.width)).shape[1]
        self.freeze()

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        ids = self.tokenizer(prompts).to(self.device)
        # The tokenizer always ends a prompt with EOT (also when it truncates): its first
        # occurrence marks the end of the real tokens.
        lengths = (ids == self.eot_id).int().argmax(1) + 1
        length = int(lengths.max())
        # The mask is causal, so running only the first `length` positions gives the real tokens
        # exactly the features the full 77-token pass would, at a fraction of the cost.
        ids = ids[:, :length]
        dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(ids).to(dtype) + self.positional_embedding[:length].to(dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        mask = torch.arange(length, device=ids.device)[None] < lengths[:, None]
        summary = masked_mean(x, mask) if self.pool == "mean" else x[torch.arange(len(ids), device=ids.device), lengths - 1]
        pooled = self._project(summary)
        return TextEmbedding(x, mask, pooled)


class HFCLIPTextEncoder(HFTextEncoder):
    """A transformers CLIPTextModelWithProjection (pooled = text_embeds) or CLIPTextModel
    (pooled = the unprojected EOT feature, `pooler_output`)."""

    def __init__(self, model: nn.Module, tokenizer, name: str, max_length: int):
        width = model.config.hidden_size
        pooled = model.config.projection_dim if hasattr(model, "text_projection") else width
        super().__init__(model, tokenizer, name, max_length, width, pooled)

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        batch = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        return TextEmbedding(out.last_hidden_state, batch["attention_mask"].bool(), pooled)


def build_openclip(*, model: str, pretrained: str | None, dtype: str) -> OpenCLIPTextEncoder:
    """An open_clip model by name, with weights from a pretrained tag (e.g. 'openai') or a local
    checkpoint file. `model` may also use open_clip's 'local-dir:' / 'hf-hub:' schemas (a folder or
    hub repository with open_clip_config.json): their own weights load with `pretrained: null`, or
    a checkpoint file given as `pretrained` replaces them. Never a randomly initialised CLIP."""
    import open_clip

    schema = model.startswith(("local-dir:", "hf-hub:"))
    if not (schema or model in open_clip.list_models()):
        raise ValueError(f"open_clip model {model!r} is unknown; choose one of open_clip.list_models() (e.g. ViT-L-14)")
    is_file = pretrained is not None and Path(pretrained).expanduser().is_file()
    if pretrained is not None and not is_file:
        if schema:
            raise ValueError(f"open_clip model {model!r} names its own weights; pretrained={pretrained!r} must be "
                             "a checkpoint file or null")
        tags = open_clip.list_pretrained_tags_by_model(model)
        if pretrained not in tags:
            raise ValueError(
                f"pretrained={pretrained!r} is neither a checkpoint file nor a tag of {model} ({tags})"
            )
    if schema and model.startswith("local-dir:") and not is_file:
        folder = Path(model.removeprefix("local-dir:")).expanduser()
        if not [f for suffix in (".safetensors", ".bin", ".pth") for f in folder.glob(f"*{suffix}")]:
            raise FileNotFoundError(f"open_clip folder {folder} holds no weights (*.safetensors, *.bin, *.pth); "
                                    "add them or set pretrained: to a checkpoint file")
    weights = str(Path(pretrained).expanduser().resolve()) if is_file else pretrained
    try:
        if schema:  # architecture from the folder or repository; weights from it or from the file
            clip = open_clip.create_model(model, load_weights=not is_file)
            if is_file:
                open_clip.load_checkpoint(clip, weights)
        else:
            clip = open_clip.create_model(model, pretrained=weights, load_weights=pretrained is not None)
    except (OSError, RuntimeError) as e:
        if is_file:
            raise
        repo = open_clip.get_pretrained_cfg(model, pretrained).get("hf_hub", "").strip("/") or None
        local = "set pretrained: to a local open_clip checkpoint file"
        raise FileNotFoundError(missing_weights_message(f"{model} {pretrained}", "open_clip", e, repo, local)) from e
    tower = clip.text if hasattr(clip, "text") else clip
    tokenizer = open_clip.get_tokenizer(model)
    name = f"clip:{model}:{weights}:ctx{tokenizer.context_length}:{dtype}"
    logger.info("loaded text encoder %s", name)
    return OpenCLIPTextEncoder(tower, tokenizer, name).to(parse_dtype(dtype))


def build_hf_clip(*, path: str, tokenizer: str | None, max_length: int, dtype: str) -> HFCLIPTextEncoder:
    """A transformers CLIP text model from a local folder or a hub name (e.g.
    openai/clip-vit-large-patch14), with its projection if the checkpoint has one. `tokenizer`
    defaults to `path` (diffusers pipelines keep it in a sibling `tokenizer/` folder)."""
    from transformers import AutoConfig, AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    config = load_hf(AutoConfig.from_pretrained, path, "CLIP text")
    has_projection = bool({"CLIPTextModelWithProjection", "CLIPModel"} & set(config.architectures or []))
    cls = CLIPTextModelWithProjection if has_projection else CLIPTextModel
    model = load_hf(cls.from_pretrained, path, "CLIP text")
    tokenizer = load_hf(AutoTokenizer.from_pretrained, tokenizer or path, "CLIP tokenizer")
    name = f"hf_clip:{path}:{'proj' if has_projection else 'noproj'}:ctx{max_length}:{dtype}"
    logger.info("loaded text encoder %s", name)
    return HFCLIPTextEncoder(model, tokenizer, name, max_length).to(parse_dtype(dtype))


def build_tiny_clip(*, width: int, layers: int, heads: int, pooled_width: int | None, seed: int,
                    embed_std: float, position_std: float, window: int | None) -> OpenCLIPTextEncoder:
    """A small random open_clip text tower with CLIP's real BPE tokenizer (no download), frozen.

    A random stand-in must still tell words apart, as a trained CLIP does. At open_clip's own init
    (token embeddings std 0.02, positions 0.01) the residual stream is dominated by what the random
    blocks add, which is much the same for every token: "green" and "red" in the same place come out
    0.9 cosine-similar. Unit-scale token embeddings keep each word's identity (0.2), positions at 0.3
    keep where it stands (binding needs to know which noun a colour word precedes), and the blocks still
    mix in its context. Its EOT feature summarises nothing it was trained to, and with word identity
    this strong it is nearly the same for every prompt, so the pooled vector (adaLN's only view of the
    prompt) is the projected mean of the tokens.

    A trained encoder's noun feature carries its own adjectives ("circle" in "a red circle" knows it
    is red); a random one, attending at random across the whole prefix, mixes every earlier word in
    about equally, so "square" in "a red circle and a blue square" carries red as much as blue. Each
    token therefore sees itself and `window - 1` tokens before it (after all blocks:
    `layers * (window - 1)` back), the reach of an English adjective-noun phrase: "circle" then
    changes with its own colour and not with the other object's, and a cross-attention layer can
    read a bound colour and shape from one token. Measured in README "The embedded default".
    """
    from open_clip.transformer import TextTransformer

    def random_tower():
        tower = TextTransformer(context_length=77, vocab_size=49408, width=width, heads=heads, layers=layers,
                                output_dim=pooled_width or width)
        nn.init.normal_(tower.token_embedding.weight, std=embed_std)
        nn.init.normal_(tower.positional_embedding, std=position_std)
        if window:
            tower.attn_mask = local_causal_mask(tower.attn_mask.shape[0], window)
        return tower

    tower = seeded(seed, random_tower)
    name = (f"tiny_clip:w{width}:l{layers}:h{heads}:p{pooled_width or width}:s{seed}:mean:win{window or 0}:"
            f"{weights_hash(tower)}")
    return OpenCLIPTextEncoder(tower, clip_bpe_tokenizer(), name, pool="mean")


def local_causal_mask(length: int, window: int) -> torch.Tensor:
    """Additive attention mask: each token sees itself and the `window - 1` tokens before it."""
    offset = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    return torch.zeros(length, length).masked_fill((offset < 0) | (offset >= window), float("-inf"))


@functools.lru_cache(maxsize=1)
def clip_bpe_tokenizer():
    """open_clip's CLIP BPE tokenizer (77 tokens); loading its vocabulary takes seconds, so once."""
    import open_clip

    return open_clip.get_tokenizer("ViT-L-14")
