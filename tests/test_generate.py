"""Generation: sample folder format, per-sample seeds independent of batching, idempotent resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from eval.common import read_samples
from gentron.generate import generate, prompt_set
from gentron.train import train
from tests.support.train_fixtures import tiny_config, with_changes

RECORDS = [{"prompt": p, "seed": seed, "index": 0, "category": "color", "prompt_id": i}
           for i, (p, seed) in enumerate([("a red circle and a blue square", 1), ("a green square", 2),
                                          ("a red circle and a blue square", 3)])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    cfg = tiny_config(tmp, train={"steps": 5})
    return cfg, train(cfg, tmp / "cell").checkpoint


def _pixels(folder, file):
    return np.asarray(Image.open(folder / file), dtype=np.int16)


def test_writes_a_valid_sample_folder(trained, tmp_path):
    cfg, ckpt = trained
    out = generate(cfg, ckpt, RECORDS, tmp_path / "s")
    samples = read_samples(out)
    assert [s.file for s in samples] == ["color/000000_1.png", "color/000001_2.png", "color/000002_3.png"]
    assert [s.seed for s in samples] == [1, 2, 3]
    assert Image.open(out / samples[0].file).size == (16, 16)


def test_a_sample_does_not_depend_on_its_batch(trained, tmp_path):
    cfg, ckpt = trained
    one = generate(with_changes(cfg, sample={"batch_size": 1}), ckpt, RECORDS, tmp_path / "one")
    three = generate(with_changes(cfg, sample={"batch_size": 3}), ckpt, RECORDS[::-1], tmp_path / "three")
    for record in RECORDS:
        file = f"color/{record['prompt_id']:06d}_{record['seed']}.png"
        assert np.abs(_pixels(one, file) - _pixels(three, file)).max() <= 1  # float rounding only
    # Same prompt, another seed: another image.
    assert np.abs(_pixels(one, "color/000000_1.png") - _pixels(one, "color/000002_3.png")).max() > 10


def test_is_idempotent_and_resumes_missing_images(trained, tmp_path):
    cfg, ckpt = trained
    out = generate(cfg, ckpt, RECORDS, tmp_path / "s")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    generate(cfg, ckpt, RECORDS, out)  # all there: nothing is redrawn
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps

    (out / "color/000001_2.png").unlink()  # as if killed before this image
    manifest = out / "samples.jsonl"
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()[:1]))
    generate(cfg, ckpt, RECORDS, out)
    assert (out / "color/000001_2.png").exists()
    assert (out / "color/000000_1.png").stat().st_mtime_ns == stamps[out / "color/000000_1.png"]
    assert len(manifest.read_text().splitlines()) == 3


def test_duplicate_files_are_rejected(trained, tmp_path):
    cfg, ckpt = trained
    with pytest.raises(ValueError, match="same file"):
        generate(cfg, ckpt, RECORDS[:1] * 2, tmp_path / "s")


def test_video_writes_gif_and_frames(tmp_path):
    cfg = tiny_config(tmp_path, data={"video": True, "num_train": 8}, train={"steps": 2},
                      sample={"mfg_scale": 1.2})
    ckpt = train(cfg, tmp_path / "cell").checkpoint
    records = prompt_set("compshapes_motion", [7])[:1]
    out = generate(cfg, ckpt, records, tmp_path / "s")
    row = json.loads((out / "samples.jsonl").read_text())
    assert row["file"].endswith(".gif") and Image.open(out / row["file"]).n_frames == 4
    assert sorted(p.name for p in (out / row["frames"]).iterdir()) == ["000.png", "001.png", "002.png", "003.png"]
    read_samples(out)


def test_prompt_files_in_t2i_compbench_layout_and_jsonl(tmp_path):
    from gentron.generate import read_prompt_file

    txt = tmp_path / "color_val.txt"
    txt.write_bytes(b"a green bench and a red car\r\na blue backpack\r\n\r\na brown cow")  # CRLF, no final newline
    records = read_prompt_file(txt, seeds=[42], images_per_prompt=2)
    assert [(r["prompt"], r["seed"], r["index"], r["prompt_id"]) for r in records[:3]] == [
        ("a green bench and a red car", 42, 0, 0), ("a green bench and a red car", 43, 1, 0), ("a blue backpack", 42, 0, 1)]
    assert len(records) == 6 and {r["category"] for r in records} == {"color"}

    jsonl = tmp_path / "coco.jsonl"
    jsonl.write_text('{"prompt": "a cat", "category": "coco", "prompt_id": 7}\n')
    assert read_prompt_file(jsonl, seeds=[0], images_per_prompt=1) == [
        {"prompt": "a cat", "category": "coco", "prompt_id": 7, "seed": 0, "index": 0}]


def test_bf16_text_encoder_generates_with_an_fp32_model(tmp_path):
    """Generation runs without autocast: bf16 T5 features must be cast to the model's dtype."""
    import torch

    from gentron.checkpoint import save_checkpoint
    from gentron.model import GenTron
    from gentron.config import resolve
    from gentron.text import build_text_encoder
    from tests.support.train_fixtures import local_t5

    encoder = {"kind": "t5", "path": str(local_t5(tmp_path / "t5")), "dtype": "bfloat16", "max_length": 32}
    cfg = tiny_config(tmp_path, text_encoders=[encoder])
    torch.manual_seed(0)
    model = GenTron(resolve(cfg, [build_text_encoder(encoder).shape]))
    ckpt = save_checkpoint(tmp_path / "last.pt", model_config=model.config.to_dict(), ema=model.state_dict())
    out = generate(cfg, ckpt, RECORDS[:1], tmp_path / "s")
    assert (out / "color/000000_1.png").exists()


@pytest.mark.parametrize("change,named", [
    ({"text_encoders": [{"kind": "tiny_clip", "seed": 1, "width": 32, "layers": 1, "heads": 2}]}, "text encoder"),
    ({"model": {"depth": 3}}, "depth"),
    ({"model": {"prediction": "epsilon"}}, "model.prediction"),
])
def test_a_config_that_does_not_match_the_checkpoint_is_refused(trained, tmp_path, change, named):
    cfg, ckpt = trained
    other = with_changes(cfg, **{k: v for k, v in change.items() if k != "text_encoders"})
    if "text_encoders" in change:
        from gentron.config import load_config, to_dict

        other = load_config({**to_dict(other), "text_encoders": change["text_encoders"]})
    with pytest.raises(ValueError) as error:
        generate(other, ckpt, RECORDS, tmp_path / "s")
    message = str(error.value)
    assert named in message and str(ckpt) in message and "config.yaml" in message and "\n" not in message
    assert not (tmp_path / "s/samples.jsonl").exists()


def test_sampling_settings_may_differ_from_training(trained, tmp_path):
    cfg, ckpt = trained
    other = with_changes(cfg, sample={"steps": 2, "cfg_scale": 2.0}, train={"lr": 1e-3, "grad_checkpointing": True})
    assert (generate(other, ckpt, RECORDS[:1], tmp_path / "s") / "color/000000_1.png").exists()


# ---------------------------------------------------------------- shards, resume, precision, cost

SEVEN = [{"prompt": p, "seed": 40 + i, "index": 0, "category": "color", "prompt_id": i}
         for i, p in enumerate(["a red circle and a blue square", "a green square", "a blue triangle",
                                "a red circle and a blue square", "a yellow diamond", "a green square",
                                "a purple circle and a red square"])]


def _bytes(folder):
    """{path: bytes} of every image and the manifest (not the shard bookkeeping)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".shards" not in p.parts and p.name != "generation.json"}


def test_one_two_and_three_shards_write_bit_identical_files(trained, tmp_path):
    from gentron.generate import merge_shards

    cfg, ckpt = trained
    cfg = with_changes(cfg, sample={"batch_size": 2})  # 7 samples: 4 batches, the last of one sample
    whole = _bytes(generate(cfg, ckpt, SEVEN, tmp_path / "k1"))
    assert len(whole) == 8  # 7 images and samples.jsonl
    for count in (2, 3, 5):  # 5 shards of 4 batches: one shard is empty
        out = tmp_path / f"k{count}"
        for k in reversed(range(count)):
            if k == 0 and count < 5:
                with pytest.raises(ValueError, match=r"samples are not drawn yet .*resumes each where it stopped"):
                    merge_shards(out)
                assert not (out / "samples.jsonl").exists()
            generate(cfg, ckpt, SEVEN, out, shard=(k, count))
        if count == 5:
            assert not list(out.glob(".shards/part-00000-of-00005.*"))  # shard 0 of 5 was empty: nothing to do
        assert _bytes(out) == whole, count  # the last shard to finish wrote the merged manifest
        assert merge_shards(out) == out and _bytes(out) == whole  # merging again changes nothing
        generation = json.loads((out / "generation.json").read_text())
        assert generation["precision"] == "fp32" and generation["batch_size"] == 2 and generation["noise"] == "seed"
        assert generation["runs"] == count - (count == 5)  # the empty shard drew nothing


def test_a_shard_stopped_halfway_resumes_at_the_image(trained, tmp_path, monkeypatch):
    from gentron import generate as gen

    cfg, ckpt = trained
    cfg = with_changes(cfg, sample={"batch_size": 2})
    reference = _bytes(generate(cfg, ckpt, SEVEN, tmp_path / "reference", shard=(0, 1)))
    out = tmp_path / "stopped"
    real_save, saved, draws = gen._save, [], []

    def killed_after_three(folder, row, x):
        if len(saved) == 3:  # the middle of the second batch
            raise KeyboardInterrupt
        saved.append(row["file"])
        real_save(folder, row, x)

    monkeypatch.setattr(gen, "_save", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, ckpt, SEVEN, out, shard=(0, 1))
    part = out / ".shards/part-00000-of-00001.jsonl"
    assert [json.loads(line)["file"] for line in part.read_text().splitlines()] == saved
    assert not (out / "samples.jsonl").exists()
    stamps = {f: (out / f).stat().st_mtime_ns for f in saved}

    monkeypatch.setattr(gen, "_save", lambda folder, row, x: saved.append(row["file"]) or real_save(folder, row, x))
    real_sample = gen.Diffusion.sample
    monkeypatch.setattr(gen.Diffusion, "sample", lambda self, model, text, *a, **k:
                        draws.append(len(text[0])) or real_sample(self, model, text, *a, **k))
    generate(cfg, ckpt, SEVEN, out, shard=(0, 1))
    assert saved[3:] == [f"color/{i:06d}_{40 + i}.png" for i in range(3, 7)]  # the unrecorded ones, each once
    assert draws == [2, 2, 1]  # the interrupted batch again, whole; the first batch not at all
    assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps  # recorded images are not rewritten
    assert _bytes(out) == reference


def test_a_torn_part_line_is_dropped_and_its_image_drawn_again(trained, tmp_path):
    cfg, ckpt = trained
    out = generate(cfg, ckpt, RECORDS, tmp_path / "s", shard=(0, 1))
    reference = _bytes(out)
    part = out / ".shards/part-00000-of-00001.jsonl"
    lines = part.read_text().splitlines()
    part.write_text(lines[0] + "\n" + lines[1][:20])  # killed while appending the second line
    (out / "samples.jsonl").unlink()
    generate(cfg, ckpt, RECORDS, out)
    assert _bytes(out) == reference and len(part.read_text().splitlines()) == 3


def test_shards_are_whole_batches_that_partition_the_set():
    from gentron.partition import check_shard, shard_range

    for n, unit in ((0, 4), (1, 4), (7, 2), (100, 8), (30_000, 64)):
        for count in (1, 2, 3, 8, 13):
            spans = [shard_range(n, unit, (k, count)) for k in range(count)]
            assert [i for span in spans for i in span] == list(range(n))
            assert all(span.start % unit == 0 for span in spans)
    assert check_shard(None) == (0, 1) and check_shard("3/8") == (3, 8) and check_shard([1, 2]) == (1, 2)
    for bad in ((2, 2), (-1, 2), (0, 0), "1", "a/b", (0.5, 2), (0, 1, 2)):
        with pytest.raises(ValueError, match="shard"):
            check_shard(bad)


def test_precision_is_bf16_autocast_on_cuda_and_fp32_elsewhere(caplog):
    import torch

    from gentron.generate import BF16, precision_name

    assert precision_name(torch.device("cuda"), "auto") == precision_name(torch.device("cuda:1"), "bf16") == BF16
    assert precision_name(torch.device("cuda"), "fp32") == "fp32"
    assert precision_name(torch.device("cpu"), "auto") == "fp32"
    assert precision_name(torch.device("cpu"), "bf16") == "fp32" and "CUDA only" in caplog.text
    with pytest.raises(ValueError, match="precision 'fp16' is unknown"):
        precision_name(torch.device("cpu"), "fp16")


def test_per_prompt_noise_gives_every_sample_its_own_start(trained, tmp_path):
    from gentron.generate import noise_seed

    rows = [{"seed": 42, "category": c, "prompt_id": i, "index": 0} for c in ("color", "shape") for i in range(50)]
    assert {noise_seed(r) for r in rows} == {42}  # the default: image n of every prompt starts alike
    seeds = [noise_seed(r, "per_prompt") for r in rows]
    assert len(set(seeds)) == len(rows) and all(0 <= s < 2**63 for s in seeds)
    assert seeds == [noise_seed(r, "per_prompt") for r in rows]
    cfg, ckpt = trained
    same = [{**r, "prompt": "a green square", "seed": 42} for r in SEVEN[:2]]
    seed = generate(cfg, ckpt, same, tmp_path / "seed")
    own = generate(cfg, ckpt, same, tmp_path / "own", noise="per_prompt")
    assert (seed / "color/000000_42.png").read_bytes() == (seed / "color/000001_42.png").read_bytes()
    assert (own / "color/000000_42.png").read_bytes() != (own / "color/000001_42.png").read_bytes()
    assert json.loads((own / "generation.json").read_text())["noise"] == "per_prompt"
    for bad in ({"noise": "shared"}, {"precision": "fp16"}):
        with pytest.raises(ValueError, match="noise is one of"):
            generate(cfg, ckpt, same, tmp_path / "bad", **bad)
    assert not (tmp_path / "bad").exists()


def test_sampling_cost_counts_steps_branches_images_and_forward_flops(tmp_path):
    from gentron.config import encoder_shapes, resolve
    from gentron.generate import sampling_cost
    from gentron.sizes import count_flops

    cfg = tiny_config(tmp_path, sample={"steps": 50})
    forward = count_flops(resolve(cfg), tuple(e.tokens for e in encoder_shapes(cfg)))
    cost = sampling_cost(cfg, 48_000)
    assert (cost.nfe, cost.branches, cost.images, cost.flops_per_forward) == (50, 2, 48_000, forward)
    assert cost.flops == 50 * 2 * 48_000 * forward
    video = tiny_config(tmp_path, data={"video": True}, sample={"steps": 10, "mfg_scale": 1.2})
    clip = sampling_cost(video, 3)
    assert clip.branches == 3 and clip.flops == 10 * 3 * 3 * clip.flops_per_forward
    assert clip.flops_per_forward == count_flops(resolve(video), tuple(e.tokens for e in encoder_shapes(video)), 4)


def test_evaluators_refuse_a_folder_whose_shards_are_not_all_drawn(trained, tmp_path):
    from eval.common import load_samples

    cfg, ckpt = trained
    out = generate(with_changes(cfg, sample={"batch_size": 2}), ckpt, SEVEN, tmp_path / "s", shard=(1, 2))
    for read in (load_samples, read_samples):  # not read as a folder of images named after prompts
        with pytest.raises(FileNotFoundError, match=r"drawn in shards and has no samples.jsonl yet.*merge_shards"):
            read(out)
