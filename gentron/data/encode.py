"""The `encode` stage: VAE latents of a data set written once into feature shards, which training
then streams (`data.encode: shards`, `data.features_dir`), as PixArt and fast-DiT do.

    python -m gentron.data.encode CONFIG.yaml --out FEATURES_DIR [--task I --tasks N]

The data set's units (WebDataset shards, chunks of files, byte ranges of a manifest) are numbered;
task I of N encodes units I, I + N, ... into `FEATURES_DIR/features-<unit>.pt` (latents, captions).
Under a SLURM job array with one task per unit (`--task $SLURM_ARRAY_TASK_ID --tasks <units>`),
each task writes one shard. Each shard is written atomically and skipped when present, so a
requeued or rerun array redoes only what is missing. Text features are not stored: the text
encoders run per batch in training (T5-XXL features are ~1 MB a caption).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from tqdm import tqdm

from gentron.config import load_config
from gentron.data.real import BadSample
from gentron.data.sources import as_source, open_dataset
from gentron.io import atomic_torch_save
from gentron.vae import build_vae

log = logging.getLogger(__name__)


class FeatureShards:
    """Streaming source over `features-*.pt` shards: one unit per shard, entries are its rows."""

    on_error = "skip"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"data.features_dir {self.path} does not exist; write it with "
                                    "python -m gentron.data.encode CONFIG --out DIR")

    def units(self, min_units: int = 1) -> list[str]:
        return [str(p) for p in sorted(self.path.glob("features-*.pt"))]

    def entries(self, unit: str):
        shard = torch.load(unit, map_location="cpu", weights_only=True)
        return ({"latent": z, "caption": c} for z, c in zip(shard["latents"], shard["captions"]))

    def decode(self, entry: dict) -> dict:
        return entry


@torch.no_grad()
def encode_shards(cfg, out_dir: str | os.PathLike, task: int = 0, tasks: int = 1, batch_size: int = 64,
                  device: str | torch.device | None = None) -> list[Path]:
    """Write this task's feature shards (see the module docstring); returns their paths."""
    cfg = load_config(cfg)
    if not 0 <= task < tasks:
        raise ValueError(f"--task {task} must be in [0, --tasks {tasks})")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = as_source(open_dataset(cfg, video=cfg.data.video))
    units = source.units()
    out_dir = Path(out_dir)
    vae = None
    written = []
    for index in tqdm(range(task, len(units), tasks), desc=f"encode task {task}/{tasks}"):
        path = out_dir / f"features-{index:06d}.pt"
        written.append(path)
        if path.exists():
            continue
        vae = vae or build_vae(cfg.vae).to(device)
        latents, captions, pending, skipped = [], [], [], 0

        def flush():
            key = "video" if "video" in pending[0] else "image"
            x = torch.stack([p[key] for p in pending]).to(device)
            z = vae.encode(x.flatten(0, 1)).unflatten(0, x.shape[:2]) if key == "video" else vae.encode(x)
            latents.append(z.cpu())
            captions.extend(p["caption"] for p in pending)
            pending.clear()

        for entry in source.entries(units[index]):
            try:
                pending.append(source.decode(entry))
            except BadSample as e:
                if getattr(source, "on_error", "skip") == "raise":
                    raise
                skipped += 1
                log.warning("skipping %s", e)
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
        if not latents:
            log.warning("unit %d of %s holds no usable sample; no shard written", index, cfg.data.path)
            continue
        atomic_torch_save(path, {"latents": torch.cat(latents), "captions": captions, "skipped": skipped})
    log.info("task %d of %d: %d shard(s) in %s", task, tasks, len(written), out_dir)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Encode a data set's VAE latents into feature shards.")
    parser.add_argument("config", help="cell config YAML (its data and vae sections are used)")
    parser.add_argument("--out", required=True, help="the features folder (data.features_dir in training)")
    parser.add_argument("--task", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)))
    parser.add_argument("--tasks", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1)))
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        encode_shards(args.config, args.out, args.task, args.tasks, args.batch_size)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
