"""Stop requests: a signal asks the training loop to finish its step, write a checkpoint and return.

Signals: SIGINT (Ctrl-C), SIGTERM (`kill`, `scancel`, SLURM's preemption and time limit) and the
signal submitit has SLURM send `signal_delay_s` before the time limit (SIGUSR2, or
$SUBMITIT_PREEMPT_SIGNAL). While a `StopRequest` is open, each of them only sets a flag; the loop
asks `should_stop()` at every step boundary. The main process owns shutdown: loader workers ignore
these signals, so a signal never kills a worker under a running step.

Several ranks must stop after the same step, and a signal reaches them at different moments. Each
rank's flag goes into an all-reduce (MAX) over a CPU (gloo) group, started at one step boundary and
read at the next: the ranks agree without waiting on the device, and stop one step after the first
of them saw the signal. A lone process stops at the first boundary after the signal.

Every signal a StopRequest caught is recorded in this process (`caught()`), so the job that runs the
trainer (slurm.launcher.CellTask) can requeue itself once the trainer has checkpointed and returned.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

import torch

log = logging.getLogger(__name__)

PREEMPT_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, PREEMPT_SIGNAL)

_caught: list[int] = []  # every stop signal a StopRequest caught in this process, in order


def caught() -> list[int]:
    """The stop signals caught so far in this process (compare lengths to see new ones)."""
    return list(_caught)


class StopRequest:
    """While open: the stop signals set `requested` instead of their usual action. `should_stop()` at
    each step boundary says whether every rank stops now (see the module docstring)."""

    def __init__(self, info=None):
        self.info = info
        self.requested = False
        self._old: dict[int, object] = {}
        self._group = None
        self._flag = None
        self._pending = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        if self.info is not None and self.info.enabled:
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo")  # a CPU group: agreeing never waits on the device
        return self

    def _handle(self, signum, frame) -> None:
        log.warning("signal %s: stopping after this step and writing a checkpoint", signal.Signals(signum).name)
        self.requested = True
        _caught.append(signum)

    def should_stop(self) -> bool:
        """Whether the loop stops at this step boundary (collective across ranks: every rank asks once
        per boundary)."""
        if self._group is None:
            return self.requested
        import torch.distributed as dist

        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            if bool(self._flag.item()):
                return True
        self._flag = torch.tensor([int(self.requested)], dtype=torch.int32)
        self._pending = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return False

    def __exit__(self, *exc) -> None:
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
        if self._group is not None:
            import torch.distributed as dist

            dist.destroy_process_group(self._group)
            self._group = None
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
