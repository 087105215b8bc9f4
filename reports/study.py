"""Create a blind pairwise study from two or more sample folders and print the rater links.

    python -m reports.study create --name cross-vs-adaln --system A=runs/g/c1/samples/s --system B=... \
        --raters 20 [--checks 3] [--pairs-per-rater 30] [--db studies/votes.sqlite] [--base-url http://host:8502]
    python -m reports.study add-raters --study <id> --secret <owner secret> --count 5

Images are matched across systems on (prompt text, seed, index); every matched key gives one pair per
two systems. Attention checks pair an image with one of a different prompt (the matched one is the
right answer to the text question); every rater gets every check. With --pairs-per-rater each rater
judges that many compare pairs, the least-judged first, so every pair and prompt gets about the same
number of raters and each pair is shown both ways round; without it every rater judges every pair.
Every image is decoded and re-encoded from its pixels when the study is created: a file that cannot be
read stops creation with its path.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import logging
import random
import sys
from pathlib import Path

from tqdm import tqdm

from eval.common import read_samples
from reports import votes
from reports.voteapp import OneLineParser, VoteSettings, whole_number

log = logging.getLogger(__name__)

STUDY_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")


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


def create(db: Path, name: str, systems: dict[str, Path], raters: int, checks: int,
           pairs_per_rater: int | None = None) -> dict:
    """Match, validate and re-encode every image, then write the study in one transaction."""
    if raters < 1:
        raise ValueError(f"--raters {raters}: a study needs at least 1 rater")
    if checks < 0:
        raise ValueError(f"--checks {checks}: give 0 or more attention checks")
    pairs = build_pairs(matched_images(systems), checks)
    compare = sum(p["kind"] == votes.COMPARE for p in pairs)
    if pairs_per_rater is not None and not 1 <= pairs_per_rater <= compare:
        raise ValueError(f"--pairs-per-rater {pairs_per_rater}: the study has {compare} compare pairs; give 1 to at "
                         f"most {compare} (or leave it out to show every rater all of them)")
    read = functools.lru_cache(maxsize=64)(votes.read_image)
    for pair in tqdm(pairs, desc="re-encoding images", unit="pair", disable=None):
        pair["image_a"], pair["image_b"] = votes.pixels_only([read(Path(pair["path_a"])), read(Path(pair["path_b"]))])
    conn = votes.connect(db)
    try:
        votes.init_db(conn)
        return votes.insert_study(conn, name, {n: str(p.resolve()) for n, p in systems.items()}, pairs, raters,
                                  pairs_per_rater)
    finally:
        conn.close()


def print_links(created: dict, base_url: str) -> None:
    base = base_url.rstrip("/")
    print(f"study id:     {created['study_id']}")
    print(f"owner secret: {created['owner_secret']}   (keep it; it is stored only as a hash)")
    print(f"results:      {base}/s/{created['study_id']}/results")
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
    make.add_argument("--name", required=True, help="a name unique in the votes file")
    make.add_argument("--system", action="append", default=[], metavar="NAME=PATH",
                      help="a sample folder; give two or more")
    make.add_argument("--raters", type=whole_number(1), default=20, help="rater links to create (default 20)")
    make.add_argument("--checks", type=whole_number(0), default=0, help="attention-check pairs every rater gets")
    make.add_argument("--pairs-per-rater", type=whole_number(1), default=None,
                      help="compare pairs each rater judges, spread evenly over pairs, prompts and left/right "
                           "order (default: every pair)")
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
            created = create(settings.db, args.name, parse_systems(args.system), args.raters, args.checks,
                             args.pairs_per_rater)
            print_links(created, base_url)
        else:
            _add_raters(settings.db, args.study, args.secret, args.count, base_url)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


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
