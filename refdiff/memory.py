"""Host memory: how much a new allocation can take, and a clear refusal of work that cannot fit.

Entry points estimate a job's memory before it starts (a training step from one sample's share of the
activation cache, refdiff.models.registry.sample_bytes; a folder of images from their count and size)
and call ``check_fits``, so that a size typed by mistake ends in one line naming the setting, not in an
out-of-memory kill minutes later (docs/design.md rule 8, docs/reliability.md). GPU memory is not
estimated.
"""

from __future__ import annotations

import os


def available_memory() -> int | None:
    """Bytes of host memory a new allocation can take (Linux: MemAvailable; else the free physical pages),
    or None where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no such sysconf name here (Windows, macOS)
        return None


def check_fits(nbytes: float, what: str, advice: str) -> None:
    """Raise a ValueError saying ``what`` needs about nbytes, more than the host memory available, and
    ``advice`` (which setting to lower), when it does; nothing where the available memory is unknown."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.1f} GiB of memory, more than the "
                         f"{free / 2**30:.1f} GiB available: {advice}")
