"""Scoring a folder of clips on VBench's dimensions: evaluate (whole, or shard k of K) and merge."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.metadata import version

import cv2
import torch
from tqdm import tqdm

from eval.common import generation_protocol, image_row, merged_per_image, merged_protocol, read_partials, resolve_device, result, shard_partial
from eval.vbench import dimensions as D
from eval.vbench.clips import Clip, bgr_frames, folder_clips, frame_images, read_full_info, rgb_video
from eval.vbench.models import ClipFeatures, DinoFeatures, RaftFlow
from eval.vbench.normalize import normalized, quality_partial
from gentron.partition import shard_range

log = logging.getLogger(__name__)

METRIC = "vbench"
MODEL_OF = {D.SUBJECT_CONSISTENCY: "dino", D.BACKGROUND_CONSISTENCY: "clip", D.DYNAMIC_DEGREE: "raft"}
AMT_MISSING = ("motion_smoothness needs AMT frame interpolation, which no maintained package provides; it is not "
               "implemented (docs/evaluators.md): leave it out of the dimensions")


def parse_dimensions(dims: str | Sequence[str] | None) -> list[str]:
    """The dimensions asked for (a list, or a comma-separated string), in VBench's order; all four if None."""
    if dims is None:
        return list(D.DIMENSIONS)
    names = [d.strip() for d in (dims.split(",") if isinstance(dims, str) else dims) if d.strip()]
    if D.MOTION_SMOOTHNESS in names:
        raise ValueError(AMT_MISSING)
    if unknown := [d for d in names if d not in D.DIMENSIONS]:
        raise ValueError(f"unknown VBench dimension(s) {unknown}: give some of {', '.join(D.DIMENSIONS)}")
    if not names:
        raise ValueError(f"no dimension given: give some of {', '.join(D.DIMENSIONS)}")
    return [d for d in D.DIMENSIONS if d in names]


def clip_dimensions(clips: list[Clip], dims: list[str], full_info) -> list[list[str]]:
    """The dimensions each clip is scored on: all asked for, or (with VBench_full_info.json) those its
    prompt serves."""
    if full_info is None:
        return [list(dims) for _ in clips]
    info = read_full_info(full_info)
    unknown = [c for c in clips if c.sample.prompt not in info]
    if unknown:
        raise ValueError(f"{len(unknown)} of {len(clips)} clips have prompts that {full_info} does not list (e.g. "
                         f"{unknown[0].sample.file}: {unknown[0].sample.prompt!r}); sample VBench's prompt suite "
                         f"(prompts/all_dimension.txt), or leave full_info out to score every clip on every dimension")
    return [[d for d in dims if d in info[c.sample.prompt]] for c in clips]


def load_models(needed: set[str], dino=None, clip=None, raft=None, device: str = "cpu") -> dict:
    """The models of the dimensions in `needed`, each loaded once (a missing one refused before any scoring)."""
    models = {}
    if D.SUBJECT_CONSISTENCY in needed:
        models["dino"] = DinoFeatures(dino, device)
    if D.BACKGROUND_CONSISTENCY in needed:
        models["clip"] = ClipFeatures(clip, device)
    if D.DYNAMIC_DEGREE in needed:
        models["raft"] = RaftFlow(raft, device)
    return models


def score_clip(clip: Clip, dims: list[str], models: dict) -> dict:
    """{"scores", "sums", "terms", "pairs"} of one clip on `dims`."""
    out = {"scores": {}, "sums": {}, "terms": {}}
    try:
        if D.TEMPORAL_FLICKERING in dims or D.DYNAMIC_DEGREE in dims:
            frames, fps = bgr_frames(clip)
            if D.TEMPORAL_FLICKERING in dims:
                out["scores"][D.TEMPORAL_FLICKERING] = D.temporal_flickering(frames)
            if D.DYNAMIC_DEGREE in dims:
                step = D.video_frame_step(fps)
                rgb = [torch.from_numpy(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float()[None]
                       for f in frames[::step]]
                moved, pairs = D.dynamic_degree(rgb, models["raft"])
                out["scores"][D.DYNAMIC_DEGREE] = float(moved)
                out["flow_top5"] = pairs
        consistency = [d for d in (D.SUBJECT_CONSISTENCY, D.BACKGROUND_CONSISTENCY) if d in dims]
        if consistency:
            frames = frame_images(clip.path) if clip.is_folder else rgb_video(clip.path)
            for dim in consistency:
                total, terms = D.consistency(models[MODEL_OF[dim]].clip_features(frames))
                out["scores"][dim], out["sums"][dim], out["terms"][dim] = total / terms, total, terms
    except ValueError as e:
        raise ValueError(f"{clip.path}: {e}") from e
    return out


def official_aggregates(per_image: list[dict]) -> dict[str, float]:
    """Each dimension's set score as VBench computes it: mean over clips (temporal flickering, dynamic degree),
    or pooled over all frame terms (the consistencies)."""
    out = {}
    for dim in D.DIMENSIONS:
        rows = [r for r in per_image if dim in r["scores"]]
        if not rows:
            continue
        if dim in (D.SUBJECT_CONSISTENCY, D.BACKGROUND_CONSISTENCY):
            out[dim] = D.pooled_consistency([(r["sums"][dim], r["terms"][dim]) for r in rows])
        else:
            out[dim] = sum(r["scores"][dim] for r in rows) / len(rows)
    return out


def evaluate(samples_dir, dimensions: str | Sequence[str] | None = None, full_info: str | None = None,
             dino: str | None = None, clip: str | None = None, raft: str | None = None, source: str = "frames",
             device: str | None = None, shard=None, out=None) -> dict:
    """VBench's temporal flickering, subject and background consistency and dynamic degree of every clip of
    a folder. With `full_info` (VBench_full_info.json) each clip is scored on the dimensions its prompt
    serves, as VBench does. With `shard=(k, K)`: shard k of K only, a partial result `merge` combines."""
    dims = parse_dimensions(dimensions)
    clips = folder_clips(samples_dir, source)
    per_clip = clip_dimensions(clips, dims, full_info)
    # what the whole folder needs, so that every shard loads the same models and records the same protocol
    setting = {"dims": dims, "full_info": full_info, "needed": {d for ds in per_clip for d in ds},
               "reading": "frame folders (PNG, lossless) where a clip has them, else the encoded file"
                          if any(c.is_folder for c in clips) else "encoded files"}
    if shard is not None:
        span = shard_range(len(clips), 1, shard)
        options = {"dimensions": dims, "full_info": full_info, "dino": dino, "clip": clip, "raft": raft,
                   "source": source}
        return shard_partial(METRIC, samples_dir, shard, out, options, lambda: _scored(
            samples_dir, clips[span.start:span.stop], per_clip[span.start:span.stop], setting, dino, clip, raft,
            device))
    scored = _scored(samples_dir, clips, per_clip, setting, dino, clip, raft, device)
    return _result(scored["per_image"], scored["protocol"], scored["comparable_to_paper"])


def merge(partials) -> dict:
    """The result of a folder from the partial results of its K shards: the same as one unsharded run."""
    parts = read_partials(partials, METRIC)
    return _result(merged_per_image(parts), merged_protocol(parts), all(p["comparable_to_paper"] for p in parts))


def _scored(samples_dir, clips, per_clip, setting: dict, dino, clip, raft, device) -> dict:
    device = resolve_device(device)
    dims, full_info = setting["dims"], setting["full_info"]
    models = load_models(setting["needed"], dino, clip, raft, device)
    per_image = []
    for c, ds in tqdm(list(zip(clips, per_clip)), desc="vbench", unit="clip"):
        scored = score_clip(c, ds, models)
        per_image.append({**image_row(c.sample, scored.pop("scores")), "source": c.kind, **scored})
    protocol = {"dimensions": dims, "prompt_subsets": str(full_info) if full_info else None,
                "models": {name: m.protocol() for name, m in models.items()},
                "reading": setting["reading"],
                "dynamic_degree_rule": {"threshold": f"{D.DYNAMIC_THRESHOLD} * min(H, W) / 256",
                                        "count": f"round({D.DYNAMIC_COUNT} * frames / 16)", "top": D.DYNAMIC_TOP,
                                        "video_fps": D.DYNAMIC_FPS, "raft_updates": D.RAFT_ITERS},
                "missing": {D.MOTION_SMOOTHNESS: AMT_MISSING.split(";")[0]},
                "versions": {**{pkg: version(pkg) for pkg in ("torch", "torchvision", "transformers", "pillow")},
                             "opencv": cv2.__version__},
                **generation_protocol(samples_dir)}
    comparable = full_info is not None and all(m.protocol()["official_size"] for m in models.values())
    return {"per_image": per_image, "protocol": protocol, "comparable_to_paper": comparable}


def _result(per_image: list[dict], protocol: dict, comparable: bool) -> dict:
    out = result(METRIC, per_image, protocol, comparable)
    official = official_aggregates(per_image)
    for name in official:  # the normalised scores, a linear map of the raw ones and their CIs
        stats = out["aggregate"][name]
        out["aggregate"][f"{name}_normalized"] = {
            **stats, **{k: normalized(name, stats[k]) for k in ("mean", "ci_low", "ci_high") if stats.get(k) is not None}}
    out["vbench"] = {"official": official, "normalized": {k: normalized(k, v) for k, v in official.items()},
                     "quality_partial": quality_partial(official),
                     "note": "official: VBench's set scores (consistencies pooled over frames); aggregate: means "
                             "over prompts with bootstrap CIs"}
    return out
