"""The trainer's step: gradient accumulation, the deferred finite check, per-rank noise on the device,
the fused EMA, block compilation and the host-to-device copy helper."""
from __future__ import annotations

import hashlib

import pytest
import torch

from gentron import distributed as D
from gentron.checkpoint import load_checkpoint
from gentron.config import load_config
from gentron.errors import ConfigError
from gentron.train import TrainingDiverged, train
from tests.support.train_fixtures import state_equal, tiny_config, with_changes


def test_gradient_accumulation_equals_the_whole_batch_step(tmp_path):
    """train.grad_accum=4: each step's batch of 8 runs as 4 micro-batches of 2. After one step the
    accumulated gradient equals the one-pass gradient (AdamW's moments, (1 - beta) * grad and its
    square, to float tolerance); after three, the weights and EMA match to a hundredth of the learning
    rate (Adam turns the float noise of a near-zero gradient into up to a full step of either sign, so
    the weights cannot be compared tighter) and the data position is identical."""
    cfg = tiny_config(tmp_path, train={"steps": 1}, model={"learn_sigma": True, "prediction": "epsilon"})
    whole = load_checkpoint(train(cfg, tmp_path / "whole1").checkpoint)
    parts = load_checkpoint(train(with_changes(cfg, train={"grad_accum": 4}), tmp_path / "parts1").checkpoint)
    for name, moments in whole["optimizer"]["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(parts["optimizer"]["state"][name][moment], moments[moment], atol=1e-9,
                                       rtol=1e-5, msg=f"{moment} of {name}")
    cfg = with_changes(cfg, train={"steps": 3})
    whole = load_checkpoint(train(cfg, tmp_path / "whole").checkpoint)
    parts = load_checkpoint(train(with_changes(cfg, train={"grad_accum": 4}), tmp_path / "parts").checkpoint)
    for key in ("model", "ema"):
        for name, value in whole[key].items():
            torch.testing.assert_close(parts[key][name], value, atol=cfg.train.lr / 100, rtol=1e-4,
                                       msg=f"{key}.{name}")
    assert parts["data"] == whole["data"] and parts["step"] == 3
    assert not state_equal(parts["model"], whole["model"])  # really another path through the step


def test_gradient_accumulation_must_divide_the_batch(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.grad_accum=3 must divide train\.batch_size=8"):
        tiny_config(tmp_path, train={"grad_accum": 3})
    with pytest.raises(ConfigError, match=r"train\.grad_accum=0 must be positive"):
        tiny_config(tmp_path, train={"grad_accum": 0})
    assert load_config({}).train.grad_accum == 1


def test_a_divergence_between_log_steps_is_named_by_its_step_and_kept_off_disk(tmp_path, monkeypatch):
    """The finite check is read every train.log_every steps (and before a checkpoint), not per step: a
    NaN loss at step 3 surfaces at the step-4 check, names step 3, and the step-2 checkpoint stays."""
    import gentron.diffusion

    cfg = tiny_config(tmp_path, train={"steps": 2})
    ckpt = train(cfg, tmp_path / "run").checkpoint
    digest = hashlib.sha1(ckpt.read_bytes()).hexdigest()
    real_loss, calls = gentron.diffusion.Diffusion.training_loss, []

    def nan_from_the_first_call(self, *args, **kwargs):
        out = real_loss(self, *args, **kwargs)
        calls.append(1)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(gentron.diffusion.Diffusion, "training_loss", nan_from_the_first_call)
    with pytest.raises(TrainingDiverged, match=r"at step 3: loss=nan.*last good checkpoint.*step 2\)"):
        train(with_changes(cfg, train={"steps": 10, "log_every": 2, "ckpt_every": 100}), tmp_path / "run")
    assert len(calls) == 2  # steps 3 and 4 ran; the check after step 4 stopped the run
    assert hashlib.sha1(ckpt.read_bytes()).hexdigest() == digest


def test_per_rank_noise_on_the_device_resumes_exactly(tmp_path, monkeypatch):
    """The GPU scheme (each rank draws its timesteps and noise from its own generator seeded from
    (seed, rank)), run on the CPU: the generator's state is checkpointed, so a run stopped at step 2
    and resumed ends bit-identical to an uninterrupted one."""
    import gentron.train_step as S

    monkeypatch.setattr(S, "PER_RANK_NOISE", True)
    cfg = tiny_config(tmp_path, train={"steps": 4})
    straight = load_checkpoint(train(cfg, tmp_path / "straight").checkpoint)
    train(with_changes(cfg, train={"steps": 2}), tmp_path / "resumed")
    resumed = load_checkpoint(train(cfg, tmp_path / "resumed").checkpoint)
    for key in ("model", "ema", "optimizer", "step", "data"):
        assert state_equal(straight[key], resumed[key]), key
    for key in ("noise", "generator"):
        assert state_equal(straight["rng"][key], resumed["rng"][key]), key
    assert len(straight["rng"]["noise"]) == 1  # one stream per rank
    monkeypatch.setattr(S, "PER_RANK_NOISE", None)  # on the CPU: the step generator's global draws
    default = load_checkpoint(train(cfg, tmp_path / "default").checkpoint)
    assert "noise" not in default["rng"] and not state_equal(default["model"], straight["model"])


def test_rank_seeds_differ_per_rank_and_step():
    from gentron.train_step import rank_seed

    seeds = {rank_seed(0, r, s) for r in range(4) for s in (0, 100)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert rank_seed(0, 1) == rank_seed(0, 1, 0)


def test_the_fused_ema_update_is_the_per_tensor_lerp():
    from gentron.optim import update_ema

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    ema = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    expected = {n: e.clone().lerp_(dict(model.named_parameters())[n].detach(), 1 - 0.9) for n, e in ema.items()}
    update_ema(ema, model, 0.9)
    assert state_equal(ema, expected)


def test_compile_defaults_to_cuda_and_compiles_each_block_in_place(tmp_path, monkeypatch):
    """train.compile: None (the default) compiles on CUDA only; true compiles every transformer block
    in place, so state-dict names (and checkpoints) stay those of the plain model."""
    from gentron.train_step import compile_blocks

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    assert load_config({}).train.compile is None
    cfg = tiny_config(tmp_path, train={"steps": 1})
    train(cfg, tmp_path / "auto")
    assert compiled == []  # CPU
    state = load_checkpoint(train(with_changes(cfg, train={"compile": True}), tmp_path / "on").checkpoint)
    assert compiled == ["GenTronBlock"] * 2 and not any("_orig_mod" in k for k in state["model"])

    class Blocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    compiled.clear()
    assert compile_blocks(Blocks(), None, torch.device("cuda")) and compiled == ["Linear"]
    assert not compile_blocks(Blocks(), None, torch.device("cpu")) and compiled == ["Linear"]


def test_host_batches_reach_the_device_through_pinned_memory():
    x = torch.randn(4, 3)
    assert D.to_device(x, torch.device("cpu")) is x
    if not torch.cuda.is_available():
        pytest.skip("the pinned, non-blocking path needs CUDA")
    y = D.to_device(x, torch.device("cuda"))
    assert y.is_cuda and torch.equal(y.cpu(), x)


def test_the_finite_watch_keeps_the_first_bad_step_without_reading_the_device():
    from gentron.train_step import FiniteWatch

    watch = FiniteWatch(torch.device("cpu"), D.DistInfo())
    watch.update(1, torch.tensor(0.5), torch.tensor(1.0))
    assert watch.first_bad() is None
    watch.update(2, torch.tensor(float("inf")), torch.tensor(1.0))
    watch.update(3, torch.tensor(float("nan")), torch.tensor(float("nan")))
    assert watch.first_bad() == (2, "loss=inf, grad_norm=1.0")
