"""Train one GenTron cell: `train(cfg, run_dir) -> TrainResult` (checkpoint: run_dir/checkpoints/last.pt).

    python -m gentron.train CONFIG.yaml --run-dir DIR [train.steps=300 model.conditioning=adaln ...]

A step draws its batch from the training data (gentron.data.training: encoded once and gathered, or
streamed and encoded per batch), then the timesteps and noise, runs the loss in `train.grad_accum`
micro-batches and takes an AdamW step; the EMA follows (gentron.optim). Nothing in a step waits for
the device (gentron.train_step): the noise is drawn where the model runs, the schedule's tables live
there, and the finite check of the loss and gradient norm is read every train.log_every steps and
before each checkpoint. A checkpoint (gentron.checkpoint; sharded per rank under FSDP) is written
every train.ckpt_every steps, at the end, and after the current step when SIGINT, SIGTERM or SLURM's
warning signal (USR2) asks the run to stop (gentron.preemption).

Exact resume: every random draw of a step comes from generators whose states are checkpointed, and
so is the data position, so a resumed run ends bit-identical to an uninterrupted one on the same
number of ranks. What is bit-identical across world sizes: the data order, caption dropout and the
motion-free coin are drawn for the *global* batch from one CPU generator on every rank, which keeps
its slice (gentron.distributed). On CPUs the timesteps and noise are too, so any number of ranks
reproduces the single-process run up to floating-point reduction order (and the embedded default's
numbers are unchanged). On GPUs each rank draws the timesteps and noise of its own slice on its
device, from a generator seeded from (train.seed, rank): the same world size reproduces and resumes
bit-exactly, another world size trains on other (equally distributed) noise, and resuming at another
world size restarts each rank's stream from (seed, rank, step).

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
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch

from gentron import distributed as D
from gentron import sharded
from gentron.checkpoint import (CONFIG_FILE, LAST, capture_rng, checkpoint_dir, checkpoint_step, consolidate,
                                load_checkpoint, restore_rng, resume_state, save_rotating)
from gentron.config import CellConfig, load_config, resolve, save_config, to_dict
from gentron.data.training import (TrainingData, build_training_data, default_cache_dir, needs_encoders, needs_vae,
                                   summed_skipped)
from gentron.diffusion import Diffusion
from gentron.errors import ConfigError, exits_on_user_error
from gentron.io import remove_stale_temporaries
from gentron.model import GenTron
from gentron.optim import lr_at
from gentron.preemption import StopRequest
from gentron.progress import progress
from gentron.text import build_text_encoders
from gentron.train_log import LOG_FILE, MetricsLog
from gentron.train_step import (FiniteWatch, StepNoise, autocast_for, compile_blocks, device_settings,
                                training_step)
from gentron.validation import VALIDATION_FILE, SampleEvaluation, Validator
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


# --- the run ------------------------------------------------------------------------------------

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
                 generator: torch.Generator, noise: StepNoise):
    """The model (blocks compiled, wrapped for the ranks), its EMA and the AdamW optimizer: from the
    checkpoint being resumed (`state`, with the RNG states into `generator`, `noise` and torch's; a
    sharded one loads into the wrapped model), else `train.init_from`, else new."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model = GenTron(resolve(cfg, data.shapes, data.latent)).to(device)
    ema = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer_state = None
    if state is not None:
        if "sharded" not in state:
            model.load_state_dict(state["model"])
            ema = {k: state["ema"][k].to(device) for k in ema}
            optimizer_state = state["optimizer"]
        restore_rng(state["rng"], generator)
        noise.restore(state["rng"].get("noise"), state["step"])
    elif t.init_from:
        optimizer_state = _init_from(t.init_from, model, ema)
    if info.is_main:
        log.info("model: %.2fM parameters, %s", model.num_params() / 1e6, model.config)
    if compile_blocks(model, t.compile, device) and info.is_main:
        log.info("train.compile: compiling the %d blocks", len(model.blocks))

    # Wrap first, then build the optimizer: FSDP2 replaces the parameters with sharded ones.
    model = D.wrap_model(model, info, t.strategy, bf16=device.type == "cuda" and t.precision in ("auto", "bf16"))
    shards = D.is_sharded(model)
    if shards:  # shard the EMA like the weights it follows
        ema = {n: _like(p, ema[n]) for n, p in D.unwrap(model).named_parameters()}
    # Fused AdamW: one kernel for all parameters instead of ~10 ops per tensor, which is most of the
    # optimizer's cost on a small model (CPU: 0.45 vs 2.6 ms per step). FSDP2's sharded parameters keep
    # the per-tensor path.
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=not shards)
    if optimizer_state is not None:
        D.load_optimizer_state(model, optimizer, optimizer_state)
    if state is not None and "sharded" in state:
        sharded.load_into(Path(state["sharded"]), model, ema, optimizer)
    return model, ema, optimizer


class _CheckpointWriter:
    """Writes a run's checkpoints, only of weights a run can go on from: one file
    (gentron.checkpoint.save_rotating), or under FSDP one sharded folder (gentron.sharded);
    `saved_step` is the step of the newest one on disk (None: none yet)."""

    def __init__(self, run_dir: Path, recorded: CellConfig, fingerprints: list[str], info: D.DistInfo,
                 saved_step: int | None, shards: bool, noise: StepNoise):
        self.cfg, self.fingerprints, self.info, self.saved_step = recorded, fingerprints, info, saved_step
        self.shards, self.noise = shards, noise
        self.folder = checkpoint_dir(run_dir)
        self.last = self.folder / LAST

    @property
    def newest(self) -> Path:
        """The newest checkpoint this run wrote (or resumed from)."""
        if self.shards and self.saved_step is not None:
            path = sharded.sharded_path(self.folder, self.saved_step)
            if path.exists() or not self.last.exists():
                return path
        return self.last

    def save(self, step: int, model, ema: dict, optimizer, data: TrainingData, generator: torch.Generator,
             watch: FiniteWatch) -> None:
        self.check(watch)
        problem = poisoned_weight(D.unwrap(model), ema, self.info)
        if problem:
            raise self.diverged(step, problem)
        rng = capture_rng(generator)
        streams = self.noise.state()
        if streams is not None:
            rng["noise"] = streams
        meta = dict(step=step, data=data.state_dict(), rng=rng, config=to_dict(self.cfg),
                    model_config=D.unwrap(model).config.to_dict(), text_encoders=self.fingerprints)
        if self.shards:
            sharded.save(self.folder, step, model, ema, optimizer, meta, self.info, self.cfg.train.keep_last)
        else:
            payload = dict(model=D.full_model_state(model), ema={k: _full(v) for k, v in ema.items()},
                           optimizer=D.full_optimizer_state(model, optimizer), **meta)
            if self.info.is_main:
                save_rotating(self.folder, payload, self.cfg.train.keep_last, self.saved_step)
            D.barrier(self.info)
        self.saved_step = step

    def check(self, watch: FiniteWatch) -> None:
        """Raise TrainingDiverged if a step so far had a non-finite loss or gradient norm (waits for the device)."""
        bad = watch.first_bad()
        if bad is not None:
            raise self.diverged(*bad)

    def finish(self, step: int) -> Path:
        """The checkpoint a finished run hands on: under FSDP, last.pt consolidated from the shards
        (rank 0, once the ranks are done), for generation and export."""
        if self.shards and self.info.is_main and not (self.last.exists() and checkpoint_step(self.last) == step):
            consolidate(self.newest)
        return self.last

    def diverged(self, step: int, problem: str) -> TrainingDiverged:
        t = self.cfg.train
        kept = f"the last good checkpoint {self.newest} (step {self.saved_step}) is untouched" \
            if self.saved_step is not None and self.newest.exists() else "no checkpoint was written yet"
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
    # bad samples and bad shards the loader workers skipped so far, summed over ranks (every rank calls it)
    row.update({k: v for k, v in summed_skipped(data, info).items() if v})
    for k in ("loss", "mse", "vb"):
        v = losses.get(k)
        row[k] = None if v is None else float(D.all_reduce_mean(v.detach().float(), info))
    return row


def train(cfg: CellConfig | dict | str | Path, run_dir: str | Path, judge=None,
          evaluation: SampleEvaluation | None = None) -> TrainResult:
    """Train (or resume) the cell in `run_dir` up to train.steps, or until a stop signal (SIGINT,
    SIGTERM, USR2) stops it after a step; either way the last step is checkpointed.

    With train.eval_every, the checkpoints of its multiples are evaluated (gentron.validation): `judge`
    (the harness's CompShapes judge) scores held-out prompts; `evaluation` (the harness's prompt set
    and evaluators, from train.eval_prompt_set and train.eval_metrics) is sampled by every rank and
    scored by the main one.

    A run folder resumes only with the config it was trained with (gentron.checkpoint.resume_state); a
    corrupt checkpoint is refused, and temporaries of killed saves are removed first."""
    cfg = load_config(cfg)
    run_dir = Path(run_dir)
    info = D.init_distributed()
    device = info.device()
    t = cfg.train
    shards = info.enabled and t.strategy == "fsdp"  # sharded checkpoints, each rank its own
    if info.is_main:  # this run's own files: nobody else writes them
        remove_stale_temporaries(checkpoint_dir(run_dir))
        remove_stale_temporaries(run_dir, [LOG_FILE, CONFIG_FILE, VALIDATION_FILE])
    state = resume_state(cfg, run_dir, info if shards else None)
    # What the run records: the permission to resume with another config is not part of it.
    recorded = dataclasses.replace(cfg, train=dataclasses.replace(t, resume="auto"))
    # config.yaml has one writer: the grid's stages, or a standalone run into a folder without one (or
    # continuing a changed config under train.resume=force).
    if info.is_main and (not (run_dir / CONFIG_FILE).exists() or t.resume == "force"):
        save_config(recorded, run_dir / CONFIG_FILE)

    device_settings(device)
    # Feature shards hold every encoder's output: no encoder or VAE on the training device then.
    encoders = build_text_encoders(cfg.text_encoders, device) if needs_encoders(cfg) else None
    vae = build_vae(cfg.vae).to(device) if needs_vae(cfg) else None
    dtype = torch.float32  # the model's parameters, and so its compute dtype (autocast lowers it on GPU)
    data = build_training_data(cfg, info, device, dtype, vae, encoders, default_cache_dir(cfg, run_dir),
                               state and state["data"])
    fingerprints = data.encoder_names
    del encoders, vae  # the data keeps what it runs per batch
    generator = torch.Generator().manual_seed(t.seed)
    diffusion = Diffusion.from_config(cfg.model).to(device)
    noise = StepNoise(diffusion, t.batch_size, t.seed, t.grad_accum, info, device)
    model, ema, optimizer = _build_model(cfg, data, info, device, state, generator, noise)
    step = state["step"] if state is not None else 0
    checkpoints = _CheckpointWriter(run_dir, recorded, fingerprints, info, step if state is not None else None,
                                    shards, noise)
    del state
    metrics = MetricsLog(run_dir / LOG_FILE, step, info.is_main, run_dir / "tensorboard" if t.tensorboard else None,
                         {"project": t.wandb_project, "config": to_dict(cfg)} if t.wandb else None)
    # train.eval_every: the EMA weights evaluated at checkpoints of its multiples (gentron.validation)
    sampled = evaluation if t.eval_every else None
    validator = (Validator(cfg, run_dir, device, step, judge, sampled, info)
                 if t.eval_every and (info.is_main or sampled is not None) else None)

    def validate(at: int) -> None:
        if t.eval_every and at % t.eval_every == 0:
            full = {k: _full(v) for k, v in ema.items()} if shards or validator is not None else None  # FSDP: collective
            if validator is not None and (row := validator.run(at, D.unwrap(model).config, full)) is not None:
                metrics.write_validation(row)
            D.barrier(info)

    watch, autocast = FiniteWatch(device, info), autocast_for(t.precision, device)
    bar = progress(total=t.steps, initial=step, desc=f"train {run_dir.name}", unit="step", disable=not info.is_main)
    window_start, window_steps = time.time(), 0
    model.train()
    with StopRequest(info) as stop, bar, closing(metrics), closing(data):
        while step < t.steps and not stop.should_stop():
            lr = lr_at(step, t.lr, t.steps, t.warmup_steps, t.lr_schedule)
            losses, grad_norm, _ = training_step(model, optimizer, ema, diffusion, data, generator, noise, device,
                                                 autocast, watch, step=step + 1, lr=lr, grad_accum=t.grad_accum,
                                                 grad_clip=t.grad_clip, ema_decay=t.ema_decay)
            step += 1
            window_steps += 1
            bar.update(1)

            if step % t.log_every == 0 or step == t.steps:
                checkpoints.check(watch)
                row = _log_row(step, lr, grad_norm, losses, data, window_steps, time.time() - window_start,
                               t.batch_size, info)
                metrics.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{row['steps_per_s']:.2f}")
                window_start, window_steps = time.time(), 0
            if step % t.ckpt_every == 0 and step < t.steps:
                checkpoints.save(step, model, ema, optimizer, data, generator, watch)
                validate(step)
        if step != checkpoints.saved_step or not checkpoints.newest.exists():  # a finished run rerun: untouched
            checkpoints.save(step, model, ema, optimizer, data, generator, watch)
            if step == t.steps:  # a run a signal stops leaves promptly, without evaluating
                validate(step)
    stopped = step < t.steps  # a stop signal ended the loop (on this rank or another)
    if stopped:
        log.warning("stopped at step %d of %d; run again to resume", step, t.steps)
    D.shutdown(info)
    return TrainResult(checkpoints.newest if stopped else checkpoints.finish(step), step, t.steps, stopped)


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
