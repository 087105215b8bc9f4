"""FVD (Unterthiner et al. 2018): the Fréchet distance between the I3D features of generated clips and of
reference clips, with FID's statistics and Fréchet arithmetic (eval.fid: mean and covariance in float64,
clean-fid's sqrtm-based distance) and FID's bootstrap over the generated set.

Clips are read like VBench reads them (eval.vbench.clips): a gentron sample folder (each clip's PNG frames,
or its GIF with `--source video`) or a plain folder of .mp4 / .gif files and frame folders; the reference
is such a folder or statistics from `python -m eval.fvd make-stats`. `--num-frames N` keeps each clip's first
N frames (papers use 16) and refuses shorter clips.

Two feature extractors:
- `i3d`: the Kinetics-400 I3D (the TF-Hub model FVD was defined with, as the TorchScript port
  i3d_torchscript.pt that StyleGAN-V and later video papers load), from --i3d FILE or FOLDER,
  $GENTRON_I3D, or torch hub's checkpoints folder. It gets uint8 clips [B, 3, T, H, W] and rescales them to
  [-1, 1] and resizes them to 224 x 224 itself (rescale=True, resize=True); the features are its 400
  logits before the softmax (return_features=True).
- `random` (the default): a fixed-seed random 3D conv net on 64 x 64 frames: no download, deterministic,
  meaningless outside this project (`comparable_to_paper: false`), for tests and offline runs.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from eval import weights
from eval.arguments import OneLineParser, device_name, existing_folder, non_empty, output_file, whole_number
from eval.common import batched, generation_protocol, resolve_device, run_cli, set_result
from eval.fid import feature_stats, frechet_distance
from eval.stats import bootstrap_statistic
from eval.vbench.clips import SOURCES, Clip, folder_clips, frame_images, rgb_video
from gentron.errors import exits_on_user_error, positive_int
from gentron.io import atomic_write_bytes

log = logging.getLogger(__name__)

EXTRACTORS = ("random", "i3d")
I3D_ENV = "GENTRON_I3D"
RANDOM_SIZE = 64


class RandomVideoFeatures(nn.Module):
    """A fixed-seed random 3D conv net: (B, 3, T, H, W) values in [0, 255] -> (B, 256) features, frames
    resized to 64 x 64. Temporal kernels of 3, so frame order changes the features."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList(nn.Conv3d(c_in, c_out, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1))
                                   for c_in, c_out in ((3, 32), (32, 64), (64, 64)))
        for conv in self.convs:
            fan_in = conv.in_channels * 48
            conv.weight.data = torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
            conv.bias.data = torch.randn(conv.bias.shape, generator=generator) * 0.1
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.float().permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        frames = nn.functional.interpolate(frames, size=(RANDOM_SIZE, RANDOM_SIZE), mode="bilinear",
                                           align_corners=False, antialias=True)
        x = frames.reshape(b, t, c, RANDOM_SIZE, RANDOM_SIZE).permute(0, 2, 1, 3, 4) / 127.5 - 1.0
        for conv in self.convs:
            x = torch.relu(conv(x))
        return nn.functional.adaptive_avg_pool3d(x, (1, 2, 2)).flatten(1)


class I3DFeatures:
    """The Kinetics-400 I3D TorchScript: uint8 clips in, its 400 pre-softmax logits out."""

    def __init__(self, path: str | None, device: str):
        self.path = weights.i3d_checkpoint(path or os.environ.get(I3D_ENV) or None)
        try:
            self.model = torch.jit.load(str(self.path), map_location=device).eval()
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{self.path} is not a TorchScript file ({type(e).__name__}); give {weights.I3D_FILE} "
                             f"({weights.I3D_URL})") from e

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.round().clamp(0, 255).to(torch.uint8), rescale=True, resize=True, return_features=True)


def build_extractor(name: str = "random", i3d: str | None = None, device: str = "cpu", seed: int = 0):
    """(callable on (B, 3, T, H, W) clips of values 0..255, its protocol)."""
    if name == "random":
        model = RandomVideoFeatures(seed).to(device)
        return model, {"feature_extractor": f"random_conv3d_v1(seed={seed})", "resize": "64x64 bilinear (antialiased)",
                       "comparable_to_paper": False}
    if name == "i3d":
        model = I3DFeatures(i3d, device)
        return model, {"feature_extractor": f"Kinetics-400 I3D TorchScript ({model.path.name})",
                       "resize": "inside the TorchScript (rescale=True, resize=True): 224x224, values to [-1, 1]",
                       "features": "400 logits before the softmax (return_features=True)", "comparable_to_paper": True}
    raise ValueError(f"unknown FVD feature extractor '{name}': use one of {EXTRACTORS}")


def clip_array(clip: Clip, num_frames: int | None) -> torch.Tensor:
    """(3, T, H, W) float values 0..255 of a clip, its first `num_frames` frames when given."""
    if clip.is_folder:
        frames = torch.from_numpy(np.stack([np.asarray(im) for im in frame_images(clip.path)])).permute(0, 3, 1, 2)
    else:
        frames = rgb_video(clip.path)
    if num_frames is not None:
        if len(frames) < num_frames:
            raise ValueError(f"{clip.path} has {len(frames)} frames, fewer than --num-frames {num_frames}; sample longer "
                             f"clips or lower --num-frames")
        frames = frames[:num_frames]
    return frames.float().permute(1, 0, 2, 3)


def clip_features(clips: list[Clip], extractor, batch_size: int = 8, device: str = "cpu",
                  num_frames: int | None = None, desc: str = "FVD features") -> np.ndarray:
    """(N, D) float64 features of clips; clips of one batch must share their shape."""
    feats = []
    for batch in tqdm(list(batched(clips, batch_size)), desc=desc, unit="batch"):
        arrays = [clip_array(c, num_frames) for c in batch]
        shapes = {tuple(a.shape) for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"clips of different shapes {sorted(shapes)} (e.g. {batch[0].path}); give --num-frames "
                             f"to cut them to one length, or resize them to one frame size")
        with torch.no_grad():
            feats.append(torch.as_tensor(extractor(torch.stack(arrays).to(device))).double().cpu().numpy())
    return np.concatenate(feats)


def reference_statistics(ref: str | Path, extractor, info: dict, **kwargs) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mu, sigma, protocol) of a reference folder of clips or of statistics from `make-stats`."""
    ref = Path(ref)
    if ref.suffix == ".npz":
        if not ref.is_file():
            raise FileNotFoundError(f"reference statistics {ref} not found; make them with `python -m eval.fvd make-stats`")
        try:
            data = dict(np.load(ref))
            made = json.loads(str(data["protocol"]))
            mu, sigma = data["mu"], data["sigma"]
        except (OSError, ValueError, EOFError, KeyError) as e:
            raise ValueError(f"{ref} is not statistics from `python -m eval.fvd make-stats` ({type(e).__name__}); "
                             f"remake it") from e
        if made.get("feature_extractor") != info["feature_extractor"] or made.get("num_frames") != kwargs.get("num_frames"):
            raise ValueError(f"{ref} was made with {made.get('feature_extractor')} on {made.get('num_frames')} frames, "
                             f"not {info['feature_extractor']} on {kwargs.get('num_frames')}; remake it or match "
                             f"--extractor / --num-frames")
        return mu, sigma, {"reference": str(ref), "reference_n": made.get("n")}
    if not ref.is_dir():
        raise FileNotFoundError(f"--ref {ref}: neither a folder of reference clips nor statistics (.npz) from "
                                f"`python -m eval.fvd make-stats`")
    clips = folder_clips(ref)
    mu, sigma = feature_stats(clip_features(clips, extractor, desc="reference FVD features", **kwargs))
    return mu, sigma, {"reference": str(ref), "reference_n": len(clips)}


def evaluate(samples_dir, ref: str, extractor: str = "random", i3d: str | None = None, num_frames: int | None = None,
             source: str = "frames", batch_size: int = 8, n_boot: int = 50, seed: int = 0,
             device: str | None = None) -> dict:
    """FVD of a folder of clips against reference clips or their statistics (.npz from make-stats)."""
    clips = folder_clips(samples_dir, source)
    if len(clips) < 2:
        raise ValueError(f"{samples_dir} holds {len(clips)} clip; FVD needs at least 2 (papers use 2,048)")
    device = resolve_device(device)
    model, info = build_extractor(extractor, i3d, device)
    kwargs = {"batch_size": batch_size, "device": device, "num_frames": num_frames}
    mu_r, sigma_r, ref_info = reference_statistics(ref, model, info, **kwargs)
    gen = clip_features(clips, model, **kwargs)
    aggregate = {"fvd": bootstrap_statistic(lambda idx: frechet_distance(*feature_stats(gen[idx]), mu_r, sigma_r),
                                            len(gen), n_boot=n_boot, seed=seed)}
    comparable = info.pop("comparable_to_paper")
    protocol = {**info, "num_frames": num_frames or "all", "n_samples": len(clips), "source": source, **ref_info,
                "arithmetic": "eval.fid: float64 mean and covariance, clean-fid's Fréchet distance",
                "ci": f"bootstrap over generated clips (reference fixed), {n_boot} resamples",
                "versions": {pkg: version(pkg) for pkg in ("torch", "clean-fid", "pillow")},
                **generation_protocol(samples_dir)}
    return set_result("fvd", aggregate, protocol, comparable)


def make_reference_stats(ref_dir, out, extractor: str = "random", i3d: str | None = None,
                         num_frames: int | None = None, batch_size: int = 8, device: str | None = None) -> Path:
    """mu, sigma and the protocol of a folder of reference clips, in an .npz that --ref reads."""
    device = resolve_device(device)
    model, info = build_extractor(extractor, i3d, device)
    clips = folder_clips(ref_dir)
    mu, sigma = feature_stats(clip_features(clips, model, batch_size, device, num_frames, "reference FVD features"))
    protocol = {"feature_extractor": info["feature_extractor"], "num_frames": num_frames, "n": len(clips),
                "source": str(ref_dir)}
    buffer = io.BytesIO()
    np.savez(buffer, mu=mu, sigma=sigma, protocol=np.array(json.dumps(protocol)))
    return atomic_write_bytes(Path(out), buffer.getvalue())


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--extractor", default="random", choices=EXTRACTORS,
                        help="i3d = the Kinetics-400 I3D (comparable to papers); random = embedded, offline")
    parser.add_argument("--i3d", default=None, type=non_empty(f"{weights.I3D_FILE} or the folder holding it"),
                        help=f"{weights.I3D_FILE} or its folder (default ${I3D_ENV}, else torch hub's checkpoints)")
    parser.add_argument("--num-frames", type=whole_number(2), default=None,
                        help="keep each clip's first N frames (papers: 16); default all, one length for every clip")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda, cuda:N or auto (default)")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref", required=True, type=non_empty("a folder of reference clips or a statistics .npz"),
                        help="folder of reference clips, or statistics from `python -m eval.fvd make-stats`")
    _add_common(parser)
    parser.add_argument("--source", default="frames", choices=SOURCES,
                        help="read a sample's PNG frames (default) or its encoded file")
    parser.add_argument("--n-boot", type=positive_int, default=50)
    parser.add_argument("--seed", type=whole_number(0, 2**32 - 1), default=0, help="bootstrap seed")


def _make_stats(argv: list[str]) -> None:
    parser = OneLineParser(prog="python -m eval.fvd make-stats")
    parser.add_argument("ref_dir", type=existing_folder("the folder of reference clips"))
    parser.add_argument("out", type=output_file("the statistics file to write, ending in .npz"))
    _add_common(parser)
    args = vars(parser.parse_args(argv))
    if Path(args["out"]).suffix != ".npz":
        parser.error(f"argument out: {args['out']} does not end in .npz; --ref reads a file as statistics by that suffix")
    logging.basicConfig(level="INFO")
    print(make_reference_stats(**args))


@exits_on_user_error("python -m eval.fvd")
def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["make-stats"]:
        _make_stats(argv[1:])
    else:
        run_cli("fvd", evaluate, _add_arguments, argv)


if __name__ == "__main__":
    main()
