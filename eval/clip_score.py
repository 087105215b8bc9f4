"""CLIP score as torchmetrics' CLIPScore defines it: 100 * cos(image, prompt) per image and
max(100 * mean cos, 0) for the set (the clamp acts on the mean, not per image), plus the raw cosine (the
scale of GenTron's Table 4, e.g. 0.326, and T2I-CompBench's non-spatial score).

The model is either an open_clip model with named weights (`--model ViT-B-32 --pretrained openai`, or a
local checkpoint file as `--pretrained`) or a transformers CLIP (`--model` = a saved folder or a cached hub
name such as openai/clip-vit-large-patch14). An open_clip name without weights is refused: it would build
a randomly initialised CLIP (`allow_random=True` exists for tests only). `--crosscheck` recomputes the
mean with torchmetrics' CLIPScore on the same transformers model, passed to it as a callable.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from eval import weights
from eval.arguments import device_name, non_empty
from eval.common import batched, generation_protocol, image_row, load_image, load_samples, merged_per_image, merged_protocol, read_partials, refuse_damaged_images, resolve_device, result, run_cli, shard_partial
from gentron.errors import exits_on_user_error, positive_int
from gentron.partition import shard_range
from gentron.progress import progress

log = logging.getLogger(__name__)

PAPER_MODELS = {("ViT-B-32", "openai"), ("ViT-L-14", "openai"), ("openai/clip-vit-base-patch32", None),
                ("openai/clip-vit-large-patch14", None)}


class ClipEmbedder:
    """Unit-norm image and text embeddings from open_clip or transformers CLIP."""

    def __init__(self, model: str, pretrained: str | None = None, device: str = "cpu", allow_random: bool = False):
        self.model_name, self.pretrained, self.device = model, pretrained, device
        log.info("loading CLIP %s (pretrained=%s)", model, pretrained)
        if pretrained is not None or _is_open_clip_name(model):
            if pretrained is None and not allow_random:
                raise ValueError(f"CLIP '{model}' names no weights and would be randomly initialised: pass "
                                 f"--pretrained openai (or a checkpoint file), or a transformers model such as "
                                 f"{weights.CLIP_B32}")
            self._load_open_clip(model, pretrained)
        else:
            self._load_transformers(model)
        self.model.eval().to(device)

    def _load_open_clip(self, model: str, pretrained: str | None) -> None:
        import open_clip

        checkpoint = weights.open_clip_checkpoint(model, pretrained)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model, pretrained=checkpoint)
        self.tokenizer = open_clip.get_tokenizer(model)
        self.backend, self.preprocessing = "open_clip", repr(self.preprocess)

    def _load_transformers(self, model: str) -> None:
        from transformers import CLIPModel, CLIPProcessor

        path = weights.hf_model_path(model, "CLIP model")
        self.model, self.processor = CLIPModel.from_pretrained(path), CLIPProcessor.from_pretrained(path)
        self.backend, self.preprocessing = "transformers", repr(self.processor.image_processor.to_dict())

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        if self.backend == "open_clip":
            pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
            feats = self.model.encode_image(pixels)
        else:
            pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
            feats = _tensor(self.model.get_image_features(pixel_values=pixels))
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts) -> torch.Tensor:
        if self.backend == "open_clip":
            feats = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        else:
            max_length = self.model.config.text_config.max_position_embeddings
            tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True,
                                    max_length=max_length).to(self.device)
            feats = _tensor(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                         attention_mask=tokens["attention_mask"]))
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    def cosines(self, images, texts) -> list[float]:
        """Cosine similarity of each image with its own text."""
        return (self.embed_images(images) * self.embed_texts(texts)).sum(-1).tolist()

    def protocol(self) -> dict:
        return {"backend": self.backend, "model": self.model_name, "pretrained": self.pretrained,
                "preprocessing": self.preprocessing, "text_truncation": "tokenizer truncation to the context length"}

    @property
    def comparable_to_paper(self) -> bool:
        return (self.model_name, self.pretrained) in PAPER_MODELS


def _is_open_clip_name(model: str) -> bool:
    import open_clip

    return model in open_clip.list_models() and not Path(model).exists()


def _tensor(output) -> torch.Tensor:
    """transformers 5 returns a ModelOutput (projected `pooler_output`) where 4.x returned a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def score_samples(embedder: ClipEmbedder, samples_dir, samples, batch_size: int, desc: str,
                  text_of=lambda sample: sample.prompt) -> list[float]:
    """Raw cosine per sample between its image and `text_of(sample)`."""
    out = []
    for batch in progress(list(batched(samples, batch_size)), desc=desc, unit="batch"):
        out += embedder.cosines([load_image(samples_dir, s) for s in batch], [text_of(s) for s in batch])
    return out


def torchmetrics_clip_score(images, texts, hf_model: str) -> float:
    """torchmetrics' CLIPScore (max(100 * mean cos, 0)) with a local transformers model as a callable."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from torchvision.transforms.functional import pil_to_tensor
    from transformers import CLIPModel, CLIPProcessor

    path = weights.hf_model_path(hf_model, "CLIP model")

    class TensorFeatures(CLIPModel):  # torchmetrics expects tensors from get_*_features
        def get_image_features(self, *args, **kwargs):
            return _tensor(super().get_image_features(*args, **kwargs))

        def get_text_features(self, *args, **kwargs):
            return _tensor(super().get_text_features(*args, **kwargs))

    metric = CLIPScore(model_name_or_path=lambda: (TensorFeatures.from_pretrained(path).eval(),
                                                   CLIPProcessor.from_pretrained(path)))
    metric.update([pil_to_tensor(im) for im in images], list(texts))
    return float(metric.compute())


def clamp_like_torchmetrics(stats: dict) -> dict:
    """torchmetrics' CLIPScore returns max(mean, 0): the clamp applies to the mean (and here its CI)."""
    return {**stats, **{k: max(stats[k], 0.0) for k in ("mean", "ci_low", "ci_high") if stats.get(k) is not None}}


DEFINITION = ("clip_score = max(100 * mean cos, 0) over the set, 100 * cos per image (torchmetrics); cosine = "
              "raw cos (GenTron Table 4)")


def evaluate(samples_dir, model: str = weights.CLIP_B32, pretrained: str | None = None, batch_size: int = 32,
             device: str | None = None, crosscheck: bool = False, allow_random: bool = False, shard=None,
             out=None) -> dict:
    """CLIP score of every image against its prompt. With `shard=(k, K)`: shard k of K only (whole
    batches), returned and written to `out` as a partial result that `merge` combines."""
    samples = load_samples(samples_dir)  # a bad folder is named before the model loads
    if not any(s.prompt for s in samples):
        raise ValueError(f"{samples_dir}: no prompts (no samples.jsonl and no {{prompt}}_{{index:06}}.png names)")
    if unprompted := [s.file for s in samples if not s.prompt]:  # they would be scored against the empty text
        raise ValueError(f"{samples_dir}: {len(unprompted)} of {len(samples)} images have no prompt (e.g. "
                         f"{unprompted[0]}); name them {{prompt}}_{{index:06}}.png or list their prompts in samples.jsonl")
    if shard is not None:
        if crosscheck:
            raise ValueError("the torchmetrics cross-check (--crosscheck) scores the whole set at once: run it "
                             "without --shard")
        span = shard_range(len(samples), batch_size, shard)
        options = {"model": model, "pretrained": pretrained, "batch_size": batch_size, "allow_random": allow_random}
        return shard_partial("clip_score", samples_dir, shard, out, options, lambda: _scored(
            samples_dir, samples[span.start:span.stop], model, pretrained, batch_size, device, allow_random))
    scored = _scored(samples_dir, samples, model, pretrained, batch_size, device, allow_random, crosscheck)
    extra = {}
    if crosscheck:
        cosines = [row["scores"]["cosine"] for row in scored["per_image"]]
        extra["crosscheck"] = {"torchmetrics_clip_score": torchmetrics_clip_score(
            [load_image(samples_dir, s) for s in samples], [s.prompt for s in samples], model),
            "ours_max0_of_mean": max(100 * sum(cosines) / len(cosines), 0.0)}
    return _result(scored["per_image"], scored["protocol"], scored["comparable_to_paper"], extra)


def merge(partials) -> dict:
    """The result of a folder from the partial results of its K shards: the same as one unsharded run."""
    parts = read_partials(partials, "clip_score")
    return _result(merged_per_image(parts), merged_protocol(parts), parts[0]["comparable_to_paper"])


def _scored(samples_dir, samples, model, pretrained, batch_size, device, allow_random, crosscheck=False) -> dict:
    """{"per_image", "protocol", "comparable_to_paper"} of `samples` (in batches of batch_size, in order)."""
    refuse_damaged_images([Path(samples_dir) / s.file for s in samples], "sample", fix="regenerate them")
    embedder = ClipEmbedder(model, pretrained, resolve_device(device), allow_random)
    if crosscheck and embedder.backend != "transformers":
        raise ValueError("the torchmetrics cross-check needs a transformers CLIP (--model PATH, no --pretrained)")
    cosines = score_samples(embedder, samples_dir, samples, batch_size, "clip score")
    return {"per_image": [image_row(s, {"clip_score": 100 * c, "cosine": c}) for s, c in zip(samples, cosines)],
            "protocol": {**embedder.protocol(), "definition": DEFINITION, **generation_protocol(samples_dir)},
            "comparable_to_paper": embedder.comparable_to_paper}


def _result(per_image: list[dict], protocol: dict, comparable: bool, extra: dict | None = None) -> dict:
    out = result("clip_score", per_image, protocol, comparable, extra)
    for aggregate in (out["aggregate"], *out["aggregate_by_seed"].values()):
        aggregate["clip_score"] = clamp_like_torchmetrics(aggregate["clip_score"])
    return out


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=weights.CLIP_B32,
                        type=non_empty(f"a transformers CLIP folder or cached hub name (default {weights.CLIP_B32}), "
                                       f"or an open_clip model name with --pretrained"),
                        help="open_clip model name (with --pretrained) or transformers CLIP folder / cached hub name")
    parser.add_argument("--pretrained", default=None,
                        type=non_empty("an open_clip pretrained tag such as openai or a checkpoint file, or leave it out"),
                        help="open_clip pretrained tag (e.g. openai) or checkpoint file")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--crosscheck", action="store_true", help="also compute torchmetrics' CLIPScore")


@exits_on_user_error("python -m eval.clip_score")
def main(argv: list[str] | None = None) -> None:
    run_cli("clip_score", evaluate, _add_arguments, argv, merge)


if __name__ == "__main__":
    main()
