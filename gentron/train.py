"""Train one GenTron cell: `train(cfg, run_dir) -> TrainResult` (checkpoint: run_dir/checkpoints/last.pt).

    python -m gentron.train CONFIG.yaml --run-dir DIR [train.steps=300 model.conditioning=adaln ...]

A step draws its batch from the training data (gentron.data.training: encoded once and gathered, or
streamed and encoded per batch), then the timesteps and noise, and takes an AdamW step; the EMA
follows (gentron.optim). A checkpoint (gentron.checkpoint) is written every train.ckpt_every steps,
at the end, and after the current step when SIGINT or SIGTERM asks the run to stop.

Exact resume: every random draw of a step (the motion-free coin, caption dropout, timesteps, noise)
comes from one torch.Generator whose state is checkpointed, and so is the data position, so a resumed
run ends bit-identical to an uninterrupted one. All ranks draw the same numbers for the *global* batch
and keep their slice (gentron.distributed).

Stages: `train.init_from` starts from another run's checkpoint. Same model family (e.g. stage 2 at a
higher resolution): weights, EMA and optimizer state are kept, position embeddings are recomputed
for the new grid, the step count restarts. T2I checkpoint into a video model (`data.video: true`):
GenTron.load_t2i_weights, new temporal layers zero-initialised, fresh optimizer.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import signal
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from gentron import distributed as D
from gentron.checkpoint import (CONFIG_FILE, LAST, capture_rng, checkpoint_dir, load_checkpoint, restore_rng,
                                resume_state, save_rotating)
from gentron.config import CellConfig, load_config, resolve, save_config, to_dict
from gentron.data.training import TrainingData, build_training_data, default_cache_dir
from gentron.diffusion import Diffusion
from gentron.errors import ConfigError, exits_on_user_error
from gentron.io import remove_stale_temporaries
from gentron.model import GenTron
from gentron.optim import ema_decay_at, lr_at, update_ema
from gentron.text import build_text_encoders
from gentron.train_log import LOG_FILE, MetricsLog
from gentron.vae import build_vae

log = logging.getLogger(__name__)

# No weight of a healthy run comes near this: AdamW moves a weight by about lr per step and the config
# caps lr, so a larger (or non-finite) model or EMA weight means the run diverged, and a checkpoint of
# it must not replace the last good one (resuming from it diverges at any learning rate).
WEIGHT_LIMIT = 1e6


class TrainingDiverged(RuntimeError):
    """The loss, a gradient or a weight became NaN/inf (or absurd); the last good checkpoint was left
    untouched."""


@dataclass(frozen=True)
class TrainResult:
    """Where a call of `train` got to: its newest checkpoint, written at optimizer step `step` of
    `steps`; `stopped` when SIGINT/SIGTERM stopped it before the end (run it again to resume)."""
    checkpoint: Path
    step: int
    steps: int
    stopped: bool


def _full(t: torch.Tensor) -> torch.Tensor:
    """A full CPU tensor from a plain or FSDP-sharded (DTensor) one."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def _autocast(cfg: CellConfig, device: torch.device):
    if device.type == "cuda" and cfg.train.precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cfg.train.precision == "bf16":
        log.warning("train.precision=bf16 applies on GPU only; training in fp32 on %s", device)
    return torch.autocast(device.type, enabled=False)


# --- the run ------------------------------------------------------------------------------------

class _StopRequest:
    """SIGINT/SIGTERM between steps: finish the step, write a checkpoint, stop (resume later)."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        log.warning("signal %d: stopping after this step and writing a checkpoint", signum)
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _init_from(path: str, model: GenTron, ema: dict) -> dict | None:
    """Start a new stage from another run's checkpoint (see the module docstring); returns the
    optimizer state to carry over, or None for a fresh optimizer."""
    state = load_checkpoint(path)
    was_video = state["model_config"].get("temporal", False)
    if model.config.temporal and not was_video:
        model.load_t2i_weights(state["model"])
        ema_model = copy.deepcopy(model)
        ema_model.load_t2i_weights(state["ema"])
        ema.update({k: v.clone() for k, v in ema_model.state_dict().items() if k in ema})
        log.info("initialised a T2V model from T2I checkpoint %s (temporal layers start at zero)", path)
        return None
    model.load_state_dict(state["model"])
    ema.update({k: state["ema"][k].to(device=v.device, dtype=v.dtype, copy=True) for k, v in ema.items()})
    log.info("initialised from %s (weights, EMA and optimizer state; positions recomputed for %dx%d)",
             path, model.config.input_size, model.config.input_size)
    return state["optimizer"]


def _build_model(cfg: CellConfig, data: TrainingData, info: D.DistInfo, device, state: dict | None,
                 generator: torch.Generator):
    """The model (wrapped for the ranks), its EMA and the AdamW optimizer: from the checkpoint being
    resumed (`state`, with the RNG states into `generator` and torch's), else `train.init_from`, else new."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model = GenTron(resolve(cfg, data.shapes, data.latent)).to(device)
    ema = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer_state = None
    if state is not None:
        model.load_state_dict(state["model"])
        ema = {k: state["ema"][k].to(device) for k in ema}
        optimizer_state = state["optimizer"]
        restore_rng(state["rng"], generator)
    elif t.init_from:
        optimizer_state = _init_from(t.init_from, model, ema)
    if info.is_main:
        log.info("model: %.2fM parameters, %s", model.num_params() / 1e6, model.config)

    # Wrap first, then build the optimizer: FSDP2 replaces the parameters with sharded ones.
    model = D.wrap_model(model, info, t.strategy)
    if info.enabled and t.strategy == "fsdp":  # shard the EMA like the weights it follows
        ema = {n: _like(p, ema[n]) for n, p in D.unwrap(model).named_parameters()}
    # Fused AdamW: one kernel for all parameters instead of ~10 ops per tensor, which is most of the
    # optimizer's cost on a small model (CPU: 0.45 vs 2.6 ms per step). FSDP2's sharded parameters keep
    # the per-tensor path.
    fused = not (info.enabled and t.strategy == "fsdp")
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    if optimizer_state is not None:
        D.load_optimizer_state(model, optimizer, optimizer_state)
    return model, ema, optimizer


class _CheckpointWriter:
    """Writes a run's checkpoints (gentron.checkpoint.save_rotating), only of weights a run can go on
    from; `saved_step` is the step of the newest one on disk (None: none yet)."""

    def __init__(self, run_dir: Path, recorded: CellConfig, fingerprints: list[str], info: D.DistInfo,
                 saved_step: int | None):
        self.cfg, self.fingerprints, self.info, self.saved_step = recorded, fingerprints, info, saved_step
        self.folder = checkpoint_dir(run_dir)
        self.last = self.folder / LAST

    def save(self, step: int, model, ema: dict, optimizer, data: TrainingData, generator: torch.Generator) -> None:
        problem = poisoned_weight(D.unwrap(model), ema, self.info)
        if problem:
            raise self.diverged(step, problem)
        payload = dict(
            model=D.full_model_state(model),
            ema={k: _full(v) for k, v in ema.items()},
            optimizer=D.full_optimizer_state(model, optimizer),
            step=step, data=data.state_dict(), rng=capture_rng(generator),
            config=to_dict(self.cfg), model_config=D.unwrap(model).config.to_dict(), text_encoders=self.fingerprints,
        )
        if self.info.is_main:
            save_rotating(self.folder, payload, self.cfg.train.keep_last, self.saved_step)
        self.saved_step = step
        D.barrier(self.info)

    def diverged(self, step: int, problem: str) -> TrainingDiverged:
        t = self.cfg.train
        kept = f"the last good checkpoint {self.last} (step {self.saved_step}) is untouched" \
            if self.saved_step is not None and self.last.exists() else "no checkpoint was written yet"
        lr = lr_at(max(step - 1, 0), t.lr, t.steps, t.warmup_steps, t.lr_schedule)
        return TrainingDiverged(
            f"training diverged at step {step}: {problem} (lr={lr:g}); {kept}. "
            f"Likely fix: lower train.lr (now {t.lr:g}), set/lower train.grad_clip (now {t.grad_clip:g}) or add "
            f"train.warmup_steps (now {t.warmup_steps})")


def _log_row(step: int, lr: float, grad_norm, losses: dict, data: TrainingData, steps: int, seconds: float,
             batch_size: int, info: D.DistInfo) -> dict:
    """A train_log.jsonl row: this step's numbers, and the throughput of the `steps` since the last row."""
    steps_per_s = steps / max(seconds, 1e-9)
    row = {"step": step, "lr": lr, "grad_norm": float(grad_norm), "steps_per_s": steps_per_s,
           "images_per_s": steps_per_s * batch_size}
    # Per step, over the window: waiting for the batch, and the encoders run on it.
    row["data_wait_s"], row["encode_s"] = data.wait_s / steps, data.encode_s / steps
    data.wait_s = data.encode_s = 0.0
    if data.skipped:
        row["skipped"] = data.skipped  # bad samples this rank's loader workers skipped so far
    for k in ("loss", "mse", "vb"):
        v = losses.get(k)
        row[k] = None if v is None else float(D.all_reduce_mean(v.detach().float(), info))
    return row


def train(cfg: CellConfig | dict | str | Path, run_dir: str | Path) -> TrainResult:
    """Train (or resume) the cell in `run_dir` up to train.steps, or until SIGINT/SIGTERM stops it after
    a step; either way the last step is checkpointed.

    A run folder resumes only with the config it was trained with (gentron.checkpoint.resume_state); a
    corrupt checkpoint is refused, and temporaries of killed saves are removed first."""
    cfg = load_config(cfg)
    run_dir = Path(run_dir)
    info = D.init_distributed()
    device = info.device()
    t = cfg.train
    if info.is_main:  # this run's own files: nobody else writes them
        remove_stale_temporaries(checkpoint_dir(run_dir))
        remove_stale_temporaries(run_dir, [LOG_FILE, CONFIG_FILE])
    state = resume_state(cfg, run_dir)
    # What the run records: the permission to resume with another config is not part of it.
    recorded = dataclasses.replace(cfg, train=dataclasses.replace(t, resume="auto"))
    if info.is_main:
        save_config(recorded, run_dir / CONFIG_FILE)

    encoders = build_text_encoders(cfg.text_encoders, device)
    fingerprints = [e.name for e in encoders]
    vae = build_vae(cfg.vae).to(device)
    dtype = torch.float32  # the model's parameters, and so its compute dtype (autocast lowers it on GPU)
    data = build_training_data(cfg, info, device, dtype, vae, encoders, default_cache_dir(cfg, run_dir),
                               state and state["data"])
    del encoders, vae  # the data keeps what it runs per batch
    generator = torch.Generator().manual_seed(t.seed)
    model, ema, optimizer = _build_model(cfg, data, info, device, state, generator)
    step = state["step"] if state is not None else 0
    checkpoints = _CheckpointWriter(run_dir, recorded, fingerprints, info, step if state is not None else None)
    del state
    forward = torch.compile(model) if t.compile else model
    diffusion = Diffusion.from_config(cfg.model)
    metrics = MetricsLog(run_dir / LOG_FILE, step, info.is_main, run_dir / "tensorboard" if t.tensorboard else None)
    local = D.local_slice(t.batch_size, info)
    bar = tqdm(total=t.steps, initial=step, desc=f"train {run_dir.name}", disable=not info.is_main,
               dynamic_ncols=True)
    window_start, window_steps = time.time(), 0
    model.train()
    with _StopRequest() as stop, bar, closing(metrics), closing(data):
        while step < t.steps and not stop.requested:
            lr = lr_at(step, t.lr, t.steps, t.warmup_steps, t.lr_schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x0, text, motion_free = data.next_batch(generator)
            # Timesteps and noise for the whole global batch, so every rank count gives the same run.
            timesteps = diffusion.sample_timesteps(t.batch_size, generator)
            noise = torch.randn((t.batch_size, *x0.shape[1:]), generator=generator)
            with _autocast(cfg, device):
                losses = diffusion.training_loss(forward, x0, text, motion_free=motion_free,
                                                 t=timesteps[local].to(device), noise=noise[local].to(device))
            loss = losses["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            grad_norm = _full(grad_norm) if hasattr(grad_norm, "full_tensor") else grad_norm
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                raise checkpoints.diverged(step + 1, f"loss={loss.item()}, grad_norm={grad_norm.item()}")
            optimizer.step()
            step += 1
            update_ema(ema, model, ema_decay_at(step, t.ema_decay))
            window_steps += 1
            bar.update(1)

            if step % t.log_every == 0 or step == t.steps:
                row = _log_row(step, lr, grad_norm, losses, data, window_steps, time.time() - window_start,
                               t.batch_size, info)
                metrics.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{row['steps_per_s']:.2f}")
                window_start, window_steps = time.time(), 0
            if step % t.ckpt_every == 0 and step < t.steps:
                checkpoints.save(step, model, ema, optimizer, data, generator)
        if step != checkpoints.saved_step or not checkpoints.last.exists():  # a finished run rerun: untouched
            checkpoints.save(step, model, ema, optimizer, data, generator)
    stopped = stop.requested and step < t.steps
    if stopped:
        log.warning("stopped at step %d of %d; run again to resume", step, t.steps)
    D.shutdown(info)
    return TrainResult(checkpoints.last, step, t.steps, stopped)


def _like(param, full: torch.Tensor):
    """`full` laid out like `param` (an FSDP2 DTensor shard)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements)


@torch.no_grad()
def poisoned_weight(model: torch.nn.Module, ema: dict[str, torch.Tensor], info: D.DistInfo) -> str | None:
    """What makes these weights unfit to resume from: the first model or EMA weight that is NaN, inf or
    beyond WEIGHT_LIMIT in absolute value, or None. Reads the weights only (each rank its own shards;
    every rank gets the same answer)."""
    found = None
    for which, named in (("model", model.named_parameters()), ("ema", ema.items())):
        for name, weight in named:
            local = weight.to_local() if hasattr(weight, "to_local") else weight
            if local.numel() == 0:
                continue
            largest = local.detach().abs().max()
            if not bool(largest <= WEIGHT_LIMIT):  # NaN compares false
                found = f"{which} weight {name} reaches {largest.item():g} (healthy runs stay far below {WEIGHT_LIMIT:g})"
                break
        if found:
            break
    if info.enabled:  # a poisoned shard on any rank stops every rank
        flag = torch.tensor([1.0 if found else 0.0], device=info.device())
        if float(D.all_reduce_mean(flag, info)) > 0 and not found:
            found = "a weight on another rank is non-finite or too large"
    return found


@exits_on_user_error("python -m gentron.train")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gentron.train", description="Train one GenTron cell (resumes if run-dir has a checkpoint).")
    parser.add_argument("config", help="cell config YAML (DESIGN.md 'A cell's config')")
    parser.add_argument("--run-dir", required=True, help="where checkpoints, logs and the resolved config go")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=300 (anywhere on the line)")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from omegaconf import OmegaConf

    for override in args.overrides:
        if "=" not in override or override.startswith("="):
            raise ConfigError(f"'{override}' is not an override: overrides are key=value, e.g. train.steps=300")
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"config {args.config} does not exist; give a cell config YAML "
                                "(DESIGN.md 'A cell's config'), e.g. a cell's config.yaml")
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(args.overrides))
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"{args.config} with overrides {args.overrides} is not a valid config: "
                          f"{str(e).splitlines()[0]}; fix the YAML or the override") from e
    print(train(cfg, args.run_dir).checkpoint)


if __name__ == "__main__":
    main()
