"""The blind pairwise-vote store (SQLite, WAL): studies, opaque image ids, rater tokens, one-time
signed screens and votes.

Identities never leave this module towards a rater: a screen carries only a random nonce, its
signature and two random image ids; which system sits left is kept server-side in `screens`.
Every submission is one `BEGIN IMMEDIATE` transaction that consumes its screen and writes both
answers, so a replay, a second tab or a crash never records a vote twice or half a vote.

Images are decoded and re-encoded from their pixels when the study is created (`read_image`,
`stimulus`): every image of a study in one `StimulusFormat` (one size, one frame count and timing, 8-bit
sRGB, uncompressed, so every stimulus has the same byte length; nothing else carried over) and stored in
the database, so a bad file is refused up front and what a rater sees cannot change or leak a file's
metadata, size or encoding later. Each rater is given their pairs on their first visit by `assign`: the
least-judged pairs first, each pair shown with A on the left to every second rater who gets it.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import random
import secrets
import sqlite3
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageCms, ImageOps, ImageSequence, UnidentifiedImageError

log = logging.getLogger(__name__)

QUESTIONS = {"quality": "Which image has better visual quality?",
             "text": "Which image better matches the text?"}
CHOICES = ("left", "right", "draw")
CHECK = "check"
COMPARE = "compare"
# columns added after the first release of the schema, added to older files when they are opened
ADDED_COLUMNS = [("studies", "pairs_per_rater", "INTEGER"), ("images", "data", "BLOB"),
                 ("images", "media_type", "TEXT"), ("studies", "stimulus", "TEXT")]
MEDIA_TYPE = "image/png"  # every stimulus: an uncompressed PNG, or APNG for clips
PAD_COLOUR = (128, 128, 128)  # fills the margin of a padded image of another aspect ratio
FITS = ("pad", "crop")
RESAMPLE, RESAMPLE_NAME = Image.Resampling.LANCZOS, "lanczos"
MIN_FRAME_MS = 20  # browsers play shorter GIF/APNG frame delays at 100 ms
SRGB = ImageCms.createProfile("sRGB")
ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}  # EXIF orientation -> the transpose that shows it upright

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
                 raters: int, pairs_per_rater: int | None = None, stimulus: dict | None = None) -> dict:
    """Write a study with its systems and pairs ({kind, prompt, prompt_key, system_a, system_b, path_a,
    path_b, image_a, image_b} where image_* = (bytes, media type) from `stimulus`); returns
    {'study_id', 'owner_secret', 'raters': [tokens]}. One transaction. `pairs_per_rater`: compare pairs
    each rater judges (None: all), besides every attention check; `stimulus`: the study's
    `StimulusFormat.metadata()`, kept with the study."""
    study_id, owner_secret = secrets.token_hex(8), secrets.token_urlsafe(24)
    tokens = [secrets.token_urlsafe(18) for _ in range(raters)]
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT INTO studies (id, name, owner_hash, sign_key, created, pairs_per_rater, stimulus) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (study_id, name, _hash_secret(owner_secret), secrets.token_hex(32), now, pairs_per_rater,
                      None if stimulus is None else json.dumps(stimulus, sort_keys=True)))
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
        frames, durations = read_image(Path(row["path"]))
        return stimulus(frames, durations, StimulusFormat.of_one(frames, durations)), MEDIA_TYPE
    return bytes(row["data"]), row["media_type"]


@dataclass(frozen=True)
class StimulusFormat:
    """How every image of one study is served (see reports.study): `width` x `height` 8-bit sRGB RGB,
    reached by `fit` ('pad': scaled to fit, centred on PAD_COLOUR; 'crop': scaled to cover, centre
    cropped) with the Lanczos filter; `frames` frames of `frame_ms` each, looping forever (1: a still);
    encoded as an uncompressed PNG (APNG for clips), so every stimulus of a study has `payload_bytes`."""
    width: int
    height: int
    fit: str = "pad"
    frames: int = 1
    frame_ms: int = 0

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"--fit {self.fit!r}: give one of {', '.join(FITS)}")
        if self.width < 1 or self.height < 1 or self.frames < 1:
            raise ValueError(f"stimulus size {self.width}x{self.height} with {self.frames} frames: give positive numbers")
        if self.frames > 1 and self.frame_ms < MIN_FRAME_MS:
            raise ValueError(f"--frame-ms {self.frame_ms}: browsers slow down frames shorter than {MIN_FRAME_MS} ms; "
                             f"give at least {MIN_FRAME_MS}")

    @classmethod
    def of_one(cls, frames: list[np.ndarray], durations: list[float]) -> StimulusFormat:
        """An image's own size, frame count and mean frame time (for images stored without a format)."""
        clip = len(frames) > 1
        return cls(frames[0].shape[1], frames[0].shape[0], frames=len(frames),
                   frame_ms=max(MIN_FRAME_MS, round(sum(durations) / len(frames))) if clip else 0)

    @property
    def payload_bytes(self) -> int:
        return len(encode_png([np.zeros((self.height, self.width, 3), np.uint8)] * self.frames, self.frame_ms))

    def metadata(self) -> dict:
        """What the study records about its stimuli (the `stimulus` column, the owner's page)."""
        return {"width": self.width, "height": self.height, "fit": self.fit, "filter": RESAMPLE_NAME,
                "pad_colour": list(PAD_COLOUR) if self.fit == "pad" else None, "colour": "8-bit sRGB RGB",
                "frames": self.frames, "frame_ms": self.frame_ms if self.frames > 1 else None,
                "loop": "forever" if self.frames > 1 else None,
                "encoding": "uncompressed APNG" if self.frames > 1 else "uncompressed PNG",
                "media_type": MEDIA_TYPE, "payload_bytes": self.payload_bytes}


def describe_stimulus(meta: dict) -> str:
    """One line about a study's stimulus format (StimulusFormat.metadata())."""
    fit = f"{meta['fit']} ({meta['filter']})"
    motion = (f"{meta['frames']} frames x {meta['frame_ms']} ms, looping" if meta["frames"] > 1 else "still")
    return (f"{meta['width']}x{meta['height']} {meta['colour']}, {fit}, {motion}, {meta['encoding']}, "
            f"{meta['payload_bytes']:,} bytes each")


def stimulus(frames: list[np.ndarray], durations: list[float], fmt: StimulusFormat) -> bytes:
    """One decoded image (read_image) as the study serves it: resampled in time to `fmt.frames`
    frames, resized to `fmt`'s size by its fit, encoded uncompressed. Built from pixel arrays alone, so
    no ICC profile, transparency, text, comment, EXIF or timing of the source file reaches the output,
    and its length is `fmt.payload_bytes` whatever the pixels."""
    picks = resample_frames(durations, fmt.frames)
    resized = {i: _resize(frames[i], fmt) for i in set(picks)}
    return encode_png([resized[i] for i in picks], fmt.frame_ms)


def resample_frames(durations: list[float], count: int) -> list[int]:
    """Which source frame fills each of `count` equal output slots: the frame on screen at the slot's
    middle when the source is stretched over the same total time (a still fills every slot)."""
    ends = np.cumsum(np.asarray(durations, dtype=np.float64))
    middles = (np.arange(count) + 0.5) / count * ends[-1]
    return [int(i) for i in np.minimum(np.searchsorted(ends, middles, side="right"), len(durations) - 1)]


def _resize(frame: np.ndarray, fmt: StimulusFormat) -> np.ndarray:
    size = (fmt.width, fmt.height)
    image = Image.fromarray(frame, "RGB")
    if image.size == size:
        return frame
    if fmt.fit == "pad":
        image = ImageOps.pad(image, size, method=RESAMPLE, color=PAD_COLOUR)
    else:
        image = ImageOps.fit(image, size, method=RESAMPLE)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def encode_png(frames: list[np.ndarray], frame_ms: int = 0) -> bytes:
    """RGB frames (H x W x 3 uint8, one size) as a PNG, or an APNG looping forever with `frame_ms` per
    frame: every frame whole, unfiltered and stored without compression, so the length depends only on
    the size and the frame count (PIL's encoders compress, and its APNG writer drops repeated frames
    and crops unchanged borders, all of which depend on the content)."""
    height, width, _ = frames[0].shape
    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    animated = len(frames) > 1
    if animated:
        out.append(_chunk(b"acTL", struct.pack(">II", len(frames), 0)))  # 0 plays: loop forever
    sequence = 0
    filter_none = np.zeros((height, 1), np.uint8)
    for index, frame in enumerate(frames):
        if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame {index} is {frame.shape} {frame.dtype}; every frame must be {height}x{width}x3 uint8")
        data = zlib.compress(np.concatenate([filter_none, frame.reshape(height, width * 3)], axis=1).tobytes(), 0)
        if animated:
            out.append(_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, frame_ms, 1000, 0, 0)))
            sequence += 1
        if index == 0:
            out.append(_chunk(b"IDAT", data))
        else:
            out.append(_chunk(b"fdAT", struct.pack(">I", sequence) + data))
            sequence += 1
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def read_image(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of an image file as 8-bit sRGB RGB pixels, and its frame durations in ms (a GIF's 0 or
    10 ms plays as 100 ms in browsers, and is read so). Conversion is faithful or refused:

    - 16-bit samples (mode I;16*, and mode I within 0..65535) are scaled by 255/65535 and rounded;
    - float samples (mode F) must be finite and within [0, 1]: scaled by 255 and rounded;
    - other 32-bit integers, NaN, infinities and floats outside [0, 1] raise ValueError naming the file;
    - transparency is composited on white, palette and greyscale expand to RGB, an embedded ICC profile
      is converted to sRGB (one that cannot be applied is refused), EXIF orientation is applied."""
    try:
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is empty (0 bytes); regenerate it or remove its line from samples.jsonl")
        frames, durations = [], []
        with Image.open(path) as image:
            icc = image.info.get("icc_profile")
            turn = ORIENTATION.get(image.getexif().get(0x0112))
            transforms: dict[str, ImageCms.ImageCmsTransform] = {}
            for frame in ImageSequence.Iterator(image):
                frame.load()
                pixels = _to_srgb(frame, path, icc, transforms)
                frames.append(np.asarray(pixels.transpose(turn) if turn is not None else pixels, dtype=np.uint8))
                duration = frame.info.get("duration", image.info.get("duration", 100)) or 100
                durations.append(float(duration) if float(duration) > 10 else 100.0)
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise ValueError(f"{path} is not a readable image ({reason}); regenerate it or remove its line from "
                         f"samples.jsonl") from e
    return frames, durations


def _to_srgb(frame: Image.Image, path: Path, icc: bytes | None, transforms: dict) -> Image.Image:
    """One decoded frame as an 8-bit sRGB RGB image (the rules of read_image)."""
    mode = frame.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(frame).astype(np.int64)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(f"{path} has {mode} integer pixels from {low} to {high}, which have no defined white; "
                             f"save it as 8- or 16-bit")
        grey = np.rint(values * (255 / 65535)).astype(np.uint8)
        key = frame.info.get("transparency")
        if isinstance(key, int):
            grey[values == key] = 255
        frame = Image.fromarray(grey)
    elif mode == "F":
        values = np.asarray(frame, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{path} has NaN or infinite float pixels; it cannot be shown faithfully; regenerate it "
                             f"or remove its line from samples.jsonl")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise ValueError(f"{path} has float pixels from {low:g} to {high:g}, outside [0, 1], so it cannot be "
                             f"shown faithfully; save it scaled to [0, 1] or as 8-bit")
        frame = Image.fromarray(np.rint(values * 255).astype(np.uint8))
    elif mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in frame.info:
        flat = Image.new("RGBA", frame.size, (255, 255, 255, 255))
        flat.alpha_composite(frame.convert("RGBA"))
        frame = flat.convert("RGB")
    try:
        if frame.mode not in ("RGB", "L", "CMYK"):
            frame = frame.convert("RGB")
        if not icc:
            return frame.convert("RGB")
        if frame.mode not in transforms:
            transforms[frame.mode] = ImageCms.buildTransform(
                ImageCms.ImageCmsProfile(io.BytesIO(icc)), SRGB, frame.mode, "RGB",
                renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
        return ImageCms.applyTransform(frame, transforms[frame.mode])
    except (ValueError, ImageCms.PyCMSError) as e:
        raise ValueError(f"{path}: its {mode} pixels cannot be converted to sRGB ({e}); save it as 8-bit RGB") from e


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
            "pairs_repeated": len(repeated), "pairs_both_orders": sum(r["orders"] == 2 for r in repeated),
            "stimulus": study_stimulus(conn, study_id)}


def study_stimulus(conn: sqlite3.Connection, study_id: str) -> dict | None:
    """The study's StimulusFormat.metadata() as recorded at creation (None for older studies)."""
    text = study_by_id(conn, study_id)["stimulus"]
    return None if text is None else json.loads(text)
