"""The U-Net's training step with other work on the cores: quiet against loaded, per thread layout.

Run: python benchmarks/bench_load.py [--presets digits8 mnist28] [--repeats 10] [--json FILE]
(about 3 minutes on a 2-core CPU)

A user's machine always has other work on it. This benchmark starts that work itself: one busy
process per core (``python -c "while True: pass"``), and stops it again, also on an error. For each
preset it times the float32 training step (forward, MSE, backward, Adam; benchmarks/bench_unet.py's
step) in rounds of quiet, loaded, quiet, ..., and prints the median of each condition and the ratio
loaded / quiet for two thread layouts:

- ``refdiff``: the speed layer's layout (refdiff.parallel): the batch in parts on refdiff's threads,
  every BLAS library on one thread, also when the batch is a single part;
- ``BLAS pool``: the whole batch as one part, NumPy's BLAS on ``--threads`` threads: the layout a
  small batch (digits8's 64 images of 8 x 8) ran with before, when OpenBLAS's spinning workers did
  the parallel work.

A fair share of two cores beside two busy processes is half of them: a ratio of about 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from refdiff import backend as bk
from refdiff import parallel
from refdiff.models import unet as U
from refdiff.models.presets import PRESETS

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_unet  # noqa: E402

LAYOUTS = ("refdiff", "BLAS pool")


@contextlib.contextmanager
def busy_processes(count: int):
    """``count`` processes spinning in a Python loop for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)  # let them reach the loop
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


class BlasPoolModel(bench_unet.RefdiffModel):
    """The same step on the whole batch at once, the parallel work left to the BLAS library's pool."""

    def __init__(self, *args, threads: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.unet_forward, self.unet_backward = U.unet_forward, U.unet_backward
        self.threads = threads

    def train_step(self):
        with threadpool_limits(limits=self.threads, user_api="blas"):
            return super().train_step()


def time_steps(step, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of step(), after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure(preset: str, args) -> dict:
    """{layout: {"quiet": [s, ...], "loaded": [s, ...]}} for one preset, in alternating rounds."""
    cfg = PRESETS[preset]()
    rng = np.random.default_rng(1)
    params = {k: v + 0.01 * rng.standard_normal(v.shape, dtype=np.float32)
              for k, v in U.init_params(cfg, bk.Generator(0)).items()}
    batch, sample = bench_unet._data(cfg, args.batch, 2), bench_unet._data(cfg, 2, 3)
    backend = bk.get_backend("numpy")
    models = {"refdiff": bench_unet.RefdiffModel(backend, cfg, params, batch, sample),
              "BLAS pool": BlasPoolModel(backend, cfg, params, batch, sample, threads=args.threads)}
    times = {name: {"quiet": [], "loaded": []} for name in LAYOUTS}
    for _ in range(args.rounds):
        for condition in ("quiet", "loaded"):
            with busy_processes(args.busy) if condition == "loaded" else contextlib.nullcontext():
                for name, model in models.items():
                    times[name][condition] += time_steps(model.train_step, args.repeats)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["digits8", "mnist28"], choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per layout, condition and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of quiet then loaded")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="refdiff's and the BLAS pool's threads")
    parser.add_argument("--busy", type=int, default=os.cpu_count(), help="busy processes while loaded")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    parallel.set_num_threads(args.threads)
    results = {"command": " ".join(["python", "benchmarks/bench_load.py"] + sys.argv[1:]),
               "machine": bench_unet.machine(argparse.Namespace(threads=args.threads), bk.get_backend("numpy")),
               "load_before": os.getloadavg(), "busy": args.busy}
    print(f"{results['machine']['cpu']}, {args.threads} threads, {args.busy} busy processes while loaded, "
          f"batch {args.batch}, load average before {results['load_before'][0]:.2f}; BLAS: {results['machine']['blas']}")
    print("| preset | layout | quiet ms (median) | loaded ms (median) | loaded / quiet |")
    print("|---|---|---:|---:|---:|")
    for preset in args.presets:
        results[preset] = times = measure(preset, args)
        for name in LAYOUTS:
            quiet, loaded = (1e3 * statistics.median(times[name][c]) for c in ("quiet", "loaded"))
            print(f"| {preset} | {name} | {quiet:.0f} | {loaded:.0f} | {loaded / quiet:.1f} |", flush=True)
    results["load_after"] = os.getloadavg()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
