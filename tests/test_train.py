"""The trainer: config validation, exact resume, divergence, stages (resolution, T2V), end to end."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time

import pytest
import torch

from gentron.checkpoint import load_checkpoint
from gentron.config import default_config, load_config, to_dict
from gentron.errors import ConfigError
from gentron.train import TrainingDiverged, TrainResult, train
from tests.support.train_fixtures import state_equal, tiny_config, with_changes

# --- config -------------------------------------------------------------------------------------

def test_defaults_are_valid_and_partial_configs_merge():
    cfg = load_config({"train": {"steps": 7}})
    assert cfg.train.steps == 7
    assert cfg.train.lr == default_config().train.lr
    assert load_config(cfg) == cfg


def test_unknown_key_suggests_the_close_match():
    with pytest.raises(ConfigError, match=r"train\.lrr.*did you mean 'train\.lr'"):
        load_config({"train": {"lrr": 1e-3}})
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        load_config({"modle": {}})


def test_wrong_type_and_value_name_key_value_and_allowed():
    with pytest.raises(ConfigError, match=r"model\.conditioning='crossattn'.*\['adaln', 'cross_attn'\]"):
        load_config({"model": {"conditioning": "crossattn"}})
    with pytest.raises(ConfigError, match=r"train\.steps='10'.*int"):
        load_config({"train": {"steps": "10"}})
    with pytest.raises(ConfigError, match=r"train\.caption_dropout=1\.5"):
        load_config({"train": {"caption_dropout": 1.5}})
    with pytest.raises(ConfigError, match="did you mean 'T/4'"):
        load_config({"model": {"size": "T4"}})
    with pytest.raises(ConfigError, match=r"model\.timestep_std=-1\.0 must be positive"):
        load_config({"model": {"timestep_std": -1.0}})


# --- training -----------------------------------------------------------------------------------

def _log_steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_resume_is_bit_identical_and_does_not_duplicate_log_lines(tmp_path):
    cfg = tiny_config(tmp_path, train={"steps": 6, "ckpt_every": 3})
    straight = load_checkpoint(train(cfg, tmp_path / "straight").checkpoint)

    # Stop at step 3, keep that checkpoint, go on to 6, then "crash" back to the step-3 checkpoint
    # (as if the process died after logging steps 4-6) and resume from there.
    run = tmp_path / "resumed"
    train(with_changes(cfg, train={"steps": 3}), run)
    shutil.copy(run / "checkpoints/last.pt", tmp_path / "step3.pt")
    train(cfg, run)
    shutil.copy(tmp_path / "step3.pt", run / "checkpoints/last.pt")
    resumed = load_checkpoint(train(cfg, run).checkpoint)

    for key in ("model", "ema", "optimizer", "step", "data"):
        assert state_equal(straight[key], resumed[key]), key
    assert _log_steps(run) == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, train={"steps": 2})
    ckpt = train(cfg, tmp_path / "run").checkpoint
    digest = hashlib.sha1(ckpt.read_bytes()).hexdigest()

    import gentron.diffusion

    real_loss = gentron.diffusion.Diffusion.training_loss

    def poisoned(self, *args, **kwargs):
        out = real_loss(self, *args, **kwargs)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(gentron.diffusion.Diffusion, "training_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"at step 3.*last good checkpoint.*step 2\).*lower train\.lr"):
        train(with_changes(cfg, train={"steps": 5, "ckpt_every": 1}), tmp_path / "run")
    assert hashlib.sha1(ckpt.read_bytes()).hexdigest() == digest


def test_stage_two_at_a_higher_resolution_keeps_weights_and_optimizer_state(tmp_path):
    stage1 = tiny_config(tmp_path, train={"steps": 3})
    first = load_checkpoint(train(stage1, tmp_path / "s1").checkpoint)
    stage2 = with_changes(stage1, data={"resolution": 32}, train={"steps": 2, "init_from": str(tmp_path / "s1/checkpoints/last.pt")})
    second = load_checkpoint(train(stage2, tmp_path / "s2").checkpoint)
    assert second["model_config"]["input_size"] == 32 and first["model_config"]["input_size"] == 16
    assert second["step"] == 2
    # AdamW's per-parameter step counts carry on from stage 1: its state was kept, not reset.
    assert {float(s["step"]) for s in second["optimizer"]["state"].values()} == {5.0}


def test_t2v_starts_from_t2i_and_mixes_motion_free_image_steps_with_clips(tmp_path):
    t2i = tiny_config(tmp_path, train={"steps": 2})
    image_ckpt = load_checkpoint(train(t2i, tmp_path / "t2i").checkpoint)
    t2v = with_changes(t2i, data={"video": True, "num_train": 16},
                       train={"steps": 6, "p_motion_free": 0.5, "init_from": str(tmp_path / "t2i/checkpoints/last.pt")})
    video_ckpt = load_checkpoint(train(t2v, tmp_path / "t2v").checkpoint)
    assert video_ckpt["model_config"]["temporal"]
    assert any(".temporal_" in k for k in video_ckpt["model"])
    assert video_ckpt["data"]["images"] > 0 and video_ckpt["data"]["clips"] > 0
    assert set(image_ckpt["model"]) < set(video_ckpt["model"])


def test_t2v_init_loads_the_t2i_weights(tmp_path):
    from gentron.generate import load_ema_model
    from gentron.model import GenTron, GenTronConfig
    from gentron.train import _init_from

    t2i = tiny_config(tmp_path, train={"steps": 2})
    path = train(t2i, tmp_path / "t2i").checkpoint
    state = load_checkpoint(path)
    model = GenTron(GenTronConfig(**{**state["model_config"], "temporal": True}))
    ema = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert _init_from(str(path), model, ema) is None  # a fresh optimizer for the new layers
    for k, v in state["model"].items():
        assert torch.equal(model.state_dict()[k], v)
        assert torch.equal(ema[k], state["ema"][k])
    assert load_ema_model(path).config.temporal is False


def test_end_to_end_train_generate_judge(tmp_path):
    from eval.judge import evaluate
    from gentron.generate import generate, prompt_set

    cfg = tiny_config(tmp_path, train={"steps": 50, "log_every": 10, "tensorboard": True}, data={"resolution": 32})
    ckpt = train(cfg, tmp_path / "cell").checkpoint
    records = [r for r in prompt_set("compshapes_test", [42]) if r["prompt_id"] < 1]
    out = generate(cfg, ckpt, records, tmp_path / "cell/samples/smoke")
    result = evaluate(out)
    assert {p["category"] for p in result["per_prompt"]} == {"color", "shape", "texture", "spatial",
                                                           "non_spatial", "complex"}
    assert _log_steps(tmp_path / "cell") == [10, 20, 30, 40, 50]
    assert any((tmp_path / "cell/tensorboard").iterdir())


def test_encoded_data_cache_follows_what_compshapes_draws(tmp_path, monkeypatch):
    """Data encoded before CompShapes changed what it draws (its VERSION) is not reused."""
    from gentron import distributed as D
    from gentron.data import compshapes
    from gentron.data.training import load_training_set
    from gentron.vae import build_vae

    cfg = tiny_config(tmp_path)
    load = lambda: load_training_set(cfg, build_vae({"kind": "identity"}), tmp_path / "cache", D.DistInfo(), "cpu")  # noqa: E731
    first = load()
    assert len(list((tmp_path / "cache").glob("data-*.pt"))) == 1
    monkeypatch.setattr(compshapes, "VERSION", compshapes.VERSION + 1)
    again = load()
    assert len(list((tmp_path / "cache").glob("data-*.pt"))) == 2
    assert torch.equal(first.images, again.images)  # the same drawing code here, so the same images


def test_cells_starting_together_encode_the_shared_data_once(tmp_path, monkeypatch):
    """Two cells of a grid start at once on an empty shared cache: one encodes, the other waits."""
    from gentron import distributed as D
    from gentron.data import training as T
    from gentron.vae import build_vae

    cfg, encodes = tiny_config(tmp_path), []

    def slow_encode(*args):
        encodes.append(1)
        time.sleep(0.5)  # widen the window in which an unlocked second cell would start encoding too
        T_encode(*args)

    T_encode = T._encode_training_set
    monkeypatch.setattr(T, "_encode_training_set", slow_encode)
    results = [None, None]

    def load(i):
        results[i] = T.load_training_set(cfg, build_vae({"kind": "identity"}), tmp_path / "cache", D.DistInfo(), "cpu")

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(encodes) == 1
    assert torch.equal(results[0].images, results[1].images)


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    cfg = tiny_config(tmp_path, train={"steps": 2})
    ckpt = train(cfg, tmp_path / "run").checkpoint
    stamp = ckpt.stat().st_mtime_ns
    assert train(cfg, tmp_path / "run") == TrainResult(ckpt, step=2, steps=2, stopped=False)
    assert ckpt.stat().st_mtime_ns == stamp and _log_steps(tmp_path / "run") == [1, 2]


# --- paper-profile paths that once failed -------------------------------------------------------

def test_bf16_text_features_train_an_fp32_model(tmp_path):
    """A T5 encoder loaded in bfloat16 (the paper profile's T5-XXL) feeds the fp32 model: its
    features are cast to the model's dtype, not passed on as bf16."""
    from tests.support.train_fixtures import local_t5

    encoder = {"kind": "t5", "path": str(local_t5(tmp_path / "t5")), "dtype": "bfloat16", "max_length": 32}
    cfg = tiny_config(tmp_path, text_encoders=[encoder], train={"steps": 2})
    state = load_checkpoint(train(cfg, tmp_path / "run").checkpoint)
    assert state["step"] == 2
    assert all(v.dtype == torch.float32 for v in state["model"].values())


def test_init_from_puts_the_ema_where_the_model_is(tmp_path):
    """The EMA of a stage started from another run's checkpoint lives on the model's device
    (the meta device stands in for a GPU here: anything that is not the checkpoint's CPU)."""
    import warnings

    from gentron.model import GenTron, GenTronConfig
    from gentron.train import _init_from

    path = train(tiny_config(tmp_path, train={"steps": 1}), tmp_path / "s1").checkpoint
    state = load_checkpoint(path)
    for temporal in (False, True):
        with torch.device("meta"):
            model = GenTron(GenTronConfig(**{**state["model_config"], "temporal": temporal}))
        ema = {k: v.detach().clone() for k, v in model.named_parameters()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loading into meta tensors is a no-op, and torch says so
            _init_from(str(path), model, ema)
        assert {v.device.type for v in ema.values()} == {"meta"}, temporal


def test_model_size_alone_sets_depth_and_width():
    """`model.size: B/2` means DiT-B's depth and width; the embedded model has its own size name."""
    from gentron.config import resolve
    from gentron.specs import EncoderShape
    from gentron.sizes import SIZES

    shapes = [EncoderShape(32, 32, 77)]
    b2 = resolve(load_config({"model": {"size": "B/2"}}), shapes)
    assert (b2.depth, b2.hidden_size, b2.mlp_hidden_size, b2.num_heads) == (12, 768, 3072, 12)
    assert (b2.text_widths, b2.in_channels, b2.input_size) == ((32,), 3, 20)
    default = resolve(load_config({}))
    size, patch = SIZES[default_config().model.size]
    assert (default.depth, default.hidden_size, default.mlp_hidden_size, default.num_heads, default.patch_size) == (
        size.depth, size.hidden_size, size.mlp_hidden_size, size.num_heads, patch) == (6, 48, 96, 3, 2)
    assert default.text_widths == (64,)  # the tiny CLIP spec's own width, known without building it
    wider = resolve(load_config({"model": {"size": "B/2", "hidden_size": 64, "num_heads": 4}}), shapes)
    assert (wider.depth, wider.hidden_size, wider.num_heads) == (12, 64, 4)  # explicit overrides still apply


def test_specs_know_the_shape_their_weights_have(tmp_path):
    """A spec's shape (no weights loaded) equals the built encoder's, and the model resolved from the
    specs equals the one resolved from the built encoders and VAE."""
    from gentron.config import resolve
    from gentron.text import build_text_encoders
    from gentron.vae import build_vae
    from tests.support.train_fixtures import local_t5

    t5 = {"kind": "t5", "path": str(local_t5(tmp_path / "t5")), "max_length": 32}
    cfg = load_config({"text_encoders": [{"kind": "tiny_clip", "width": 32, "pooled_width": 16}, t5,
                                         {"kind": "tiny_t5", "width": 48, "heads": 4}]})
    encoders = build_text_encoders(cfg.text_encoders)
    assert [s.shape() for s in cfg.text_encoders] == [e.shape for e in encoders]
    vae = build_vae(cfg.vae)
    assert resolve(cfg) == resolve(cfg, [e.shape for e in encoders], (vae.channels, vae.downsample))


def test_lr_schedule_against_libraries():
    """Why the schedule is ours: diffusers' cosine-with-warmup gives the same learning rates after
    warmup but one step lower during it (lr 0 at the first step), and torch's chained schedulers
    are not bit-equal; either would change the embedded default's result."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from gentron.optim import lr_at

    cfg = load_config({"train": {"steps": 300, "warmup_steps": 10}})
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    diffusers_lr = get_cosine_schedule_with_warmup(optimizer, cfg.train.warmup_steps, cfg.train.steps)
    chained = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    torch_lr = torch.optim.lr_scheduler.SequentialLR(chained, [
        torch.optim.lr_scheduler.LinearLR(chained, 1 / 10, 1.0, 9),
        torch.optim.lr_scheduler.CosineAnnealingLR(chained, cfg.train.steps - 10)], milestones=[10])
    ours, theirs, torchs = [], [], []
    for step in range(cfg.train.steps):
        ours.append(lr_at(step, cfg.train.lr, cfg.train.steps, cfg.train.warmup_steps, cfg.train.lr_schedule))
        theirs.append(optimizer.param_groups[0]["lr"])
        torchs.append(chained.param_groups[0]["lr"])
        optimizer.step(), diffusers_lr.step(), chained.step(), torch_lr.step()
    assert ours[10:] == theirs[10:]  # the cosine part: bit-equal
    assert ours[:10] == [cfg.train.lr * (s + 1) / 10 for s in range(10)] and theirs[0] == 0.0
    assert ours == pytest.approx(torchs, rel=1e-9) and ours != torchs


def test_streamed_joint_image_video_training_draws_from_both_streams(tmp_path):
    cfg = tiny_config(tmp_path, data={"video": True, "num_train": 16, "encode": "per_batch", "num_workers": 1},
                      train={"steps": 4, "p_motion_free": 0.5})
    data = load_checkpoint(train(cfg, tmp_path / "run").checkpoint)["data"]
    assert data["images"] > 0 and data["clips"] > 0 and data["images"] + data["clips"] == 4 * 8
    assert set(data["streams"]) == {"images", "clips"}


def test_memory_and_streamed_data_make_the_same_draws(tmp_path):
    """Both encodings draw a step's random numbers alike (the motion-free coin, then caption dropout for
    the global batch): `data.encode` changes which samples a step sees, never the run's random numbers.
    A motion-free step's input is images as still clips."""
    from gentron import distributed as D
    from gentron.data.training import build_training_data
    from gentron.text import build_text_encoders
    from gentron.vae import build_vae

    cfg = tiny_config(tmp_path, data={"video": True, "num_train": 16, "num_workers": 0},
                      train={"p_motion_free": 0.5, "caption_dropout": 0.5})
    encoders, vae = build_text_encoders(cfg.text_encoders), build_vae({"kind": "identity"})
    memory = build_training_data(cfg, D.DistInfo(), "cpu", torch.float32, vae, encoders, tmp_path / "cache", None)
    streamed = build_training_data(with_changes(cfg, data={"encode": "per_batch"}), D.DistInfo(), "cpu",
                                   torch.float32, vae, encoders, tmp_path / "cache", None)
    generators = [torch.Generator().manual_seed(3) for _ in range(2)]
    steps = []
    for _ in range(8):
        (x, _, motion_free), (y, _, streamed_motion_free) = (
            data.next_batch(g) for data, g in zip((memory, streamed), generators))
        assert torch.equal(motion_free, streamed_motion_free) and x.shape == y.shape == (8, 4, 3, 16, 16)
        steps.append(bool(motion_free[0]))
        assert [bool((z[:, 1:] == z[:, :1]).all()) for z in (x, y)] == [steps[-1]] * 2  # still clips
    streamed.close()
    assert torch.equal(generators[0].get_state(), generators[1].get_state())  # as many draws
    assert len(set(steps)) == 2 and memory.consumed == streamed.consumed


def test_a_stop_signal_checkpoints_the_step_and_the_result_says_so(tmp_path, monkeypatch):
    import signal

    import gentron.train_step as S

    cfg = tiny_config(tmp_path, train={"steps": 4})
    straight = load_checkpoint(train(cfg, tmp_path / "straight").checkpoint)
    real, calls = S.update_ema, []

    def stop_at_step_two(ema, model, decay):
        real(ema, model, decay)
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)  # as the launcher sends it: caught, the run stops after the step

    monkeypatch.setattr(S, "update_ema", stop_at_step_two)  # the step's EMA update
    stopped = train(cfg, tmp_path / "run")
    assert stopped == TrainResult(tmp_path / "run/checkpoints/last.pt", step=2, steps=4, stopped=True)
    assert load_checkpoint(stopped.checkpoint)["step"] == 2
    monkeypatch.undo()
    assert train(cfg, tmp_path / "run").stopped is False
    assert state_equal(straight["model"], load_checkpoint(tmp_path / "run/checkpoints/last.pt")["model"])


# --- checkpoints you can trust ------------------------------------------------------------------

def _checkpoint_names(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_the_previous_checkpoints_are_kept_next_to_last(tmp_path):
    cfg = tiny_config(tmp_path, train={"steps": 6, "ckpt_every": 2})
    train(cfg, tmp_path / "two")
    assert _checkpoint_names(tmp_path / "two") == ["last.pt", "step-00000004.pt"]  # keep_last: 2 by default
    assert load_checkpoint(tmp_path / "two/checkpoints/step-00000004.pt")["step"] == 4
    train(with_changes(cfg, train={"keep_last": 3}), tmp_path / "three")
    assert _checkpoint_names(tmp_path / "three") == ["last.pt", "step-00000002.pt", "step-00000004.pt"]


def test_a_corrupt_last_checkpoint_is_refused_and_the_advice_resumes_exactly(tmp_path):
    cfg = tiny_config(tmp_path, train={"steps": 6, "ckpt_every": 2})
    straight = load_checkpoint(train(cfg, tmp_path / "straight").checkpoint)
    run = tmp_path / "run"
    train(with_changes(cfg, train={"steps": 4}), run)
    last = run / "checkpoints/last.pt"
    data = bytearray(last.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    last.write_bytes(bytes(data))
    with pytest.raises(ValueError) as error:
        train(cfg, run)
    message = str(error.value)
    assert str(last) in message and "step-00000002.pt" in message and "\n" not in message
    # The advice: move it aside and rerun; training resumes from step 2 and ends as if never stopped.
    last.rename(run / "checkpoints/last.pt.corrupt")
    resumed = load_checkpoint(train(cfg, run).checkpoint)
    for key in ("model", "ema", "optimizer", "step", "data"):
        assert state_equal(straight[key], resumed[key]), key
    assert _log_steps(run) == [1, 2, 3, 4, 5, 6]


def _poison_after_step(monkeypatch, at_step: int, target: str, value: float):
    """From step `at_step` on, one weight of the model or the EMA becomes `value` after the update
    (the loss and gradients of that step were still finite)."""
    import gentron.train as T
    import gentron.train_step as S

    real = S.update_ema
    calls = []

    def poisoned(ema, model, decay):
        real(ema, model, decay)
        calls.append(1)
        if len(calls) >= at_step:
            with torch.no_grad():
                if target == "ema":
                    next(iter(ema.values())).view(-1)[0] = value
                else:
                    next(T.D.unwrap(model).parameters()).view(-1)[0] = value

    monkeypatch.setattr(S, "update_ema", poisoned)


@pytest.mark.parametrize("target,value", [("model", float("inf")), ("ema", float("nan")), ("model", 1e12)])
def test_poisoned_weights_never_become_the_last_good_checkpoint(tmp_path, monkeypatch, target, value):
    cfg = tiny_config(tmp_path, train={"steps": 2})
    ckpt = train(cfg, tmp_path / "run").checkpoint
    digest = hashlib.sha1(ckpt.read_bytes()).hexdigest()
    _poison_after_step(monkeypatch, 1, target, value)
    with pytest.raises(TrainingDiverged, match=rf"{target}.*last good checkpoint.*step 2\)"):
        train(with_changes(cfg, train={"steps": 3}), tmp_path / "run")
    assert hashlib.sha1(ckpt.read_bytes()).hexdigest() == digest
    assert _checkpoint_names(tmp_path / "run") == ["last.pt"]


def test_a_torn_last_log_line_is_repaired_with_a_message(tmp_path, caplog):
    cfg = tiny_config(tmp_path, train={"steps": 2})
    train(cfg, tmp_path / "run")
    log_file = tmp_path / "run/train_log.jsonl"
    with open(log_file, "a") as f:
        f.write('{"step": 3, "lo')  # killed mid-write
    with caplog.at_level("WARNING"):
        train(with_changes(cfg, train={"steps": 4}), tmp_path / "run")
    assert _log_steps(tmp_path / "run") == [1, 2, 3, 4]
    assert str(log_file) in caplog.text


def test_a_truncated_data_or_prompt_cache_is_rebuilt_with_a_message(tmp_path, caplog):
    cfg = tiny_config(tmp_path, train={"steps": 4, "ckpt_every": 2})
    straight = load_checkpoint(train(cfg, tmp_path / "straight").checkpoint)
    run = tmp_path / "run"
    train(with_changes(cfg, train={"steps": 2}), run)
    [data_cache] = (tmp_path / "cache").glob("data-*.pt")
    shards = sorted((tmp_path / "cache/prompts").rglob("shard-*.pt"))
    for path in (data_cache, shards[0]):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        resumed = load_checkpoint(train(cfg, run).checkpoint)
    assert str(data_cache) in caplog.text and str(shards[0]) in caplog.text
    assert "checkpoint" not in caplog.text.lower().split(str(data_cache))[1].splitlines()[0]
    for key in ("model", "ema", "optimizer", "step"):
        assert state_equal(straight[key], resumed[key]), key
    torch.load(data_cache, weights_only=True)  # rebuilt whole


def test_stale_temporaries_of_killed_saves_are_removed_at_start(tmp_path):
    cfg = tiny_config(tmp_path, train={"steps": 2})
    train(cfg, tmp_path / "run")
    stale = [tmp_path / "run/checkpoints/.last.pt.x8k2ja.tmp", tmp_path / "run/.train_log.jsonl.a1b2c3.tmp"]
    [data_cache] = (tmp_path / "cache").glob("data-*.pt")
    cache_tmp = data_cache.with_name(f".{data_cache.name}.q9w8e7.tmp")
    for path in (*stale, cache_tmp):
        path.write_bytes(b"\0" * 4096)
    train(with_changes(cfg, train={"steps": 3}), tmp_path / "run")
    assert not any(p.exists() for p in (*stale, cache_tmp))


def test_a_run_folder_refuses_a_changed_config_unless_forced(tmp_path):
    cfg = tiny_config(tmp_path, train={"steps": 2})
    train(cfg, tmp_path / "run")
    saved = (tmp_path / "run/config.yaml").read_text()
    changed = with_changes(cfg, train={"steps": 3, "lr": 1e-3}, model={"depth": 3})
    with pytest.raises(ConfigError) as error:
        train(changed, tmp_path / "run")
    message = str(error.value)
    assert "train.lr" in message and "model.depth" in message and "train.resume=force" in message
    assert "train.steps" not in message  # a constant learning rate: more steps continue the same run
    assert "\n" not in message and (tmp_path / "run/config.yaml").read_text() == saved
    # Keys that change how a run is carried out, not what it computes, may change.
    train(with_changes(cfg, train={"steps": 3, "log_every": 2, "ckpt_every": 5, "keep_last": 1}), tmp_path / "run")
    # A cosine schedule depends on train.steps: changing it is a change.
    cosine = tiny_config(tmp_path, train={"steps": 2, "lr_schedule": "cosine"})
    train(cosine, tmp_path / "cosine")
    with pytest.raises(ConfigError, match=r"train\.steps: 2 -> 4"):
        train(with_changes(cosine, train={"steps": 4}), tmp_path / "cosine")
    # Asked for: the run goes on with the new config, which config.yaml now records.
    state = load_checkpoint(train(with_changes(cfg, train={"resume": "force", "steps": 4, "lr": 1e-3}), tmp_path / "run").checkpoint)
    assert state["step"] == 4 and state["config"]["train"]["lr"] == 1e-3
    assert load_config(tmp_path / "run/config.yaml").train.lr == 1e-3
    train(with_changes(cfg, train={"steps": 4, "lr": 1e-3}), tmp_path / "run")  # the new config is now the run's


def test_a_run_folder_without_a_checkpoint_compares_with_its_config_yaml(tmp_path):
    cfg = tiny_config(tmp_path, train={"steps": 2})
    from gentron.config import save_config

    save_config(cfg, tmp_path / "run/config.yaml")  # as the grid runner writes it before training
    with pytest.raises(ConfigError, match=r"train\.seed: 0 -> 1"):
        train(with_changes(cfg, train={"seed": 1}), tmp_path / "run")
    train(cfg, tmp_path / "run")


def test_cli_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    from gentron.config import save_config
    from gentron.train import main

    cfg = tiny_config(tmp_path, train={"steps": 1})
    save_config(cfg, tmp_path / "cell.yaml")
    main([str(tmp_path / "cell.yaml"), "--run-dir", str(tmp_path / "run")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "cell.yaml"), "--run-dir", str(tmp_path / "run"), "train.lr=0.001"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr" in err[0] and "Traceback" not in err[0]


def _poison_on_disk(path, group: str = "ema"):
    """Rewrite a checkpoint with one NaN in a weight and a valid checksum: only a value check finds it."""
    from gentron.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(path)
    name = next(iter(state[group]))
    state[group][name].view(-1)[0] = float("nan")
    save_checkpoint(path, **state)
    return name


def test_a_nan_checkpoint_is_refused_everywhere_it_loads_and_last_good_goes_back(tmp_path):
    """One NaN in the EMA of last.pt (checksum valid): resume, init_from and generation refuse it, naming
    the tensor and the good step file beside it; train.resume=last_good resumes from that file."""
    from gentron.checkpoint import checkpoint_dir, load_checkpoint
    from gentron.generate import generate

    cfg = tiny_config(tmp_path, train={"steps": 4, "ckpt_every": 2})
    train(cfg, tmp_path / "run")
    last = checkpoint_dir(tmp_path / "run") / "last.pt"
    name = _poison_on_disk(last)
    step_file = checkpoint_dir(tmp_path / "run") / "step-00000002.pt"
    assert step_file.exists()
    expected = rf"non-finite weights \(ema\[{name}\] has 1 of \d+ values NaN or inf\).*{step_file.name}.*last_good"
    more = with_changes(cfg, train={"steps": 6})
    with pytest.raises(ValueError, match=expected):
        train(more, tmp_path / "run")
    with pytest.raises(ValueError, match=expected):
        train(with_changes(cfg, train={"init_from": str(last)}), tmp_path / "stage2")
    with pytest.raises(ValueError, match=expected):
        generate(cfg, last, [{"prompt": "a red circle", "seed": 1, "index": 0}], tmp_path / "samples")
    assert not (tmp_path / "samples" / "samples.jsonl").exists()

    result = train(with_changes(more, train={"resume": "last_good"}), tmp_path / "run")
    assert result.step == 6
    healthy = load_checkpoint(result.checkpoint)
    assert all(bool(torch.isfinite(v).all()) for v in healthy["ema"].values())
    # It went back to step 2, not on from the poisoned step 4: the same as a clean run resumed at step 2.
    reference = tmp_path / "reference"
    train(with_changes(cfg, train={"steps": 2, "ckpt_every": 2}), reference)
    train(with_changes(more, train={"ckpt_every": 2}), reference)
    assert state_equal(healthy["model"], load_checkpoint(checkpoint_dir(reference) / "last.pt")["model"])


def test_runs_stored_before_specs_were_typed_resume(tmp_path):
    """A run folder whose stored config has the short text-encoder spec ({kind, seed}) and the retired
    model options at their off values resumes: the same config, written the old way."""
    from gentron.checkpoint import config_changes

    cfg = tiny_config(tmp_path)
    stored = to_dict(cfg)
    stored["text_encoders"] = [{"kind": "tiny_clip", "seed": 0, "width": 32, "layers": 1, "heads": 2}]
    stored["model"].update(logsnr_shift=0.0, min_snr_gamma=None)
    for key in ("subfolder", "sample", "batch_size", "dtype"):
        stored["vae"].pop(key)
    assert config_changes(cfg, stored) == []
    stored["model"]["min_snr_gamma"] = 5.0
    assert config_changes(cfg, stored) == ["model.min_snr_gamma: 5.0 -> (absent)"]
