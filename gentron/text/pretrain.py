"""Tiny text encoders trained the way the real ones were, in miniature, on CompShapes.

- `clip_contrastive`: an open_clip CLIP (vision and text towers from a small custom config; the text
  tower causal and pooled at EOT, as CLIP's) trained with open_clip's ClipLoss on CompShapes
  image-caption pairs: a multimodal encoder, as CLIP-L is.
- `t5_span`: a transformers T5ForConditionalGeneration from a small T5Config over bytes (the ByT5
  tokenizer, no download) trained by span corruption on CompShapes captions only: a pure language
  model, as T5-XXL is.

A recipe (`EncoderRecipe`, plain data) names everything that moves the weights. `ensure_trained(recipe,
store)` trains it once into `store/<objective>-<hash of the recipe>/` and returns that folder; every
cell and grid that names the same recipe reuses it. Training writes into `<folder>.partial/` with a
checkpoint every `ckpt_every` steps (resumed after an interruption, bit-identically: data order and
every random draw come from the recipe's seed and the step) and renames the finished folder into
place in one step, so a folder that exists is complete. The finished folder holds what a user's real
weights hold, and is loaded through `build_text_encoder` the same way:

    {kind: clip, model: "local-dir:<folder>", pretrained: null}   # open_clip_config.json + weights
    {kind: t5, path: <folder>}                                     # a transformers folder + tokenizer

    python -m gentron.text.pretrain clip_contrastive --store encoders   # train (or find) one
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from filelock import FileLock

from gentron import schema
from gentron.errors import ConfigError
from gentron.io import atomic_torch_save, atomic_write_json
from gentron.optim import lr_at
from gentron.progress import progress

log = logging.getLogger(__name__)

# Bump when the same recipe would now train differently (the loop, the data it draws, what is saved):
# every recipe's folder name changes, so stale encoders are retrained instead of reused.
VERSION = 2  # 2: CompShapes' counting captions
OBJECTIVES = ("clip_contrastive", "t5_span")
RECIPE_FILE = "recipe.json"


@dataclass(frozen=True)
class EncoderRecipe:
    """Everything that decides a tiny trained encoder's weights. Defaults: the embedded recipe."""
    objective: Literal["clip_contrastive", "t5_span"] = "clip_contrastive"
    seed: int = 0
    width: int = 64  # token width of the text tower (and of the CLIP image tower)
    layers: int = 2  # text tower depth (T5: encoder and decoder each)
    heads: int = 4
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2.0e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    resolution: int = 20  # CompShapes images (clip_contrastive)
    num_pairs: int = 10000  # CompShapes training images drawn for clip_contrastive
    data_seed: int = 0  # which CompShapes images (clip_contrastive)
    context_length: int = 32  # CLIP text tokens (CompShapes captions need at most 16)
    patch_size: int = 4  # CLIP image tower: 20 px / 4 = 25 patches
    noise_density: float = 0.15  # T5 span corruption: share of bytes masked
    mean_span_length: float = 8.0  # T5 span corruption: mean masked span in bytes (a word and a half)
    max_length: int = 64  # T5 bytes per caption (the longest CompShapes caption is 50)
    ckpt_every: int = 250

    def check(self, where: str) -> None:
        for key in ("width", "layers", "heads", "steps", "batch_size", "ckpt_every", "resolution", "num_pairs",
                    "context_length", "patch_size", "max_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}: {key}={getattr(self, key)} must be at least 1")
        for key in ("seed", "data_seed", "warmup_steps", "lr", "weight_decay", "mean_span_length"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}: {key}={getattr(self, key)} must be >= 0")
        if self.width % self.heads:
            raise ConfigError(f"{where}: width {self.width} must be a multiple of heads {self.heads}")
        if not 0 < self.noise_density < 1:
            raise ConfigError(f"{where}: noise_density={self.noise_density} must lie in (0, 1)")

    def key(self) -> str:
        """A 10-hex hash of the recipe and VERSION: the folder name's suffix."""
        canonical = json.dumps({**dataclasses.asdict(self), "version": VERSION}, sort_keys=True)
        return hashlib.sha1(canonical.encode()).hexdigest()[:10]

    def folder_name(self) -> str:
        return f"{self.objective}-{self.key()}"


def load_recipe(values: dict[str, Any] | EncoderRecipe, where: str = "recipe") -> EncoderRecipe:
    """A validated recipe from a mapping (gentron.schema: unknown keys and bad values raise ConfigError
    naming `where`, e.g. a grid's `encoders.clip`)."""
    return schema.parse(EncoderRecipe, values, where)


def encoder_spec(recipe: EncoderRecipe, store: str | os.PathLike) -> dict:
    """The `text_encoders` entry that loads the trained encoder, as it would load real weights."""
    folder = str(Path(store) / recipe.folder_name())
    if recipe.objective == "clip_contrastive":
        return {"kind": "clip", "model": f"local-dir:{folder}", "pretrained": None}
    return {"kind": "t5", "path": folder}


def ensure_trained(recipe: EncoderRecipe | dict, store: str | os.PathLike, stop_after: int | None = None) -> Path | None:
    """The recipe's finished folder under `store`, training it first if it is not there (resuming a
    partial one). Safe to call from several processes: one trains, the others wait and reuse it.
    `stop_after`: train at most that many steps in this call, checkpoint and return None if the
    recipe is not finished (to spread training over jobs with a time limit; the next call resumes)."""
    recipe = load_recipe(recipe)
    store = Path(store)
    folder = store / recipe.folder_name()
    if folder.is_dir():
        return folder
    store.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if folder.is_dir():
            return folder
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(exist_ok=True)
        started = time.perf_counter()
        trainer = _CLIPTrainer(recipe) if recipe.objective == "clip_contrastive" else _T5Trainer(recipe)
        history = _train_loop(recipe, trainer, partial, stop_after)
        if history is None:
            return None
        for name in os.listdir(partial):
            if name.startswith("checkpoint"):
                os.remove(partial / name)
        trainer.save(partial)
        atomic_write_json(partial / RECIPE_FILE, {**dataclasses.asdict(recipe), "version": VERSION})
        atomic_write_json(partial / "training.json", {"history": history,
                                                      "seconds_this_run": time.perf_counter() - started,
                                                      "threads": torch.get_num_threads()})
        os.replace(partial, folder)
    log.info("trained %s into %s", recipe.objective, folder)
    return folder


# --- the loop -----------------------------------------------------------------------------------

def _train_loop(recipe: EncoderRecipe, trainer, partial: Path, stop_after: int | None = None) -> list[dict] | None:
    torch.manual_seed(recipe.seed)
    model = trainer.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=True)
    step, history = 0, []
    ckpt = partial / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        log.info("%s: resumed at step %d of %d", recipe.objective, step, recipe.steps)
    model.train()
    window, clock = [], time.perf_counter()
    first = step
    bar = progress(total=recipe.steps, initial=step, desc=f"pretrain text encoder {recipe.objective}", unit="step")
    while step < recipe.steps:
        if stop_after is not None and step - first >= stop_after:
            atomic_torch_save(ckpt, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "step": step, "history": history})
            log.info("%s: stopped at step %d of %d (resume by calling again)", recipe.objective, step, recipe.steps)
            bar.close()
            return None
        # Each step's batch and noise come from (seed, step) alone: a resumed run draws what an
        # uninterrupted one would.
        generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe.lr, recipe.steps, recipe.warmup_steps)
        loss = trainer.loss(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        window.append(loss.item())
        if step % 50 == 0 or step == recipe.steps:
            elapsed = time.perf_counter() - clock
            history.append({"step": step, "loss": sum(window) / len(window), "s_per_step": elapsed / len(window)})
            log.info("%s step %d/%d loss %.4f", recipe.objective, step, recipe.steps, history[-1]["loss"])
            window, clock = [], time.perf_counter()
        if step % recipe.ckpt_every == 0 and step < recipe.steps:
            atomic_torch_save(ckpt, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "step": step, "history": history})
    bar.close()
    model.eval()
    return history


# --- CLIP: contrastive on image-caption pairs ----------------------------------------------------

def clip_model_config(recipe: EncoderRecipe) -> dict:
    """open_clip's model_cfg for the recipe (what open_clip_config.json holds)."""
    return {
        "embed_dim": recipe.width,
        "quick_gelu": False,
        "vision_cfg": {"image_size": recipe.resolution, "patch_size": recipe.patch_size, "width": recipe.width,
                       "layers": recipe.layers, "head_width": recipe.width // recipe.heads, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": recipe.context_length, "vocab_size": 49408, "width": recipe.width,
                     "heads": recipe.heads, "layers": recipe.layers, "mlp_ratio": 4.0},
    }


class _CLIPTrainer:
    def __init__(self, recipe: EncoderRecipe):
        import open_clip
        from open_clip.loss import ClipLoss

        from gentron.data.compshapes import TRAIN_IMAGE_CATEGORIES, CompShapes

        self.recipe = recipe
        cfg = clip_model_config(recipe)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            self.model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                                        text_cfg=cfg["text_cfg"], quick_gelu=False)
        self.loss_fn = ClipLoss()
        tokenizer = open_clip.SimpleTokenizer(context_length=recipe.context_length)
        data = CompShapes(split="train", resolution=recipe.resolution, num_samples=recipe.num_pairs,
                          seed=recipe.data_seed, categories=TRAIN_IMAGE_CATEGORIES)
        items = [data[i] for i in range(len(data))]
        self.images = torch.stack([item["image"] for item in items])  # [-1, 1], CompShapes' own scale
        captions = [item["caption"] for item in items]
        unique = sorted(set(captions))
        ids = tokenizer(unique)
        row = {c: i for i, c in enumerate(unique)}
        self.tokens = ids[torch.tensor([row[c] for c in captions])]

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(self.images), (self.recipe.batch_size,), generator=generator)
        image_features = self.model.encode_image(self.images[idx], normalize=True)
        text_features = self.model.encode_text(self.tokens[idx], normalize=True)
        return self.loss_fn(image_features, text_features, self.model.logit_scale.exp())

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        config = {"model_cfg": clip_model_config(self.recipe),
                  "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
        atomic_write_json(folder / "open_clip_config.json", config)
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        tmp = folder / ".open_clip_model.safetensors.tmp"
        save_file(state, str(tmp))
        os.replace(tmp, folder / "open_clip_model.safetensors")


# --- T5: span corruption on captions -------------------------------------------------------------

def random_spans_mask(length: int, noise_density: float, mean_span_length: float,
                      generator: torch.Generator) -> np.ndarray:
    """T5's random_spans_noise_mask: a boolean mask over `length` tokens with round(length *
    noise_density) noise tokens in about length * density / mean_span_length spans, alternating with
    non-noise spans, starting with non-noise (as in the T5 code)."""
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(1, int(round(num_noise / mean_span_length)))
    num_spans = min(num_spans, num_noise, length - num_noise)
    num_nonnoise = length - num_noise

    def segment(total: int, parts: int) -> list[int]:
        # `parts` positive integers summing to `total`, uniformly at random
        cuts = torch.randperm(total - 1, generator=generator)[: parts - 1].sort().values + 1
        bounds = [0, *cuts.tolist(), total]
        return [b - a for a, b in zip(bounds, bounds[1:])]

    noise, nonnoise = segment(num_noise, num_spans), segment(num_nonnoise, num_spans)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for keep, drop in zip(nonnoise, noise):
        pos += keep
        mask[pos:pos + drop] = True
        pos += drop
    return mask


def span_corrupt(ids: list[int], mask: np.ndarray, sentinels: list[int], eos: int) -> tuple[list[int], list[int]]:
    """(input, target): each noise span replaced by one sentinel in the input; the target lists each
    sentinel followed by the span it hides, then EOS."""
    source, target, span = [], [], -1
    for i, token in enumerate(ids):
        if mask[i]:
            if i == 0 or not mask[i - 1]:
                span += 1
                source.append(sentinels[span])
                target.append(sentinels[span])
            target.append(token)
        else:
            source.append(token)
    return source + [eos], target + [eos]


class _T5Trainer:
    def __init__(self, recipe: EncoderRecipe):
        from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

        from gentron.data.compshapes import all_prompts

        self.recipe = recipe
        self.tokenizer = ByT5Tokenizer()
        config = T5Config(vocab_size=len(self.tokenizer), d_model=recipe.width, d_kv=recipe.width // recipe.heads,
                          d_ff=2 * recipe.width, num_layers=recipe.layers, num_decoder_layers=recipe.layers,
                          num_heads=recipe.heads, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                          decoder_start_token_id=self.tokenizer.pad_token_id,
                          pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                          tie_word_embeddings=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            self.model = T5ForConditionalGeneration(config)
        # Text only: every caption the training split can show (held-out colour-shape pairs never
        # appear, as in the diffusion model's training data).
        self.captions = all_prompts("train")
        self.ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"][: recipe.max_length - 1]
                    for c in self.captions]
        self.sentinels = self.tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        r, pad = self.recipe, self.tokenizer.pad_token_id
        rows = torch.randint(len(self.ids), (r.batch_size,), generator=generator).tolist()
        sources, targets = [], []
        for row in rows:
            ids = self.ids[row]
            mask = random_spans_mask(len(ids), r.noise_density, r.mean_span_length, generator)
            source, target = span_corrupt(ids, mask, self.sentinels, self.tokenizer.eos_token_id)
            sources.append(source)
            targets.append(target)
        inputs, attention = _pad(sources, pad)
        labels, _ = _pad(targets, -100)
        return self.model(input_ids=inputs, attention_mask=attention, labels=labels).loss

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def _pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, rows))
    out = torch.full((len(rows), length), value, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return out, mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("objective", choices=OBJECTIVES)
    parser.add_argument("--store", default="encoders", help="folder of trained encoders")
    parser.add_argument("--stop-after", type=int, default=None, help="train at most this many steps now")
    parser.add_argument("overrides", nargs="*", help="recipe keys, e.g. steps=500 seed=1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    values: dict[str, Any] = {"objective": args.objective}
    for item in args.overrides:
        key, _, value = item.partition("=")
        values[key] = json.loads(value) if value.replace(".", "", 1).replace("-", "", 1).isdigit() else value
    folder = ensure_trained(values, args.store, args.stop_after)
    print(folder if folder is not None else "stopped before the end; run again to resume")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
