"""Exact motion metrics of a CompShapes clip, from the judge's per-frame detections.

The judge (eval.judge.score_clip) finds and binds the prompted objects in every frame. CompShapes
knows what each of them should do over a clip of T frames: keep its colour, shape and size, travel
MOTION_DISTANCE of the image in its stated direction at constant speed, and leave the background
untouched. Each metric below measures one of those, per clip; the judge averages over prompts.

- motion_direction: share of prompted objects whose bound box centre moves, from the first to the
  last frame that binds it, at least MIN_TRAVEL (a third of the stated travel) along the stated
  direction and more along it than across it.
- motion_reversed: the same test against the opposite of the stated direction: share of prompted
  objects that move the stated way backwards (a clip whose arrow of time is flipped scores 1).
- motion_speed: displacement along the stated direction over the same frames, divided by the stated
  travel over those frames (1 = the stated speed, 0 = static, -1 = the reverse), mean over the
  objects bound in two or more frames (absent when none is).
- motion_identity (and its parts _color, _shape, _size): each bound object followed from the first
  frame that binds it to the nearest detection of every next frame within LINK_REACH stated
  per-frame steps (an object that jumps farther, or vanishes, is lost). Share of the following
  frames in which it keeps the colour and shape it had there and a box side within SIZE_TOLERANCE of
  it; lost frames count as changed. Mean over the objects bound in some frame (absent when none is).
- motion_consistency (in the judge): share of frames binding every prompted object.
- motion_flicker: 1 - mean absolute change, on a 0-1 scale, of the pixels that are background in
  both of two consecutive frames (VBench's temporal-flickering score, where nothing should change);
  1 = no flicker.

Chance levels (CHANCE; tests/test_judge.py checks the levels for direction and speed by simulation):
an object moving the full distance in a uniformly random one of the four directions scores direction
0.25, reversed 0.25 and speed 0 in expectation; a static clip direction 0, reversed 0, speed 0; the
reversed clip direction 0, reversed 1, speed -1. Colour and shape redrawn at random each frame keep
their identity with probability 1/5 and 1/4 per frame. Per-frame binding of a model with the right
shapes in random colours: 1/5 for one object, 1/25 for two. Flicker has no chance level: renders
score 1.
"""
from __future__ import annotations

import numpy as np

from gentron.data.compshapes import COLORS, DIRECTIONS, SHAPES

LINK_REACH = 2.0  # how many stated per-frame steps an object may move between frames and stay itself
MIN_LINK = 0.1  # the smallest linking distance, image units (for slow or static prompts)
SIZE_TOLERANCE = 0.25  # relative change of the box side that still counts as the same size

CHANCE = {
    "motion_direction": 0.25,
    "motion_reversed": 0.25,
    "motion_speed": 0.0,
    "motion_identity_color": 1 / len(COLORS),
    "motion_identity_shape": 1 / len(SHAPES),
    "motion_consistency": {"one object": 1 / len(COLORS), "two objects": 1 / len(COLORS) ** 2},
    "motion": {"one object": 0.25, "two objects": 0.25 ** 2, "given": "every frame bound"},
    "motion_flicker": None,
}


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def _points(track) -> list[tuple[int, tuple[float, float]]]:
    return [(f, d.center) for f, d in enumerate(track) if d is not None]


def _along_across(direction: str, start, end) -> tuple[float, float]:
    dx, dy = end[0] - start[0], end[1] - start[1]
    ux, uy = DIRECTIONS[direction]
    return dx * ux + dy * uy, abs(dx * uy - dy * ux)


def moved_right_way(direction: str, track, min_travel: float) -> bool:
    """True if the track's box centre moves at least `min_travel` along `direction`, more than across
    it, from its first to its last bound frame (None = unbound frame)."""
    points = _points(track)
    if len(points) < 2:
        return False
    along, across = _along_across(direction, points[0][1], points[-1][1])
    return along >= min_travel and along > across


def speed(direction: str, track, distance: float) -> float | None:
    """Displacement along `direction` between the first and last bound frames over the stated travel
    in those frames (None if bound in fewer than two)."""
    points = _points(track)
    if len(points) < 2:
        return None
    (first, start), (last, end) = points[0], points[-1]
    along, _ = _along_across(direction, start, end)
    return along / (distance * (last - first) / (len(track) - 1))


def follow(track, detections: list[list], reach: float) -> list:
    """The object bound first in `track`, followed through the later frames' `detections` to the
    nearest one within `reach` (image units) of where it was; None from the frame it is lost."""
    start = next((f for f, d in enumerate(track) if d is not None), None)
    if start is None:
        return []
    path, current = [track[start]], track[start]
    for frame in detections[start + 1:]:
        near = [(np.hypot(d.center[0] - current.center[0], d.center[1] - current.center[1]), i)
                for i, d in enumerate(frame)] if current is not None else []
        near = [(dist, i) for dist, i in near if dist <= reach]
        current = frame[min(near)[1]] if near else None
        path.append(current)
    return path


def identity(path: list) -> dict[str, float] | None:
    """Shares of the frames after the first of a followed object that keep its colour, shape and size."""
    if len(path) < 2:
        return None
    first, later = path[0], path[1:]
    same = {"color": [d is not None and d.color == first.color for d in later],
            "shape": [d is not None and d.shape == first.shape for d in later],
            "size": [d is not None and abs(d.extent / first.extent - 1) <= SIZE_TOLERANCE for d in later]}
    same["all"] = [c and s and z for c, s, z in zip(same["color"], same["shape"], same["size"])]
    return {k: float(np.mean(v)) for k, v in same.items()}


def flicker(frames: list[np.ndarray], foreground: list[np.ndarray]) -> float:
    """1 - mean |change| (0-1) of the pixels that are background in both of two consecutive frames."""
    changes = []
    for a, b, fa, fb in zip(frames, frames[1:], foreground, foreground[1:]):
        still = ~(fa | fb)
        if still.any():
            changes.append(float(np.abs(a[still] - b[still]).mean()) / 255)
    return 1.0 - float(np.mean(changes)) if changes else 1.0


def motion_scores(directions: list[str], bound: list[list], detections: list[list], frames: list[np.ndarray],
                  foreground: list[np.ndarray], distance: float, min_travel: float) -> dict[str, float]:
    """The metrics above for one clip: `directions` per prompted object, `bound` per frame the bound
    detection of each object (None = unbound), `detections` per frame every detection, `frames` the
    pixels the judge read (float RGB) with their `foreground` masks."""
    tracks = [[frame[i] for frame in bound] for i in range(len(directions))]
    scores = {"motion_direction": float(np.mean([moved_right_way(d, t, min_travel)
                                                  for d, t in zip(directions, tracks)])),
              "motion_reversed": float(np.mean([moved_right_way(OPPOSITE[d], t, min_travel)
                                                 for d, t in zip(directions, tracks)])),
              "motion_flicker": flicker(frames, foreground)}
    speeds = [s for s in (speed(d, t, distance) for d, t in zip(directions, tracks)) if s is not None]
    if speeds:
        scores["motion_speed"] = float(np.mean(speeds))
    reach = max(MIN_LINK, LINK_REACH * distance / max(1, len(frames) - 1))
    kept = [k for k in (identity(follow(t, detections, reach)) for t in tracks) if k is not None]
    if kept:
        scores["motion_identity"] = float(np.mean([k["all"] for k in kept]))
        for part in ("color", "shape", "size"):
            scores[f"motion_identity_{part}"] = float(np.mean([k[part] for k in kept]))
    return scores
