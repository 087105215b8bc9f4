"""Errors a user can cause and fix. Their messages name the problem and the fix.

Every command line ends such an error the same way: one line `prog: error: <message>` on stderr and
exit status 2 (argparse's own convention), never a traceback:

    @exits_on_user_error("python -m gentron.train")
    def main(argv=None): ...

Set GENTRON_TRACEBACK=1 to see the traceback behind a message.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import NoReturn
from collections.abc import Callable

log = logging.getLogger(__name__)

# What a user's input can cause: a wrong key or value (ConfigError is a ValueError), a missing or
# wrong path. Anything else is a fault of the program and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               FileExistsError)
EXIT_USER_ERROR = 2


class ConfigError(ValueError):
    """A config key, type or value is wrong (raised before anything runs)."""


def one_line(error: BaseException | str) -> str:
    """The message on one line (a multi-line message's lines joined with ' | ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " | ".join(lines) or type(error).__name__


def fail(prog: str, error: BaseException | str) -> NoReturn:
    """Print `prog: error: <message>` and exit with status 2."""
    if isinstance(error, BaseException) and os.environ.get("GENTRON_TRACEBACK"):
        raise error
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def exits_on_user_error(prog: str) -> Callable:
    """Decorate a command's main(): USER_ERRORS end as one line and exit 2; Ctrl-C exits 130 quietly."""
    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def wrapped(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except USER_ERRORS as e:
                fail(prog, e)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                raise SystemExit(130)
        return wrapped
    return decorate


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (`--batch-size -1` is refused by the parser, with the value)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value
