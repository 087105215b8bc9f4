"""CompShapes: the embedded default's synthetic compositional data set.

Images of one to four flat shapes on a plain light-grey background, with captions in the six
T2I-CompBench categories and GenEval's counting, small enough (32x32 px) for a tiny diffusion model to learn on a CPU in
minutes, and rendered from a known scene so that `eval.judge` can score generations exactly.

Vocabulary (chosen to stay distinct at 32 px, even under blur and noise):
- colours: red, green, blue, yellow, purple (saturated, distinct in chromaticity);
- shapes (the nouns): circle, square, triangle (apex up), diamond (a square on its corner); all
  four fill a 2r x 2r box. Four, not three, so that word order matters: with three shapes and one
  held-out shape per colour, 86% of the training colour prompts could be drawn right from the bag
  of words alone (their colour-swapped reading, "a blue circle and a red square" for "a red circle
  and a blue square", shows a held-out pair, which training never draws); with four, 65%;
- textures: solid, striped (horizontal stripes), dotted. A pattern is drawn in a darker shade (0.4x)
  of the object's own colour, never in the background colour, so a textured object stays one
  connected blob of one chromaticity, with a pattern period of 1/8 of the image (4 px at 32 px);
- sizes: r = 0.19 (+-8% jitter; r = half the side of the object's box: ~12 px across at 32 px,
  ~7.6 px at the embedded default's 20 px), and 0.11 for the smaller object of a "bigger than" /
  "smaller than" prompt. As big as two objects and a spatial relation allow, because shape needs
  pixels: at r = 0.16 (6.4 px at 20 px) circles and squares differ by a pixel per corner, the
  embedded default's tiny model drew them as the same blob and bound 0.31 of training colour
  prompts; at 0.19 it bound 0.84 (three shapes then; README). Textures need the pixels too.
  Objects in clips are r = 0.16: two of them travelling 0.3 of the image need the room.

Categories and grammar (`parse_prompt` inverts `caption`):
- color:       "a red circle and a blue square"         two different colours (shapes may repeat)
- shape:       "a red circle and a red triangle"        one colour, two different shapes, so only
               shape tells the objects apart
- texture:     "a striped circle and a dotted square"   two different textures; colour unmentioned
- spatial:     "a red circle on the left of a blue square"; relations are T2I-CompBench's words:
               on the left of / on the right of / on the top of / on the bottom of / next to
- non_spatial: "a red circle bigger than a blue square" (or "smaller than"). T2I-CompBench's
               non-spatial prompts are actions ("a man holding a cup"), which flat shapes cannot
               show; relative size is the honest non-spatial relation they can.
- complex:     texture + colour binding, alone ("a striped red circle and a dotted blue square") or
               with a spatial relation ("a striped red circle on the left of a dotted blue square").
- counting:    "a red circle", "three circles", "four blue triangles": one to four objects of one
               shape, the colour optional (unmentioned: drawn per object), as GenEval's counting prompts;
               three or four objects are r = 0.16 to fit. Image training draws it beside the six.
- motion (video only): "a red circle moving right", "a red circle moving up and a blue square
               moving left"; constant speed, 0.3 of the image over the clip.
Unmentioned attributes are random (texture defaults to solid, size to normal); positions are random,
objects' boxes never overlap (gap >= 0.08 of the image) and spatial captions are true with margin
(|dx| >= 2 |dy| for left/right).

Splits (compositional generalisation): the test split holds out 5 of the 20 colour-shape pairs
(red triangle, green circle, blue square, yellow diamond, purple circle: one shape per colour) and
2 of the 12 texture-shape pairs (striped circle, dotted triangle), and 4 of the 16 count-shape pairs
(three circles, three diamonds, four squares, four triangles; never a count of two, which colour and
texture prompts show). Every colour, shape, texture and count still occurs in training. A test prompt contains at least one held-out pair; a training prompt none,
and a training *image* never shows one either (unmentioned attributes are drawn among allowed pairs).
"""
from __future__ import annotations

import itertools
import logging
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from gentron.io import atomic_write_text

log = logging.getLogger(__name__)

# --- vocabulary -------------------------------------------------------------------------------
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (160, 40, 200),
}
SHAPES = ("circle", "square", "triangle", "diamond")
TEXTURES = ("solid", "striped", "dotted")
BACKGROUND = (235, 235, 235)
DARK_SHADE = 0.4  # pattern colour = DARK_SHADE * object colour (same chromaticity, much darker)
PATTERN_PERIOD = 1 / 8  # stripes and dot grid, in image units (4 px at 32 px)
DOT_RADIUS = 0.03  # ~18% of a dotted object is dark
# Bump when the same data config draws different images (caches of encoded data carry it). 2: r = 0.19;
# 3: diamonds; 4: counting captions.
VERSION = 4
SIZE_NORMAL, SIZE_SMALL = 0.19, 0.11
SIZE_MOVING = 0.16  # two objects travelling 0.3 of the image each need room not to meet
SIZE_COUNT = 0.16  # three or four objects of a count need room too (one or two are SIZE_NORMAL)
SIZE_JITTER = 0.08
GAP = 0.08  # minimum gap between objects' boxes, so connected components never merge
MARGIN = 0.02  # minimum gap between an object's box and the image border

SPATIAL_RELATIONS = ("on the left of", "on the right of", "on the top of", "on the bottom of", "next to")
SIZE_RELATIONS = ("bigger than", "smaller than")
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MOTION_DISTANCE = 0.3  # how far an object travels over a whole clip, in image units
# Rejection sampling rarely finds no layout (two moving objects at the largest jitter, paths crossing:
# 4 of 20,000 clips of seed 0): then both objects shrink by this factor and placement draws again.
PLACEMENT_ROUNDS, SHRINK_ON_FAILURE = 4, 0.9


class PlacementError(RuntimeError):
    """No layout found for a scene's objects."""

IMAGE_CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")  # T2I-CompBench's six
COUNTING = "counting"  # GenEval's object counts ("three blue triangles"); eval.geneval.compshapes scores them
TRAIN_IMAGE_CATEGORIES = IMAGE_CATEGORIES + (COUNTING,)  # what image training draws by default
VIDEO_CATEGORIES = ("motion",)
CATEGORIES = TRAIN_IMAGE_CATEGORIES + VIDEO_CATEGORIES
SPLITS = ("train", "test")

HELD_OUT_COLOR_SHAPE = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "square"),
                                  ("yellow", "diamond"), ("purple", "circle")})
HELD_OUT_TEXTURE_SHAPE = frozenset({("striped", "circle"), ("dotted", "triangle")})
# Counts of 3 and 4 only: two objects of one shape also appear in colour and texture prompts.
HELD_OUT_COUNT_SHAPE = frozenset({(3, "circle"), (3, "diamond"), (4, "square"), (4, "triangle")})
NUMBERS = {2: "two", 3: "three", 4: "four"}  # counting captions: "a red circle" (1), "three circles", ...


# --- scene description --------------------------------------------------------------------------
@dataclass(frozen=True)
class Phrase:
    """One noun phrase of a prompt: what the prompt says about one object (None = unmentioned)."""
    shape: str
    color: str | None = None
    texture: str | None = None
    motion: str | None = None  # a key of DIRECTIONS

    def text(self) -> str:
        words = ["a", self.texture, self.color, self.shape]
        if self.motion:
            words += ["moving", self.motion]
        return " ".join(w for w in words if w)


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt: one or two phrases, the relation between them (None = "and"), its category."""
    phrases: tuple[Phrase, ...]
    relation: str | None
    category: str

    @property
    def caption(self) -> str:
        if self.category == COUNTING and len(self.phrases) > 1:  # n copies of one phrase
            first = self.phrases[0]
            return " ".join(w for w in (NUMBERS[len(self.phrases)], first.color, first.shape + "s") if w)
        joiner = f" {self.relation} " if self.relation else " and "
        return joiner.join(p.text() for p in self.phrases)


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object. Coordinates are in image units: (0, 0) top-left, (1, 1) bottom-right;
    `size` is half the side of its box; `velocity` is image units per frame (video)."""
    shape: str
    color: str
    texture: str = "solid"
    size: float = SIZE_NORMAL
    center: tuple[float, float] = (0.5, 0.5)
    velocity: tuple[float, float] = (0.0, 0.0)

    def at_frame(self, frame: int) -> ShapeObject:
        x, y = self.center
        vx, vy = self.velocity
        return replace(self, center=(x + vx * frame, y + vy * frame))


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    relation: str | None
    caption: str
    category: str
    num_frames: int = 1  # > 1 for a clip


# --- grammar ------------------------------------------------------------------------------------
_WORD = {"color": "|".join(COLORS), "shape": "|".join(SHAPES), "texture": "|".join(TEXTURES),
         "dir": "|".join(DIRECTIONS)}
_PHRASE = (rf"a (?:(?P<texture{{i}}>{_WORD['texture']}) )?(?:(?P<color{{i}}>{_WORD['color']}) )?"
           rf"(?P<shape{{i}}>{_WORD['shape']})(?: moving (?P<motion{{i}}>{_WORD['dir']}))?")
_RELATION = "|".join(re.escape(r) for r in ("and",) + SPATIAL_RELATIONS + SIZE_RELATIONS)
_PROMPT_RE = re.compile(rf"{_PHRASE.format(i=0)}(?: (?P<relation>{_RELATION}) {_PHRASE.format(i=1)})?")
_COUNT_RE = re.compile(rf"(?P<number>{'|'.join(NUMBERS.values())}) (?:(?P<color>{_WORD['color']}) )?"
                       rf"(?P<shape>{_WORD['shape']})s")


def parse_prompt(prompt: str) -> PromptSpec:
    """Parse a CompShapes caption back to its spec; ValueError names the grammar if it is not one."""
    text = " ".join(prompt.strip().lower().rstrip(".").split())
    if counted := _COUNT_RE.fullmatch(text):
        count = next(n for n, word in NUMBERS.items() if word == counted["number"])
        return PromptSpec((Phrase(counted["shape"], counted["color"]),) * count, None, COUNTING)
    match = _PROMPT_RE.fullmatch(text)
    if not match:
        relations = ", ".join(SPATIAL_RELATIONS + SIZE_RELATIONS)
        raise ValueError(
            f"not a CompShapes prompt: {prompt!r}. CompShapes prompts are 'a [texture] [colour] shape "
            f"[moving direction]', optionally followed by 'and' or a relation ({relations}) and a second "
            f"such phrase, or a count: 'two|three|four [colour] shapes'; colours {list(COLORS)}, shapes "
            f"{list(SHAPES)}, textures {list(TEXTURES)}")
    groups = match.groupdict()
    phrases = tuple(Phrase(shape=groups[f"shape{i}"], color=groups[f"color{i}"], texture=groups[f"texture{i}"],
                           motion=groups[f"motion{i}"]) for i in (0, 1) if groups[f"shape{i}"])
    relation = groups["relation"] if groups["relation"] not in (None, "and") else None
    return PromptSpec(phrases, relation, _category_of(phrases, relation, prompt))


def _category_of(phrases: tuple[Phrase, ...], relation: str | None, prompt: str) -> str:
    if any(p.motion for p in phrases):
        if not all(p.motion for p in phrases) or relation:
            raise ValueError(f"{prompt!r}: a motion prompt gives every object a direction and joins them with 'and'")
        return "motion"
    if len(phrases) == 1 and not phrases[0].texture and not relation:
        return COUNTING  # "a [colour] shape": a count of one
    if len(phrases) != 2:
        raise ValueError(f"{prompt!r}: an image prompt names one object with at most a colour, or two objects")
    a, b = phrases
    textured, colored = a.texture and b.texture, a.color and b.color
    if any(p.texture for p in phrases) and not textured or any(p.color for p in phrases) and not colored:
        raise ValueError(f"{prompt!r}: both objects must name the same kinds of attribute")
    if textured and colored and relation not in SIZE_RELATIONS:
        return "complex"
    if textured and not colored and relation is None and a.texture != b.texture:
        return "texture"
    if colored and not textured:
        if relation in SPATIAL_RELATIONS:
            return "spatial"
        if relation in SIZE_RELATIONS:
            return "non_spatial"
        if a.color != b.color:
            return "color"
        if a.shape != b.shape:
            return "shape"
    raise ValueError(f"{prompt!r} is in CompShapes' vocabulary but in none of its categories "
                     f"({', '.join(CATEGORIES)}); see gentron/data/compshapes.py for the grammar")


# --- the finite prompt sets ---------------------------------------------------------------------
def _held_out(phrase: Phrase) -> bool:
    return ((phrase.color, phrase.shape) in HELD_OUT_COLOR_SHAPE
            or (phrase.texture, phrase.shape) in HELD_OUT_TEXTURE_SHAPE)


def _held_out_spec(phrases: tuple[Phrase, ...], category: str) -> bool:
    """A held-out pair in a phrase, or a counting prompt's held-out (count, shape)."""
    return (any(map(_held_out, phrases))
            or category == COUNTING and (len(phrases), phrases[0].shape) in HELD_OUT_COUNT_SHAPE)


def _specs(category: str):
    objects = list(itertools.product(COLORS, SHAPES))
    pairs = [(a, b) for a, b in itertools.permutations(objects, 2) if a[0] != b[0] and a[1] != b[1]]
    if category == "color":
        for (c1, s1), (c2, s2) in itertools.product(objects, repeat=2):
            if c1 != c2:
                yield (Phrase(s1, c1), Phrase(s2, c2)), None
    elif category == "shape":
        for c, (s1, s2) in itertools.product(COLORS, itertools.permutations(SHAPES, 2)):
            yield (Phrase(s1, c), Phrase(s2, c)), None
    elif category == "texture":
        for (t1, t2), s1, s2 in itertools.product(itertools.permutations(TEXTURES, 2), SHAPES, SHAPES):
            yield (Phrase(s1, texture=t1), Phrase(s2, texture=t2)), None
    elif category in ("spatial", "non_spatial"):
        relations = SPATIAL_RELATIONS if category == "spatial" else SIZE_RELATIONS
        for ((c1, s1), (c2, s2)), rel in itertools.product(pairs, relations):
            yield (Phrase(s1, c1), Phrase(s2, c2)), rel
    elif category == "complex":
        for ((c1, s1), (c2, s2)), (t1, t2), rel in itertools.product(
                pairs, itertools.permutations(TEXTURES, 2), (None,) + SPATIAL_RELATIONS[:4]):
            yield (Phrase(s1, c1, t1), Phrase(s2, c2, t2)), rel
    elif category == COUNTING:
        for count, shape, color in itertools.product(range(1, 5), SHAPES, (None, *COLORS)):
            yield (Phrase(shape, color),) * count, None
    elif category == "motion":
        for (c, s), d in itertools.product(objects, DIRECTIONS):
            yield (Phrase(s, c, motion=d),), None
        for ((c1, s1), (c2, s2)), d1, d2 in itertools.product(pairs, DIRECTIONS, DIRECTIONS):
            yield (Phrase(s1, c1, motion=d1), Phrase(s2, c2, motion=d2)), None
    else:
        raise ValueError(f"unknown CompShapes category {category!r}; choose from {CATEGORIES}")


_PROMPT_CACHE: dict[tuple[str, str], tuple[str, ...]] = {}


def prompts(category: str, split: str) -> tuple[str, ...]:
    """All prompts of one category in one split, in a fixed (generation) order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    key = (category, split)
    if key not in _PROMPT_CACHE:
        want_test = split == "test"
        _PROMPT_CACHE[key] = tuple(PromptSpec(phrases, rel, category).caption for phrases, rel in _specs(category)
                                   if _held_out_spec(phrases, category) == want_test)
    return _PROMPT_CACHE[key]


def all_prompts(split: str, categories=CATEGORIES) -> list[str]:
    """Every prompt the split can show (for precomputing text embeddings), sorted."""
    return sorted({p for c in categories for p in prompts(c, split)})


def test_prompts(category: str, n: int | None = None, split: str = "test") -> list[str]:
    """A fixed, shuffled selection of n held-out prompts of a category (all of them if n is None);
    split="train" selects among the prompts training may show instead (every pair in them seen)."""
    pool = list(prompts(category, split))
    random.Random(f"compshapes-{split}-{category}").shuffle(pool)
    if n is not None and n > len(pool):
        log.warning("asked for %d %s %s prompts; the category has %d", n, category, split, len(pool))
    return pool[:n]


def seen_prompts(category: str, n: int | None = None) -> list[str]:
    """A fixed, shuffled selection of n prompts of the training split: no held-out pair in them."""
    return test_prompts(category, n, split="train")


def write_prompt_files(out_dir: str | Path, split: str = "test", categories=IMAGE_CATEGORIES,
                       n: int | None = None) -> dict[str, Path]:
    """T2I-CompBench's layout: one file per category (`color_val.txt` for test, `color_train.txt` for
    train), one prompt per line, so the same evaluation code reads CompShapes and the real benchmark."""
    suffix = "val" if split == "test" else "train"
    paths = {}
    for category in categories:
        lines = test_prompts(category, n) if split == "test" else list(prompts(category, split))[:n]
        paths[category] = atomic_write_text(Path(out_dir) / f"{category}_{suffix}.txt", "\n".join(lines) + "\n")
    return paths


# --- scene layout -------------------------------------------------------------------------------
def _fill_unmentioned(phrase: Phrase, rng: np.random.Generator, split: str, size: float) -> ShapeObject:
    """Draw what the prompt leaves open; in training never a held-out pair, even unmentioned."""
    colors = [phrase.color] if phrase.color else list(COLORS)
    textures = [phrase.texture] if phrase.texture else ["solid"]
    options = [(c, t) for c in colors for t in textures
               if split == "test" or not _held_out(Phrase(phrase.shape, c, t))]
    color, texture = options[rng.integers(len(options))]
    return ShapeObject(phrase.shape, color, texture, size)


def _jitter(size: float, rng: np.random.Generator) -> float:
    return size * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))


def _boxes_apart(a: ShapeObject, b: ShapeObject) -> bool:
    (ax, ay), (bx, by) = a.center, b.center
    reach = a.size + b.size + GAP
    return abs(ax - bx) >= reach or abs(ay - by) >= reach


def _inside(obj: ShapeObject) -> bool:
    x, y = obj.center
    lo, hi = obj.size + MARGIN, 1 - obj.size - MARGIN
    return lo <= x <= hi and lo <= y <= hi


def _relation_holds(relation: str | None, a: ShapeObject, b: ShapeObject) -> bool:
    """True with margin, so that the judge's rule (sign of dx and |dx| > |dy|) holds after noise."""
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    if relation in ("on the left of", "on the right of"):
        return (dx > 0) == (relation == "on the left of") and abs(dx) >= 2 * abs(dy)
    if relation in ("on the top of", "on the bottom of"):
        return (dy > 0) == (relation == "on the top of") and abs(dy) >= 2 * abs(dx)
    if relation == "next to":  # side by side, close: the gap between boxes is under 0.1
        return min(abs(dx), abs(dy)) <= 0.1 and max(abs(dx), abs(dy)) <= a.size + b.size + GAP + 0.1
    return True


def _propose(objects: list[ShapeObject], relation: str | None, rng: np.random.Generator,
             num_frames: int) -> list[ShapeObject]:
    """Uniform centres whose whole path stays inside, ordered along the relation's axis, so that
    rejection rarely has to retry."""
    centres = []
    for obj in objects:
        lo, hi = obj.size + MARGIN, 1 - obj.size - MARGIN
        travel = [v * (num_frames - 1) for v in obj.velocity]
        centres.append([float(rng.uniform(lo - min(0.0, d), hi - max(0.0, d))) for d in travel])
    if len(objects) == 2 and relation in SPATIAL_RELATIONS:
        axis = 1 if relation in ("on the top of", "on the bottom of") else 0
        if relation == "next to":
            axis = int(rng.integers(2))
            first_smaller = bool(rng.random() < 0.5)
        else:
            first_smaller = relation in ("on the left of", "on the top of")
        a, b = centres
        if (a[axis] < b[axis]) != first_smaller:
            a[axis], b[axis] = b[axis], a[axis]
        other = 1 - axis  # pull the other coordinate close, as the relation wants
        b[other] = a[other] + float(rng.uniform(-0.4, 0.4)) * abs(b[axis] - a[axis])
    return [replace(o, center=tuple(c)) for o, c in zip(objects, centres)]


def _place(objects: list[ShapeObject], relation: str | None, rng: np.random.Generator,
           num_frames: int = 1) -> tuple[ShapeObject, ...]:
    """Rejection-sample centres: inside the image and apart at every frame, relation true."""
    if len(objects) > 2:
        return _place_many(objects, rng)
    for _ in range(10_000):
        placed = _propose(objects, relation, rng, num_frames)
        frames = [[o.at_frame(f) for o in placed] for f in range(num_frames)]
        if (all(_inside(o) for frame in frames for o in frame)
                and all(_boxes_apart(a, b) for frame in frames for a, b in itertools.combinations(frame, 2))
                and (len(placed) != 2 or _relation_holds(relation, *placed))):
            return tuple(placed)
    raise PlacementError(f"could not place {objects} with relation {relation!r}; sizes are too big")


def _place_many(objects: list[ShapeObject], rng: np.random.Generator) -> tuple[ShapeObject, ...]:
    """Three or four still objects (a count): one after another, each centre uniform among those apart
    from the objects placed before it (a dead end starts over). Whole-scene rejection would need
    thousands of draws for four."""
    for _ in range(1_000):
        placed = []
        for obj in objects:
            lo, hi = obj.size + MARGIN, 1 - obj.size - MARGIN
            for _ in range(100):
                candidate = replace(obj, center=(float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))))
                if all(_boxes_apart(candidate, other) for other in placed):
                    placed.append(candidate)
                    break
            else:
                break
        if len(placed) == len(objects):
            return tuple(placed)
    raise PlacementError(f"could not place {len(objects)} objects of size {objects[0].size:.3f}; sizes are too big")


def scene_for_prompt(prompt: str, rng: np.random.Generator | int, split: str = "test",
                     num_frames: int = 1) -> Scene:
    """A random scene that the prompt describes truly (deterministic given the seed)."""
    rng = np.random.default_rng(rng)
    spec = parse_prompt(prompt)
    size = SIZE_MOVING if spec.category == "motion" else SIZE_COUNT if len(spec.phrases) > 2 else SIZE_NORMAL
    objects = [_fill_unmentioned(p, rng, split, size) for p in spec.phrases]
    if spec.relation in SIZE_RELATIONS:
        small = 1 if spec.relation == "bigger than" else 0
        objects[small] = replace(objects[small], size=SIZE_SMALL)
    objects = [replace(o, size=_jitter(o.size, rng)) for o in objects]
    if spec.category == "motion":
        if num_frames < 2:
            raise ValueError(f"{prompt!r} is a motion prompt: render it as a clip (num_frames >= 2)")
        step = MOTION_DISTANCE / (num_frames - 1)
        objects = [replace(o, velocity=(DIRECTIONS[p.motion][0] * step, DIRECTIONS[p.motion][1] * step))
                   for o, p in zip(objects, spec.phrases)]
    else:
        num_frames = 1 if num_frames < 2 else num_frames  # a still scene may be shown as a static clip
    for attempt in range(PLACEMENT_ROUNDS):
        try:
            placed = _place(objects, spec.relation, rng, num_frames)
            break
        except PlacementError:
            if attempt == PLACEMENT_ROUNDS - 1:
                raise
            # two large objects crossing paths can leave no room: shrink both and draw again
            objects = [replace(o, size=o.size * SHRINK_ON_FAILURE) for o in objects]
    return Scene(placed, spec.relation, spec.caption, spec.category, num_frames)


# --- rendering ----------------------------------------------------------------------------------
def coverage(obj: ShapeObject, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of the object on a grid of sample points (image units)."""
    (cx, cy), r = obj.center, obj.size
    dx, dy = xs - cx, ys - cy
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if obj.shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if obj.shape == "diamond":  # a square standing on a corner
        return np.abs(dx) + np.abs(dy) <= r
    # triangle, apex up: at height dy (from -r at the apex to +r at the base) the half-width grows to r
    return (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2)


def _pattern(obj: ShapeObject, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of the darker pattern, anchored at the object's centre so it moves with it."""
    dx, dy = xs - obj.center[0], ys - obj.center[1]
    if obj.texture == "striped":
        return np.mod(dy / PATTERN_PERIOD + 0.25, 1.0) >= 0.5
    if obj.texture == "dotted":
        gx = np.mod(dx / PATTERN_PERIOD + 0.5, 1.0) - 0.5
        gy = np.mod(dy / PATTERN_PERIOD + 0.5, 1.0) - 0.5
        return (gx * gx + gy * gy) * PATTERN_PERIOD ** 2 <= DOT_RADIUS ** 2
    return np.zeros(np.broadcast(xs, ys).shape, dtype=bool)


def render(scene: Scene, resolution: int = 32, frame: int = 0) -> np.ndarray:
    """Draw one frame of a scene: uint8 (resolution, resolution, 3). Anti-aliased by supersampling
    to >= 128 samples per side and box-averaging, so 32 px renders have soft, honest edges."""
    supersample = max(1, -(-128 // resolution))
    n = resolution * supersample
    axis = (np.arange(n, dtype=np.float32) + 0.5) / n
    xs, ys = axis[None, :], axis[:, None]
    canvas = np.empty((n, n, 3), dtype=np.float32)
    canvas[:] = BACKGROUND
    for obj in scene.objects:
        obj = obj.at_frame(frame)
        inside = coverage(obj, xs, ys)
        colour = np.asarray(COLORS[obj.color], dtype=np.float32)
        dark = inside & _pattern(obj, xs, ys)
        canvas[inside] = colour
        canvas[dark] = colour * DARK_SHADE
    image = canvas.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_clip(scene: Scene, resolution: int = 32) -> np.ndarray:
    """All frames of a scene: uint8 (T, resolution, resolution, 3)."""
    return np.stack([render(scene, resolution, f) for f in range(scene.num_frames)])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)


def as_pseudo_video(image: torch.Tensor, num_frames: int) -> torch.Tensor:
    """An image (C, H, W) repeated as a static clip (T, C, H, W), for joint image-video training."""
    return image.unsqueeze(0).expand(num_frames, *image.shape).contiguous()


# --- the data set ------------------------------------------------------------------------------
@dataclass
class CompShapes(torch.utils.data.Dataset):
    """`num_samples` scenes drawn deterministically from (seed, split, index): a category uniformly
    among `categories`, a prompt uniformly among that category's prompts of the split, then a layout.
    Items: {"image": (3, H, W) in [-1, 1], "caption", "category", "scene_id"}; with `video=True`
    (categories default to motion) {"video": (T, 3, H, W), ...} instead of "image"."""
    split: str = "train"
    resolution: int = 32
    num_samples: int = 20_000
    seed: int = 0
    categories: tuple[str, ...] | None = None
    video: bool = False
    num_frames: int = 8
    _prompts: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.categories is None:
            self.categories = VIDEO_CATEGORIES if self.video else TRAIN_IMAGE_CATEGORIES
        self.categories = tuple(self.categories)
        unknown = set(self.categories) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown CompShapes categories {sorted(unknown)}; choose from {CATEGORIES}")
        if not self.video and "motion" in self.categories:
            raise ValueError("the motion category needs clips: build CompShapes(video=True, ...)")
        self._prompts = {c: prompts(c, self.split) for c in self.categories}

    def __len__(self) -> int:
        return self.num_samples

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        category = self.categories[rng.integers(len(self.categories))]
        pool = self._prompts[category]
        prompt = pool[rng.integers(len(pool))]
        return scene_for_prompt(prompt, rng, self.split, self.num_frames if self.video else 1)

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        item = {"caption": scene.caption, "category": scene.category, "scene_id": index}
        if self.video:
            item["video"] = to_tensor(render_clip(scene, self.resolution))
        else:
            item["image"] = to_tensor(render(scene, self.resolution))
        return item


def from_config(data: dict, split: str = "train") -> CompShapes:
    """Build the data set from a cell config's `data` section (DESIGN.md)."""
    if data.get("kind", "compshapes") != "compshapes":
        raise ValueError(f"from_config builds CompShapes, not {data.get('kind')!r}")
    return CompShapes(split=split, resolution=int(data.get("resolution", 32)),
                      num_samples=int(data.get("num_train", 20_000)), seed=int(data.get("seed", 0)),
                      categories=data.get("categories"), video=bool(data.get("video", False)),
                      num_frames=int(data.get("num_frames", 8)))
