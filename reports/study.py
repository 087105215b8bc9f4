"""Create a blind pairwise study from two or more sample folders and print the rater links.

    python -m reports.study create --name cross-vs-adaln --system A=runs/g/c1/samples/s --system B=... \
        --raters 20 [--checks 3] [--db studies/votes.sqlite] [--base-url http://localhost:8502]
    python -m reports.study add-raters --study <id> --secret <owner secret> --count 5

Images are matched across systems on (prompt text, seed, index); every matched key gives one pair per
two systems. Attention checks pair an image with one of a different prompt (the matched one is the
right answer to the text question).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import random
import sys
from pathlib import Path

from eval.common import read_samples
from reports import votes
from reports.voteapp import VoteSettings

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


def create(db: Path, name: str, systems: dict[str, Path], raters: int, checks: int) -> dict:
    pairs = build_pairs(matched_images(systems), checks)
    conn = votes.connect(db)
    votes.init_db(conn)
    try:
        return votes.insert_study(conn, name, {n: str(p.resolve()) for n, p in systems.items()}, pairs, raters)
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m reports.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="vote settings YAML (db, host, port)")
    parser.add_argument("--db", help="SQLite file (default from --config, else studies/votes.sqlite)")
    parser.add_argument("--base-url", help="where the vote server is reached (default http://HOST:PORT)")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("create", help="create a study and print its links")
    make.add_argument("--name", required=True)
    make.add_argument("--system", action="append", default=[], metavar="NAME=PATH", help="a sample folder")
    make.add_argument("--raters", type=int, default=20)
    make.add_argument("--checks", type=int, default=0, help="attention-check pairs per rater")
    more = sub.add_parser("add-raters", help="new rater links for an existing study (owner secret needed)")
    more.add_argument("--study", required=True)
    more.add_argument("--secret", required=True)
    more.add_argument("--count", type=int, default=1)
    args = parser.parse_args(argv)
    settings = VoteSettings.load(args.config, db=args.db)
    base_url = args.base_url or f"http://{settings.host}:{settings.port}"
    try:
        if args.command == "create":
            print_links(create(settings.db, args.name, parse_systems(args.system), args.raters, args.checks), base_url)
        else:
            _add_raters(settings.db, args.study, args.secret, args.count, base_url)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _add_raters(db: Path, study_id: str, secret: str, count: int, base_url: str) -> None:
    conn = votes.connect(db)
    try:
        if not votes.check_owner(conn, study_id, secret):
            raise ValueError("wrong owner secret for this study")
        for token in votes.add_raters(conn, study_id, count):
            print(f"  {base_url.rstrip('/')}/r/{token}")
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
