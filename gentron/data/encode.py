"""The `encode` stage: a data set's VAE latents and the text features of every encoder of the cell,
written once into feature shards that training streams (`data.encode: shards`, `data.features_dir`)
without a VAE or a text encoder on the training device. Encode once, train many times.

    python -m gentron.data.encode CONFIG.yaml [--out FEATURES_DIR] [--shard I --num-shards N]

The data set's units (WebDataset shards, chunks of files, byte ranges of a manifest, ranges of
CompShapes indices) are numbered; shard I of N holds units I, I + N, ... and is written by one task:
under a SLURM job array, `--shard` and `--num-shards` default to SLURM_ARRAY_TASK_ID and
SLURM_ARRAY_TASK_COUNT (`sbatch --array=0-<N-1>`). Each shard is written atomically and skipped when
complete, so a requeued or rerun array redoes only unfinished shards (a killed task's temporary file
is removed when its shard is next written). `--out` defaults to the config's data.features_dir. The layout of the folder (index.json, the empty prompt's
features, the shards) is gentron.data.shards'.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from filelock import FileLock

from gentron.config import CellConfig, load_config
from gentron.data.real import BadSample, BadUnit
from gentron.data.shards import (DTYPE_NAMES, EMPTY_PROMPT, FORMAT, INDEX, data_identity, data_key, encoder_specs,
                                 index_mismatches, load_shard, read_index, shard_name, stored_dtype, vae_identity)
from gentron.data.sources import as_source, open_dataset
from gentron.errors import exits_on_user_error, positive_int
from gentron.io import atomic_torch_save, atomic_write_json, remove_stale_temporaries
from gentron.progress import progress
from gentron.text import build_text_encoders
from gentron.vae import build_vae

log = logging.getLogger(__name__)


def _lock(out_dir: Path) -> FileLock:
    """Held while index.json (and the empty prompt's file) is created or updated: the array's tasks
    finish at any time."""
    return FileLock(str(out_dir / f"{INDEX}.lock"))


def _header(cfg: CellConfig, encoders, dtypes: list[torch.dtype], vae, num_shards: int) -> dict:
    identity = data_identity(cfg)
    return {
        "format": FORMAT, "num_shards": num_shards, "media": "video" if cfg.data.video else "image",
        "data": identity, "data_key": data_key(identity),
        "vae": {"spec": vae_identity(cfg), "channels": vae.channels, "downsample": vae.downsample},
        "text_encoders": [{"name": e.name, "spec": spec, "width": e.shape.width, "pooled_width": e.shape.pooled_width,
                           "tokens": e.shape.tokens, "dtype": DTYPE_NAMES[dtype]}
                          for e, spec, dtype in zip(encoders, encoder_specs(cfg), dtypes)],
        "empty_prompt": EMPTY_PROMPT, "shards": {},
    }


def _dtypes(cfg: CellConfig, encoders) -> list[torch.dtype]:
    """The dtype each encoder's features are stored in (gentron.data.shards.stored_dtype)."""
    return [stored_dtype(spec, e.encode([""]).tokens.dtype) for spec, e in zip(cfg.text_encoders, encoders)]


def _packed(encoder, captions: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One encoder's features of `captions` as stored: real tokens end to end, lengths, pooled."""
    emb = encoder.encode(captions).to("cpu")
    lengths = emb.mask.sum(1)
    if not torch.equal(emb.mask, torch.arange(emb.mask.shape[1])[None] < lengths[:, None]):
        raise ValueError(f"text encoder {encoder.name} gives a mask that is not a prefix of real tokens; "
                         "feature shards store a prompt's real tokens as its first `length` ones")
    return {"tokens": emb.tokens[emb.mask].to(dtype), "lengths": lengths, "pooled": emb.pooled.to(dtype)}


def _open_index(out_dir: Path, cfg: CellConfig, encoders, dtypes: list[torch.dtype], vae, num_shards: int) -> None:
    """Create the shard set's index (and the empty prompt's features) or check that the existing one
    is this encoding's."""
    with _lock(out_dir):
        if (out_dir / INDEX).exists():
            _check_index(read_index(out_dir), out_dir, cfg, num_shards, encoders)
            return
        header = _header(cfg, encoders, dtypes, vae, num_shards)
        empty = [_packed(e, [""], dtype) for e, dtype in zip(encoders, dtypes)]
        text = [{"tokens": p["tokens"], "pooled": p["pooled"][0]} for p in empty]
        atomic_torch_save(out_dir / EMPTY_PROMPT, {"names": [e.name for e in encoders], "text": text})
        atomic_write_json(out_dir / INDEX, header)
        log.info("started the shard set %s: %d shards of %s", out_dir, num_shards, header["data_key"])


def _check_index(index: dict, out_dir: Path, cfg: CellConfig, num_shards: int, encoders=None) -> None:
    problems = index_mismatches(index, cfg, encoders)
    if index.get("num_shards") != num_shards:
        problems.append(f"num_shards is {index.get('num_shards')} there, {num_shards} here")
    if problems:
        raise ValueError(f"{out_dir} holds feature shards of another encoding ({'; '.join(problems)}): "
                         "write into a new --out folder, or delete this one to encode it again")


def _record(out_dir: Path, name: str, entry: dict) -> None:
    with _lock(out_dir):
        index = read_index(out_dir)
        index["shards"][name] = entry
        atomic_write_json(out_dir / INDEX, index)


def _entry(path: Path, shard: dict) -> dict:
    return {"samples": shard["samples"], "skipped": shard["skipped"], "skipped_units": shard["skipped_units"],
            "units": len(shard["units"]), "bytes": path.stat().st_size}


def _complete(path: Path) -> dict | None:
    """A written shard's index entry, or None when it is absent or unreadable (then written again)."""
    if not path.exists():
        return None
    try:
        return _entry(path, load_shard(path))
    except BadUnit as e:
        log.warning("feature shard %s; encoding it again", e)
        return None


@torch.no_grad()
def encode_shards(cfg, out_dir: str | os.PathLike, shard: int = 0, num_shards: int = 1, batch_size: int = 64,
                  device: str | torch.device | None = None) -> Path:
    """Write shard `shard` of `num_shards` of the cell's data set into `out_dir` (see the module
    docstring) unless it is complete; returns its path."""
    cfg = load_config(cfg)
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {shard} must be in [0, --num-shards {num_shards})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / shard_name(shard)
    remove_stale_temporaries(out_dir, [path.name])  # a killed write of this shard: only this task writes it
    if (out_dir / INDEX).exists():
        index = read_index(out_dir)
        _check_index(index, out_dir, cfg, num_shards)
        if path.name in index["shards"] and path.exists():
            log.info("shard %s is complete: skipped", path)
            return path

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoders = build_text_encoders(cfg.text_encoders, device)
    vae = build_vae(cfg.vae).to(device)
    dtypes = _dtypes(cfg, encoders)
    _open_index(out_dir, cfg, encoders, dtypes, vae, num_shards)
    done = _complete(path)
    if done is not None:  # written by a task killed before it recorded it
        _record(out_dir, path.name, done)
        return path

    source = as_source(open_dataset(cfg, video=cfg.data.video))
    units = source.units(min_units=num_shards)
    if len(units) < num_shards:
        raise ValueError(f"{cfg.data.path or cfg.data.kind} has {len(units)} unit(s) (shards or chunks of files) for "
                         f"--num-shards {num_shards}: use at most {len(units)} shards")
    mine = units[shard::num_shards]
    latents, captions, pending = [], [], []
    text: list[list[dict]] = [[] for _ in encoders]
    skipped = skipped_units = 0

    def flush():
        key = "video" if "video" in pending[0] else "image"
        x = torch.stack([p[key] for p in pending]).to(device)
        z = vae.encode(x.flatten(0, 1)).unflatten(0, x.shape[:2]) if key == "video" else vae.encode(x)
        batch = [p["caption"] for p in pending]
        for parts, encoder, dtype in zip(text, encoders, dtypes):
            parts.append(_packed(encoder, batch, dtype))
        latents.append(z.cpu())
        captions.extend(batch)
        pending.clear()

    for unit in progress(mine, desc=f"encode shard {shard}/{num_shards}"):
        try:
            for entry in source.entries(unit):
                try:
                    pending.append(source.decode(entry))
                except BadSample as e:
                    if getattr(source, "on_error", "skip") == "raise":
                        raise
                    skipped += 1
                    log.warning("skipping %s", e)
                if len(pending) == batch_size:
                    flush()
        except BadUnit as e:
            if getattr(source, "on_error", "skip") == "raise":
                raise
            skipped_units += 1
            log.warning("skipping the rest of shard %s", e)
    if pending:
        flush()
    if not latents:
        log.warning("shard %d of %d (%d unit(s) of %s) holds no usable sample; it is written empty", shard,
                    num_shards, len(mine), cfg.data.path or cfg.data.kind)
    payload = {
        "format": FORMAT, "shard": shard, "num_shards": num_shards, "units": [str(u) for u in mine],
        "latents": torch.cat(latents) if latents else torch.zeros(0), "captions": captions,
        "text": [{k: torch.cat([p[k] for p in parts]) for k in ("tokens", "lengths", "pooled")} if parts else
                 {"tokens": torch.zeros(0), "lengths": torch.zeros(0, dtype=torch.long), "pooled": torch.zeros(0)}
                 for parts in text],
        "samples": len(captions), "skipped": skipped, "skipped_units": skipped_units,
    }
    atomic_torch_save(path, payload)
    _record(out_dir, path.name, _entry(path, payload))
    log.info("shard %d of %d: %d samples (%d bad samples, %d bad source shards skipped) in %s", shard, num_shards,
             len(captions), skipped, skipped_units, path)
    return path


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


@exits_on_user_error("python -m gentron.data.encode")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gentron.data.encode",
                                     description="Encode a data set's VAE latents and text features into "
                                                 "feature shards.")
    parser.add_argument("config", help="cell config YAML (its data, vae and text_encoders sections are used)")
    parser.add_argument("--out", help="the features folder (data.features_dir in training; default: the config's)")
    parser.add_argument("--shard", type=int, default=_env_int("SLURM_ARRAY_TASK_ID", 0),
                        help="which shard this task writes (default: $SLURM_ARRAY_TASK_ID, else 0)")
    parser.add_argument("--num-shards", type=int, default=_env_int("SLURM_ARRAY_TASK_COUNT", 1),
                        help="how many shards the set has (default: $SLURM_ARRAY_TASK_COUNT, else 1)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="samples per VAE and text-encoder call")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"config {args.config} does not exist; give a cell config YAML")
    cfg = load_config(args.config)
    out = args.out or cfg.data.features_dir
    if not out:
        raise ValueError(f"{args.config} sets no data.features_dir: give the features folder with --out DIR")
    print(encode_shards(cfg, out, args.shard, args.num_shards, args.batch_size))


if __name__ == "__main__":
    main()
