"""The training data: what the trainer draws each step, however the data is stored.

The data reaches the step through one interface, TrainingData.next_batch (`data.encode`):
- `memory` (small data, the embedded default): the data set is encoded once (VAE latents, or pixels
  for `vae.kind: identity`) into a cache file shared by every cell with the same data and VAE, and
  every training prompt once by the frozen text encoders (PromptCache): a step is a gather;
- `per_batch` (paper scale): loader workers stream samples (gentron.data.stream: split by rank and
  worker, shuffled per epoch through a bounded buffer, resumable) and the VAE and text encoders run
  on each batch on the device;
- `shards` (encode once, train many times): the same streaming over feature shards that
  gentron.data.encode wrote (gentron.data.shards: VAE latents and every encoder's text features);
  no VAE and no text encoder is built (`needs_vae`, `needs_encoders`), a dropped caption takes the
  empty prompt's stored features.
Either way features meet the model's dtype in gentron.data.features.to_model_dtype.

A video cell trains on clips, and on motion-free steps (probability `train.p_motion_free`) on images
as still clips, with the temporal attention masked to identity (GenTron's joint image-video
training). A video folder has no images: the middle frames of its clips stand in for them.

Exact resume: the batch order is a pure function of (seed, epoch, position) in memory, and each
loader worker's position is checkpointed when streaming; the step's random draws come from the
trainer's generator. All ranks draw the same numbers for the *global* batch and keep their slice
(gentron.distributed).
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from gentron import distributed as D
from gentron.config import CellConfig, to_dict
from gentron.specs import EncoderShape
from gentron.data import compshapes
from gentron.data.features import to_model_dtype
from gentron.data.shards import NOT_IN_DATA_KEY, FeatureShards
from gentron.data.sources import as_source, open_datasets
from gentron.data.stream import Readers, ResumableLoader
from gentron.io import atomic_torch_save, remove_stale_temporaries
from gentron.progress import progress
from gentron.text import PromptCache
from gentron.text.base import TextEmbedding

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cached-data layout changes (what CompShapes draws: its VERSION)


def needs_encoders(cfg: CellConfig) -> bool:
    """Whether training this cell runs the text encoders (not when it streams feature shards)."""
    return cfg.data.encode != "shards"


def needs_vae(cfg: CellConfig) -> bool:
    """Whether training this cell runs the VAE (not when it streams feature shards)."""
    return cfg.data.encode != "shards"


def default_cache_dir(cfg: CellConfig, run_dir: Path) -> Path:
    """Shared by the cells of a grid (runs/<grid>/cache), so each data set is encoded once."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir.parent / "cache"


def still_clips(images: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Images (N, C, h, w) as clips (N, T, C, h, w) of `num_frames` identical frames (a view)."""
    return images.unsqueeze(1).expand(-1, num_frames, -1, -1, -1)


def middle_frames(clips: torch.Tensor) -> torch.Tensor:
    """The middle frame of each clip (N, T, C, h, w) -> (N, C, h, w)."""
    return clips[:, clips.shape[1] // 2]


# --- memory: encoded once, then gathered by index -----------------------------------------------

@dataclass
class TrainingSet:
    """Encoded training samples. `images` (N, C, h, w) with `image_prompts` (N,) indices into
    `prompts`; for video also `clips` (M, T, C, h, w) with `clip_prompts` (M,)."""
    prompts: list[str]
    images: torch.Tensor
    image_prompts: torch.Tensor
    clips: torch.Tensor | None = None
    clip_prompts: torch.Tensor | None = None


def load_training_set(cfg: CellConfig, vae, cache_dir: Path, info: D.DistInfo, device) -> TrainingSet:
    """Rank 0 encodes the data once into `cache_dir/data-<hash>.pt`; everyone loads that file."""
    key = json.dumps({"data": {k: v for k, v in to_dict(cfg)["data"].items() if k not in NOT_IN_DATA_KEY},
                      "vae": to_dict(cfg)["vae"], "version": CACHE_VERSION,
                      "compshapes": compshapes.VERSION if cfg.data.kind == "compshapes" else None}, sort_keys=True)
    path = cache_dir / f"data-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    payload = None
    if info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The cells of a grid share this cache and may start together: one encodes, the others wait.
        with FileLock(f"{path}.lock"):
            remove_stale_temporaries(path.parent, [path.name])  # its writers hold this lock
            if path.exists():
                payload = _read_data_cache(path)
            if payload is None:
                _encode_training_set(cfg, vae, key, path, device)
    D.barrier(info)
    if payload is None:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    return TrainingSet(payload["prompts"], payload["images"], payload["image_prompts"],
                       payload.get("clips"), payload.get("clip_prompts"))


def _read_data_cache(path: Path) -> dict | None:
    """The encoded data set in `path`, or None (with a warning) when the file is unreadable, e.g.
    truncated by a full disk or a copy: it is only a cache, so it is encoded again."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(payload, dict) and {"prompts", "images", "image_prompts"} <= payload.keys():
            return payload
        problem = "it lacks the encoded images"
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        problem = " ".join(str(e).split()).split(". ")[0][:160]  # torch goes on about checkpoints
    log.warning("data cache %s is unreadable (%s); encoding the data again into it", path, problem)
    return None


def _encode_training_set(cfg: CellConfig, vae, key: str, path: Path, device) -> None:
    t0 = time.time()
    encoded = {name: _encode_items(dataset, name, vae, device) for name, dataset in open_datasets(cfg).items()}
    prompts: dict[str, int] = {}
    ids = lambda caps: torch.tensor([prompts.setdefault(c, len(prompts)) for c in caps])  # noqa: E731
    payload = {"key": key}
    if "clips" in encoded:
        clips, clip_caps = encoded["clips"]
        payload.update(clips=clips, clip_prompts=ids(clip_caps))
    images, image_caps = encoded["images"] if "images" in encoded else (middle_frames(clips).clone(), clip_caps)
    payload.update(images=images, image_prompts=ids(image_caps), prompts=list(prompts))
    atomic_torch_save(path, payload)
    log.info("encoded training data into %s in %.1fs", path, time.time() - t0)


@torch.no_grad()
def _encode_items(dataset, name: str, vae, device, batch_size: int = 256):
    """Encode every item of `dataset` once through the VAE; returns (latents, captions)."""
    latents, captions, pending = [], [], []

    def flush():
        video = "video" in pending[0]
        x = torch.stack([p["video" if video else "image"] for p in pending]).to(device)
        z = vae.encode(x.flatten(0, 1)).unflatten(0, x.shape[:2]) if video else vae.encode(x)
        latents.append(z.float().cpu())
        captions.extend(p["caption"] for p in pending)
        pending.clear()

    for item in progress(dataset, desc=f"rendering and encoding {name}", unit="item", leave=False):
        pending.append(item)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not latents:
        raise ValueError(f"the training data yielded no {name}; check data.kind and data.path")
    return torch.cat(latents), captions


def epoch_indices(n: int, seed: int, stream: int, epoch: int) -> torch.Tensor:
    """The order of an epoch: a pure function of its numbers, so a position is all a resume needs."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + stream * 10_007 + epoch))


def take(n: int, count: int, position: int, seed: int, stream: int) -> torch.Tensor:
    """`count` indices starting at `position` of the endless sequence of shuffled epochs."""
    out = []
    while count:
        epoch, offset = divmod(position, n)
        chunk = epoch_indices(n, seed, stream, epoch)[offset:offset + count]
        out.append(chunk)
        count -= len(chunk)
        position += len(chunk)
    return torch.cat(out)


class PromptTable:
    """Every training prompt (and the empty one) encoded once; a batch is a gather."""

    def __init__(self, cache: PromptCache, prompts: list[str], device, dtype: torch.dtype = torch.float32):
        self.null_id = len(prompts)
        self.embeddings = to_model_dtype(cache.encode(list(prompts) + [""]), dtype, device)

    def lookup(self, ids: torch.Tensor) -> list[TextEmbedding]:
        out = []
        for emb in self.embeddings:
            sub = emb[ids]
            length = max(int(sub.mask.sum(1).max()), 1)  # drop padding no prompt of the batch uses
            out.append(TextEmbedding(sub.tokens[:, :length], sub.mask[:, :length], sub.pooled))
        return out


# --- what the trainer draws ---------------------------------------------------------------------

class TrainingData:
    """What the trainer draws each step, however the data is stored: `next_batch(generator)` ->
    (x0, text, motion_free) for this rank, on the device, in the model's dtype. It makes the step's
    first random draws from `generator`, in this order: the motion-free coin (video), then caption
    dropout for the whole global batch. `shapes` are the text features' shapes (EncoderShape per encoder),
    `latent` the (channels, downsampling) of what the model sees, as this data holds them, and
    `encoder_names` the text encoders' fingerprints (TextEncoder.name) its features come from."""

    def __init__(self, cfg: CellConfig, info: D.DistInfo, device, dtype: torch.dtype):
        self.cfg, self.info, self.device, self.dtype = cfg, info, device, dtype
        self.local = D.local_slice(cfg.train.batch_size, info)
        self.consumed = {"images": 0, "clips": 0}
        self.shapes: list[EncoderShape] = []
        self.latent: tuple[int, int] | None = None
        self.encoder_names: list[str] = []
        self.wait_s = 0.0  # seconds blocked waiting for batches (the loader), since the last log row
        self.encode_s = 0.0  # seconds in the frozen encoders per batch, since the last log row

    def motion_free_step(self, generator: torch.Generator) -> bool | None:
        """The motion-free coin of a video cell: True for a step of still images, False for a step of
        clips. None for an image cell, which draws nothing."""
        if not self.cfg.data.video:
            return None
        return bool(torch.rand((), generator=generator) < self.cfg.train.p_motion_free)

    def keep_captions(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.cfg.train.batch_size, generator=generator) >= self.cfg.train.caption_dropout

    def motion_free_mask(self, motion_free: bool | None) -> torch.Tensor | None:
        """The model's per-sample `motion_free` input for this rank's slice of the batch."""
        if motion_free is None:
            return None
        return torch.full((self.local.stop - self.local.start,), motion_free, dtype=torch.bool, device=self.device)

    @property
    def skipped(self) -> int:
        """Bad samples this rank skipped so far (skipped_counts()["skipped"])."""
        return self.skipped_counts()["skipped"]

    def skipped_counts(self) -> dict[str, int]:
        """This rank's skipped counts so far: bad samples and bad shards (each encounter: a bad shard
        is met again every epoch). Sum them over ranks with `summed_skipped`."""
        return {"skipped": 0, "skipped_shards": 0}

    def state_dict(self) -> dict:
        return dict(self.consumed)

    def close(self) -> None:
        pass


def _stream_of(motion_free: bool | None) -> str:
    """Where a step's samples come from: clips, or images (image cells and motion-free steps)."""
    return "clips" if motion_free is False else "images"


class InMemoryData(TrainingData):
    """Small data (the embedded default): latents and every caption's text features encoded once
    (load_training_set, PromptTable), a batch is a gather at positions of a shuffled epoch order."""

    def __init__(self, cfg, info, device, dtype, vae, encoders, cache_dir: Path, state: dict | None):
        super().__init__(cfg, info, device, dtype)
        self.vae = vae
        self.data = load_training_set(cfg, vae, cache_dir, info, device)
        self.table = PromptTable(PromptCache(encoders, cache_dir / "prompts"), self.data.prompts, device, dtype)
        self.encoder_names = [e.name for e in encoders]
        self.shapes = [EncoderShape(e.tokens.shape[-1], e.pooled.shape[-1], e.tokens.shape[1])
                       for e in self.table.embeddings]
        self.latent = (vae.channels, vae.downsample)
        if state:
            self.consumed = {"images": state["images"], "clips": state["clips"]}

    def next_batch(self, generator):
        started = time.perf_counter()
        motion_free = self.motion_free_step(generator)
        x0, ids = self._gather(_stream_of(motion_free))
        if motion_free:
            x0 = still_clips(x0, self.cfg.data.num_frames)
        keep = self.keep_captions(generator)
        ids = torch.where(keep, ids, torch.full_like(ids, self.table.null_id))
        text = [e[self.local] for e in self.table.lookup(D.to_device(ids, torch.device(self.device)))]
        self.wait_s += time.perf_counter() - started
        return D.to_device(x0[self.local], torch.device(self.device)), text, self.motion_free_mask(motion_free)

    def _gather(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch of stream `name` at its position: (samples, prompt ids). Advances it."""
        if name == "clips":
            samples, prompts, stream = self.data.clips, self.data.clip_prompts, 1
        else:
            samples, prompts, stream = self.data.images, self.data.image_prompts, 0
        n = self.cfg.train.batch_size
        idx = take(len(samples), n, self.consumed[name], self.cfg.train.seed, stream)
        self.consumed[name] += n
        return samples[idx], prompts[idx]


class StreamingData(TrainingData):
    """Large data: local batches streamed by loader workers (gentron.data.stream). With `per_batch`
    the VAE and the text encoders run on each batch, on the device, under no_grad, in their own dtype;
    with `shards` the batch brings its latents and text features (`vae` and `encoders` may be None).
    Either way the features meet the model's dtype in `to_model_dtype`."""

    def __init__(self, cfg, info, device, dtype, vae, encoders, state: dict | None):
        super().__init__(cfg, info, device, dtype)
        self.features = None
        if cfg.data.encode == "shards":
            self.features = FeatureShards(cfg.data.features_dir, cfg, encoders)
            self.vae, self.encoders = None, []
            self.shapes, self.latent = self.features.shapes, self.features.latent
            self.encoder_names = self.features.names
            self.empty = [(t.to(device), p.to(device)) for t, p in self.features.empty]
        else:
            self.vae, self.encoders = vae, encoders
            self.shapes = [e.shape for e in encoders]
            self.latent = (vae.channels, vae.downsample)
            self.encoder_names = [e.name for e in encoders]
        readers = Readers(info.rank, info.world_size, cfg.data.num_workers)
        state = state or {}
        self.text_dtypes: list[str] = state.get("text_dtypes", [])
        self.consumed = {"images": state.get("images", 0), "clips": state.get("clips", 0)}
        saved = state.get("streams", {})
        per_rank = self.local.stop - self.local.start
        pin = torch.device(device).type == "cuda"
        self.streams = {}
        for name, source in streaming_sources(cfg, self.features).items():
            own = saved.get(name)
            self.streams[name] = ResumableLoader(
                source, per_rank, cfg.train.seed + (1 if name == "clips" else 0), readers,
                cfg.data.shuffle_buffer, own[info.rank] if own else None, pin_memory=pin)

    def skipped_counts(self) -> dict[str, int]:
        return {"skipped": sum(s.skipped for s in self.streams.values()),
                "skipped_shards": sum(s.skipped_units for s in self.streams.values())}

    def next_batch(self, generator):
        motion_free = self.motion_free_step(generator)
        name = _stream_of(motion_free)
        started = time.perf_counter()
        batch = self.streams[name if name in self.streams else "clips"].next()  # a video folder: clips only
        self.wait_s += time.perf_counter() - started
        started = time.perf_counter()
        self.consumed[name] += self.cfg.train.batch_size
        keep = self.keep_captions(generator)[self.local]
        x0 = self._latents(batch)
        if motion_free and x0.ndim == 5:  # clips only: their middle frames stand in for images
            x0 = still_clips(middle_frames(x0), x0.shape[1])
        elif motion_free:
            x0 = still_clips(x0, self.cfg.data.num_frames)
        if "text" in batch:
            text = [self._stored_text(part, empty, keep) for part, empty in zip(batch["text"], self.empty)]
        else:
            captions = [c if k else "" for c, k in zip(batch["caption"], keep.tolist())]
            with torch.no_grad():
                text = [encoder.encode(captions) for encoder in self.encoders]
        self.text_dtypes = [str(e.tokens.dtype).removeprefix("torch.") for e in text]  # as they came, per encoder
        text = to_model_dtype(text, self.dtype, self.device)
        self.encode_s += time.perf_counter() - started
        return x0, text, self.motion_free_mask(motion_free)

    def _stored_text(self, part: dict, empty: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor) -> TextEmbedding:
        """A batch's stored features of one encoder, the dropped captions' rows replaced by the empty
        prompt's, padded to the longest prompt left (as the encoder pads a batch)."""
        tokens, lengths, pooled = (part[k].to(self.device, non_blocking=True) for k in ("tokens", "lengths", "pooled"))
        keep = keep.to(self.device)
        if not bool(keep.all()):
            empty_tokens, empty_pooled = empty
            lengths = torch.where(keep, lengths, len(empty_tokens))
            length = max(int(lengths.max()), 1)
            padded = tokens.new_zeros(len(tokens), length, tokens.shape[-1])
            shared = min(length, tokens.shape[1])
            padded[:, :shared] = tokens[:, :shared] * keep[:, None, None].to(tokens.dtype)
            padded[~keep, :len(empty_tokens)] = empty_tokens.to(tokens.dtype)
            tokens = padded
            pooled = torch.where(keep[:, None], pooled, empty_pooled.to(pooled.dtype))
        mask = torch.arange(tokens.shape[1], device=self.device)[None] < lengths[:, None]
        return TextEmbedding(tokens, mask, pooled)

    @torch.no_grad()
    def _latents(self, batch: dict) -> torch.Tensor:
        if "latent" in batch:
            z = batch["latent"].to(self.device, non_blocking=True)
        elif "video" in batch:
            x = batch["video"].to(self.device, non_blocking=True)
            z = self.vae.encode(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        else:
            z = self.vae.encode(batch["image"].to(self.device, non_blocking=True))
        return z.to(self.dtype)

    def state_dict(self) -> dict:
        streams = {name: s.state_dict() for name, s in self.streams.items()}
        skipped = self.skipped_counts()
        if self.info.enabled:  # every rank's loader position: rank 0 writes them all
            import torch.distributed as dist

            gathered = [None] * self.info.world_size
            dist.all_gather_object(gathered, (streams, skipped))
            streams = {name: [g[0][name] for g in gathered] for name in streams}
            skipped = {k: [g[1][k] for g in gathered] for k in skipped}
        else:
            streams = {name: [s] for name, s in streams.items()}
            skipped = {k: [v] for k, v in skipped.items()}
        # `skipped`: each rank's counts, for reading; the streams' worker states are what resumes. `text_dtypes`:
        # the dtype each encoder's features had when they reached the model (bfloat16: T5 on the paper profile).
        return {**self.consumed, "streams": streams, "skipped": skipped, "text_dtypes": self.text_dtypes}

    def close(self) -> None:
        for s in self.streams.values():
            s.close()


def summed_skipped(data: TrainingData, info: D.DistInfo) -> dict[str, int]:
    """`data.skipped_counts()` summed over all ranks: the train log's skipped samples and shards. A
    collective when distributed: every rank calls it at the same step."""
    counts = data.skipped_counts()
    if info.enabled:
        import torch.distributed as dist

        total = torch.tensor(list(counts.values()), dtype=torch.long, device=info.device())
        dist.all_reduce(total)
        counts = dict(zip(counts, (int(v) for v in total.tolist())))
    return counts


def streaming_sources(cfg: CellConfig, features: FeatureShards | None = None) -> dict:
    """{"images": source, "clips": source} a streamed cell reads (either may be absent)."""
    if cfg.data.encode == "shards":
        features = features or FeatureShards(cfg.data.features_dir, cfg)
        return {"clips" if features.media == "video" else "images": features}
    return {name: as_source(dataset) for name, dataset in open_datasets(cfg).items()}


def build_training_data(cfg: CellConfig, info: D.DistInfo, device, dtype, vae, encoders, cache_dir: Path,
                        state: dict | None) -> TrainingData:
    """The cell's training data. `vae` and `encoders` may be None where `needs_vae(cfg)` /
    `needs_encoders(cfg)` say they are not needed; given anyway with feature shards, the encoders'
    fingerprints are checked against the shards'."""
    if cfg.data.encode == "memory":
        return InMemoryData(cfg, info, device, dtype, vae, encoders, cache_dir, state)
    return StreamingData(cfg, info, device, dtype, vae, encoders, state)
