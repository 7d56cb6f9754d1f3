"""The ``refdiff`` command line (refdiff.cli): version, info, dispatch, ``python -m refdiff``."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import refdiff
from refdiff import __version__
from refdiff.cli import main


def _info_fields(text: str) -> dict[str, list[str]]:
    """``label: value`` lines of ``refdiff info`` as {label: [values]} (BLAS may repeat)."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        label, _, value = line.partition(":")
        fields.setdefault(label.strip(), []).append(value.strip())
    return fields


def test_version_flag_prints_package_version(capsys):
    """``refdiff --version`` prints "refdiff <__version__>" to stdout and returns 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"refdiff {__version__}"


def test_info_reports_numpy_version_and_numpy_backend(capsys):
    """``refdiff info`` returns 0, reports the imported NumPy's version and lists the numpy backend."""
    assert main(["info"]) == 0
    fields = _info_fields(capsys.readouterr().out)
    assert fields["NumPy"] == [np.__version__]
    assert fields["refdiff"] == [__version__]
    assert "numpy" in fields["backends"][0].split(", ")
    assert {"Python", "SciPy", "array-api-compat", "array-api-strict", "CuPy", "BLAS"} <= set(fields)


def test_no_subcommand_prints_help_and_returns_2(capsys):
    """``refdiff`` with no subcommand prints the usage with its subcommands and returns 2."""
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: refdiff")
    assert "info" in err


def test_python_dash_m_refdiff_prints_version():
    """``python -m refdiff --version`` runs the same CLI: prints "refdiff <__version__>", exit 0."""
    # The child imports the refdiff under test (source tree or installed), whatever the cwd.
    package_parent = str(Path(refdiff.__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "refdiff", "--version"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"refdiff {__version__}"


def test_demo_writes_its_figures_samples_and_checkpoint_and_eval_reads_it(tmp_path, capsys):
    """`refdiff demo` (a few steps) writes forward_chain.png, loss_curve.png, samples.png, checkpoint.npz
    and samples.npz with images in [-1, 1] of shape (10 classes * per-class, 1, 8, 8) and their labels;
    `refdiff eval` on that checkpoint reports a finite, positive bits/dim on the digits' held-out split."""
    import numpy as np

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "6", "--per-class", "2", "--sample-steps", "3"]) == 0
    for name in ("forward_chain.png", "loss_curve.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with np.load(out / "samples.npz", allow_pickle=False) as npz:
        assert npz["images"].shape == (20, 1, 8, 8) and np.all(np.abs(npz["images"]) <= 1.0)
        np.testing.assert_array_equal(npz["labels"], np.repeat(np.arange(10), 2))
    assert str(out / "samples.png") in capsys.readouterr().out
    assert main(["eval", str(out / "checkpoint.npz"), "--count", "2", "--batch-size", "2"]) == 0
    report = capsys.readouterr().out
    assert "bits/dim on 2 held-out samples (17 levels" in report
    bpd = float(report.split("levels, fixed_large variance): ")[1].split()[0])
    assert 0 < bpd < float("inf")  # six training steps: a loose but finite bound


def test_train_then_sample_on_a_toy_set_and_resume(tmp_path):
    """`refdiff train --data toy2d:two_moons --preset mlp` writes a checkpoint, `--resume` continues it to
    more steps, and `refdiff sample` turns it into an .npz of labelled 2-D points."""
    import numpy as np

    from refdiff.checkpoint import load_checkpoint

    out = tmp_path / "run"
    common = ["train", "--data", "toy2d:two_moons", "--preset", "mlp", "--batch-size", "32", "--T", "50",
              "--checkpoint-every", "5", "--out", str(out)]
    assert main(common + ["--steps", "5"]) == 0
    assert main(common + ["--steps", "10", "--resume"]) == 0
    assert load_checkpoint(out / "checkpoint.npz")["step"] == 10
    samples = tmp_path / "s.npz"
    assert main(["sample", str(out / "checkpoint.npz"), "--steps", "5", "--count", "3", "--out", str(samples)]) == 0
    with np.load(samples, allow_pickle=False) as npz:
        assert npz["images"].shape == (6, 2) and list(npz["labels"]) == [0, 0, 0, 1, 1, 1]


def test_cli_errors_name_what_to_fix(tmp_path, capsys):
    """Unknown data and a missing checkpoint exit with status 1 and one line on stderr saying what was wrong."""
    assert main(["train", "--data", "mnist", "--out", str(tmp_path)]) == 1
    assert "--data must be digits, shapes, toy2d:NAME or a .npz file" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "none.npz")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_info_model_prints_parameters_and_flops_of_a_preset(capsys):
    """`refdiff info --model mnist28` prints the preset's parameter count and its per-layer multiply-adds."""
    from refdiff.models.presets import PRESETS
    from refdiff.models.unet import param_count

    assert main(["info", "--model", "mnist28"]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {param_count(PRESETS['mnist28']()):,}" in out and "multiply-adds" in out
    assert main(["info", "--model", "unknown"]) == 1
