"""The evaluators' command lines refuse every bad value in one line that names the option (or the file)
and the fix, with exit status 2 and no traceback, before any model loads and never with a silently wrong
result; damaged images are counted and named; BLIP-VQA rounds each question before the product, as the
official T2I-CompBench code does."""
from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from eval.common import Sample, image_problem, write_samples
from gentron.data import compshapes as cs

REPO = Path(__file__).resolve().parent.parent
MAINS = {"fid": "eval.fid", "clip_score": "eval.clip_score", "compbench": "eval.compbench.__main__",
         "judge": "eval.judge", "coco": "eval.coco", "common": "eval.common", "gentron-eval": "eval.cli"}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _render(i: int) -> tuple[Image.Image, str]:
    prompt = cs.test_prompts("color", 3)[i % 3]
    return Image.fromarray(cs.render(cs.scene_for_prompt(prompt, i), 32)), prompt


def _sample_folder(folder: Path, n: int = 3, damage: dict[int, bytes] | None = None, category: str = "color",
                   manifest: str | None = None) -> Path:
    """n CompShapes renders with a samples.jsonl; `damage` replaces image i's bytes."""
    folder.mkdir(parents=True)
    samples = []
    for i in range(n):
        image, prompt = _render(i)
        name = f"{i:06d}_42.png"
        (folder / name).write_bytes((damage or {}).get(i, _png(image)))
        samples.append(Sample(file=name, prompt=prompt, seed=42 + i % 2, category=category, prompt_id=i))
    write_samples(folder, samples)
    if manifest is not None:
        (folder / "samples.jsonl").write_text(manifest)
    return folder


def _captions(n_images: int = 12) -> dict:
    images = [{"id": 100 + i, "file_name": f"COCO_val2014_{100 + i:012d}.jpg"} for i in range(n_images)]
    annotations = [{"id": 1000 + k, "image_id": 100 + i, "caption": f"image {i} caption {j}"}
                   for k, (i, j) in enumerate((i, j) for i in range(n_images) for j in range(5))]
    return {"images": images, "annotations": annotations}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("eval_cli_inputs")
    good_png = _png(_render(0)[0])
    p = {"tmp": tmp, "file": tmp / "a_file.txt", "empty_dir": tmp / "empty_dir"}
    p["file"].write_text("not a folder\n")
    p["empty_dir"].mkdir()
    p["good"] = _sample_folder(tmp / "good")
    p["one"] = _sample_folder(tmp / "one", n=1)
    p["zero_byte"] = _sample_folder(tmp / "zero_byte", n=5, damage={1: b"", 3: good_png[: len(good_png) // 2]})
    p["truncated_jpeg"] = _sample_folder(tmp / "truncated_jpeg")
    jpeg = _jpeg(Image.effect_noise((64, 64), 60).convert("RGB"))
    (p["truncated_jpeg"] / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with (p["truncated_jpeg"] / "samples.jsonl").open("a") as f:
        f.write(json.dumps({"file": "cut.jpg", "prompt": _render(0)[1], "seed": 44, "prompt_id": 9}) + "\n")
    many = {i: b"" for i in range(5)}
    p["many_damaged"] = _sample_folder(tmp / "many_damaged", n=6, damage=many)
    good_lines = (p["good"] / "samples.jsonl").read_text()
    p["torn"] = _sample_folder(tmp / "torn", manifest=good_lines + '{"file": "000000_42.png", "pro')
    first = good_lines.splitlines()[0]
    p["duplicate"] = _sample_folder(tmp / "duplicate", manifest=good_lines + first + "\n")
    p["latin1"] = _sample_folder(tmp / "latin1")
    (p["latin1"] / "samples.jsonl").write_bytes(good_lines.replace("a ", "\xe9 ", 1).encode("latin-1"))
    p["manifest_dir"] = tmp / "manifest_dir"
    (p["manifest_dir"] / "samples.jsonl").mkdir(parents=True)
    p["unprompted"] = tmp / "unprompted"  # images whose names give no prompt, no manifest
    p["unprompted"].mkdir()
    for name in ("x.png", "y.png", "a green bench and a red car_000000.png"):
        (p["unprompted"] / name).write_bytes(good_png)
    p["extended"] = _sample_folder(tmp / "extended", category="numeracy")
    p["spatial"] = _sample_folder(tmp / "spatial", category="spatial")
    p["non_spatial"] = _sample_folder(tmp / "non_spatial", category="non_spatial")
    p["ref"] = tmp / "ref"
    p["ref"].mkdir()
    for i in range(3):
        (p["ref"] / f"r{i}.png").write_bytes(_png(_render(i + 1)[0]))
    p["ref_damaged"] = tmp / "ref_damaged"
    p["ref_damaged"].mkdir()
    (p["ref_damaged"] / "r0.png").write_bytes(good_png)
    (p["ref_damaged"] / "r1.png").write_bytes(b"")
    p["zero_npz"] = tmp / "zero.npz"
    p["zero_npz"].write_bytes(b"")
    p["torn_npz"] = tmp / "torn.npz"
    buffer = io.BytesIO()
    np.savez(buffer, mu=np.zeros(4), sigma=np.eye(4))
    p["torn_npz"].write_bytes(buffer.getvalue()[:100])
    p["mu_sigma_npz"] = tmp / "mu_sigma.npz"
    np.savez(p["mu_sigma_npz"], mu=np.zeros(256), sigma=np.eye(256))
    p["npz_dir"] = tmp / "folder.npz"
    p["npz_dir"].mkdir()
    # COCO
    p["captions"] = tmp / "captions.json"
    p["captions"].write_text(json.dumps(_captions()))
    rows = [{"file": f"coco/{i:06d}_42.png", "prompt": f"caption {i}", "seed": 42, "prompt_id": i,
             "coco_file": f"COCO_val2014_{100 + i:012d}.jpg"} for i in range(4)]
    plans = {"plan": rows, "plan_no_coco_file": rows[:1] + [{k: v for k, v in rows[1].items() if k != "coco_file"}],
             "plan_traversal": [{**rows[0], "coco_file": "../../etc/x.jpg"}],
             "plan_not_object": "[1, 2]\n", "plan_torn": "".join(json.dumps(r) + "\n" for r in rows) + '{"prompt": "a',
             "plan_empty": "\n"}
    for name, content in plans.items():
        p[name] = tmp / f"{name}.jsonl"
        p[name].write_text(content if isinstance(content, str) else "".join(json.dumps(r) + "\n" for r in content))
    p["coco_dir"] = tmp / "val2014"
    p["coco_dir"].mkdir()
    # T2I-CompBench: a checkout with one prompt file
    p["checkout"] = tmp / "checkout"
    p["checkout"].mkdir()
    (p["checkout"] / "color_val.txt").write_text("a green bench and a red car\n")
    return p


def fill(argv: list[str], paths: dict[str, Path]) -> list[str]:
    """'{name}' becomes paths[name]; '{name}/rest' becomes paths[name] / rest."""
    out = []
    for arg in argv:
        if arg.startswith("{") and "}" in arg:
            name, rest = arg[1:].split("}", 1)
            arg = str(paths[name]) + rest
        out.append(arg)
    return out


def run_main(command: str, argv: list[str], capsys) -> tuple[object, str, BaseException | None]:
    main = importlib.import_module(MAINS[command]).main
    code, escaped = None, None
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    except Exception as e:  # noqa: BLE001 - what escapes main is a traceback for the user
        escaped = e
    return code, capsys.readouterr().err, escaped


def assert_one_clear_line(code, err: str, escaped, words: list[str]) -> str:
    assert escaped is None, f"escaped: {escaped!r}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert code == 2, f"exit {code}: {err}"
    assert "error:" in lines[0], lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    return lines[0]


FID = ["fid", "{good}", "--ref", "{ref}"]
CLIP = ["clip_score", "{good}"]
CB = ["compbench", "{good}", "--category", "color"]

# (command and argv, words the one line must hold)
CASES = [
    # empty strings (an unset shell variable): every path and name option
    (["fid", "", "--ref", "{ref}"], ["argument samples_dir: is empty", "give a sample folder"]),
    (["fid", "{good}", "--ref", ""], ["argument --ref: is empty", "reference images"]),
    ([*FID, "--cache-dir", ""], ["argument --cache-dir: is empty"]),
    ([*FID, "--out", ""], ["argument --out: is empty"]),
    ([*FID, "--device", ""], ["argument --device: is empty"]),
    ([*FID, "--crosscheck", "--torchmetrics-weights", ""], ["argument --torchmetrics-weights: is empty"]),
    (["fid", "make-stats", "", "{tmp}/s.npz"], ["argument ref_dir: is empty"]),
    (["fid", "make-stats", "{ref}", ""], ["argument out: is empty"]),
    (["fid", "shard", "", "--index", "0"], ["argument folder: is empty"]),
    (["clip_score", ""], ["argument samples_dir: is empty"]),
    ([*CLIP, "--model", ""], ["argument --model: is empty", "CLIP"]),
    ([*CLIP, "--pretrained", ""], ["argument --pretrained: is empty", "openai"]),
    ([*CB, "--blip", ""], ["argument --blip: is empty", "BLIP-VQA folder"]),
    ([*CB, "--detector", ""], ["argument --detector: is empty"]),
    ([*CB, "--clip", ""], ["argument --clip: is empty"]),
    ([*CB, "--clip-pretrained", ""], ["argument --clip-pretrained: is empty"]),
    ([*CB, "--checkout", ""], ["argument --checkout: is empty", "T2I-CompBench checkout"]),
    ([*CB, "--official-dir", ""], ["argument --official-dir: is empty"]),
    (["compbench", "plan", "--checkout", "", "--out", "{tmp}/plan"], ["argument --checkout: is empty"]),
    (["compbench", "plan", "--checkout", "{checkout}", "--out", ""], ["argument --out: is empty"]),
    (["judge", ""], ["argument samples_dir: is empty"]),
    (["judge", "{good}", "--out", ""], ["argument --out: is empty"]),
    (["coco", "plan", "--captions", "", "--out", "{tmp}/p"], ["argument --captions: is empty"]),
    (["coco", "plan", "--captions", "{captions}", "--out", ""], ["argument --out: is empty"]),
    (["coco", "shard", "", "--index", "0", "--num-shards", "1", "--out", "{tmp}/s.jsonl"], ["argument plan: is empty"]),
    (["coco", "shard", "{plan}", "--index", "0", "--num-shards", "1", "--out", ""], ["argument --out: is empty"]),
    (["coco", "refs", "{plan}", "--coco-dir", "", "--out", "{tmp}/r"], ["argument --coco-dir: is empty", "val2014"]),
    (["coco", "refs", "{plan}", "--coco-dir", "{coco_dir}", "--out", ""], ["argument --out: is empty"]),
    (["common", "make-manifest", ""], ["argument folder: is empty"]),
    # numbers out of range: counts, seeds, thresholds, indices
    ([*FID, "--shard-size", "0"], ["argument --shard-size: must be a positive integer"]),
    ([*FID, "--n-boot", "0"], ["argument --n-boot: must be a positive integer"]),
    ([*FID, "--batch-size", "-4"], ["argument --batch-size: must be a positive integer"]),
    ([*FID, "--seed", "-1"], ["argument --seed: -1 is out of range", "0..4294967295"]),
    ([*FID, "--seed", "1.5"], ["argument --seed: '1.5' is not a whole number"]),
    (["fid", "shard", "{good}", "--index", "-1"], ["argument --index: -1 is out of range"]),
    (["fid", "shard", "{good}", "--index", "1"], ["shard index 1 out of range", "--index 0..0"]),
    ([*CB, "--detector-confidence", "2"], ["argument --detector-confidence: '2' is not a probability", "[0, 1]"]),
    ([*CB, "--detector-confidence", "-0.1"], ["argument --detector-confidence", "[0, 1]"]),
    ([*CB, "--detector-confidence", "nan"], ["argument --detector-confidence: 'nan' is not a probability"]),
    ([*CB, "--detector-confidence", "high"], ["argument --detector-confidence: 'high' is not a probability"]),
    ([*CB, "--vqa-image-size", "-1"], ["argument --vqa-image-size: must be a positive integer"]),
    ([*CB, "--batch-size", "0"], ["argument --batch-size: must be a positive integer"]),
    ([*CLIP, "--batch-size", "0"], ["argument --batch-size: must be a positive integer"]),
    (["compbench", "plan", "--checkout", "{checkout}", "--out", "{tmp}/plan", "--images-per-prompt", "0"],
     ["argument --images-per-prompt: must be a positive integer"]),
    (["coco", "plan", "--captions", "{captions}", "--out", "{tmp}/p", "-n", "-3"], ["argument -n: -3 is out of range",
                                                                                  "at least 1"]),
    (["coco", "plan", "--captions", "{captions}", "--out", "{tmp}/p", "-n", "0"], ["argument -n: 0 is out of range"]),
    (["coco", "plan", "--captions", "{captions}", "--out", "{tmp}/p", "-n", "13"], ["asked for 13 captions", "only 12",
                                                                                  "-n 12 or fewer"]),
    (["coco", "plan", "--captions", "{captions}", "--out", "{tmp}/p", "--seed", "-1"], ["argument --seed: -1 is out"]),
    (["coco", "plan", "--captions", "{captions}", "--out", "{tmp}/p", "--sample-seed", "-2"],
     ["argument --sample-seed: -2 is out of range"]),
    (["coco", "shard", "{plan}", "--index", "-1", "--num-shards", "2", "--out", "{tmp}/s.jsonl"],
     ["argument --index: -1 is out of range"]),
    (["coco", "shard", "{plan}", "--index", "2", "--num-shards", "2", "--out", "{tmp}/s.jsonl"],
     ["argument --index: 2 is out of range", "--index 0..1"]),
    (["coco", "shard", "{plan}", "--index", "0", "--num-shards", "0", "--out", "{tmp}/s.jsonl"],
     ["argument --num-shards: 0 is out of range"]),
    (["coco", "shard", "{plan}", "--index", "0", "--num-shards", "9", "--out", "{tmp}/s.jsonl"],
     ["--num-shards 9 is more than the plan's 4 rows"]),
    (["coco", "refs", "{plan}", "--coco-dir", "{coco_dir}", "--out", "{tmp}/r", "--resolution", "0"],
     ["argument --resolution: 0 is out of range", "1..4096"]),
    (["coco", "refs", "{plan}", "--coco-dir", "{coco_dir}", "--out", "{tmp}/r", "--resolution", "100000"],
     ["argument --resolution: 100000 is out of range"]),
    (["coco", "refs", "{plan}", "--coco-dir", "{coco_dir}", "--out", "{tmp}/r", "--num-shards", "0"],
     ["argument --num-shards: 0 is out of range"]),
    (["common", "make-manifest", "{ref}", "--base-seed", "-1"], ["argument --base-seed: -1 is out of range"]),
    # unknown names
    ([*FID, "--mode", "fast"], ["argument --mode: invalid choice: 'fast'"]),
    ([*FID, "--extractor", "vgg"], ["argument --extractor: invalid choice: 'vgg'"]),
    ([*FID, "--log-level", "LOUD"], ["argument --log-level: invalid choice: 'LOUD'"]),
    ([*FID, "--device", "gpu"], ["argument --device: 'gpu': not a device name", "cpu, cuda, cuda:N or auto"]),
    ([*FID, "--device", "cuda:99"], ["argument --device: 'cuda:99'"]),
    ([*CLIP, "--device", "tpu"], ["argument --device: 'tpu'"]),
    (["compbench", "{good}", "--category", "colour"], ["argument --category: invalid choice: 'colour'"]),
    (["compbench", "plan", "--checkout", "{checkout}", "--out", "{tmp}/plan", "--categories", "colour"],
     ["argument --categories: invalid choice: 'colour'"]),
    (["compbench", "plan", "--checkout", "{checkout}", "--out", "{tmp}/plan", "--categories", "color", "color"],
     ["argument --categories: color given twice"]),
    (["compbench", "{extended}"], ["no samples of the six categories"]),
    (["judge", "{good}", "--nope"], ["unrecognized arguments: --nope"]),
    (["coco", "nope"], ["argument command: invalid choice: 'nope'"]),
    (["common", "nope"], ["unknown command 'nope'", "make-manifest"]),
    (["common"], ["no command given"]),
    (["gentron-eval", "nope"], ["unknown metric 'nope'"]),
    # missing paths, files given for folders, folders for files
    (["fid", "/nonexistent", "--ref", "{ref}"], ["sample folder /nonexistent does not exist"]),
    (["fid", "{file}", "--ref", "{ref}"], ["is a file; give a sample folder"]),
    (["fid", "{good}", "--ref", "/nonexistent"], ["--ref /nonexistent does not exist"]),
    (["fid", "{good}", "--ref", "{file}"], ["is a file but not statistics (.npz)"]),
    (["fid", "{good}", "--ref", "{tmp}/missing.npz"], ["reference statistics", "missing.npz not found", "make-stats"]),
    (["fid", "{good}", "--ref", "{npz_dir}"], ["folder.npz is a folder"]),
    (["fid", "{good}", "--ref", "{zero_npz}"], ["zero.npz is not a readable .npz", "make-stats"]),
    (["fid", "{good}", "--ref", "{torn_npz}"], ["torn.npz is not a readable .npz"]),
    (["fid", "{good}", "--ref", "{empty_dir}"], ["--ref", "empty_dir holds no images"]),
    (["fid", "{good}", "--ref", "{mu_sigma_npz}"], ["KID needs the reference features", "--no-kid"]),
    (["fid", "{good}", "--ref", "{mu_sigma_npz}", "--crosscheck"], ["cross-check (--crosscheck) needs a reference "
                                                                    "image folder"]),
    ([*FID, "--torchmetrics-weights", "{file}"], ["add --crosscheck"]),
    ([*FID, "--no-antialias"], ["add --crosscheck"]),
    ([*FID, "--cache-dir", "{file}"], ["argument --cache-dir", "a_file.txt is a file"]),
    ([*FID, "--cache-dir", "{file}/sub"], ["argument --cache-dir", "a_file.txt is a file, so"]),
    ([*FID, "--out", "{tmp}"], ["argument --out", "is a folder"]),
    ([*FID, "--out", "{file}/x.json"], ["argument --out", "a_file.txt is a file, so"]),
    ([*FID, "--out", "{good}/samples.jsonl"], ["argument --out", "which the result would overwrite"]),
    (["fid", "{one}", "--ref", "{ref}"], ["holds 1 image; FID needs at least 2"]),
    (["fid", "make-stats", "/nonexistent", "{tmp}/s.npz"], ["argument ref_dir: /nonexistent does not exist"]),
    (["fid", "make-stats", "{file}", "{tmp}/s.npz"], ["argument ref_dir", "is a file"]),
    (["fid", "make-stats", "{empty_dir}", "{tmp}/s.npz"], ["empty_dir holds no images"]),
    (["fid", "make-stats", "{ref}", "{tmp}/stats.txt"], ["argument out", "does not end in .npz", "stats.npz"]),
    (["fid", "make-stats", "{ref}", "{tmp}"], ["argument out", "is a folder"]),
    (["fid", "shard", "/nonexistent", "--index", "0"], ["argument folder: /nonexistent does not exist"]),
    (["fid", "shard", "{empty_dir}", "--index", "0"], ["holds no images"]),
    ([*CLIP, "--model", "{tmp}/no_such_clip"], ["no_such_clip' is neither a local folder nor cached"]),
    ([*CLIP, "--out", "{good}/samples.jsonl"], ["argument --out", "which the result would overwrite"]),
    (["clip_score", "{unprompted}"], ["2 of 3 images have no prompt", "x.png"]),
    (["clip_score", "{empty_dir}"], ["holds no images"]),
    ([*CB, "--checkout", "/nonexistent"], ["argument --checkout: /nonexistent does not exist", "git clone"]),
    ([*CB, "--checkout", "{file}"], ["argument --checkout", "is a file"]),
    ([*CB, "--official-dir", "{file}"], ["argument --official-dir", "is a file"]),
    (["compbench", "plan", "--checkout", "{empty_dir}", "--out", "{tmp}/plan", "--categories", "color"],
     ["no color_val.txt under"]),
    (["compbench", "plan", "--checkout", "{checkout}", "--out", "{file}"], ["argument --out", "is a file"]),
    (["judge", "/nonexistent"], ["sample folder /nonexistent does not exist"]),
    (["judge", "{good}", "--out", "{tmp}"], ["argument --out", "is a folder"]),
    (["judge", "{good}", "--out", "{good}/samples.jsonl"], ["argument --out", "which the result would overwrite"]),
    (["coco", "plan", "--captions", "/nonexistent.json", "--out", "{tmp}/p"], ["/nonexistent.json not found"]),
    (["coco", "plan", "--captions", "{tmp}", "--out", "{tmp}/p"], ["--captions", "is a folder"]),
    (["coco", "plan", "--captions", "{captions}", "--out", "{file}"], ["argument --out", "is a file"]),
    (["coco", "shard", "/nonexistent.jsonl", "--index", "0", "--num-shards", "1", "--out", "{tmp}/s.jsonl"],
     ["/nonexistent.jsonl not found", "eval.coco plan"]),
    (["coco", "shard", "{tmp}", "--index", "0", "--num-shards", "1", "--out", "{tmp}/s.jsonl"], ["is a folder"]),
    (["coco", "shard", "{plan}", "--index", "0", "--num-shards", "1", "--out", "{tmp}"], ["argument --out", "folder"]),
    (["coco", "shard", "{plan}", "--index", "0", "--num-shards", "1", "--out", "{plan}"],
     ["argument --out", "is the plan itself"]),
    (["coco", "refs", "{plan}", "--coco-dir", "/nonexistent", "--out", "{tmp}/r"],
     ["argument --coco-dir: /nonexistent does not exist"]),
    (["coco", "refs", "{plan}", "--coco-dir", "{file}", "--out", "{tmp}/r"], ["argument --coco-dir", "is a file"]),
    (["coco", "refs", "{plan}", "--coco-dir", "{coco_dir}", "--out", "{file}"], ["argument --out", "is a file"]),
    (["common", "make-manifest", "/nonexistent"], ["argument folder: /nonexistent does not exist"]),
    (["common", "make-manifest", "{good}"], ["samples.jsonl exists; delete it first"]),
    (["common", "make-manifest", "{empty_dir}"], ["holds no images"]),
    # broken files: manifests, plans
    (["fid", "{torn}", "--ref", "{ref}"], ["samples.jsonl:4 is not valid JSON", "torn line"]),
    (["judge", "{torn}"], ["samples.jsonl:4 is not valid JSON"]),
    (["clip_score", "{duplicate}"], ["samples.jsonl:4 lists 000000_42.png (seed 42) again (first on line 1)"]),
    (["fid", "{latin1}", "--ref", "{ref}"], ["samples.jsonl is not UTF-8 text"]),
    (["judge", "{manifest_dir}"], ["samples.jsonl is a folder"]),
    (["coco", "refs", "{plan_no_coco_file}", "--coco-dir", "{coco_dir}", "--out", "{tmp}/r"],
     ["plan_no_coco_file.jsonl:2 has no 'coco_file'", "eval.coco plan"]),
    (["coco", "shard", "{plan_no_coco_file}", "--index", "0", "--num-shards", "1", "--out", "{tmp}/s.jsonl"],
     ["has no 'coco_file'"]),
    (["coco", "refs", "{plan_traversal}", "--coco-dir", "{coco_dir}", "--out", "{tmp}/r"],
     ["coco_file='../../etc/x.jpg' is not the file name of a val2014 image"]),
    (["coco", "refs", "{plan_not_object}", "--coco-dir", "{coco_dir}", "--out", "{tmp}/r"], [":1 is not a JSON object"]),
    (["coco", "refs", "{plan_torn}", "--coco-dir", "{coco_dir}", "--out", "{tmp}/r"], [":5 is not valid JSON"]),
    (["coco", "refs", "{plan_empty}", "--coco-dir", "{coco_dir}", "--out", "{tmp}/r"], ["holds no rows"]),
    # damaged images: counted and named, before any feature or model
    (["fid", "{zero_byte}", "--ref", "{ref}"], ["2 of 5 sample images are damaged", "000001_42.png (zero bytes)",
                                                "000003_42.png (truncated or corrupt", "regenerate them"]),
    (["fid", "{truncated_jpeg}", "--ref", "{ref}"], ["1 of 4 sample images are damaged", "cut.jpg (truncated"]),
    (["fid", "{many_damaged}", "--ref", "{ref}"], ["5 of 6 sample images are damaged", "and 2 more"]),
    (["fid", "{good}", "--ref", "{ref_damaged}"], ["1 of 2 reference images are damaged", "r1.png (zero bytes)",
                                                   "eval.coco refs"]),
    (["fid", "make-stats", "{ref_damaged}", "{tmp}/s.npz"], ["1 of 2 reference images are damaged"]),
    (["fid", "shard", "{zero_byte}", "--index", "0"], ["2 of 5 sample images are damaged"]),
    (["clip_score", "{zero_byte}"], ["2 of 5 sample images are damaged"]),
    (["compbench", "{zero_byte}", "--category", "color"], ["2 of 5 sample images are damaged"]),
    (["gentron-eval", "fid", "{zero_byte}", "--ref", "{ref}"], ["2 of 5 sample images are damaged"]),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(argv) for argv, _ in CASES])
def test_a_bad_value_is_one_clear_line(argv, words, paths, capsys):
    command, *args = fill(argv, paths)
    code, err, escaped = run_main(command, args, capsys)
    assert_one_clear_line(code, err, escaped, [w.replace("{tmp}", str(paths["tmp"])) for w in words])


def test_a_missing_model_is_named_with_its_option_before_any_image_is_scored(paths, capsys):
    from eval.compbench import questions

    try:
        questions.language_model()
    except FileNotFoundError:
        pytest.skip("spaCy's en_core_web_sm is not installed (the run stops at the install command first)")
    for option, folder, words in (("--blip", "good", "BLIP-VQA model (--blip)"),
                                  ("--detector", "spatial", "detector (--detector)"),
                                  ("--clip", "non_spatial", "CLIP model (--clip)")):
        code, err, escaped = run_main("compbench", [str(paths[folder]), option, str(paths["tmp"] / "no_such_model")],
                                      capsys)
        assert_one_clear_line(code, err, escaped, [words, "is neither a local folder nor cached"])


def test_no_cuda_names_the_device(paths, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err, escaped = run_main("fid", fill([*FID[1:], "--device", "cuda"], paths), capsys)
    assert_one_clear_line(code, err, escaped, ["argument --device: 'cuda': no CUDA GPU is visible", "cpu or auto"])


def test_a_truncated_image_is_damaged_even_where_pil_is_told_to_load_truncated_files(paths, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert image_problem(paths["truncated_jpeg"] / "cut.jpg").startswith("truncated or corrupt")
    assert image_problem(paths["zero_byte"] / "000003_42.png").startswith("truncated or corrupt")
    assert image_problem(paths["good"] / "000000_42.png") is None
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # left as it was


@pytest.mark.filterwarnings("ignore")  # 3 images, 256 features: a singular covariance
def test_fid_records_its_image_check_and_a_clean_folder_runs(paths, tmp_path):
    from eval import fid

    out = fid.evaluate(paths["good"], ref=str(paths["ref"]), n_boot=2, cache_dir=tmp_path / "cache")
    assert out["protocol"]["n_samples"] == 3 and out["protocol"]["reference_n"] == 3
    assert "damaged images refuse the run" in out["protocol"]["image_check"]
    assert np.isfinite(out["aggregate"]["fid"]["mean"])


def test_coco_refs_rewrites_a_damaged_reference_it_wrote_before(tmp_path):
    from eval import coco

    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "x.jpg")
    rows = [{"prompt": "a", "coco_file": "x.jpg"}]
    assert coco.prepare_references(rows, tmp_path, tmp_path / "refs", resolution=16) == 1
    (tmp_path / "refs" / "x.png").write_bytes(b"")  # a copy cut short
    assert coco.prepare_references(rows, tmp_path, tmp_path / "refs", resolution=16) == 1
    assert image_problem(tmp_path / "refs" / "x.png") is None
    assert coco.prepare_references(rows, tmp_path, tmp_path / "refs", resolution=16) == 0


def test_coco_plan_shard_and_refs_still_run(paths, tmp_path, capsys):
    from eval import coco

    coco.main(["plan", "--captions", str(paths["captions"]), "--out", str(tmp_path / "plan"), "-n", "4"])
    plan = tmp_path / "plan" / "prompts.jsonl"
    assert len(coco.read_plan(plan)) == 4
    coco.main(["shard", str(plan), "--index", "1", "--num-shards", "2", "--out", str(tmp_path / "s.jsonl")])
    assert len(coco.read_plan(tmp_path / "s.jsonl")) == 2
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------- BLIP-VQA: round each question, then multiply

def _official_blip_answer(per_question: list[float], np_num: int = 8) -> str:
    """The official lines, on CPU: blip_vqa.py's vqa_prob answer '{:.4f}'.format(p) per question, BLIP_vqa.py's
    float32 reward tensor (1 where a prompt has no question), the product over its columns, '{:.4f}'."""
    reward = torch.zeros((1, np_num))
    for i in range(np_num):
        if i < len(per_question):
            answer = str(f"{torch.tensor(per_question[i], dtype=torch.float32):.4f}")  # Tensor.__format__
            reward[0][i] = float(answer)
        else:
            reward[0][i] = 1
    reward_final = reward[:, 0]
    for i in range(1, np_num):
        reward_final *= reward[:, i]
    return f"{reward_final[0].item():.4f}"


def test_blip_vqa_rounds_each_question_before_the_product_as_the_official_code():
    from eval.compbench.run import official_vqa
    from eval.compbench.vqa import official_product

    per_question = torch.tensor([0.55556, 0.55556]).tolist()  # float32 values, as p_yes returns them
    product_first = official_vqa(float(np.prod(per_question)))  # 0.308647 -> 0.3086
    assert product_first == 0.3086
    assert official_vqa(official_product(per_question)) == 0.3087  # 0.5556 * 0.5556 = 0.30869
    assert _official_blip_answer(per_question) == "0.3087"
    assert official_product([]) == 1.0


def test_blip_vqa_matches_the_official_lines_on_random_probabilities():
    from eval.compbench.run import official_vqa
    from eval.compbench.vqa import official_product

    generator = torch.Generator().manual_seed(0)
    differ = 0
    for trial in range(3000):
        count = trial % 6 + 1
        per_question = (torch.rand(count, generator=generator) ** 0.3).tolist()
        ours = f"{official_vqa(official_product(per_question)):.4f}"
        assert ours == _official_blip_answer(per_question), per_question
        differ += ours != f"{official_vqa(float(np.prod(per_question))):.4f}"
    assert differ > 100  # the order matters on many images, not on a rare one


def test_blip_vqa_score_goes_through_the_official_product():
    from eval.compbench.vqa import BlipVqa

    vqa = BlipVqa.__new__(BlipVqa)  # no weights: p_yes stands in for the model
    vqa.p_yes = lambda images, questions: [[0.55556, 0.55556], [], [0.5]]
    assert vqa.score([None] * 3, ["a red car", "a", "a cat"]) == pytest.approx([0.3086913, 1.0, 0.5], abs=1e-7)


# ---------------------------------------------------------------- the real scripts

SCRIPTS = [
    (["-m", "eval.fid", "{zero_byte}", "--ref", "{ref}"], "2 of 5 sample images are damaged"),
    (["-m", "eval.compbench", "{good}", "--blip", ""], "argument --blip: is empty"),
    (["-m", "eval.coco", "refs", "{plan_no_coco_file}", "--coco-dir", "{coco_dir}", "--out", "{tmp}/r"],
     "has no 'coco_file'"),
]


@pytest.mark.parametrize("argv, words", SCRIPTS, ids=[" ".join(a) for a, _ in SCRIPTS])
def test_the_scripts_exit_with_one_line(argv, words, paths):
    proc = subprocess.run([sys.executable, *fill(argv, paths)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert_one_clear_line(proc.returncode, proc.stderr, None, [words])
    assert proc.stdout == ""
