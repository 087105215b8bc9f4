"""Colour binding of one trained cell on training vs held-out colour prompts: is a low held-out score
the drawing or compositional generalisation?

    python benchmarks/binding_gap.py [runs/conditioning/<cell-id> ...] [--n 64] [--png sheet.png]

Without cells, every cell of runs/conditioning (what `make run` leaves).

The held-out score is the cell's own (eval/compshapes_judge.json, colour prompts of its CompShapes
prompt set). The training score samples the first n of a fixed shuffle of the training colour prompts
(colour-shape pairs the model has seen, in new layouts) from the cell's checkpoint with the cell's
sample config, into <cell>/samples/compshapes_train_color/, and judges them the same way. --png
writes those samples as a grid, 8 per row, each image enlarged 4x. Rerunning reuses the samples. It
also says, per held-out colour-shape pair, in how many of the prompts naming it the pair is drawn
right, and how many misses give the held-out object the other object's shape.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

from eval.common import aggregate, per_prompt_means
from eval.judge import evaluate, held_out_pairs
from gentron.config import load_config
from gentron.data import compshapes
from gentron.generate import generate, seeds_for
from gentron.io import atomic_save_image

FOLDER = "compshapes_train_color"
SHUFFLE_SEED = 0


def training_prompts(n: int) -> list[str]:
    pool = list(compshapes.prompts("color", "train"))
    random.Random(SHUFFLE_SEED).shuffle(pool)
    return pool[:n]


def colour_score(per_image: list[dict]) -> dict:
    return aggregate(per_prompt_means([r for r in per_image if r["category"] == "color"]))


def write_grid(folder: Path, files: list[str], out: Path, columns: int = 8, scale: int = 4, gap: int = 4) -> None:
    """The images enlarged `scale` times (nearest: the pixels the model drew), `gap` px of white around each."""
    images = torch.stack([pil_to_tensor(Image.open(folder / f).convert("RGB")) for f in files])
    images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    grid = make_grid(images, nrow=columns, padding=gap, pad_value=255)
    atomic_save_image(out, to_pil_image(grid))


def measure(cell_dir: Path, n: int, png: Path | None) -> None:
    judged = cell_dir / "eval" / "compshapes_judge.json"
    if not judged.exists():
        raise SystemExit(f"{judged} is missing: train and judge the cell first (make run)")
    cfg = load_config(cell_dir / "config.yaml")
    seed = seeds_for(cfg.sample.seeds, 1)[0]
    records = [{"prompt": p, "seed": seed, "category": "color", "prompt_id": i}
               for i, p in enumerate(training_prompts(n))]
    folder = generate(cfg, cell_dir / "checkpoints" / "last.pt", records, cell_dir / "samples" / FOLDER)
    training = evaluate(folder)
    print(f"{cell_dir} ({json.loads((cell_dir / 'cell.json').read_text())['axes']})")
    for name, per_image in (("held-out", json.loads(judged.read_text())["per_image"]), ("training", training["per_image"])):
        print(f"  {name:9s} colour prompts: " + ", ".join(
            f"{k} {v['mean']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}] (n={v['n']})"
            for k, v in colour_score(per_image).items() if k in ("color", "color_present")))
    pairs = held_out_pairs(json.loads(judged.read_text())["per_image"])
    print("  held-out pairs drawn right: " + ", ".join(
        f"{colour} {shape} {c['right']}/{c['n']}" for (colour, shape), c in pairs.items() if c["n"]))
    missed = sum(c["n"] - c["right"] for c in pairs.values())
    print(f"  of the {missed} misses, {sum(c['other_shape'] for c in pairs.values())} in the other object's shape")
    if png:
        write_grid(folder, [r["file"] for r in training["per_image"]][:32], png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", type=Path, nargs="*")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--png", type=Path, help="one cell only")
    args = parser.parse_args()
    cells = args.cells or sorted(p.parent for p in Path("runs/conditioning").glob("*/cell.json"))
    if not cells:
        raise SystemExit("no cells given and none in runs/conditioning: run `make run` first")
    if args.png and len(cells) != 1:
        raise SystemExit("--png needs exactly one cell")
    for cell_dir in cells:
        measure(cell_dir, args.n, args.png)


if __name__ == "__main__":
    main()
