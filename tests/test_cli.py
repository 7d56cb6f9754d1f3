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
