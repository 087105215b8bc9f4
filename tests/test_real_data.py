"""Real-data loaders on data made here: an image folder, manifests, a WebDataset shard, MP4 clips."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from gentron.config import load_config
from gentron.data.real import (BadSample, ImageTextFolder, Manifest, VideoFolder, WebDatasetShards,
                               build_real_dataset, center_crop_resize)

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def _image(color, size=(48, 32)) -> Image.Image:
    return Image.new("RGB", size, COLORS[color])


def _folder(tmp_path, corrupt=False):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i, color in enumerate(COLORS):
        path = (root / "sub" if i else root) / f"{i:02d}_{color}.png"
        _image(color).save(path)
        path.with_suffix(".txt").write_text(f"a {color} image\n")
    if corrupt:
        (root / "99_bad.png").write_bytes(b"\x89PNG not really")
        (root / "99_bad.txt").write_text("broken")
        _image("red").save(root / "98_nocaption.png")
    return root


def test_center_crop_resize_keeps_the_middle():
    image = Image.new("RGB", (60, 20), (0, 0, 0))
    image.paste((255, 255, 255), (20, 0, 40, 20))  # a white middle third
    out = center_crop_resize(image, 8)
    assert out.size == (8, 8) and np.asarray(out).mean() > 200


def test_image_folder_streams_images_with_captions(tmp_path):
    items = list(ImageTextFolder(_folder(tmp_path), 16))
    assert [i["caption"] for i in items] == ["a red image", "a green image", "a blue image"]
    image = items[0]["image"]
    assert image.shape == (3, 16, 16) and image.min() >= -1 and image.max() <= 1
    assert image[0].mean() > 0.5 and image[2].mean() < -0.5  # red


def test_bad_samples_are_skipped_and_counted_or_raised(tmp_path, caplog):
    root = _folder(tmp_path, corrupt=True)
    dataset = ImageTextFolder(root, 16)
    assert len(list(dataset)) == 3
    assert dataset.skipped == 2
    assert "unreadable image" in caplog.text and "no caption file" in caplog.text
    with pytest.raises(BadSample, match="98_nocaption"):
        list(ImageTextFolder(root, 16, on_error="raise"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageTextFolder(tmp_path / "missing", 16)


def test_csv_and_jsonl_manifests(tmp_path):
    root = _folder(tmp_path)
    (tmp_path / "m.csv").write_text("path,caption\nimages/00_red.png,red one\nimages/sub/01_green.png,\"green, one\"\n"
                                    "images/gone.png,missing\n")
    items = list(Manifest(tmp_path / "m.csv", 8))
    assert [i["caption"] for i in items] == ["red one", "green, one"]
    rows = [{"path": str(root / "sub/02_blue.png"), "caption": "blue"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [i["caption"] for i in Manifest(tmp_path / "m.jsonl", 8)] == ["blue"]
    (tmp_path / "bad.jsonl").write_text('{"file": "x.png"}\n')
    with pytest.raises(ValueError, match="needs the fields path and caption"):
        list(Manifest(tmp_path / "bad.jsonl", 8))


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path):
    for shard in range(2):
        with tarfile.open(tmp_path / f"train-{shard:04d}.tar", "w") as tar:
            for i, color in enumerate(COLORS):
                buffer = io.BytesIO()
                _image(color).save(buffer, format="PNG")
                _add(tar, f"s{shard}_{i}.png", buffer.getvalue())
                _add(tar, f"s{shard}_{i}.txt", f"{color} {shard}".encode())
            _add(tar, f"s{shard}_9.png", b"corrupt")
            _add(tar, f"s{shard}_9.txt", b"bad")
    dataset = WebDatasetShards(str(tmp_path / "train-{0000..0001}.tar"), 8)
    items = list(dataset)
    assert [i["caption"] for i in items] == [f"{c} {s}" for s in range(2) for c in COLORS]
    assert items[0]["image"].shape == (3, 8, 8) and dataset.skipped == 2
    with pytest.raises(FileNotFoundError, match="do not exist"):
        WebDatasetShards(str(tmp_path / "train-{0000..0005}.tar"), 8)


def _mp4(path, frames=48, fps=24):
    """A clip whose frame k has brightness 5 * k, so the sampled frame indices can be read back."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        stream.options = {"crf": "0"}
        for k in range(frames):
            array = np.full((24, 32, 3), 5 * k, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_folder_samples_frames_at_the_requested_fps(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    _mp4(root / "long.mp4")  # 2 s at 24 fps
    (root / "long.txt").write_text("a fading clip")
    _mp4(root / "short.mp4", frames=10)  # 0.42 s: too short for 4 frames at 4 fps
    (root / "short.txt").write_text("too short")
    dataset = VideoFolder(root, 16, num_frames=4, fps=4)
    items = list(dataset)
    assert len(items) == 1 and dataset.skipped == 1
    video = items[0]["video"]
    assert video.shape == (4, 3, 16, 16)
    brightness = ((video.mean(dim=(1, 2, 3)) + 1) * 127.5 / 5).round().tolist()
    assert brightness == [0, 6, 12, 18]  # frames at 0, 0.25, 0.5, 0.75 s of a 24 fps clip


def test_training_on_an_image_folder(tmp_path):
    from gentron.train import train
    from tests.support.train_fixtures import tiny_config

    root = _folder(tmp_path)
    cfg = tiny_config(tmp_path, data={"kind": "image_folder", "path": str(root)}, train={"steps": 2})
    assert build_real_dataset(cfg.data).path == root
    state = torch.load(train(cfg, tmp_path / "run").checkpoint, weights_only=False)
    assert state["data"]["images"] == 16
    with pytest.raises(ValueError, match="needs data.path"):
        load_config({"data": {"kind": "manifest"}})


def _many(tmp_path, n=16):
    """n small images of three colours: a folder (with captions), a CSV and a JSONL manifest, and
    four WebDataset shards; returns {kind: data.path}."""
    root = tmp_path / "many"
    root.mkdir()
    rows, shards = [], [tarfile.open(tmp_path / f"many-{s}.tar", "w") for s in range(4)]
    for i in range(n):
        color = list(COLORS)[i % 3]
        _image(color, size=(20 + i, 16)).save(root / f"{i:03d}.png")
        (root / f"{i:03d}.txt").write_text(f"a {color} image {i}")
        rows.append({"path": f"many/{i:03d}.png", "caption": f"a {color} image {i}"})
        buffer = io.BytesIO()
        _image(color, size=(20 + i, 16)).save(buffer, format="PNG")
        _add(shards[i % 4], f"{i:03d}.png", buffer.getvalue())
        _add(shards[i % 4], f"{i:03d}.txt", f"a {color} image {i}".encode())
    for tar in shards:
        tar.close()
    (tmp_path / "m.csv").write_text("path,caption\n" + "".join(f"{r['path']},{r['caption']}\n" for r in rows))
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"image_folder": str(root), "manifest": str(tmp_path / "m.csv"), "jsonl": str(tmp_path / "m.jsonl"),
            "webdataset": str(tmp_path / "many-{0..3}.tar")}


def test_streamed_training_on_a_folder_manifests_and_shards_resumes_exactly(tmp_path):
    """encode=per_batch: loader workers stream the samples, the encoders run per batch; a run
    stopped mid-epoch and resumed ends bit-identical to an uninterrupted one."""
    import shutil

    from gentron.train import train
    from tests.support.train_fixtures import state_equal, tiny_config, with_changes

    paths = _many(tmp_path)
    for kind, path in paths.items():
        data = {"kind": "manifest" if kind == "jsonl" else kind, "path": path, "encode": "per_batch",
                "num_workers": 2, "shuffle_buffer": 4}
        cfg = tiny_config(tmp_path, data=data, train={"steps": 4, "batch_size": 4, "ckpt_every": 2})
        straight = torch.load(train(cfg, tmp_path / kind / "straight").checkpoint, weights_only=False)
        run = tmp_path / kind / "resumed"
        train(with_changes(cfg, train={"steps": 2}), run)  # 8 of 16 samples: mid-epoch
        shutil.copy(run / "checkpoints/last.pt", tmp_path / "step2.pt")
        resumed = torch.load(train(cfg, run).checkpoint, weights_only=False)
        for key in ("model", "ema", "optimizer", "data"):
            assert state_equal(straight[key], resumed[key]), (kind, key)
        assert straight["data"]["images"] == 16
        assert sum(w["unit"] for w in straight["data"]["streams"]["images"][0]["workers"].values()) > 0


def test_training_streams_feature_shards_from_the_encode_stage(tmp_path, caplog):
    from gentron.data.encode import encode_shards
    from gentron.train import train
    from tests.support.train_fixtures import tiny_config

    paths = _many(tmp_path)
    cfg = tiny_config(tmp_path, data={"kind": "webdataset", "path": paths["webdataset"]})
    done = [encode_shards(cfg, tmp_path / "features", task, 2) for task in range(2)]  # a 2-task job array
    assert sorted(p.name for p in sum(done, [])) == [f"features-{i:06d}.pt" for i in range(4)]
    shard = torch.load(done[0][0], weights_only=True)
    assert shard["latents"].shape == (4, 3, 16, 16) and len(shard["captions"]) == 4
    stamp = done[0][0].stat().st_mtime_ns
    encode_shards(cfg, tmp_path / "features", 0, 2)  # present: skipped
    assert done[0][0].stat().st_mtime_ns == stamp
    shards = tiny_config(tmp_path, data={"kind": "webdataset", "path": paths["webdataset"], "encode": "shards",
                                         "features_dir": str(tmp_path / "features"), "num_workers": 2},
                         train={"steps": 2})
    assert torch.load(train(shards, tmp_path / "run").checkpoint, weights_only=False)["data"]["images"] == 16
