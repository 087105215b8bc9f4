"""MS-COCO FID-30K: the caption plan and the reference images.

`plan`: from the official captions_val2014.json (images + annotations with image_id/caption), pick
30,000 images with a fixed seed and one of each image's (~5) captions at random; write the plan as
`prompts.jsonl` rows in the sample-manifest format (file coco/{prompt_id:06d}_{seed}.png, prompt, seed,
prompt_id, image_id, coco_file), so the generator's output is directly a sample folder.
`shard`: rows i::n of a plan for one SLURM array task. `refs`: centre-crop to the short side and LANCZOS
resize of the chosen val2014 images to the evaluation resolution (256), saved as PNG (optionally a shard).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from eval.arguments import OneLineParser, existing_folder, non_empty, output_file, output_folder, whole_number
from eval.common import image_problem
from gentron.errors import exits_on_user_error
from gentron.io import atomic_save_image, atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_N, DEFAULT_SEED, DEFAULT_RESOLUTION, SAMPLE_SEED = 30_000, 0, 256, 42
PLAN_KEYS = ("prompt", "coco_file")
MAX_RESOLUTION = 4096


def read_captions(captions_json: str | Path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """({image_id: file_name}, {image_id: [captions by annotation id]}) from a COCO captions file; a
    caption's whitespace runs (inner newlines included) become single spaces."""
    path = Path(captions_json)
    if path.is_dir():
        raise IsADirectoryError(f"--captions {path} is a folder; pass the file annotations/captions_val2014.json "
                                f"from annotations_trainval2014.zip")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass annotations/captions_val2014.json from "
                                f"annotations_trainval2014.zip")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {img["id"]: img["file_name"] for img in data["images"]}
        annotations = sorted(data["annotations"], key=lambda ann: ann["id"])
        captions: dict[int, list[str]] = {}
        for ann in annotations:
            captions.setdefault(ann["image_id"], []).append(" ".join(ann["caption"].split()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{path} is not a COCO captions file ({type(e).__name__}: {e}); use "
                         f"annotations/captions_val2014.json from annotations_trainval2014.zip") from e
    return files, captions


def sample_captions(captions_json: str | Path, n: int = DEFAULT_N, seed: int = DEFAULT_SEED,
                    sample_seed: int = SAMPLE_SEED) -> list[dict]:
    """n distinct images (sorted ids, permuted with `seed`), one random caption each (of the image's
    captions in annotation-id order, so the choice does not depend on the order of the file)."""
    if n < 1:  # rng.permutation(...)[:n] would plan all images but -n of them, or none
        raise ValueError(f"-n {n}: the number of captions to plan must be at least 1 (COCO FID-30K: {DEFAULT_N})")
    files, captions = read_captions(captions_json)
    image_ids = sorted(captions)
    if n > len(image_ids):
        raise ValueError(f"asked for {n} captions but {captions_json} has only {len(image_ids)} captioned images; "
                         f"give -n {len(image_ids)} or fewer")
    log.info("%d captioned images in %s; choosing %d with seed %d", len(image_ids), captions_json, n, seed)
    rng = np.random.default_rng(seed)
    chosen = [image_ids[i] for i in rng.permutation(len(image_ids))[:n]]
    rows = []
    for prompt_id, image_id in enumerate(chosen):
        caption = captions[image_id][rng.integers(len(captions[image_id]))]
        rows.append({"file": f"coco/{prompt_id:06d}_{sample_seed}.png", "prompt": caption, "seed": sample_seed,
                     "index": 0, "category": "coco", "prompt_id": prompt_id, "image_id": image_id,
                     "coco_file": files.get(image_id, f"COCO_val2014_{image_id:012d}.jpg")})
    return rows


def shard(rows: list, index: int, num_shards: int) -> list:
    """Rows index, index + n, ... (shards partition the plan; sizes differ by at most one)."""
    if num_shards < 1:
        raise ValueError(f"--num-shards {num_shards} must be at least 1")
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} is outside 0..{num_shards - 1}; give --index 0..{num_shards - 1}")
    if num_shards > len(rows):
        raise ValueError(f"--num-shards {num_shards} is more than the plan's {len(rows)} rows, so some shards would be "
                         f"empty; give --num-shards {len(rows)} or fewer")
    return rows[index::num_shards]


def write_plan(rows: list[dict], out: str | Path, protocol: dict) -> Path:
    out = Path(out)
    atomic_write_text(out / "prompts.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    atomic_write_text(out / "prompts.txt", "".join(r["prompt"] + "\n" for r in rows))
    atomic_write_text(out / "plan.json", json.dumps(protocol, indent=2, sort_keys=True) + "\n")
    return out / "prompts.jsonl"


def read_plan(path: str | Path) -> list[dict]:
    """The rows of a plan's prompts.jsonl, each a JSON object with a `prompt` and the plain file name of its
    val2014 image as `coco_file` (what `shard` and `refs` use)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; write it with `python -m eval.coco plan`")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the plan's prompts.jsonl (`python -m eval.coco plan` "
                                f"writes OUT/prompts.jsonl)")
    redo = "rewrite the plan with `python -m eval.coco plan`"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason}); {redo}") from e
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno} is not valid JSON ({e}); {redo}") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno} is not a JSON object; {redo}")
        for key in PLAN_KEYS:
            if key not in row:
                raise ValueError(f"{path}:{lineno} has no '{key}'; every plan row has {', '.join(PLAN_KEYS)}: {redo}")
        if not isinstance(row["prompt"], str):
            raise ValueError(f"{path}:{lineno}: prompt={row['prompt']!r} is not a string; {redo}")
        name = row["coco_file"]
        if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
            raise ValueError(f"{path}:{lineno}: coco_file={name!r} is not the file name of a val2014 image "
                             f"(e.g. COCO_val2014_000000000042.jpg); {redo}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows; {redo}")
    return rows


def center_crop_resize(image: Image.Image, resolution: int = DEFAULT_RESOLUTION) -> Image.Image:
    """Centre crop to the short side (floor offsets), then LANCZOS resize to resolution x resolution;
    hand-written because torchvision v2 rounds the offset (tests/test_transforms.py)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.convert("RGB").crop((left, top, left + side, top + side))
    return square.resize((resolution, resolution), Image.LANCZOS)


def prepare_references(rows: list[dict], coco_dir: str | Path, out_dir: str | Path,
                       resolution: int = DEFAULT_RESOLUTION) -> int:
    """Write the cropped, resized reference image of every plan row (skipping those already there)."""
    coco_dir, out_dir = Path(coco_dir), Path(out_dir)
    written = 0
    for row in tqdm(rows, desc="COCO references", unit="img"):
        target = out_dir / f"{Path(row['coco_file']).stem}.png"
        if target.exists() and image_problem(target) is None:  # a damaged one is written again
            continue
        source = coco_dir / row["coco_file"]
        if not source.exists():
            raise FileNotFoundError(f"{source} not found: --coco-dir must be the val2014 image folder")
        try:
            with Image.open(source) as image:
                resized = center_crop_resize(image, resolution)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{source} is not a readable image ({e}); download val2014 again or replace "
                             f"that file") from e
        atomic_save_image(target, resized)
        written += 1
    return written


@exits_on_user_error("python -m eval.coco")
def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m eval.coco", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="sample the captions and write OUT/prompts.jsonl")
    plan.add_argument("--captions", required=True, type=non_empty("annotations/captions_val2014.json"),
                      help="annotations/captions_val2014.json")
    plan.add_argument("--out", required=True, type=output_folder("a folder for prompts.jsonl, prompts.txt and plan.json"))
    plan.add_argument("-n", type=whole_number(1), default=DEFAULT_N, help=f"captions (images) to plan ({DEFAULT_N})")
    plan.add_argument("--seed", type=whole_number(0, 2**32 - 1), default=DEFAULT_SEED, help="caption sampling seed")
    plan.add_argument("--sample-seed", type=whole_number(0, 2**32 - 1), default=SAMPLE_SEED,
                      help="generation seed written in the plan")
    part = sub.add_parser("shard", help="write rows i::n of a plan (one SLURM array task)")
    part.add_argument("plan", type=non_empty("the plan's prompts.jsonl"))
    part.add_argument("--index", type=whole_number(0), required=True)
    part.add_argument("--num-shards", type=whole_number(1), required=True)
    part.add_argument("--out", required=True, type=output_file("the .jsonl file to write the shard's rows to"))
    refs = sub.add_parser("refs", help="centre-crop + LANCZOS-resize the plan's reference images")
    refs.add_argument("plan", type=non_empty("the plan's prompts.jsonl"))
    refs.add_argument("--coco-dir", required=True, type=existing_folder("the val2014 image folder"),
                      help="the val2014 image folder")
    refs.add_argument("--out", required=True, type=output_folder("a folder for the reference images"))
    refs.add_argument("--resolution", type=whole_number(1, MAX_RESOLUTION), default=DEFAULT_RESOLUTION,
                      help=f"side of the square reference images ({DEFAULT_RESOLUTION})")
    refs.add_argument("--index", type=whole_number(0), default=0)
    refs.add_argument("--num-shards", type=whole_number(1), default=1)
    args = parser.parse_args(argv)
    if args.command != "plan" and args.index >= args.num_shards:
        sub.choices[args.command].error(f"argument --index: {args.index} is out of range; give --index "
                                        f"0..{args.num_shards - 1} for --num-shards {args.num_shards}")
    if args.command == "shard" and Path(args.out).resolve() == Path(args.plan).resolve():
        part.error(f"argument --out: {args.out} is the plan itself, which the shard would overwrite; give another file")
    logging.basicConfig(level="INFO")
    _run(args)


def _run(args: argparse.Namespace) -> None:
    if args.command == "plan":
        rows = sample_captions(args.captions, args.n, args.seed, args.sample_seed)
        protocol = {"captions": str(args.captions), "n": args.n, "seed": args.seed,
                    "rule": "distinct images: permutation of sorted image ids; one uniformly random caption each, of the "
                            "image's captions in annotation-id order, whitespace runs collapsed"}
        print(write_plan(rows, args.out, protocol))
    elif args.command == "shard":
        rows = shard(read_plan(args.plan), args.index, args.num_shards)
        path = Path(args.out)
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        print(f"{len(rows)} prompts -> {path}")
    else:
        rows = shard(read_plan(args.plan), args.index, args.num_shards)
        print(f"wrote {prepare_references(rows, args.coco_dir, args.out, args.resolution)} reference images")


if __name__ == "__main__":
    main()
