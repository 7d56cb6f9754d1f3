"""The one switch between the reference path and the speed layer.

Every layer and model has a textbook form, the function a reader meets first (one derivative step a
line, the derivation page's numbered steps). Where a faster form of the same math exists (a fused
backward, in-place arithmetic, a batch split into parts on the host's cores), it lives beside the textbook
form and is tested equal to it. ``enabled()`` says which one runs:

- the speed layer, by default;
- the reference path, when the environment variable ``REFDIFF_REFERENCE=1`` is set at start-up, or
  inside ``with reference_path():``.

The switch is process-wide, not per thread, so the worker threads of ``refdiff.parallel`` see the
state of the thread that started them; worker processes (``refdiff.workers``) get it with every call.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

ENV = "REFDIFF_REFERENCE"

_reference = os.environ.get(ENV, "0") not in ("", "0")


def enabled() -> bool:
    """True when the speed layer runs; False on the reference path."""
    return not _reference


@contextlib.contextmanager
def reference_path(on: bool = True) -> Iterator[None]:
    """Run the block on the reference path (``on=False``: on the speed layer); restores the state after."""
    global _reference
    if not isinstance(on, bool):
        raise ValueError(f"on must be a bool, got {on!r}")
    before, _reference = _reference, on
    try:
        yield
    finally:
        _reference = before
