"""eval.compbench: conformance with the official T2I-CompBench code on its real val prompts (questions,
objects, CLIP text, complex sub-splits, file names, the official 3_in_1.py on our output), the spatial
rules, and every category end to end with tiny random models loaded by path (scores are meaningless;
ranges and file layouts are real).

The official reference files are found through T2I_COMPBENCH_DIR (a T2I-CompBench checkout with the
golden question file), by default ../shared/t2i-compbench next to the repository."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.common import Sample, samples_from_images, write_samples
from eval.compbench import complex as complex_
from eval.compbench import evaluate, merge, questions
from eval.compbench.__main__ import main
from eval.compbench.prompts import CATEGORIES, complex_parts, generation_plan, read_prompt_file
from eval.compbench.questions import spatial_objects, spatial_relation, strip_adjectives, vqa_questions
from eval.compbench.spatial import Detection, image_score, position_score, resize_for_detection
from eval.tiny_models import save_all

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("T2I_COMPBENCH_DIR", REPO.parent / "shared" / "t2i-compbench"))


@pytest.fixture(scope="module")
def reference():
    if not (REFERENCE / "examples" / "dataset" / "color_val.txt").exists():
        pytest.skip(f"no T2I-CompBench reference at {REFERENCE} (set T2I_COMPBENCH_DIR to a checkout)")
    return REFERENCE


@pytest.fixture(scope="module")
def golden(reference):
    files = sorted((reference / "golden").glob("official_questions_*.json"))
    if not files:
        pytest.skip(f"no golden/official_questions_*.json under {reference}")
    return json.loads(files[-1].read_text())


def _official_logic(reference):
    spec = importlib.util.spec_from_file_location("official_text_logic", reference / "golden" / "official_text_logic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _val(reference, category):
    return read_prompt_file(reference / "examples" / "dataset" / f"{category}_val.txt")


# ---------------------------------------------------------------- conformance on the real prompts

@pytest.mark.parametrize("category", CATEGORIES)
def test_questions_objects_and_clip_text_agree_with_the_official_code_on_every_val_prompt(golden, reference,
                                                                                          category):
    assert questions.language_model()["model_version"] == golden["model"]
    prompts, expected = _val(reference, category), golden[category]
    assert len(prompts) == len(expected["questions"]) == 300
    wrong = [(p, vqa_questions(p), q) for p, q in zip(prompts, expected["questions"]) if vqa_questions(p) != q]
    assert not wrong, f"{len(wrong)} of 300 questions differ, e.g. {wrong[0]}"
    if expected["objects"]:
        def objects(prompt):
            found = spatial_objects(prompt, around_relation=category == "complex")
            return list(found) if found else (["<IndexError>"] if category != "complex" else [None, None])
        wrong = [(p, objects(p), o) for p, o in zip(prompts, expected["objects"]) if objects(p) != o]
        assert not wrong, f"{len(wrong)} of 300 detector objects differ, e.g. {wrong[0]}"
    if expected["clip_text"]:
        wrong = [(p, strip_adjectives(p), t) for p, t in zip(prompts, expected["clip_text"]) if strip_adjectives(p) != t]
        assert not wrong, f"{len(wrong)} of 300 CLIP texts differ, e.g. {wrong[0]}"


def test_without_a_language_model_the_evaluator_stops_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(questions, "MODEL_PACKAGES", ("no_such_model_package",))
    questions._spacy_pipeline.cache_clear()
    questions.parse.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="spacy download en_core_web_sm"):
            vqa_questions("a red orange and a green apple")
        _image(np.random.default_rng(0)).save(tmp_path / "a red orange_000000.png")
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path), "--category", "color"])
        assert exit_.value.code == 2
    finally:
        questions._spacy_pipeline.cache_clear()
        questions.parse.cache_clear()


def test_complex_subsplits_and_formula_are_the_official_ones(reference):
    dataset = reference / "examples" / "dataset"
    prompts = _val(reference, "complex")
    official = _official_logic(reference).official_subsplit(str(dataset))
    parts = complex_parts(reference)
    assert [parts(p) for p in prompts] == official
    counts = {k: sum(o == k for o in official) for k in set(official)}
    assert counts[("vqa", "spatial")] > 0 and counts[("vqa", "clip")] > 0 and counts[("vqa", "spatial", "clip")] > 0
    rng = np.random.default_rng(0)
    for p, expected_parts in zip(prompts, official):
        v, s, c = rng.uniform(size=3)
        terms = {"vqa": v, "spatial": s, "clip": c}
        assert complex_.combine(parts(p), v, s, c) == pytest.approx(np.mean([terms[k] for k in expected_parts]))


def test_on_top_of_is_a_relation_and_complex_objects_follow_the_preposition_rule():
    assert spatial_relation("The red hat was on top of the brown coat rack.") == "on top of"
    assert position_score("on top of", (0, 0, 10, 10), (0, 200, 10, 210)) == 0.0  # the official rules score it 0
    assert spatial_objects("The red hat was on top of the brown coat rack.", around_relation=True) == ("hat", "coat")


def test_plan_writes_the_official_running_file_names_on_the_real_prompts(reference):
    rows = generation_plan(reference, ["color"])
    prompts = _val(reference, "color")
    assert len(rows) == 3000
    for counter, row in enumerate(rows):
        line, index = divmod(counter, 10)
        assert row["file"] == f"color/samples/{prompts[line]}_{counter:06}.png"
        assert (row["prompt_id"], row["index"], row["seed"]) == (line, index, 42 + index)


def test_a_folder_made_by_the_official_generator_reads_with_prompt_ids_and_seeds_42_to_51(reference, tmp_path):
    prompts = _val(reference, "color")[:3]
    for line, prompt in enumerate(prompts):
        for index in range(10):
            Image.new("RGB", (8, 8)).save(tmp_path / f"{prompt}_{10 * line + index:06}.png")
    samples = samples_from_images(tmp_path)
    assert {(s.prompt, s.prompt_id) for s in samples} == {(p, i) for i, p in enumerate(prompts)}
    assert sorted({s.seed for s in samples}) == list(range(42, 52))
    assert all(s.seed == 42 + s.index for s in samples)


def test_the_prompt_set_skips_the_extended_categories_and_the_evaluator_names_them(reference, monkeypatch, tmp_path,
                                                                                    tiny):
    import glob

    from ablations.grid import registry

    monkeypatch.setenv("T2I_COMPBENCH_DATASET", str(reference / "examples" / "dataset"))
    files = glob.glob(registry("prompt_sets")["t2i_compbench_val"]["glob"])
    assert sorted(Path(f).name for f in files) == sorted(f"{c}_val.txt" for c in CATEGORIES)
    rng = np.random.default_rng(0)
    samples = []
    for category in ("color", "3d_spatial", "numeracy"):
        name = f"{category}.png"
        _image(rng).save(tmp_path / name)
        samples.append(Sample(file=name, prompt="a red car and a blue bench", seed=42, category=category, prompt_id=0))
    write_samples(tmp_path, samples)
    out = evaluate(tmp_path, blip=str(tiny["blip_vqa"]))
    assert set(out["aggregate"]) == {"color"}
    assert out["protocol"]["excluded_categories"] == {"3d_spatial": 1, "numeracy": 1}
    write_samples(tmp_path, samples[1:])
    with pytest.raises(ValueError, match="no samples of the six categories"):
        evaluate(tmp_path, blip=str(tiny["blip_vqa"]))


def test_official_3_in_1_runs_on_our_output_and_gives_our_complex_score(reference, tmp_path, tiny):
    prompts = _val(reference, "complex")
    parts = complex_parts(reference)
    chosen = [next(p for p in prompts if parts(p) == kind)
              for kind in (("vqa", "spatial"), ("vqa", "clip"), ("vqa", "spatial", "clip"))]
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "complex_val.txt").write_text("\n".join(chosen))
    for name in ("complex_val_spatial.txt", "complex_val_action.txt"):
        shutil.copyfile(reference / "examples" / "dataset" / name, dataset / name)
    folder = tmp_path / "samples"
    rng = np.random.default_rng(0)
    rows = generation_plan(dataset, ["complex"])
    for row in rows:
        (folder / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        _image(rng).save(folder / row["file"])
    write_samples(folder, [Sample(**row) for row in rows])
    out = evaluate(folder, checkout=str(dataset), blip=str(tiny["blip_vqa"]), detector=str(tiny["detector"]),
                   clip=str(tiny["clip"]), detector_confidence=0.0, batch_size=10)
    assert out["protocol"]["language_model"]["spacy"].startswith("3.8")
    official = Path(out["protocol"]["official_dir"]) / "complex"
    ours = json.loads((official / "annotation_3_in_1" / "vqa_result.json").read_text())
    run = subprocess.run([sys.executable, str(reference / "3_in_1_eval" / "3_in_1.py"), "--outpath", str(official),
                          "--data_path", str(dataset)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    theirs = json.loads((official / "annotation_3_in_1" / "vqa_result.json").read_text())
    assert [r["question_id"] for r in theirs] == [r["question_id"] for r in ours] == list(range(30))
    np.testing.assert_allclose([r["answer"] for r in theirs], [r["answer"] for r in ours], rtol=0, atol=1e-12)
    printed = float(re.search(r"avg score: (\S+)", run.stdout).group(1))
    assert printed == pytest.approx(out["official_averages"]["complex"], abs=1e-12)
    assert printed == pytest.approx(out["aggregate"]["complex"]["mean"], abs=1e-12)


# ---------------------------------------------------------------- rules and plumbing

def test_prompt_files_with_crlf_bom_and_no_final_newline(tmp_path):
    dataset = tmp_path / "examples" / "dataset"
    dataset.mkdir(parents=True)
    (dataset / "color_val.txt").write_bytes("\ufeffa green bench and a red car\r\na blue backpack and a brown cow".encode())
    (dataset / "spatial_val.txt").write_bytes(b"a girl on the left of a bicycle\n\n")
    assert read_prompt_file(dataset / "color_val.txt") == ["a green bench and a red car", "a blue backpack and a brown cow"]
    rows = generation_plan(tmp_path, ["color", "spatial"])
    assert len(rows) == 30 and [r["seed"] for r in rows[:10]] == list(range(42, 52))
    assert rows[0]["file"] == "color/samples/a green bench and a red car_000000.png"
    assert rows[19]["file"] == "color/samples/a blue backpack and a brown cow_000019.png" and rows[19]["prompt_id"] == 1
    assert rows[20]["file"] == "spatial/samples/a girl on the left of a bicycle_000000.png"
    with pytest.raises(FileNotFoundError, match="shape_val.txt"):
        generation_plan(tmp_path, ["shape"])


def test_questions_are_capped_at_eight():
    prompt = " and ".join(f"a red {noun}" for noun in "car cow cat dog bench chair table horse bowl cup".split())
    assert len(vqa_questions(prompt)) == 8


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


def test_blip_questions_start_with_enc_as_official_blip_sees_them(tiny):
    from eval.compbench.vqa import BlipVqa

    vqa = BlipVqa(str(tiny["blip_vqa"]))
    seen = []
    forward = vqa.model.text_encoder.forward
    vqa.model.text_encoder.forward = lambda *a, **k: seen.append(k["input_ids"]) or forward(*a, **k)
    vqa.score([_image(np.random.default_rng(0))], ["a green bench and a red car"])
    enc = vqa.processor.tokenizer.convert_tokens_to_ids("[ENC]")
    assert seen and seen[0][:, 0].tolist() == [enc, enc] and vqa.protocol()["vqa_question_tokens"].startswith("[ENC]")


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
    checkout = tmp_path / "dataset"
    checkout.mkdir()
    (checkout / "complex_val_spatial.txt").write_text("The black chair was on the left of the white table\n")
    (checkout / "complex_val_action.txt").write_text("a red cat playing with a blue ball\n")
    kwargs = dict(blip=str(tiny["blip_vqa"]), detector=str(tiny["detector"]), clip=str(tiny["clip"]),
                  detector_confidence=0.0, batch_size=4)
    with pytest.raises(ValueError, match="complex category needs the T2I-CompBench checkout"):
        evaluate(tmp_path, **kwargs)
    out = evaluate(tmp_path, checkout=str(checkout), **kwargs)
    assert out["comparable_to_paper"] is False and set(out["aggregate"]) >= set(PROMPTS)
    assert out["protocol"]["vqa_image_size"] == 480
    assert out["protocol"]["language_model"]["model_version"] == "3.8.0"
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
        assert len(json.loads((official / path / "vqa_result.json").read_text())) in (2, 4), path
    averages = json.loads((official / "averages.json").read_text())
    assert averages["color"] == pytest.approx(np.mean([float(r["answer"]) for r in color]), abs=1e-12)
    complex_rows = [r["scores"] for r in out["per_image"] if r["category"] == "complex"]
    assert all("complex_spatial" in r for r in complex_rows)  # the official detector pass scores every image
    for r, kind in zip(complex_rows, ["spatial"] * 2 + ["action"] * 2):
        other = r["complex_spatial"] if kind == "spatial" else r["complex_clip"]
        assert r["complex"] == pytest.approx((other + r["complex_vqa"]) / 2)


def test_official_folder_layout_through_the_cli(tmp_path, tiny):
    rng = np.random.default_rng(1)
    samples = tmp_path / "samples"
    samples.mkdir()
    for line, prompt in enumerate(PROMPTS["color"]):
        for index in range(2):
            _image(rng, 48).save(samples / f"{prompt}_{10 * line + index:06}.png")
    main([str(tmp_path), "--category", "color", "--blip", str(tiny["blip_vqa"]), "--out", str(tmp_path / "r.json")])
    out = json.loads((tmp_path / "r.json").read_text())
    assert {r["seed"] for r in out["per_image"]} == {42, 43} and out["aggregate"]["color"]["n"] == 2
    assert all(0 <= r["scores"]["color"] <= 1 for r in out["per_image"])


def _every_category_folder(folder: Path) -> Path:
    rng = np.random.default_rng(2)
    samples = []
    for category, prompts in PROMPTS.items():
        for prompt_id, prompt in enumerate(prompts):
            for index in range(3):
                name = f"{category}/samples/{prompt}_{index:06}.png"
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                _image(rng).save(folder / name)
                samples.append(Sample(file=name, prompt=prompt, seed=42 + index, index=index, category=category,
                                      prompt_id=prompt_id))
    write_samples(folder, samples)
    checkout = folder / "dataset"
    checkout.mkdir()
    (checkout / "complex_val_spatial.txt").write_text("The black chair was on the left of the white table\n")
    (checkout / "complex_val_action.txt").write_text("a red cat playing with a blue ball\n")
    return checkout


def test_scoring_in_shards_merges_into_the_unsharded_result_and_official_files(tmp_path, tiny):
    folder = tmp_path / "samples"
    checkout = _every_category_folder(folder)
    kwargs = dict(blip=str(tiny["blip_vqa"]), detector=str(tiny["detector"]), clip=str(tiny["clip"]),
                  detector_confidence=0.0, batch_size=2, checkout=str(checkout))
    whole = evaluate(folder, official_dir=str(tmp_path / "whole"), **kwargs)
    count = 4  # 15 batches of at most 2 images over six categories
    paths = [tmp_path / "parts" / f"{k}.json" for k in range(count)]
    for k, path in enumerate(paths):
        part = evaluate(folder, official_dir=str(tmp_path / "merged"), shard=(k, count), out=path, **kwargs)
        assert 0 < len(part["per_image"]) <= 8
    merged = merge(paths)
    assert merged["per_image"] == whole["per_image"] and merged["per_prompt"] == whole["per_prompt"]
    for name, value in whole["aggregate"].items():
        assert merged["aggregate"][name]["mean"] == pytest.approx(value["mean"], abs=1e-12)
    assert merged["aggregate"] == whole["aggregate"] and merged["official_averages"] == whole["official_averages"]
    expected = {**whole["protocol"], "official_dir": str(tmp_path / "merged")}
    assert merged["protocol"] == json.loads(json.dumps(expected))
    official = {p.relative_to(tmp_path / "whole"): p.read_bytes() for p in (tmp_path / "whole").rglob("*") if p.is_file()}
    assert len(official) > 10
    assert {p.relative_to(tmp_path / "merged"): p.read_bytes()
            for p in (tmp_path / "merged").rglob("*") if p.is_file()} == official
