"""What several ``refdiff`` subcommands share: checks of output paths and sampling flags made before any
work, the flags that more than one subcommand takes, and the sample count limit."""

from __future__ import annotations

import argparse
import os

MAX_COUNT = 100_000  # sample --count (per class): memory is estimated too (refdiff.generate.generate)


def _check_sampling_flags(sampler: str, steps: int, guidance: float, T: int, steps_flag: str = "--steps") -> None:
    """refdiff.generate.check_sampling, its errors naming the flags ("steps must ..." -> "--steps must ...")."""
    from refdiff.generate import check_sampling

    try:
        check_sampling(sampler, steps, guidance, T)
    except ValueError as err:
        name = str(err).split(" ", 1)[0]
        flags = {"steps": steps_flag, "guidance": "--guidance", "sampler": "--sampler"}
        raise ValueError(flags.get(name, name) + str(err)[len(name):]) from None


def _check_output_folder(flag: str, path: str) -> None:
    """Before any work: ``path`` names a folder that exists or can be made, and can be written to."""
    from pathlib import Path

    if not path:
        raise ValueError(f"{flag} must name a folder, got ''")
    folder = Path(path)
    existing = next(a for a in (folder, *folder.absolute().parents) if a.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {existing} is not writable")


def _check_output_file(flag: str, path: str, inputs: tuple = (), force: bool = False) -> None:
    """Before any work: ``path`` is a new file (or an existing one and ``force``) in a writable folder,
    and none of the command's ``inputs``."""
    from pathlib import Path

    out = Path(path)
    if not path or out.is_dir():
        raise ValueError(f"{flag} must name a file, got {path!r}" + (" (a folder)" if path else ""))
    if any(out.exists() and out.resolve() == Path(i).resolve() for i in inputs):
        raise ValueError(f"{flag} {path} is an input of this command: give another file name")
    if out.exists() and not force:
        raise ValueError(f"{flag} {path} exists: give --force to replace it, or another file name")
    if not out.absolute().parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {out.absolute().parent} does not exist")
    if not os.access(out.absolute().parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {out.absolute().parent} is not writable")


def _check_image_size(spec: str, image_size: int | None) -> None:
    """--image-size, when given, is an integer >= 1 and --data ``spec`` is not built-in data of a fixed size
    (digits, shapes, toy2d:NAME): it resizes a .npz file or a folder of images, or sets the size the
    captions are drawn at."""
    if image_size is None:
        return
    if image_size < 1:
        raise ValueError(f"--image-size must be an integer >= 1, got {image_size}")
    if spec in ("digits", "shapes") or spec.startswith("toy2d:"):
        raise ValueError(f"--image-size {image_size}: --data {spec} is built in at its own size; --image-size "
                         "resizes a .npz file or a folder of images (or sets the captions' size): leave it out")


def _add_image_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=None, metavar="S",
                        help="resize the images of a --data .npz file or folder to S x S, as Pillow's Lanczos "
                             "filter resizes image files (default: keep their size, which in a folder must then "
                             "be one size); --data captions: draw them at S x S (default: 16)")


def _add_mpi_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mpi-timeout", type=float, default=None, metavar="S",
                        help="under mpirun: seconds a rank waits for the others before it aborts the job "
                             "(default: $REFDIFF_MPI_TIMEOUT or 900)")
