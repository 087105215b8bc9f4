"""The sample-folder format every generator writes and every evaluator reads, the shared shape
of an evaluator's output (see DESIGN.md), and the argument types every evaluator's command line uses
so that a bad value ends in one line naming the option and the fix (`OneLineParser`, `whole_number`,
`probability`, `non_empty`, `existing_folder`, `output_folder`, `output_file`, `device_name`)."""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError

from eval.stats import bootstrap_ci
from eval.arguments import OneLineParser, device_problem, existing_folder, non_empty, output_file, whole_number
from gentron.errors import USER_ERRORS, exits_on_user_error, fail
from gentron.partition import check_shard
from gentron.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

MANIFEST = "samples.jsonl"
_REQUIRED = ("file", "prompt", "seed")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# T2I-CompBench's official layout: `{prompt}_{counter:06}.png`, counter = 10 * line + index, seeds 42..51.
OFFICIAL_NAME = re.compile(r"^(?P<prompt>.*)_(?P<index>\d{6})$")
OFFICIAL_BASE_SEED = 42
OFFICIAL_IMAGES_PER_PROMPT = 10


@dataclass
class Sample:
    file: str
    prompt: str
    seed: int
    index: int = 0
    category: str = ""
    prompt_id: int = -1
    frames: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_samples(folder: str | Path) -> list[Sample]:
    """Read and validate `folder/samples.jsonl`: every line a JSON object with fields of the right
    types, every listed file inside the folder (no `..`, absolute paths or links out) and present."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if problem := _folder_problem(folder):
        raise FileNotFoundError(problem)
    inner = sorted(p for p in (folder / "samples").glob("*") if (p / MANIFEST).is_file())
    if not manifest.exists() and inner:
        raise FileNotFoundError(f"{folder} is a cell folder, not a sample folder; give one of its sample folders: "
                                f"{', '.join(str(p) for p in inner)}")
    if not manifest.exists() and (problem := _unmerged_problem(folder)):
        raise FileNotFoundError(problem)
    if not manifest.exists():
        raise FileNotFoundError(
            f"{manifest} not found: a sample folder needs a {MANIFEST} with one JSON line per image "
            f"(keys {', '.join(_REQUIRED)}); see DESIGN.md 'A sample folder', or build one with "
            f"`python -m eval.common make-manifest {folder}` for a folder of images named after prompts"
        )
    if not manifest.is_file():
        raise IsADirectoryError(f"{manifest} is a folder; it must be the sample manifest file, one JSON line per image")
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{manifest} is not UTF-8 text ({e.reason} at byte {e.start}); rewrite it as one JSON "
                         f"object per line") from e
    samples, first_line = [], {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{manifest}:{lineno} is not valid JSON ({e}); a torn line is what an interrupted writer "
                             f"leaves: regenerate the folder, or delete that line and its image") from e
        if not isinstance(row, dict):
            raise ValueError(f"{manifest}:{lineno} is not a JSON object; every line is one, with keys {list(_REQUIRED)}")
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise ValueError(f"{manifest}:{lineno} lacks {missing}; every line needs {list(_REQUIRED)}")
        known = {k: row.pop(k) for k in list(row) if k in Sample.__dataclass_fields__ and k != "extra"}
        for key, value in known.items():
            if not _FIELD_TYPES[key](value):
                raise ValueError(f"{manifest}:{lineno}: {key}={value!r} must be {_FIELD_NAMES[key]}")
        sample = Sample(**known, extra=row)
        for key in ("file", "frames"):
            name = getattr(sample, key)
            if name is not None and not _inside(folder, name):
                raise ValueError(f"{manifest}:{lineno}: {key} {name!r} is outside the sample folder {folder}; "
                                 "paths are relative to it and stay in it, e.g. color/000012_42.png")
        if not (folder / sample.file).exists():
            raise FileNotFoundError(f"{manifest}:{lineno} names {sample.file}, which is not in {folder}")
        key = (Path(sample.file).as_posix(), sample.frames, sample.seed, sample.index)
        if key in first_line:
            raise ValueError(f"{manifest}:{lineno} lists {sample.file} (seed {sample.seed}) again (first on line "
                             f"{first_line[key]}); every image is listed once, or it would count twice: delete the "
                             f"repeated line")
        first_line[key] = lineno
        samples.append(sample)
    if not samples:
        raise ValueError(f"{manifest} lists no samples")
    return samples


SHARDS = ".shards"  # gentron.generate's shard bookkeeping in a sample folder


def _unmerged_problem(folder: Path) -> str | None:
    """Why a folder drawn in shards cannot be read yet (no samples.jsonl: shards still missing), or None."""
    if not (folder / SHARDS).is_dir():
        return None
    return (f"{folder} was drawn in shards and has no {MANIFEST} yet: some shards are not drawn or not merged; "
            f"run the missing ones (gentron.generate.generate(..., shard=(k, K)) resumes each), then "
            f"gentron.generate.merge_shards({str(folder)!r})")


def _folder_problem(folder: Path) -> str | None:
    """Why `folder` cannot be a sample folder (missing, or a file), or None."""
    if folder.is_dir():
        return None
    if not folder.exists():
        return f"sample folder {folder} does not exist"
    return f"{folder} is a file; give a sample folder (its {MANIFEST} and images)"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FIELD_TYPES = {"file": lambda v: isinstance(v, str) and bool(v), "prompt": lambda v: isinstance(v, str),
                "seed": _is_int, "index": _is_int, "prompt_id": _is_int, "category": lambda v: isinstance(v, str),
                "frames": lambda v: v is None or (isinstance(v, str) and bool(v))}
_FIELD_NAMES = {"file": "a non-empty path string", "prompt": "a string", "seed": "an integer", "index": "an integer",
                "prompt_id": "an integer", "category": "a string", "frames": "a folder path string or null"}


def _inside(folder: Path, name: str) -> bool:
    """Whether folder/name, links resolved, lies in the folder."""
    if Path(name).is_absolute():
        return False
    root = folder.resolve()
    return (root / name).resolve().is_relative_to(root)


def load_image(folder: str | Path, sample: Sample) -> Image.Image:
    path = Path(folder) / sample.file
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image ({e}); regenerate it or drop it from {MANIFEST}") from e


def write_samples(folder: str | Path, samples: list[Sample]) -> Path:
    lines = []
    for s in samples:
        row = {k: v for k, v in asdict(s).items() if k != "extra" and v is not None}
        lines.append(json.dumps({**row, **s.extra}, sort_keys=True))
    return atomic_write_text(Path(folder) / MANIFEST, "\n".join(lines) + "\n")


def per_prompt_means(per_image: list[dict]) -> list[dict]:
    """Average each image score over the images (seeds) of a prompt (a prompt = category + prompt_id)."""
    by_prompt: dict[Any, dict] = {}
    for row in per_image:
        key = (row.get("category", ""), row["prompt_id"])
        entry = by_prompt.setdefault(key, {"prompt_id": row["prompt_id"], "category": row.get("category", ""),
                                           "prompt": row.get("prompt", ""), "values": {}})
        for name, value in row["scores"].items():
            entry["values"].setdefault(name, []).append(value)
    out = []
    for entry in by_prompt.values():
        values = entry.pop("values")
        out.append({**entry, "scores": {k: sum(v) / len(v) for k, v in values.items()}})
    return out


def aggregate(per_prompt: list[dict], seed: int = 0) -> dict[str, dict]:
    """Mean and bootstrap 95% CI over prompts, for every score name present."""
    names = sorted({name for row in per_prompt for name in row["scores"]})
    return {name: bootstrap_ci([row["scores"][name] for row in per_prompt if name in row["scores"]], seed=seed)
            for name in names}


def aggregate_by_seed(per_image: list[dict]) -> dict[str, dict[str, dict]]:
    """The same aggregates computed on the images of one seed at a time ({seed: {score: ci}})."""
    seeds = sorted({row["seed"] for row in per_image if row.get("seed") is not None})
    return {str(seed): aggregate(per_prompt_means([r for r in per_image if r.get("seed") == seed]))
            for seed in seeds}


def result(metric: str, per_image: list[dict], protocol: dict, comparable_to_paper: bool,
           extra: dict | None = None) -> dict:
    """An evaluator's output (DESIGN.md): per-image scores, per-prompt means over seeds, aggregates
    with bootstrap CIs over prompts, and the same aggregates per seed."""
    per_prompt = per_prompt_means(per_image)
    return {"metric": metric, "protocol": protocol, "comparable_to_paper": comparable_to_paper,
            "per_image": per_image, "per_prompt": per_prompt, "aggregate": aggregate(per_prompt),
            "aggregate_by_seed": aggregate_by_seed(per_image), **(extra or {})}


def set_result(metric: str, aggregate_: dict, protocol: dict, comparable_to_paper: bool,
               by_seed: dict | None = None, extra: dict | None = None) -> dict:
    """Output of a set-level metric (FID, KID): no per-image scores; its CIs come from the metric."""
    return {"metric": metric, "protocol": protocol, "comparable_to_paper": comparable_to_paper,
            "per_image": [], "per_prompt": [], "aggregate": aggregate_,
            "aggregate_by_seed": by_seed or {}, **(extra or {})}


def write_result(path: str | Path, result_dict: dict) -> Path:
    log.info("writing %s", path)
    return atomic_write_json(path, result_dict)


# ---------------------------------------------------------------- the sampling protocol and scoring in shards

GENERATION = "generation.json"  # gentron.generate's sampling protocol of a sample folder


def generation_protocol(folder: str | Path) -> dict:
    """{"generation": the folder's sampling protocol} (sampler, steps, guidance, precision, devices, ...),
    to go into an evaluator's protocol; {} for a folder without one (images from elsewhere)."""
    path = Path(folder) / GENERATION
    try:
        return {"generation": json.loads(path.read_text(encoding="utf-8"))}
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it, or merge the folder's shards again "
                         f"(gentron.generate.merge_shards) to rewrite it") from e


def manifest_digest(folder: str | Path) -> str:
    """BLAKE2b of the folder's samples.jsonl, or of its image names and sizes where it has none: the
    partials of one scoring run must all come from the same folder contents."""
    folder = Path(folder)
    digest = hashlib.blake2b(digest_size=16)
    if (folder / MANIFEST).is_file():
        digest.update((folder / MANIFEST).read_bytes())
    else:
        for path in image_files(folder):
            digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def shard_partial(metric: str, samples_dir: str | Path, shard, out: str | Path | None, options: dict,
                  score: Callable[[], dict]) -> dict:
    """Shard k of K of an evaluator's scoring (DESIGN.md "An evaluator's output"): `score()` returns the
    shard's {"per_image", "protocol", ...}; the partial adds {"metric", "partial": {"shard": [k, K],
    "samples_dir", "manifest", "options"}} and is written to `out`. An `out` that already holds this
    shard of these options on this folder's contents is returned as it is, without scoring again."""
    k, count = check_shard(shard)
    header = json.loads(json.dumps({"shard": [k, count], "samples_dir": str(samples_dir),
                                    "manifest": manifest_digest(samples_dir), "options": options}, default=str))
    if out is not None and Path(out).is_file():
        try:
            previous = json.loads(Path(out).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            previous = None
        if isinstance(previous, dict) and previous.get("metric") == metric and previous.get("partial") == header:
            log.info("%s already holds %s shard %d/%d", out, metric, k, count)
            return previous
    partial = {"metric": metric, "partial": header, **score()}
    if out is not None:
        write_result(out, partial)
    return partial


def read_partials(partials: Sequence[str | Path | dict], metric: str) -> list[dict]:
    """The partials of one scoring run (files or dicts), checked to be every shard 0..K-1 exactly once, of
    one metric, one folder content and one set of options; in shard order."""
    loaded = []
    for item in partials:
        if isinstance(item, dict):
            loaded.append(item)
            continue
        try:
            loaded.append(json.loads(Path(item).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise FileNotFoundError(f"partial result {item} does not exist: score that shard first") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"partial result {item} is not valid JSON ({e}); score that shard again") from e
    if not loaded:
        raise ValueError(f"no partial results of {metric} to merge")
    for item, part in zip(partials, loaded):
        if not isinstance(part, dict) or "partial" not in part or part.get("metric") != metric:
            name = item if not isinstance(item, dict) else "a partial"
            raise ValueError(f"{name} is not a partial result of {metric} (it is "
                             f"{part.get('metric') if isinstance(part, dict) else type(part).__name__!r})")
    first = loaded[0]["partial"]
    count = first["shard"][1]
    for part in loaded[1:]:
        header = part["partial"]
        for key, what in (("manifest", "sample folder contents"), ("options", "options")):
            if header[key] != first[key]:
                raise ValueError(f"the partials of {metric} were scored on different {what} (shard {first['shard']} "
                                 f"and {header['shard']}): score every shard of one folder with the same options")
        if header["shard"][1] != count:
            raise ValueError(f"the partials of {metric} split the set differently ({count} and "
                             f"{header['shard'][1]} shards): merge the K partials of one split")
    shards = sorted(part["partial"]["shard"][0] for part in loaded)
    if shards != list(range(count)):
        missing = sorted(set(range(count)) - set(shards))
        repeated = sorted({k for k in shards if shards.count(k) > 1})
        raise ValueError(f"{metric}: the partials are not every shard of {count} once (missing {missing}, "
                         f"repeated {repeated}); score the missing shards, or pass each shard once")
    return sorted(loaded, key=lambda part: part["partial"]["shard"][0])


def merged_protocol(partials: list[dict]) -> dict:
    """The union of the partials' protocols; a setting two shards recorded differently is an error."""
    merged: dict = {}
    for part in partials:
        for key, value in part["protocol"].items():
            if key in merged and merged[key] != value:
                raise ValueError(f"shards disagree on protocol {key!r}: {merged[key]!r} and {value!r} (shard "
                                 f"{part['partial']['shard']}); score every shard in the same environment")
            merged[key] = value
    return merged


def merged_per_image(partials: list[dict]) -> list[dict]:
    """The partials' per-image rows in shard order: the unsharded run's rows in its order."""
    return [row for part in partials for row in part["per_image"]]


def image_files(folder: str | Path) -> list[Path]:
    """Every image under `folder` (recursive), sorted, hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def samples_from_images(folder: str | Path, base_seed: int = OFFICIAL_BASE_SEED,
                        images_per_prompt: int = OFFICIAL_IMAGES_PER_PROMPT) -> list[Sample]:
    """Samples for a folder without a manifest. Files named `{prompt}_{counter:06}.png` (the
    T2I-CompBench layout) give their prompt; the official generator's counter runs across the prompt
    file, so counter = images_per_prompt * line + index gives prompt_id = line and seed = base_seed + index.
    A folder whose numbers restart at 0 for each prompt (0..images_per_prompt-1 under every prompt) is read
    as index = number, prompt ids in order of first appearance. Any other file gets an empty prompt."""
    folder = Path(folder)
    files = image_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no {MANIFEST}")
    parsed = []
    for path in files:
        match = OFFICIAL_NAME.match(path.stem)
        parsed.append((path, match["prompt"], int(match["index"])) if match else (path, None, 0))
    numbers = [n for _, prompt, n in parsed if prompt is not None]
    running = bool(numbers) and max(numbers) >= images_per_prompt
    if running:
        line_of: dict[str, int] = {}
        for path, prompt, n in parsed:
            if prompt is not None and line_of.setdefault(prompt, n // images_per_prompt) != n // images_per_prompt:
                raise ValueError(f"{path.name}: numbers of '{prompt}' span several blocks of {images_per_prompt}; "
                                 f"official names count 10 * line + index across the prompt file (or restart at 0 "
                                 f"for each prompt); write a {MANIFEST} for any other layout")
    ids: dict[str, int] = {}
    samples = []
    for path, prompt, n in parsed:
        if prompt is None:
            prompt_id, index, prompt = ids.setdefault(path.stem, len(ids)), 0, ""
        elif running:
            prompt_id, index = n // images_per_prompt, n % images_per_prompt
        else:
            prompt_id, index = ids.setdefault(prompt, len(ids)), n
        samples.append(Sample(file=path.relative_to(folder).as_posix(), prompt=prompt, seed=base_seed + index,
                              index=index, prompt_id=prompt_id))
    return samples


def load_samples(folder: str | Path) -> list[Sample]:
    """`read_samples` where the folder has a manifest, else `samples_from_images`."""
    folder = Path(folder)
    if (folder / MANIFEST).exists() or (folder / SHARDS).is_dir():
        return read_samples(folder)
    log.info("%s has no %s: taking prompts and seeds from the file names", folder, MANIFEST)
    return samples_from_images(folder)


def image_row(sample: Sample, scores: dict[str, float]) -> dict:
    """One `per_image` entry of an evaluator's output."""
    return {"file": sample.file, "prompt_id": sample.prompt_id, "seed": sample.seed,
            "category": sample.category, "prompt": sample.prompt, "scores": scores}


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def resolve_device(device: str | None = None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if problem := device_problem(device):
        raise ValueError(f"device {device!r}: {problem}")
    return device


# ---------------------------------------------------------------- damaged images

def image_problem(path: str | Path) -> str | None:
    """Why an image file cannot be read in full (zero bytes, not an image, truncated or corrupt), or None.
    The whole file is decoded, with truncated files refused whatever ImageFile.LOAD_TRUNCATED_IMAGES says."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "zero bytes"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if path.is_dir():
        return "a folder, not an image"
    lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(path) as image:
            image.load()
    except UnidentifiedImageError:
        return "not an image"
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, zlib.error, ... on damage
        return f"truncated or corrupt: {one_line_message(e)}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    return None


def damaged_images(files: Sequence[str | Path], desc: str = "checking images") -> list[tuple[Path, str]]:
    """(path, problem) of every file `image_problem` refuses, in order."""
    from tqdm import tqdm

    found = []
    for path in tqdm(files, desc=desc, unit="img", disable=len(files) < 1000):
        if problem := image_problem(path):
            found.append((Path(path), problem))
    return found


def describe_damaged(damaged: list[tuple[Path, str]], total: int, what: str, shown: int = 3) -> str:
    """'2 of 40 sample images are damaged: a.png (zero bytes), b.png (truncated ...)' on one line."""
    listed = ", ".join(f"{path} ({problem})" for path, problem in damaged[:shown])
    more = f" and {len(damaged) - shown} more" if len(damaged) > shown else ""
    return f"{len(damaged)} of {total} {what} images are damaged: {listed}{more}"


def refuse_damaged_images(files: Sequence[str | Path], what: str = "sample", total: int | None = None,
                          fix: str = "regenerate them") -> None:
    """Raise ValueError, one line: how many of `files` are damaged, the first few, and `fix`."""
    if damaged := damaged_images(files, desc=f"checking {what} images"):
        raise ValueError(f"{describe_damaged(damaged, total or len(files), what)}; {fix} and run again")


def one_line_message(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def shard_text(text: str) -> str:
    """An argparse type: k/K, shard k of K (0 <= k < K)."""
    try:
        check_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def run_cli(metric: str, evaluate: Callable[..., dict], add_arguments: Callable[[argparse.ArgumentParser], None],
            argv: list[str] | None = None, merge: Callable[..., dict] | None = None) -> dict:
    """The command line every evaluator shares: `python -m eval.<metric> SAMPLES_DIR [options] --out X.json`;
    with `--shard k/K --out PART.json` shard k's partial result, and `python -m eval.<metric> merge PART.json...
    --out X.json` the result of all K."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if merge is not None and argv[:1] == ["merge"]:
        return run_merge(metric, merge, argv[1:])
    parser = OneLineParser(prog=f"python -m eval.{metric}", description=evaluate.__doc__)
    parser.add_argument("samples_dir", type=non_empty(f"a sample folder ({MANIFEST} and images) or a folder of images"),
                        help=f"a sample folder ({MANIFEST}) or any folder of images")
    parser.add_argument("--out", type=output_file("a file for the JSON result, or leave --out out"),
                        help="where to write the JSON result (default: SAMPLES_DIR/eval/<metric>.json)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    shardable = "shard" in inspect.signature(evaluate).parameters
    if shardable:
        parser.add_argument("--shard", type=shard_text, default=None,
                            help=f"k/K: score shard k of K only, writing its partial result to --out; then "
                                 f"`python -m eval.{metric} merge PARTS... --out RESULT`")
    add_arguments(parser)
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=args.pop("log_level"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    samples_dir, out = args.pop("samples_dir"), args.pop("out")
    shard = args.pop("shard", None)
    if problem := _folder_problem(Path(samples_dir)):  # before any model loads
        fail(parser.prog, problem)
    if problem := _out_problem(out, samples_dir):
        fail(parser.prog, problem)
    if shard is not None and out is None:
        fail(parser.prog, "argument --shard: give --out, the file for this shard's partial result")
    try:
        if shard is not None:
            res = evaluate(samples_dir, shard=shard, out=out, **args)
            print(f"{metric} shard {shard}: {len(res['per_image'])} images scored -> {out}")
            return res
        res = evaluate(samples_dir, **args)
        write_result(out or Path(samples_dir) / "eval" / f"{metric}.json", res)
    except USER_ERRORS as e:  # problems the user can fix: the message says how
        fail(parser.prog, e)
    _print_aggregate(metric, res)
    return res


def run_merge(metric: str, merge: Callable[..., dict], argv: list[str]) -> dict:
    """`python -m eval.<metric> merge PART.json... --out RESULT.json`: the result of every shard's partial."""
    parser = OneLineParser(prog=f"python -m eval.{metric} merge",
                           description="Merge the partial results of shards 0..K-1 into one result.")
    parser.add_argument("partials", nargs="+", type=non_empty("a partial result file (--shard k/K --out FILE)"))
    parser.add_argument("--out", required=True, type=output_file("a file for the JSON result"))
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        res = merge(args.partials)
        write_result(args.out, res)
    except USER_ERRORS as e:
        fail(parser.prog, e)
    _print_aggregate(metric, res)
    return res


def _print_aggregate(metric: str, res: dict) -> None:
    for name, agg in res["aggregate"].items():
        ci = "" if agg["ci_low"] is None else f" [{agg['ci_low']:.4f}, {agg['ci_high']:.4f}]"
        print(f"{metric}/{name}: {agg['mean']:.4f}{ci} n={agg['n']}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _out_problem(out: str | None, samples_dir: str | Path) -> str | None:
    """Why --out cannot take the result (it would overwrite the sample manifest), or None."""
    if out is not None and Path(out).resolve() == (Path(samples_dir) / MANIFEST).resolve():
        return (f"argument --out: {out} is the sample folder's {MANIFEST}, which the result would overwrite; "
                f"give another file, or leave --out out")
    return None


def _make_manifest(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m eval.common make-manifest",
                           description="Write samples.jsonl for a folder of images named {prompt}_{index:06}.png")
    parser.add_argument("folder", type=existing_folder("the folder of images named {prompt}_{index:06}.png"))
    parser.add_argument("--base-seed", type=whole_number(0), default=OFFICIAL_BASE_SEED)
    args = parser.parse_args(argv)
    if (Path(args.folder) / MANIFEST).exists():
        raise FileExistsError(f"{Path(args.folder) / MANIFEST} exists; delete it first to rebuild it from the file names")
    path = write_samples(args.folder, samples_from_images(args.folder, args.base_seed))
    print(f"wrote {path}")


@exits_on_user_error("python -m eval.common")
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] != ["make-manifest"]:
        given = f"unknown command {argv[0]!r}" if argv else "no command given"
        raise ValueError(f"{given}; the one command is `python -m eval.common make-manifest FOLDER [--base-seed 42]`")
    _make_manifest(argv[1:])


if __name__ == "__main__":
    main()
