"""The ``refdiff`` command line (refdiff.cli): version, info, dispatch, ``python -m refdiff``."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import quick_digit_classifier

import refdiff
from refdiff import __version__, parallel, workers
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
    """``refdiff info`` returns 0, reports the imported NumPy's version and lists the numpy backend; its
    BLAS rows differ from each other (each names its library's file); it says how a batch is split."""
    assert main(["info"]) == 0
    fields = _info_fields(capsys.readouterr().out)
    assert fields["NumPy"] == [np.__version__]
    assert fields["refdiff"] == [__version__]
    assert "numpy" in fields["backends"][0].split(", ")
    assert {"Python", "SciPy", "array-api-compat", "array-api-strict", "CuPy", "BLAS"} <= set(fields)
    blas = fields["BLAS"]  # NumPy's and SciPy's wheels each load one: every row names its library file
    assert blas == ["none found"] or all(os.sep in row.rsplit("(", 1)[-1] for row in blas)
    cores = parallel.get_num_threads()
    processes = parallel.get_processes() and workers.startable()
    how = "one part at a time" if cores == 1 else "worker processes" if processes else "threads"
    assert fields["batch parts"] == [f"{cores} cores, {how} (REFDIFF_NUM_THREADS, REFDIFF_PROCESSES)"]


def _info_in_a_fresh_interpreter(env: dict) -> dict[str, list[str]]:
    """``refdiff info``'s fields from ``python -m refdiff info`` run with ``env`` (an OpenBLAS chooses its
    kernel once, when it loads: a fresh interpreter is the only way to see another choice)."""
    package_parent = str(Path(refdiff.__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-m", "refdiff", "info"], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": package_parent}, check=True)
    return _info_fields(done.stdout)


def _kernels(fields: dict[str, list[str]]) -> set[str]:
    return {row.split(", kernel ")[1].split(" ")[0].rstrip(",") for row in fields["BLAS"] if row.startswith("openblas")}


def test_info_names_the_openblas_kernel_and_the_variable_that_chose_it():
    """Every OpenBLAS row of ``refdiff info`` names its kernel; where OPENBLAS_CORETYPE chose it (this
    machine's environment, or else Sandybridge, AVX only, set here), the rows name the variable and a
    "BLAS alone" row names the kernel OpenBLAS picks without it: the one the rows name when nothing is
    forced (docs/performance.md, "The BLAS kernel"). The environment's own setting is kept."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the kernel forced here, Sandybridge, is an x86-64 kernel")
    fields = _info_in_a_fresh_interpreter(dict(os.environ))
    if not _kernels(fields):
        pytest.skip("NumPy's BLAS here is not OpenBLAS")
    assert len(_kernels(fields)) == 1, fields["BLAS"]  # NumPy's and SciPy's OpenBLAS load the same kernel
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced is None:
        assert "BLAS alone" not in fields, fields
        own = _kernels(fields).pop()
        forced = "Sandybridge"
        fields = _info_in_a_fresh_interpreter({**os.environ, "OPENBLAS_CORETYPE": forced})
        assert _kernels(fields) == {forced}, fields["BLAS"]
        assert fields["BLAS alone"][0].startswith(f"kernel {own} (without OPENBLAS_CORETYPE, "), fields
    assert all(f"(OPENBLAS_CORETYPE={forced}" in row for row in fields["BLAS"] if row.startswith("openblas")), fields
    assert fields["BLAS alone"][0].startswith("kernel "), fields


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
    and samples.npz with images in [-1, 1] of shape (10 classes * per-class, 1, 8, 8) and their labels, and
    metrics.json with the samples' Frechet distance, its floor and the class fraction, which it prints;
    `refdiff eval` on that checkpoint reports a finite, positive bits/dim on the digits' held-out split."""
    import json

    import numpy as np

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "6", "--per-class", "2", "--sample-steps", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"fd", "fd_floor", "fd_real", "class_fraction", "classifier_test_accuracy", "demo_seconds"} <= set(metrics)
    assert metrics["samples"] == 20 and metrics["held_out"] == 180 and 0 <= metrics["class_fraction"] <= 1
    assert all(np.isfinite(metrics[k]) and metrics[k] >= 0 for k in ("fd", "fd_floor", "fd_real"))
    for name in ("forward_chain.png", "loss_curve.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with np.load(out / "samples.npz", allow_pickle=False) as npz:
        assert npz["images"].shape == (20, 1, 8, 8) and np.all(np.abs(npz["images"]) <= 1.0)
        np.testing.assert_array_equal(npz["labels"], np.repeat(np.arange(10), 2))
    printed = capsys.readouterr().out
    assert str(out / "samples.png") in printed and str(out / "metrics.json") in printed
    assert "Frechet distance, 20 samples vs 180 held-out digits:" in printed and "class fraction" in printed
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


def test_train_sample_and_eval_on_a_folder_of_images(tmp_path):
    """`refdiff train --data FOLDER --image-size 8`: RGB 12x12 PNGs in two class subfolders, resized to
    8x8, train the digits8 U-Net fitted to 3 channels with 2 classes; `refdiff sample` gives (n, 3, 8, 8)
    images in [-1, 1] with their labels; `refdiff eval --data FOLDER --image-size 8` a finite bits/dim."""
    from PIL import Image

    from refdiff.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    for k, name in enumerate(("cats", "dogs")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) // (k + 1)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    folder, out = str(tmp_path / "images"), tmp_path / "run"
    assert main(["train", "--data", folder, "--image-size", "8", "--preset", "digits8", "--steps", "2",
                 "--batch-size", "4", "--T", "10", "--out", str(out)]) == 0
    model = load_checkpoint(out / "checkpoint.npz")["config"]["model"]
    assert (model["in_channels"], model["out_channels"], model["image_size"], model["num_classes"]) == (3, 3, 8, 2)
    assert main(["sample", str(out / "checkpoint.npz"), "--steps", "3", "--count", "2",
                 "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz", allow_pickle=False) as npz:
        assert npz["images"].shape == (4, 3, 8, 8) and np.all(np.abs(npz["images"]) <= 1)
        assert list(npz["labels"]) == [0, 0, 1, 1]
    assert main(["eval", str(out / "checkpoint.npz"), "--data", folder, "--image-size", "8", "--count", "2"]) == 0


def test_train_resume_takes_the_checkpoints_settings_and_never_overwrites_without_it(tmp_path, capsys):
    """`refdiff train --resume` continues with the checkpoint's settings and model for every flag left out
    (--T, --lr, --batch-size, --preset), takes the given ones that may change (--steps, --lr), and names a
    given one that may not (--T) or data of another shape; without --resume an existing checkpoint is
    refused and left as it was."""
    from refdiff.checkpoint import load_checkpoint

    out = tmp_path / "run"
    first = ["train", "--data", "toy2d:two_moons", "--preset", "mlp", "--T", "20", "--lr", "1e-3", "--batch-size", "8",
             "--steps", "3", "--out", str(out)]
    assert main(first) == 0
    before = (out / "checkpoint.npz").read_bytes()
    assert main(first) == 1
    assert "checkpoint.npz exists: resume it, or train into another folder" in capsys.readouterr().err
    assert (out / "checkpoint.npz").read_bytes() == before
    resume = ["train", "--data", "toy2d:two_moons", "--out", str(out), "--resume"]
    assert main(resume + ["--steps", "5"]) == 0
    ckpt = load_checkpoint(out / "checkpoint.npz")
    settings = ckpt["config"]["train"]
    assert (ckpt["step"], settings["T"], settings["lr"], settings["batch_size"]) == (5, 20, 1e-3, 8)
    assert ckpt["config"]["model"]["kind"] == "MLPConfig"
    assert main(resume + ["--steps", "6", "--lr", "5e-4"]) == 0
    assert load_checkpoint(out / "checkpoint.npz")["config"]["train"]["lr"] == 5e-4
    capsys.readouterr()
    assert main(resume + ["--steps", "7", "--T", "30"]) == 1
    assert "cannot resume a checkpoint trained with other settings (checkpoint -> this run): T 20 -> 30" in \
        capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--steps", "7", "--data", "digits"]) == 1
    assert "sample shape (2,) -> (1, 8, 8)" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.npz")["step"] == 6


def test_cli_errors_name_what_to_fix(tmp_path, capsys):
    """Unknown data, a preset for the other kind of data, a missing checkpoint and demo settings that would
    fail after training exit with status 1 and one line on stderr saying what was wrong."""
    assert main(["train", "--data", "mnist", "--out", str(tmp_path)]) == 1
    assert "--data must be digits, shapes, toy2d:NAME, a .npz file or a folder of images" in capsys.readouterr().err
    assert main(["train", "--data", "toy2d:two_moons", "--preset", "digits8", "--out", str(tmp_path)]) == 1
    assert "--preset digits8 is a U-Net for images (N, C, H, W), but --data gives samples of shape (2,): use " \
           "--preset mlp for points" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--preset", "mlp", "--out", str(tmp_path)]) == 1
    assert "--preset mlp takes points (N, D), but --data gives samples of shape (1, 8, 8)" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "none.npz")]) == 1
    assert "does not exist" in capsys.readouterr().err
    for extra, message in [(["--per-class", "0"], "--per-class must be an integer in [1, 100000], got 0"),
                           (["--sample-steps", "0"], "--sample-steps must be an integer in [1, 1000] for ddim"),
                           (["--guidance", "-1"], "--guidance must be a finite number >= 0")]:
        assert main(["demo", "--out", str(tmp_path / "demo"), *extra]) == 1  # before training, not after
        assert message in capsys.readouterr().err


def test_sample_and_eval_errors_name_the_option_and_its_range(tmp_path, capsys):
    """`refdiff sample` refuses a class the model lacks, --class for an unconditional model, --count 0 and
    an --out that is neither .png nor .npz; `refdiff eval` a --count or --batch-size below 1: exit 1, one
    line naming the option and what it allows."""
    cond, uncond = tmp_path / "cond" / "checkpoint.npz", tmp_path / "uncond" / "checkpoint.npz"
    for data, ckpt in (("toy2d:two_moons", cond), ("toy2d:swiss_roll", uncond)):  # labelled, unlabelled
        assert main(["train", "--data", data, "--preset", "mlp", "--steps", "1", "--batch-size", "4", "--T", "5",
                     "--out", str(ckpt.parent)]) == 0
    capsys.readouterr()
    for ckpt, extra, message in [(cond, ["--class", "2"], "--class must be in [0, 1] (the model's 2 classes), got 2"),
                                 (cond, ["--class", "-1"], "--class must be in [0, 1]"),
                                 (uncond, ["--class", "0"], "--class 0 needs a class-conditional model"),
                                 (cond, ["--count", "0"], "--count must be an integer in [1, 100000], got 0"),
                                 (cond, ["--out", "s.txt"], "--out must end in .png (a grid) or .npz")]:
        assert main(["sample", str(ckpt), "--steps", "2", *extra]) == 1
        assert message in capsys.readouterr().err, extra
    for option in ("--count", "--batch-size"):
        assert main(["eval", str(cond), option, "0"]) == 1
        assert f"{option} must be an integer >= 1, got 0" in capsys.readouterr().err


def test_info_model_prints_parameters_and_flops_of_a_preset(capsys):
    """`refdiff info --model mnist28` prints the preset's parameter count and its per-layer multiply-adds;
    so does a classifier preset (its encoder's layers and the linear head, no decoder)."""
    from refdiff.models import classifier
    from refdiff.models.presets import CLASSIFIER_PRESETS, PRESETS
    from refdiff.models.unet import param_count

    assert main(["info", "--model", "mnist28"]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {param_count(PRESETS['mnist28']()):,}" in out and "multiply-adds" in out
    assert main(["info", "--model", "shapes32_classifier"]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {classifier.param_count(CLASSIFIER_PRESETS['shapes32_classifier']()):,}" in out
    assert "out.linear" in out and "up." not in out
    assert main(["info", "--model", "unknown"]) == 1
    assert "mnist28_classifier" in capsys.readouterr().err


def test_eval_samples_reports_frechet_distance_floor_and_class_fraction(tmp_path, capsys):
    """`refdiff eval --samples FILE` on an .npz of labelled 8x8 images (here 30 held-out digits) prints the
    Frechet distance vs the held-out digits, its floor, the class-matched real-digit reference, the class
    fraction and the classifier's accuracy; with the held-out split itself the distance is 0. Unlabelled
    samples (refdiff sample of an unconditional model writes empty labels) get no class fraction."""
    import numpy as np

    from refdiff.digits_eval import digit_classifier, digit_split

    classifier = quick_digit_classifier(tmp_path / "classifier.npz")
    _, x_test, _, y_test = digit_split()
    np.savez(tmp_path / "s.npz", images=x_test[:30], labels=y_test[:30])
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--classifier", str(classifier)]) == 0
    lines = dict(line.rsplit(":", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert set(lines) == {"Frechet distance, 30 samples vs 180 held-out digits",
                          "  floor: two class-stratified halves of the held-out digits",
                          "  30 real training digits (of the samples' class counts) vs held-out",
                          "class fraction: samples classified as their label", "digit classifier's held-out accuracy"}
    predicted = digit_classifier(classifier).predict(x_test[:30])
    assert float(lines["class fraction: samples classified as their label"].strip(" %")) == \
        round(100 * np.mean(predicted == y_test[:30]), 2)
    np.savez(tmp_path / "all.npz", images=x_test, labels=np.asarray([]))
    assert main(["eval", "--samples", str(tmp_path / "all.npz"), "--classifier", str(classifier)]) == 0
    lines = dict(line.rsplit(":", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert not any("class fraction" in label for label in lines)
    assert float(lines["Frechet distance, 180 samples vs 180 held-out digits"]) == 0.0
    assert "  180 real training digits (at random) vs held-out" in lines


def test_eval_errors_name_what_to_fix(tmp_path, capsys):
    """`refdiff eval` with neither a checkpoint nor --samples, a missing samples file, an .npz without images,
    samples that are not 8x8 digits and --samples with other data exit with status 1 and say why."""
    import numpy as np

    assert main(["eval"]) == 1
    assert "give a checkpoint" in capsys.readouterr().err
    assert main(["eval", "--samples", str(tmp_path / "none.npz")]) == 1
    assert "does not exist" in capsys.readouterr().err
    np.savez(tmp_path / "x.npz", x=np.zeros((4, 2)))
    assert main(["eval", "--samples", str(tmp_path / "x.npz")]) == 1
    assert "must hold an 'images' array" in capsys.readouterr().err
    np.savez(tmp_path / "p.npz", images=np.zeros((4, 2), np.float32), labels=np.zeros(4, np.int64))
    classifier = quick_digit_classifier(tmp_path / "classifier.npz")
    assert main(["eval", "--samples", str(tmp_path / "p.npz"), "--classifier", str(classifier)]) == 1
    assert r"samples must be (N, 1, 8, 8)" in capsys.readouterr().err
    assert main(["eval", "--samples", str(tmp_path / "p.npz"), "--data", "d.npz"]) == 1
    assert "--samples needs --data digits" in capsys.readouterr().err


def test_eval_samples_of_2d_data_reports_distances_next_to_their_floor(tmp_path, capsys):
    """`refdiff eval --samples FILE --data toy2d:NAME` scores (n, 2) points against n fresh points of NAME:
    points of the distribution itself land near the floor; points shifted by 1 are far above it; points that
    are not (n, 2) are refused."""
    from refdiff.data import load_toy2d

    def distances(points: np.ndarray) -> dict[str, tuple[float, float]]:
        np.savez(tmp_path / "p.npz", images=points.astype(np.float32), labels=np.asarray([]))
        assert main(["eval", "--samples", str(tmp_path / "p.npz"), "--data", "toy2d:swiss_roll"]) == 0
        rows = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
        return {label: (float(v.split(" (floor ")[0]), float(v.split(" (floor ")[1].rstrip(")")))
                for label, v in (row.rsplit(": ", 1) for row in rows)}

    same = load_toy2d("swiss_roll", 400, seed=7, dtype=np.float64)[0]
    near = distances(same)
    far = distances(same + 1.0)
    for label, (value, floor) in near.items():
        assert far[label][1] == floor                       # the floor depends only on n and the seed
        assert value < 3 * abs(floor) + 0.02 < far[label][0]
    np.savez(tmp_path / "q.npz", images=np.zeros((4, 1, 8, 8), np.float32))
    assert main(["eval", "--samples", str(tmp_path / "q.npz"), "--data", "toy2d:swiss_roll"]) == 1
    assert "must hold (n, 2) points" in capsys.readouterr().err


def test_train_on_captions_then_sample_prompts_with_guidance(tmp_path, capsys):
    """`refdiff train --data captions` trains the text16 preset; `refdiff sample --prompt ... --guidance 3`
    samples it per prompt (a prompt, or a file of one a line) into an .npz of images and prompts (a str
    array, no pickle) or a .png grid; --class, unknown words and a label preset on captions exit with 1 and
    say what to fix."""
    out = tmp_path / "text"
    assert main(["train", "--data", "captions", "--steps", "2", "--batch-size", "4", "--T", "20",
                 "--out", str(out)]) == 0
    ckpt = str(out / "checkpoint.npz")
    listed = tmp_path / "prompts.txt"
    listed.write_text("blue ring\n\nlarge cyan square top right\n")
    common = ["sample", ckpt, "--prompt", "small red circle top left", "--prompt", str(listed), "--count", "2",
              "--steps", "2", "--guidance", "3"]
    assert main(common + ["--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz", allow_pickle=False) as npz:
        assert npz["images"].shape == (6, 3, 16, 16) and np.all(np.isfinite(npz["images"]))
        assert list(npz["prompts"]) == ["small red circle top left"] * 2 + ["blue ring"] * 2 + \
            ["large cyan square top right"] * 2
    assert main(common + ["--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    quick = ["--steps", "2", "--out", str(tmp_path / "e.png")]
    for argv, message in [(["sample", ckpt, "--class", "1", *quick], "--class 1 needs a class-conditional model"),
                          (["sample", ckpt, "--prompt", "purple circle", *quick], "unknown word 'purple'"),
                          (["train", "--data", "captions", "--preset", "digits8", "--out", str(tmp_path / "x")],
                           "--data captions trains a text preset (text16)")]:
        assert main(argv) == 1
        assert message in capsys.readouterr().err


def test_info_model_reports_the_text_preset(capsys):
    """`refdiff info --model text16` prints the text U-Net's config, parameters and every layer's
    multiply-adds, the encoder's and the attention blocks' context keys included."""
    assert main(["info", "--model", "text16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("TextUNetConfig(") and "parameters: 907,651" in out
    assert "text.blocks.1.attention" in out and "mid.attn.context" in out


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """A 2-step MLP checkpoint on two_moons (labelled), and a good samples .npz of 8x8 digits."""
    from refdiff.digits_eval import digit_split

    folder = tmp_path_factory.mktemp("toy")
    assert main(["train", "--data", "toy2d:two_moons", "--preset", "mlp", "--steps", "2", "--batch-size", "4",
                 "--T", "5", "--out", str(folder / "run")]) == 0
    _, x_test, _, y_test = digit_split()
    np.savez(folder / "digits.npz", images=x_test[:20], labels=y_test[:20])
    return folder / "run" / "checkpoint.npz", folder / "digits.npz"


def _one_line_error(capsys, *names) -> str:
    """The stderr of a failed command: one line, no traceback, naming one of ``names``."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert any(str(name) in err for name in names), (err, names)
    return err


def test_image_size_resizes_npz_data_and_is_refused_where_it_resizes_nothing(tmp_path, toy_checkpoint, capsys):
    """`refdiff train --data FILE.npz --image-size 8` on 16x16 images trains at 8x8 (the checkpoint records
    samples of (1, 8, 8) and the U-Net fitted to 8), and `eval --data FILE.npz --image-size 8` scores it.
    --image-size below 1, with built-in data (digits, shapes, toy2d) or with eval --samples alone (which it
    would not resize) is refused in one line naming the flag."""
    from refdiff.checkpoint import load_checkpoint
    from refdiff.data import load_digits

    x, y = load_digits()
    k16 = np.repeat(np.repeat(np.round((x[:12] + 1) * 127.5).astype(np.uint8), 2, axis=2), 2, axis=3)
    np.savez(tmp_path / "d16.npz", x=k16, y=y[:12])
    data, out = str(tmp_path / "d16.npz"), tmp_path / "run"
    train = ["train", "--steps", "2", "--batch-size", "4", "--T", "5", "--out", str(out)]
    assert main(train + ["--data", data, "--image-size", "8"]) == 0
    config = load_checkpoint(out / "checkpoint.npz", arrays=False)["config"]
    assert config["data_shape"] == [1, 8, 8] and config["model"]["image_size"] == 8
    assert main(["eval", str(out / "checkpoint.npz"), "--data", data, "--image-size", "8", "--count", "2"]) == 0
    samples = toy_checkpoint[1]
    for argv in (train + ["--data", data, "--image-size", "0"], train + ["--data", "digits", "--image-size", "8"],
                 train + ["--data", "shapes", "--image-size", "8"],
                 train + ["--data", "toy2d:two_moons", "--preset", "mlp", "--image-size", "8"],
                 ["eval", str(out / "checkpoint.npz"), "--image-size", "8"],
                 ["eval", "--samples", str(samples), "--image-size", "8"]):
        capsys.readouterr()
        assert main(argv) == 1, argv
        _one_line_error(capsys, "--image-size")


def test_eval_refuses_data_of_another_shape_than_the_checkpoints(tmp_path, toy_checkpoint, capsys):
    """`refdiff eval` of an 8x8 digits8 checkpoint on 16x16 images (--data FILE.npz) is refused in one line
    naming --data and both shapes, with --image-size as the way out; so is a 2-D points model on the digits."""
    from refdiff.data import load_digits

    x = load_digits()[0][:8]
    np.savez(tmp_path / "d16.npz", x=np.repeat(np.repeat(x, 2, axis=2), 2, axis=3))
    out = tmp_path / "run"
    assert main(["train", "--steps", "2", "--batch-size", "4", "--T", "5", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoint.npz"), "--data", str(tmp_path / "d16.npz"), "--count", "2"]) == 1
    err = _one_line_error(capsys, f"--data {tmp_path / 'd16.npz'} gives samples of shape (1, 16, 16)")
    assert "trained on samples of shape (1, 8, 8)" in err and "--image-size" in err
    assert main(["eval", str(toy_checkpoint[0]), "--count", "2"]) == 1
    err = _one_line_error(capsys, "--data digits gives samples of shape (1, 8, 8)")
    assert "trained on samples of shape (2,)" in err


def test_eval_samples_must_lie_in_minus_one_to_one_and_zero_to_one_needs_its_flag(tmp_path, toy_checkpoint,
                                                                                   capsys):
    """`refdiff eval --samples` of digits in [0, 1], (x + 1) / 2, is refused in one line naming the file, the
    range found, the map 2 x - 1 and --samples-range 01; with --samples-range 01 it prints the very report of
    the same digits in [-1, 1], and with --samples-range pm1 it scores them as they are. Samples beyond
    [-1, 1] (1.5 x), and [-1, 1] samples given as 01, are refused naming the file and the range found;
    --samples-range where there are no digit samples to read is refused naming it."""
    from refdiff.digits_eval import digit_split

    _, x_test, _, y_test = digit_split()
    for name, images in (("signed", x_test[:30]), ("unit", (x_test[:30] + 1) / 2), ("wide", 1.5 * x_test[:30])):
        np.savez(tmp_path / f"{name}.npz", images=images, labels=y_test[:30])
    signed, unit, wide = (str(tmp_path / f"{name}.npz") for name in ("signed", "unit", "wide"))
    assert main(["eval", "--samples", signed]) == 0
    report = capsys.readouterr().out
    assert main(["eval", "--samples", unit]) == 1
    err = _one_line_error(capsys, f"--samples {unit}: its values lie in [0, 1], none below 0")
    assert "2 x - 1" in err and "--samples-range 01" in err
    assert main(["eval", "--samples", unit, "--samples-range", "01"]) == 0
    assert capsys.readouterr().out == report
    assert main(["eval", "--samples", unit, "--samples-range", "pm1"]) == 0
    assert capsys.readouterr().out != report
    assert main(["eval", "--samples", wide]) == 1
    _one_line_error(capsys, f"--samples {wide}: samples must lie in [-1, 1] (the digits' range, refdiff sample's), "
                            "got values in [-1.5, 1.5]")
    assert main(["eval", "--samples", signed, "--samples-range", "01"]) == 1
    _one_line_error(capsys, f"--samples {signed}: --samples-range 01 takes images in [0, 1], got values in [-1, 1]")
    for argv in (["eval", str(toy_checkpoint[0]), "--samples-range", "01"],
                 ["eval", "--samples", signed, "--data", "toy2d:two_moons", "--samples-range", "pm1"]):
        assert main(argv) == 1
        _one_line_error(capsys, "--samples-range")


def test_corrupt_truncated_empty_and_foreign_files_get_one_line_naming_the_file(tmp_path, toy_checkpoint, capsys):
    """Every command that reads a checkpoint, a samples file or a classifier (sample, eval, eval --samples,
    eval --classifier, train --resume) answers an empty, truncated, bit-flipped, text, .npy, object-array,
    non-JSON-config, model-less, unknown-field or wrong-shape file, or a folder, with exit 1 and one line
    naming the file (or its flag), and writes nothing."""
    import shutil

    from support import malformed_files

    checkpoint, digits = toy_checkpoint
    capsys.readouterr()
    for name, bad in malformed_files(tmp_path / "bad", checkpoint).items():
        run = tmp_path / f"resume_{name}"
        run.mkdir()
        (shutil.copytree if bad.is_dir() else shutil.copy)(bad, run / "checkpoint.npz")
        commands = [(["sample", str(bad), "--steps", "2", "--out", str(tmp_path / "s.npz")], bad),
                    (["eval", str(bad), "--count", "2"], bad),
                    (["eval", "--samples", str(bad)], "--samples"),
                    (["eval", "--samples", str(digits), "--classifier", str(bad)], "--classifier"),
                    (["train", "--resume", "--data", "toy2d:two_moons", "--out", str(run)], run / "checkpoint.npz")]
        for argv, named in commands:
            assert main(argv) == 1, (name, argv)
            _one_line_error(capsys, bad, named)
        assert not (tmp_path / "s.npz").exists()


def test_output_paths_are_checked_before_the_work(tmp_path, toy_checkpoint, capsys):
    """An --out that is a folder, the checkpoint itself, an existing file (without --force), in a missing
    folder or under a file, an empty --out, and an eval --classifier FILE that cannot be written are refused
    at once with one line naming the flag; nothing is written and no classifier is trained. --force
    replaces an existing samples file."""
    checkpoint, digits = toy_checkpoint
    before = checkpoint.read_bytes()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "old.npz").write_bytes(b"keep")
    sample = ["sample", str(checkpoint), "--steps", "2", "--count", "2", "--out"]
    for out, message in [(str(tmp_path) + "/dir.npz", "a folder"), (str(checkpoint), "is an input of this command"),
                         (str(tmp_path / "old.npz"), "exists: give --force to replace it"),
                         (str(tmp_path / "none" / "s.npz"), "does not exist"),
                         (str(tmp_path / "a_file" / "s.npz"), "does not exist")]:
        (tmp_path / "dir.npz").mkdir(exist_ok=True)
        assert main(sample + [out]) == 1
        assert message in _one_line_error(capsys, "--out"), out
    assert checkpoint.read_bytes() == before and (tmp_path / "old.npz").read_bytes() == b"keep"
    assert main(sample + [str(tmp_path / "old.npz"), "--force"]) == 0
    assert np.load(tmp_path / "old.npz")["images"].shape == (4, 2)
    for argv in (["train", "--out", ""], ["demo", "--out", ""], ["train", "--out", str(tmp_path / "a_file")],
                 ["demo", "--out", str(tmp_path / "a_file" / "sub")]):
        assert main(argv) == 1
        _one_line_error(capsys, "--out")
    for bad in (tmp_path / "dir.npz", tmp_path / "none" / "c.npz"):
        assert main(["eval", "--samples", str(digits), "--classifier", str(bad)]) == 1  # before 800 steps
        _one_line_error(capsys, "--classifier")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "dir.npz", "old.npz"]


def test_unclear_cases_get_messages_that_say_what_to_type(tmp_path, toy_checkpoint, capsys):
    """sample --eta 5 names --eta and [0, 1]; a folder given as a checkpoint says so and points at the
    checkpoint inside; train --resume with --steps at or below the checkpoint's step, or inside its
    warm-up, says so and what to give; a resume to more steps than the run began with says what it keeps
    and that it differs from a run started that long."""
    checkpoint, _ = toy_checkpoint
    assert main(["sample", str(checkpoint), "--eta", "5", "--out", str(tmp_path / "s.npz")]) == 1
    assert "--eta must be a number in [0, 1]" in _one_line_error(capsys, "--eta")
    assert main(["sample", str(checkpoint.parent), "--out", str(tmp_path / "s.npz")]) == 1
    assert f"is a folder, not an .npz file: did you mean {checkpoint}?" in _one_line_error(capsys, checkpoint.parent)
    out = tmp_path / "run"
    common = ["train", "--data", "toy2d:two_moons", "--preset", "mlp", "--batch-size", "4", "--T", "5", "--out",
              str(out)]
    assert main(common + ["--steps", "20"]) == 0  # warm-up: 19 steps
    for steps, message in [("20", "is at step 20 already; give --steps greater than 20"),
                           ("10", "is at step 20 already; give --steps greater than 20")]:
        assert main(common + ["--resume", "--steps", steps]) == 1
        assert message in _one_line_error(capsys, "--steps")
    capsys.readouterr()
    assert main(common + ["--resume", "--steps", "22"]) == 0
    said = capsys.readouterr().out
    assert "at step 20: training to step 22 (it was started for 20); the warm-up stays 19 steps" in said
    assert "differs from a run started with --steps 22" in said


def test_resume_inside_the_warm_up_says_what_to_give(tmp_path, capsys):
    """A run stopped at step 3 of a 320-step run (warm-up 100) resumed with --steps 50 is told that 50
    ends inside the warm-up and to give more than 100 (not "warmup_steps must be < steps")."""
    from refdiff.train import TrainConfig, train
    from refdiff.models.mlp import MLPConfig
    from refdiff.data import load_toy2d

    x, y = load_toy2d("two_moons", 200, seed=0)
    train(TrainConfig(steps=320, batch_size=4, T=5), MLPConfig(num_classes=2), x, y, tmp_path, stop_at=3,
          progress=False)
    assert main(["train", "--data", "toy2d:two_moons", "--out", str(tmp_path), "--resume", "--steps", "50"]) == 1
    assert "--steps 50 ends inside the run's learning-rate warm-up of 100 steps (set when it started); give " \
           "--steps greater than 100" in _one_line_error(capsys, "--steps")


def test_help_progress_bars_and_a_closed_pipe(tmp_path, capsys):
    """`sample --help` shows the defaults of --sampler, --steps and --count; `demo --help` lists all six
    outputs; training writes no progress bar when stderr is not a terminal; `refdiff info | head -1` ends
    without a traceback (a subprocess: the pipe is the point)."""
    assert main(["sample", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(s in text for s in ("the sampler (default: ddim)", "sampling steps (default: 50)", "(default: 10)"))
    assert main(["demo", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in ("forward_chain.png", "checkpoint.npz", "loss_curve.png", "samples.png",
                                         "samples.npz", "metrics.json"))
    assert main(["train", "--data", "toy2d:two_moons", "--preset", "mlp", "--steps", "3", "--batch-size", "4",
                 "--T", "5", "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().err == ""
    package_parent = str(Path(refdiff.__file__).resolve().parent.parent)
    done = subprocess.run(f"{sys.executable} -m refdiff info --model digits8 | head -1", shell=True,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": package_parent})
    assert done.stdout.count("\n") == 1 and "Traceback" not in done.stderr and "Broken" not in done.stderr


def test_demo_writes_only_into_a_new_empty_or_earlier_demo_folder(tmp_path, toy_checkpoint, capsys):
    """`refdiff demo --out DIR` refuses, before training, a folder holding a train run's checkpoint (no
    metrics.json beside it) or any file that is not a demo output, naming one; it accepts a new folder,
    an empty one and an earlier demo's, saying which files it replaces; --force lets it write anyway."""
    import shutil

    from refdiff.demo import OUTPUTS, check_demo_folder

    checkpoint, _ = toy_checkpoint
    train_run, user = tmp_path / "train_run", tmp_path / "user"
    shutil.copytree(checkpoint.parent, train_run)
    user.mkdir()
    (user / "thesis.tex").write_text("keep")
    for folder, named in ((train_run, "checkpoint.npz (without a demo's metrics.json)"), (user, "thesis.tex")):
        before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        assert main(["demo", "--out", str(folder), "--steps", "2"]) == 1
        assert named in _one_line_error(capsys, "--out")
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
        check_demo_folder(folder, force=True)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for name in OUTPUTS:
        (earlier / name).write_bytes(b"")
    for folder in (tmp_path / "new", tmp_path / "empty", earlier):
        check_demo_folder(folder)
    assert f"replacing the earlier demo's {', '.join(OUTPUTS)} in {earlier}" in capsys.readouterr().out


def test_demo_task_text_writes_its_files_and_names_its_flags(tmp_path, capsys):
    """`refdiff demo --task text` (a few steps, one sample a prompt) writes the text demo's outputs, its
    metrics with seen and held-out compositions apart; --per-prompt 0 and a folder holding a digits demo's
    forward chain are refused before training, naming the flag."""
    import json

    from refdiff.demo import TEXT_OUTPUTS

    out = tmp_path / "text"
    assert main(["demo", "--task", "text", "--out", str(out), "--steps", "2", "--per-prompt", "1",
                 "--sample-steps", "2"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != ".refdiff.lock") == sorted(TEXT_OUTPUTS)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seen"]["named"]["all"] == 8 and metrics["held_out"]["named"]["all"] == 4
    assert "held-out compositions" in capsys.readouterr().out
    assert main(["demo", "--task", "text", "--out", str(tmp_path / "t2"), "--per-prompt", "0"]) == 1
    assert "--per-prompt must be an integer in [1, 100000], got 0" in _one_line_error(capsys, "--per-prompt")
    (out / "forward_chain.png").write_bytes(b"")
    assert main(["demo", "--task", "text", "--out", str(out), "--steps", "2"]) == 1
    assert "forward_chain.png" in _one_line_error(capsys, "--out")


def test_sizes_beyond_the_limits_or_the_memory_are_refused_naming_the_flag(tmp_path, toy_checkpoint, capsys,
                                                                            monkeypatch):
    """--batch-size 1e9, --T 1e9, sample --count 1e8, euler --steps 1e8 and a label of 200000 are refused at
    once naming the flag and its range; a batch, a sample count or an image size whose work cannot fit
    in the memory available (here 64 MiB, or the machine's for 2 images of 100000 x 100000, in a folder or an
    .npz) is refused before it starts, naming the flag to lower. Nothing is written."""
    from PIL import Image

    import refdiff.memory

    checkpoint, _ = toy_checkpoint
    np.savez(tmp_path / "labels.npz", x=np.full((4, 1, 8, 8), -1, np.float32), y=np.array([0, 1, 2, 200000]))
    np.savez(tmp_path / "two.npz", x=np.zeros((2, 4, 4), np.uint8))
    for name in ("a", "b"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{name}.png")
    train = ["train", "--out", str(tmp_path / "run"), "--steps", "2"]
    cases = [(train + ["--batch-size", "1000000000"], "--batch-size must be an integer in [1, 65536]"),
             (train + ["--T", "1000000000"], "--T must be an integer in [1, 100000], got 1000000000"),
             (train + ["--data", str(tmp_path / "labels.npz")], "its labels reach 200000, but a model takes at most"),
             (train + ["--data", str(tmp_path), "--image-size", "100000"],
              "reading 2 images of 100000x100000 (height x width) needs about"),
             (train + ["--data", str(tmp_path / "two.npz"), "--image-size", "100000"],
              "resizing 2 images to 100000x100000 (height x width) needs about"),
             (["sample", str(checkpoint), "--count", "100000000"], "--count must be an integer in [1, 100000]"),
             (["sample", str(checkpoint), "--sampler", "euler", "--steps", "100000000"],
              "steps must be an integer in [1, 10000] for euler")]
    for argv, message in cases:
        assert main(argv) == 1
        assert message in _one_line_error(capsys, message), argv
    monkeypatch.setattr(refdiff.memory, "available_memory", lambda: 64 << 20)
    assert main(train + ["--batch-size", "4096"]) == 1
    assert "a training step of batch size 4096 on samples of shape (1, 8, 8) needs about" in \
        _one_line_error(capsys, "lower the batch size (--batch-size)")
    assert main(["sample", str(checkpoint), "--count", "100000", "--steps", "2", "--out", str(tmp_path / "s.npz")]) == 1
    assert "sampling 200000 samples of shape (2,) at once needs about" in _one_line_error(capsys, "(--count)")
    assert not (tmp_path / "run" / "checkpoint.npz").exists() and not (tmp_path / "s.npz").exists()


def test_resume_without_data_trains_on_the_data_the_checkpoint_recorded(tmp_path, capsys, monkeypatch):
    """A run started on a user's .npz of 8x8 images (the digits' shape) records its absolute path; `train
    --resume` without --data, from another folder, trains on that file (and says so), not on the digits."""
    import refdiff.cli.train as cli
    from refdiff.checkpoint import load_checkpoint

    x = np.linspace(-1, 1, 6 * 64, dtype=np.float32).reshape(6, 1, 8, 8)
    np.savez(tmp_path / "mine.npz", x=x)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "mine.npz", "--steps", "2", "--batch-size", "2", "--T", "5", "--out", "run"]) == 0
    source = load_checkpoint(tmp_path / "run" / "checkpoint.npz")["config"]["data_source"]
    assert source == {"data": str(tmp_path / "mine.npz"), "image_size": None}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = []
    load = cli._load_dataset
    monkeypatch.setattr(cli, "_load_dataset", lambda spec, *a: loaded.append(spec) or load(spec, *a))
    capsys.readouterr()
    assert main(["train", "--resume", "--steps", "3", "--out", str(tmp_path / "run")]) == 0
    assert loaded == [str(tmp_path / "mine.npz")]
    assert f"resuming on --data {tmp_path / 'mine.npz'} (recorded in the checkpoint)" in capsys.readouterr().out


def test_readme_other_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """The README's "Other commands" block runs top to bottom from an empty folder, each line exit 0, with
    its step counts cut (train --steps / 1000, T = 10, sampling and train-clip 3 steps, bits/dim on 4 digits)."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"Other commands.*?```sh\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    for line in block.strip().splitlines():
        argv = shlex.split(line.split("#")[0])
        assert argv[0] == "refdiff", line
        argv = argv[1:]
        if "--steps" in argv:
            k = argv.index("--steps") + 1
            argv[k] = str(int(argv[k]) // 1000) if argv[0] == "train" else "3"
        if argv[0] in ("train", "train-clip") and "--resume" not in argv:
            argv += ["--T", "10", "--batch-size", "8"] + (["--train-size", "16"] if argv[0] == "train-clip" else [])
        if argv[0] == "eval" and argv[1].endswith("checkpoint.npz"):
            argv += ["--count", "4"]
        assert main(argv) == 0, (line, capsys.readouterr().err)
    assert {"swiss.png", "samples.npz"} <= {p.name for p in tmp_path.iterdir()}
    for argv in (["train", "--out", "out/mine"], ["eval", "out/digits/checkpoint.npz"]):  # a missing folder
        assert main(argv + ["--data", "my_images/"]) == 1
        assert "--data my_images/: no such folder" in _one_line_error(capsys, "--data")
