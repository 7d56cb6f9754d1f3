"""Throughput of the forward process and the reverse-step math (no model), per backend.

Run: python benchmarks/bench_diffusion.py [--backend numpy] [--batch 128] [--repeats 50]

Prints, for float32 and float64 batches of (N, 3, 32, 32), the time per call and the memory
bandwidth it implies for q_sample, q_posterior and p_mean_variance (learned_range variance, v
prediction, dynamic thresholding: the most expensive configuration, whose per-sample quantile is a
sort). The GB/s column counts the (N, 3, 32, 32) arrays each call reads and writes once; these calls
are elementwise, so memory bandwidth is the roofline, and small batches show the fixed cost of
validating t and gathering T-long tables.
"""

import argparse
import math
import time

import numpy as np

from refdiff import diffusion as D
from refdiff import schedules
from refdiff.backend import BACKENDS, Generator, get_backend


def _time(fn, repeats: int) -> float:
    """Median seconds per call of fn() over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", choices=BACKENDS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    backend = get_backend(args.backend)
    schedule = schedules.cosine(1000)
    g = Generator(0)
    print(f"backend={args.backend} batch={args.batch} image=3x32x32 T=1000")
    print(f"{'call':<38}{'dtype':<9}{'ms/call':>9}{'GB/s':>8}")
    for dtype in ("float32", "float64"):
        like = backend.asarray(np.zeros(1), dtype=backend.dtype(dtype))
        x0 = g.normal((args.batch, 3, 32, 32), like=like)
        eps = g.normal(x0.shape, like=like)
        out2 = g.normal((args.batch, 6, 32, 32), like=like)
        t = g.integers(0, 1000, (args.batch,), like=like)
        v_learned = D.Parameterization("v", "learned_range")
        nbytes = math.prod(x0.shape) * np.dtype(dtype).itemsize  # one (N, 3, 32, 32) array
        calls = {
            "q_sample": (lambda: D.q_sample(schedule, x0, t, eps), 3),
            "q_posterior": (lambda: D.q_posterior(schedule, x0, eps, t), 3),
            "p_mean_variance(eps, fixed_small)": (lambda: D.p_mean_variance(schedule, x0, eps, t), 4),
            "p_mean_variance(v, learned, thresh)": (
                lambda: D.p_mean_variance(schedule, out2, x0, t, v_learned, threshold=0.995), 8),
        }
        for name, (fn, arrays_touched) in calls.items():
            seconds = _time(fn, args.repeats)
            print(f"{name:<38}{dtype:<9}{seconds * 1e3:>9.3f}{arrays_touched * nbytes / seconds / 1e9:>8.2f}")


if __name__ == "__main__":
    main()
