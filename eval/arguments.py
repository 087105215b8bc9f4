"""argparse types of the evaluator command lines: each bad value is refused in one line naming the option
and what it takes (`prog: error: argument --x: ... (see prog --help)`, exit 2)."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from gentron.errors import EXIT_USER_ERROR


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (`prog: error: ... (see prog --help)`, exit 2)
    instead of the usage block and the error; its subcommands' parsers are OneLineParsers too."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def whole_number(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [minimum, maximum] (argparse adds the option's name)."""
    allowed = f"of at least {minimum}" if maximum is None else f"in {minimum}..{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give one {allowed}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{value} is out of range; give a whole number {allowed}")
        return value
    return parse


def probability(text: str) -> float:
    """An argparse type: a threshold or probability, a number in [0, 1] (nan and inf refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability; give a number in [0, 1]")
    return value


def non_empty(what: str) -> Callable[[str], str]:
    """An argparse type: any text but the empty string, which an unset shell variable gives (`--blip "$X"`)
    and which pathlib would read as the current folder."""
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"is empty; give {what} (an unset shell variable expands to '')")
        return text
    return parse


def existing_folder(what: str) -> Callable[[str], str]:
    """An argparse type: a non-empty path to a folder that exists."""
    def parse(text: str) -> str:
        non_empty(what)(text)
        path = Path(text).expanduser()
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{text} does not exist; give {what}")
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a file; give {what}")
        return str(path)
    return parse


def output_folder(what: str) -> Callable[[str], str]:
    """An argparse type: a folder to write into (created if missing); not empty, not a file, not under a file."""
    def parse(text: str) -> str:
        non_empty(what)(text)
        path = Path(text).expanduser()
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a file; give {what}")
        if blocker := _file_above(path):
            raise argparse.ArgumentTypeError(f"{blocker} is a file, so {text} cannot be created; give {what}")
        return str(path)
    return parse


def output_file(what: str) -> Callable[[str], str]:
    """An argparse type: a file to write (its folders created if missing); not empty, not a folder."""
    def parse(text: str) -> str:
        non_empty(what)(text)
        path = Path(text).expanduser()
        if path.is_dir() or text.endswith(("/", "\\")):
            raise argparse.ArgumentTypeError(f"{text} is a folder; give {what}")
        if blocker := _file_above(path.parent):
            raise argparse.ArgumentTypeError(f"{blocker} is a file, so {text} cannot be created; give {what}")
        return str(path)
    return parse


def _file_above(path: Path) -> Path | None:
    """The first existing ancestor of `path` (itself included) when it is a file, else None."""
    for folder in (path, *path.parents):
        if folder.exists():
            return None if folder.is_dir() else folder
    return None


def device_name(text: str) -> str:
    """An argparse type: auto, cpu, cuda, cuda:N or mps, and present on this machine."""
    if text.strip() in ("", "auto"):
        if not text.strip():
            raise argparse.ArgumentTypeError("is empty; give cpu, cuda, cuda:N or auto (or leave the option out)")
        return "auto"
    if problem := device_problem(text):
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def device_problem(device: str) -> str | None:
    """Why `device` cannot run an evaluator here (unknown, or not on this machine), or None."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        return "not a device name; give cpu, cuda, cuda:N or auto"
    if parsed.type == "cpu":
        return None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return "no CUDA GPU is visible on this machine; give cpu or auto"
        if parsed.index is not None and parsed.index >= count:
            return f"this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}; give one of them or auto"
        return None
    if parsed.type == "mps":
        return None if torch.backends.mps.is_available() else "MPS is not available here; give cpu or auto"
    return f"device type {parsed.type!r} is not supported; give cpu, cuda, cuda:N or auto"
