"""Diffusion: schedule, q_sample, losses, guided batched sampling, seeding, with the real tiny GenTron."""
import pytest
import torch

from gentron.diffusion import Diffusion
from gentron.model import GenTron
from gentron.sizes import model_config
from gentron.text.base import TextEmbedding
from gentron.text.encoder import seeded

WIDTH = 16


def make_model(temporal=False, learn_sigma=False):
    """A tiny GenTron whose zero-initialised layers (adaLN, cross- and temporal-attention outputs,
    final layer) are perturbed, so text and motion actually change its output."""
    config = model_config("T/2", depth=2, hidden_size=32, mlp_hidden_size=64, num_heads=2, input_size=8,
                          in_channels=3, text_widths=(WIDTH,), pooled_widths=(WIDTH,), temporal=temporal,
                          max_frames=4, learn_sigma=learn_sigma)

    def build():
        model = GenTron(config)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        return model.eval()

    return seeded(0, build)


def make_text(batch, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    length = max(lengths)
    tokens = torch.randn(batch, length, WIDTH, generator=g)
    mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    return [TextEmbedding(tokens * mask[..., None], mask, torch.randn(batch, WIDTH, generator=g))]


@pytest.fixture(scope="module")
def video_model():
    return make_model(temporal=True)


def test_schedule_matches_dit_and_diffusers():
    d = Diffusion()
    assert d.num_timesteps == 1000 and len(d.betas) == 1000
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    for sampler in ("ddpm", "ddim", "dpmsolver++"):
        scheduler = d.make_scheduler(sampler)
        torch.testing.assert_close(scheduler.betas, d.betas)
        torch.testing.assert_close(scheduler.alphas_cumprod, d.alphas_cumprod)
    with pytest.raises(ValueError, match="ddpm"):
        d.make_scheduler("euler")


def test_q_sample_closed_form():
    d = Diffusion()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x0, noise = torch.randn(4, 2, 3, 4, 4), torch.randn(4, 2, 3, 4, 4)  # clips of 2 frames
    xt = d.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        abar = torch.prod(1 - betas[: ti + 1])
        expected = abar.sqrt() * x0[i].double() + (1 - abar).sqrt() * noise[i].double()
        torch.testing.assert_close(xt[i].double(), expected, atol=1e-5, rtol=1e-5)  # one t per whole clip


def test_loss_is_zero_for_a_perfect_model():
    """Predicting the true noise gives mse 0; with the posterior's own variance (v = -1) the vb
    term is 0 too for t > 0."""
    noise = torch.randn(4, 3, 8, 8)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    t = torch.tensor([1, 5, 300, 999])
    oracle = lambda x, t, text, motion_free=None: noise  # noqa: E731
    out = Diffusion().training_loss(oracle, x0, [], t=t, noise=noise)
    assert out["mse"].item() == 0 and out["loss"].item() == 0 and out["vb"] is None
    oracle = lambda x, t, text, motion_free=None: torch.cat([noise, -torch.ones_like(noise)], 1)  # noqa: E731
    out = Diffusion(learn_sigma=True).training_loss(oracle, x0, [], t=t, noise=noise)
    assert out["mse"].item() == 0
    assert abs(out["vb"].item()) < 1e-4


def test_vb_trains_only_the_variance():
    d = Diffusion(learn_sigma=True)
    eps = torch.zeros(2, 3, 8, 8, requires_grad=True)
    var = torch.zeros(2, 3, 8, 8, requires_grad=True)
    model = lambda x, t, text, motion_free=None: torch.cat([eps, var], 1)  # noqa: E731
    out = d.training_loss(model, torch.randn(2, 3, 8, 8), [], generator=torch.Generator().manual_seed(0))
    out["vb"].backward()
    assert eps.grad is None or eps.grad.abs().max() == 0
    assert var.grad.abs().max() > 0


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_training_loss_with_gentron(learn_sigma):
    model = make_model(temporal=True, learn_sigma=learn_sigma).train()
    d = Diffusion(learn_sigma=learn_sigma)
    seen = []

    def forward(x, t, text, motion_free=None):
        seen.append((x.shape, t.shape))
        return model(x, t, text, motion_free=motion_free)

    x0 = torch.randn(3, 4, 3, 8, 8)  # clips: one timestep per clip
    out = d.training_loss(forward, x0, make_text(3, [3, 5, 1], 0), motion_free=torch.tensor([True, False, True]),
                          generator=torch.Generator().manual_seed(0))
    assert seen == [(x0.shape, torch.Size([3]))]
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and 0.1 < out["mse"].item() < 10
    if learn_sigma:
        assert out["vb"].ndim == 0 and torch.isfinite(out["vb"])
        torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])
    else:
        assert out["vb"] is None
        torch.testing.assert_close(out["loss"], out["mse"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # Seeded t and noise: the same generator seed gives the same loss.
    again = d.training_loss(model, x0, make_text(3, [3, 5, 1], 0), motion_free=torch.tensor([True, False, True]),
                            generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again["loss"], out["loss"])


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x, t, text, motion_free=None):
        self.batches.append(len(x))
        return self.model(x, t, text, motion_free=motion_free)


def test_guided_batch_equals_separate_forwards(video_model):
    d = Diffusion()
    x = torch.randn(2, 4, 3, 8, 8)
    text, null = make_text(2, [4, 6], 1), make_text(2, [1, 1], 2)
    t = torch.tensor(500)
    counting = CountingModel(video_model)
    with torch.no_grad():
        cfg, _ = d.guided_output(counting, x, t, text, null, 5.0, None)
        mfg, _ = d.guided_output(counting, x, t, text, null, 5.0, 1.3)
        assert counting.batches == [4, 6]  # one forward per step: 2B rows for CFG, 3B for MFG
        tt = torch.full((2,), 500)
        motion = torch.zeros(2, dtype=torch.bool)
        e_full = video_model(x, tt, text, motion_free=motion)
        e_text_free = video_model(x, tt, null, motion_free=motion)
        e_all_free = video_model(x, tt, null, motion_free=~motion)
    torch.testing.assert_close(cfg, e_text_free + 5.0 * (e_full - e_text_free), atol=1e-5, rtol=1e-5)
    expected = e_all_free + 5.0 * (e_full - e_text_free) + 1.3 * (e_text_free - e_all_free)
    torch.testing.assert_close(mfg, expected, atol=1e-5, rtol=1e-5)
    assert (e_text_free - e_all_free).abs().max() > 1e-3  # motion really changes the prediction


def test_mfg_with_unit_motion_scale_is_cfg(video_model):
    d = Diffusion()
    x = torch.randn(2, 4, 3, 8, 8)
    text, null = make_text(2, [4, 6], 1), make_text(2, [1, 1], 2)
    with torch.no_grad():
        cfg, _ = d.guided_output(video_model, x, torch.tensor(300), text, null, 7.5, None)
        mfg, _ = d.guided_output(video_model, x, torch.tensor(300), text, null, 7.5, 1.0)
        more, _ = d.guided_output(video_model, x, torch.tensor(300), text, null, 7.5, 1.3)
    torch.testing.assert_close(mfg, cfg, atol=1e-6, rtol=0)
    assert (more - cfg).abs().max() > 1e-3
    # End to end: a seeded MFG(λ_M = 1) video sample equals the CFG one.
    shape = (2, 4, 3, 8, 8)
    a = d.sample(video_model, text, null, shape, sampler="ddim", steps=3, cfg_scale=7.5, mfg_scale=1.0,
                 generator=torch.Generator().manual_seed(0))
    b = d.sample(video_model, text, null, shape, sampler="ddim", steps=3, cfg_scale=7.5,
                 generator=torch.Generator().manual_seed(0))
    assert a.shape == shape
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_seeded_sampling_is_reproducible(sampler):
    model = make_model(learn_sigma=True)
    d = Diffusion(learn_sigma=True)
    text, null = make_text(2, [3, 5], 1), make_text(1, [1], 2)  # one null row, broadcast
    counting = CountingModel(model)
    run = lambda seed: d.sample(counting, text, null, (2, 3, 8, 8), sampler=sampler, steps=4, cfg_scale=4.0,  # noqa: E731
                                generator=torch.Generator().manual_seed(seed))
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (2, 3, 8, 8) and torch.isfinite(a).all()
    assert counting.batches == [4] * 12  # 4 steps, one 2B forward each
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", ["ddpm", "dpmsolver++"])
def test_per_sample_seed_is_independent_of_the_batch(sampler):
    model = make_model(learn_sigma=True)
    d = Diffusion(learn_sigma=True)
    text, null = make_text(3, [2, 6, 4], 1), make_text(3, [1, 1, 1], 2)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = d.sample(model, text, null, (3, 3, 8, 8), sampler=sampler, steps=4, generator=gens([7, 42, 9]))
    alone = d.sample(model, [e[1:2] for e in text], [e[1:2] for e in null], (1, 3, 8, 8), sampler=sampler, steps=4,
                     generator=gens([42]))
    # Equal up to float rounding (padding and batch size change the kernels' summation order);
    # a generator shared across the batch would differ by O(1).
    torch.testing.assert_close(batch[1:2], alone, atol=1e-3, rtol=1e-3)
    other = d.sample(model, [e[[2, 1]] for e in text], [e[[2, 1]] for e in null], (2, 3, 8, 8), sampler=sampler,
                     steps=4, generator=gens([5, 42]))
    torch.testing.assert_close(other[1:2], alone, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="generators"):
        d.sample(model, text, null, (3, 3, 8, 8), sampler=sampler, steps=2, generator=gens([1, 2]))


def test_sample_argument_errors(video_model):
    d = Diffusion()
    text, null = make_text(2, [2, 3], 1), make_text(2, [1, 1], 2)
    with pytest.raises(ValueError, match="video"):
        d.sample(video_model, text, null, (2, 3, 8, 8), steps=2, mfg_scale=1.2)
    with pytest.raises(ValueError, match="rows"):
        d.sample(video_model, text, null, (3, 3, 8, 8), steps=2)


def test_sampler_timesteps_start_from_pure_noise():
    d = Diffusion(learn_sigma=True)
    for sampler, last in [("ddpm", 0), ("ddim", 199), ("dpmsolver++", None)]:
        scheduler = d.make_scheduler(sampler)
        scheduler.set_timesteps(5)
        assert scheduler.timesteps[0] == 999
        if last is not None:
            assert scheduler.timesteps[-1] == last


def test_video_ddpm_with_learned_variance_and_mfg():
    model = make_model(temporal=True, learn_sigma=True)
    d = Diffusion(learn_sigma=True)
    text, null = make_text(2, [2, 3], 1), make_text(2, [1, 1], 2)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    x = d.sample(model, text, null, (2, 4, 3, 8, 8), sampler="ddpm", steps=3, cfg_scale=5.0, mfg_scale=1.2, generator=gens)
    assert x.shape == (2, 4, 3, 8, 8) and torch.isfinite(x).all()


def test_clip_x0_only_changes_out_of_range_x0_estimates():
    diffusion = Diffusion()
    x0 = torch.tensor([0.5, -2.0]).view(2, 1, 1, 1).expand(2, 3, 4, 4)
    eps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([700, 700])
    x_t = diffusion.q_sample(x0, t, eps)
    clipped = diffusion.to_eps(x_t, t, eps, clip_x0=True)
    torch.testing.assert_close(clipped[0], eps[0], atol=1e-4, rtol=1e-4)  # x0 = 0.5: untouched
    torch.testing.assert_close(diffusion.predict_x0(x_t, t, clipped)[1], torch.full((3, 4, 4), -1.0),
                               atol=1e-4, rtol=1e-4)  # x0 = -2: clipped to -1


def test_v_prediction_target_and_conversion_are_consistent():
    d = Diffusion(prediction="v")
    x0 = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.q_sample(x0, t, eps)
    v = d.target(x0, t, eps)
    # A perfect v-predictor implies the true epsilon and x0, at every noise level.
    torch.testing.assert_close(d.to_eps(x_t, t, v), eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d.predict_x0(x_t, t, d.to_eps(x_t, t, v)), x0, atol=1e-3, rtol=1e-3)

    class Oracle(torch.nn.Module):
        def forward(self, x, t_, text, motion_free=None):
            return v

    assert d.training_loss(Oracle(), x0, [], t=t, noise=eps)["loss"].item() < 1e-10
    with pytest.raises(ValueError, match="prediction"):
        Diffusion(prediction="x0")


def test_cosine_schedule_follows_its_closed_form():
    import math

    d = Diffusion(schedule="cosine")
    closed = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 250, 500, 750):  # abar_t = f(t + 1) / f(0) (index t is the (t+1)-th step)
        assert abs(d.alphas_cumprod[t].item() - closed(t + 1)) < 1e-5
    assert torch.all(d.alphas_cumprod[1:] < d.alphas_cumprod[:-1])
    # The linear schedule has destroyed much more of the signal half way: why small images use cosine.
    assert Diffusion().alphas_cumprod[500] < 0.1 < 0.4 < d.alphas_cumprod[500]
    with pytest.raises(ValueError, match="noise schedule"):
        Diffusion(schedule="quadratic")


def test_logit_normal_timesteps_train_the_middle_of_the_schedule():
    """Uniform by default (the same draws as torch.randint, so default runs are unchanged);
    logit-normal(0, 1) puts P(|z| < logit(3/4)) = 0.73 of the timesteps in [T/4, 3T/4), uniform 0.5."""
    uniform, logit_normal = Diffusion(), Diffusion(timestep_std=1.0)
    drawn = uniform.sample_timesteps(1000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(drawn, torch.randint(0, 1000, (1000,), generator=torch.Generator().manual_seed(0)))
    t = logit_normal.sample_timesteps(20_000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and 0 <= t.min() and t.max() <= 999
    middle = ((t >= 250) & (t < 750)).float().mean().item()
    assert abs(middle - 0.729) < 0.015, middle
    again = logit_normal.sample_timesteps(20_000, torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def _count_to_calls(monkeypatch, from_file: str) -> list[str]:
    """Record every Tensor.to called from `from_file` (the caller's function names)."""
    import sys

    calls, real = [], torch.Tensor.to

    def counted(self, *args, **kwargs):
        caller = sys._getframe(1)
        if caller.f_code.co_filename.endswith(from_file):
            calls.append(caller.f_code.co_name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counted)
    return calls


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_schedule_lookups_copy_nothing_once_the_tables_are_on_the_device(monkeypatch, learn_sigma):
    """Diffusion.to(device) moves the tables once; the loss's lookups (q_sample, target, the vb term)
    then index them where the timesteps are, without a Tensor.to: on the meta device a table left on
    the CPU could not even be indexed without one."""
    d = Diffusion(learn_sigma=learn_sigma, prediction="v").to("meta")
    calls = _count_to_calls(monkeypatch, "gentron/diffusion.py")
    x0, t = torch.empty(4, 3, 8, 8, device="meta"), torch.empty(4, dtype=torch.long, device="meta")
    noise = torch.empty_like(x0)

    def model(x, t, text, motion_free=None):
        return torch.empty(len(x), 6 if learn_sigma else 3, 8, 8, device="meta")

    losses = d.training_loss(model, x0, [], t=t, noise=noise)
    assert losses["loss"].device.type == "meta" and calls == []
    assert d.sqrt_alphas_cumprod.device.type == "cpu"  # the CPU copy stays, for the samplers' diffusers


def test_a_training_step_looks_up_the_schedule_without_copies(monkeypatch, tmp_path):
    """In the trainer (which calls Diffusion.to once), no Tensor.to runs in gentron/diffusion.py during
    the training steps."""
    import gentron.diffusion as diffusion_module
    from gentron.train import train
    from tests.support.train_fixtures import tiny_config

    calls, real_loss = [], diffusion_module.Diffusion.training_loss

    def watched(self, *args, **kwargs):
        with monkeypatch.context() as m:
            seen = _count_to_calls(m, "gentron/diffusion.py")
            out = real_loss(self, *args, **kwargs)
        calls.extend(seen)
        return out

    monkeypatch.setattr(diffusion_module.Diffusion, "training_loss", watched)
    train(tiny_config(tmp_path, train={"steps": 2}, model={"learn_sigma": True, "prediction": "epsilon"}),
          tmp_path / "run")
    assert calls == []
