"""Evaluation during training (`train.eval_every=K`, 0 = off): `run_dir/validation.jsonl`.

When the trainer writes a checkpoint at a step that is a multiple of K, the EMA weights are evaluated
on the main rank:

- a validation loss on a fixed batch (`train.eval_batch` items), binned by timestep into
  `train.eval_bins` equal ranges of t: the batch, its timesteps (stratified, eval_batch / eval_bins
  per bin) and its noise are drawn once from fixed seeds, so every evaluation sees the same noise
  and the curve moves only with the weights. CompShapes cells draw the batch from the generator with
  another data seed (`data.seed + HELD_OUT_SEED_OFFSET`): images the run never trains on. Other data
  kinds use the first eval_batch items of the training data set, which training also sees: there
  the curve measures fit, not generalisation (rows say `held_out: false`).
- on CompShapes, the exact CompShapes judge on `train.eval_prompts` held-out prompts per
  category (compshapes.test_prompts, the first ones of the fixed order), sampled with the cell's
  sampler and guidance in `train.eval_sample_steps` steps, from each prompt's seed (sample.seeds[0]).
  `train.eval_prompts=0` turns it off; other data kinds get the validation loss only. The judge is an
  evaluator of the harness (eval.judge: `score_image`, `score_clip`), which the library does not
  import: the caller passes it (`train(..., judge=eval.judge)`, as the grid's stages do); without it a
  run logs the validation loss only.

- with a `SampleEvaluation` (the harness builds it from `train.eval_prompt_set` and
  `train.eval_metrics`, e.g. 1,000 COCO captions scored by FID and CLIP score on the paper profile):
  every rank samples its share of the set (gentron.generate's shard k of K, whole batches of
  sample.batch_size) with the EMA weights in eval_sample_steps steps into
  `run_dir/validation/step-<step>/<prompt set>/`, a sample folder like the sample stage's; after a
  barrier the main rank scores the folder with the harness's evaluators (`metrics` in the row,
  "<metric>/<score>": mean). The folder is kept, so the numbers can be checked.

A row: {"kind": "validation", "step", "loss", "loss_bins": [...], "mse_bins": [...] (with
learn_sigma: the vb term is in loss, not mse), "t_bins": [[lo, hi), ...], "held_out", "seconds",
"judge": {category: mean binary score}, "judge_mean", "metrics": {"<metric>/<score>": mean},
"metric_images"}. These are progress numbers on a small fixed
sample, never the cell's final metrics (those are the evaluators' JSON files). A resumed run drops
the rows past its step first, and a line torn by a kill mid-write, like train_log.jsonl.

Validation draws from its own generators and under torch.random.fork_rng, so it does not move any
random stream of training: a run with evaluation trains the same weights as one without.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gentron.config import CellConfig
from gentron.diffusion import Diffusion
from gentron.errors import ConfigError
from gentron.io import atomic_write_text

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.jsonl"
HELD_OUT_SEED_OFFSET = 1_000_003  # CompShapes validation images: data.seed + this (never a training seed)
NOISE_SEED = 20_231_206  # the fixed timesteps and noise of the validation batch


@dataclass
class SampleEvaluation:
    """A prompt set sampled and scored at every evaluation: `records` (prompt, seed, index, category,
    prompt_id: gentron.generate's prompt records), each sample's start noise from `noise`
    (gentron.generate.noise_seed), and `score(folder) -> {"<metric>/<score>": value}`, the evaluators
    of the harness, which the library does not import (as `judge`)."""
    name: str
    records: list[dict]
    score: Callable[[Path], dict[str, float]]
    noise: str = "seed"


def scalars(row: dict) -> dict[str, float]:
    """A validation row as named scalars, the tags every logger uses (train.tensorboard, train.wandb,
    reports.export): validation/loss, validation/loss_t<lo>-<hi> per timestep bin,
    validation/judge/<category>, validation/judge_mean, validation/<metric>/<score>."""
    out = {"validation/loss": row.get("loss")}
    for (lo, hi), value in zip(row.get("t_bins") or [], row.get("loss_bins") or []):
        out[f"validation/loss_t{int(lo):04d}-{int(hi):04d}"] = value
    for category, value in (row.get("judge") or {}).items():
        out[f"validation/judge/{category}"] = value
    out["validation/judge_mean"] = row.get("judge_mean")
    for name, value in (row.get("metrics") or {}).items():
        out[f"validation/{name}"] = value
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def read_rows(path: Path, keep_through: int | None = None) -> list[dict]:
    """The rows of a JSONL log with a "step" each, torn or foreign lines dropped (with a warning); with
    `keep_through`, only rows at steps <= it."""
    rows = []
    if not path.exists():
        return rows
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s line %d is torn or not a log row (%r); dropped it", path, number, line[:60])
            continue
        if keep_through is None or step <= keep_through:
            rows.append(row)
    return rows


def validation_items(cfg: CellConfig, n: int) -> tuple[list[dict], bool]:
    """The validation batch's items ({"image" or "video", "caption"}) and whether they are held out."""
    from gentron.data.sources import open_dataset

    video = cfg.data.video
    if cfg.data.kind == "compshapes":
        from gentron.config import to_dict
        from gentron.data import compshapes

        data = {**to_dict(cfg)["data"], "video": video, "num_train": n,
                "seed": cfg.data.seed + HELD_OUT_SEED_OFFSET}
        dataset = compshapes.from_config(data)
        return [dataset[i] for i in range(n)], True
    items = []
    for item in open_dataset(cfg, video):
        items.append(item)
        if len(items) == n:
            break
    if not items:
        raise ValueError("train.eval_every: the training data yielded no items for the validation batch")
    return items, False


def judge_prompts(cfg: CellConfig) -> list[dict]:
    """The judged prompt records: eval_prompts held-out prompts per category of the cell."""
    from gentron.data import compshapes

    if cfg.data.kind != "compshapes" or cfg.train.eval_prompts == 0:
        return []
    if cfg.data.video:
        categories = compshapes.VIDEO_CATEGORIES
    else:
        categories = tuple(c for c in (cfg.data.categories or compshapes.IMAGE_CATEGORIES)
                           if c in compshapes.IMAGE_CATEGORIES)
    seed = cfg.sample.seeds[0] if cfg.sample.seeds else 42
    return [{"prompt": p, "seed": seed, "index": 0, "category": c, "prompt_id": i}
            for c in categories for i, p in enumerate(compshapes.test_prompts(c, cfg.train.eval_prompts))]


class Validator:
    """The fixed validation batch and judged prompts of a run, and its validation.jsonl."""

    def __init__(self, cfg: CellConfig, run_dir: Path, device, resume_step: int, judge=None,
                 sampled: SampleEvaluation | None = None, info=None):
        """On the main rank (info None or info.is_main) the loss, the judge and the scoring; with
        `sampled`, every rank builds one to draw its share of the prompt set."""
        from gentron.distributed import DistInfo

        self.judge, self.sampled, self.info = judge, sampled, info or DistInfo()
        # Building the encoders (a tiny one seeds its own init) must not move training's random streams.
        devices = [device] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._setup(cfg, run_dir, device, resume_step)

    def _setup(self, cfg: CellConfig, run_dir: Path, device, resume_step: int) -> None:
        from gentron.data.features import to_model_dtype
        from gentron.text import build_text_encoders
        from gentron.text.cache import PromptCache
        from gentron.vae import build_vae

        t = cfg.train
        self.cfg, self.device, self.path = cfg, torch.device(device), Path(run_dir) / VALIDATION_FILE
        self.every, self.main = t.eval_every, self.info.is_main
        rows = read_rows(self.path, resume_step)
        if self.path.exists() and self.main:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self.diffusion = Diffusion.from_config(cfg.model).to(self.device)
        self.vae = build_vae(cfg.vae).to(self.device)
        encoders = build_text_encoders(cfg.text_encoders, self.device)
        cache = PromptCache(encoders)

        items, self.held_out = validation_items(cfg, t.eval_batch)
        key = "video" if cfg.data.video else "image"
        with torch.no_grad():
            x = torch.stack([item[key] for item in items]).to(self.device)
            self.x0 = (self.vae.encode(x.flatten(0, 1)).unflatten(0, x.shape[:2]) if cfg.data.video
                       else self.vae.encode(x)).float()
        self.text = to_model_dtype(cache.encode([item["caption"] for item in items]), torch.float32, self.device)
        n, bins, T = len(items), t.eval_bins, self.diffusion.num_timesteps
        if n < bins:
            raise ConfigError(f"train.eval_bins={bins}: the data gave only {n} validation items, fewer than the "
                              "timestep bins; lower train.eval_bins")
        self.edges = [round(b * T / bins) for b in range(bins + 1)]
        g = torch.Generator().manual_seed(NOISE_SEED)
        self.bin_of = torch.arange(n) % bins
        lo = torch.tensor(self.edges[:-1])[self.bin_of]
        hi = torch.tensor(self.edges[1:])[self.bin_of]
        self.t = (lo + (torch.rand(n, generator=g) * (hi - lo)).long()).clamp(max=T - 1).to(self.device)
        self.noise = torch.randn(self.x0.shape, generator=g).to(self.device)

        self._setup_sampled(cache)
        self.prompts = judge_prompts(cfg) if self.judge is not None and self.main else []
        if self.prompts:
            texts = cache.encode([r["prompt"] for r in self.prompts])
            nulls = cache.encode([""] * len(self.prompts))
            self.prompt_text = to_model_dtype(texts, torch.float32, self.device)
            self.null_text = to_model_dtype(nulls, torch.float32, self.device)
        del encoders, cache
        self.model = None
        log.info("validation every %d steps: %d items (%s), %d timestep bins, %d judged prompts", self.every, n,
                 "held out" if self.held_out else "from the training data", bins, len(self.prompts))

    def _setup_sampled(self, cache) -> None:
        """This rank's share of the sampled prompt set (whole batches, as gentron.generate shards a
        folder), its prompts encoded once."""
        from gentron.data.features import to_model_dtype
        from gentron.generate import sample_rows
        from gentron.partition import shard_range

        self.rows, self.batch_text = [], {}
        if self.sampled is None:
            return
        self.rows = sample_rows(self.sampled.records, self.cfg.data.video)
        size = self.cfg.sample.batch_size
        span = shard_range(len(self.rows), size, (self.info.rank, self.info.world_size))
        mine = self.rows[span.start:span.stop]
        # A shard is whole batches, so each batch is the one gentron.generate would draw, and is encoded
        # as it would be (prompts padded together): the samples do not depend on the number of ranks.
        cpu = torch.device("cpu")
        for i in range(0, len(mine), size):
            batch = [r["prompt"] for r in mine[i:i + size]]
            self.batch_text[mine[i]["file"]] = (to_model_dtype(cache.encode(batch), torch.float32, cpu),
                                                to_model_dtype(cache.encode([""] * len(batch)), torch.float32, cpu))
        log.info("validation samples: %d of prompt set %s on this rank (%d in all), scored by the main rank",
                 len(mine), self.sampled.name, len(self.rows))

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def _ema_model(self, config, ema: dict[str, torch.Tensor]):
        from gentron.model import GenTron

        if self.model is None:
            self.model = GenTron(config).to(self.device).eval()
        self.model.load_state_dict({k: v.to(self.device) for k, v in ema.items()})
        return self.model

    @torch.no_grad()
    def evaluate(self, config, ema: dict[str, torch.Tensor]) -> dict:
        """The numbers of the EMA weights `ema` (full CPU or device tensors) of a model with `config`
        (a GenTronConfig): the same for the same weights, every time."""
        from gentron.train_step import autocast_for

        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            model = self._ema_model(config, ema)
            autocast = autocast_for(self.cfg.train.precision, self.device)
            losses, mses, counts = [], [], []
            for b in range(len(self.edges) - 1):
                idx = (self.bin_of == b).nonzero().flatten()
                with autocast:
                    out = self.diffusion.training_loss(model, self.x0[idx.to(self.device)],
                                                       [e[idx.to(self.device)] for e in self.text],
                                                       t=self.t[idx.to(self.device)],
                                                       noise=self.noise[idx.to(self.device)])
                losses.append(float(out["loss"]))
                mses.append(float(out["mse"]))
                counts.append(len(idx))
            row = {"loss": sum(l * c for l, c in zip(losses, counts)) / sum(counts),
                   "loss_bins": losses, "mse_bins": mses,
                   "t_bins": [[lo, hi] for lo, hi in zip(self.edges[:-1], self.edges[1:])],
                   "held_out": self.held_out}
            if self.prompts:
                row.update(self._judge(model, autocast))
        return row

    def _judge(self, model, autocast) -> dict:
        from gentron.generate import noise_seed, to_pil

        s, video = self.cfg.sample, self.cfg.data.video
        clip = s.clip_x0 if s.clip_x0 is not None else self.cfg.vae.kind == "identity"
        side = self.cfg.data.resolution // self.vae.downsample
        frame = (self.vae.channels, side, side)
        shape = (len(self.prompts), self.cfg.data.num_frames, *frame) if video else (len(self.prompts), *frame)
        generators = [torch.Generator().manual_seed(noise_seed(r)) for r in self.prompts]
        with autocast:
            latents = self.diffusion.sample(model, self.prompt_text, self.null_text, shape, sampler=s.sampler,
                                            steps=self.cfg.train.eval_sample_steps, cfg_scale=s.cfg_scale,
                                            mfg_scale=s.mfg_scale if video else None, generator=generators,
                                            clip_x0=clip)
        images = self.vae.decode(latents.flatten(0, 1) if video else latents).float().cpu()
        if video:
            images = images.unflatten(0, shape[:2])
        per_category: dict[str, list[float]] = {}
        for record, x in zip(self.prompts, images):
            if video:
                scores = self.judge.score_clip(record["prompt"], [to_pil(f) for f in x])["scores"]
            else:
                scores = self.judge.score_image(record["prompt"], to_pil(x))["scores"]
            per_category.setdefault(record["category"], []).append(scores[record["category"]])
        judge = {c: sum(v) / len(v) for c, v in per_category.items()}
        return {"judge": judge, "judge_mean": sum(judge.values()) / len(judge),
                "judge_prompts": len(self.prompts), "judge_sample_steps": self.cfg.train.eval_sample_steps}

    def sample_folder(self, step: int) -> Path:
        return self.path.parent / "validation" / f"step-{step:08d}" / self.sampled.name

    def _draw_share(self, step: int, model) -> Path:
        """This rank's share of the sampled prompt set into the step's sample folder (gentron.generate's
        writer: resumable, the manifest written by whichever shard finishes last)."""
        from gentron.generate import noise_seed, write_samples
        from gentron.train_step import autocast_for

        s, video, sampled = self.cfg.sample, self.cfg.data.video, self.sampled
        clip = s.clip_x0 if s.clip_x0 is not None else self.cfg.vae.kind == "identity"
        side = self.cfg.data.resolution // self.vae.downsample
        frame = (self.vae.channels, side, side)
        autocast = autocast_for(self.cfg.train.precision, self.device)

        def start():
            protocol = {"sampler": s.sampler, "steps": self.cfg.train.eval_sample_steps, "cfg_scale": s.cfg_scale,
                        "mfg_scale": s.mfg_scale if video else None, "clip_x0": clip, "batch_size": s.batch_size,
                        "noise": sampled.noise, "checkpoint_step": step, "ema": True}

            def draw(batch: list[dict]) -> torch.Tensor:
                text, null = self.batch_text[batch[0]["file"]]
                text, null = [e.to(self.device) for e in text], [e.to(self.device) for e in null]
                shape = (len(batch), self.cfg.data.num_frames, *frame) if video else (len(batch), *frame)
                generators = [torch.Generator().manual_seed(noise_seed(r, sampled.noise)) for r in batch]
                with autocast:
                    latents = self.diffusion.sample(model, text, null, shape, sampler=s.sampler,
                                                    steps=self.cfg.train.eval_sample_steps, cfg_scale=s.cfg_scale,
                                                    mfg_scale=s.mfg_scale if video else None,
                                                    generator=generators, clip_x0=clip)
                images = self.vae.decode(latents.flatten(0, 1) if video else latents).float().cpu()
                return images.unflatten(0, shape[:2]) if video else images

            return protocol, draw

        folder = self.sample_folder(step)
        return write_samples(folder, self.rows, s.batch_size, (self.info.rank, self.info.world_size), start)

    def run(self, step: int, config, ema: dict[str, torch.Tensor]) -> dict | None:
        """Evaluate and append the row of `step` to validation.jsonl; returns it (None on the other
        ranks, which only draw their share of the sampled prompt set)."""
        from gentron import distributed as D

        started = time.perf_counter()
        if self.sampled is not None:
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                self._draw_share(step, self._ema_model(config, ema))
            D.barrier(self.info)  # every share drawn: the folder is whole
        if not self.main:
            return None
        row = {"kind": "validation", "step": step, **self.evaluate(config, ema)}
        if self.sampled is not None:
            folder = self.sample_folder(step)
            row["metrics"] = {k: float(v) for k, v in self.sampled.score(folder).items()}
            row["metric_images"] = len(self.rows)
        row["seconds"] = time.perf_counter() - started
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        log.info("validation at step %d: loss %.4f%s%s", step, row["loss"],
                 f", judge {row['judge_mean']:.3f}" if "judge_mean" in row else "",
                 "".join(f", {k} {v:.4g}" for k, v in (row.get("metrics") or {}).items()))
        return row
