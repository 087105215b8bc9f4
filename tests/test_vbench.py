"""eval.vbench against the official VBench code: its temporal_flickering, subject_consistency,
background_consistency and dynamic_degree modules and its cal_final_score.py are imported with their heavy
imports (decord, clip, easydict, RAFT's repository, torch.distributed helpers) stubbed, and run beside ours on
real encoded videos (MP4 from OpenCV and PyAV, GIF) and frame folders, with the same tiny random models
(DINO ViT, CLIP, RAFT built from configs) in place of the downloaded weights. Agreement to 1e-6.

The official files are found through GENTRON_VBENCH (a checkout of Vchitect/VBench), by default
../shared/vbench next to the repository."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.vbench import dimensions as D
from eval.vbench.clips import Clip, bgr_frames, folder_clips
from eval.vbench.models import ClipFeatures, DinoFeatures, RaftFlow, save_tiny_models
from eval.vbench.normalize import NORMALIZATION, normalized, quality_partial
from eval.vbench.run import evaluate, merge, score_clip
from tests.support.official_code import stubbed_modules

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = Path(os.environ.get("GENTRON_VBENCH", REPO.parent / "shared" / "vbench"))
MODULES = ("utils", "temporal_flickering", "subject_consistency", "background_consistency", "dynamic_degree")


def official_root() -> Path:
    if not (OFFICIAL / "vbench" / "temporal_flickering.py").is_file():
        pytest.skip(f"no official VBench code at {OFFICIAL} (set GENTRON_VBENCH to a checkout of Vchitect/VBench)")
    return OFFICIAL


class SizeCheckingPadder:
    """Stands in for RAFT's InputPadder on frames whose sides are multiples of 8 already (no padding)."""

    def __init__(self, dims):
        assert dims[-2] % 8 == 0 and dims[-1] % 8 == 0, dims

    def pad(self, *inputs):
        return list(inputs)


@pytest.fixture(scope="module")
def official() -> types.SimpleNamespace:
    """The official vbench modules, loaded as the package `vbench` with decord, clip, easydict, RAFT's repository
    and vbench.distributed stubbed (the real modules are put back afterwards)."""
    root = official_root() / "vbench"
    import cv2  # noqa: F401  (real imports, loaded before the stubs go in)
    import torchvision  # noqa: F401

    def module(name, **attrs):
        stub = types.ModuleType(name)
        stub.__dict__.update(attrs)
        return stub

    package = module("vbench", __path__=[str(root)])
    stubs = {"vbench": package,
             "vbench.distributed": module("vbench.distributed", get_world_size=lambda: 1, get_rank=lambda: 0,
                                          all_gather=None, barrier=lambda: None, distribute_list_to_rank=lambda x: x,
                                          gather_list_of_dict=lambda x: x),
             "decord": module("decord", VideoReader=None, cpu=None), "clip": module("clip"),
             "easydict": module("easydict", EasyDict=dict),
             "vbench.third_party.RAFT.core.raft": module("raft", RAFT=None),
             "vbench.third_party.RAFT.core.utils_core.utils": module("utils_core", InputPadder=SizeCheckingPadder)}
    for name in ("vbench.third_party", "vbench.third_party.RAFT", "vbench.third_party.RAFT.core",
                 "vbench.third_party.RAFT.core.utils_core"):
        stubs[name] = module(name, __path__=[])
    loaded = {}
    with stubbed_modules(stubs, also_restore=tuple(f"vbench.{m}" for m in MODULES)):
        for name in MODULES:
            spec = importlib.util.spec_from_file_location(f"vbench.{name}", root / f"{name}.py")
            loaded[name] = importlib.util.module_from_spec(spec)
            sys.modules[f"vbench.{name}"] = loaded[name]
            spec.loader.exec_module(loaded[name])
    return types.SimpleNamespace(**loaded)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    env = save_tiny_models(tmp_path_factory.mktemp("vbench_models"))
    return {"dino": env["GENTRON_DINO_VITB16"], "clip": env["GENTRON_CLIP_B32"], "raft": env["GENTRON_RAFT"]}


def moving_frames(count: int, height: int = 48, width: int = 64, seed: int = 0, step: int = 3) -> list[np.ndarray]:
    """RGB uint8 frames of a textured square moving across a noisy gradient (what an encoder keeps and blurs)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    frames = []
    for t in range(count):
        frame = base + rng.normal(0, 8, base.shape)
        x = 4 + step * t
        frame[10:30, x:x + 20] = [230, 40, 60]
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def save_frames(folder: Path, frames: list[np.ndarray]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:03d}.png")
    return folder


def save_gif(path: Path, frames: list[np.ndarray]) -> Path:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=250, loop=0)
    return path


def save_mp4_opencv(path: Path, frames: list[np.ndarray], fps: float = 8.0) -> Path:
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def save_mp4_h264(path: Path, frames: list[np.ndarray], fps: int = 8) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


# ---------------------------------------------------------------- temporal flickering

def test_temporal_flickering_equals_the_official_on_encoded_videos_and_frame_folders(official, tmp_path):
    frames = moving_frames(10)
    (tmp_path / "clips").mkdir()
    clips = {"opencv-0.mp4": save_mp4_opencv(tmp_path / "clips" / "opencv-0.mp4", frames),
             "h264-0.mp4": save_mp4_h264(tmp_path / "clips" / "h264-0.mp4", frames),
             "anim-0.gif": save_gif(tmp_path / "clips" / "anim-0.gif", frames),
             "still-0": save_frames(tmp_path / "clips" / "still-0", moving_frames(6, step=0, seed=1))}
    ours = {}
    for name, path in clips.items():
        clip = Clip(None, path, path.is_dir())
        ours[name] = D.temporal_flickering(bgr_frames(clip)[0])
        official_path = str(path / "%03d.png") if path.is_dir() else str(path)  # OpenCV reads a frame sequence
        assert abs(ours[name] - official.temporal_flickering.cal_score(official_path)) < 1e-6, name
    still = np.stack(moving_frames(6, step=0, seed=1)).astype(np.float64)  # PNG is lossless: the formula by hand
    assert ours["still-0"] == pytest.approx((255 - np.abs(np.diff(still, axis=0)).mean()) / 255, abs=1e-6)
    assert len(set(ours.values())) == 4  # four encodings, four numbers
    # the whole evaluator on a plain folder of clips (VBench's layout) against the official set score
    result = evaluate(tmp_path / "clips", dimensions="temporal_flickering", device="cpu")
    paths = [str(p / "%03d.png") if p.is_dir() else str(p) for p in clips.values()]
    expected, _ = official.temporal_flickering.temporal_flickering(sorted(paths))
    assert abs(result["vbench"]["official"]["temporal_flickering"] - expected) < 1e-6
    assert {row["prompt"] for row in result["per_image"]} == {"opencv", "h264", "anim", "still"}
    assert result["protocol"]["models"] == {} and result["comparable_to_paper"] is False  # no prompt subsets


# ---------------------------------------------------------------- subject and background consistency

def consistency_folder(root: Path, clips: int = 2, frames: int = 5) -> Path:
    """A gentron sample folder whose paths VBench's read_frame mode maps onto each other:
    clips/<name>.gif (the encoded clip) and frames/<name>/ (its PNG frames)."""
    rows = []
    for i in range(clips):
        video = moving_frames(frames, seed=10 + i, step=2 + 3 * i)
        save_gif(root / "clips" / f"c{i}.gif", video)
        save_frames(root / "frames" / f"c{i}", video)
        rows.append({"file": f"clips/c{i}.gif", "frames": f"frames/c{i}/", "prompt": f"prompt {i}", "seed": 0,
                     "prompt_id": i})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("source", ["video", "frames"])
def test_consistency_dimensions_equal_the_official_with_the_same_tiny_models(official, tiny, tmp_path, source):
    folder = consistency_folder(tmp_path / "sample")
    ours = evaluate(folder, dimensions="subject_consistency,background_consistency", dino=tiny["dino"],
                    clip=tiny["clip"], source=source, device="cpu")
    dino, clip = DinoFeatures(tiny["dino"]), ClipFeatures(tiny["clip"])
    read_frame = source == "frames"
    # the official read_frame mode maps <root>/videos/<name>.mp4 to <root>/frames/<name>/
    videos = [str(folder / ("videos" if read_frame else "clips") / f"c{i}.{'mp4' if read_frame else 'gif'}")
              for i in range(2)]
    subject, subject_rows = official.subject_consistency.subject_consistency(dino, videos, "cpu", read_frame)
    background, background_rows = official.background_consistency.background_consistency(
        clip, clip.image_transform, videos, "cpu", read_frame)
    rows = ours["per_image"]
    for dim, expected, expected_rows in (("subject_consistency", subject, subject_rows),
                                         ("background_consistency", background, background_rows)):
        assert abs(ours["vbench"]["official"][dim] - expected) < 1e-6, dim
        for row, official_row in zip(rows, expected_rows, strict=True):
            assert abs(row["scores"][dim] - official_row["video_results"]) < 1e-6, dim
            assert row["terms"][dim] == 4
    assert all(row["source"] == ("frames" if read_frame else "gif") for row in rows)
    assert rows[0]["scores"]["subject_consistency"] != rows[1]["scores"]["subject_consistency"]


def test_consistency_pools_frames_over_clips_and_clamps_negative_cosines():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cos to previous 0, -> clamped 0
    total, terms = D.consistency(features)
    assert terms == 2 and total == pytest.approx((0 + 0) / 2 + (0 + 0) / 2)
    same = torch.ones(4, 3)
    assert D.consistency(same) == (pytest.approx(3.0), 3)
    # VBench's set score pools frame terms: a 4-frame clip at 1.0 and a 3-frame clip at 0.0 give 3/5, not 1/2
    assert D.pooled_consistency([(3.0, 3), (0.0, 2)]) == pytest.approx(0.6)


# ---------------------------------------------------------------- dynamic degree

def official_dynamic(official, raft: RaftFlow):
    """The official DynamicDegree with its RAFT replaced by the same torchvision model ours runs; it records
    the per-pair scores its check_move sees."""
    cls = official.dynamic_degree.DynamicDegree
    dynamic = cls.__new__(cls)
    dynamic.device = "cpu"

    def model(image1, image2, iters, test_mode):
        assert iters == D.RAFT_ITERS and test_mode
        return None, raft(image1, image2)

    dynamic.model, dynamic.seen = model, []
    check = dynamic.check_move
    dynamic.check_move = lambda scores: dynamic.seen.append(list(scores)) or check(scores)
    return dynamic


@pytest.mark.slow
def test_dynamic_degree_equals_the_official_on_a_frame_folder_and_an_mp4(official, tiny, tmp_path):
    raft = RaftFlow(tiny["raft"])
    dynamic = official_dynamic(official, raft)
    frames = moving_frames(16, height=128, width=136, step=6)
    folder = save_frames(tmp_path / "frames" / "clip", frames[:4])
    video = save_mp4_opencv(tmp_path / "clip.mp4", frames, fps=16.0)  # read every 2nd frame (about 8 fps)
    for path in (folder, video):
        clip = Clip(None, path, path.is_dir())
        ours = score_clip(clip, [D.DYNAMIC_DEGREE], {"raft": raft})
        moved = dynamic.infer(str(path))
        assert ours["scores"][D.DYNAMIC_DEGREE] == float(moved)
        assert np.allclose(ours["flow_top5"], dynamic.seen[-1], rtol=0, atol=1e-6)
    assert [len(s) for s in dynamic.seen] == [3, 7]


def test_dynamic_degree_rules_equal_the_official(official):
    cls = official.dynamic_degree.DynamicDegree
    dynamic = cls.__new__(cls)
    rng = np.random.default_rng(0)
    for height, width, count in ((256, 256, 16), (320, 512, 8), (128, 136, 3), (480, 720, 25), (64, 64, 1)):
        dynamic.set_params(torch.zeros(1, 3, height, width), count)
        threshold, needed = D.dynamic_rule(height, width, count)
        assert (threshold, needed) == (dynamic.params["thres"], dynamic.params["count_num"])
        for _ in range(200):
            scores = list(rng.uniform(0, 2 * threshold, rng.integers(0, 12)))
            assert D.moves(scores, threshold, needed) == dynamic.check_move(scores)
    flow = torch.from_numpy(rng.normal(0, 3, (1, 2, 40, 48)).astype(np.float32))
    assert D.top_flow(flow) == dynamic.get_score(torch.zeros(1, 3, 40, 48), flow)


def test_raft_padding_reaches_a_multiple_of_8_with_the_odd_pixel_last():
    image = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    (padded,) = D.pad_to_8(image)
    assert padded.shape[-2:] == (8, 8)
    assert torch.equal(padded[..., 1:6, 0:7], image)  # pad rows 1 top / 2 bottom, columns 0 left / 1 right
    assert torch.equal(padded[..., 0, 0:7], image[..., 0, :]) and torch.equal(padded[..., 7, 0:7], image[..., 4, :])


# ---------------------------------------------------------------- normalisation

def test_normalisation_equals_the_official_cal_final_score():
    scripts = official_root() / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        spec = importlib.util.spec_from_file_location("vbench_cal_final_score", scripts / "cal_final_score.py")
        final = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(final)
    finally:
        sys.path.remove(str(scripts))
        sys.modules.pop("constant", None)
    raw = {"subject_consistency": 0.93, "background_consistency": 0.95, "temporal_flickering": 0.97,
           "dynamic_degree": 0.4}
    upload = {key: final.NORMALIZE_DIC[key]["Min"] for key in final.TASK_INFO}  # absent: at the minimum
    upload.update({k.replace("_", " "): v for k, v in raw.items()})
    official = final.get_nomalized_score(upload)
    for dim, value in raw.items():
        key = dim.replace("_", " ")
        assert normalized(dim, value) * NORMALIZATION[dim][2] == pytest.approx(official[key], abs=1e-12)
    # the official quality score with the missing dimensions at their minimum, rescaled to the present weights
    weights = {k: final.DIM_WEIGHT[k] for k in final.QUALITY_LIST}
    present = sum(weights[d.replace("_", " ")] for d in raw)
    ours = quality_partial(raw)
    assert ours["score"] == pytest.approx(final.get_quality_score(official) * sum(weights.values()) / present)
    assert set(ours["missing"]) == {"motion_smoothness", "aesthetic_quality", "imaging_quality"}


# ---------------------------------------------------------------- the evaluator in the paper profile

SUITE = {"a cat runs across a lawn": ["subject_consistency", "dynamic_degree", "motion_smoothness"],
         "In a still frame, a lamp": ["temporal_flickering"],
         "a quiet street at dusk": ["background_consistency", "scene"]}


def vbench_root(root: Path) -> Path:
    """A VBench checkout's two prompt files, for a three-prompt suite."""
    (root / "prompts").mkdir(parents=True)
    (root / "vbench").mkdir()
    (root / "prompts" / "all_dimension.txt").write_text("".join(p + "\n" for p in SUITE))
    info = [{"prompt_en": p, "dimension": dims} for p, dims in SUITE.items()]
    (root / "vbench" / "VBench_full_info.json").write_text(json.dumps(info))
    return root


def sampled_clips(folder: Path, records: list[dict], frames: int = 3) -> Path:
    """A sample folder in gentron.generate's video layout (GIF file, PNG frames folder) for `records`."""
    rows = []
    for i, record in enumerate(records):
        name = f"{record['category']}/{record['prompt_id']:06d}_{record['seed']}_{record.get('index', 0)}"
        video = moving_frames(frames, height=128, width=136, seed=i, step=4)
        save_gif(folder / f"{name}.gif", video)
        save_frames(folder / name, video)
        rows.append({**record, "file": f"{name}.gif", "frames": f"{name}/", "index": record.get("index", 0)})
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.slow
def test_the_paper_t2v_cells_sample_the_vbench_suite_and_score_its_dimensions(tiny, tmp_path, monkeypatch):
    from ablations.grid import plan
    from ablations.prompt_sets import prompt_records
    from ablations.stages import SAMPLES, _score

    monkeypatch.setenv("VBENCH_ROOT", str(vbench_root(tmp_path / "VBench")))
    for variable, path in (("GENTRON_DINO_VITB16", tiny["dino"]), ("GENTRON_CLIP_B32", tiny["clip"]),
                           ("GENTRON_RAFT", tiny["raft"])):
        monkeypatch.setenv(variable, path)
    cells = plan(["grid=mfg", "profile=paper", "data.path=/absent", "train.init_from=/absent/last.pt", "seeds=[0]"]).cells
    assert {(tuple(c.config.sample.prompt_sets), tuple(c.config.eval.metrics)) for c in cells} == {(("vbench",), ("vbench",))}
    config = cells[0].config
    records = prompt_records("vbench", config.sample)
    assert len(records) == 3 * 5 and {r["prompt"] for r in records} == set(SUITE)  # 5 clips a prompt, as VBench
    cell_dir = tmp_path / "cell"
    sampled_clips(cell_dir / SAMPLES / "vbench", records)
    out = _score(cell_dir, config, "vbench", None)  # the registry's options, as the evaluate stage passes them
    for row in out["per_image"]:  # each clip on the dimensions its prompt serves, and only those we have
        assert set(row["scores"]) == set(SUITE[row["prompt"]]) - {"motion_smoothness", "scene"}
        assert row["source"] == "frames"
    official = out["vbench"]["official"]
    assert set(official) == set(D.DIMENSIONS)
    assert official["dynamic_degree"] in {k / 5 for k in range(6)}
    assert out["aggregate"]["temporal_flickering"]["n"] == 1  # one prompt serves it
    assert out["vbench"]["normalized"]["temporal_flickering"] == pytest.approx(
        (official["temporal_flickering"] - 0.6293) / (1 - 0.6293))
    assert out["protocol"]["prompt_subsets"].endswith("VBench_full_info.json") and not out["comparable_to_paper"]


def test_scoring_in_shards_merges_into_the_unsharded_result(tiny, tmp_path):
    folder = consistency_folder(tmp_path / "sample", clips=3, frames=3)
    info = [{"prompt_en": "prompt 0", "dimension": ["temporal_flickering"]},  # shard 0 needs no DINO of its own
            {"prompt_en": "prompt 1", "dimension": ["subject_consistency", "temporal_flickering"]},
            {"prompt_en": "prompt 2", "dimension": ["subject_consistency"]}]
    (tmp_path / "info.json").write_text(json.dumps(info))
    options = {"dimensions": ["temporal_flickering", "subject_consistency"], "dino": tiny["dino"], "device": "cpu",
               "full_info": str(tmp_path / "info.json")}
    whole = evaluate(folder, **options)
    assert [sorted(row["scores"]) for row in whole["per_image"]] == [
        ["temporal_flickering"], ["subject_consistency", "temporal_flickering"], ["subject_consistency"]]
    parts = [tmp_path / f"{k}.json" for k in range(3)]
    for k, part in enumerate(parts):
        evaluate(folder, shard=(k, 3), out=part, **options)
    merged = merge(parts)
    assert merged["per_image"] == whole["per_image"] and merged["vbench"] == whole["vbench"]
    assert merged["aggregate"] == whole["aggregate"]


def test_missing_weights_and_unscorable_clips_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from eval.cli import main as gentron_eval

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for variable in ("GENTRON_DINO_VITB16", "GENTRON_CLIP_B32", "GENTRON_RAFT"):
        monkeypatch.delenv(variable, raising=False)
    folder = consistency_folder(tmp_path / "sample", clips=1, frames=3)
    for dims, fix in (("subject_consistency", "huggingface-cli download facebook/dino-vitb16"),
                      ("background_consistency", "huggingface-cli download openai/clip-vit-base-patch32"),
                      ("dynamic_degree", "raft_large_C_T_V1-22a6c225.pth"),
                      ("motion_smoothness", "needs AMT frame interpolation"),
                      ("aesthetic", "unknown VBench dimension")):
        with pytest.raises(SystemExit) as exit_:
            gentron_eval(["vbench", str(folder), "--dimensions", dims])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fix in err, err
    with pytest.raises(FileNotFoundError, match="VBench_full_info.json of a VBench checkout"):
        evaluate(folder, dimensions="temporal_flickering", full_info=str(tmp_path / "absent.json"))
    info = vbench_root(tmp_path / "VBench") / "vbench" / "VBench_full_info.json"
    with pytest.raises(ValueError, match="1 of 1 clips have prompts that .* does not list"):
        evaluate(folder, dimensions="temporal_flickering", full_info=str(info))
    small = save_frames(tmp_path / "small" / "clip-0", moving_frames(3))
    with pytest.raises(ValueError, match="at least 128 pixels a side"):
        score_clip(Clip(None, small, True), [D.DYNAMIC_DEGREE], {"raft": None})
    with pytest.raises(ValueError, match="not a clip"):
        (tmp_path / "images").mkdir()
        save_frames(tmp_path / "images", moving_frames(1))
        (tmp_path / "images" / "samples.jsonl").write_text(json.dumps({"file": "000.png", "prompt": "x", "seed": 0}))
        folder_clips(tmp_path / "images")


def test_clips_from_the_real_sampler_are_scored_with_tiny_extractors(official, tiny, tmp_path):
    from gentron.generate import generate, prompt_set
    from gentron.train import train
    from tests.support.train_fixtures import tiny_config

    cfg = tiny_config(tmp_path, data={"video": True, "num_train": 8}, train={"steps": 2}, sample={"mfg_scale": 1.2})
    records = prompt_set("compshapes_motion", [7, 8])[:4]
    folder = generate(cfg, train(cfg, tmp_path / "cell").checkpoint, records, tmp_path / "samples")
    out = evaluate(folder, dimensions="temporal_flickering,subject_consistency,background_consistency",
                   dino=tiny["dino"], clip=tiny["clip"], device="cpu")
    assert len(out["per_image"]) == len(records) and all(row["source"] == "frames" for row in out["per_image"])
    for row, clip in zip(out["per_image"], folder_clips(folder), strict=True):
        assert row["terms"]["subject_consistency"] == 3  # 4 frames
        expected = official.temporal_flickering.cal_score(str(clip.path / "%03d.png"))
        assert abs(row["scores"]["temporal_flickering"] - expected) < 1e-6
    with pytest.raises(ValueError, match="at least 128 pixels a side"):  # the miniature's frames are small
        evaluate(folder, dimensions="dynamic_degree", raft=tiny["raft"], device="cpu")
