"""Tiny cell configs for the trainer, generator and distributed tests: seconds per run."""
from __future__ import annotations

from pathlib import Path

import torch

from gentron.config import CellConfig, load_config, to_dict


def tiny_config(tmp_path: Path, **sections) -> CellConfig:
    """A 16 px, patch-4, 2-block, width-32 model on 64 CompShapes images; `sections` update the config's
    sections, e.g. tiny_config(tmp, train={"steps": 3}). The data cache lives in tmp_path/cache."""
    cfg = {
        "model": {"size": "T/4", "depth": 2, "hidden_size": 32, "mlp_hidden_size": 64, "num_heads": 2},
        "text_encoders": [{"kind": "tiny_clip", "seed": 0, "width": 32, "layers": 1, "heads": 2}],
        "data": {"resolution": 16, "num_train": 64, "cache_dir": str(tmp_path / "cache"), "num_frames": 4},
        "train": {"steps": 4, "batch_size": 8, "lr_schedule": "constant", "warmup_steps": 2, "ckpt_every": 100,
                  "log_every": 1},
        "sample": {"steps": 3, "batch_size": 4},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return load_config(cfg)


def with_changes(cfg: CellConfig, **sections) -> CellConfig:
    d = to_dict(cfg)
    for section, values in sections.items():
        d[section].update(values)
    return load_config(d)


def state_equal(a: dict, b: dict) -> bool:
    """Bit-identical nested state (tensors compared with torch.equal)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def local_t5(folder: Path, width: int = 32) -> Path:
    """A tiny random T5 encoder and the byte-level tokenizer saved as a local model folder, so that
    `{kind: t5, path: folder, dtype: bfloat16}` runs the paper profile's T5 code path offline."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    if not (folder / "config.json").exists():
        config = T5Config(vocab_size=384, d_model=width, d_kv=width // 2, d_ff=2 * width, num_layers=1, num_heads=2,
                          dropout_rate=0.0, feed_forward_proj="gated-gelu")
        torch.manual_seed(0)
        T5EncoderModel(config).save_pretrained(folder)
        ByT5Tokenizer().save_pretrained(folder)
    return folder
