"""``refdiff info``: versions, usable backends and BLAS threads (what a bug report needs), or a preset's
config, parameter count and FLOPs."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform

from refdiff import __version__

NOT_INSTALLED = "not installed"


def _module_version(module_name: str) -> str:
    """``module.__version__`` of an optional module, or why there is none."""
    if importlib.util.find_spec(module_name) is None:
        return NOT_INSTALLED
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # installed but unusable, e.g. CuPy without the CUDA libraries
        return f"installed, import failed: {type(err).__name__}: {err}"
    return str(getattr(module, "__version__", "unknown"))


def _versions() -> list[tuple[str, str]]:
    """(label, version) of Python and every library refdiff uses or can use."""
    modules = [("NumPy", "numpy"), ("SciPy", "scipy"), ("array-api-compat", "array_api_compat"),
               ("array-api-strict", "array_api_strict"), ("CuPy", "cupy")]
    rows = [("refdiff", __version__), ("Python", platform.python_version())]
    return rows + [(label, _module_version(name)) for label, name in modules]


def _blas_rows() -> list[tuple[str, str]]:
    """One ("BLAS", description) row per BLAS library loaded in this process (threadpoolctl), each with
    its file, which says whose it is (NumPy's and SciPy's wheels each bring one)."""
    import numpy  # noqa: F401  -- load NumPy's and SciPy's BLAS so threadpoolctl can see them
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if not blas:
        return [("BLAS", "none found")]
    return [("BLAS", f"{lib.get('internal_api')} {lib.get('version')}, {lib.get('num_threads')} threads "
                     f"({lib.get('filepath')})") for lib in blas]


def _parts_row() -> list[tuple[str, str]]:
    """How a host batch is split (refdiff.parallel): over how many cores, in worker processes or threads."""
    from refdiff import parallel, workers

    cores = parallel.get_num_threads()
    how = ("one part at a time" if cores == 1 else
           "worker processes" if parallel.get_processes() and workers.AVAILABLE else "threads")
    return [("batch parts", f"{cores} cores, {how} (REFDIFF_NUM_THREADS, REFDIFF_PROCESSES)")]


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, usable backends and BLAS threads, one ``label: value`` per line."""
    from refdiff.backend import available_backends

    if args.model is not None:
        from refdiff.models import registry
        from refdiff.models.presets import CLASSIFIER_PRESETS, PRESETS, TEXT_PRESETS

        presets = {**PRESETS, **TEXT_PRESETS, **CLASSIFIER_PRESETS}
        if args.model not in presets:
            raise ValueError(f"--model must be one of {', '.join(presets)}, got {args.model!r}")
        cfg = presets[args.model]()
        print(registry.family(cfg).summary(cfg))
        return 0
    rows = _versions() + [("backends", ", ".join(available_backends()))] + _blas_rows() + _parts_row()
    for label, value in rows:
        print(f"{label + ':':<18} {value}")
    return 0


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff info`` (no arguments)."""
    parser = subparsers.add_parser(
        "info", help="show versions, backends and BLAS threads",
        description="Show refdiff, Python and library versions, the usable array backends "
                    "and the BLAS libraries with their thread counts.")
    parser.add_argument("--model", default=None, metavar="PRESET",
                        help="instead, print a preset's config, parameter count and per-layer FLOPs "
                             "(digits8, mnist28, shapes32, text16, and NAME_classifier for their noisy "
                             "classifiers)")
    parser.set_defaults(func=cmd_info)
