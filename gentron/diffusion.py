"""Gaussian diffusion as DiT trains it, and sampling through diffusers' schedulers.

Training (DiT / improved DDPM): linear betas 1e-4..0.02 over 1000 steps, epsilon-prediction MSE
(DiT's choice; `prediction="v"` trains v = sqrt(abar) eps - sqrt(1 - abar) x0 instead, whose x0
estimate does not blow up at high noise: the embedded default's tiny pixel-space models learn layouts
much sooner with it), and, when the model also predicts its variance (`learn_sigma`), the variational bound term for
that variance: the model's log-variance interpolates between log(beta_t) and log(beta_tilde_t),
and the vb term sees the predicted epsilon with its gradient stopped, so only the variance learns
from it.

Sampling: DDPM, DDIM or DPM-Solver++ from diffusers, configured with the very same betas. Guidance
runs every branch in one batched forward per step: 2B rows for classifier-free guidance, 3B for
motion-free guidance (docs/method.md). With `learn_sigma` guidance applies to the epsilon
half; DDPM then samples with the learned variance (diffusers' "learned_range", taken from the
fully conditioned branch as DiT does), while DDIM and DPM-Solver++ are fixed-variance samplers and
use the guided epsilon only.

Tensors are images (B, C, H, W) or videos (B, T, C, H, W); the channel axis is dim -3 in both, and
a video clip gets one timestep. `Diffusion.to(device)` puts the schedule's lookup tables on the
training device once, so a training step's lookups are device-side gathers with no transfer.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from gentron.text.base import TextEmbedding

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
PREDICTIONS = ("epsilon", "v")
SCHEDULES = ("linear", "cosine")


def make_betas(schedule: str, num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """float64 betas. linear: DiT's (made for 32x32x4 latents). cosine: improved DDPM's
    abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), s = 0.008, betas capped at 0.999; made for small
    pixel images, which the linear schedule turns to noise within its first half."""
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    elif schedule == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        abar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"noise schedule {schedule!r} is unknown; choose one of {list(SCHEDULES)}")
    return betas


Generators = torch.Generator | Sequence[torch.Generator] | None
# The float32 tables the loss and the samplers look up per timestep (Diffusion._at).
_TABLES = ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
           "sqrt_recipm1_alphas_cumprod", "posterior_log_variance_clipped", "log_betas", "posterior_mean_coef1",
           "posterior_mean_coef2")


class Diffusion:
    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 learn_sigma: bool = False, prediction: str = "epsilon", schedule: str = "linear",
                 timestep_std: float | None = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction {prediction!r} is unknown; choose one of {list(PREDICTIONS)}")
        self.num_timesteps = num_timesteps
        self.learn_sigma = learn_sigma
        self.prediction = prediction
        self.timestep_std = timestep_std
        # Constants in float64 (as DiT computes them), stored as float32.
        betas = make_betas(schedule, num_timesteps, beta_start, beta_end)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        self.betas64 = betas
        self.betas = betas.float()
        self.alphas_cumprod = alphas_cumprod.float()
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1 - alphas_cumprod).sqrt().float()
        self.sqrt_recip_alphas_cumprod = (1 / alphas_cumprod).sqrt().float()
        self.sqrt_recipm1_alphas_cumprod = (1 / alphas_cumprod - 1).sqrt().float()
        # beta_tilde is 0 at t = 0: clip its log to the t = 1 value, as improved DDPM does.
        self.posterior_log_variance_clipped = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])).float()
        self.log_betas = betas.log().float()
        self.posterior_mean_coef1 = (betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod)).float()
        self.posterior_mean_coef2 = ((1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod)).float()
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}  # per device: the lookup tables

    def to(self, device: torch.device | str) -> Diffusion:
        """Copy the lookup tables to `device` once (the CPU attributes stay), so the per-step lookups
        there index a resident table and copy nothing (a blocking transfer per lookup otherwise);
        returns self. A lookup on a device not prepared so copies its tables there on first use."""
        self._tables_on(torch.empty(0, device=device).device)  # 'cuda' -> 'cuda:0', as tensors report it
        return self

    def _tables_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        tables = self._tables.get(device)
        if tables is None:
            tables = self._tables[device] = {name: getattr(self, name).to(device) for name in _TABLES}
        return tables

    def _at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at timesteps t, shaped to broadcast over `like` (B, ...)."""
        out = self._tables_on(t.device)[name][t]
        if out.dtype != like.dtype:
            out = out.to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    # --- the forward process ---------------------------------------------------------------------

    @classmethod
    def from_config(cls, model) -> Diffusion:
        """The diffusion a cell's `model` config section trains and samples with."""
        return cls(learn_sigma=model.learn_sigma, prediction=model.prediction, schedule=model.noise_schedule,
                   timestep_std=model.timestep_std)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, one t per sample (per clip for video)."""
        return self._at("sqrt_alphas_cumprod", t, x0) * x0 + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = self._at("posterior_mean_coef1", t, x0) * x0 + self._at("posterior_mean_coef2", t, x0) * x_t
        return mean, self._at("posterior_log_variance_clipped", t, x0)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._at("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._at("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network regresses: epsilon, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
        if self.prediction == "epsilon":
            return noise
        return self._at("sqrt_alphas_cumprod", t, x0) * noise - self._at("sqrt_one_minus_alphas_cumprod", t, x0) * x0

    def to_eps(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor, clip_x0: bool = False) -> torch.Tensor:
        """The network's prediction as epsilon (what the samplers take).

        clip_x0 (pixel space): clip the implied x0 to the data range [-1, 1] first and return the
        epsilon of the clipped x0 (ADM's clip_denoised), so an early step's wild x0 estimate cannot
        push x_t off the data range for good. Latents are unbounded: never clip them.
        """
        signal, sigma = self._at("sqrt_alphas_cumprod", t, x_t), self._at("sqrt_one_minus_alphas_cumprod", t, x_t)
        eps = pred if self.prediction == "epsilon" else signal * pred + sigma * x_t
        if not clip_x0:
            return eps
        x0 = ((x_t - sigma * eps) / signal).clamp(-1, 1)
        return (x_t - signal * x0) / sigma

    # --- training --------------------------------------------------------------------------------

    def training_loss(
        self,
        model: Callable,
        x0: torch.Tensor,
        text: list[TextEmbedding],
        motion_free: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Loss for a batch of clean images/clips. `t` and `noise` are drawn from `generator` unless
        given. Returns dict(loss, mse, vb) of scalars; vb is None without `learn_sigma`."""
        if t is None:
            t = self.sample_timesteps(len(x0), generator).to(x0.device)
        if noise is None:
            noise = _randn(x0.shape, generator).to(x0.device)
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t, text, motion_free=motion_free).float()
        pred, var_values = self.split_output(out)
        mse = _mean_flat((self.target(x0, t, noise) - pred) ** 2)
        if not self.learn_sigma:
            return dict(loss=mse.mean(), mse=mse.mean(), vb=None)
        # The vb term trains the variance only: the mean it uses comes from a detached prediction.
        vb = self._vb_bits(x0, x_t, t, self.to_eps(x_t, t, pred.detach()), var_values)
        return dict(loss=(mse + vb).mean(), mse=mse.mean(), vb=vb.mean())

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n training timesteps: uniform (DiT), or with `timestep_std` logit-normal(0, std) over t / T
        (SD3, Esser et al. 2024), which trains the middle of the schedule, where layout and binding
        are decided, more often than the nearly clean and nearly pure-noise ends."""
        if self.timestep_std is None:
            return _randint(self.num_timesteps, n, generator)
        u = torch.sigmoid(self.timestep_std * _randn((n,), generator))
        return (u * self.num_timesteps).long().clamp(max=self.num_timesteps - 1)

    def split_output(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model output -> (prediction, variance values in [-1, 1] or None), split on channels (dim -3)."""
        if not self.learn_sigma:
            return out, None
        eps, var_values = out.chunk(2, dim=-3)
        return eps, var_values

    def _vb_bits(self, x0, x_t, t, eps, var_values) -> torch.Tensor:
        """Per-sample KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) in bits, and at t = 0 the decoder NLL."""
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        frac = (var_values + 1) / 2
        model_log_var = frac * self._at("log_betas", t, x0) + (1 - frac) * self._at("posterior_log_variance_clipped", t, x0)
        model_mean, _ = self.q_posterior(self.predict_x0(x_t, t, eps), x_t, t)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
        nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    # --- sampling --------------------------------------------------------------------------------

    def make_scheduler(self, sampler: str):
        """A diffusers scheduler on our exact betas.

        Timestep spacing: DDPM and DPM-Solver++ use "linspace" (999 ... 0, DiT's respacing), so
        DDPM's last step is t = 0 and adds no noise (which matters with a learned variance). DDIM
        uses "trailing" (999, 999 - k, ...): diffusers' DDIM steps to t - 1000 // steps, which
        only matches trailing timesteps.
        """
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        common = dict(num_train_timesteps=self.num_timesteps, trained_betas=self.betas64.numpy(),
                      prediction_type="epsilon")
        if sampler == "ddpm":
            variance = "learned_range" if self.learn_sigma else "fixed_small"
            return DDPMScheduler(**common, variance_type=variance, clip_sample=False, timestep_spacing="linspace")
        if sampler == "ddim":
            return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
        if sampler == "dpmsolver++":
            return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                               timestep_spacing="linspace")
        raise ValueError(f"sampler {sampler!r} is unknown; choose one of {list(SAMPLERS)}")

    @torch.no_grad()
    def sample(
        self,
        model: Callable,
        text: list[TextEmbedding],
        null_text: list[TextEmbedding],
        shape: Sequence[int],
        *,
        sampler: str = "dpmsolver++",
        steps: int = 20,
        cfg_scale: float = 4.0,
        mfg_scale: float | None = None,
        generator: Generators = None,
        device: torch.device | str | None = None,
        clip_x0: bool = False,
    ) -> torch.Tensor:
        """Generate x0 of `shape` (B, C, H, W) or (B, T, C, H, W).

        text / null_text: one TextEmbedding per encoder with B rows (null_text may have 1 row).
        cfg_scale is the text scale (lambda_T); mfg_scale (lambda_M, video only) turns on
        motion-free guidance. `generator` may be one generator or a list of B, one per sample: with
        a list, a sample's result depends only on its own generator, not on its batch. clip_x0: see
        `to_eps` (pixel space only).
        """
        scheduler = self.make_scheduler(sampler)
        if mfg_scale is not None and len(shape) != 5:
            raise ValueError("motion-free guidance needs video shapes (B, T, C, H, W)")
        device = torch.device(device) if device is not None else next(model.parameters()).device
        batch = shape[0]
        text = [e.to(device) for e in text]
        null_text = [(n if len(n) == batch else n.repeat_interleave(batch)).to(device) for n in null_text]
        if any(len(e) != batch for e in text) or any(len(n) != batch for n in null_text):
            raise ValueError(f"text and null_text need {batch} rows (null_text may have 1)")
        self.to(device)
        x = initial_noise(shape, generator).to(device)
        scheduler.set_timesteps(steps, device=device)
        for t in scheduler.timesteps:
            eps, var_values = self.guided_output(model, x, t, text, null_text, cfg_scale, mfg_scale, clip_x0)
            out = eps if var_values is None or sampler != "ddpm" else torch.cat([eps, var_values], dim=-3)
            step = scheduler.step(_channels_first(out), t, _channels_first(x), generator=generator)
            x = _channels_back(step.prev_sample, x.ndim)
        return x

    def guided_output(self, model, x, t, text, null_text, cfg_scale, mfg_scale, clip_x0=False):
        """Guided epsilon (and the conditional branch's variance values) from ONE forward pass.
        Each branch's prediction is turned into epsilon (clipped in x0 when asked) before guidance.

        CFG rows: [cond, null], eps = eps_u + s (eps_c - eps_u).
        MFG rows: [(c_T, motion), (null, motion), (null, no motion)],
        eps = e(∅,∅) + λ_T (e(c_T,c_M) - e(∅,c_M)) + λ_M (e(∅,c_M) - e(∅,∅)).
        """
        batch = len(x)
        if mfg_scale is None:
            branches = [text, null_text]
            motion_free = None  # motion on everywhere (and images have no motion)
        else:
            branches = [text, null_text, null_text]
            motion_free = torch.arange(3 * batch, device=x.device) >= 2 * batch
        rows = len(branches)
        x_in = x.repeat(rows, *([1] * (x.ndim - 1)))
        t_in = torch.full((rows * batch,), int(t), device=x.device, dtype=torch.long)
        text_in = [TextEmbedding.cat(list(parts)) for parts in zip(*branches)]
        pred, var_values = self.split_output(model(x_in, t_in, text_in, motion_free=motion_free).float())
        eps = self.to_eps(x_in, t_in, pred, clip_x0)
        if mfg_scale is None:
            cond, uncond = eps.chunk(2)
            guided = uncond + cfg_scale * (cond - uncond)
        else:
            full, text_free, all_free = eps.chunk(3)
            guided = all_free + cfg_scale * (full - text_free) + mfg_scale * (text_free - all_free)
        return guided, None if var_values is None else var_values[:batch]


def initial_noise(shape: Sequence[int], generator: Generators) -> torch.Tensor:
    """x_T ~ N(0, I); with a list of generators each sample draws from its own."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([_randn(tuple(shape[1:]), g) for g in generator])
    return _randn(tuple(shape), generator)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    # diffusers' DDPM splits a learned variance off dim 1, so videos go to (B, C, T, H, W).
    return x.movedim(2, 1) if x.ndim == 5 else x


def _channels_back(x: torch.Tensor, ndim: int) -> torch.Tensor:
    return x.movedim(1, 2) if ndim == 5 else x


def _randn(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=device)


def _randint(high: int, size: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.randint(0, high, (size,), generator=generator, device=device)


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL divergence between two diagonal Gaussians, elementwise (nats)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under a Gaussian (nats, elementwise),
    the t = 0 decoder term of DDPM's bound."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )
