"""eval.fvd: FID's arithmetic on video features, the random 3D extractor, reference statistics, the I3D
loaded from a folder (a TorchScript stand-in with the real model's call signature), and the refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval import fid, fvd
from eval.vbench.clips import folder_clips
from tests.test_vbench import moving_frames, save_frames, save_gif


def clip_folder(root: Path, count: int, step: int, seed: int, frames: int = 6) -> Path:
    """A gentron-layout sample folder of `count` clips whose square moves `step` pixels a frame."""
    rows = []
    for i in range(count):
        video = moving_frames(frames, height=32, width=48, seed=seed + i, step=step)
        save_gif(root / f"c{i}.gif", video)
        save_frames(root / f"c{i}", video)
        rows.append({"file": f"c{i}.gif", "frames": f"c{i}/", "prompt": "p", "seed": 0, "prompt_id": 0, "index": i})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_fvd_is_the_frechet_distance_of_fid_on_the_clip_features(tmp_path):
    samples = clip_folder(tmp_path / "samples", 6, step=2, seed=0)
    ref = clip_folder(tmp_path / "ref", 6, step=5, seed=100)
    out = fvd.evaluate(samples, str(ref), n_boot=5, device="cpu")
    model, _ = fvd.build_extractor("random")
    gen = fvd.clip_features(folder_clips(samples), model)
    real = fvd.clip_features(folder_clips(ref), model)
    expected = fid.frechet_distance(*fid.feature_stats(gen), *fid.feature_stats(real))
    assert out["aggregate"]["fvd"]["mean"] == pytest.approx(expected, rel=1e-9) and expected > 0
    assert fvd.frechet_distance is fid.frechet_distance and fvd.feature_stats is fid.feature_stats  # one arithmetic
    assert out["comparable_to_paper"] is False and out["protocol"]["n_samples"] == 6
    # against itself: zero, up to sqrtm's rounding
    assert fvd.evaluate(samples, str(samples), n_boot=2, device="cpu")["aggregate"]["fvd"]["mean"] == pytest.approx(0, abs=1e-6)


def test_the_random_extractor_sees_frame_order_and_is_deterministic():
    clip = torch.from_numpy(np.stack(moving_frames(6, height=32, width=48))).permute(3, 0, 1, 2).float()[None]
    a, b = fvd.RandomVideoFeatures(0), fvd.RandomVideoFeatures(0)
    assert torch.equal(a(clip), b(clip)) and a(clip).shape == (1, 256)
    assert not torch.allclose(a(clip), a(clip.flip(2)))  # reversed in time: other features
    assert not torch.equal(a(clip), fvd.RandomVideoFeatures(1)(clip))


def test_reference_statistics_give_the_folders_fvd(tmp_path):
    samples = clip_folder(tmp_path / "samples", 4, step=2, seed=0)
    ref = clip_folder(tmp_path / "ref", 5, step=6, seed=50)
    stats = fvd.make_reference_stats(ref, tmp_path / "ref.npz", num_frames=4)
    by_folder = fvd.evaluate(samples, str(ref), num_frames=4, n_boot=3, device="cpu")
    by_stats = fvd.evaluate(samples, str(stats), num_frames=4, n_boot=3, device="cpu")
    assert by_stats["aggregate"] == by_folder["aggregate"] and by_stats["protocol"]["reference_n"] == 5
    with pytest.raises(ValueError, match="on 4 frames, not .* on 6"):
        fvd.evaluate(samples, str(stats), num_frames=6, device="cpu")


class StandInI3D(torch.nn.Module):
    """The I3D TorchScript's call signature: uint8 (B, 3, T, H, W), rescale, resize, return_features."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        assert x.dtype == torch.uint8 and rescale and resize and return_features
        x = x.float() / 127.5 - 1.0
        return torch.stack([x.mean((2, 3, 4)), x.std((2, 3, 4)), x[:, :, 1:].sub(x[:, :, :-1]).abs().mean((2, 3, 4))],
                           1).flatten(1)


def test_the_i3d_loads_from_a_folder_and_is_refused_in_one_line_when_absent(tmp_path, monkeypatch, capsys):
    samples = clip_folder(tmp_path / "samples", 4, step=2, seed=0)
    ref = clip_folder(tmp_path / "ref", 4, step=6, seed=50)
    (tmp_path / "i3d").mkdir()
    torch.jit.save(torch.jit.script(StandInI3D()), str(tmp_path / "i3d" / "i3d_torchscript.pt"))
    out = fvd.evaluate(samples, str(ref), extractor="i3d", i3d=str(tmp_path / "i3d"), n_boot=2, device="cpu")
    assert out["comparable_to_paper"] and "I3D" in out["protocol"]["feature_extractor"] and out["aggregate"]["fvd"]["mean"] > 0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(fvd.I3D_ENV, raising=False)
    capsys.readouterr()  # the progress bars so far
    with pytest.raises(SystemExit) as exit_:
        fvd.main([str(samples), "--ref", str(ref), "--extractor", "i3d"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and fvd.weights.I3D_URL in err, err
    with pytest.raises(ValueError, match="fewer than --num-frames 16"):
        fvd.evaluate(samples, str(ref), num_frames=16, device="cpu")
    with pytest.raises(ValueError, match="FVD needs at least 2"):
        fvd.evaluate(clip_folder(tmp_path / "one", 1, step=2, seed=0), str(ref), device="cpu")
