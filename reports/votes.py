"""The blind pairwise-vote store (SQLite, WAL): studies, opaque image ids, rater tokens, one-time
signed screens and votes.

Identities never leave this module towards a rater: a screen carries only a random nonce, its
signature and two random image ids; which system sits left is kept server-side in `screens`.
Every submission is one `BEGIN IMMEDIATE` transaction that consumes its screen and writes both
answers, so a replay, a second tab or a crash never records a vote twice or half a vote.

Images are decoded and re-encoded from their pixels when the study is created (both images of a pair
in one format and at one size, nothing else carried over) and stored in the database, so a bad file is
refused up front and what a rater sees cannot change or leak a file's metadata later. Each rater is
given their pairs on their first visit by `assign`: the least-judged pairs first, each pair shown with
A on the left to every second rater who gets it.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import logging
import random
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

log = logging.getLogger(__name__)

QUESTIONS = {"quality": "Which image has better visual quality?",
             "text": "Which image better matches the text?"}
CHOICES = ("left", "right", "draw")
CHECK = "check"
COMPARE = "compare"
# columns added after the first release of the schema, added to older files when they are opened
ADDED_COLUMNS = [("studies", "pairs_per_rater", "INTEGER"), ("images", "data", "BLOB"),
                 ("images", "media_type", "TEXT")]
MEDIA_TYPES = {"PNG": "image/png", "GIF": "image/gif"}
PAD_COLOUR = (128, 128, 128)  # fills the margin when two images of a pair differ in aspect ratio

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, owner_hash TEXT NOT NULL,
    sign_key TEXT NOT NULL, created REAL NOT NULL, pairs_per_rater INTEGER);
CREATE TABLE IF NOT EXISTS systems (study_id TEXT NOT NULL REFERENCES studies(id), name TEXT NOT NULL,
    folder TEXT NOT NULL, PRIMARY KEY (study_id, name));
CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id),
    path TEXT NOT NULL, data BLOB, media_type TEXT);
CREATE TABLE IF NOT EXISTS pairs (id TEXT PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id),
    position INTEGER NOT NULL, kind TEXT NOT NULL, prompt TEXT NOT NULL, prompt_key TEXT NOT NULL,
    system_a TEXT NOT NULL, system_b TEXT NOT NULL, image_a TEXT NOT NULL REFERENCES images(id),
    image_b TEXT NOT NULL REFERENCES images(id));
CREATE TABLE IF NOT EXISTS raters (token TEXT PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id),
    name TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS screens (nonce TEXT PRIMARY KEY, rater TEXT NOT NULL REFERENCES raters(token),
    pair_id TEXT NOT NULL REFERENCES pairs(id), a_on_left INTEGER NOT NULL, issued REAL NOT NULL, used REAL);
CREATE TABLE IF NOT EXISTS votes (id INTEGER PRIMARY KEY, study_id TEXT NOT NULL, rater TEXT NOT NULL,
    pair_id TEXT NOT NULL, question TEXT NOT NULL, choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'draw')),
    a_on_left INTEGER NOT NULL, created REAL NOT NULL, UNIQUE (rater, pair_id, question));
CREATE TABLE IF NOT EXISTS assignments (rater TEXT NOT NULL REFERENCES raters(token),
    pair_id TEXT NOT NULL REFERENCES pairs(id), a_on_left INTEGER NOT NULL, PRIMARY KEY (rater, pair_id));
CREATE INDEX IF NOT EXISTS assignments_by_pair ON assignments (pair_id);
CREATE INDEX IF NOT EXISTS screens_by_rater ON screens (rater, used);
CREATE INDEX IF NOT EXISTS votes_by_study ON votes (study_id);
"""


class VoteRejected(ValueError):
    """A submission that is not recorded; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Screen:
    nonce: str
    signature: str
    prompt: str
    left_image: str
    right_image: str
    done: int
    total: int


def connect(db_path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, waiting on busy writers.
    A path that is a folder, cannot be created or is not a SQLite file raises ValueError naming it."""
    db_path = Path(db_path)
    if db_path.is_dir():
        raise ValueError(f"--db {db_path} is a folder; give a SQLite file path such as {db_path / 'votes.sqlite'}")
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--db {db_path}: cannot create its folder ({e.strerror}); pick a writable path") from e
    try:
        conn = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
    except sqlite3.DatabaseError as e:
        raise ValueError(f"--db {db_path} is not a SQLite votes file ({e}); point --db at a votes file or a new "
                         f"path") from e
    return conn


def init_db(conn: sqlite3.Connection) -> None:
    """Create the tables, and add the columns newer than an existing file."""
    conn.executescript(SCHEMA)
    for table, column, declaration in ADDED_COLUMNS:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id() -> str:
    return secrets.token_hex(16)


# ---------------------------------------------------------------- creating


def insert_study(conn: sqlite3.Connection, name: str, systems: dict[str, str], pairs: list[dict],
                 raters: int, pairs_per_rater: int | None = None) -> dict:
    """Write a study with its systems and pairs ({kind, prompt, prompt_key, system_a, system_b, path_a,
    path_b, image_a, image_b} where image_* = (bytes, media type) from `pair_images`); returns
    {'study_id', 'owner_secret', 'raters': [tokens]}. One transaction. `pairs_per_rater`: compare pairs
    each rater judges (None: all), besides every attention check."""
    study_id, owner_secret = secrets.token_hex(8), secrets.token_urlsafe(24)
    tokens = [secrets.token_urlsafe(18) for _ in range(raters)]
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT INTO studies (id, name, owner_hash, sign_key, created, pairs_per_rater) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (study_id, name, _hash_secret(owner_secret), secrets.token_hex(32), now, pairs_per_rater))
        conn.executemany("INSERT INTO systems VALUES (?, ?, ?)", [(study_id, n, f) for n, f in systems.items()])
        for position, pair in enumerate(pairs):
            image_a, image_b = new_id(), new_id()
            conn.executemany("INSERT INTO images (id, study_id, path, data, media_type) VALUES (?, ?, ?, ?, ?)",
                             [(image_a, study_id, pair["path_a"], *pair["image_a"]),
                              (image_b, study_id, pair["path_b"], *pair["image_b"])])
            conn.execute("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (new_id(), study_id, position, pair["kind"], pair["prompt"], pair["prompt_key"],
                          pair["system_a"], pair["system_b"], image_a, image_b))
        conn.executemany("INSERT INTO raters VALUES (?, ?, ?, ?)",
                         [(t, study_id, f"rater-{i + 1:02d}", now) for i, t in enumerate(tokens)])
        conn.execute("COMMIT")
    except sqlite3.IntegrityError as e:
        conn.execute("ROLLBACK")
        raise ValueError(f"a study named '{name}' already exists in this database; pick another --name") from e
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.info("created study %s (%s) with %d pairs and %d raters", name, study_id, len(pairs), raters)
    return {"study_id": study_id, "owner_secret": owner_secret, "raters": tokens}


def add_raters(conn: sqlite3.Connection, study_id: str, count: int) -> list[str]:
    study_by_id(conn, study_id)
    tokens = [secrets.token_urlsafe(18) for _ in range(count)]
    conn.execute("BEGIN IMMEDIATE")
    try:
        existing = conn.execute("SELECT COUNT(*) FROM raters WHERE study_id = ?", (study_id,)).fetchone()[0]
        conn.executemany("INSERT INTO raters VALUES (?, ?, ?, ?)",
                         [(t, study_id, f"rater-{existing + i + 1:02d}", time.time()) for i, t in enumerate(tokens)])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return tokens


# ---------------------------------------------------------------- rating


def rater_study(conn: sqlite3.Connection, token: str) -> sqlite3.Row:
    row = conn.execute("SELECT r.token, r.study_id, s.name, s.sign_key FROM raters r JOIN studies s "
                       "ON s.id = r.study_id WHERE r.token = ?", (token,)).fetchone()
    if row is None:
        raise VoteRejected("This rating link is not valid. Ask the study owner for your personal link.", 404)
    return row


def sign(key: str, token: str, nonce: str) -> str:
    return hmac.new(key.encode(), f"{token}:{nonce}".encode(), hashlib.sha256).hexdigest()


def next_screen(conn: sqlite3.Connection, token: str) -> Screen | None:
    """The rater's open screen, or a new one for their next unvoted pair; None when they are done."""
    rater = rater_study(conn, token)
    assigned = assign(conn, token)
    order = _rater_order(token, assigned)
    voted = {r[0] for r in conn.execute("SELECT DISTINCT pair_id FROM votes WHERE rater = ?", (token,))}
    if len(voted) >= len(order):
        return None
    open_screen = conn.execute(
        "SELECT nonce, pair_id, a_on_left FROM screens WHERE rater = ? AND used IS NULL AND pair_id NOT IN "
        "(SELECT pair_id FROM votes WHERE rater = ?) ORDER BY issued LIMIT 1", (token, token)).fetchone()
    if open_screen is None:
        pair_id = next(p for p in order if p not in voted)
        nonce, a_on_left = secrets.token_urlsafe(18), assigned[pair_id]
        conn.execute("INSERT INTO screens VALUES (?, ?, ?, ?, ?, NULL)",
                     (nonce, token, pair_id, a_on_left, time.time()))
    else:
        nonce, pair_id, a_on_left = open_screen
    pair = conn.execute("SELECT prompt, image_a, image_b FROM pairs WHERE id = ?", (pair_id,)).fetchone()
    left, right = (pair["image_a"], pair["image_b"]) if a_on_left else (pair["image_b"], pair["image_a"])
    return Screen(nonce=nonce, signature=sign(rater["sign_key"], token, nonce), prompt=pair["prompt"],
                  left_image=left, right_image=right, done=len(voted), total=len(order))


def _rater_order(token: str, assigned: dict[str, int]) -> list[str]:
    """The rater's pairs in an order of their own (fixed by their token), checks mixed in."""
    pairs = sorted(assigned)
    random.Random(token).shuffle(pairs)
    return pairs


def assign(conn: sqlite3.Connection, token: str) -> dict[str, int]:
    """The rater's pairs {pair_id: a_on_left}, chosen on their first visit (one transaction):

    - every attention check, and `pairs_per_rater` compare pairs (all when unset);
    - the compare pairs judged by the fewest raters so far, so every pair ends within one rater of every
      other; among those, prompts this rater has not seen yet and then the least-judged prompts first;
    - A on the left for every second rater of a pair (which half starts is fixed per pair), so a pair
      judged twice is seen in both orders.
    Pairs go to raters who show up, so links that are never opened take nothing away from the balance."""
    assigned = _assigned(conn, token)
    if assigned:
        return assigned
    conn.execute("BEGIN IMMEDIATE")
    try:
        assigned = _assigned(conn, token) or _assign_new(conn, rater_study(conn, token)["study_id"], token)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return assigned


def _assigned(conn: sqlite3.Connection, token: str) -> dict[str, int]:
    return {r[0]: r[1] for r in conn.execute("SELECT pair_id, a_on_left FROM assignments WHERE rater = ?", (token,))}


def _assign_new(conn: sqlite3.Connection, study_id: str, token: str) -> dict[str, int]:
    per_rater = conn.execute("SELECT pairs_per_rater FROM studies WHERE id = ?", (study_id,)).fetchone()[0]
    rows = conn.execute("SELECT p.id, p.kind, p.prompt, COUNT(a.rater) AS judged FROM pairs p LEFT JOIN assignments a "
                        "ON a.pair_id = p.id WHERE p.study_id = ? GROUP BY p.id ORDER BY p.position",
                        (study_id,)).fetchall()
    judged = {r["id"]: r["judged"] for r in rows}
    compare = [r for r in rows if r["kind"] == COMPARE]
    chosen = [r["id"] for r in rows if r["kind"] == CHECK]
    if per_rater is None or per_rater >= len(compare):
        chosen += [r["id"] for r in compare]
    else:
        rng = random.Random(token)
        tie = {r["id"]: rng.random() for r in compare}
        prompt_judged: dict[str, int] = {}
        for r in compare:
            prompt_judged[r["prompt"]] = prompt_judged.get(r["prompt"], 0) + r["judged"]
        mine: set[str] = set()
        left = list(compare)
        for _ in range(per_rater):
            best = min(left, key=lambda r: (r["judged"], r["prompt"] in mine, prompt_judged[r["prompt"]], tie[r["id"]]))
            left.remove(best)
            mine.add(best["prompt"])
            prompt_judged[best["prompt"]] += 1
            chosen.append(best["id"])
    assigned = {pair_id: (int(pair_id[-1], 16) + judged[pair_id]) % 2 for pair_id in chosen}
    conn.executemany("INSERT INTO assignments VALUES (?, ?, ?)", [(token, p, a) for p, a in assigned.items()])
    return assigned


def record_vote(conn: sqlite3.Connection, token: str, form: dict) -> None:
    """Record one screen's answers ({'nonce', 'signature', 'quality', 'text'}) in one transaction, or
    raise VoteRejected: 400 malformed, 403 forged, 409 already answered (a replay)."""
    rater = rater_study(conn, token)
    nonce, signature = str(form.get("nonce", "")), str(form.get("signature", ""))
    answers = {q: form.get(q) for q in QUESTIONS}
    if not nonce or not signature:
        raise VoteRejected("The submission lacks its screen id; reload the page and vote again.")
    bad = [q for q, a in answers.items() if a not in CHOICES]
    if bad:
        raise VoteRejected(f"Please answer every question with left, right or draw (missing or invalid: {', '.join(bad)}).")
    if not hmac.compare_digest(signature, sign(rater["sign_key"], token, nonce)):
        raise VoteRejected("This submission's signature is not valid; reload the page and vote again.", 403)
    conn.execute("BEGIN IMMEDIATE")
    try:
        _consume_screen(conn, rater, token, nonce, answers)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _consume_screen(conn: sqlite3.Connection, rater: sqlite3.Row, token: str, nonce: str, answers: dict) -> None:
    screen = conn.execute("SELECT pair_id, a_on_left, used FROM screens WHERE nonce = ? AND rater = ?",
                          (nonce, token)).fetchone()
    if screen is None:
        raise VoteRejected("This screen is unknown; reload the page and vote again.")
    if screen["used"] is not None:
        raise VoteRejected("This screen was already answered; your vote was counted once.", 409)
    conn.execute("UPDATE screens SET used = ? WHERE nonce = ?", (time.time(), nonce))
    rows = [(rater["study_id"], token, screen["pair_id"], q, _side_to_choice(a, screen["a_on_left"]),
             screen["a_on_left"], time.time()) for q, a in answers.items()]
    try:
        conn.executemany("INSERT INTO votes (study_id, rater, pair_id, question, choice, a_on_left, created) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    except sqlite3.IntegrityError as e:
        raise VoteRejected("You already voted on this pair; your first vote stands.", 409) from e


def _side_to_choice(answer: str, a_on_left: int) -> str:
    if answer == "draw":
        return "draw"
    return "a" if (answer == "left") == bool(a_on_left) else "b"


# ---------------------------------------------------------------- images


def rater_image(conn: sqlite3.Connection, token: str, image_id: str) -> tuple[bytes, str]:
    """An image of one of the rater's pairs, as (bytes, media type); anything else is 'No such image'."""
    rater_study(conn, token)
    row = conn.execute("SELECT i.path, i.data, i.media_type FROM images i JOIN pairs p "
                       "ON i.id IN (p.image_a, p.image_b) JOIN assignments a ON a.pair_id = p.id "
                       "WHERE i.id = ? AND a.rater = ?", (image_id, token)).fetchone()
    if row is None:
        raise VoteRejected("No such image.", 404)
    if row["data"] is None:  # a study created before images were stored in the database
        (data, media_type), = pixels_only([read_image(Path(row["path"]))])
        return data, media_type
    return bytes(row["data"]), row["media_type"]


def pair_images(path_a: str | Path, path_b: str | Path) -> list[tuple[bytes, str]]:
    """Both images of a pair decoded and re-encoded from their pixels alone: [(bytes, media type)] * 2.
    ValueError naming the file when one cannot be read."""
    return pixels_only([read_image(Path(path_a)), read_image(Path(path_b))])


def pixels_only(images: list[tuple[list[np.ndarray], list[int]]]) -> list[tuple[bytes, str]]:
    """Encode decoded images ((RGB frames, frame durations in ms) each) in one format and at one size:
    GIF when any is animated, else PNG; the size of the largest (others resized, aspect kept, padded).
    New images are built from the pixel arrays, so no ICC profile, transparency, text, comment or EXIF
    of a source file can reach the output."""
    size = max(((f[0].shape[1], f[0].shape[0]) for f, _ in images), key=lambda wh: wh[0] * wh[1])
    animated = any(len(frames) > 1 for frames, _ in images)
    out = []
    for frames, durations in images:
        fresh = [Image.fromarray(frame, "RGB") for frame in frames]
        if fresh[0].size != size:
            fresh = [ImageOps.pad(f, size, method=Image.Resampling.LANCZOS, color=PAD_COLOUR) for f in fresh]
            fresh = [Image.fromarray(np.asarray(f), "RGB") for f in fresh]
        buffer = io.BytesIO()
        if animated:
            fresh[0].save(buffer, format="GIF", save_all=True, append_images=fresh[1:], duration=durations, loop=0)
        else:
            fresh[0].save(buffer, format="PNG")
        out.append((buffer.getvalue(), MEDIA_TYPES["GIF" if animated else "PNG"]))
    return out


def read_image(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """Every frame of an image file as RGB pixels (transparency composited on white) and its durations."""
    try:
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is empty (0 bytes); regenerate it or remove its line from samples.jsonl")
        frames, durations = [], []
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                frame.load()
                if frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info:
                    flat = Image.new("RGBA", frame.size, (255, 255, 255, 255))
                    flat.alpha_composite(frame.convert("RGBA"))
                    frame = flat
                frames.append(np.array(frame.convert("RGB")))
                durations.append(int(frame.info.get("duration", image.info.get("duration", 100)) or 100))
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise ValueError(f"{path} is not a readable image ({reason}); regenerate it or remove its line from "
                         f"samples.jsonl") from e
    return frames, durations


# ---------------------------------------------------------------- owner side


def study_by_id(conn: sqlite3.Connection, study_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM studies WHERE id = ?", (study_id,)).fetchone()
    if row is None:
        raise VoteRejected("No such study.", 404)
    return row


def check_owner(conn: sqlite3.Connection, study_id: str, secret: str) -> bool:
    study = study_by_id(conn, study_id)
    return hmac.compare_digest(study["owner_hash"], _hash_secret(secret or ""))


def owner_cookie(conn: sqlite3.Connection, study_id: str) -> str:
    """The value of the owner's session cookie: derived from the study key, never the secret itself."""
    return hmac.new(study_by_id(conn, study_id)["sign_key"].encode(), b"owner:" + study_id.encode(),
                    hashlib.sha256).hexdigest()


def votes_frame(conn: sqlite3.Connection, study_id: str) -> pd.DataFrame:
    """Raw votes with the systems revealed (owner only): one row per rater, pair and question."""
    query = ("SELECT v.id, ra.name AS rater, v.pair_id, p.kind, p.prompt, p.prompt_key, p.system_a, p.system_b, "
             "v.question, v.choice, v.a_on_left, v.created FROM votes v JOIN pairs p ON p.id = v.pair_id "
             "JOIN raters ra ON ra.token = v.rater WHERE v.study_id = ? ORDER BY v.id")
    return pd.read_sql_query(query, conn, params=(study_id,))


def study_summary(conn: sqlite3.Connection, study_id: str) -> dict:
    """Counts for the owner's page, and how evenly the compare pairs were answered: raters per pair
    (min, max) and how many pairs answered by two or more raters were seen in both left/right orders."""
    count = lambda sql: conn.execute(sql, (study_id,)).fetchone()[0]  # noqa: E731
    answered = conn.execute(
        "SELECT p.id, COUNT(v.rater) AS raters, COUNT(DISTINCT v.a_on_left) AS orders FROM pairs p LEFT JOIN votes v "
        "ON v.pair_id = p.id AND v.question = 'quality' WHERE p.study_id = ? AND p.kind = 'compare' GROUP BY p.id",
        (study_id,)).fetchall()
    raters_per_pair = [r["raters"] for r in answered]
    repeated = [r for r in answered if r["raters"] >= 2]
    return {"systems": [r[0] for r in conn.execute("SELECT name FROM systems WHERE study_id = ? ORDER BY name", (study_id,))],
            "pairs": count("SELECT COUNT(*) FROM pairs WHERE study_id = ? AND kind = 'compare'"),
            "checks": count("SELECT COUNT(*) FROM pairs WHERE study_id = ? AND kind = 'check'"),
            "pairs_per_rater": count("SELECT pairs_per_rater FROM studies WHERE id = ?"),
            "raters": count("SELECT COUNT(*) FROM raters WHERE study_id = ?"),
            "votes": count("SELECT COUNT(*) FROM votes WHERE study_id = ?"),
            "raters_per_pair": (min(raters_per_pair, default=0), max(raters_per_pair, default=0)),
            "pairs_repeated": len(repeated), "pairs_both_orders": sum(r["orders"] == 2 for r in repeated)}
