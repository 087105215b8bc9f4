"""The blind pairwise-vote store (SQLite, WAL): studies, opaque image ids, rater tokens, one-time
signed screens and votes.

Identities never leave this module towards a rater: a screen carries only a random nonce, its
signature and two random image ids; which system sits left is kept server-side in `screens`.
Every submission is one `BEGIN IMMEDIATE` transaction that consumes its screen and writes both
answers, so a replay, a second tab or a crash never records a vote twice or half a vote.
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
from functools import lru_cache
from pathlib import Path

import pandas as pd
from PIL import Image, ImageSequence

log = logging.getLogger(__name__)

QUESTIONS = {"quality": "Which image has better visual quality?",
             "text": "Which image better matches the text?"}
CHOICES = ("left", "right", "draw")
CHECK = "check"
COMPARE = "compare"

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, owner_hash TEXT NOT NULL,
    sign_key TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS systems (study_id TEXT NOT NULL REFERENCES studies(id), name TEXT NOT NULL,
    folder TEXT NOT NULL, PRIMARY KEY (study_id, name));
CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id),
    path TEXT NOT NULL);
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
    """A connection in autocommit mode (transactions are explicit), WAL, waiting on busy writers."""
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def init_db(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id() -> str:
    return secrets.token_hex(16)


# ---------------------------------------------------------------- creating


def insert_study(conn: sqlite3.Connection, name: str, systems: dict[str, str], pairs: list[dict],
                 raters: int) -> dict:
    """Write a study with its systems and pairs ({kind, prompt, prompt_key, system_a, system_b, path_a,
    path_b}); returns {'study_id', 'owner_secret', 'raters': [tokens]}. One transaction."""
    study_id, owner_secret = secrets.token_hex(8), secrets.token_urlsafe(24)
    tokens = [secrets.token_urlsafe(18) for _ in range(raters)]
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT INTO studies VALUES (?, ?, ?, ?, ?)",
                     (study_id, name, _hash_secret(owner_secret), secrets.token_hex(32), now))
        conn.executemany("INSERT INTO systems VALUES (?, ?, ?)", [(study_id, n, f) for n, f in systems.items()])
        for position, pair in enumerate(pairs):
            image_a, image_b = new_id(), new_id()
            conn.executemany("INSERT INTO images VALUES (?, ?, ?)",
                             [(image_a, study_id, pair["path_a"]), (image_b, study_id, pair["path_b"])])
            conn.execute("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (new_id(), study_id, position, pair["kind"], pair["prompt"], pair["prompt_key"],
                          pair["system_a"], pair["system_b"], image_a, image_b))
        conn.executemany("INSERT INTO raters VALUES (?, ?, ?, ?)",
                         [(t, study_id, f"rater-{i + 1:02d}", now) for i, t in enumerate(tokens)])
        conn.execute("COMMIT")
    except sqlite3.IntegrityError as e:
        conn.execute("ROLLBACK")
        raise ValueError(f"cannot create study '{name}': {e} (study names are unique; pick another --name)") from e
    log.info("created study %s (%s) with %d pairs and %d raters", name, study_id, len(pairs), raters)
    return {"study_id": study_id, "owner_secret": owner_secret, "raters": tokens}


def add_raters(conn: sqlite3.Connection, study_id: str, count: int) -> list[str]:
    tokens = [secrets.token_urlsafe(18) for _ in range(count)]
    existing = conn.execute("SELECT COUNT(*) FROM raters WHERE study_id = ?", (study_id,)).fetchone()[0]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO raters VALUES (?, ?, ?, ?)",
                     [(t, study_id, f"rater-{existing + i + 1:02d}", time.time()) for i, t in enumerate(tokens)])
    conn.execute("COMMIT")
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
    order = _rater_order(conn, rater["study_id"], token)
    voted = {r[0] for r in conn.execute("SELECT DISTINCT pair_id FROM votes WHERE rater = ?", (token,))}
    if len(voted) >= len(order):
        return None
    open_screen = conn.execute(
        "SELECT nonce, pair_id, a_on_left FROM screens WHERE rater = ? AND used IS NULL AND pair_id NOT IN "
        "(SELECT pair_id FROM votes WHERE rater = ?) ORDER BY issued LIMIT 1", (token, token)).fetchone()
    if open_screen is None:
        pair_id = next(p for p in order if p not in voted)
        nonce, a_on_left = secrets.token_urlsafe(18), secrets.randbelow(2)
        conn.execute("INSERT INTO screens VALUES (?, ?, ?, ?, ?, NULL)", (nonce, token, pair_id, a_on_left, time.time()))
    else:
        nonce, pair_id, a_on_left = open_screen
    pair = conn.execute("SELECT prompt, image_a, image_b FROM pairs WHERE id = ?", (pair_id,)).fetchone()
    left, right = (pair["image_a"], pair["image_b"]) if a_on_left else (pair["image_b"], pair["image_a"])
    return Screen(nonce=nonce, signature=sign(rater["sign_key"], token, nonce), prompt=pair["prompt"],
                  left_image=left, right_image=right, done=len(voted), total=len(order))


def progress(conn: sqlite3.Connection, token: str) -> tuple[int, int]:
    rater = rater_study(conn, token)
    done = conn.execute("SELECT COUNT(DISTINCT pair_id) FROM votes WHERE rater = ?", (token,)).fetchone()[0]
    total = conn.execute("SELECT COUNT(*) FROM pairs WHERE study_id = ?", (rater["study_id"],)).fetchone()[0]
    return done, total


def _rater_order(conn: sqlite3.Connection, study_id: str, token: str) -> list[str]:
    """Every pair of the study in an order of the rater's own (fixed by their token), checks mixed in."""
    pairs = [r[0] for r in conn.execute("SELECT id FROM pairs WHERE study_id = ? ORDER BY position", (study_id,))]
    random.Random(token).shuffle(pairs)
    return pairs


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


def image_path(conn: sqlite3.Connection, image_id: str) -> Path:
    row = conn.execute("SELECT path FROM images WHERE id = ?", (image_id,)).fetchone()
    if row is None:
        raise VoteRejected("No such image.", 404)
    return Path(row["path"])


def clean_image(path: Path) -> tuple[bytes, str]:
    """The image re-encoded without any metadata (no text chunks, EXIF or file name): (bytes, media type)."""
    return _clean_image(str(path), path.stat().st_mtime)


@lru_cache(maxsize=512)
def _clean_image(path: str, mtime: float) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    with Image.open(path) as image:
        if getattr(image, "is_animated", False):
            frames = [f.convert("RGB") for f in ImageSequence.Iterator(image)]
            duration = image.info.get("duration", 100)
            frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0)
            return buffer.getvalue(), "image/gif"
        image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


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
    count = lambda sql: conn.execute(sql, (study_id,)).fetchone()[0]  # noqa: E731
    return {"systems": [r[0] for r in conn.execute("SELECT name FROM systems WHERE study_id = ? ORDER BY name", (study_id,))],
            "pairs": count("SELECT COUNT(*) FROM pairs WHERE study_id = ? AND kind = 'compare'"),
            "checks": count("SELECT COUNT(*) FROM pairs WHERE study_id = ? AND kind = 'check'"),
            "raters": count("SELECT COUNT(*) FROM raters WHERE study_id = ?"),
            "votes": count("SELECT COUNT(*) FROM votes WHERE study_id = ?")}
