"""Create a blind pairwise study from two or more sample folders and print the rater links.

    python -m reports.study create --name cross-vs-adaln --system A=runs/g/c1/samples/s --system B=... \
        --raters 20 [--checks 3] [--pairs-per-rater 30] [--size 256x256] [--fit pad|crop] [--frames 16] \
        [--frame-ms 125] [--db studies/votes.sqlite] [--base-url http://host:8502]
    python -m reports.study create --grid runs/<grid> --arms cross_attn,pixart_alpha [--prompt-set NAME] \
        [--seed N] --raters 20 [...]        # the two arms' sample folders of a grid (a baseline is an arm)
    python -m reports.study add-raters --study <id> --secret <owner secret> --count 5

Images are matched across systems on (prompt text, seed, index); every matched key gives one pair per
two systems. Attention checks pair an image with one of a different prompt (the matched one is the
right answer to the text question); every rater gets every check. With --pairs-per-rater each rater
judges that many compare pairs, the least-judged first, so every pair and prompt gets about the same
number of raters and each pair is shown both ways round; without it every rater judges every pair.
Every image is decoded and re-encoded from its pixels when the study is created: a file that cannot be
read, or not converted faithfully, stops creation with its path.

Every stimulus of a study is served in one format, so that nothing but its pixels differs between
systems (a rater's browser sees the byte length, dimensions, frame count and timing of every image):
- colour: 8-bit sRGB RGB. 16-bit samples are scaled by 255/65535 and rounded; float samples must lie in
  [0, 1] (scaled by 255 and rounded); NaN, infinities, floats outside [0, 1] and 32-bit integers above
  65535 are refused. Transparency is composited on white, greyscale and palettes expand to RGB, an
  embedded ICC profile is converted to sRGB, EXIF orientation is applied.
- size: one per study, --size WxH or by default the largest image's (by area). An image of another
  size is resized with the Lanczos filter; of another aspect ratio it is, with --fit pad (the default),
  scaled to fit and centred on mid grey (the whole picture is judged, the bars show the aspect ratio),
  with --fit crop scaled to cover and centre cropped (nothing shows the aspect ratio, the edges are lost).
- clips: when any image is animated every stimulus is a clip of one frame count (--frames, default the
  most any clip has), one frame time (--frame-ms, default the median clip length over that count) and
  looping forever. A clip is resampled in time: each output frame is the source frame on screen at the
  middle of its slot, the source stretched to the common length; a still fills every frame.
- encoding: an uncompressed PNG (an APNG for clips) written from the pixels, every frame whole. Its
  length depends only on the size and frame count, so every stimulus of a study has exactly the same
  byte length by construction: no compressor, palette or frame-dropping encoder can make it depend on
  the content (padding compressed files to one length would also work, but needs a second format rule
  and a worst case; an uncompressed file has no worst case). The cost is bandwidth: width x height x 3
  bytes per frame, e.g. 192 KiB for a 256x256 still; --size and --frames make them smaller.
The chosen format is stored with the study (column `stimulus`) and shown on its results page.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import random
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.common import read_samples
from reports import votes
from reports.voteapp import OneLineParser, VoteSettings, whole_number

log = logging.getLogger(__name__)

STUDY_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".tif", ".tiff")
SIDES = (8, 4096)  # the smallest and largest --size side
LARGE_STIMULUS = 8 * 2**20  # bytes; a larger stimulus is slow on a phone


def parse_systems(specs: list[str]) -> dict[str, Path]:
    systems = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--system {spec!r}: expected NAME=PATH to a sample folder")
        if name in systems:
            raise ValueError(f"--system {name} is given twice; system names must be unique")
        systems[name] = Path(path)
    if len(systems) < 2:
        raise ValueError("a study needs at least two --system NAME=PATH sample folders")
    return systems


def grid_systems(grid_dir: Path, arms: list[str], prompt_set: str | None = None,
                 seed: int | None = None) -> dict[str, Path]:
    """{arm: its cell's sample folder} of a grid folder's planned cells: an arm is a grid file's arm name
    or the value a table shows (a baseline's name included), or `axis=value` pairs joined with '+' where a
    name is on several axes; of an arm's cells the one of training seed `seed` (default: its lowest).
    The prompt set is `prompt_set`, else the first that every chosen cell sampled."""
    from ablations.runfolder import CELL, SAMPLES, current_cell_ids, read_json_or_empty

    grid_dir = Path(grid_dir)
    if not (grid_dir / "grid.yaml").is_file():
        raise FileNotFoundError(f"--grid {grid_dir}: no grid.yaml there; give a grid's runs folder, e.g. runs/conditioning")
    if len(arms) < 2 or len(set(arms)) != len(arms):
        raise ValueError(f"--arms {','.join(arms)}: give two or more different arms, e.g. --arms cross_attn,pixart_alpha")
    current = current_cell_ids(grid_dir)
    cells = [(path.parent, read_json_or_empty(path)) for path in sorted(grid_dir.glob(f"*/{CELL}"))]
    cells = [(d, info) for d, info in cells if current is None or info.get("cell_id", d.name) in current]
    chosen = {}
    for arm in arms:
        wanted = dict(part.split("=", 1) for part in arm.split("+")) if "=" in arm else None
        found = []
        for folder, info in cells:
            names = {k: {str(info.get("arms", {}).get(k)), str(v)} for k, v in (info.get("axes") or {}).items()
                     if k != "seed"}
            if wanted is not None and all(str(v) in names.get(k, ()) for k, v in wanted.items()) or \
                    wanted is None and any(arm in values for values in names.values()):
                found.append((folder, info))
        combos = {tuple(sorted((k, str(v)) for k, v in info.get("axes", {}).items() if k != "seed")) for _, info in found}
        if not found:
            raise ValueError(f"--arms: no planned cell of {grid_dir} is arm {arm!r}; its cells show "
                             f"{sorted({str(v) for _, i in cells for k, v in i.get('axes', {}).items() if k != 'seed'})}")
        if len(combos) > 1:
            raise ValueError(f"--arms: {arm!r} names {len(combos)} arms ({'; '.join(map(str, sorted(combos)))}); name "
                             "one by axis=value pairs joined with '+'")
        seeds = sorted(info.get("axes", {}).get("seed", 0) for _, info in found)
        pick = seeds[0] if seed is None or len(found) == 1 else seed
        matched = [folder for folder, info in found if info.get("axes", {}).get("seed", 0) == pick]
        if not matched:
            raise ValueError(f"--seed {seed}: arm {arm!r} has training seeds {seeds}")
        chosen[arm] = matched[0]
    sampled = [{p.parent.name for p in (folder / SAMPLES).glob("*/samples.jsonl")} for folder in chosen.values()]
    common = sorted(set.intersection(*sampled))
    if prompt_set is None and not common:
        raise ValueError(f"--arms {','.join(arms)}: their cells share no finished sample folder; run the grid first")
    name = prompt_set or common[0]
    if name not in common:
        raise ValueError(f"--prompt-set {name}: not sampled by every chosen cell (shared: {', '.join(common) or 'none'})")
    return {arm: folder / SAMPLES / name for arm, folder in chosen.items()}


def matched_images(systems: dict[str, Path]) -> dict[tuple, dict[str, Path]]:
    """{(prompt, seed, index): {system: image path}} for the keys every system has."""
    per_system = {}
    for name, folder in systems.items():
        images = {}
        for sample in read_samples(folder):
            if not sample.file.lower().endswith(STUDY_SUFFIXES):
                raise ValueError(f"{folder / sample.file}: studies show images and GIFs; convert videos to GIF first")
            key = (sample.prompt, sample.seed, sample.index)
            if key in images:
                log.warning("%s lists %r twice; the study uses its first image", folder, key)
                continue
            images[key] = (folder / sample.file).resolve()
        per_system[name] = images
    shared = set.intersection(*(set(images) for images in per_system.values()))
    if not shared:
        raise ValueError("the sample folders share no (prompt, seed, index); generate them from the same prompt "
                         "set and seeds")
    dropped = {n: len(images) - len(shared) for n, images in per_system.items() if len(images) > len(shared)}
    if dropped:
        log.warning("images without a match in every system are left out: %s", dropped)
    return {key: {n: per_system[n][key] for n in systems} for key in sorted(shared, key=str)}


def build_pairs(matched: dict[tuple, dict[str, Path]], checks: int, seed: int = 0) -> list[dict]:
    """One compare pair per key and two systems, plus `checks` attention-check pairs."""
    pairs = []
    for key, images in matched.items():
        for a, b in itertools.combinations(sorted(images), 2):
            pairs.append({"kind": votes.COMPARE, "prompt": key[0], "prompt_key": _key_text(key),
                          "system_a": a, "system_b": b, "path_a": str(images[a]), "path_b": str(images[b])})
    keys = list(matched)
    if checks and len(keys) < 2:
        raise ValueError("attention checks need at least two different prompts")
    rng = random.Random(seed)
    for _ in range(checks):
        key, other = rng.sample(keys, 2)
        system = rng.choice(sorted(matched[key]))
        pairs.append({"kind": votes.CHECK, "prompt": key[0], "prompt_key": _key_text(key), "system_a": system,
                      "system_b": f"{system} (other prompt)", "path_a": str(matched[key][system]),
                      "path_b": str(matched[other][system])})
    return pairs


def _key_text(key: tuple) -> str:
    return f"{key[0]}|seed={key[1]}|index={key[2]}"


def stimulus_format(images: Iterable[tuple[tuple[int, int], list[float]]], size: tuple[int, int] | None = None,
                    fit: str = "pad", frames: int | None = None, frame_ms: int | None = None) -> votes.StimulusFormat:
    """The one format of a study's stimuli (the rules of the module docstring), from every image's
    ((width, height), frame durations in ms) and the options."""
    images = list(images)
    width, height = size or max((wh for wh, _ in images), key=lambda wh: (wh[0] * wh[1], wh))
    clips = [durations for _, durations in images if len(durations) > 1]
    if not clips:
        for flag, value in (("--frames", frames), ("--frame-ms", frame_ms)):
            if value is not None:
                raise ValueError(f"{flag} {value}: every image of this study is a still; leave {flag} out")
        return votes.StimulusFormat(width, height, fit)
    count = frames or max(len(durations) for durations in clips)
    ms = frame_ms or max(votes.MIN_FRAME_MS, round(float(np.median([sum(d) for d in clips])) / count))
    return votes.StimulusFormat(width, height, fit, count, ms)


def create(db: Path, name: str, systems: dict[str, Path], raters: int, checks: int,
           pairs_per_rater: int | None = None, size: tuple[int, int] | None = None, fit: str = "pad",
           frames: int | None = None, frame_ms: int | None = None) -> dict:
    """Match, validate and re-encode every image into the study's one stimulus format, then write the
    study in one transaction. The returned dict also holds the format's metadata under 'stimulus'."""
    if raters < 1:
        raise ValueError(f"--raters {raters}: a study needs at least 1 rater")
    if checks < 0:
        raise ValueError(f"--checks {checks}: give 0 or more attention checks")
    pairs = build_pairs(matched_images(systems), checks)
    compare = sum(p["kind"] == votes.COMPARE for p in pairs)
    if pairs_per_rater is not None and not 1 <= pairs_per_rater <= compare:
        raise ValueError(f"--pairs-per-rater {pairs_per_rater}: the study has {compare} compare pairs; give 1 to at "
                         f"most {compare} (or leave it out to show every rater all of them)")
    paths = sorted({Path(pair[side]) for pair in pairs for side in ("path_a", "path_b")})
    shapes = []
    for path in tqdm(paths, desc="reading images", unit="image", disable=None):
        pixels, durations = votes.read_image(path)
        shapes.append(((pixels[0].shape[1], pixels[0].shape[0]), durations))
    fmt = stimulus_format(shapes, size, fit, frames, frame_ms)
    expected = fmt.payload_bytes
    if expected > LARGE_STIMULUS:
        log.warning("every stimulus is %.1f MiB (%dx%d, %d frames); give --size or --frames to make them smaller",
                    expected / 2**20, fmt.width, fmt.height, fmt.frames)
    encoded = {}
    for path in tqdm(paths, desc="re-encoding images", unit="image", disable=None):
        data = votes.stimulus(*votes.read_image(path), fmt)
        if len(data) != expected:
            raise RuntimeError(f"{path}: stimulus of {len(data)} bytes, not the study's {expected}")
        encoded[path] = (data, votes.MEDIA_TYPE)
    for pair in pairs:
        pair["image_a"], pair["image_b"] = encoded[Path(pair["path_a"])], encoded[Path(pair["path_b"])]
    conn = votes.connect(db)
    try:
        votes.init_db(conn)
        created = votes.insert_study(conn, name, {n: str(p.resolve()) for n, p in systems.items()}, pairs, raters,
                                     pairs_per_rater, fmt.metadata())
    finally:
        conn.close()
    return {**created, "stimulus": fmt.metadata()}


def image_size(text: str) -> tuple[int, int]:
    """An argparse type: WIDTHxHEIGHT or one number (a square), each side within SIDES."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    sides = (int(match[1]), int(match[2] or match[1])) if match else None
    if sides is None or not all(SIDES[0] <= side <= SIDES[1] for side in sides):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; give WIDTHxHEIGHT in pixels, each side "
                                         f"{SIDES[0]}-{SIDES[1]} (e.g. 256x256), or one number for a square")
    return sides


def print_links(created: dict, base_url: str) -> None:
    base = base_url.rstrip("/")
    print(f"study id:     {created['study_id']}")
    print(f"owner secret: {created['owner_secret']}   (keep it; it is stored only as a hash)")
    print(f"results:      {base}/s/{created['study_id']}/results")
    if created.get("stimulus"):
        print(f"stimuli:      {votes.describe_stimulus(created['stimulus'])}")
    print("rater links (one per person):")
    for token in created["raters"]:
        print(f"  {base}/r/{token}")


def build_parser() -> OneLineParser:
    """The CLI; --config, --db and --base-url are accepted before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="vote settings YAML (keys db, host, port)")
    common.add_argument("--db", default=argparse.SUPPRESS,
                        help="SQLite votes file (default from --config, else studies/votes.sqlite)")
    common.add_argument("--base-url", default=argparse.SUPPRESS,
                        help="where raters reach the vote server (default http://HOST:PORT of the settings)")
    parser = OneLineParser(prog="python -m reports.study", description=__doc__, parents=[common],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    make = sub.add_parser("create", parents=[common], help="create a study and print its links")
    make.add_argument("--name", default=None, help="a name unique in the votes file (default with --grid: "
                                                   "<grid>: <arm> vs <arm>)")
    make.add_argument("--system", action="append", default=[], metavar="NAME=PATH",
                      help="a sample folder; give two or more (or --grid and --arms)")
    make.add_argument("--grid", type=Path, default=None, help="a grid's runs folder whose arms to compare")
    make.add_argument("--arms", default=None, help="with --grid: two or more arms, comma-separated (a baseline is an arm)")
    make.add_argument("--prompt-set", default=None, help="with --grid: the sample folder (default: the first shared)")
    make.add_argument("--seed", type=whole_number(0), default=None, help="with --grid: the training seed of the "
                                                                          "arms' cells (default: each arm's lowest)")
    make.add_argument("--raters", type=whole_number(1), default=20, help="rater links to create (default 20)")
    make.add_argument("--checks", type=whole_number(0), default=0, help="attention-check pairs every rater gets")
    make.add_argument("--pairs-per-rater", type=whole_number(1), default=None,
                      help="compare pairs each rater judges, spread evenly over pairs, prompts and left/right "
                           "order (default: every pair)")
    make.add_argument("--size", type=image_size, default=None, metavar="WxH",
                      help="size of every stimulus, e.g. 256x256 (default: the largest image's)")
    make.add_argument("--fit", choices=votes.FITS, default="pad",
                      help="another aspect ratio is padded (default: the whole image, grey bars) or cropped "
                           "(centre, no bars)")
    make.add_argument("--frames", type=whole_number(2, 1000), default=None,
                      help="frames of every clip (default: the most any clip has)")
    make.add_argument("--frame-ms", type=whole_number(votes.MIN_FRAME_MS, 60000), default=None,
                      help="milliseconds per clip frame (default: the median clip length over --frames)")
    more = sub.add_parser("add-raters", parents=[common], help="new rater links for an existing study")
    more.add_argument("--study", required=True, help="the study id printed at creation")
    more.add_argument("--secret", required=True, help="the owner secret printed at creation")
    more.add_argument("--count", type=whole_number(1), default=1, help="links to add (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = VoteSettings.load(getattr(args, "config", None), db=getattr(args, "db", None))
        base_url = getattr(args, "base_url", None) or f"http://{settings.host}:{settings.port}"
        if args.command == "create":
            systems, name = _systems(args)
            created = create(settings.db, name, systems, args.raters, args.checks,
                             args.pairs_per_rater, args.size, args.fit, args.frames, args.frame_ms)
            print_links(created, base_url)
        else:
            _add_raters(settings.db, args.study, args.secret, args.count, base_url)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _systems(args) -> tuple[dict[str, Path], str]:
    """The sample folders of `create` and the study's name: --system pairs, or --grid with --arms."""
    if args.grid is None:
        if args.arms or args.prompt_set or args.seed is not None:
            raise ValueError("--arms, --prompt-set and --seed choose a grid's sample folders: give --grid too")
        if not args.name:
            raise ValueError("give --name: a name unique in the votes file")
        return parse_systems(args.system), args.name
    if args.system:
        raise ValueError("give either --system NAME=PATH folders or --grid with --arms, not both")
    arms = [a.strip() for a in (args.arms or "").split(",") if a.strip()]
    systems = grid_systems(args.grid, arms, args.prompt_set, args.seed)
    return systems, args.name or f"{args.grid.name}: {' vs '.join(arms)}"


def _add_raters(db: Path, study_id: str, secret: str, count: int, base_url: str) -> None:
    if not Path(db).is_file():
        raise ValueError(f"--db {db}: no votes file there; give the --db the study was created in")
    conn = votes.connect(db)
    try:
        votes.init_db(conn)
        if conn.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
            raise ValueError(f"--study {study_id}: no study with this id in {db}; check the id printed at creation "
                             f"and --db")
        if not votes.check_owner(conn, study_id, secret):
            raise ValueError("--secret: wrong owner secret for this study; give the one printed at creation")
        for token in votes.add_raters(conn, study_id, count):
            print(f"  {base_url.rstrip('/')}/r/{token}")
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
