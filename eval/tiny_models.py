"""Tiny random-weight stand-ins for the evaluators' models (CLIP, BLIP-VQA, OWL-ViT), built from
configs and saved with save_pretrained, so tests and benchmarks load them by path through the same code
a user's real checkpoint goes through. Their scores are meaningless; their file layouts are real."""
from __future__ import annotations

from pathlib import Path

import torch

_CLIP_TEXT = dict(vocab_size=520, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
_WORDS = ("a an the and of on in to is are with yes no ? red green blue brown black white yellow pink purple "
          "orange bench car backpack cow cat dog girl boy man woman person table chair bicycle left right top "
          "bottom side near next metallic wooden fluffy round square oval big small").split()


def _clip_tokenizer():
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    return CLIPTokenizer(vocab=vocab, merges=[])


def save_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=_CLIP_TEXT, vision_config=vision, projection_dim=16))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=_clip_tokenizer()).save_pretrained(path)
    return Path(path)


def save_tiny_blip_vqa(path: str | Path, seed: int = 0) -> Path:
    from transformers import (BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor,
                              BlipProcessor)

    torch.manual_seed(seed)
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"] + _WORDS)}
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, encoder_hidden_size=32, bos_token_id=vocab["[DEC]"], pad_token_id=0,
                sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=96,
                  patch_size=32)
    model = BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(path)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 96, "width": 96}),
                              tokenizer=BertTokenizer(vocab=vocab))
    processor.save_pretrained(path)
    return Path(path)


def save_tiny_owlvit(path: str | Path, seed: int = 0) -> Path:
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64,
                  patch_size=16)
    model = OwlViTForObjectDetection(OwlViTConfig(text_config=_CLIP_TEXT, vision_config=vision, projection_dim=32))
    model.save_pretrained(path)
    image_processor = OwlViTImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64})
    OwlViTProcessor(image_processor=image_processor, tokenizer=_clip_tokenizer()).save_pretrained(path)
    return Path(path)


def save_all(root: str | Path, seed: int = 0) -> dict[str, Path]:
    root = Path(root)
    return {"clip": save_tiny_clip(root / "clip", seed), "blip_vqa": save_tiny_blip_vqa(root / "blip_vqa", seed),
            "detector": save_tiny_owlvit(root / "owlvit", seed)}
