"""Multi-process training: process-group setup, DDP / FSDP2 wrapping, full state dicts, batch split.

One process per device. The trainer is written for a *global* batch: every rank draws the same
random numbers for the data of the whole batch (same seed, same generator) and keeps its own
contiguous slice. On CPUs the timesteps and noise are drawn for the global batch too, so N ranks
reproduce the single-process run up to floating-point reduction order; on GPUs each rank draws its
own on its device (gentron.train_step.StepNoise), which keeps the step free of host transfers.

Launch with torchrun (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in the environment) or under
SLURM (srun; init_distributed_from_slurm reads SLURM_PROCID and friends).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process created the group (and so destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed_from_slurm() -> tuple[int, int, int]:
    """Export MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK for torch.distributed's env://
    init from SLURM's task variables; returns (rank, world_size, local_rank), (0, 1, 0) outside a
    SLURM task. CUDA_VISIBLE_DEVICES is left as SLURM set it: select the GPU with local_rank."""
    if "SLURM_JOB_ID" not in os.environ or "SLURM_PROCID" not in os.environ:
        return 0, 1, 0
    import submitit  # only under SLURM

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                  overwrite=True)
    log.info("distributed: rank %d/%d (local %d), master %s:%d", env.rank, env.world_size,
             env.local_rank, env.master_addr, env.master_port)
    return env.rank, env.world_size, env.local_rank


def init_distributed() -> DistInfo:
    """Join the process group described by the environment; a lone process gets DistInfo()."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        init_distributed_from_slurm()  # exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* from SLURM's
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)
    log.info("rank %d of %d joined (%s)", info.rank, info.world_size, dist.get_backend())
    return info


def wrap_model(model: nn.Module, info: DistInfo, strategy: str, bf16: bool = False) -> nn.Module:
    """DDP (replicated weights) or FSDP2 (weights, grads and optimizer state sharded per block).

    bf16 (FSDP2): gather the weights in bfloat16 for compute and reduce the gradients in float32
    (MixedPrecisionPolicy); the sharded weights, the optimizer and the EMA stay float32.
    Activation checkpointing is the model's own switch (GenTronConfig.grad_checkpointing), so it
    works the same wrapped or not."""
    if not info.enabled:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.local_rank] if torch.cuda.is_available() else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        # Shard each transformer block, then the rest (embedders, final layer) at the root.
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    raise ValueError(f"unknown strategy {strategy!r}; choose ddp or fsdp")


def is_sharded(model: nn.Module) -> bool:
    """Whether the model's weights are FSDP2 shards (DTensors)."""
    return any(hasattr(p, "device_mesh") for p in model.parameters())


@contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Backward passes in this block reduce gradients across ranks only when `sync`: the micro-batches
    of an accumulated step before the last keep theirs local (DDP no_sync, FSDP2
    set_requires_gradient_sync)."""
    if sync:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for it: on CUDA through pinned memory with a
    non-blocking copy (a pageable copy blocks the host until the device has drained its queue)."""
    if x.device == device or device.type != "cuda":
        return x.to(device)
    if not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """An unsharded CPU state dict on every rank (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        unwrap(model), optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full (unsharded) optimizer state into the optimizer of a plain, DDP or FSDP2 model;
    each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(unwrap(model), optimizer, state, options=StateDictOptions(full_state_dict=True))


def local_slice(global_batch: int, info: DistInfo) -> slice:
    """This rank's contiguous part of a global batch."""
    if global_batch % info.world_size:
        raise ValueError(f"train.batch_size={global_batch} must be divisible by the {info.world_size} processes")
    per_rank = global_batch // info.world_size
    return slice(info.rank * per_rank, (info.rank + 1) * per_rank)


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= info.world_size
    return value


def all_reduce_max(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def all_gather_object(value, info: DistInfo) -> list:
    """Every rank's `value`, in rank order (a list of one without ranks)."""
    if not info.enabled:
        return [value]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
