"""The example scripts in examples/: each runs as its docstring says and writes its PNGs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from refdiff.backend import available_backends

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


# The sampler examples: each runs with --quick (small sample counts and step counts, a few seconds) and writes
# its PNGs; the full defaults are what a reader runs by hand (under a minute each on a laptop CPU).
EXAMPLE_PNGS = {
    "toy2d.py": ("trajectories_ddpm.png", "trajectories_ddim.png", "samples.png"),
    "samplers.py": ("samplers_grid.png", "quality_vs_steps.png"),
    "guidance.py": ("guidance.png",),
    "inpainting.py": ("inpainting.png", "sdedit.png"),
    "text_to_image.py": ("text_to_image.png", "text_attention.png"),
    "text_inpainting.py": ("text_inpainting.png",),
    "clip_vs_cfg.py": ("clip_vs_cfg.png", "clip_vs_cfg_samples.png"),
}


@pytest.mark.parametrize("script", sorted(EXAMPLE_PNGS))
def test_sampler_examples_write_their_pngs_quickly(tmp_path, script):
    """``python examples/<script> --quick --out DIR`` exits 0 and writes its PNGs to DIR: valid PNG signatures,
    more than MIN_PNG_BYTES each, paths printed."""
    done = _run_example(script, "--quick", "--out", str(tmp_path))
    _assert_pngs(tmp_path, EXAMPLE_PNGS[script], done)


def test_samplers_example_prints_a_finite_distance_for_every_sampler_and_step_count(tmp_path):
    """The printed table has a row per sampler with one finite sliced-Wasserstein value per step count (5, 10 in
    --quick mode), each above 0, and Heun's row gives its 2n - 1 model calls."""
    done = _run_example("samplers.py", "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.strip()}
    for name in ("DDPM", "DDIM", "Euler", "Heun", "Euler-a", "DPM++(2M)"):
        values = [float(v) for v in rows[name] if not v.startswith("[")]
        assert len(values) == 2 and all(0 < v < 10 for v in values), (name, rows[name])
    assert "[9]" in rows["Heun"] and "[19]" in rows["Heun"]


# The families' examples (docs/families.md): each trains for 2 s with --quick, scores its samples and writes its
# figure (the GANs' loss curves only when the 2 s held enough steps: not checked).
FAMILY_EXAMPLE_PNGS = {
    "vae_digits.py": ("vae_samples.png",), "gan_digits.py": ("gan_samples.png",),
    "flow_digits.py": ("flow_samples.png",), "vae_toy2d.py": ("vae_toy2d.png",),
    "gan_toy2d.py": ("gan_toy2d.png",), "flow_toy2d.py": ("flow_toy2d.png",),
    "families_toy2d.py": ("families_toy2d.png",),
}


@pytest.mark.parametrize("script", sorted(FAMILY_EXAMPLE_PNGS))
def test_family_examples_write_their_pngs_quickly(tmp_path, script):
    """``python examples/<script> --quick --out DIR`` (a VAE, GAN or flow on the digits or a 2-D toy, or all four
    families on a 2-D toy) exits 0 and writes its figure to DIR: a valid PNG signature, more than MIN_PNG_BYTES,
    the path printed."""
    done = _run_example(script, "--quick", "--out", str(tmp_path))
    _assert_pngs(tmp_path, FAMILY_EXAMPLE_PNGS[script], done)


@pytest.mark.parametrize("script", ["toy2d.py", "inpainting.py"])
def test_sampler_examples_run_on_strict_fake_device(tmp_path, script):
    """With ``--backend array_api_strict`` (arrays on a fake non-CPU device, which refuses host/device mixing)
    the 2-D example and the digits example exit 0 and write the same valid PNGs."""
    pytest.importorskip("array_api_strict")
    done = _run_example(script, "--quick", "--out", str(tmp_path), "--backend", "array_api_strict")
    _assert_pngs(tmp_path, EXAMPLE_PNGS[script], done)


@pytest.mark.skipif("cupy" in available_backends(), reason="CuPy runs here: the refusal needs a machine without it")
def test_an_unavailable_backend_ends_an_example_with_one_line(tmp_path):
    """`python examples/toy2d.py --backend cupy` without CuPy exits 1 with one line naming --backend, not a
    traceback, and writes nothing."""
    done = _run_example("toy2d.py", "--backend", "cupy", "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("--backend cupy:") and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
