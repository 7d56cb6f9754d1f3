"""Checkpoints: one ``.npz`` of plain arrays, written atomically, read without pickle.

Keys (all plain NumPy arrays, readable with ``np.load(path, allow_pickle=False)`` and no refdiff):

    version        0-d int64, CHECKPOINT_VERSION
    config         0-d unicode string: the JSON of the training configuration
    step           0-d int64: optimizer steps taken
    rng            (6,) uint64: refdiff.backend.Generator state (get_state / set_state)
    params/<key>   model parameters, dotted keys as in the model's params dict
    ema/<key>      exponential moving average of the parameters
    opt/<key>      optimizer state: opt/step, opt/m.<key>, opt/v.<key> (refdiff.optim.adamw_init)
    sampler/<key>  timestep-sampler state, when importance sampling is used
    log/loss       (step,) float64: the training loss of every step so far

Writing goes to a temporary file of a unique name beside ``path`` (``<name>.<random>.refdiff.tmp``), is
flushed to disk, replaces ``path`` with ``os.replace``, and the folder is flushed too, so the rename
itself survives a power cut: a process killed mid-write leaves the previous checkpoint intact, and two
writers never share a temporary file (docs/design.md rule 9).

``folder_lock(folder)`` is the advisory lock an output folder is held by while a run writes into it
(``refdiff train`` and ``refdiff demo``): a second run on the same folder is refused, naming the
folder and the holder's pid. The lock is an OS file lock on ``<folder>/.refdiff.lock``, which the
kernel releases when its process dies, so the lock of a killed run is stale at once and the next run
takes it over (and removes the temporary files the killed run left).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

CHECKPOINT_VERSION = 1
GROUPS = ("params", "ema", "opt", "sampler", "log")
TMP_SUFFIX = ".refdiff.tmp"
LOCK_NAME = ".refdiff.lock"
_HELD: dict[Path, int] = {}  # folders this process holds the lock of -> nesting depth


class FolderLocked(RuntimeError):
    """Another process holds the output folder's lock."""


def save_checkpoint(path: str | Path, config: dict, step: int, rng_state: np.ndarray,
                    groups: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write a checkpoint atomically. ``groups`` maps a group name in GROUPS to a dict of host arrays."""
    path = Path(path)
    arrays = {"version": np.array(CHECKPOINT_VERSION, dtype=np.int64),
              "config": np.array(json.dumps(config, sort_keys=True)),
              "step": np.array(step, dtype=np.int64),
              "rng": np.asarray(rng_state, dtype=np.uint64)}
    for group, entries in groups.items():
        if group not in GROUPS:
            raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
        arrays.update({f"{group}/{key}": np.asarray(value) for key, value in entries.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=TMP_SUFFIX,
                                     delete=False) as f:
        try:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, path)
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; POSIX only (Windows cannot open a folder)."""
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | Path, arrays: bool = True) -> dict[str, Any]:
    """Read a checkpoint: {"config": dict, "step": int, "rng": (6,) uint64, "params": {...}, "ema": ..., ...};
    with arrays=False only config, step and rng (the groups' arrays are not read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with np.load(path, allow_pickle=False) as npz:
        names = set(npz.files)
        missing = {"version", "config", "step", "rng"} - names
        if missing:
            raise ValueError(f"checkpoint {path} is not a refdiff checkpoint: missing {sorted(missing)}")
        version = int(npz["version"])
        if version != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint {path} has version {version}; this refdiff reads {CHECKPOINT_VERSION}")
        out: dict[str, Any] = {"config": json.loads(str(npz["config"])), "step": int(npz["step"]),
                               "rng": npz["rng"].copy()}
        for group in GROUPS if arrays else ():
            prefix = group + "/"
            out[group] = {n[len(prefix):]: npz[n].copy() for n in npz.files if n.startswith(prefix)}
    for group in ("params", "ema", "opt") if arrays else ():
        _check_finite(path, group, out[group])
    return out


def _check_finite(path: Path, group: str, entries: dict[str, np.ndarray]) -> None:
    """Raise a ValueError naming the file and the first array of a group that holds NaN or inf."""
    for key, value in entries.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"checkpoint {path} holds non-finite values in {group}/{key}: it comes from a "
                             "diverged run and can neither be resumed nor sampled")


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the advisory lock of an output folder (created if missing) for the ``with`` block.

    Raises FolderLocked naming the folder and the holder's pid while another process holds it. A lock
    left by a killed process is taken over (the kernel released it), with a note on stderr, and the
    killed writer's temporary files are removed. Nested holds in one process are allowed.
    """
    folder = Path(folder).resolve()
    if folder in _HELD:
        _HELD[folder] += 1
        try:
            yield folder
        finally:
            _HELD[folder] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _try_lock(fd)
        holder = os.read(fd, 32).decode(errors="replace").strip()
        if not locked:
            raise FolderLocked(f"{folder} is in use by another refdiff run (pid {holder or 'unknown'}): "
                               "wait for it to end, or give another output folder")
        if holder:  # a holder that ended cleanly empties the file: this one was killed
            print(f"refdiff: taking over the lock of {folder} left by pid {holder}, which is gone", file=sys.stderr)
            for tmp in folder.glob("*" + TMP_SUFFIX):
                tmp.unlink(missing_ok=True)
        _rewrite(fd, f"{os.getpid()}\n")
        _HELD[folder] = 1
        try:
            yield folder
        finally:
            del _HELD[folder]
            _rewrite(fd, "")
    finally:
        os.close(fd)  # closing the file releases the lock


def _rewrite(fd: int, text: str) -> None:
    """Replace an open file's contents with ``text``."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on an open file without waiting; False if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        os.lseek(fd, 1 << 20, os.SEEK_SET)  # a byte past the pid, which other processes must still read
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
