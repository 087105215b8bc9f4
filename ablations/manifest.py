"""A cell's manifest.json: provenance (git commit, dirty flag, package versions, host, seeds) and the
state of each stage. A stage's entry turns `done` only after its outputs are written, in one atomic
write, together with a record of those outputs (`outputs`: ablations.outputs.record_outputs): the
entry is the stage's completion marker, and the record is what runfolder.status checks the folder
against. `running` without `done` is a partial stage. A stage that starts again resets the stages
after it to pending (their outputs came from what it is about to replace).
"""
from __future__ import annotations

import logging
import os
import platform
import socket
import subprocess
import time
from datetime import datetime, UTC
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from gentron.config import CellConfig
from gentron.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PACKAGES = ("torch", "torchvision", "numpy", "diffusers", "transformers", "open_clip_torch", "omegaconf",
            "hydra-core", "submitit", "pandas", "clean-fid", "torchmetrics")
REPO = Path(__file__).resolve().parent.parent
# CPU features that select different float kernels (oneDNN uses AMX / AVX-512 BF16 where present)
SIMD_FLAGS = ("avx2", "avx512", "amx", "fma")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def environment() -> dict:
    """What the code and machine were: computed once per process."""
    return {"git": _git(), "versions": _versions(), "python": platform.python_version(),
            "host": socket.gethostname(), "platform": platform.platform()}


@lru_cache(maxsize=1)
def hardware() -> dict:
    """What ran the numbers: float kernels differ between CPUs (AVX2 vs AVX-512) and GPUs, so a table
    reproduces exactly only on the same kind of machine and thread counts."""
    import torch

    cpu, model, flags = platform.processor() or platform.machine(), None, []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name":
                cpu = value
            elif key == "model" and model is None:
                model = value
            elif key == "flags":
                flags = sorted(f for f in value.split() if f.startswith(SIMD_FLAGS))
                break
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu, "cpu_model": model, "cpu_simd": flags, "cpu_count": os.cpu_count(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpus": gpus, "cuda": torch.version.cuda if gpus else None}


def _git() -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read(cell_dir: str | Path) -> dict:
    path = Path(cell_dir) / MANIFEST
    return read_json(path) if path.exists() else {}


def read_or_empty(cell_dir: str | Path) -> dict:
    """The manifest, or {} when it is missing or unreadable (readers that must not fail on a torn file)."""
    try:
        return read(cell_dir)
    except (ValueError, OSError):
        return {}


def write(cell_dir: str | Path, manifest: dict) -> None:
    atomic_write_json(Path(cell_dir) / MANIFEST, manifest)


def create(cell_dir: Path, info: dict, config: CellConfig) -> None:
    """A fresh manifest for a cell (kept as is when it exists and reads: it records earlier attempts;
    an unreadable one is replaced, and with it every stage is redone: nothing vouches for the outputs)."""
    if (cell_dir / MANIFEST).exists():
        try:
            if isinstance(read(cell_dir), dict):
                return
            problem = "is not a JSON object"
        except (ValueError, OSError) as e:
            problem = str(e).split(";")[0].removeprefix(str(cell_dir / MANIFEST)).strip()
        log.warning("%s %s; writing a new one: every stage of cell %s runs again", cell_dir / MANIFEST, problem,
                    cell_dir.name)
    seeds = {"train": config.train.seed, "data": config.data.seed,
             "sample": config.sample.seeds, "images_per_prompt": config.sample.images_per_prompt,
             "text_encoders": [getattr(spec, "seed", None) for spec in config.text_encoders]}
    write(cell_dir, {"grid": info["grid"], "cell_id": info["cell_id"], "status": "pending", "seeds": seeds,
                     **environment(), "start": None, "end": None, "stages": {}})


def stage_state(manifest: dict, stage: str) -> str:
    """pending | running (a partial stage: redone) | done | failed"""
    return manifest.get("stages", {}).get(stage, {}).get("status", "pending")


def begin(cell_dir: Path, stage: str, later: tuple[str, ...] = ()) -> float:
    """Mark `stage` running; the `later` stages (those that read its outputs) turn pending."""
    import torch  # the stage itself loads it anyway; its thread count explains the stage's timing

    manifest = read(cell_dir)
    entry = manifest.setdefault("stages", {}).setdefault(stage, {})
    for key in ("outputs", "error"):
        entry.pop(key, None)
    entry.update(status="running", start=now(), end=None, host=socket.gethostname(), pid=os.getpid(),
                 job_id=_job_id(), attempts=entry.get("attempts", 0) + 1, threads=torch.get_num_threads(),
                 interop_threads=torch.get_num_interop_threads(), hardware=hardware())
    for after in later:
        other = manifest["stages"].get(after)
        if other and other.get("status") != "pending":
            other.pop("outputs", None)
            other.update(status="pending", reset_by=f"{stage} ran again at {entry['start']}")
    manifest["start"] = manifest.get("start") or entry["start"]
    manifest.update(status="running", **environment(), hardware=hardware())
    write(cell_dir, manifest)
    return time.perf_counter()


def finish(cell_dir: Path, stage: str, started: float, status: str, stages: tuple[str, ...], **extra) -> None:
    manifest = read(cell_dir)
    entry = manifest.setdefault("stages", {}).setdefault(stage, {})
    entry.update(status=status, end=now(), seconds=round(time.perf_counter() - started, 3), **extra)
    if status == "failed":
        manifest["status"] = "failed"
    elif all(stage_state(manifest, s) == "done" for s in stages):
        manifest.update(status="done", end=entry["end"])
    write(cell_dir, manifest)


def _job_id() -> str | None:
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else os.environ.get("SLURM_JOB_ID")
