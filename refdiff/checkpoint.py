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

Writing goes to ``<path>.tmp``, is flushed to disk, and replaces ``path`` with ``os.replace``: a process
killed mid-write leaves the previous checkpoint intact (docs/design.md rule 9).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_VERSION = 1
GROUPS = ("params", "ema", "opt", "sampler", "log")


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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


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
    return out
