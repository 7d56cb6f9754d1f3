"""Speed of the U-Net: training step and sampling forward pass, refdiff against its PyTorch twin.

Run: python benchmarks/bench_unet.py [--backend numpy|cupy] [--threads N] [--repeats 15]
                                     [--batch 64] [--sample-batch 256] [--json FILE] [--no-torch]
(a few minutes on a 2-core CPU with the defaults)

Measures, in one run and on the chosen backend:

1. the float32 GEMM peak: a large square matmul (2048^3 on the host, 8192^3 on a GPU), median GFLOP/s;
2. the training step of the ``--preset`` (mnist28) U-Net at ``--batch`` 64: forward, MSE against
   the noise, backward, AdamW update (refdiff.optim.adamw_step, weight decay 0: Adam);
3. the forward pass at ``--sample-batch`` 256 with no activations kept (what a sampler calls);

each as median ms over ``--repeats`` timed calls (after 2 warm-up calls), images/s, GFLOP/s and the
fraction of the GEMM peak, plus the memory of the activation cache a training step keeps between
forward and backward (refdiff: ``cache_nbytes``; PyTorch: the tensors autograd saves). When PyTorch
is installed the identical twin (benchmarks/torch_twin.py: same architecture, same weights, same
number of threads, float32, TF32 off on a GPU) is timed in the same run, its calls interleaved with
refdiff's so that load from other processes hits both alike (each timed call right after an untimed
call of its own, see ``interleaved``), and the ratio refdiff / PyTorch is
printed. ``--json FILE`` writes every number (and the per-call times) machine-readably.

FLOPs: 2 x the multiply-adds of ``refdiff.models.unet.flops`` (convolutions, linear layers,
attention; normalisation and elementwise work not counted) per image for the forward, 3 x that for
a training step (the backward computes two products per forward product). Threads: the BLAS pool of
NumPy is limited to ``--threads`` (threadpoolctl) and refdiff's batch-splitting pool uses as many
(``refdiff.parallel.set_num_threads``); PyTorch gets ``torch.set_num_threads``. ``--reference``
adds refdiff's reference path (refdiff.speed: no batch parts, textbook layers) to the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import tracemalloc

import numpy as np
from threadpoolctl import threadpool_limits

from refdiff import backend as bk
from refdiff import parallel, speed
from refdiff.losses import mse_with_grad
from refdiff.models import unet as U
from refdiff.models.presets import PRESETS
from refdiff.optim import adamw_init, adamw_step
from refdiff.parallel import in_parts

LR = 1e-4
WARMUP = 2


# ------------------------------------------------------------------------------------- timing

def interleaved(calls: dict, repeats: int, sync) -> dict[str, list[float]]:
    """Seconds of every call in ``calls`` over ``repeats`` rounds, one timed call of each per round (so
    a burst of load from another process hits each of them alike), after WARMUP untimed rounds.

    Each timed call follows an untimed call of the same function, as in a loop of its own: the other
    library's last call leaves traces that are not this one's cost (PyTorch's OpenMP threads spin on
    for about 10 ms, 9 ms of CPU after a digits8 training step; refdiff's digits8 step took 27.9 ms
    right after a PyTorch step and 22.1 ms after one of its own, PyTorch's forward 14.5 ms after a
    refdiff call and 9.8 ms after its own; docs/performance.md, "Interleaving fairly")."""
    for _ in range(WARMUP):
        for fn in calls.values():
            fn()
            sync()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            fn()  # untimed: the call before the timed one is the library's own
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def gemm_peak(backend, repeats: int, n: int, torch_device=None) -> dict:
    """Median GFLOP/s of a float32 (n x n) @ (n x n) matmul on the backend (and in PyTorch)."""
    a = backend.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=backend.xp.float32)
    calls = {"refdiff": lambda: a @ a}
    if torch_device is not None:
        import torch

        ta = torch.randn(n, n, dtype=torch.float32, device=torch_device)
        calls["torch"] = lambda: ta @ ta
    times = interleaved(calls, repeats, _sync(backend, torch_device))
    return {name: 2 * n**3 / statistics.median(ts) / 1e9 for name, ts in times.items()}


def _sync(backend, torch_device):
    """A function that waits for the GPU(s) to finish queued work (nothing to do on the host)."""
    def sync():
        if backend.name == "cupy":
            import cupy

            cupy.cuda.Device().synchronize()
        if torch_device is not None and str(torch_device).startswith("cuda"):
            import torch

            torch.cuda.synchronize()
    return sync


# ----------------------------------------------------------------------------------- refdiff

class RefdiffModel:
    """refdiff's U-Net, parameters and Adam state on the backend, and fixed float32 batches; the speed
    layer (batch parts on threads, fused layers), or with reference=True the reference path."""

    def __init__(self, backend, cfg, params, batch: dict, sample: dict, reference: bool = False):
        like = backend.asarray(np.zeros(1, dtype=np.float32))
        self.path = speed.reference_path if reference else contextlib.nullcontext  # else: as the switch is
        self.unet_forward, self.unet_backward = in_parts(U.unet_forward, U.unet_backward)
        self.cfg, self.backend = cfg, backend
        self.params = U.params_to(params, like)
        self.state = adamw_init(self.params)
        self.batch = {k: backend.asarray(v) for k, v in batch.items()}
        self.sample = {k: backend.asarray(v) for k, v in sample.items()}

    def train_step(self):
        """Forward, MSE(out, eps), backward, Adam: one optimisation step."""
        b, xp = self.batch, self.backend.xp
        with self.path():
            out, cache = self.unet_forward(self.params, self.cfg, b["x"], b["t"], train=True)
            mse, dmse = mse_with_grad(out, b["eps"])  # (N,), like out
            loss = xp.mean(mse)
            grads = self.unet_backward(dmse / out.shape[0], cache)  # dL/dout of L = mean_n mse_n
            self.params, self.state = adamw_step(self.params, grads, self.state, lr=LR)
        return loss

    def forward(self):
        s = self.sample
        with self.path():
            return self.unet_forward(self.params, self.cfg, s["x"], s["t"], keep_cache=False)[0]

    def cache_mib(self) -> float:
        b = self.batch
        with self.path():
            _, cache = self.unet_forward(self.params, self.cfg, b["x"], b["t"], train=True)
        return U.cache_nbytes(cache, self.params) / 2**20

    def traced_peak_mib(self, fn) -> float | None:
        """Peak host memory NumPy allocates during fn() (tracemalloc), or None on a GPU."""
        if self.backend.name != "numpy":
            return None
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak / 2**20


# ------------------------------------------------------------------------------------ PyTorch

class TorchModel:
    """The twin (benchmarks/torch_twin.py) with the same weights, torch.optim.Adam, the same batches."""

    def __init__(self, device, cfg, params, batch: dict, sample: dict):
        import torch
        import torch_twin

        self.torch, self.twin, self.cfg = torch, torch_twin, cfg
        self.params = torch_twin.params_to_torch(params, device=device)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=LR)
        self.batch = {k: torch.tensor(v, device=device) for k, v in batch.items()}
        self.sample = {k: torch.tensor(v, device=device) for k, v in sample.items()}

    def train_step(self):
        b = self.batch
        self.optimizer.zero_grad(set_to_none=True)
        out = self.twin.torch_unet_forward(self.params, self.cfg, b["x"], b["t"], train=True)
        loss = ((out - b["eps"]) ** 2).mean()
        loss.backward()
        self.optimizer.step()
        return loss

    def forward(self):
        s = self.sample
        with self.torch.no_grad():
            return self.twin.torch_unet_forward(self.params, self.cfg, s["x"], s["t"])

    def cache_mib(self) -> float:
        b = self.batch
        with self.twin.SavedTensorBytes(self.params) as saved:
            self.twin.torch_unet_forward(self.params, self.cfg, b["x"], b["t"], train=True)
        return saved.nbytes / 2**20


# ---------------------------------------------------------------------------------------- main

def _data(cfg, N: int, seed: int) -> dict:
    """float32 x ~ N(0, 1) (stands in for x_t), eps ~ N(0, 1), integer t in [0, 1000)."""
    rng = np.random.default_rng(seed)
    shape = (N, cfg.in_channels, cfg.image_size, cfg.image_size)
    return {"x": rng.standard_normal(shape, dtype=np.float32), "eps": rng.standard_normal(shape, dtype=np.float32),
            "t": rng.integers(0, 1000, N)}


def machine(args, backend) -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__, "blas": parallel.blas_summary(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "backend": backend.name,
            "threads": args.threads, "refdiff_threads": parallel.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if backend.name == "cupy":
        import cupy

        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        info["cupy"] = cupy.__version__
    return info


def row(name: str, seconds: list[float], images: int, gflop: float, peak: float, cache_mib) -> dict:
    med = statistics.median(seconds)
    return {"name": name, "median_ms": 1e3 * med, "min_ms": 1e3 * min(seconds), "images_per_s": images / med,
            "gflop_per_s": gflop / med, "fraction_of_peak": gflop / med / peak, "cache_mib": cache_mib,
            "times_ms": [1e3 * s for s in seconds]}


def print_table(results: dict) -> None:
    peak = results["gemm_peak_gflops"]
    print(f"float32 GEMM peak ({results['gemm_n']}^3 matmul, median): refdiff's backend {peak['refdiff']:.0f} GFLOP/s"
          + (f", PyTorch {peak['torch']:.0f} GFLOP/s" if "torch" in peak else ""))
    print("| measurement | impl | median ms | min ms | images/s | GFLOP/s | % of peak | cache MiB "
          "| refdiff / PyTorch (medians) | (minima) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, label in (("train", f"train step, batch {results['batch']}"),
                       ("forward", f"forward, batch {results['sample_batch']}")):
        entries = results[key]
        for impl, r in entries.items():
            ratios = ["", ""]
            if impl != "torch" and "torch" in entries:
                ratios = [f"{r[m] / entries['torch'][m]:.2f}" for m in ("median_ms", "min_ms")]
            cache = "" if r["cache_mib"] is None else f"{r['cache_mib']:.0f}"
            print(f"| {label} | {impl} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['images_per_s']:.0f} "
                  f"| {r['gflop_per_s']:.0f} | {100 * r['fraction_of_peak']:.0f}% | {cache} | {ratios[0]} "
                  f"| {ratios[1]} |")
    print(f"load average (1 min) before / after: {results['load_before'][0]:.2f} / {results['load_after'][0]:.2f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    parser.add_argument("--preset", default="mnist28", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS, refdiff and PyTorch threads")
    parser.add_argument("--no-torch", action="store_true", help="time refdiff only")
    parser.add_argument("--reference", action="store_true", help="also time refdiff's reference path")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    backend = bk.get_backend(args.backend)
    torch_device = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: timing refdiff only")
        else:
            sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
            torch.set_num_threads(args.threads)
            torch_device = "cuda" if backend.name == "cupy" else "cpu"
            torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as CuPy's default
            torch.backends.cudnn.allow_tf32 = False
    parallel.set_num_threads(args.threads)
    sync = _sync(backend, torch_device)
    cfg = PRESETS[args.preset]()
    flop = 2 * U.flops(cfg)[1]  # one image's forward
    params = U.init_params(cfg, bk.Generator(0))
    rng = np.random.default_rng(1)
    params = {k: v + 0.01 * rng.standard_normal(v.shape, dtype=np.float32) for k, v in params.items()}  # no exact zeros
    batch, sample = _data(cfg, args.batch, 2), _data(cfg, args.sample_batch, 3)

    with threadpool_limits(limits=args.threads, user_api="blas"):
        results = {"command": " ".join(["python", "benchmarks/bench_unet.py"] + sys.argv[1:]),
                   "machine": machine(args, backend), "preset": args.preset, "batch": args.batch,
                   "sample_batch": args.sample_batch, "repeats": args.repeats, "load_before": os.getloadavg()}
        if torch_device is not None:
            results["machine"]["torch"] = torch.__version__
        n = 2048 if backend.name == "numpy" else 8192
        results["gemm_n"] = n
        results["gemm_peak_gflops"] = peak = gemm_peak(backend, args.repeats, n, torch_device)
        models = {"refdiff": RefdiffModel(backend, cfg, params, batch, sample)}
        if args.reference:
            models["reference"] = RefdiffModel(backend, cfg, params, batch, sample, reference=True)
        if torch_device is not None:
            models["torch"] = TorchModel(torch_device, cfg, params, batch, sample)
        for key, N, factor in (("train", args.batch, 3), ("forward", args.sample_batch, 1)):
            fn = "train_step" if key == "train" else "forward"
            times = interleaved({name: getattr(m, fn) for name, m in models.items()}, args.repeats, sync)
            results[key] = {name: row(name, ts, N, factor * flop * N / 1e9, peak["refdiff"],
                                      models[name].cache_mib() if key == "train" else None)
                            for name, ts in times.items()}
        ref = models["refdiff"]
        results["refdiff_traced_peak_mib"] = {"train": ref.traced_peak_mib(ref.train_step),
                                              "forward": ref.traced_peak_mib(ref.forward)}
        results["load_after"] = os.getloadavg()
    print(f"refdiff bench: {args.preset}, {results['machine']['cpu']}, {args.threads} threads, backend "
          f"{backend.name}, NumPy {np.__version__}" + (f", PyTorch {torch.__version__}" if torch_device else ""))
    print(f"BLAS: {results['machine']['blas']}")
    print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
