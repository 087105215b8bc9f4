"""Throughput of the CompShapes judge: images scored per second, on whatever cores this machine has
(numpy and scipy run single-threaded here; the judge does no threading of its own).

    python benchmarks/judge_throughput.py [--n 600] [--resolution 32]

Prints one line per resolution: `judge_images_per_s <resolution>px <number>`.
"""
import argparse
import time

from eval.judge import score_image
from gentron.data.compshapes import IMAGE_CATEGORIES, render, scene_for_prompt, test_prompts


def images(n: int, resolution: int):
    """n ground-truth renders of test prompts, all categories in turn (rendering is not timed)."""
    pools = {c: test_prompts(c) for c in IMAGE_CATEGORIES}
    out = []
    for i in range(n):
        pool = pools[IMAGE_CATEGORIES[i % len(IMAGE_CATEGORIES)]]
        prompt = pool[(i // len(IMAGE_CATEGORIES)) % len(pool)]
        out.append((prompt, render(scene_for_prompt(prompt, i), resolution)))
    return out


def images_per_second(n: int, resolution: int) -> float:
    batch = images(n, resolution)
    score_image(*batch[0])  # warm-up: imports and caches
    start = time.perf_counter()
    for prompt, image in batch:
        score_image(prompt, image)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=600, help="images per resolution")
    parser.add_argument("--resolution", type=int, nargs="+", default=[32, 256])
    args = parser.parse_args()
    for resolution in args.resolution:
        print(f"judge_images_per_s {resolution}px {images_per_second(args.n, resolution):.0f}")


if __name__ == "__main__":
    main()
