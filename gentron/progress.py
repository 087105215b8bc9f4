"""Progress of a long loop (training, encoder pretraining, data rendering, sampling, scoring).

On a terminal it is a tqdm bar. Anywhere else (a log file, a pipe, a SLURM job's output) a bar's
redraws pile up into one unreadable line per refresh, so `progress` writes one plain line every
`every` seconds instead (GENTRON_PROGRESS_EVERY, default 30), and one when the loop ends:

    train abc123: step 1200/7000 (17%), 3.1 steps/s, eta 31 min, loss=0.4123

    for batch in progress(batches, desc="sampling cell", unit="batch"):
    bar = progress(total=steps, initial=step, desc="train cell", unit="step"); bar.update(1)
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO
from collections.abc import Iterable

from tqdm import tqdm

EVERY_ENV = "GENTRON_PROGRESS_EVERY"
DEFAULT_EVERY_S = 30.0


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, initial: int = 0,
             unit: str = "it", disable: bool = False, leave: bool = True, stream: IO[str] | None = None,
             every: float | None = None):
    """A tqdm bar when `stream` (default stderr) is a terminal, else a `LogLines` with the same
    iteration, update, set_postfix and close; `disable` shows nothing."""
    stream = sys.stderr if stream is None else stream
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not disable and _is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, leave=leave, file=stream,
                    dynamic_ncols=True)
    every = float(os.environ.get(EVERY_ENV, DEFAULT_EVERY_S)) if every is None else every
    return LogLines(iterable, desc=desc, total=total, initial=initial, unit=unit, disable=disable, stream=stream,
                    every=every)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LogLines:
    """A loop's progress as plain lines, at most one per `every` seconds and one at the end."""

    def __init__(self, iterable=None, *, desc: str, total: int | None, initial: int, unit: str, disable: bool,
                 stream: IO[str], every: float, clock=time.monotonic):
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.n = self.start_n = initial
        self.disable, self.stream, self.every, self.clock = disable, stream, every, clock
        self.started = self.last = clock()
        self.postfix = ""
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._write(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n > self.start_n:
            self._write(self.clock(), done=True)

    def line(self, now: float, done: bool = False) -> str:
        """'<desc>: <unit> n/total (p%), r <unit>s/s, eta m min[, postfix]'; at the end, the time taken."""
        elapsed = max(now - self.started, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        where = f"{self.unit} {self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total \
            else f"{self.n} {_plural(self.unit)}"
        parts = [where, f"{rate:.3g} {_plural(self.unit)}/s"]
        if done:
            parts.append(f"took {_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"eta {_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: {', '.join(parts)}"

    def _write(self, now: float, done: bool = False) -> None:
        if self.disable:
            return
        self.stream.write(self.line(now, done) + "\n")
        self.stream.flush()


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
