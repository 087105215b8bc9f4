"""eval.compbench: prompt files, questions, the spatial rules, and every category end to end with tiny
random models loaded by path (scores are meaningless; ranges and file layouts are real)."""
import json

import numpy as np
import pytest
from PIL import Image

from eval.common import Sample, write_samples
from eval.compbench import evaluate
from eval.compbench.__main__ import main
from eval.compbench.prompts import generation_plan, read_prompt_file
from eval.compbench.questions import (noun_chunks, spatial_objects, spatial_relation, strip_adjectives,
                                      vqa_questions)
from eval.compbench.spatial import Detection, image_score, position_score, resize_for_detection
from eval.tiny_models import save_all


def test_prompt_files_with_crlf_bom_and_no_final_newline(tmp_path):
    dataset = tmp_path / "examples" / "dataset"
    dataset.mkdir(parents=True)
    (dataset / "color_val.txt").write_bytes("\ufeffa green bench and a red car\r\na blue backpack and a brown cow".encode())
    (dataset / "spatial_val.txt").write_bytes(b"a girl on the left of a bicycle\n\n")
    assert read_prompt_file(dataset / "color_val.txt") == ["a green bench and a red car", "a blue backpack and a brown cow"]
    rows = generation_plan(tmp_path, ["color", "spatial"])
    assert len(rows) == 30 and [r["seed"] for r in rows[:10]] == list(range(42, 52))
    assert rows[0]["file"] == "color/samples/a green bench and a red car_000000.png"
    assert rows[19]["file"] == "color/samples/a blue backpack and a brown cow_000009.png" and rows[19]["prompt_id"] == 1
    with pytest.raises(FileNotFoundError, match="shape_val.txt"):
        generation_plan(tmp_path, ["shape"])


@pytest.mark.parametrize("prompt, chunks, questions", [
    ("a green bench and a red car", ["a green bench", "a red car"], ["a green bench?", "a red car?"]),
    ("a blue backpack and a brown cow", ["a blue backpack", "a brown cow"], ["a blue backpack?", "a brown cow?"]),
    ("A round clock and a rectangular mirror", ["A round clock", "a rectangular mirror"],
     ["A round clock?", "a rectangular mirror?"]),
    ("a leather jacket and a knitted hat", ["a leather jacket", "a knitted hat"], ["a leather jacket?", "a knitted hat?"]),
    ("a girl on the left of a bicycle", ["a girl", "the left", "a bicycle"], ["a girl?", "a bicycle?"]),
    ("The fluffy towel was next to the metallic spoon", ["The fluffy towel", "the metallic spoon"],
     ["The fluffy towel?", "the metallic spoon?"]),
    ("a man riding a horse", ["a man", "a horse"], ["a man?", "a horse?"]),
])
def test_noun_chunks_and_questions_on_real_style_prompts(prompt, chunks, questions):
    assert noun_chunks(prompt) == chunks
    assert vqa_questions(prompt) == questions


def test_questions_are_capped_at_eight():
    prompt = " and ".join(f"a red {noun}" for noun in "car cow cat dog bench chair table horse bowl cup".split())
    assert len(vqa_questions(prompt)) == 8


def test_spatial_objects_relation_and_adjective_stripping():
    assert spatial_objects("a girl on the left of a bicycle") == ("person", "bicycle")
    assert spatial_relation("a girl on the left of a bicycle") == "on the left of"
    assert spatial_relation("a cat near a dog") == "near" and spatial_relation("a red car") is None
    complex_prompt = "The black chair was on the left of the white table in a bright room"
    assert spatial_objects(complex_prompt, around_relation=True) == ("chair", "table")
    assert spatial_objects(complex_prompt) == ("chair", "room")
    assert strip_adjectives("The black chair was next to the white table") == "The chair was next to the table"


def test_spatial_rules_on_synthetic_boxes():
    left, right = (0, 0, 100, 100), (300, 10, 400, 110)  # centres 250 px apart horizontally, 10 vertically
    assert position_score("on the left of", left, right) == 1.0
    assert position_score("on the right of", left, right) == 0.0
    assert position_score("on the right of", right, left) == 1.0
    overlapping = (50, 0, 150, 100)  # IoU 1/3 with `left`, centre to the right
    assert position_score("on the left of", left, overlapping) == pytest.approx(0.1 / (1 / 3))
    top, bottom = (0, 0, 100, 100), (20, 300, 120, 400)
    assert position_score("on the top of", top, bottom) == 1.0
    assert position_score("on the bottom of", bottom, top) == 1.0
    assert position_score("on the left of", top, bottom) == 0.0  # |dy| > |dx|
    assert position_score("next to", left, right) == 1.0  # |dy| < 150
    far = (400, 400, 500, 500)
    assert position_score("near", left, far) == pytest.approx(150 / 400)
    assert position_score(None, left, right) == 0.0
    a, b = Detection(0.9, left), Detection(0.8, right)
    assert image_score("on the left of", a, b) == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5)
    assert image_score("on the right of", a, b) == 0.0  # 0.425 < 0.5
    assert image_score("on the left of", a, None) == 0.0 and image_score("near", None, None) == 0.0
    assert resize_for_detection(Image.new("RGB", (512, 512))).size == (479, 479)
    assert resize_for_detection(Image.new("RGB", (1024, 512))).size == (480, 240)


PROMPTS = {"color": ["a green bench and a red car", "a blue backpack and a brown cow"],
           "shape": ["a round clock and a rectangular mirror"],
           "texture": ["a fluffy towel and a metallic spoon"],
           "spatial": ["a girl on the left of a bicycle", "a cat near a dog"],
           "non_spatial": ["a man riding a horse"],
           "complex": ["The black chair was on the left of the white table", "a red cat playing with a blue ball"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_all(tmp_path_factory.mktemp("models"))


def _image(rng, size=64):
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_every_category_end_to_end(tmp_path, tiny):
    rng = np.random.default_rng(0)
    samples = []
    for category, prompts in PROMPTS.items():
        for prompt_id, prompt in enumerate(prompts):
            for index in range(2):
                name = f"{category}/samples/{prompt}_{index:06}.png"
                (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
                _image(rng).save(tmp_path / name)
                samples.append(Sample(file=name, prompt=prompt, seed=42 + index, index=index, category=category,
                                      prompt_id=prompt_id))
    write_samples(tmp_path, samples)
    out = evaluate(tmp_path, blip=str(tiny["blip_vqa"]), detector=str(tiny["detector"]), clip=str(tiny["clip"]),
                   detector_confidence=0.0, batch_size=4)
    assert out["comparable_to_paper"] is False and set(out["aggregate"]) >= set(PROMPTS)
    assert out["protocol"]["vqa_image_size"] == 480
    for row in out["per_image"]:
        for name, value in row["scores"].items():
            low = -1.0 if name in ("non_spatial", "complex_clip", "complex") else 0.0
            assert low <= value <= 1.0, (name, value)
    assert out["aggregate"]["color"]["n"] == 2 and set(out["aggregate_by_seed"]) == {"42", "43"}
    official = tmp_path / "eval" / "compbench_official"
    color = json.loads((official / "color" / "annotation_blip" / "vqa_result.json").read_text())
    assert [r["question_id"] for r in color] == [0, 1, 2, 3] and isinstance(color[0]["answer"], str)
    for path in ("spatial/labels/annotation_obj_detection_2d", "non_spatial/annotation_clip",
                 "complex/annotation_3_in_1", "complex/annotation_blip", "complex/annotation_clip",
                 "complex/labels/annotation_obj_detection_2d"):
        assert (official / path / "vqa_result.json").exists(), path
    averages = json.loads((official / "averages.json").read_text())
    assert averages["color"] == pytest.approx(np.mean([float(r["answer"]) for r in color]), abs=1e-4)
    complex_rows = [r for r in out["per_image"] if r["category"] == "complex"]
    assert sum("complex_spatial" in r["scores"] for r in complex_rows) == 2  # only the spatial complex prompt


def test_official_folder_layout_through_the_cli(tmp_path, tiny):
    rng = np.random.default_rng(1)
    samples = tmp_path / "samples"
    samples.mkdir()
    for prompt in PROMPTS["color"]:
        for index in range(2):
            _image(rng, 48).save(samples / f"{prompt}_{index:06}.png")
    main([str(tmp_path), "--category", "color", "--blip", str(tiny["blip_vqa"]), "--out", str(tmp_path / "r.json")])
    out = json.loads((tmp_path / "r.json").read_text())
    assert {r["seed"] for r in out["per_image"]} == {42, 43} and out["aggregate"]["color"]["n"] == 2
    assert all(0 <= r["scores"]["color"] <= 1 for r in out["per_image"])
