"""The example scripts in examples/: each runs as its docstring says and writes its PNGs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 10_000  # a figure with axes, text and images; an empty canvas is a few kB
FORWARD_CHAIN_PNGS = ("forward_chain.png", "schedules.png")


def _run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``examples/<script>`` from the repository root, importing the uninstalled source tree."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, str(REPO_ROOT / "examples" / script), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def _assert_pngs(out: Path, names, done: subprocess.CompletedProcess) -> None:
    """Each of ``names`` is in ``out``, starts with the PNG signature, is not tiny, and was printed."""
    assert done.returncode == 0, done.stderr
    for name in names:
        png = out / name
        assert png.is_file(), f"{png} was not written; stdout: {done.stdout}"
        data = png.read_bytes()
        assert data[:8] == PNG_SIGNATURE, f"{png} is not a PNG"
        assert len(data) > MIN_PNG_BYTES, f"{png} has only {len(data)} bytes"
        assert str(png) in done.stdout, f"{png} not printed; stdout: {done.stdout}"


def test_forward_chain_example_writes_both_pngs(tmp_path):
    """``python examples/forward_chain.py --out DIR`` exits 0 and writes forward_chain.png and
    schedules.png to DIR: valid PNG signatures, more than MIN_PNG_BYTES each, paths printed."""
    done = _run_example("forward_chain.py", "--out", str(tmp_path))
    _assert_pngs(tmp_path, FORWARD_CHAIN_PNGS, done)


def test_forward_chain_example_runs_on_strict_fake_device(tmp_path):
    """The same run with ``--backend array_api_strict`` (arrays on a fake non-CPU device, which
    refuses host/device mixing) exits 0 and writes the same two valid, non-trivial PNGs."""
    pytest.importorskip("array_api_strict")
    done = _run_example("forward_chain.py", "--out", str(tmp_path), "--backend", "array_api_strict")
    _assert_pngs(tmp_path, FORWARD_CHAIN_PNGS, done)
