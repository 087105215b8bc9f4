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
