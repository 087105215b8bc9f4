"""Training throughput of the embedded default (images/s on this machine's CPU cores).

    python benchmarks/train_throughput.py [--steps 40] [--threads 2] [--conditioning adaln cross_attn]

Runs the real trainer (gentron.train.train) on the default cell config for a few steps in a
temporary folder and reads steps/s from its train_log.jsonl, skipping the first log window (warm-up).
The data set is cut to 2,048 images so that encoding it stays out of the way; the model, batch and
step are the default's. Each row is one conditioning, measured one after the other in the same run,
so their ratio is side by side. Shared machines give noisy numbers: the load average is printed
alongside.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from gentron.config import load_config, to_dict
from gentron.train import train


def measure(conditioning: str, steps: int, workdir: Path) -> dict:
    cfg = to_dict(load_config())
    cfg["model"].update(conditioning=conditioning)
    cfg["data"].update(num_train=2048, cache_dir=str(workdir / "cache"))
    cfg["train"].update(steps=steps, log_every=10, ckpt_every=10**9)
    run_dir = workdir / conditioning
    train(cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in rows[1:]] or [rows[-1]["steps_per_s"]]
    steps_per_s = statistics.median(rates)
    return {"conditioning": conditioning, "batch": cfg["train"]["batch_size"],
            "s_per_step": 1 / steps_per_s,
            "images_per_s": steps_per_s * cfg["train"]["batch_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--conditioning", nargs="+", default=["cross_attn", "adaln"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(c, args.steps, Path(tmp)) for c in args.conditioning]
    print(f"threads={args.threads} load_average={os.getloadavg()[0]:.2f}")
    print(f"{'conditioning':<12} {'batch':>5} {'s/step':>7} {'images/s':>9} {'vs first':>8}")
    for r in results:
        print(f"{r['conditioning']:<12} {r['batch']:>5} {r['s_per_step']:7.3f} {r['images_per_s']:9.1f} "
              f"{results[0]['s_per_step'] / r['s_per_step']:8.2f}")


if __name__ == "__main__":
    main()
