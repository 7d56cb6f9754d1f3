"""Specification of refdiff.checkpoint: atomic writes under unique temporary names with the folder
flushed after the rename, and the output folder's lock (docs/design.md rule 9)."""

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from refdiff.checkpoint import LOCK_NAME, TMP_SUFFIX, folder_lock, load_checkpoint, save_checkpoint
from refdiff.cli import main

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--data", "toy2d:two_moons", "--preset", "mlp", "--batch-size", "8", "--T", "20",
         "--checkpoint-every", "1"]


def _save(path, step):
    return save_checkpoint(path, {"v": step}, step, np.zeros(6, dtype=np.uint64),
                           {"params": {"w": np.full(50_000, float(step))}})


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    """Two threads rewriting one checkpoint 15 times each all succeed (each writes its own temporary
    file), the file on disk is always one whole version, and no temporary file is left."""
    path, errors = tmp_path / "checkpoint.npz", []

    def writer(offset):
        try:
            for step in range(offset, offset + 15):
                _save(path, step)
        except Exception as err:  # noqa: BLE001 -- collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(k * 100,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ckpt = load_checkpoint(path)
    assert np.all(ckpt["params"]["w"] == ckpt["step"]) and ckpt["config"]["v"] == ckpt["step"]
    assert list(tmp_path.glob("*" + TMP_SUFFIX)) == []


def test_the_folder_is_flushed_after_the_rename(tmp_path, monkeypatch):
    """save_checkpoint fsyncs the temporary file before os.replace and the folder after it, so that
    the rename survives a power cut."""
    events, fsync, replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
                        or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace",)) or replace(a, b))
    _save(tmp_path / "checkpoint.npz", 1)
    assert events == [("fsync", False), ("replace",), ("fsync", True)]


def test_a_held_folder_refuses_a_second_holder_naming_the_folder_and_pid(tmp_path, capsys):
    """While a process holds a folder, folder_lock there fails with FolderLocked naming the folder and
    the holder's pid; nested holds in the holding process are allowed; once released, it is free."""
    with folder_lock(tmp_path), folder_lock(tmp_path):
        holder = subprocess.run([sys.executable, "-c", f"from refdiff.checkpoint import folder_lock\n"
                                 f"with folder_lock({str(tmp_path)!r}): pass"],
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert holder.returncode == 1
        assert f"{tmp_path} is in use by another refdiff run (pid {os.getpid()})" in holder.stderr
    assert (tmp_path / LOCK_NAME).read_text() == ""
    with folder_lock(tmp_path):
        pass
    assert "taking over" not in capsys.readouterr().err


def test_two_trainings_on_one_folder_the_second_is_refused_and_a_killed_holders_lock_is_taken_over(
        tmp_path, capsys):
    """A `refdiff train` running into a folder makes a second one there exit 1 naming the folder and the
    first one's pid, with the checkpoint left loadable; after the first is killed (SIGKILL), its stale
    lock is taken over, its temporary files removed, and --resume continues its checkpoint."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "refdiff"] + TRAIN + ["--steps", "100000", "--out", str(out)],
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert main(TRAIN + ["--steps", "3", "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"{out} is in use by another refdiff run (pid {first.pid})" in err and err.count("\n") == 1
        assert main(TRAIN + ["--steps", "200", "--out", str(out), "--resume"]) == 1
        assert f"in use by another refdiff run (pid {first.pid})" in capsys.readouterr().err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    (out / ("checkpoint.npz.x" + TMP_SUFFIX)).write_bytes(b"half a checkpoint")
    target = max(load_checkpoint(out / "checkpoint.npz")["step"] + 2, 101)  # past the first run's warm-up
    assert main(TRAIN + ["--steps", str(target), "--out", str(out), "--resume"]) == 0
    assert f"taking over the lock of {out} left by pid {first.pid}" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.npz")["step"] == target
    assert list(out.glob("*" + TMP_SUFFIX)) == []



def _mtime(path: Path) -> int:
    """The file's modification time in ns, 0 if it is not there."""
    return path.stat().st_mtime_ns if path.exists() else 0


def test_kill_9_at_random_moments_then_resume_repeats_the_uninterrupted_run(tmp_path):
    """`refdiff train --checkpoint-every 1` killed with SIGKILL at three random moments, each time resumed
    with the same --steps, ends with the parameters, EMA and loss log of one uninterrupted run, bit for
    bit: every kill leaves a loadable checkpoint, and its lock is taken over. A run that finishes before
    its kill lands (the 120 steps can take less than the 0.3 s a kill may wait) ends the kills there."""
    import random

    argv = TRAIN + ["--steps", "120", "--seed", "3"]
    out, env, rng = tmp_path / "killed", {**os.environ, "PYTHONPATH": str(REPO)}, random.Random()
    steps = []
    for kill in range(4):
        before = _mtime(out / "checkpoint.npz")
        resume = ["--resume"] if before else []
        proc = subprocess.Popen([sys.executable, "-m", "refdiff", *argv, "--out", str(out), *resume], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill < 3:
            while _mtime(out / "checkpoint.npz") == before and proc.poll() is None:  # until it trains
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in ((0, -signal.SIGKILL) if kill < 3 else (0,)), err
        steps.append(load_checkpoint(out / "checkpoint.npz")["step"])
        if proc.returncode == 0:
            break
    assert steps[-1] == 120 and steps == sorted(steps), steps
    assert main(argv + ["--out", str(tmp_path / "whole")]) == 0
    killed, whole = load_checkpoint(out / "checkpoint.npz"), load_checkpoint(tmp_path / "whole" / "checkpoint.npz")
    for group in ("params", "ema", "opt", "log"):
        for key in whole[group]:
            np.testing.assert_array_equal(killed[group][key], whole[group][key], err_msg=f"{group}/{key}")
