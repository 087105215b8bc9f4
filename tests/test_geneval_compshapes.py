"""GenEval on CompShapes: the prompt set (six tasks, held-out combinations), GenEval's rules on the judge's
exact detections (ground truth scores 1, a wrong count, colour or position 0), the evaluator's output,
sharding, and its registration in the image grids."""
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from ablations.grid import expand, load_grid
from ablations.registries import registry
from ablations.prompt_sets import prompt_records
from eval.common import Sample, write_samples
from eval.geneval import compshapes as gc
from eval.geneval.rules import TAGS
from gentron.config import SampleConfig
from gentron.data import compshapes as cs
from gentron.data import compshapes_geneval as cg
from gentron.errors import ConfigError


def _render(prompt, seed, resolution=32):
    return cs.render(cs.scene_for_prompt(prompt, seed, "test"), resolution)


def _records():
    return prompt_records("geneval_compshapes", SampleConfig(seeds=[42]))


def test_prompt_set_covers_geneval_tasks_with_held_out_combinations():
    records = _records()
    by_task = {tag: sorted({r["prompt"] for r in records if r["category"] == tag}) for tag in TAGS}
    assert {tag: len(p) for tag, p in by_task.items()} == {
        "single_object": 4, "two_object": 24, "counting": 24, "colors": 5, "position": 24, "color_attr": 24}
    assert all(sum(r["prompt"] == p for r in records) == 4 for p in {r["prompt"] for r in records})
    training = {p for c in cs.CATEGORIES for p in cs.prompts(c, "train")}
    for tag, prompts in by_task.items():
        for prompt in prompts:
            spec = cs.parse_prompt(prompt)
            assert cg.task_of(spec) == tag and gc.metadata(prompt)["tag"] == tag
            if tag == "single_object":  # nothing to hold out of "a circle"
                assert prompt in training
                continue
            assert prompt not in training
            if tag == "counting":
                assert (len(spec.phrases), spec.phrases[0].shape) in cs.HELD_OUT_COUNT_SHAPE
            else:
                assert any((p.color, p.shape) in cs.HELD_OUT_COLOR_SHAPE for p in spec.phrases)
    assert "next to" not in " ".join(by_task["position"])


def test_metadata_is_geneval_clauses():
    assert gc.metadata("three blue circles") == {
        "tag": "counting", "include": [{"class": "circle", "count": 3}], "exclude": [{"class": "circle", "count": 4}],
        "prompt": "three blue circles"}
    assert gc.metadata("a red circle on the top of a blue square")["include"] == [
        {"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["above", 0]}]
    assert gc.metadata("a red circle and a blue square")["include"] == [
        {"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}]
    assert gc.metadata("a green circle")["include"] == [{"class": "circle", "count": 1, "color": "green"}]
    with pytest.raises(ValueError, match="none of GenEval's tasks"):
        gc.metadata("a striped circle and a dotted square")


@pytest.mark.parametrize("resolution", [32, 64])
def test_ground_truth_renders_score_correct_on_every_task(resolution):
    prompts = sorted({(r["category"], r["prompt"]) for r in _records()})
    wrong = []
    for seed in range(2 if resolution == 32 else 1):
        for tag, prompt in prompts:
            correct, reason, _ = gc.score(prompt, _render(prompt, seed, resolution))
            if not correct:
                wrong.append((tag, prompt, seed, reason))
    assert not wrong
    assert {tag for tag, _ in prompts} == set(TAGS)


def _draw(objects):
    return cs.render(cs.Scene(tuple(objects), None, "", "counting"), 32)


def test_wrong_count_colour_and_position_are_wrong():
    scene = cs.scene_for_prompt("three circles", 0, "test")
    assert gc.score("three circles", _draw(scene.objects))[0]
    correct, reason, detected = gc.score("three circles", _draw(scene.objects[:2]))
    assert not correct and reason == "expected circle>=3, found 2" and len(detected["circle"]) == 2
    four = cs.scene_for_prompt("four squares", 0, "test").objects
    assert not gc.score("three squares", _draw(four))[0]  # one too many: the exclude clause
    assert "expected square<4, found 4" in gc.score("three squares", _draw(four))[1]
    assert gc.score("four squares", _draw(four))[0]
    three_triangles = [dataclasses.replace(o, shape="triangle") for o in scene.objects]
    assert not gc.score("three circles", _draw(three_triangles))[0]  # right count, wrong class

    green = cs.scene_for_prompt("a green circle", 0, "test").objects
    assert gc.score("a green circle", _draw(green))[0]
    correct, reason, _ = gc.score("a green circle", _draw([dataclasses.replace(green[0], color="red")]))
    assert not correct and reason == "expected green circle>=1, found 0 green; and 1 red"

    pair = "a red circle and a blue square"
    a, b = cs.scene_for_prompt(pair, 0, "test").objects
    assert gc.score(pair, _draw([a, b]))[0]
    assert not gc.score(pair, _draw([dataclasses.replace(a, color="blue"), dataclasses.replace(b, color="red")]))[0]

    left = "a red circle on the left of a blue square"
    a, b = cs.scene_for_prompt(left, 0, "test").objects
    assert gc.score(left, _draw([a, b]))[0]
    swapped = [dataclasses.replace(a, center=b.center), dataclasses.replace(b, center=a.center)]
    correct, reason, _ = gc.score(left, _draw(swapped))
    assert not correct and reason.startswith("expected circle left of target, found right of")
    assert not gc.score(left, np.full((32, 32, 3), cs.BACKGROUND, np.uint8))[0]


def _sample_folder(tmp_path, spoil=()):
    """The prompt set's samples as ground-truth renders; the images in `spoil` (record indices) drawn blank."""
    records = _records()
    samples = []
    for i, r in enumerate(records):
        image = np.full((32, 32, 3), cs.BACKGROUND, np.uint8) if i in spoil else _render(r["prompt"], r["seed"])
        name = f"{i:05d}.png"
        Image.fromarray(image).save(tmp_path / name)
        samples.append(Sample(file=name, prompt=r["prompt"], seed=r["seed"], index=r["index"], category=r["category"],
                              prompt_id=r["prompt_id"]))
    write_samples(tmp_path, samples)
    return records


def test_evaluate_scores_a_sample_folder_and_shards_agree(tmp_path):
    records = _sample_folder(tmp_path, spoil={0})  # one of single_object's first prompt's 4 images
    out = gc.evaluate(tmp_path)
    agg = out["aggregate"]
    assert records[0]["category"] == "single_object"
    assert agg["single_object"]["mean"] == pytest.approx((3 * 1.0 + 0.75) / 4)
    assert all(agg[tag]["mean"] == 1.0 for tag in TAGS if tag != "single_object")
    assert agg["overall"]["mean"] == pytest.approx((5 + 0.9375) / 6)
    assert agg["overall"]["n"] == 105 and len(out["per_image"]) == 420
    assert out["official_summary"]["overall"] == pytest.approx(agg["overall"]["mean"])
    rows = (tmp_path / "eval" / "geneval_compshapes_results.jsonl").read_text().splitlines()
    first, shape = json.loads(rows[0]), cs.parse_prompt(records[0]["prompt"]).phrases[0].shape
    assert len(rows) == 420 and first["correct"] is False and first["reason"] == f"expected {shape}>=1, found 0"
    assert json.loads(first["metadata"]) == gc.metadata(records[0]["prompt"])
    parts = [gc.evaluate(tmp_path, shard=(k, 3), out=tmp_path / f"part{k}.json") for k in range(3)]
    merged = gc.merge([tmp_path / f"part{k}.json" for k in range(3)])
    assert merged["aggregate"] == out["aggregate"] and sum(len(p["per_image"]) for p in parts) == 420


def test_registered_in_every_image_grid():
    assert registry("metrics")["geneval_compshapes"]["module"] == "eval.geneval.compshapes"
    for name in ("conditioning", "text_encoder", "scale"):
        evaluation = load_grid(name, "embedded").evaluation
        assert "geneval_compshapes" in evaluation.metrics and "geneval_compshapes" in evaluation.prompt_sets


def test_metrics_follow_prompt_sets_chosen_on_the_command_line():
    """`sample.prompt_sets=[compshapes_smoke]` alone scores what that set allows; metrics named too must match."""
    grid = load_grid("conditioning", "embedded")
    assert {tuple(c.config.eval.metrics) for c in expand(grid, {})} == {("compshapes_judge", "geneval_compshapes")}
    cells = expand(grid, {"sample.prompt_sets": ["compshapes_smoke", "geneval_compshapes_smoke"]})
    assert {tuple(c.config.eval.metrics) for c in cells} == {("compshapes_judge", "geneval_compshapes")}
    cells = expand(grid, {"sample.prompt_sets": ["compshapes_smoke"]})
    assert {tuple(c.config.eval.metrics) for c in cells} == {("compshapes_judge",)}
    with pytest.raises(ConfigError, match="metric 'geneval_compshapes' reads"):
        expand(grid, {"sample.prompt_sets": ["compshapes_smoke"], "eval.metrics": ["geneval_compshapes"]})
