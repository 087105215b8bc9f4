"""Feature shards: a data set's VAE latents and the text features of every encoder of a cell, written
once by the encode stage (gentron.data.encode) and streamed by training (`data.encode: shards`), which
then builds no VAE and no text encoder.

    FEATURES_DIR/
      index.json          what the set holds (below) and each finished shard's counts
      empty-prompt.pt     the empty prompt's features per encoder (what a dropped caption becomes)
      features-000000.pt  shard 0 of `num_shards` (one per encode array task)

`index.json`:
    format          FORMAT, the layout below
    num_shards      how many shards the set has (the encode array's --num-shards)
    media           "image" or "video" (latents (C, h, w) or (T, C, h, w) per sample)
    data, data_key  the data settings that change what is encoded (data_identity) and their hash
    vae             {"spec": the VAE spec less batch_size, "channels", "downsample"}
    text_encoders   per encoder {"name": TextEncoder.name (its fingerprint), "spec", "width",
                    "pooled_width", "tokens" (max tokens per prompt), "dtype" (as stored)}
    empty_prompt    the file holding the empty prompt's features
    shards          {"features-000003.pt": {"samples", "skipped" (bad samples), "skipped_units"
                    (bad source shards), "units" (how many source units), "bytes"}} per finished shard

A shard (torch.save; training memory-maps it, so a worker holds only what its buffer references):
    latents     (N, C, h, w) or (N, T, C, h, w), as the VAE gives them (float32)
    captions    N strings
    text        per encoder {"tokens": (sum of lengths, D) the N prompts' real tokens end to end,
                "lengths": (N,) (the attention mask: a prompt's first `length` tokens are real),
                "pooled": (N, P)}, T5 features in bfloat16, others in the dtype the encoder gives
    units       the source units it holds (task i of n: units i, i + n, ...)
    samples, skipped, skipped_units, shard, num_shards, format
Training pads each batch's tokens to its own longest prompt, as the encoders do per batch. A set
serves every cell with the same data and VAE whose text encoders are among the set's (a set encoded
with CLIP and T5 trains the CLIP, T5 and CLIP+T5 cells of the text_encoder grid).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import torch

from gentron.config import CellConfig, to_dict
from gentron.specs import EncoderShape
from gentron.data import compshapes
from gentron.data.real import BadUnit
from gentron.io import read_json

FORMAT = 1
INDEX = "index.json"
EMPTY_PROMPT = "empty-prompt.pt"
# Data settings that do not change what an encoded data set holds.
NOT_IN_DATA_KEY = ("cache_dir", "on_error", "encode", "num_workers", "shuffle_buffer", "features_dir")
# Stored dtype per text-encoder kind (others: the dtype the encoder gives). T5-XXL features are
# ~8 KB a token in fp32; bfloat16 is the dtype T5-XXL runs in on the paper profile.
STORED_DTYPE = {"t5": torch.bfloat16, "tiny_t5": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
ENCODE_COMMAND = "python -m gentron.data.encode CONFIG --out DIR --shard I --num-shards N"


def shard_name(shard: int) -> str:
    return f"features-{shard:06d}.pt"


def _plain(value):
    """JSON's view of a value (tuples become lists), so stored and fresh settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def data_identity(cfg: CellConfig) -> dict:
    """The data settings that change what an encoded data set holds (and CompShapes' VERSION)."""
    data = {k: v for k, v in to_dict(cfg)["data"].items() if k not in NOT_IN_DATA_KEY}
    if cfg.data.kind == "compshapes":
        data["compshapes_version"] = compshapes.VERSION
    return _plain(data)


def data_key(identity: dict) -> str:
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def vae_identity(cfg: CellConfig) -> dict:
    """The VAE spec less what does not change a latent (its batch size)."""
    return _plain({k: v for k, v in to_dict(cfg)["vae"].items() if k != "batch_size"})


def encoder_specs(cfg: CellConfig) -> list[dict]:
    return _plain(to_dict(cfg)["text_encoders"])


def stored_dtype(spec, produced: torch.dtype) -> torch.dtype:
    """The dtype a text encoder's features are stored in (STORED_DTYPE)."""
    return STORED_DTYPE.get(spec.kind, produced)


def _diff(where: str, stored, here) -> list[str]:
    """'where.key is A there, B here' for each setting that differs."""
    if isinstance(stored, dict) and isinstance(here, dict):
        return [d for k in sorted(set(stored) | set(here))
                for d in _diff(f"{where}.{k}", stored.get(k), here.get(k))]
    return [] if stored == here else [f"{where} is {json.dumps(stored)} there, {json.dumps(here)} here"]


def index_mismatches(index: dict, cfg: CellConfig, encoders=None) -> list[str]:
    """How a shard set's index disagrees with what `cfg` (and its built `encoders`, when given) would
    encode: the layout, the data, the VAE, the text encoders (by spec, in order, and by fingerprint)."""
    found = _set_mismatches(index, cfg)
    if found:
        return found
    stored = index["text_encoders"]
    specs = encoder_specs(cfg)
    if len(stored) != len(specs):
        return [f"{len(stored)} text encoder(s) there ({', '.join(e['name'] for e in stored)}), {len(specs)} here"]
    for i, (entry, spec) in enumerate(zip(stored, specs)):
        found += _diff(f"text_encoders[{i}]", entry["spec"], spec)
    return found + _name_mismatches(stored, encoders)


def select_encoders(index: dict, cfg: CellConfig, encoders=None) -> tuple[list[int], list[str]]:
    """Which of a shard set's text encoders are the cell's, in the cell's order, and how the set
    disagrees with the cell otherwise: a set encoded with CLIP and T5 serves a cell of either or both
    (the text_encoder grid's arms share one encode pass); data, VAE and layout must match."""
    found = _set_mismatches(index, cfg)
    if found:
        return [], found
    stored = index["text_encoders"]
    specs = encoder_specs(cfg)
    chosen = [next((j for j, entry in enumerate(stored) if entry["spec"] == spec), None) for spec in specs]
    if None not in chosen:
        return chosen, _name_mismatches([stored[j] for j in chosen], encoders)
    if len(stored) == len(specs):  # the same number: say what differs, position by position
        found = [d for i, (entry, spec) in enumerate(zip(stored, specs)) if chosen[i] is None
                 for d in _diff(f"text_encoders[{i}]", entry["spec"], spec)]
    else:
        found = [f"text encoder {i} ({spec['kind']}) of this cell is not among the {len(stored)} there "
                 f"({', '.join(e['name'] for e in stored)})" for i, spec in enumerate(specs) if chosen[i] is None]
    return [], found


def _set_mismatches(index: dict, cfg: CellConfig) -> list[str]:
    if index.get("format") != FORMAT:
        return [f"layout {index.get('format')} there, {FORMAT} here"]
    return _diff("data", index["data"], data_identity(cfg)) + _diff("vae", index["vae"]["spec"], vae_identity(cfg))


def _name_mismatches(stored: list[dict], encoders) -> list[str]:
    if encoders is None:
        return []
    return [f"text encoder {i} is {e.name!r} here, {entry['name']!r} there"
            for i, (entry, e) in enumerate(zip(stored, encoders)) if e.name != entry["name"]]


def read_index(features_dir: str | os.PathLike) -> dict:
    path = Path(features_dir) / INDEX
    if not path.exists():
        older = any(Path(features_dir).glob("features-*.pt"))
        extra = " (it holds shards of an older layout: encode again)" if older else ""
        raise FileNotFoundError(f"data.features_dir {features_dir} has no {INDEX}{extra}; write the feature shards "
                                f"with {ENCODE_COMMAND} (one array task per shard)")
    return read_json(path)


class FeatureShards:
    """Streaming source over a shard set (gentron.data.stream): one unit per shard with samples,
    entries are its rows (latent, caption and the cell's encoders' text features, views into the
    memory-mapped file; a set's other encoders' features are never read).

    Refuses, in one line, a set encoded for another cell (other data or VAE, or without one of the
    cell's text encoders) or not finished yet. `shapes` (per encoder), `latent` (channels,
    downsampling), `names` (the encoders' fingerprints) and `empty` (the empty prompt's features, per
    encoder (tokens (L, D), pooled (P,))) are what training needs instead of the encoders and the VAE."""

    on_error = "skip"

    def __init__(self, path: str | os.PathLike, cfg: CellConfig, encoders=None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"data.features_dir {self.path} does not exist; write it with {ENCODE_COMMAND}")
        index = read_index(self.path)
        self.chosen, problems = select_encoders(index, cfg, encoders)
        if problems:
            raise ValueError(f"data.features_dir {self.path} was encoded for another cell ({'; '.join(problems)}): "
                             f"encode this cell's data into a new folder ({ENCODE_COMMAND}) or point "
                             "data.features_dir at matching shards")
        expected = [shard_name(i) for i in range(index["num_shards"])]
        missing = [name for name in expected if name not in index["shards"]]
        if missing:
            raise ValueError(f"data.features_dir {self.path}: {len(missing)} of {len(expected)} shards are not encoded "
                             f"yet (e.g. {missing[0]}): run the encode array again ({ENCODE_COMMAND}); it writes "
                             "only the missing shards")
        self.index = index
        self.media = index["media"]
        chosen = [index["text_encoders"][j] for j in self.chosen]
        self.names = [e["name"] for e in chosen]
        self.shapes = [EncoderShape(e["width"], e["pooled_width"], e["tokens"]) for e in chosen]
        self.latent = (index["vae"]["channels"], index["vae"]["downsample"])
        self.samples = sum(s["samples"] for s in index["shards"].values())
        empty = torch.load(self.path / index["empty_prompt"], map_location="cpu", weights_only=True)
        self.empty = [(empty["text"][j]["tokens"], empty["text"][j]["pooled"]) for j in self.chosen]
        self._units = [str(self.path / name) for name in expected if index["shards"][name]["samples"] > 0]

    def units(self, min_units: int = 1) -> list[str]:
        return list(self._units)

    def entries(self, unit: str):
        shard = load_shard(unit)
        latents, captions = shard["latents"], shard["captions"]
        text = [(t["tokens"], [0, *torch.cumsum(t["lengths"], 0).tolist()], t["pooled"])
                for t in (shard["text"][j] for j in self.chosen)]
        for j, caption in enumerate(captions):
            yield {"latent": latents[j], "caption": caption,
                   "text": [(tokens[offsets[j]:offsets[j + 1]], pooled[j]) for tokens, offsets, pooled in text]}

    def decode(self, entry: dict) -> dict:
        return entry


def load_shard(path: str | os.PathLike, mmap: bool = True) -> dict:
    """A feature shard's contents (memory-mapped tensors); BadUnit when it cannot be read."""
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError as e:
        raise BadUnit(str(path), "missing", "no such file") from e
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        raise BadUnit(str(path), "unreadable", " ".join(str(e).split()).split(". ")[0][:160]) from e
    if not isinstance(shard, dict) or shard.get("format") != FORMAT or "text" not in shard:
        raise BadUnit(str(path), "unreadable", "not a feature shard of this layout")
    return shard
