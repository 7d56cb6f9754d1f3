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
import zipfile
import zlib
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
    """Read a checkpoint: {"path": str, "config": dict, "step": int, "rng": (6,) uint64, "params": {...},
    "ema": ..., ...}; with arrays=False only path, config, step and rng (the groups' arrays are not read).

    Anything that is not a whole refdiff checkpoint of plain, finite arrays (a folder, a truncated or
    corrupt file, a .npy, object arrays, a config that is not JSON) is a ValueError naming the file.
    """
    path = Path(path)
    header = ("version", "config", "step", "rng")
    npz = read_arrays(path, "checkpoint", None if arrays else header)
    missing = set(header) - set(npz)
    if missing:
        raise ValueError(f"checkpoint {path} is not a refdiff checkpoint: missing {sorted(missing)}")
    try:
        version, step, rng = int(npz["version"]), int(npz["step"]), npz["rng"].astype(np.uint64).reshape(6)
        config = json.loads(str(npz["config"]))
    except (TypeError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"checkpoint {path} has a malformed header ({type(err).__name__}: {err})") from None
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has version {version}; this refdiff reads {CHECKPOINT_VERSION}")
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {path} has a malformed config: a JSON {type(config).__name__}, not an object")
    out: dict[str, Any] = {"path": str(path), "config": config, "step": step, "rng": rng}
    for group in GROUPS if arrays else ():
        prefix = group + "/"
        out[group] = {n[len(prefix):]: a for n, a in npz.items() if n.startswith(prefix)}
    for group in ("params", "ema", "opt") if arrays else ():
        _check_finite(path, group, out[group])
    return out


def read_arrays(path: str | Path, what: str, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (those in ``names`` only, when given), read without pickle.

    ``what`` names the file in errors ("checkpoint", "--samples"): a missing file is a FileNotFoundError,
    a folder, a .npy, object arrays and a truncated or corrupt archive are ValueErrors.
    """
    path = Path(path)
    if path.is_dir():
        hint = f": did you mean {path / 'checkpoint.npz'}?" if (path / "checkpoint.npz").is_file() else ""
        raise ValueError(f"{what} {path} is a folder, not an .npz file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with open(path, "rb") as f:  # our own handle: closed even when np.load fails half-way
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError(f"{what} {path} holds one .npy array, not an .npz archive of named arrays")
            with npz:
                return {n: npz[n] for n in npz.files if names is None or n in names}
    except ValueError as err:
        if str(err).startswith(what):
            raise
        if "Object arrays cannot be loaded" in str(err):
            raise ValueError(f"{what} {path} holds object arrays, which refdiff never loads (no pickle)") from None
        raise ValueError(f"{what} {path} is not a readable .npz archive: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{what} {path} is truncated or corrupt ({type(err).__name__}: {err})") from None


@contextlib.contextmanager
def interpreting(ckpt: dict[str, Any]) -> Iterator[None]:
    """Turn a KeyError, TypeError or IndexError met while reading a loaded checkpoint's config (a field
    missing, of the wrong type, or an unknown one) into a ValueError naming the file. (A field of the
    right type but out of range is the config's own ValueError, which names the field.)"""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise ValueError(f"checkpoint {ckpt['path']} has a malformed or foreign config "
                         f"({type(err).__name__}: {err})") from None


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
