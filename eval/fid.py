"""FID and KID between a sample folder and reference images (or reference statistics).

Images go through clean-fid's own loading and resizing (`mode` = clean | legacy_pytorch |
legacy_tensorflow) and through one of two feature extractors:
- `inception`: clean-fid's Inception (weights must be on disk, see eval/weights.py); comparable to papers;
- `random` (the embedded default): a fixed-seed random conv net on 64x64 images. It needs no download and
  is deterministic, but its numbers mean nothing outside this project: `comparable_to_paper: false`.
Features are computed in shards of `shard_size` images, each saved as an .npz named by a hash of its
file list, so a lost or new shard is recomputed alone (`python -m eval.fid shard` runs one shard, e.g.
as a SLURM array task). Scoring in K shards like every evaluator: `evaluate(..., shard=(k, K), out=PART)`
computes shard k's whole feature shards and lists their files in a partial result; `merge(parts)`
concatenates them in order (the unsharded features, so the same mean, covariance, FID, KID and bootstrap).
torchmetrics' FrechetInceptionDistance (float64) is an optional cross-check.

Damaged images (zero bytes, truncated, not an image at all) are refused, not skipped. Before any feature
is computed, every image whose features are not cached yet (samples and reference folder alike) is decoded
in full, and a run that finds damaged ones stops with one line: how many, of how many, and the first few
paths. Skipping them would change the number, not only its precision: FID is a biased estimator whose
value depends on the number of images (it grows as the set shrinks) and papers quote it at a fixed count
(FID-30K), so a score of 29,990 images would sit in a table beside 30,000-image scores, looking like
them, even with the count recorded in its protocol. A damaged file is almost always an interrupted writer
(a generation or a copy cut short); regenerating or re-copying it costs little next to the run, and
cached shards make the rerun compute only what changed.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eval import weights
from eval.arguments import OneLineParser, device_name, existing_folder, non_empty, output_file, output_folder, whole_number
from eval.common import generation_protocol, image_files, load_samples, read_partials, refuse_damaged_images, resolve_device, run_cli, set_result, shard_partial
from eval.stats import bootstrap_statistic
from gentron.errors import exits_on_user_error, positive_int
from gentron.io import atomic_write_bytes
from gentron.progress import progress
from gentron.partition import shard_range

log = logging.getLogger(__name__)

MODES = ("clean", "legacy_pytorch", "legacy_tensorflow")
RESIZE = {"clean": "PIL bicubic on float32 to 299x299, no quantisation (clean-fid)",
          "legacy_pytorch": "torch bilinear (align_corners=False, no antialias) to 299x299",
          "legacy_tensorflow": "TF1-style bilinear inside the TorchScript Inception"}
RANDOM_SIZE = 64


class RandomFeatures(nn.Module):
    """A fixed-seed random conv net: (B, 3, 64, 64) floats in [0, 255] -> (B, 256) features.
    Deterministic across machines (weights drawn from a seeded CPU generator)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)
                                   for c_in, c_out in ((3, 32), (32, 64), (64, 64)))
        for conv in self.convs:
            fan_in = conv.in_channels * 16
            conv.weight.data = torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
            conv.bias.data = torch.randn(conv.bias.shape, generator=generator) * 0.1
        self.num_features = 64 * 4
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (RANDOM_SIZE, RANDOM_SIZE):
            raise ValueError(f"RandomFeatures expects {RANDOM_SIZE}x{RANDOM_SIZE} inputs, got {tuple(x.shape[-2:])}")
        x = x.to(self.convs[0].weight.dtype) / 127.5 - 1.0  # float64 under torchmetrics.set_dtype
        for conv in self.convs:
            x = torch.relu(conv(x))
        return nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


@dataclass
class Extractor:
    name: str
    model: Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) floats in [0, 255] -> (B, D)
    fn_resize: Callable | None  # clean-fid's custom_fn_resize; None = the mode's own resize
    comparable_to_paper: bool
    resize: str


def build_extractor(name: str = "random", mode: str = "clean", device: str = "cpu", seed: int = 0) -> Extractor:
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}': use one of {MODES}")
    if name == "inception":
        from cleanfid.features import build_feature_extractor

        weights.cleanfid_inception(mode)
        model = build_feature_extractor(mode, torch.device(device), use_dataparallel=False)
        return Extractor("inception-2015-12-05 (clean-fid)", model, None, True, RESIZE[mode])
    if name == "random":
        from cleanfid.resize import make_resizer

        if mode == "legacy_tensorflow":
            raise ValueError("the random extractor has no legacy_tensorflow resize; use mode clean or legacy_pytorch")
        library, filt = ("PIL", "bicubic") if mode == "clean" else ("PyTorch", "bilinear")
        model = RandomFeatures(seed).to(device)
        return Extractor(f"random_conv_v1(seed={seed})", model, make_resizer(library, False, filt, (RANDOM_SIZE,) * 2),
                         False, RESIZE[mode].replace("299x299", f"{RANDOM_SIZE}x{RANDOM_SIZE}"))
    raise ValueError(f"unknown feature extractor '{name}': use inception or random")


# ---------------------------------------------------------------- statistics

def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    if len(feats) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(feats)}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """clean-fid's Fréchet distance (scipy sqrtm), with a clear error for feature sets of different sizes."""
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape} vs {mu2.shape}; were both sets made by the same extractor?")
    return float(cleanfid_frechet(mu1, sigma1, mu2, sigma2))


def kernel_distance(feats1, feats2, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0) -> float:
    """clean-fid's KID (cubic polynomial kernel, unbiased MMD over random subsets). clean-fid draws the
    subsets from numpy's global generator: it is seeded here and restored afterwards."""
    from cleanfid.fid import kernel_distance as cleanfid_kid

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(cleanfid_kid(np.asarray(feats1, np.float64), np.asarray(feats2, np.float64),
                                  num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


# ---------------------------------------------------------------- sharded features

def file_features(files: list[Path], extractor: Extractor, mode: str, batch_size: int = 64,
                  device: str = "cpu", num_workers: int = 0) -> np.ndarray:
    """Features of image files, loaded and resized by clean-fid."""
    from cleanfid.fid import get_files_features

    return get_files_features([str(f) for f in files], extractor.model, num_workers=num_workers,
                              batch_size=batch_size, device=torch.device(device), mode=mode,
                              custom_fn_resize=extractor.fn_resize, verbose=False)


def _shard_path(cache_dir: Path, files: list[Path], extractor: Extractor, mode: str) -> Path:
    digest = hashlib.sha1(json.dumps([extractor.name, mode, [str(f.resolve()) for f in files],
                                      [f.stat().st_size for f in files]]).encode()).hexdigest()[:16]
    return cache_dir / f"feats-{digest}.npz"


def _save_npz(path: Path, **arrays) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def shards(files: list[Path], shard_size: int) -> list[list[Path]]:
    return [files[i:i + shard_size] for i in range(0, len(files), shard_size)]


IMAGE_CHECK = "every image decoded in full before its features are computed; damaged images refuse the run"
DAMAGED_FIX = {"sample": "regenerate them (FID is not computed on a smaller set than was asked for)",
               "reference": "replace them (`python -m eval.coco refs` rewrites missing and damaged ones)"}


def refuse_damaged(files: list[Path], what: str, total: int | None = None) -> None:
    """Raise ValueError naming how many of `files` are damaged and the first few, with the fix."""
    refuse_damaged_images(files, what, total, DAMAGED_FIX.get(what, "replace them"))


def uncached(files: list[Path], cache_dir, extractor: Extractor, mode: str, shard_size: int) -> list[Path]:
    """The files whose shard has no cached features (all of them without a cache)."""
    if cache_dir is None:
        return list(files)
    return [f for part in shards(files, shard_size)
            if not _shard_path(Path(cache_dir), part, extractor, mode).exists() for f in part]


def shard_features(files: list[Path], cache_dir: Path, extractor: Extractor, mode: str, check: bool = True,
                   what: str = "sample", **kwargs) -> np.ndarray:
    """Features of one shard, from its cache file or computed and saved (atomically); with `check`, damaged
    images are refused first."""
    path = _shard_path(cache_dir, files, extractor, mode)
    if path.exists():
        return np.load(path)["feats"]
    if check:
        refuse_damaged(files, what)
    feats = file_features(files, extractor, mode, **kwargs)
    _save_npz(path, feats=feats, files=np.array([str(f) for f in files]))
    return feats


def sharded_features(files: list[Path], cache_dir: str | Path | None, extractor: Extractor, mode: str,
                     shard_size: int = 1000, desc: str = "features", check: bool = True, what: str = "sample",
                     **kwargs) -> np.ndarray:
    """Features of all files, merged from per-shard caches; only missing shards are computed. With `check`,
    damaged images among the files still to compute are refused before any is computed."""
    if not files:
        raise ValueError(f"no images to compute {desc} of")
    if check:
        refuse_damaged(uncached(files, cache_dir, extractor, mode, shard_size), what, len(files))
    if cache_dir is None:
        return file_features(files, extractor, mode, **kwargs)
    parts = [shard_features(part, Path(cache_dir), extractor, mode, check=False, **kwargs)
             for part in progress(shards(files, shard_size), desc=desc, unit="shard")]
    return np.concatenate(parts)


# ---------------------------------------------------------------- reference sets

def reference_features(ref: str | Path, extractor: Extractor, mode: str, cache_dir, shard_size: int,
                       **kwargs) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, dict]:
    """(feats or None, mu, sigma, info) of a reference folder or a statistics .npz: ours from `make-stats`
    (mu, sigma, feats, protocol), clean-fid's statistics (mu, sigma) or clean-fid's `_kid.npz` (feats)."""
    ref = Path(ref)
    if problem := reference_problem(ref):
        raise FileNotFoundError(problem)
    if ref.suffix == ".npz":
        try:
            data = dict(np.load(ref))
            info = json.loads(str(data["protocol"])) if "protocol" in data else {}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:  # zero bytes, torn, foreign
            raise ValueError(f"{ref} is not a readable .npz ({type(e).__name__}: {e}); remake it with "
                             f"`python -m eval.fid make-stats`") from e
        if info and (info.get("feature_extractor"), info.get("mode")) != (extractor.name, mode):
            raise ValueError(f"{ref} was made with {info.get('feature_extractor')}/{info.get('mode')}, "
                             f"not {extractor.name}/{mode}; remake it or change --extractor/--mode")
        feats = data.get("feats")
        if "mu" in data and "sigma" in data:
            mu, sigma = data["mu"], data["sigma"]
        elif feats is not None:
            mu, sigma = feature_stats(feats)
        else:
            raise ValueError(f"{ref} holds neither mu/sigma nor feats (keys: {sorted(data)}); pass statistics made "
                             f"by `python -m eval.fid make-stats` or clean-fid's .npz / _kid.npz")
        n = info.get("n") or (len(feats) if feats is not None else None)
        return feats, mu, sigma, {"reference": str(ref), "reference_n": n}
    files = reference_files(ref)
    feats = sharded_features(files, cache_dir, extractor, mode, shard_size, desc="reference features",
                             what="reference", **kwargs)
    mu, sigma = feature_stats(feats)
    return feats, mu, sigma, {"reference": str(ref), "reference_n": len(files),
                              "reference_formats": sorted({f.suffix.lower() for f in files})}


def reference_problem(ref: str | Path) -> str | None:
    """Why `ref` is neither a folder of reference images nor a statistics .npz file, or None."""
    if not str(ref).strip():  # Path("") would be the current folder
        return "--ref is empty; give a folder of reference images or statistics from `python -m eval.fid make-stats`"
    ref = Path(ref)
    if ref.suffix == ".npz":
        if ref.is_file():
            return None
        if ref.is_dir():
            return f"--ref {ref} is a folder; a statistics file is an .npz file from `python -m eval.fid make-stats`"
        return f"reference statistics {ref} not found; make them with `python -m eval.fid make-stats`"
    if ref.is_dir():
        return None
    if ref.exists():
        return (f"--ref {ref} is a file but not statistics (.npz); give a folder of reference images or an .npz from "
                f"`python -m eval.fid make-stats`")
    return (f"--ref {ref} does not exist; give a folder of reference images (`python -m eval.coco refs` makes "
            f"COCO's) or statistics from `python -m eval.fid make-stats`")


def reference_files(ref: str | Path) -> list[Path]:
    """The images of a reference folder; an error naming --ref when it has none."""
    files = image_files(ref)
    if not files:
        raise FileNotFoundError(f"--ref {ref} holds no images (.png, .jpg, .jpeg, .webp); give the folder of "
                                f"reference images or statistics from `python -m eval.fid make-stats`")
    return files


def make_reference_stats(ref_dir: str | Path, out: str | Path, extractor: str = "random", mode: str = "clean",
                         device: str | None = None, batch_size: int = 64, cache_dir=None, shard_size: int = 1000) -> Path:
    """clean-fid's make_custom_stats, written to a file of your choice: mu, sigma, feats (for KID), protocol."""
    device = resolve_device(device)
    ext = build_extractor(extractor, mode, device)
    files = image_files(ref_dir)
    if not files:
        raise FileNotFoundError(f"{ref_dir} holds no images (.png, .jpg, .jpeg, .webp); give the folder of "
                                f"reference images")
    feats = sharded_features(files, cache_dir, ext, mode, shard_size, desc="reference features",
                             what="reference", batch_size=batch_size, device=device)
    mu, sigma = feature_stats(feats)
    protocol = {"feature_extractor": ext.name, "mode": mode, "resize": ext.resize, "n": len(files),
                "source": str(ref_dir), "formats": sorted({f.suffix.lower() for f in files})}
    return _save_npz(Path(out), mu=mu, sigma=sigma, feats=feats, protocol=np.array(json.dumps(protocol)))


# ---------------------------------------------------------------- torchmetrics cross-check

def torchmetrics_fid(gen_files: list[Path], ref_files: list[Path], extractor: Extractor, mode: str,
                     antialias: bool = True, weights_path=None, batch_size: int = 64) -> float:
    """FID from torchmetrics' FrechetInceptionDistance in float64. With the Inception extractor it
    uses torchmetrics' own Inception and resize (pytorch-fid weights at `weights_path`, `antialias`);
    with a custom extractor it feeds clean-fid-resized images to that module, checking our statistics."""
    from cleanfid.utils import ResizeDataset
    from torchmetrics.image.fid import FrechetInceptionDistance

    if isinstance(extractor.model, nn.Module):
        metric = FrechetInceptionDistance(feature=extractor.model, reset_real_features=False)
    else:
        metric = FrechetInceptionDistance(feature=2048, antialias=antialias, reset_real_features=False,
                                          feature_extractor_weights_path=str(weights.torchmetrics_inception(weights_path)))
    metric.set_dtype(torch.float64)
    for files, real in ((ref_files, True), (gen_files, False)):
        dataset = ResizeDataset([str(f) for f in files], mode=mode)
        if extractor.fn_resize is not None:
            dataset.fn_resize = extractor.fn_resize
        else:  # torchmetrics resizes to 299 itself; give it the uint8 images
            dataset.fn_resize = lambda x: x
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            metric.update(batch if extractor.fn_resize is not None else batch.round().to(torch.uint8), real=real)
    return float(metric.compute())


# ---------------------------------------------------------------- evaluator

def _fid_and_kid(gen: np.ndarray, ref_feats, mu_r, sigma_r, kid: bool, n_boot: int, seed: int) -> dict:
    def fid_of(idx):
        return frechet_distance(*feature_stats(gen[idx]), mu_r, sigma_r)

    out = {"fid": bootstrap_statistic(fid_of, len(gen), n_boot=n_boot, seed=seed)}
    if kid:
        out["kid"] = bootstrap_statistic(lambda idx: kernel_distance(gen[idx], ref_feats, seed=seed),
                                         len(gen), n_boot=n_boot, seed=seed)
    return out


def _seed_groups(samples) -> dict[int, list[int]]:
    """Indices of the images of each seed, when there are several seeds with 2+ images each."""
    groups: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(sample.seed, []).append(i)
    return groups if len(groups) > 1 and min(map(len, groups.values())) >= 2 else {}


def evaluate(samples_dir, ref: str, mode: str = "clean", extractor: str = "random", kid: bool = True,
             n_boot: int = 50, crosscheck: bool = False, antialias: bool = True, torchmetrics_weights=None,
             batch_size: int = 64, device: str | None = None, cache_dir=None, shard_size: int = 1000,
             seed: int = 0, shard=None, out=None) -> dict:
    """FID (and KID) of a sample folder against reference images or statistics (.npz). With
    `shard=(k, K)`: only the features of shard k of K (whole feature shards of `shard_size` images),
    cached and listed in a partial result (returned, and written to `out`); `merge` computes the
    statistics, FID, KID and their bootstrap from the K partials."""
    if problem := reference_problem(ref):  # every check that needs no features comes first
        raise FileNotFoundError(problem)
    if not crosscheck and (torchmetrics_weights is not None or not antialias):
        raise ValueError("--torchmetrics-weights and --no-antialias set up the torchmetrics cross-check: add "
                         "--crosscheck, or leave them out")
    statistics = Path(ref).suffix == ".npz"
    if crosscheck and statistics:
        raise ValueError("the torchmetrics cross-check (--crosscheck) needs a reference image folder as --ref, "
                         "not statistics")
    if crosscheck and shard is not None:
        raise ValueError("the torchmetrics cross-check (--crosscheck) reads the whole set at once: run it without "
                         "--shard")
    device = resolve_device(device)
    samples = load_samples(samples_dir)
    ext = build_extractor(extractor, mode, device)
    if crosscheck and extractor == "inception":
        weights.torchmetrics_inception(torchmetrics_weights)  # a missing file is named before hours of features
    files = [Path(samples_dir) / s.file for s in samples]
    cache_dir = Path(samples_dir) / "eval" / "fid_cache" if cache_dir is None else cache_dir
    opts = {"batch_size": batch_size, "device": device, "check": False}
    if shard is not None:
        options = {"ref": str(ref), "mode": mode, "extractor": extractor, "kid": kid, "n_boot": n_boot,
                   "batch_size": batch_size, "cache_dir": str(cache_dir), "shard_size": shard_size, "seed": seed}
        parts = shards(files, shard_size)
        span = shard_range(len(parts), 1, shard)
        return shard_partial("fid", samples_dir, shard, out, options,
                             lambda: _feature_partial(parts[span.start:span.stop], Path(cache_dir), ext, mode, opts))
    refuse_damaged(uncached(files, cache_dir, ext, mode, shard_size), "sample", len(files))
    if len(samples) < 2:
        raise ValueError(f"{samples_dir} holds {len(samples)} image; FID needs at least 2 (and is only comparable "
                         f"to papers at their count, e.g. 30,000 for COCO)")
    ref_files = [] if statistics else reference_files(ref)
    refuse_damaged(uncached(ref_files, cache_dir, ext, mode, shard_size), "reference", len(ref_files))
    if statistics:
        reference = _statistics_reference(ref, ext, mode, cache_dir, shard_size, kid, opts)
    gen = sharded_features(files, cache_dir, ext, mode, shard_size, desc="sample features", **opts)
    if not statistics:
        reference = reference_features(ref, ext, mode, cache_dir, shard_size, **opts)
    extra = {}
    if crosscheck:
        extra["crosscheck"] = {"fid_torchmetrics": torchmetrics_fid(files, ref_files, ext, mode, antialias,
                                                                    torchmetrics_weights, batch_size),
                               "torchmetrics_antialias": antialias}
    return _result(samples_dir, samples, gen, reference, ext, mode, kid, n_boot, seed, extra)


def merge(partials, device: str | None = None) -> dict:
    """FID and KID of a folder from the partial results of its K shards: the shards' cached features in
    order are the unsharded features, so mean, covariance and every number equal one unsharded run's.
    Reference features (an image folder) are computed here on `device` where not cached yet."""
    parts = read_partials(partials, "fid")
    header, o = parts[0]["partial"], parts[0]["partial"]["options"]
    samples_dir = header["samples_dir"]
    samples = load_samples(samples_dir)
    gen = merged_features(parts)
    if len(gen) != len(samples):
        raise ValueError(f"the partials of {samples_dir} hold {len(gen)} features for its {len(samples)} samples; "
                         f"score its shards again")
    device = resolve_device(device)
    ext = build_extractor(o["extractor"], o["mode"], device)
    if len(samples) < 2:
        raise ValueError(f"{samples_dir} holds {len(samples)} image; FID needs at least 2")
    opts = {"batch_size": o["batch_size"], "device": device, "check": False}
    if Path(o["ref"]).suffix == ".npz":
        reference = _statistics_reference(o["ref"], ext, o["mode"], o["cache_dir"], o["shard_size"], o["kid"], opts)
    else:
        if problem := reference_problem(o["ref"]):
            raise FileNotFoundError(problem)
        ref_files = reference_files(o["ref"])
        refuse_damaged(uncached(ref_files, o["cache_dir"], ext, o["mode"], o["shard_size"]), "reference",
                       len(ref_files))
        reference = reference_features(o["ref"], ext, o["mode"], o["cache_dir"], o["shard_size"], **opts)
    return _result(samples_dir, samples, gen, reference, ext, o["mode"], o["kid"], o["n_boot"], o["seed"])


def merged_features(partials: list[dict]) -> np.ndarray:
    """The sample features of the K shards (read_partials order), concatenated: the unsharded features."""
    feats = []
    for part in partials:
        for path in part["feature_files"]:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}, the features of shard {part['partial']['shard']}, is gone; score "
                                        f"that shard again")
            feats.append(np.load(path)["feats"])
    if not feats:
        raise ValueError("the partials list no features")
    return np.concatenate(feats)


def _feature_partial(parts: list[list[Path]], cache_dir: Path, ext: Extractor, mode: str, opts: dict) -> dict:
    """Compute (or find cached) the features of these feature shards; the partial lists their files."""
    refuse_damaged([f for part in parts if not _shard_path(cache_dir, part, ext, mode).exists() for f in part], "sample")
    for part in progress(parts, desc="sample features", unit="shard"):
        shard_features(part, cache_dir, ext, mode, **opts)
    return {"protocol": {"feature_extractor": ext.name, "mode": mode, "resize": ext.resize},
            "per_image": [], "feature_files": [str(_shard_path(cache_dir, part, ext, mode)) for part in parts],
            "n_images": sum(map(len, parts))}


def _statistics_reference(ref, ext: Extractor, mode: str, cache_dir, shard_size: int, kid: bool, opts: dict):
    reference = reference_features(ref, ext, mode, cache_dir, shard_size, **opts)
    if kid and reference[0] is None:
        raise ValueError(f"KID needs the reference features, and {ref} holds only mu/sigma: pass the features "
                         f"(`python -m eval.fid make-stats`, or clean-fid's _kid.npz), or --no-kid for FID alone")
    return reference


def _result(samples_dir, samples, gen: np.ndarray, reference, ext: Extractor, mode: str, kid: bool, n_boot: int,
            seed: int, extra: dict | None = None) -> dict:
    ref_feats, mu_r, sigma_r, ref_info = reference
    aggregate = _fid_and_kid(gen, ref_feats, mu_r, sigma_r, kid, n_boot, seed)
    by_seed = {str(sd): _fid_and_kid(gen[idx], ref_feats, mu_r, sigma_r, kid, n_boot, seed)
               for sd, idx in _seed_groups(samples).items()}
    files = [Path(samples_dir) / s.file for s in samples]
    protocol = {"feature_extractor": ext.name, "mode": mode, "resize": ext.resize, "n_samples": len(files),
                "sample_formats": sorted({f.suffix.lower() for f in files}), **ref_info, "image_check": IMAGE_CHECK,
                "kid": {"num_subsets": 100, "max_subset_size": 1000} if kid else None,
                "ci": f"bootstrap over generated images (reference fixed), {n_boot} resamples, percentile "
                      f"interval shifted by the bootstrap bias", "fid_dtype": "float64",
                "versions": {pkg: version(pkg) for pkg in ("clean-fid", "torchmetrics", "torch", "pillow")},
                **generation_protocol(samples_dir)}
    return set_result("fid", aggregate, protocol, ext.comparable_to_paper, by_seed, extra)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", default="clean", choices=MODES)
    parser.add_argument("--extractor", default="random", choices=("random", "inception"),
                        help="inception = clean-fid's (comparable to papers); random = embedded, offline")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--cache-dir", type=output_folder("a folder for the feature cache, or leave it out"),
                        default=None, help="shard feature cache (default SAMPLES_DIR/eval/fid_cache)")
    parser.add_argument("--shard-size", type=positive_int, default=1000)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref", required=True, type=non_empty("a folder of reference images or a statistics .npz"),
                        help="reference image folder or statistics .npz")
    _add_common(parser)
    parser.add_argument("--no-kid", dest="kid", action="store_false")
    parser.add_argument("--n-boot", type=positive_int, default=50)
    parser.add_argument("--crosscheck", action="store_true", help="also compute torchmetrics' FID (float64)")
    parser.add_argument("--no-antialias", dest="antialias", action="store_false",
                        help="torchmetrics resize setting (with --crosscheck)")
    parser.add_argument("--torchmetrics-weights", type=non_empty("the pt_inception-2015-12-05-6726825d.pth file"),
                        default=None, help="pt_inception-2015-12-05-6726825d.pth (with --crosscheck)")
    parser.add_argument("--seed", type=whole_number(0, 2**32 - 1), default=0, help="bootstrap and KID subset seed")


def _stats_file(text: str) -> str:
    """argparse type of make-stats' OUT: a file ending in .npz, which --ref recognises as statistics."""
    path = output_file("the statistics file to write, ending in .npz")(text)
    if Path(path).suffix != ".npz":
        raise argparse.ArgumentTypeError(f"{text} does not end in .npz; --ref reads a file as statistics by that "
                                         f"suffix, so name it e.g. {Path(path).with_suffix('.npz').name}")
    return path


def _subcommand(argv: list[str]) -> None:
    parser = OneLineParser(prog="python -m eval.fid")
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("make-stats", help="reference statistics .npz from an image folder")
    stats.add_argument("ref_dir", type=existing_folder("the folder of reference images"))
    stats.add_argument("out", type=_stats_file)
    _add_common(stats)
    shard = sub.add_parser("shard", help="compute one shard of a folder's features (e.g. a SLURM array task)")
    shard.add_argument("folder", type=existing_folder("a sample folder or a reference image folder"),
                       help="sample folder or reference image folder")
    shard.add_argument("--index", type=whole_number(0), required=True)
    _add_common(shard)
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level="INFO")
    if args.pop("command") == "make-stats":
        print(make_reference_stats(**args))
        return
    device = resolve_device(args["device"])
    folder = Path(args["folder"])
    listed = (folder / "samples.jsonl").exists()
    files = [folder / s.file for s in load_samples(folder)] if listed else image_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no images (.png, .jpg, .jpeg, .webp) and no samples.jsonl")
    parts = shards(files, args["shard_size"])
    if not 0 <= args["index"] < len(parts):
        raise ValueError(f"shard index {args['index']} out of range: {folder} has {len(parts)} shards "
                         f"(--index 0..{len(parts) - 1} with --shard-size {args['shard_size']})")
    cache_dir = args["cache_dir"] or folder / "eval" / "fid_cache"
    ext = build_extractor(args["extractor"], args["mode"], device)
    shard_features(parts[args["index"]], Path(cache_dir), ext, args["mode"], what="sample" if listed else "reference",
                   batch_size=args["batch_size"], device=device)
    print(f"shard {args['index']} of {len(parts)} done in {cache_dir}")


@exits_on_user_error("python -m eval.fid")
def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["make-stats"], ["shard"]):
        _subcommand(argv)
    else:
        run_cli("fid", evaluate, _add_arguments, argv, merge)


if __name__ == "__main__":
    main()
