"""Loading an official benchmark's scoring code for conformance tests, with the heavy packages it
imports at module level (mmdet, decord, CUDA torch pieces, ...) stood in for by stubs."""
from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def stubbed_modules(stubs: dict, also_restore: tuple[str, ...] = ()):
    """`stubs` in sys.modules while the block runs; afterwards sys.modules holds again what it held
    for those names and `also_restore` (modules the block imports under their official names)."""
    names = [*stubs, *also_restore]
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, original in saved.items():
            if original is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = original
