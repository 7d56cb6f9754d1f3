"""The CLI under hostile input: every subcommand, one bad flag value or one malformed file at a time.

Each example takes a command that would run (sample, eval, eval --samples, train, train --resume, demo,
inpaint, compare)
and spoils one thing: a flag's value (zero, negative, huge, NaN, not a number, empty, a choice that is
not one), or a file it reads (empty, truncated, bit-flipped, text, .npy, object arrays, a config that is
not JSON or misses its model, wrong shapes, a folder, images of another size or range), or gives a flag
where it does nothing (--image-size with built-in data). refdiff must answer with exit status 1 (2 for
argparse's usage errors), end stderr with one line that names the flag or the file, print no traceback, and
write no file (the lock file of an output folder aside). The CLI runs in-process (refdiff.cli.main).
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support import malformed_files

from refdiff.cli import main
from refdiff.digits_eval import digit_split

FILE_FLAGS = ("checkpoint", "--samples", "--classifier", "--data", "--out", "--image", "--mask")
NUMBERS = ["0", "-1", "-0.5", "nan", "inf", "abc", "", "1e40"]
TOY_TRAIN = ["train", "--data", "toy2d:two_moons", "--preset", "mlp", "--steps", "2", "--batch-size", "4",
             "--T", "5", "--out", "run"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with a toy checkpoint (2 classes, T = 5), digit samples (also in [0, 1] and in [-1.5, 1.5]),
    16x16 images, an existing file, a text model's checkpoint (T = 5) with a 16x16 image and mask to inpaint,
    and every malformed file of support.malformed_files; the commands run with it as the working folder."""
    root = tmp_path_factory.mktemp("fuzz")
    assert main(["train", "--data", "toy2d:two_moons", "--preset", "mlp", "--steps", "2", "--batch-size", "4",
                 "--T", "5", "--out", str(root / "toy")]) == 0
    _, x_test, _, y_test = digit_split()
    np.savez(root / "digits.npz", images=x_test[:20], labels=y_test[:20])
    np.savez(root / "unit.npz", images=(x_test[:20] + 1) / 2, labels=y_test[:20])
    np.savez(root / "wide.npz", images=1.5 * x_test[:20], labels=y_test[:20])
    np.savez(root / "d16.npz", x=np.repeat(np.repeat(x_test[:4], 2, axis=2), 2, axis=3))
    (root / "exists.npz").write_bytes(b"mine")
    assert main(["train", "--data", "captions", "--steps", "2", "--batch-size", "4", "--T", "5", "--out",
                 str(root / "text")]) == 0
    image = np.zeros((16, 16, 3), np.uint8)
    image[2:6, 2:6, 0] = 255
    Image.fromarray(image).save(root / "in.png")
    Image.fromarray(np.where(np.arange(16)[:, None] < 8, 255, 0).astype(np.uint8).repeat(16, axis=1)).save(
        root / "mask.png")
    bad = malformed_files(root / "bad", root / "toy" / "checkpoint.npz")
    for name, path in bad.items():  # each as a run's checkpoint, for train --resume
        (root / "runs" / name).mkdir(parents=True)
        (shutil.copytree if path.is_dir() else shutil.copy)(path, root / "runs" / name / "checkpoint.npz")
    return root, {name: str(path.relative_to(root)) for name, path in bad.items()}


def _cases(bad: dict) -> dict:
    """{subcommand label: (the good argv, {flag: strategy of bad values})}; "CKPT" is the toy checkpoint."""
    files = st.sampled_from(sorted(bad.values()))
    sample = ["sample", "toy/checkpoint.npz", "--steps", "2", "--count", "2", "--out", "s.npz"]
    return {
        "sample": (sample, {"--steps": st.sampled_from(NUMBERS[:3] + ["abc", "6", "100000000"]),
                            "--count": st.sampled_from(NUMBERS[:3] + ["abc", "100000000"]),
                            "--eta": st.sampled_from(["-0.5", "5", "nan", "inf", "abc"]),
                            "--guidance": st.sampled_from(["-1", "nan", "inf", "abc"]),
                            "--class": st.sampled_from(["-1", "2", "abc"]), "--sampler": st.just("plms"),
                            "--out": st.sampled_from(["", "s.txt", "toy/checkpoint.npz", "exists.npz", "toy",
                                                      "nodir/s.npz"]),
                            "checkpoint": files}),
        "eval": (["eval", "toy/checkpoint.npz", "--count", "2"],
                 {"--count": st.sampled_from(["0", "-1", "abc"]), "--batch-size": st.sampled_from(["0", "-3"]),
                  "--variance": st.just("learned"),
                  "--data": st.sampled_from(["mnist", "nodir/", "none.npz", "d16.npz"]),
                  "--image-size": st.sampled_from(["0", "-2", "abc", "8"]), "checkpoint": files}),
        "eval_samples": (["eval", "--samples", "digits.npz"],
                         {"--samples": st.one_of(files, st.sampled_from(["unit.npz", "wide.npz"])),
                          "--samples-range": st.sampled_from(["02", ""]), "--image-size": st.just("8"),
                          "--classifier": files, "--data": st.sampled_from(["mnist", "nodir/"])}),
        "train": (TOY_TRAIN, {"--steps": st.sampled_from(["0", "-1", "100000000", "abc"]),
                              "--batch-size": st.sampled_from(["0", "-2", "1000000000"]),
                              "--T": st.sampled_from(["0", "1000000000"]), "--lr": st.sampled_from(NUMBERS[:5]),
                              "--ema": st.sampled_from(["1.5", "-1", "nan"]), "--checkpoint-every": st.just("0"),
                              "--sample-every": st.just("-1"), "--preset": st.sampled_from(["unet9", "digits8"]),
                              "--image-size": st.sampled_from(["0", "abc", "8"]),
                              "--data": st.one_of(files, st.sampled_from(["mnist", "nodir/", "none.npz"])),
                              "--out": st.sampled_from(["", "exists.npz"])}),
        "resume": (["train", "--resume", "--out", "runs/NAME"], {"--out": st.sampled_from(sorted(bad))}),
        "inpaint": (["inpaint", "text/checkpoint.npz", "--image", "in.png", "--mask", "mask.png", "--prompt", "red",
                     "--steps", "2", "--out", "e.png"],
                    {"--steps": st.sampled_from(["0", "-1", "abc", "6"]), "--count": st.sampled_from(["0", "-1", "abc"]),
                     "--eta": st.sampled_from(["-0.5", "5", "nan"]), "--guidance": st.sampled_from(["-1", "nan", "abc"]),
                     "--resample": st.sampled_from(["0", "-1"]), "--jump-length": st.just("0"),
                     "--sampler": st.sampled_from(["plms", "ddim"]), "--prompt": st.sampled_from(["", "purple"]),
                     "--image": st.one_of(files, st.sampled_from(["none.png", "digits.npz", "text"])),
                     "--mask": st.one_of(files, st.sampled_from(["none.png", "in.png"])),
                     "--out": st.sampled_from(["", "e.txt", "exists.npz", "text", "nodir/e.png", "in.png"]),
                     "checkpoint": st.one_of(files, st.just("toy/checkpoint.npz"))}),
        "demo": (["demo", "--out", "demo", "--steps", "2", "--per-class", "1", "--sample-steps", "2"],
                 {"--steps": st.sampled_from(["0", "-1", "100000000"]), "--per-class": st.sampled_from(["0", "-1"]),
                  "--guidance": st.sampled_from(["-1", "nan"]), "--sample-steps": st.sampled_from(["0", "1001"]),
                  "--out": st.sampled_from(["", "exists.npz", "toy"])}),
        "compare": (["compare", "--out", "cmp", "--seconds", "0.5", "--per-class", "4", "--sample-steps", "2",
                     "--vlb-steps", "3", "--iwae-k", "2"],
                    {"--seconds": st.sampled_from(["0", "-1", "nan", "inf", "abc"]),
                     "--per-class": st.sampled_from(["3", "-1", "100000"]),
                     "--sample-steps": st.sampled_from(["0", "1001"]), "--vlb-steps": st.sampled_from(["-1", "1001"]),
                     "--iwae-k": st.sampled_from(["0", "-2"]), "--seed": st.just("-1"),
                     "--out": st.sampled_from(["", "exists.npz"])}),
    }


def _spoil(argv: list, flag: str, value: str, label: str) -> list:
    """argv with ``flag``'s value replaced by (or set to) ``value``; "checkpoint" is the positional."""
    argv = list(argv)
    if label == "resume":
        return argv[:-1] + [f"runs/{value}"]
    if flag == "checkpoint":
        argv[1] = value
    elif flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def _files(root: Path) -> set:
    """Every regular file under root but the output folders' lock files."""
    return {p for p in root.rglob("*") if p.is_file() and p.name != ".refdiff.lock"}


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_every_bad_input_gets_exit_1_or_2_and_one_line_naming_it(world, data, capsys, monkeypatch):
    """One spoilt flag value or file in any subcommand: exit 1 (2 for argparse's usage errors), the last
    line of stderr names the flag or the file, no traceback, no file written."""
    root, bad = world
    monkeypatch.chdir(root)
    label = data.draw(st.sampled_from(sorted(_cases(bad))), "subcommand")
    argv, flags = _cases(bad)[label]
    flag = data.draw(st.sampled_from(sorted(flags)), "flag")
    value = data.draw(flags[flag], "value")
    argv = _spoil(argv, flag, value, label)
    before = _files(root)
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    assert status in (1, 2), (argv, status, err)
    lines = err.strip().splitlines()
    assert lines and "Traceback" not in err, (argv, err)
    if status == 1:
        assert len(lines) == 1, (argv, err)
    named = [flag] + ([value] if flag in FILE_FLAGS and value else [])  # a file may be named by its path
    named = [f"runs/{value}"] if label == "resume" else named
    assert any(n in lines[-1] for n in named), (argv, err)
    assert _files(root) == before, (argv, _files(root) - before)


def test_an_exploding_run_ends_with_one_line_naming_the_step(tmp_path, capsys):
    """--lr 1e40 blows the parameters up at once: exit 1 and one line naming the step and the last good
    checkpoint, no overflow warnings (the non-finite values are checked, not warned of), nothing saved."""
    assert main(TOY_TRAIN[:-1] + [str(tmp_path / "run"), "--lr", "1e40"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at step" in err and "none written yet" in err, err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
