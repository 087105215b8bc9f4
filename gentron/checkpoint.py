"""Training checkpoints: what one holds, how it is written (atomically, with a checksum) and read back.

A checkpoint is one torch file with everything an exact resume needs:
  model, ema, optimizer           state dicts (full, unsharded: rank 0 gathers them)
  step                            optimizer steps taken
  rng                             torch / numpy / python global states, the trainer's generator and,
                                  when each rank draws its noise on its device, every rank's stream
  data                            the data position (samples consumed)
  config, model_config            the resolved cell config and the GenTronConfig, so generation can
                                  rebuild the model without re-deriving it
  text_encoders                   the text encoders' fingerprints (TextEncoder.name), which generation
                                  compares with its config's
  checksum                        a BLAKE2b digest of everything above, verified on every load: a file
                                  whose bytes changed after it was written is refused, never resumed

A run's `checkpoints/` folder holds `last.pt` (the newest) and the `train.keep_last - 1` checkpoints
before it as `step-<step>.pt`. When `last.pt` is missing (moved aside because it is corrupt, or a save
was killed between its two renames), training resumes from the newest `step-<step>.pt`.

FSDP runs (train.strategy=fsdp on several ranks) write sharded checkpoints instead,
`checkpoints/sharded-<step>/` (gentron.sharded: each rank its own shards, a digest per shard file,
the newest train.keep_last kept), and `last.pt` only as a consolidated full file: at the end of
training, or on request (`python -m gentron.checkpoint consolidate RUN_DIR`), for generation and
export. `load_checkpoint` reads either format; resuming picks the newest checkpoint of either
(an FSDP run prefers the sharded one of the same step, which it loads shard by shard). The same
checks hold for both: a digest mismatch is refused as corrupt, a non-finite weight as poisoned.

A run folder resumes only with the config it was trained with (`resume_state`): the one in its
checkpoint, or its `config.yaml` before the first checkpoint. Settings that change how the run is
carried out, not what it computes (gentron.config.RUN_ONLY_KEYS, sampling and evaluation, train.steps
under a constant learning rate) may change; any other change is refused unless train.resume=force.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from gentron.checkpoint_payload import CHECKSUM, checksum, non_finite, save_checkpoint
from gentron.config import RUN_ONLY_KEYS, CellConfig, default_config, to_dict
from gentron.errors import ConfigError, exits_on_user_error
from gentron.sharded import META, sharded_checkpoints, sharded_step

log = logging.getLogger(__name__)

LAST = "last.pt"
CONFIG_FILE = "config.yaml"  # a run folder's resolved config
# A run folder also resumes across a change of sampling and evaluation settings (and of RUN_ONLY_KEYS).
RUN_ONLY_SECTIONS = ("sample", "eval")
_STEP_FILE = re.compile(r"step-(\d+)\.pt")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_file(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def earlier_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """The kept `step-<step>.pt` files of a folder as (step, path), newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.fullmatch(p.name))]
    return sorted(found, reverse=True)


def kept_checkpoints(folder: str | Path, prefer_sharded: bool = False) -> list[Path]:
    """Every checkpoint a folder keeps, newest first: last.pt, then the step files; sharded folders
    (gentron.sharded) by their step among them, before the file of the same step when
    `prefer_sharded` (an FSDP run), after it otherwise."""
    last = Path(folder) / LAST
    files = ([last] if last.exists() else []) + [p for _, p in earlier_checkpoints(folder)]
    shards = sharded_checkpoints(folder)
    if not shards:
        return files
    entries = [(checkpoint_step(p), 0 if prefer_sharded else 1, p) for p in files]
    entries += [(step, 1 if prefer_sharded else 0, p) for step, p in shards]
    return [p for _, _, p in sorted(entries, key=lambda e: (-e[0], -e[1]))]


def checkpoint_step(path: Path) -> float:
    """A checkpoint file's step, read without its tensors (inf for an unreadable file: resuming then
    tries it first and refuses it by name instead of skipping it)."""
    m = _STEP_FILE.fullmatch(path.name)
    if m:
        return int(m.group(1))
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["step"])
    except Exception:  # corrupt or foreign: load_checkpoint says what is wrong with it
        return float("inf")


def resume_checkpoint(folder: str | Path, prefer_sharded: bool = False) -> Path | None:
    """What training resumes from: the newest checkpoint (kept_checkpoints); without last.pt, the
    newest step file or sharded folder."""
    kept = kept_checkpoints(folder, prefer_sharded)
    if not kept:
        return None
    last = Path(folder) / LAST
    if not last.exists():
        log.warning("%s is missing; resuming from the newest earlier checkpoint %s", last, kept[0])
    return kept[0]


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing ------------------------------------------------------------------------------------

def save_rotating(folder: str | Path, payload: dict[str, Any], keep_last: int, previous_step: int | None) -> Path:
    """Write `folder/last.pt`, keeping the checkpoint it replaces (of step `previous_step`) as
    `step-<step>.pt` and `keep_last - 1` such files in all (older ones are deleted).

    Every step is atomic and last.pt is replaced, never removed: the old last.pt is hard-linked to its
    step name first (renamed where the filesystem has no hard links; a save killed then leaves
    no last.pt, and training resumes from the step file)."""
    folder = Path(folder)
    last = folder / LAST
    if keep_last > 1 and previous_step is not None and last.exists() and previous_step != payload.get("step"):
        _keep_as(last, step_file(folder, previous_step))
    save_checkpoint(last, **payload)
    kept = [(s, p) for s, p in earlier_checkpoints(folder) if s < payload["step"]][: keep_last - 1]
    for _, path in earlier_checkpoints(folder):
        if (_, path) not in kept:
            path.unlink(missing_ok=True)
            log.info("removed %s (train.keep_last=%d)", path, keep_last)
    return last


def _keep_as(source: Path, target: Path) -> None:
    link = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.link(source, link)
    except OSError:
        os.replace(source, target)
        return
    os.replace(link, target)
    # rename() between two names of one file does nothing (POSIX): the link would stay behind
    link.unlink(missing_ok=True)


# --- reading ------------------------------------------------------------------------------------

def load_checkpoint(path: str | Path, ranks=None) -> dict[str, Any]:
    """The payload of a checkpoint, its checksum verified (without the checksum key) and every weight
    finite: a checkpoint of a diverged run is refused wherever it is loaded (resume, init_from,
    generation), naming the tensor and the newest earlier checkpoint.

    A sharded checkpoint (a `sharded-<step>` folder) loads the same, its shards assembled in this
    process; with `ranks` (the DistInfo of an FSDP run, every rank calling) the ranks share the
    checks and get the payload without model, ema and optimizer but with `sharded`: the folder, to
    load into the model in place (gentron.sharded.load_into)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first (python -m gentron.train ...)")
    if path.is_dir():
        return _load_sharded(path, ranks)
    payload = _read_file(path)
    problem = non_finite(payload)
    if problem:
        raise _poisoned(path, problem)
    return payload


def _load_sharded(path: Path, ranks) -> dict[str, Any]:
    from gentron import sharded

    if not (path / sharded.META).is_file():
        raise ValueError(f"{path} is not a sharded checkpoint (it has no {sharded.META}); pass a checkpoint file or "
                         "a checkpoints/sharded-<step> folder written by python -m gentron.train")
    payload = _read_file(path / sharded.META)
    bad = sharded.verify(path, payload.pop(sharded.SHARDS, {}), ranks)
    if bad:
        raise ValueError(f"checkpoint {path} is corrupt: {bad} no longer matches the checksum written with it "
                         f"(a disk or copy error); {_advice(path)}")
    if ranks is not None:
        problem = sharded.scan(path, ranks)
        payload["sharded"] = str(path)
    else:
        payload.update(sharded.read_full(path))
        problem = non_finite(payload)
    if problem:
        raise _poisoned(path, problem)
    return payload


def _poisoned(path: Path, problem: str) -> PoisonedCheckpoint:
    return PoisonedCheckpoint(f"checkpoint {path} holds non-finite weights ({problem}): the run had diverged "
                              f"when it was written; {_advice(path)}, or pass train.resume=last_good to resume "
                              "from the newest checkpoint whose weights are all finite")


def _read_file(path: Path) -> dict[str, Any]:
    """A checkpoint file's payload, its checksum verified and removed."""
    try:
        # Our own files only: they hold numpy RNG state and plain dicts, which weights_only rejects.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            IndexError, KeyError, AttributeError) as e:
        raise ValueError(f"checkpoint {path} is unreadable ({_short(e)}); {_advice(path)}") from e
    if not isinstance(payload, dict):
        raise ValueError(f"checkpoint {path} holds a {type(payload).__name__}, not a training checkpoint; "
                         "pass a checkpoint written by python -m gentron.train")
    stored = payload.pop(CHECKSUM, None)
    if stored is None:
        log.warning("checkpoint %s has no checksum (written by an older gentron): its contents are not verified",
                    path)
    elif stored != checksum(payload):
        where = path.parent if path.name == META and sharded_step(path.parent) is not None else path
        raise ValueError(f"checkpoint {where} is corrupt: its contents no longer match the checksum written "
                         f"with it (a disk or copy error); {_advice(where)}")
    return payload


class PoisonedCheckpoint(ValueError):
    """A checkpoint whose checksum holds but whose weights include NaN or inf."""


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _advice(path: Path) -> str:
    """What to do about a bad checkpoint: resume from the previous one kept next to it."""
    own = _STEP_FILE.fullmatch(path.name)
    own_step = int(own.group(1)) if own else sharded_step(path)
    others = earlier_checkpoints(path.parent) + sharded_checkpoints(path.parent)
    earlier = sorted(((s, p) for s, p in others if p != path and (own_step is None or s < own_step)), reverse=True)
    if not earlier:
        return ("no earlier checkpoint is kept next to it: delete it to train from the start "
                "(train.keep_last keeps earlier ones)")
    step, previous = earlier[0]
    return (f"move it aside (mv {path} {path}.corrupt) and rerun to resume from the previous checkpoint "
            f"{previous} (step {step}), or pass that file where a checkpoint is asked for")


# --- resuming: from what, and only the same run -------------------------------------------------

def resume_state(cfg: CellConfig, run_dir: str | Path, ranks=None) -> dict | None:
    """The checkpoint a run folder resumes from (resume_checkpoint), loaded, or None for a fresh start;
    refuses a folder trained with another config than `cfg` (check_same_run). A checkpoint with
    non-finite weights is refused, unless train.resume=last_good asks to go back to the newest one
    whose weights are all finite. `ranks`: an FSDP run's DistInfo (see load_checkpoint)."""
    run_dir = Path(run_dir)
    source = resume_checkpoint(checkpoint_dir(run_dir), prefer_sharded=ranks is not None)
    try:
        state = load_checkpoint(source, ranks) if source is not None else None
    except PoisonedCheckpoint:
        if cfg.train.resume != "last_good":
            raise
        source, state = _last_good(checkpoint_dir(run_dir), ranks)
    if state is not None and "config" in state:
        check_same_run(cfg, state["config"], source)
    elif (run_dir / CONFIG_FILE).exists():
        check_same_run(cfg, _read_yaml(run_dir / CONFIG_FILE), run_dir / CONFIG_FILE)
    if state is not None:
        log.info("resuming %s at step %d from %s", run_dir, state["step"], source)
    return state


def _last_good(folder: Path, ranks=None) -> tuple[Path | None, dict | None]:
    for path in kept_checkpoints(folder, prefer_sharded=ranks is not None):
        try:
            state = load_checkpoint(path, ranks)
        except ValueError as e:
            log.warning("train.resume=last_good: skipping %s (%s)", path, str(e).split(";")[0])
            continue
        log.warning("train.resume=last_good: resuming from %s (step %d), the newest checkpoint with finite "
                    "weights", path, state["step"])
        return path, state
    log.warning("train.resume=last_good: no kept checkpoint of %s has finite weights; training from the start", folder)
    return None, None


def check_same_run(cfg: CellConfig, stored: dict, source: Path) -> None:
    """Refuse to resume a run folder with another config than the one in `source` (its checkpoint or
    config.yaml), naming the keys that differ, unless train.resume=force asks for it."""
    changes = config_changes(cfg, stored)
    if not changes:
        return
    listed = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
    if cfg.train.resume == "force":
        log.warning("train.resume=force: continuing %s with a changed config (%s)", source, listed)
        return
    raise ConfigError(f"{source} holds another config than the one given ({listed}); use another run folder, or "
                      "pass train.resume=force to continue this run with the given config")


def config_changes(cfg: CellConfig, stored: dict) -> list[str]:
    """`key: old -> new` for every key of `cfg` that differs from the `stored` config a run folder was
    trained with, except keys that change how the run is carried out (RUN_ONLY_KEYS, RUN_ONLY_SECTIONS),
    and train.steps under a constant learning rate (it only says where the run stops). Keys the stored
    config lacks take their defaults."""
    old = {**_flatten(to_dict(default_config())), **_flatten(_current_form(stored))}
    new = _flatten(to_dict(cfg))
    steps_matter = cfg.train.lr_schedule != "constant" or old.get("train.lr_schedule") != "constant"
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in RUN_ONLY_KEYS or key.split(".")[0] in RUN_ONLY_SECTIONS or (key == "train.steps" and not steps_matter):
            continue
        if old.get(key, "(absent)") != new.get(key, "(absent)"):
            changes.append(f"{key}: {old.get(key, '(absent)')} -> {new.get(key, '(absent)')}")
    return changes


# Options gentron no longer has, with the value that meant "off": a run stored with that value computed
# what today's code computes; any other value did not.
RETIRED = {"model.logsnr_shift": 0.0, "model.min_snr_gamma": None}


def _current_form(stored: dict) -> dict:
    """A stored config in today's form: text-encoder specs with every key filled in, retired options
    dropped where they held their "off" value."""
    from gentron.specs import text_encoder_spec

    stored = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
    specs = stored.get("text_encoders")
    if isinstance(specs, list):
        try:
            stored["text_encoders"] = [to_dict(text_encoder_spec(s)) for s in specs]
        except ValueError:
            pass  # left as stored: it then differs, and the difference is named
    for key, off in RETIRED.items():
        section, name = key.split(".")
        if isinstance(stored.get(section), dict) and stored[section].get(name, off) == off:
            stored[section].pop(name, None)
    return stored


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and prefix == "":  # sections; a text encoder spec stays one value
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _read_yaml(path: Path) -> dict:
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid YAML ({' '.join(str(e).split())[:120]}); "
                         "restore it or delete it to train this folder with the given config") from e
    if not isinstance(stored, dict):
        raise ValueError(f"{path} is not a config mapping; restore it or delete it to train this folder with the "
                         "given config")
    return stored


# --- consolidating a sharded checkpoint ---------------------------------------------------------

def consolidate(source: str | Path) -> Path:
    """Write `checkpoints/last.pt`, a full single-file checkpoint (generation and export read it), from
    a run folder's newest sharded checkpoint, or from the `sharded-<step>` folder given. Reads the
    shards in this process (verified and checked like any load)."""
    source = Path(source)
    if sharded_step(source) is not None:
        shards, folder = source, source.parent
    else:
        folder = checkpoint_dir(source) if checkpoint_dir(source).is_dir() else source
        found = sharded_checkpoints(folder)
        if not found:
            raise FileNotFoundError(f"{source} has no sharded checkpoint (checkpoints/sharded-<step>/); only FSDP runs "
                                    "write them, and other runs' checkpoints/last.pt is already a full file")
        shards = found[0][1]
    state = load_checkpoint(shards)
    path = save_checkpoint(folder / LAST, **state)
    log.info("consolidated %s (step %d) into %s", shards, state["step"], path)
    return path


@exits_on_user_error("python -m gentron.checkpoint")
def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gentron.checkpoint",
                                     description="Checkpoint tools. consolidate: write checkpoints/last.pt, a full "
                                                 "file, from a run's newest sharded checkpoint (FSDP runs).")
    commands = parser.add_subparsers(dest="command", required=True)
    consolidate_cmd = commands.add_parser("consolidate", help="write checkpoints/last.pt from the sharded checkpoint")
    consolidate_cmd.add_argument("source", help="a run folder, its checkpoints/ folder, or a sharded-<step> folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(consolidate(args.source))


if __name__ == "__main__":
    main()
