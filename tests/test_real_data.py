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
from gentron.data.real import (BadSample, BadUnit, ImageTextFolder, Manifest, VideoFolder, WebDatasetShards,
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


def test_training_streams_feature_shards_from_the_encode_stage(tmp_path):
    """A WebDataset set encoded by a 2-task array (one shard per task) trains from its shards."""
    from gentron.data.encode import encode_shards
    from gentron.train import train
    from tests.support.train_fixtures import tiny_config

    paths = _many(tmp_path)
    cfg = tiny_config(tmp_path, data={"kind": "webdataset", "path": paths["webdataset"], "encode": "shards",
                                      "features_dir": str(tmp_path / "features"), "num_workers": 2},
                      train={"steps": 2})
    done = [encode_shards(cfg, tmp_path / "features", task, 2) for task in range(2)]  # a 2-task job array
    assert [p.name for p in done] == ["features-000000.pt", "features-000001.pt"]
    shard = torch.load(done[0], weights_only=True)
    assert shard["latents"].shape == (8, 3, 16, 16) and len(shard["captions"]) == 8  # tar shards 0 and 2
    assert shard["text"][0]["pooled"].shape == (8, 32) and shard["text"][0]["lengths"].shape == (8,)
    stamp = done[0].stat().st_mtime_ns
    encode_shards(cfg, tmp_path / "features", 0, 2)  # complete: skipped
    assert done[0].stat().st_mtime_ns == stamp
    assert torch.load(train(cfg, tmp_path / "run").checkpoint, weights_only=False)["data"]["images"] == 16


# --- bad shards: skipped with their path in the log, counted per rank, found up front -------------

def _bad_shards(tmp_path) -> dict[str, str]:
    """Four good shards (16 samples) and, beside them, a truncated tar, a file that is not a tar and
    an empty file; returns {kind: path} of the bad ones."""
    _many(tmp_path)
    good = (tmp_path / "many-0.tar").read_bytes()
    bad = {"truncated": tmp_path / "many-4.tar", "not a tar": tmp_path / "many-5.tar", "empty": tmp_path / "many-6.tar"}
    bad["truncated"].write_bytes(good[:len(good) // 2])  # cut inside a member's data
    bad["not a tar"].write_bytes(b"<html>503 Service Unavailable</html>\n" * 40)
    bad["empty"].write_bytes(b"")
    return {kind: str(path) for kind, path in bad.items()}


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_shards_are_skipped_logged_and_counted(tmp_path, caplog, workers):
    from gentron.data.stream import Readers, ResumableLoader

    bad = _bad_shards(tmp_path)
    source = WebDatasetShards(str(tmp_path / "many-{0..6}.tar"), 8)
    loader = ResumableLoader(source, 2, seed=0, readers=Readers(0, 1, workers), buffer_size=4)
    captions = [c for _ in range(20) for c in loader.next()["caption"]]  # 40 samples: past every reader's epoch
    loader.close()
    assert {f"a {c} image {i}" for i, c in ((i, list(COLORS)[i % 3]) for i in range(16))} <= set(captions)
    # each bad shard once per epoch (this reader is into its second), summed over this rank's workers
    assert loader.skipped_units >= 3
    assert loader.skipped_units == sum(w["skipped_units"] for w in loader.state_dict()["workers"].values())
    if not workers:  # (a worker process logs to its own handlers)
        assert all(f"skipping the rest of shard {path}" in caplog.text for path in bad.values())
    dataset = WebDatasetShards(str(tmp_path / "many-{0..6}.tar"), 8)  # encode=memory reads them in one pass
    # the truncated copy of shard 0 gives the 2 whole samples before the cut
    assert len(list(dataset)) == 16 + 2 and dataset.skipped_units == 3 and dataset.skipped == 0
    with pytest.raises(ValueError, match="many-4.tar: truncated"):  # the first bad shard, by name
        list(WebDatasetShards(str(tmp_path / "many-{0..6}.tar"), 8, on_error="raise"))


def test_bad_shards_do_not_stop_training_and_the_counts_sum_over_ranks(tmp_path):
    """A streamed run over a pattern with bad shards trains; the checkpoint's data state holds each
    rank's skipped counts and `summed_skipped` is what the train log reports."""
    from gentron import distributed as D
    from gentron.data.training import build_training_data, summed_skipped
    from gentron.text import build_text_encoders
    from gentron.train import train
    from gentron.vae import build_vae
    from tests.support.train_fixtures import tiny_config

    _bad_shards(tmp_path)
    cfg = tiny_config(tmp_path, data={"kind": "webdataset", "path": str(tmp_path / "many-{0..6}.tar"),
                                      "encode": "per_batch", "num_workers": 0, "shuffle_buffer": 4},
                      train={"steps": 3, "batch_size": 8})
    state = torch.load(train(cfg, tmp_path / "run").checkpoint, weights_only=False)["data"]
    (shards,), (samples,) = state["skipped"]["skipped_shards"], state["skipped"]["skipped"]  # one rank
    assert state["images"] == 24 and shards >= 3  # 24 samples: past the first epoch of 16
    encoders, vae = build_text_encoders(cfg.text_encoders), build_vae(cfg.vae)
    data = build_training_data(cfg, D.DistInfo(), "cpu", torch.float32, vae, encoders, tmp_path / "cache", state)
    assert summed_skipped(data, D.DistInfo()) == {"skipped": samples, "skipped_shards": shards}  # resumed
    data.next_batch(torch.Generator().manual_seed(0))
    assert summed_skipped(data, D.DistInfo())["skipped_shards"] >= shards
    data.close()


def _rank_counts(rank: int, cfg, port: int, out) -> None:
    """One of two gloo ranks: six batches of the streamed data, then its counts and the summed ones."""
    import os

    from gentron import distributed as D
    from gentron.data.training import build_training_data, summed_skipped
    from gentron.text import build_text_encoders
    from gentron.vae import build_vae

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = D.init_distributed()
    encoders, vae = build_text_encoders(cfg.text_encoders), build_vae(cfg.vae)
    data = build_training_data(cfg, info, "cpu", torch.float32, vae, encoders, out / "cache", None)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        data.next_batch(generator)
    result = {"local": data.skipped_counts(), "summed": summed_skipped(data, info),
              "state": data.state_dict()["skipped"]}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    data.close()
    D.shutdown(info)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_skipped_counts_sum_over_two_ranks(tmp_path):
    import socket

    import torch.multiprocessing as mp

    from tests.support.train_fixtures import tiny_config

    _bad_shards(tmp_path)
    cfg = tiny_config(tmp_path, data={"kind": "webdataset", "path": str(tmp_path / "many-{0..6}.tar"),
                                      "encode": "per_batch", "num_workers": 0, "shuffle_buffer": 2},
                      train={"batch_size": 8})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_counts, args=(cfg, port, tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    local = [r["local"] for r in ranks]
    total = {k: local[0][k] + local[1][k] for k in local[0]}
    assert total["skipped_shards"] >= 3  # 24 samples per rank: each is past its first epoch (<= 14 + buffer)
    assert all(r["summed"] == total for r in ranks)  # every rank gets the sum
    assert ranks[0]["state"] == {k: [local[0][k], local[1][k]] for k in total}  # the checkpoint: per rank


def test_check_shards_reads_headers_and_names_every_bad_shard(tmp_path):
    from gentron.data.real import check_shards

    bad = _bad_shards(tmp_path)
    good = (tmp_path / "many-0.tar").read_bytes()
    cut = tmp_path / "many-7.tar"  # cut at a member boundary: tarfile alone would read it as complete
    cut.write_bytes(_cut_at_member(good, 2))
    report = check_shards(str(tmp_path / "many-{0..8}.tar"))
    assert report.shards == 9 and report.ok == 4 and report.samples == 16 and report.incomplete == 0
    kinds = {path: kind for path, kind, _ in report.bad}
    assert kinds == {bad["truncated"]: "truncated", bad["not a tar"]: "not a tar", bad["empty"]: "empty",
                     str(cut): "truncated", str(tmp_path / "many-8.tar"): "missing"}
    assert report.summary() == (f"9 shards: 4 ok, 5 bad (1 empty, 1 missing, 1 not a tar, 2 truncated); 16 samples "
                                f"(0 without an image and a caption); {report.bytes / 1e9:.2f} GB: "
                                f"{tmp_path / 'many-{0..8}.tar'}")
    with pytest.raises(BadUnit, match="truncated"):  # training reads that cut shard as damaged too
        list(WebDatasetShards(str(cut), 8).entries(str(cut)))


def _cut_at_member(tar_bytes: bytes, members: int) -> bytes:
    """The first `members` members of an uncompressed tar, without its end-of-archive marker."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        info = tar.getmembers()[members]
    return tar_bytes[:info.offset]
