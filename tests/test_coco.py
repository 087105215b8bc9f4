"""eval.coco and the coco30k prompt set: FID-30K is 30,000 images, one per caption, with a caption choice
that does not depend on the order of the annotation file, and input errors end in one clear line."""
import json

import numpy as np
import pytest
from PIL import Image

from eval import coco


def _captions(n_images=12, reverse=False, newline=False):
    images = [{"id": 100 + i, "file_name": f"COCO_val2014_{100 + i:012d}.jpg"} for i in range(n_images)]
    annotations = [{"id": 1000 + k, "image_id": 100 + i, "caption": f"image {i}\ncaption {j} " if newline
                    else f"image {i} caption {j} "}
                   for k, (i, j) in enumerate((i, j) for i in range(n_images) for j in range(5))]
    return {"images": images, "annotations": annotations[::-1] if reverse else annotations}


def test_the_caption_choice_does_not_depend_on_the_order_of_the_file(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_captions()))
    (tmp_path / "b.json").write_text(json.dumps(_captions(reverse=True)))
    assert coco.sample_captions(tmp_path / "a.json", n=10) == coco.sample_captions(tmp_path / "b.json", n=10)


def test_inner_newlines_become_spaces_in_both_plan_files(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(_captions(newline=True)))
    coco.main(["plan", "--captions", str(tmp_path / "c.json"), "--out", str(tmp_path / "plan"), "-n", "6"])
    jsonl = [r["prompt"] for r in coco.read_plan(tmp_path / "plan" / "prompts.jsonl")]
    assert jsonl == (tmp_path / "plan" / "prompts.txt").read_text().splitlines()
    assert all("\n" not in p and p.startswith("image ") and " caption " in p for p in jsonl)


def test_coco30k_is_one_image_per_caption_whatever_the_profile(tmp_path, monkeypatch):
    from ablations.prompt_sets import prompt_records
    from gentron.config import SampleConfig

    rows = [{"prompt": f"caption {i}", "category": "coco", "prompt_id": i} for i in range(5)]
    (tmp_path / "captions30k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("COCO30K_CAPTIONS", str(tmp_path / "captions30k.jsonl"))
    records = prompt_records("coco30k", SampleConfig(seeds=[42], images_per_prompt=10))  # the paper profile's 10
    assert len(records) == 5 and {r["seed"] for r in records} == {42}


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not a COCO captions file"),
    ('{"images": []}', "is not a COCO captions file"),
])
def test_a_bad_captions_file_is_one_line_naming_it(tmp_path, capsys, content, expected):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(SystemExit) as exit_:
        coco.main(["plan", "--captions", str(tmp_path / "bad.json"), "--out", str(tmp_path / "plan")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and expected in err and "bad.json" in err
    assert len(err.strip().splitlines()) == 1 and "rebuilt" not in err and "Traceback" not in err


def test_a_corrupt_reference_jpeg_is_named(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "good.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rows = [{"coco_file": "good.jpg", "prompt": "a"}, {"coco_file": "broken.jpg", "prompt": "b"}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as exit_:
        coco.main(["refs", str(tmp_path / "prompts.jsonl"), "--coco-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]  # (the rest is the progress bar)
    assert exit_.value.code == 2 and len(errors) == 1 and "broken.jpg is not a readable image" in errors[0]
    assert "Traceback" not in err
