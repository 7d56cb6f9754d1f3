"""Where a U-Net step's time goes, layer by layer: refdiff against its PyTorch twin, one thread each.

Run: python benchmarks/bench_layers.py [--preset digits8] [--forward] [--repeats 10]

Times the training step at batch 64 (or, with ``--forward``, the sampling forward at batch 200 for
digits8, 256 otherwise) of refdiff and of benchmarks/torch_twin.py, interleaved, one BLAS / OpenMP
thread each (the comparison least sensitive to other load on the machine), and prints the medians
and a table of per-layer milliseconds: refdiff's from cProfile's cumulative time per layer function,
PyTorch's from torch.profiler's self-CPU time per aten operator, each as a share of its profiled run
scaled to its unprofiled median (profilers add overhead per call; shares are what they measure best).
"Rest" is the step's median minus the layers listed: Python between layers, concatenations,
residual additions, the loss, and on PyTorch's side the operators not listed.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pathlib
import pstats
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from refdiff import backend as bk
from refdiff import parallel
from refdiff.models import unet as U
from refdiff.models.presets import PRESETS

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_unet as BU  # noqa: E402  (the same models and batches as bench_unet.py)

# layer: (refdiff functions, cumulative; PyTorch aten operators, self time; None: not separable)
LAYERS = {
    "conv forward": (["conv2d_forward_fast"], ["aten::mkldnn_convolution"]),
    "conv backward": (["conv2d_backward_fast"], ["aten::convolution_backward"]),
    "group norm (forward + backward)": (["group_norm_forward", "group_norm_backward"],
                                        ["aten::native_group_norm", "aten::native_group_norm_backward"]),
    "SiLU (forward + backward)": (["silu_forward", "silu_backward"], ["aten::silu", "aten::silu_backward"]),
    "AdaGN scale-shift": (["scale_shift_forward", "scale_shift_backward"], None),
    "attention": (["self_attention_forward", "self_attention_backward"], None),
    "optimizer (Adam)": (["adamw_step"], "Optimizer.step"),
}


def refdiff_layers(fn, repeats: int, median: float) -> dict:
    """ms per call of each LAYERS entry: cProfile's cumulative share scaled to the unprofiled median."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(repeats):
        fn()
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(entry[2] for entry in stats.values())  # own times add up to the profiled run

    def cumulative(name: str) -> float:  # the outermost entry of a name (the textbook form calls the fast one)
        return max([entry[3] for key, entry in stats.items() if key[2] == name] or [0.0])

    return {layer: 1e3 * median * sum(cumulative(n) for n in names) / total for layer, (names, _) in LAYERS.items()}


def torch_layers(fn, repeats: int, median: float) -> dict:
    """ms per call of each LAYERS entry from torch.profiler, scaled to the unprofiled median."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    events = prof.key_averages()
    own = {e.key: e.self_cpu_time_total for e in events}
    total = sum(own.values())
    out = {}
    for layer, (_, ops) in LAYERS.items():
        if ops is None:
            out[layer] = float("nan")
        elif isinstance(ops, str):  # the optimizer step: its whole time, children included
            out[layer] = 1e3 * median * sum(e.cpu_time_total for e in events if e.key.startswith(ops)) / total
        else:
            out[layer] = 1e3 * median * sum(own.get(op, 0.0) for op in ops) / total
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits8", choices=sorted(PRESETS))
    parser.add_argument("--forward", action="store_true", help="the sampling forward instead of the training step")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    parallel.set_num_threads(1)
    cfg = PRESETS[args.preset]()
    params = U.init_params(cfg, bk.Generator(0))
    sample = 200 if args.preset == "digits8" else 256
    batch, sampled = BU._data(cfg, 64, 2), BU._data(cfg, sample, 3)
    ours = BU.RefdiffModel(bk.get_backend("numpy"), cfg, params, batch, sampled)
    twin = BU.TorchModel("cpu", cfg, params, batch, sampled)
    name = "forward" if args.forward else "train_step"
    calls = {"refdiff": getattr(ours, name), "torch": getattr(twin, name)}
    load = os.getloadavg()
    with threadpool_limits(limits=1, user_api="blas"):
        times = BU.interleaved(calls, args.repeats, lambda: None)
        medians = {k: statistics.median(v) for k, v in times.items()}
        rows = {"refdiff": refdiff_layers(calls["refdiff"], args.repeats, medians["refdiff"]),
                "torch": torch_layers(calls["torch"], args.repeats, medians["torch"])}
    what = f"forward b{sample}" if args.forward else "train step b64"
    print(f"{args.preset} {what}, one thread each: refdiff {1e3 * medians['refdiff']:.1f} ms, "
          f"PyTorch {1e3 * medians['torch']:.1f} ms (medians of {args.repeats})")
    print("| layer | refdiff ms | PyTorch ms |\n|---|---:|---:|")
    for layer in LAYERS:
        print(f"| {layer} | {rows['refdiff'][layer]:.1f} | {rows['torch'][layer]:.1f} |")
    rest = {k: 1e3 * medians[k] - float(np.nansum(list(rows[k].values()))) for k in rows}
    print(f"| rest | {rest['refdiff']:.1f} | {rest['torch']:.1f} |")
    print(f"load average (1 min) before / after: {load[0]:.2f} / {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
