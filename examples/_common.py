"""What the example scripts share: their command line, the backend and output folder it picks, and the 2-D data
of toy2d.py and samplers.py (Gaussians on a circle, with their exact denoiser) with its sliced-Wasserstein floor.

Not an example itself. The scripts import it as ``_common``: Python puts a script's own folder first on
sys.path, so ``python examples/NAME.py`` finds it from the repository root and from inside examples/.
"""

import argparse
import math
from pathlib import Path

import numpy as np

from refdiff.backend import BACKENDS, get_backend
from refdiff.metrics import sliced_wasserstein
from refdiff.models.gaussian_mixture import GaussianMixtureDenoiser


def argument_parser(doc: str, out: str, seed_help: str, quick: dict | None = None) -> argparse.ArgumentParser:
    """The options every example takes: --out DIR (default ``out``), --backend, --seed (``seed_help``: what it
    seeds) and, where the example has small settings ``quick`` for tests, --quick. The description is the
    first line of the example's docstring ``doc``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default=out, help="output directory")
    parser.add_argument("--backend", default="numpy", choices=BACKENDS, help="array library")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=f"small settings for tests: {quick}")
    return parser


def backend_and_out(args):
    """The refdiff Backend of --backend and the folder --out (created where missing): (backend, out); a
    backend that cannot run here ends the example with one line saying why."""
    try:
        backend = get_backend(args.backend)
    except (ValueError, ImportError) as err:
        raise SystemExit(f"--backend {args.backend}: {err}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return backend, out


def circle_mixture(schedule, components: int, radius: float, std: float):
    """The exact denoiser of ``components`` equal-weight Gaussians N(mu_k, std^2 I), mu_k evenly spaced on a
    circle of ``radius``."""
    angle = 2 * math.pi * np.arange(components) / components
    means = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)        # (K, 2)
    return GaussianMixtureDenoiser(schedule, np.full(components, 1 / components), means, np.full_like(means, std))


def data_floor(model, data, n: int, seed: int, draws: int):
    """Sliced W2 from ``draws`` independent data samples of size n to ``data``: (mean, min, max).

    What a perfect sampler would score: the distance that finite samples alone produce, and its spread."""
    values = [sliced_wasserstein(model.sample(n, seed=seed + i), data) for i in range(draws)]
    return float(np.mean(values)), min(values), max(values)
