"""Does streamed training cost the same whatever the size of the data? Side by side, in one run.

    python benchmarks/data_loading.py [--small 5000] [--factor 10] [--steps 60] [--workers 2]

For each source (CompShapes drawn on the fly, and WebDataset tar shards of PNGs written here), the
real trainer (gentron.train.train, `data.encode: per_batch`, the embedded default's model and
batch) runs `--steps` steps over `--small` and over `--factor` times as many images, each run in
its own process. Reported per run:
- peak RSS of the training process and of its loader workers (ru_maxrss);
- time to the first training step (from calling train() to the first log row);
- data wait: seconds per step blocked on the loader, as a share of the step time (steady state:
  the first log window is skipped), and the encoders' per-batch share.
Then the ratios large / small. Shared machines give noisy times: the load average is printed.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import gentron.train as T
from gentron.train_log import MetricsLog
cfg, run_dir = json.loads(sys.argv[1]), sys.argv[2]
t0, first = time.perf_counter(), []
write = MetricsLog.write
def timed(self, row):
    first.append(time.perf_counter() - t0) if not first else None
    write(self, row)
MetricsLog.write = timed
T.train(cfg, run_dir)
print(json.dumps({"first_step_s": first[0],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def write_shards(folder: Path, n: int, resolution: int) -> str:
    """n CompShapes images as PNG + caption in WebDataset shards of up to 1,000 (at least 10
    shards, so every loader worker has its own); returns the brace pattern."""
    from PIL import Image

    from gentron.data.compshapes import CompShapes, render

    data = CompShapes(resolution=resolution, num_samples=n, seed=1)
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = max(1, min(1000, n // 10))
    shards = (n + per_shard - 1) // per_shard
    for s in range(shards):
        with tarfile.open(folder / f"train-{s:05d}.tar", "w") as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                scene = data.scene(i)
                buffer = io.BytesIO()
                Image.fromarray(render(scene, resolution)).save(buffer, format="PNG")
                for name, payload in ((f"{i:08d}.png", buffer.getvalue()), (f"{i:08d}.txt", scene.caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(folder / f"train-{{00000..{shards - 1:05d}}}.tar")


def run(data: dict, steps: int, workdir: Path, name: str) -> dict:
    from gentron.config import load_config, to_dict

    cfg = to_dict(load_config())
    cfg["data"].update(data)
    cfg["train"].update(steps=steps, log_every=10, ckpt_every=10**9)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg), str(workdir / name)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name}: training failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (workdir / name / "train_log.jsonl").read_text().splitlines()][1:]
    step_s = statistics.median(1 / r["steps_per_s"] for r in rows)
    result.update(step_s=step_s, wait_share=statistics.median(r["data_wait_s"] for r in rows) / step_s,
                  encode_share=statistics.median(r["encode_s"] for r in rows) / step_s)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sources", nargs="+", default=["compshapes", "webdataset"])
    args = parser.parse_args()
    from gentron.config import load_config

    resolution = load_config().data.resolution
    sizes = {"small": args.small, "large": args.small * args.factor}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for source in args.sources:
            for label, n in sizes.items():
                data = {"encode": "per_batch", "num_workers": args.workers}
                if source == "compshapes":
                    data.update(num_train=n)
                else:
                    t0 = time.perf_counter()
                    pattern = write_shards(tmp / f"shards-{n}", n, resolution)
                    print(f"wrote {n} images in WebDataset shards in {time.perf_counter() - t0:.0f}s", flush=True)
                    data.update(kind="webdataset", path=pattern)
                results[source, label] = run(data, args.steps, tmp, f"{source}-{n}")
                print(source, n, json.dumps(results[source, label]), flush=True)
    print(f"\nload_average={os.getloadavg()[0]:.2f} workers={args.workers} steps={args.steps} "
          f"(embedded default model and batch, data.encode=per_batch)")
    header = (f"{'source':<11} {'images':>7} {'RSS MB':>7} {'workers MB':>10} {'1st step s':>10} "
              f"{'s/step':>7} {'data wait':>9} {'encoders':>8}")
    print(header + "\n" + "-" * len(header))
    for (source, label), r in results.items():
        print(f"{source:<11} {sizes[label]:>7} {r['rss_mb']:7.0f} {r['worker_rss_mb']:10.0f} {r['first_step_s']:10.2f} "
              f"{r['step_s']:7.3f} {r['wait_share']:9.1%} {r['encode_share']:8.1%}")
    for source in args.sources:
        s, big = results[source, "small"], results[source, "large"]
        print(f"{source}: x{args.factor} data -> peak RSS x{big['rss_mb'] / s['rss_mb']:.3f}, workers' x"
              f"{big['worker_rss_mb'] / s['worker_rss_mb']:.3f}, time to first step x"
              f"{big['first_step_s'] / s['first_step_s']:.2f}")


if __name__ == "__main__":
    main()
