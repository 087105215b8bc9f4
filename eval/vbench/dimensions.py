"""VBench's formulas around the features (Huang et al., CVPR 2024; the official code's arithmetic, step for
step, so that the numbers agree with it).

- temporal flickering: the mean absolute difference of consecutive frames (float32, as OpenCV's absdiff
  computes it), averaged over the clip's frame pairs; score = (255 - mean) / 255; the set's score is the
  mean over clips. VBench scores it on its static prompts only.
- subject / background consistency: per frame t >= 1, the mean of max(0, cos(f_t, f_{t-1})) and
  max(0, cos(f_t, f_0)) on L2-normalised features (DINO ViT-B/16 resp. CLIP ViT-B/32); a clip's score is
  the mean over its frames t >= 1; the set's score is the mean over all frames of all clips (sum of the
  clips' sums over the total frame count, not a mean of clip means).
- dynamic degree: per consecutive frame pair, the mean of the top 5% (int(h * w * 0.05) pixels) optical-flow
  magnitudes (RAFT, on the frames padded to a multiple of 8); a clip moves when at least
  round(4 * frames / 16) pairs exceed 6.0 * min(H, W) / 256 (H, W of the unpadded frames); a video file is
  first subsampled to about 8 fps (every round(fps / 8)-th frame); the set's score is the fraction of clips
  that move.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TEMPORAL_FLICKERING = "temporal_flickering"
SUBJECT_CONSISTENCY = "subject_consistency"
BACKGROUND_CONSISTENCY = "background_consistency"
DYNAMIC_DEGREE = "dynamic_degree"
MOTION_SMOOTHNESS = "motion_smoothness"  # needs AMT frame interpolation: not implemented (docs/evaluators.md)
DIMENSIONS = (SUBJECT_CONSISTENCY, BACKGROUND_CONSISTENCY, TEMPORAL_FLICKERING, DYNAMIC_DEGREE)

DYNAMIC_THRESHOLD = 6.0  # flow magnitude at a 256-pixel short side
DYNAMIC_COUNT = 4  # pairs over the threshold per 16 frames
DYNAMIC_TOP = 0.05  # fraction of the largest flow magnitudes averaged
DYNAMIC_FPS = 8  # videos are subsampled to about this rate
RAFT_ITERS = 20
RAFT_MIN_SIDE = 128  # RAFT's 4-level correlation pyramid on 1/8-resolution features needs 16 of them a side


# ---------------------------------------------------------------- temporal flickering

def frame_mae(a: np.ndarray, b: np.ndarray) -> np.float32:
    """Mean absolute difference of two frames, in float32 as cv2.absdiff computes it."""
    import cv2

    if a.shape != b.shape:
        raise ValueError(f"frames of different shapes {a.shape} and {b.shape} in one clip; regenerate the clip")
    return np.mean(cv2.absdiff(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)))


def temporal_flickering(frames: list[np.ndarray]) -> float:
    """(255 - mean MAE of consecutive frames) / 255 of one clip's frames."""
    if len(frames) < 2:
        raise ValueError(f"temporal flickering needs at least 2 frames, the clip has {len(frames)}")
    maes = np.array([frame_mae(a, b) for a, b in zip(frames[:-1], frames[1:])])
    return (255.0 - np.mean(maes).item()) / 255.0


# ---------------------------------------------------------------- subject and background consistency

def consistency(features: torch.Tensor) -> tuple[float, int]:
    """(sum over frames t >= 1 of (max(0, cos(f_t, f_{t-1})) + max(0, cos(f_t, f_0))) / 2, number of terms)
    of one clip's (T, D) features; the clip's score is sum / terms."""
    if len(features) < 2:
        raise ValueError(f"a consistency dimension needs at least 2 frames, the clip has {len(features)}")
    feats = F.normalize(features.float(), dim=-1, p=2)
    first = feats[:1]
    total = 0.0
    for t in range(1, len(feats)):
        current = feats[t:t + 1]
        previous_sim = max(0.0, F.cosine_similarity(feats[t - 1:t], current).item())
        first_sim = max(0.0, F.cosine_similarity(first, current).item())
        total += (previous_sim + first_sim) / 2
    return total, len(feats) - 1


def pooled_consistency(sums_and_terms: list[tuple[float, int]]) -> float:
    """VBench's set score: the mean over every frame term of every clip."""
    return sum(s for s, _ in sums_and_terms) / sum(n for _, n in sums_and_terms)


# ---------------------------------------------------------------- dynamic degree

def video_frame_step(fps: float | None) -> int:
    """Every how many frames a video is read for dynamic degree (about 8 fps); frame folders: every frame."""
    return 1 if fps is None else max(1, round(fps / DYNAMIC_FPS))


def dynamic_rule(height: int, width: int, frames: int) -> tuple[float, int]:
    """(flow threshold, pairs needed) for frames of H x W and a clip of `frames` frames."""
    return DYNAMIC_THRESHOLD * (min(height, width) / 256.0), round(DYNAMIC_COUNT * (frames / 16.0))


def top_flow(flow: torch.Tensor) -> float:
    """Mean of the largest 5% flow magnitudes of one (1, 2, H, W) flow field."""
    flow = flow[0].permute(1, 2, 0).cpu().numpy()
    magnitude = np.sqrt(np.square(flow[:, :, 0]) + np.square(flow[:, :, 1]))
    h, w = magnitude.shape
    largest = -np.sort(-magnitude.flatten())[:int(h * w * DYNAMIC_TOP)]
    return np.mean(np.abs(largest)).item()


def moves(pair_scores: list[float], threshold: float, needed: int) -> bool:
    """Whether `needed` of the pairs exceed the threshold, counted in order as VBench counts (a clip with no
    pairs does not move; with needed = 0 any pair suffices)."""
    count = 0
    for score in pair_scores:
        count += score > threshold
        if count >= needed:
            return True
    return False


def pad_to_8(*images: torch.Tensor) -> list[torch.Tensor]:
    """RAFT's input padding (its 'sintel' mode): replicate-pad H and W up to a multiple of 8, split evenly
    with the odd pixel at the bottom / right."""
    h, w = images[0].shape[-2:]
    pad_h, pad_w = (-h) % 8, (-w) % 8
    pad = [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]
    return [F.pad(x, pad, mode="replicate") for x in images]


@torch.no_grad()
def dynamic_degree(frames: list[torch.Tensor], flow_model) -> tuple[bool, list[float]]:
    """Whether a clip moves, and its per-pair top-flow scores. `frames`: (1, 3, H, W) float tensors of RGB
    values in [0, 255]; `flow_model(image1, image2)` returns the (1, 2, H, W) flow of RAFT's last update
    (inputs in [0, 255], as the original RAFT takes them)."""
    if len(frames) < 2:
        raise ValueError(f"dynamic degree needs at least 2 frames, the clip has {len(frames)}")
    height, width = frames[0].shape[-2:]
    if min(height, width) + max((-height) % 8, (-width) % 8) < RAFT_MIN_SIDE:
        raise ValueError(f"dynamic degree needs frames of at least {RAFT_MIN_SIDE} pixels a side (RAFT's correlation "
                         f"pyramid), these are {height}x{width}: leave dynamic_degree out for such clips")
    threshold, needed = dynamic_rule(height, width, len(frames))
    scores = []
    for image1, image2 in zip(frames[:-1], frames[1:]):
        image1, image2 = pad_to_8(image1, image2)
        scores.append(top_flow(flow_model(image1, image2)))
    return moves(scores, threshold, needed), scores
