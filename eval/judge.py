"""The CompShapes judge: scores generated images (and clips) of CompShapes prompts exactly.

T2I-CompBench asks a VQA model, a detector and CLIP whether an image shows its prompt; CompShapes
images are flat shapes on a known background, so the judge can measure the same things directly:

1. Parse the prompt back to its spec (`gentron.data.compshapes.parse_prompt`; a prompt outside the
   grammar is an error, not a zero).
2. Find objects: pixels farther than FG_DISTANCE from the background colour are foreground;
   morphological opening (at >= 48 px) and hole filling clean the mask; connected components whose
   area is 0.4%-30% of the image and whose pixels agree on one palette colour are objects. Noise,
   blank images and image-filling blobs therefore yield no objects.
3. Read each object: colour = nearest palette colour in chromaticity (RGB direction), because the
   texture patterns are darker shades of the same colour and blur mixes the two; texture = how
   dark the object's inner pixels are relative to its palette colour (solid ~0, dotted ~0.18,
   striped ~0.5), with striped also needing a row-wise stripe pattern; shape = the ideal circle,
   square, triangle or diamond (of the object's area, on its centroid) that overlaps the mask best,
   circle against diamond (blur makes them alike) decided by whether the mass lies along the axes.
   Position = box centre (as the official detector rule uses boxes), size = the box's longer side.
4. Bind prompt phrases to objects: the injective assignment of phrases to objects that scores best
   (as a VQA "is there a red circle?" is existential). Extra objects are not penalised.

Scores per image, for its category, binary as the headline and `<category>_soft` alongside:
- color / shape / texture: 1 if every phrase's mentioned attributes (shape + colour/texture) are all
  found on one object each; soft = product over phrases of the fraction of its attributes matched
  (BLIP-VQA's product over noun phrases). `color_present` (ours, a diagnostic, no T2I-CompBench
  counterpart): 1 if every prompted colour is on some object, shapes ignored: it separates
  attribute leakage (both objects in one colour) from shapes drawn badly.
- spatial: both phrases bound and the official rule holding on their box centres, dx = x2 - x1,
  dy = y2 - y1 (y down): "left of" dx > 0 and |dx| > |dy| (right: dx < 0; top: dy > 0; bottom: dy < 0,
  with |dy| > |dx|); "next to" |dx| < 0.3125 or |dy| < 0.3125 (the official 150 px of a 480 px
  image). Soft = 0.25 * bound1 + 0.25 * bound2 + position / 2, zeroed below 0.5, as the official.
- non_spatial: both bound and the box-side ratio >= SIZE_RATIO in the stated direction; soft as
  spatial.
- complex: mean of the parts that apply (binding of colour + texture + shape; the spatial relation if
  any), as T2I-CompBench's 3-in-1; `complex_all` is 1 only if every part holds.
- counting ("three blue circles"): 1 if exactly that many objects have the shape (and the colour, if
  named); GenEval's rules on these detections are eval.geneval.compshapes.
- motion (clips): each phrase bound in every frame (consistency) and each object's box centre moving
  at least MIN_TRAVEL along the stated direction, more than across it, from its first to its last
  bound frame; soft = mean(consistency, fraction of directions right). Alongside, eval.motion's
  exact motion metrics, each with its chance level (motion_direction, motion_reversed,
  motion_speed, motion_identity and its colour/shape/size parts, motion_flicker;
  PROTOCOL["motion_chance"]).

Validation (tests/test_judge.py): 1.0 on ground-truth renders of held-out test prompts of every
category at 32, 64 and 256 px, and >= 0.99 at 32 px with Gaussian blur (sigma 0.6 px) and noise
(sigma 8/255) as a diffusion model would draw them (stronger, blur 0.8 px + noise 12, drops texture to
~0.92 and non_spatial, whose small objects are 7 px, to ~0.83); 0 on pure noise and blank images;
0 for the attribute on renders with colours, textures or sizes swapped between the objects.

Chance level of `color` on the test prompts: a model that draws the right shapes in random colours
(uniform over the 5 colours, independently) scores 1/25 on the 64 test prompts with two different
shapes and 2/25 on the 36 with one shape twice (either object may carry either colour): 0.0544
(analytic; the test confirms it by simulation).
"""
from __future__ import annotations

import io
import itertools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError
from scipy import ndimage

from eval.arguments import OneLineParser, non_empty, output_file
from eval.common import MANIFEST, Sample, generation_protocol, merged_per_image, merged_protocol, read_partials, read_samples, result, run_merge, shard_partial, shard_text, write_result
from eval.motion import CHANCE as MOTION_CHANCE, motion_scores
from gentron.data.compshapes import (BACKGROUND, COLORS, DARK_SHADE, HELD_OUT_COLOR_SHAPE,
                                     MOTION_DISTANCE, Phrase, PromptSpec, ShapeObject, coverage, parse_prompt)
from gentron.errors import exits_on_user_error
from gentron.partition import shard_range
from gentron.progress import progress

log = logging.getLogger(__name__)

METRIC = "compshapes_judge"
MAX_SIDE = 64  # bigger images are box-filtered down to this side: faster, and thresholds stay put
FG_DISTANCE = 60.0  # RGB distance from the background beyond which a pixel is foreground
OPENING_MIN_SIDE = 48  # below this an opening would eat a small triangle's apex
MIN_AREA, MAX_AREA = 0.004, 0.30  # object area bounds, fractions of the image
MIN_PURITY = 0.5  # fraction of an object's pixels that must agree with its palette colour
PURITY_COSINE = 0.97  # cosine between pixel and palette RGB directions counted as agreeing
SOLID_BELOW, STRIPED_ABOVE = 0.08, 0.33  # mean darkness thresholds between the three textures
STRIPE_CONTRAST = 0.12  # minimum std of per-row mean darkness for a striped object
NEXT_TO = 150 / 480  # the official "next to" distance, 150 px of a 480 px image
SIZE_RATIO = 1.2  # box-side ratio for "bigger than" (renders use ~1.7)
MIN_TRAVEL = MOTION_DISTANCE / 3  # displacement over a clip that counts as moving
DIAMOND_HARMONIC = 0.04  # measured: circles <= 0.03 at 20-64 px (blurred or not), blurred diamonds mostly above
MAX_OBJECTS = 6  # only the largest objects are considered for binding (bounds the assignment search)

_PALETTE_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)
_PALETTE_DIR = _PALETTE / np.linalg.norm(_PALETTE, axis=1, keepdims=True)


@dataclass(frozen=True)
class Detection:
    color: str
    shape: str
    texture: str  # solid | striped | dotted | unknown
    center: tuple[float, float]  # box centre, image units, y down
    extent: float  # longer side of the box, image units
    area: float  # fraction of the image
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # x1, y1, x2, y2, image units


# --- object detection ---------------------------------------------------------------------------
GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def as_rgb(image, where: str = "the image") -> Image.Image:
    """The RGB image the judge reads. Transparent pixels are composited on the CompShapes background
    (an image saved without its background is judged like the opaque one); 16-bit values are scaled
    to 8 bits; grayscale is refused, since colour is what the judge reads."""
    if isinstance(image, Image.Image):
        im = image
    else:
        array = np.asarray(image)
        channels = array.shape[-1] if array.ndim == 3 else 1
        if array.ndim == 2 or channels in (1, 2):
            raise ValueError(f"{where} is grayscale (shape {array.shape}): the judge reads colours; give RGB images")
        if array.ndim != 3 or channels not in (3, 4):
            raise ValueError(f"{where} has shape {array.shape}; the judge reads H x W x 3 (RGB) or H x W x 4 (RGBA)")
        if array.dtype == np.uint16:
            array = np.rint(array / 257.0)
        im = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "RGBA" if channels == 4 else "RGB")
    if im.mode in GRAYSCALE_MODES:
        raise ValueError(f"{where} is grayscale (mode {im.mode}): the judge reads colours; give RGB images")
    if im.mode in ("RGBA", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info):
        background = Image.new("RGBA", im.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def open_image(path: Path) -> Image.Image:
    """A file as the RGB image the judge reads (as_rgb), or a ValueError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return as_rgb(im, str(path))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image ({e}); regenerate it or drop it from samples.jsonl") from e


def _working_image(image) -> np.ndarray:
    """RGB float32 array, box-filtered down to MAX_SIDE if larger."""
    im = as_rgb(image)
    if max(im.size) > MAX_SIDE:
        scale = MAX_SIDE / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BOX)
    return np.asarray(im, dtype=np.float32)


def _foreground(pixels: np.ndarray) -> np.ndarray:
    mask = np.linalg.norm(pixels - np.asarray(BACKGROUND, np.float32), axis=-1) > FG_DISTANCE
    if min(mask.shape) >= OPENING_MIN_SIDE:
        mask = ndimage.binary_opening(mask)
    return ndimage.binary_fill_holes(mask)


def _core(mask: np.ndarray) -> np.ndarray:
    """The mask minus its rim, whose pixels are mixed with the background; the whole mask if the
    object is too small to spare its rim."""
    inner = ndimage.binary_erosion(mask)
    return inner if inner.sum() >= 6 else mask


def _color(rgb: np.ndarray) -> tuple[int, float]:
    """Palette index by majority of pixels' nearest RGB direction, and the fraction agreeing."""
    directions = rgb / np.maximum(np.linalg.norm(rgb, axis=1, keepdims=True), 1e-6)
    cosines = directions @ _PALETTE_DIR.T
    index = int(np.bincount(cosines.argmax(axis=1), minlength=len(_PALETTE)).argmax())
    return index, float((cosines[:, index] >= PURITY_COSINE).mean())


def _texture(pixels: np.ndarray, core: np.ndarray, color_index: int) -> str:
    """Darkness of each inner pixel relative to its palette colour: 0 = the colour, 1 = its dark
    shade. Blur averages light and dark, so the mean survives even where the pattern does not."""
    brightness = (pixels[core] @ _PALETTE_DIR[color_index]) / np.linalg.norm(_PALETTE[color_index])
    darkness = np.zeros(core.shape, dtype=np.float32)
    darkness[core] = np.clip((1 - brightness) / (1 - DARK_SHADE), 0, 1)
    mean = float(darkness[core].mean())
    if mean < SOLID_BELOW:
        return "solid"
    if mean < STRIPED_ABOVE:
        return "dotted"
    rows = core.sum(axis=1) > 0
    row_means = darkness.sum(axis=1)[rows] / core.sum(axis=1)[rows]
    return "striped" if row_means.std() >= STRIPE_CONTRAST else "unknown"


def _coverage_map(patch: np.ndarray, mask: np.ndarray, color_index: int) -> np.ndarray:
    """How much of each pixel the object covers, 0..1: where the pixel lies on the line from the
    background to the palette colour or to its dark shade (patterns), whichever passes closer. Rim
    pixels under FG_DISTANCE still count (hence the dilation)."""
    background = np.asarray(BACKGROUND, np.float32)
    offsets = patch - background
    lines = [_PALETTE[color_index] * shade - background for shade in (1.0, DARK_SHADE)]
    covers = np.stack([np.clip(offsets @ line / (line @ line), 0, 1) for line in lines])
    misses = np.stack([np.linalg.norm(offsets - cover[..., None] * line, axis=-1)
                       for cover, line in zip(covers, lines)])
    nearer = np.take_along_axis(covers, misses.argmin(axis=0)[None], axis=0)[0]
    return nearer * ndimage.binary_dilation(mask)


def _ideal(shape: str, half: float, center: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """Anti-aliased coverage of an ideal shape on a pixel grid (4x4 samples per pixel)."""
    axis_y = (np.arange(size[0] * 4) + 0.5) / 4
    axis_x = (np.arange(size[1] * 4) + 0.5) / 4
    inside = coverage(ShapeObject(shape, "red", size=half, center=center), axis_x[None, :], axis_y[:, None])
    return inside.reshape(size[0], 4, size[1], 4).mean(axis=(1, 3))


def _shape(cover: np.ndarray) -> str:
    """The shape whose ideal outline, scaled to the object's area and placed on its centroid, overlaps
    its coverage best (soft IoU). Area and centroid of the coverage survive blur and anti-aliasing
    (at 32 px a small circle and square differ by a few rim pixels), box fill ratios do not."""
    cover = np.pad(cover, 3)  # room for templates that stick out of the object's box
    grid_y, grid_x = np.mgrid[0:cover.shape[0], 0:cover.shape[1]] + 0.5
    area = cover.sum()
    cx, cy = (cover * grid_x).sum() / area, (cover * grid_y).sum() / area
    templates = {"circle": (np.sqrt(area / np.pi), 0.0), "square": (np.sqrt(area) / 2, 0.0),
                 # a triangle's centroid lies a third of its half-height below its box centre
                 "triangle": (np.sqrt(area / 2), -np.sqrt(area / 2) / 3),
                 "diamond": (np.sqrt(area / 2), 0.0)}
    ious = {}
    for name, (half, shift) in templates.items():
        ideal = _ideal(name, half, (cx, cy + shift), cover.shape)
        ious[name] = np.minimum(ideal, cover).sum() / np.maximum(ideal, cover).sum()
    best = max(ious, key=ious.get)
    if best in ("circle", "diamond"):  # blur rounds a small diamond's tips: ask where its mass lies
        best = "diamond" if _axis_harmonic(cover, grid_x - cx, grid_y - cy) > DIAMOND_HARMONIC else "circle"
    return best


def _axis_harmonic(cover: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """The coverage's fourth angular harmonic, sum(w r^4 cos 4theta) / sum(w r^4): about +0.43 for a
    diamond (mass out along the axes), -0.43 for a square (along the diagonals), 0 for a circle.
    Blur shrinks it towards 0 but keeps its sign."""
    r2 = x * x + y * y
    return float((cover * (x ** 4 + y ** 4 - 6 * x * x * y * y)).sum() / (cover * r2 * r2).sum())


def detect(image) -> list[Detection]:
    """The MAX_OBJECTS largest objects in an image (PIL or uint8 HxWx3), largest first."""
    return [found for found, _ in detect_with_masks(image)]


def detect_with_masks(image) -> list[tuple[Detection, np.ndarray]]:
    """detect() with each object's mask (bool, the working image's size: the image, or the image
    box-filtered down to MAX_SIDE)."""
    pixels = _working_image(image)
    height, width = pixels.shape[:2]
    labels, _ = ndimage.label(_foreground(pixels))
    found = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[box] == index
        area = mask.sum() / (height * width)
        if not MIN_AREA <= area <= MAX_AREA:
            continue
        patch = pixels[box]
        core = _core(mask)
        color_index, purity = _color(patch[core])
        if purity < MIN_PURITY:
            continue
        center = ((box[1].start + box[1].stop) / 2 / width, (box[0].start + box[0].stop) / 2 / height)
        extent = max((box[1].stop - box[1].start) / width, (box[0].stop - box[0].start) / height)
        shape = _shape(_coverage_map(patch, mask, color_index))
        texture = _texture(patch, core, color_index)
        corners = (box[1].start / width, box[0].start / height, box[1].stop / width, box[0].stop / height)
        found.append((Detection(_PALETTE_NAMES[color_index], shape, texture, center, float(extent), float(area),
                                corners), labels == index))
    return sorted(found, key=lambda item: -item[0].area)[:MAX_OBJECTS]


# --- binding and relations ----------------------------------------------------------------------
def _match_fraction(phrase: Phrase, det: Detection | None) -> float:
    """Fraction of the attributes the phrase mentions that the object has (0 with no object)."""
    if det is None:
        return 0.0
    wanted = [(phrase.shape, det.shape)]
    wanted += [(phrase.color, det.color)] if phrase.color else []
    wanted += [(phrase.texture, det.texture)] if phrase.texture else []
    return sum(a == b for a, b in wanted) / len(wanted)


def _assignments(num_phrases: int, detections: list[Detection]):
    """Every injective map of phrases to detections, with None standing for 'not found'."""
    slots = list(detections) + [None] * num_phrases
    seen = set()
    for chosen in itertools.permutations(range(len(slots)), num_phrases):
        key = tuple(i if i < len(detections) else None for i in chosen)
        if key not in seen:
            seen.add(key)
            yield [slots[i] if i < len(detections) else None for i in chosen]


def _position(relation: str, a: Detection, b: Detection) -> float:
    """The official 2D-spatial position term on box centres (1 = relation holds)."""
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    if relation == "next to":
        return 1.0 if abs(dx) < NEXT_TO or abs(dy) < NEXT_TO else NEXT_TO / max(abs(dx), abs(dy))
    holds = {"on the left of": dx > 0 and abs(dx) > abs(dy), "on the right of": dx < 0 and abs(dx) > abs(dy),
             "on the top of": dy > 0 and abs(dy) > abs(dx), "on the bottom of": dy < 0 and abs(dy) > abs(dx),
             "bigger than": a.extent >= SIZE_RATIO * b.extent,
             "smaller than": b.extent >= SIZE_RATIO * a.extent}
    return float(holds[relation])


def _relation_scores(relation: str, fractions: list[float], a: Detection | None, b: Detection | None):
    """(binary, soft) for a relation between the two bound objects, soft in the official shape."""
    bound = [f == 1.0 for f in fractions]
    position = _position(relation, a, b) if a is not None and b is not None else 0.0
    soft = 0.25 * bound[0] + 0.25 * bound[1] + (position / 2 if all(bound) else 0.0)
    return float(all(bound) and position == 1.0), (soft if soft >= 0.5 else 0.0)


def _scores_for(spec: PromptSpec, bound: list[Detection | None]) -> dict[str, float]:
    fractions = [_match_fraction(p, d) for p, d in zip(spec.phrases, bound)]
    binding = float(all(f == 1.0 for f in fractions))
    binding_soft = float(np.prod(fractions))
    category = spec.category
    if category in ("color", "shape", "texture"):
        return {category: binding, f"{category}_soft": binding_soft}
    if category in ("spatial", "non_spatial"):
        binary, soft = _relation_scores(spec.relation, fractions, *bound)
        return {category: binary, f"{category}_soft": soft}
    # complex: mean of the applicable parts, as T2I-CompBench's 3-in-1
    parts, soft_parts = [binding], [binding_soft]
    if spec.relation:
        binary, soft = _relation_scores(spec.relation, fractions, *bound)
        parts.append(binary)
        soft_parts.append(soft)
    return {"complex": float(np.mean(parts)), "complex_soft": float(np.mean(soft_parts)),
            "complex_all": float(all(parts))}


def score_image(prompt: str | PromptSpec, image) -> dict:
    """Scores of one image for its prompt: {"scores": {...}, "objects": [...]}."""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    if spec.category == "motion":
        raise ValueError(f"{spec.caption!r} is a motion prompt: score a clip with score_clip")
    detections = detect(image)
    if spec.category == "counting":  # exactly n objects of the shape (of the colour, if named)
        shape, color = spec.phrases[0].shape, spec.phrases[0].color
        found = sum(d.shape == shape and color in (None, d.color) for d in detections)
        return {"scores": {"counting": float(found == len(spec.phrases))}, "objects": [asdict(d) for d in detections]}
    best = max((_scores_for(spec, bound) for bound in _assignments(len(spec.phrases), detections)),
               key=lambda s: tuple(s.values()))
    if spec.category == "color":
        best["color_present"] = float({p.color for p in spec.phrases} <= {d.color for d in detections})
    return {"scores": best, "objects": [asdict(d) for d in detections]}


# --- clips --------------------------------------------------------------------------------------
def _bind_frame(spec: PromptSpec, detections: list[Detection]) -> list[Detection | None]:
    """The assignment binding the most phrases fully in one frame (None where a phrase is unbound)."""
    def quality(bound):
        fractions = [_match_fraction(p, d) for p, d in zip(spec.phrases, bound)]
        return sum(f == 1.0 for f in fractions), sum(fractions)
    best = max(_assignments(len(spec.phrases), detections), key=quality)
    return [d if _match_fraction(p, d) == 1.0 else None for p, d in zip(spec.phrases, best)]


def score_clip(prompt: str | PromptSpec, frames) -> dict:
    """Scores of one clip (a sequence of frames) for a motion prompt: binding per frame here, the
    motion metrics of eval.motion (direction, speed, identity, flicker) on the bound objects."""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    if spec.category != "motion":
        raise ValueError(f"{spec.caption!r} is not a motion prompt: score an image with score_image")
    frames = list(frames)
    pixels = [_working_image(frame) for frame in frames]
    if not pixels:
        raise ValueError("score_clip got no frames")
    detections = [detect(frame) for frame in frames]
    bound = [_bind_frame(spec, found) for found in detections]
    consistency = float(np.mean([all(d is not None for d in frame) for frame in bound]))
    scores = motion_scores([p.motion for p in spec.phrases], bound, detections, pixels,
                           [_foreground(p) for p in pixels], MOTION_DISTANCE, MIN_TRAVEL)
    all_right = scores["motion_direction"] == 1.0
    return {"scores": {"motion": float(consistency == 1.0 and all_right),
                       "motion_soft": (consistency + scores["motion_direction"]) / 2,
                       "motion_consistency": consistency, **scores}}


def load_frames(folder: Path, sample: Sample) -> list[Image.Image]:
    """A clip's frames: its per-frame PNG folder if listed, else the frames of its GIF or MP4."""
    if sample.frames:
        paths = sorted((folder / sample.frames).glob("*.png"))
        if not paths:
            raise FileNotFoundError(f"{folder / sample.frames} holds no PNG frames")
        return [open_image(p) for p in paths]
    path = folder / sample.file
    if path.suffix.lower() == ".mp4":
        import av

        with av.open(str(path)) as container:
            return [f.to_image().convert("RGB") for f in container.decode(video=0)]
    with Image.open(io.BytesIO(path.read_bytes())) as im:
        frames = [as_rgb(f, f"{path} frame {i}") for i, f in enumerate(ImageSequence.Iterator(im))]
    if len(frames) < 2:
        raise ValueError(f"{path} has one frame; a motion prompt needs a clip (GIF, MP4 or a frames folder)")
    return frames


# --- evaluator ----------------------------------------------------------------------------------
PROTOCOL = {
    "measures": "exact compositional correctness of CompShapes generations against the parsed prompt: "
                "attribute binding (color, shape, texture), 2D spatial relations (official T2I-CompBench "
                "rule on box centres), relative size (non_spatial), complex = mean of parts, motion",
    "judge": "eval.judge (foreground by background distance, connected components, palette "
             "chromaticity, geometric shape features); extra objects not penalised",
    "max_side": MAX_SIDE, "fg_distance": FG_DISTANCE, "area_bounds": [MIN_AREA, MAX_AREA],
    "min_purity": MIN_PURITY, "texture_thresholds": [SOLID_BELOW, STRIPED_ABOVE, STRIPE_CONTRAST],
    "shape": "best IoU with an ideal circle/square/triangle/diamond of the object's area at its centroid "
             "(circle vs diamond by the coverage's fourth angular harmonic)",
    "next_to": NEXT_TO, "size_ratio": SIZE_RATIO, "min_travel": MIN_TRAVEL,
    "motion": "eval.motion: direction per object, speed along the stated direction over the stated one, "
              "identity (colour, shape, size kept by each followed object), per-frame binding "
              "(motion_consistency), flicker (background change; 1 = none)",
    "motion_chance": MOTION_CHANCE,
    "aggregate": "binary score per image, mean over a prompt's images, mean and bootstrap CI over prompts",
}


def evaluate(samples_dir: str | Path, shard=None, out: str | Path | None = None) -> dict:
    """Score every sample of a sample folder; DESIGN.md's evaluator output. With `shard=(k, K)`: score
    shard k of K only and return (and write to `out`) its partial result, which `merge` combines."""
    folder = Path(samples_dir)
    samples = read_samples(folder)
    if shard is None:
        return result(METRIC, _judged(folder, samples), _protocol(folder), comparable_to_paper=False)
    span = shard_range(len(samples), 1, shard)
    return shard_partial(METRIC, folder, shard, out, {}, lambda: {
        "protocol": _protocol(folder), "per_image": _judged(folder, samples[span.start:span.stop])})


def merge(partials) -> dict:
    """The result of a folder from the partial results of its K shards: the same as one unsharded run."""
    parts = read_partials(partials, METRIC)
    return result(METRIC, merged_per_image(parts), merged_protocol(parts), comparable_to_paper=False)


def _protocol(folder: Path) -> dict:
    return {**PROTOCOL, **generation_protocol(folder)}


def _judged(folder: Path, samples: list[Sample]) -> list[dict]:
    per_image = []
    for sample in progress(samples, desc=f"judging {folder.parent.parent.name}/{folder.name}", unit="sample"):
        try:
            spec = parse_prompt(sample.prompt)
        except ValueError as e:
            raise ValueError(f"{folder / sample.file}: {e}") from e
        if sample.category and sample.category != spec.category:
            log.warning("%s is listed as %s but its prompt is %s; scoring it as %s",
                        sample.file, sample.category, spec.category, spec.category)
        if spec.category == "motion":
            scored = score_clip(spec, load_frames(folder, sample))
        else:
            scored = score_image(spec, open_image(folder / sample.file))
        per_image.append({"file": sample.file, "prompt_id": sample.prompt_id, "seed": sample.seed,
                          "prompt": sample.prompt, "category": spec.category, **scored})
    log.info("judged %d samples in %s", len(per_image), folder)
    return per_image


def held_out_pairs(per_image: list[dict]) -> dict[tuple[str, str], dict[str, int]]:
    """Which held-out colour-shape pairs a model composes. Per pair, over the judged colour prompts
    naming it: `n` prompts, `right` in which an object of its colour has its shape, and of the rest
    `other_shape`, in which an object of its colour has the shape of the prompt's other object."""
    pairs = {pair: {"n": 0, "right": 0, "other_shape": 0} for pair in sorted(HELD_OUT_COLOR_SHAPE)}
    for record in per_image:
        if record["category"] != "color":
            continue
        phrases = parse_prompt(record["prompt"]).phrases
        for phrase, other in zip(phrases, phrases[::-1]):
            counts = pairs.get((phrase.color, phrase.shape))
            if counts is None:
                continue
            shapes = {o["shape"] for o in record["objects"] if o["color"] == phrase.color}
            counts["n"] += 1
            counts["right"] += phrase.shape in shapes
            counts["other_shape"] += phrase.shape not in shapes and other.shape in shapes
    return pairs


@exits_on_user_error("python -m eval.judge")
def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        run_merge("judge", merge, argv[1:])
        return
    parser = OneLineParser(prog="python -m eval.judge", description=__doc__.split("\n")[0])
    parser.add_argument("samples_dir", type=non_empty(f"a sample folder ({MANIFEST} and images) of CompShapes prompts"),
                        help="a sample folder (DESIGN.md) of CompShapes prompts")
    parser.add_argument("--out", default=None, type=output_file("a file for the JSON result, or leave --out out"),
                        help="result JSON (default SAMPLES_DIR/compshapes_judge.json)")
    parser.add_argument("--shard", type=shard_text, default=None,
                        help="k/K: judge shard k of K only, writing its partial result to --out; then "
                             "`python -m eval.judge merge PARTS... --out RESULT`")
    args = parser.parse_args(argv)
    if args.out is not None and Path(args.out).resolve() == (Path(args.samples_dir) / MANIFEST).resolve():
        parser.error(f"argument --out: {args.out} is the sample folder's {MANIFEST}, which the result would "
                     f"overwrite; give another file, or leave --out out")
    if args.shard is not None and args.out is None:
        parser.error("argument --shard: give --out, the file for this shard's partial result")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.shard is not None:
        part = evaluate(args.samples_dir, shard=args.shard, out=args.out)
        print(f"judged shard {args.shard}: {len(part['per_image'])} samples -> {args.out}")
        return
    scored = evaluate(args.samples_dir)
    write_result(args.out or Path(args.samples_dir) / f"{METRIC}.json", scored)
    for name, agg in scored["aggregate"].items():
        print(f"{name:20s} {agg['mean']:.3f} [{agg['ci_low']:.3f}, {agg['ci_high']:.3f}] n={agg['n']}")


if __name__ == "__main__":
    main()
