"""Throughput of the evaluators with the embedded/tiny models: images per second for FID feature
extraction (random extractor, through clean-fid's loader), CLIP score, BLIP-VQA attribute binding,
spatial detection, non-spatial CLIP and spaCy's prompt parsing, on this machine's cores (model loading is not timed).

    python benchmarks/eval_throughput.py [--n 64] [--resolution 256] [--threads 2]

Prints a table: evaluator, images, seconds, images/s. Tiny random models make these numbers a floor for
the harness's own overhead (image IO, resizing, batching), not a prediction for the real checkpoints.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eval import fid
from eval.clip_score import ClipEmbedder
from eval.compbench import nonspatial, questions
from eval.compbench.spatial import Detector
from eval.compbench.vqa import BlipVqa
from eval.tiny_models import save_all

PROMPTS = ["a green bench and a red car", "a girl on the left of a bicycle", "a man riding a horse"]


def write_images(folder: Path, n: int, resolution: int) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmarks(files: list[Path], models: dict, batch_size: int = 16) -> dict:
    images = [Image.open(f).convert("RGB") for f in files]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(files))]
    batches = [(images[i:i + batch_size], prompts[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    extractor = fid.build_extractor("random", "clean")
    clip = ClipEmbedder(str(models["clip"]))
    vqa = BlipVqa(str(models["blip_vqa"]))
    detector = Detector(str(models["detector"]), confidence=0.0)
    return {
        "fid features (random, clean-fid loader)": lambda: fid.file_features(files, extractor, "clean", batch_size),
        "clip score (tiny CLIP)": lambda: [clip.cosines(ims, ps) for ims, ps in batches],
        "compbench attribute (tiny BLIP-VQA, 480px)": lambda: [vqa.score(ims, ps) for ims, ps in batches],
        "compbench spatial (tiny OWL-ViT)": lambda: [detector.score(im, p) for im, p in zip(images, prompts)],
        "compbench non-spatial (tiny CLIP)": lambda: [nonspatial.score(clip, ims, ps) for ims, ps in batches],
        "compbench prompt parsing (spaCy, uncached)": lambda: [questions.parse.__wrapped__(p) for p in prompts],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="images per evaluator")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_images(Path(tmp), args.n, args.resolution)
        runs = benchmarks(files, save_all(Path(tmp) / "models"))
        print(f"\n{'evaluator':<45} {'images':>7} {'seconds':>8} {'images/s':>9}")
        for name, run in runs.items():
            run()  # warm-up
            seconds = timed(run)
            print(f"{name:<45} {args.n:>7} {seconds:>8.2f} {args.n / seconds:>9.1f}")


if __name__ == "__main__":
    main()
