"""eval.geneval end to end with tiny random models loaded by path (scores are meaningless; file layouts,
plumbing and the official tools reading our output are real): both sample-folder layouts, the official
summary_scores.py on our results.jsonl, the colour classifier against the official one (real
clip_benchmark, tiny open_clip), the detector's post-processing, the prompt set, and the one-line refusals.

The official files are found through GENEVAL_OFFICIAL (a checkout of djghosh13/geneval), by default
../shared/geneval next to the repository."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.common import Sample, write_samples
from eval.geneval import colors, detector as detector_, prompts, run
from eval.geneval.__main__ import main
from eval.geneval.prompts import CLASSES, read_metadata
from eval.geneval.rules import COLORS, TAGS, Settings
from eval.geneval.tiny import save_tiny_clip, save_tiny_detector
from tests.test_geneval_conformance import load_official_scorer, official_files


@pytest.fixture(scope="module")
def official():
    return official_files()


@pytest.fixture(scope="module")
def metadata(official):
    return read_metadata(official / "prompts" / "evaluation_metadata.jsonl")


@pytest.fixture(scope="module")
def chosen(metadata):
    """One prompt of each task (its line in the metadata file = its prompt id)."""
    return {tag: next(i for i, m in enumerate(metadata) if m["tag"] == tag) for tag in TAGS}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, metadata, chosen):
    root = tmp_path_factory.mktemp("geneval_models")
    favour = sorted({c["class"] for i in chosen.values() for c in metadata[i]["include"]})
    return {"detector": save_tiny_detector(root / "mask2former", favour=favour),
            "clip": f"local-dir:{save_tiny_clip(root / 'clip')}"}


def _image(rng, size=(64, 48)):
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


# ---------------------------------------------------------------- the official lists

def test_classes_colours_and_templates_are_the_official_ones(official):
    for path in (official / "prompts" / "object_names.txt", official / "evaluation" / "object_names.txt"):
        assert tuple(path.read_text().splitlines()) == CLASSES
    scorer = load_official_scorer(official)
    assert tuple(scorer.COLORS) == COLORS
    seen = {}

    def classifier(model, tokenizer, classnames, templates, device):
        seen.update(classnames=classnames, templates=templates)
        return "classifier"

    scorer.zsc = types.SimpleNamespace(zero_shot_classifier=classifier,
                                       run_classification=lambda *a: (torch.zeros(0, 10), None))
    scorer.torch = types.SimpleNamespace(no_grad=torch.no_grad, utils=types.SimpleNamespace(
        data=types.SimpleNamespace(DataLoader=lambda *a, **k: [])))
    scorer.Image, scorer.clip_model, scorer.tokenizer = Image, None, None
    scorer.official_color_classification(Image.new("RGB", (8, 8)), [], "fire hydrant")
    assert seen["classnames"] == list(COLORS)
    assert seen["templates"] == colors.templates("fire hydrant")
    assert [t.format(c="red") for t in seen["templates"]] == [
        "a photo of a red fire hydrant", "a photo of a red-colored fire hydrant", "a photo of a red object"]


def test_colour_classification_agrees_with_the_official_code_on_a_tiny_clip(official, tiny):
    """The official color_classification (real clip_benchmark, its crops and masks) and ours, same model."""
    import open_clip
    from clip_benchmark.metrics import zeroshot_classification as zsc
    from PIL import ImageOps

    scorer = load_official_scorer(official)
    namespace = scorer.__dict__
    loader = torch.utils.data.DataLoader
    namespace.update(Image=Image, ImageOps=ImageOps, zsc=zsc, DEVICE="cpu",
                     torch=types.SimpleNamespace(no_grad=torch.no_grad, utils=types.SimpleNamespace(data=types.SimpleNamespace(
                         Dataset=torch.utils.data.Dataset,
                         DataLoader=lambda data, batch_size, num_workers: loader(data, batch_size=batch_size)))))
    ours = colors.ColourClassifier(tiny["clip"], device="cpu", amp=True)  # the official passes amp's default
    model, transform, tokenizer = ours._load()
    namespace.update(clip_model=model, transform=transform, tokenizer=tokenizer)
    assert isinstance(model, open_clip.CLIP)
    rng = np.random.default_rng(0)
    image = _image(rng, (96, 80))
    objects = []
    for _ in range(20):
        x1, y1 = rng.integers(0, 60), rng.integers(0, 50)
        box = np.float32([x1, y1, x1 + rng.integers(1, 36), y1 + rng.integers(1, 30), rng.random()])
        mask = rng.random((80, 96)) < 0.6
        objects.append((box, mask))
    objects.append((np.float32([0, 0, 96, 80, 0.5]), None))  # no mask: the whole box
    # the reference hands PIL's crop the numpy row, which Pillow 13 refuses (`box == (0, 0, w, h)` on an
    # array); it gets the same numbers as a tuple here
    as_tuples = [(tuple(box.tolist()), mask) for box, mask in objects]
    for options in ({}, {"bgcolor": "original"}, {"crop": "0"}, {"bgcolor": "#000"}):
        namespace["args"] = types.SimpleNamespace(options=options)
        crops = namespace["ImageCrops"](image, as_tuples)
        background, crop = options.get("bgcolor", "#999"), options.get("crop", "1") == "1"
        for i, (box, mask) in enumerate(objects):
            assert torch.equal(crops[i][0], transform(colors.object_crop(image, box, mask, background, crop))), (options, i)
    namespace["args"] = types.SimpleNamespace(options={})
    produced = set()
    for name in ("bench", "fire hydrant", "cow"):
        namespace["COLOR_CLASSIFIERS"].clear()
        theirs = scorer.official_color_classification(image, as_tuples, name)
        assert ours.classify(image, objects, name) == theirs
        produced |= set(theirs)
    assert produced <= set(COLORS)


# ---------------------------------------------------------------- the detector's post-processing

def _mmdet_reference(class_logits, mask_logits, input_hw, resized_hw, original_hw, max_per_image=100):
    """The instance post-processing written plainly, one step per line of its description (docs)."""
    masks = torch.nn.functional.interpolate(mask_logits[None], size=input_hw, mode="bilinear", align_corners=False)[0]
    masks = masks[:, :resized_hw[0], :resized_hw[1]]
    masks = torch.nn.functional.interpolate(masks[None], size=original_hw, mode="bilinear", align_corners=False)[0]
    scores = torch.softmax(class_logits, -1)[:, :-1]
    q, c = scores.shape
    top, idx = scores.flatten().topk(min(max_per_image, q * c), sorted=True)
    out = []
    for score, k in zip(top.tolist(), idx.tolist()):
        logits = masks[k // c]
        binary = logits > 0
        mask_score = float((logits.sigmoid() * binary).sum() / (binary.sum() + 1e-6))
        ys, xs = np.nonzero(binary.numpy())
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]
        out.append((k % c, box, np.float32(score) * np.float32(mask_score), binary.numpy()))
    return out


def test_instance_postprocessing_and_input_sizes():
    assert detector_.resized_shape(512, 512) == (800, 800)
    assert detector_.resized_shape(1024, 768) == (1067, 800)
    assert detector_.resized_shape(2000, 500) == (1333, 333)
    pixels, resized = detector_.preprocess(_image(np.random.default_rng(0), (100, 75)))
    assert resized == (800, 1067) and pixels.shape == (1, 3, 800, 1088)
    assert torch.all(pixels[..., 1067:] == 0)
    torch.manual_seed(0)
    class_logits = torch.randn(7, 6) * 3
    mask_logits = torch.randn(7, 10, 12) * 2 - 0.5
    mask_logits[3] = -5  # an empty mask: box zeros, score 0
    labels, rows, masks = detector_.instances(class_logits, mask_logits, (40, 48), (37, 45), (30, 36), max_per_image=20,
                                              min_score=-1.0)
    expected = _mmdet_reference(class_logits, mask_logits, (40, 48), (37, 45), (30, 36), max_per_image=20)
    assert len(rows) == len(expected) == 20 and rows.dtype == np.float32 and masks.dtype == bool
    for label, row, mask, (e_label, e_box, e_score, e_mask) in zip(labels, rows, masks, expected):
        assert label == e_label and row[:4].tolist() == [float(v) for v in e_box] and np.array_equal(mask, e_mask)
        assert row[4] == pytest.approx(e_score, rel=1e-5)
    assert any(r[:4].tolist() == [0, 0, 0, 0] and r[4] == 0 for r in rows)
    _, kept, _ = detector_.instances(class_logits, mask_logits, (40, 48), (37, 45), (30, 36), max_per_image=20,
                                     min_score=0.3)  # rows no threshold can keep are dropped early
    assert kept.tolist() == [r.tolist() for r in rows if r[4] > np.float32(0.3)]


def test_the_tiny_detector_loads_by_path_and_names_the_80_classes(tiny):
    model = detector_.Detector(str(tiny["detector"]))
    found = model.detect(_image(np.random.default_rng(0)))
    assert list(found) == list(CLASSES)
    rows, masks = found["person"]
    assert rows.dtype == np.float32 and rows.shape[1] == 5 and masks.shape[1:] == (48, 64)
    assert model.protocol()["detector_label_names_renamed"] == {}


# ---------------------------------------------------------------- prompt set, metadata, folders

def test_the_prompt_set_samples_the_553_prompts_with_their_metadata_lines_as_ids(official, metadata, monkeypatch):
    from ablations.grid import registry
    from ablations.prompt_sets import prompt_records

    monkeypatch.setenv("GENEVAL_PROMPTS", str(official / "prompts"))
    records = prompt_records("geneval", types.SimpleNamespace(seeds=[42], images_per_prompt=1))
    assert len(records) == 4 * 553 == 4 * prompts.NUM_PROMPTS
    assert all(metadata[r["prompt_id"]]["prompt"] == r["prompt"] for r in records)
    assert sorted({r["seed"] for r in records}) == [42, 43, 44, 45]
    options = registry("metrics")["geneval"]["options"]
    assert Path(options["metadata"]) == official / "prompts" / "evaluation_metadata.jsonl"
    assert registry("metrics")["geneval"]["prompt_sets"] == ["geneval"]
    assert (options["clip_model"], options["clip_pretrained"]) == ("ViT-L-14", "openai")
    assert options["detector"] == detector_.DEFAULT_DETECTOR


def test_bad_metadata_is_refused_in_one_line(tmp_path):
    cases = {'{"tag": "odd", "prompt": "x", "include": [{"class": "cat", "count": 1}]}': "not GenEval metadata",
             '{"tag": "colors", "prompt": "x", "include": [{"class": "cat", "count": 1, "color": "teal"}]}': "teal",
             '{"tag": "position", "prompt": "x", "include": [{"class": "cat", "count": 1, "position": ["above", 0]}]}':
                 "earlier include clause",
             '{"tag": "counting", "prompt": "x", "include": [{"class": "unicorn", "count": 2}]}': "no COCO class",
             "not json": "not valid JSON"}
    for n, (line, message) in enumerate(cases.items()):
        path = tmp_path / f"m{n}.jsonl"
        path.write_text(line + "\n")
        with pytest.raises(ValueError, match=message) as info:
            read_metadata(path)
        assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="evaluation_metadata.jsonl"):
        read_metadata(tmp_path / "missing.jsonl")


def _gentron_folder(folder: Path, metadata, ids, per_prompt: int, seed: int = 0) -> list[Sample]:
    """A sample folder as the geneval prompt set makes it: generation_prompts/<prompt_id:06>_<seed>.png."""
    from gentron.generate import sample_file

    rng = np.random.default_rng(seed)
    samples = []
    for prompt_id in ids:
        for index in range(per_prompt):
            row = {"prompt": metadata[prompt_id]["prompt"], "seed": 42 + index, "index": index,
                   "category": "generation_prompts", "prompt_id": prompt_id}
            row["file"] = sample_file(row, video=False)
            (folder / row["file"]).parent.mkdir(parents=True, exist_ok=True)
            _image(rng).save(folder / row["file"])
            samples.append(Sample(**row))
    write_samples(folder, samples)
    return samples


def _official_folder(folder: Path, source: Path, samples: list[Sample], metadata) -> None:
    """The same images in the official generator's layout."""
    for s in samples:
        sub = folder / f"{s.prompt_id:05d}"
        (sub / "samples").mkdir(parents=True, exist_ok=True)
        (sub / "metadata.jsonl").write_text(json.dumps(metadata[s.prompt_id]))
        (sub / "samples" / f"{s.index:04d}.png").write_bytes((source / s.file).read_bytes())
    (folder / "grid.png").write_bytes(b"")  # the generator's grid image sits beside the prompt folders


def test_image_counts_and_unknown_prompts_are_refused_before_any_model_loads(tmp_path, official, metadata):
    meta_file = official / "prompts" / "evaluation_metadata.jsonl"
    _gentron_folder(tmp_path, metadata, [0, 1], per_prompt=2)
    with pytest.raises(ValueError, match="2 of 2 prompts do not have 4 images .* --images-per-prompt 2"):
        run.evaluate(tmp_path, metadata=meta_file, detector="no/such-model")
    with pytest.raises(ValueError, match="pass --metadata"):
        run.evaluate(tmp_path, detector="no/such-model", images_per_prompt=2)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    rows[0]["prompt"] = "a photo of a unicorn"
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="not a prompt of"):
        run.evaluate(tmp_path, metadata=meta_file, images_per_prompt=2)
    with pytest.raises(FileNotFoundError, match="neither a gentron sample folder"):
        run.evaluate(tmp_path / "generation_prompts")  # images without a manifest


def test_missing_weights_are_refused_in_one_line_naming_the_model_and_the_fix(tmp_path, official, metadata, tiny,
                                                                              monkeypatch, capsys):
    monkeypatch.delenv(detector_.DETECTOR_ENV, raising=False)
    monkeypatch.delenv(colors.WEIGHTS_ENV, raising=False)
    _gentron_folder(tmp_path, metadata, [0], per_prompt=4)
    meta_file = str(official / "prompts" / "evaluation_metadata.jsonl")
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--metadata", meta_file])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Mask2Former" in err[0]
    assert f"huggingface-cli download {detector_.DEFAULT_DETECTOR}" in err[0] and detector_.DETECTOR_ENV in err[0]
    problems = run.weight_problems()
    assert len(problems) == 2 and "huggingface-cli download timm/vit_large_patch14_clip_224.openai" in problems[1]
    assert colors.WEIGHTS_ENV in problems[1] and "\n" not in problems[1]
    # the detector named by the environment variable; the colour CLIP still missing (a colour prompt)
    monkeypatch.setenv(detector_.DETECTOR_ENV, str(tiny["detector"]))
    colour_folder = tmp_path / "colour"
    colour_folder.mkdir()
    _gentron_folder(colour_folder, metadata, [next(i for i, m in enumerate(metadata) if m["tag"] == "colors")], 4)
    with pytest.raises(SystemExit):
        main([str(colour_folder), "--metadata", meta_file])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "colour CLIP ViT-L-14 'openai'" in err[0] and colors.WEIGHTS_ENV in err[0]
    with pytest.raises(ValueError, match="not an open_clip model name"):
        colors.check_weights("ViT-Nope", "openai")
    assert run.weight_problems(str(tiny["detector"]), tiny["clip"]) == []


# ---------------------------------------------------------------- end to end, both layouts, official tools

@pytest.fixture(scope="module")
def scored(tmp_path_factory, official, metadata, chosen, tiny):
    folder = tmp_path_factory.mktemp("geneval_samples")
    samples = _gentron_folder(folder, metadata, sorted(chosen.values()), per_prompt=2)
    out = run.evaluate(folder, metadata=str(official / "prompts" / "evaluation_metadata.jsonl"),
                       detector=str(tiny["detector"]), clip_model=tiny["clip"], images_per_prompt=2)
    return folder, samples, out


def test_gentron_folder_end_to_end(scored, chosen, metadata):
    folder, samples, out = scored
    assert out["metric"] == "geneval" and out["comparable_to_paper"] is False
    assert set(out["aggregate"]) == {*TAGS, "overall"} and len(out["per_image"]) == 12
    tags = [out["aggregate"][t]["mean"] for t in TAGS]
    assert out["aggregate"]["overall"]["mean"] == pytest.approx(np.mean(tags), abs=1e-12)
    assert out["aggregate"]["overall"]["n"] == 6
    for row in out["per_image"]:
        assert row["category"] == metadata[row["prompt_id"]]["tag"] and row["scores"] == {row["category"]: float(row["correct"])}
    protocol = out["protocol"]
    for key, value in Settings().as_dict().items():
        assert protocol[key] == value
    assert protocol["colour_templates"] == colors.templates("{object}") and protocol["colour_crop"].endswith("#999")
    assert protocol["prompts_by_image_count"] == {2: 6} and protocol["full_benchmark"] is False
    assert set(out["aggregate_by_seed"]) == {"42", "43"} and "overall" in out["aggregate_by_seed"]["42"]
    lines = [json.loads(line) for line in Path(protocol["official_results"]).read_text().splitlines()]
    assert [line["filename"] for line in lines] == [str(folder / s.file) for s in samples]
    assert list(lines[0]) == ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"]
    assert [line["correct"] for line in lines] == [row["correct"] for row in out["per_image"]]
    assert all(json.loads(line["metadata"]) == metadata[s.prompt_id] for line, s in zip(lines, samples))
    # the favoured classes are found, so both verdicts and the colour and position rules occur
    assert 0 < sum(line["correct"] for line in lines) < len(lines)
    assert any("target" in line["reason"] for line in lines) or any(
        json.loads(line["details"]) for line in lines if line["tag"] == "position")
    assert any(re.search(r"found \d+ \w+; and", line["reason"]) or (line["tag"] in ("colors", "color_attr")
                                                                     and line["correct"]) for line in lines)


def test_official_summary_scores_prints_our_overall_score(scored, official, tmp_path):
    _, _, out = scored
    results = out["protocol"]["official_results"]
    proc = subprocess.run([sys.executable, str(official / "evaluation" / "summary_scores.py"), results],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = float(re.search(r"Overall score \(avg\. over tasks\): (\S+)", proc.stdout).group(1))
    assert printed == round(out["aggregate"]["overall"]["mean"], 5)
    assert printed == round(out["official_summary"]["overall"], 5)
    summary = out["official_summary"]
    assert f"Total images: {summary['images']}" in proc.stdout and f"Total prompts: {summary['prompts']}" in proc.stdout
    assert f"% correct images: {summary['correct_images']:.2%}" in proc.stdout
    assert f"% correct prompts: {summary['correct_prompts']:.2%}" in proc.stdout
    for tag in TAGS:
        assert re.search(rf"^{tag}\s+= {out['aggregate'][tag]['mean']:.2%}", proc.stdout, re.M), tag


def test_the_official_layout_gives_the_same_verdicts_through_the_cli(scored, metadata, tiny, tmp_path):
    folder, samples, out = scored
    tags = ("two_object", "colors", "position")  # three of the prompts, to keep it short
    keep = [n for n, row in enumerate(out["per_image"]) if row["category"] in tags]
    samples, out = [samples[n] for n in keep], {**out, "per_image": [out["per_image"][n] for n in keep]}
    official_layout = tmp_path / "outputs"
    _official_folder(official_layout, folder, samples, metadata)
    result_file, official_results = tmp_path / "geneval.json", tmp_path / "official" / "results.jsonl"
    main([str(official_layout), "--detector", str(tiny["detector"]), "--clip-model", tiny["clip"],
          "--images-per-prompt", "2", "--out", str(result_file), "--official-results", str(official_results)])
    again = json.loads(result_file.read_text())
    assert again["protocol"]["layout"] == "official"
    assert [(r["prompt_id"], r["seed"], r["correct"], r["reason"]) for r in again["per_image"]] == [
        (r["prompt_id"], 42, r["correct"], r["reason"]) for r in out["per_image"]]
    ours = [json.loads(line) for line in Path(out["protocol"]["official_results"]).read_text().splitlines()]
    ours = [ours[n] for n in keep]
    theirs = [json.loads(line) for line in official_results.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "filename"} for r in theirs] == [
        {k: v for k, v in r.items() if k != "filename"} for r in ours]
    assert theirs[0]["filename"] == str(official_layout / f"{samples[0].prompt_id:05d}" / "samples" / "0000.png")
    assert {t: again["aggregate"][t]["mean"] for t in tags} == {t: out["aggregate"][t]["mean"] for t in tags}


def test_gentron_eval_routes_to_geneval(capsys):
    from eval.cli import EVALUATORS
    from eval.cli import main as gentron_eval

    assert EVALUATORS["geneval"][0] == "eval.geneval.__main__"
    with pytest.raises(SystemExit) as exit_:
        gentron_eval(["geneval", "--help"])
    assert exit_.value.code == 0 and "usage: python -m eval.geneval" in capsys.readouterr().out


def test_bad_options_are_refused_in_one_line(tmp_path, capsys):
    for argv, message in ((["--max-overlap", "1.5"], "argument --max-overlap"),
                          (["--max-objects", "0"], "argument --max-objects"),
                          (["--metadata", ""], "argument --metadata: is empty")):
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path), *argv])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    with pytest.raises(ValueError, match="max_objects"):
        Settings(max_objects=0).check()


def test_overall_is_the_mean_of_task_means_with_a_stratified_bootstrap():
    per_prompt = [{"scores": {"single_object": v}} for v in (1.0, 1.0, 0.0, 1.0)]
    per_prompt += [{"scores": {"counting": v}} for v in (0.0, 0.25, 0.5)]
    per_prompt += [{"scores": {"position": 1.0}}]  # one prompt: a constant
    out = run.overall_ci(per_prompt)
    assert out["mean"] == pytest.approx((0.75 + 0.25 + 1.0) / 3) and out["n"] == 8
    assert out["ci_low"] < out["mean"] < out["ci_high"]
    assert out["ci_low"] >= (0.0 + 0.0 + 1.0) / 3 and out["ci_high"] <= (1.0 + 0.5 + 1.0) / 3
    assert run.overall_ci(per_prompt) == out  # seeded
    single = run.overall_ci([{"scores": {"colors": 1.0}}, {"scores": {"position": 0.0}}])
    assert single == {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n": 2}
