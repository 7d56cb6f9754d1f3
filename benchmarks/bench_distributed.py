"""Data-parallel training throughput: 1 process x R threads vs R MPI ranks x 1 thread.

Run (prints markdown tables; needs `pip install ".[mpi]"`):

    python benchmarks/bench_distributed.py --repeat 3         # digits8 and mnist28, batch 64, 2 ranks
    python benchmarks/bench_distributed.py --presets mnist28 --batch 32 --steps 10 --ranks 2
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_distributed.py --analysis   # the model of docs/scaling.md

For each preset it times ``refdiff.train.train_step`` (U-Net forward, backward, AdamW, EMA) on random
data of the preset's shape with 10 classes: in one process with 1 and with ``--ranks`` threads
(no MPI), and under ``mpiexec -n RANKS`` with one thread per rank. "Threads" are refdiff's own
(REFDIFF_NUM_THREADS: the batch split into parts on host threads) and the BLAS library's when it
runs alone (OPENBLAS_NUM_THREADS and friends), so a row with 1 thread uses one core. Under MPI each step's allreduce is
timed after a barrier, so the table separates the time ranks wait for each other (imbalance) from
the time the allreduce itself takes. Medians over ``--steps`` steps after 2 warm-up steps; with
``--repeat R`` each row is run R times and the fastest run shown (other load on a shared machine only
slows a run down).
``--analysis`` measures instead, on one thread, the step one rank takes with its B / N rows and the
part of it every rank repeats (clipping, AdamW, EMA, the batch's random draws), and prints the
strong-scaling model of docs/scaling.md for mnist28 and shapes32 at 1, 8 and 64 ranks.
Benchmarks are not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
WARMUP = 2


def _worker(preset: str, batch: int, steps: int) -> None:
    """Time train_step under whatever communicator this process has; rank 0 prints one JSON line."""
    from refdiff.distributed import get_communicator
    from refdiff.models.presets import PRESETS
    from refdiff.models.unet import param_count
    from refdiff.train import TrainConfig, train_step
    from refdiff.train_state import init_state

    comm = get_communicator()
    model = PRESETS[preset](num_classes=10)
    rng = np.random.default_rng(0)
    x = np.tanh(rng.normal(size=(512, model.in_channels, model.image_size, model.image_size))).astype(np.float32)
    y = rng.integers(0, 10, 512)
    cfg = TrainConfig(steps=WARMUP + steps, batch_size=batch, warmup_steps=0)
    state, schedule = init_state(cfg, model), cfg.schedule_obj()
    waits, reduces = [], []
    if comm.size > 1:  # time the wait for the slowest rank apart from the allreduce itself
        allreduce = comm.allreduce_sum

        def timed_allreduce(buf, what="an allreduce"):
            start = time.perf_counter()
            comm.barrier(what)
            middle = time.perf_counter()
            out = allreduce(buf, what)
            waits.append(middle - start)
            reduces.append(time.perf_counter() - middle)
            return out

        comm.allreduce_sum = timed_allreduce
    times = []
    for _ in range(WARMUP + steps):
        start = time.perf_counter()
        train_step(cfg, model, schedule, state, x, y, comm)
        times.append(time.perf_counter() - start)
    if comm.rank == 0:
        med = statistics.median(times[WARMUP:])
        result = {"preset": preset, "params": param_count(model), "ranks": comm.size, "batch": batch,
                  "step_s": med, "img_per_s": batch / med,
                  "wait_ms": 1e3 * statistics.median(waits[WARMUP:]) if waits else 0.0,
                  "allreduce_ms": 1e3 * statistics.median(reduces[WARMUP:]) if reduces else 0.0}
        print("RESULT " + json.dumps(result), flush=True)


def _run(preset: str, batch: int, steps: int, ranks: int, threads: int) -> dict:
    """One configuration in a fresh process (or mpiexec job) with ``threads`` threads per process."""
    env = {**os.environ, "REFDIFF_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(HERE), "--worker", preset, str(batch), str(steps)]
    if ranks > 1:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return {**json.loads(lines[0][len("RESULT "):]), "threads": threads}


def _throughput(args) -> None:
    """The throughput table: every configuration run ``--repeat`` times, interleaved, the fastest shown."""
    configs = [(preset, ranks, threads) for preset in args.presets
               for ranks, threads in ((1, 1), (1, args.ranks), (args.ranks, 1))]
    runs: dict = {c: [] for c in configs}
    for _ in range(args.repeat):  # interleaved, so that a burst of other load hits every row alike
        for preset, ranks, threads in configs:
            runs[(preset, ranks, threads)].append(_run(preset, args.batch, args.steps, ranks, threads))
    print("| preset | parameters | ranks x threads | global batch | step (s) | images/s | "
          "wait for slowest rank (ms/step) | allreduce (ms/step) | allreduce share of step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (preset, ranks, threads), found in runs.items():
        r = min(found, key=lambda run: run["step_s"])  # the least disturbed by other load
        share = r["allreduce_ms"] / (1e3 * r["step_s"])
        print(f"| {preset} | {r['params']:,} | {ranks} x {threads} | {r['batch']} | {r['step_s']:.3f} | "
              f"{r['img_per_s']:.0f} | {r['wait_ms']:.1f} | {r['allreduce_ms']:.2f} | {100 * share:.1f}% |")


# Networks of the analysis: (name, latency alpha in s, bandwidth beta in bytes/s).
NETWORKS = (("shared memory", 1e-6, 5e9), ("10 GbE", 30e-6, 1.1e9), ("100 Gb/s InfiniBand", 2e-6, 11e9))


def _costs(preset: str, rows: list[int], batch: int) -> dict:
    """One thread, this process: the step time at each row count (what one rank computes), and its part
    every rank repeats whatever its rows (clip + AdamW + EMA over all parameters, the batch's random
    draws), in seconds."""
    from refdiff.backend import Generator
    from refdiff.models.presets import PRESETS
    from refdiff.models.unet import param_count
    from refdiff.optim import adamw_step, clip_grad_norm, ema_update
    from refdiff.train import TrainConfig, train_step
    from refdiff.train_state import init_state

    model = PRESETS[preset](num_classes=10)
    shape = (model.in_channels, model.image_size, model.image_size)
    state = init_state(TrainConfig(batch_size=batch, warmup_steps=0), model)
    grads = {k: v + 1e-3 for k, v in state.params.items()}

    def replicated():
        clipped, _ = clip_grad_norm(grads, 1.0)
        params, _ = adamw_step(state.params, clipped, state.opt, 1e-3)
        ema_update(state.ema, params, 0.999, 5)
        g = Generator(0)
        g.integers(0, 512, (batch,)), g.uniform((batch,)), g.integers(0, 1000, (batch,)), g.normal((batch, *shape))

    def step_time(n: int) -> float:
        c = TrainConfig(batch_size=n, warmup_steps=0)
        s, schedule = init_state(c, model), c.schedule_obj()
        x, y = np.zeros((max(rows), *shape), np.float32), np.zeros(max(rows), np.int64)
        return _median_time(lambda: train_step(c, model, schedule, s, x, y), 3)

    return {"P": param_count(model), "t_fixed": _median_time(replicated, 5), "step": {n: step_time(n) for n in rows}}


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first call warms caches up


def _analysis(args) -> None:
    """The strong-scaling model t_step(N) = t_rank(ceil(B / N) rows) + t_comm(N), with measured t_rank."""
    from refdiff.parallel import set_num_threads

    set_num_threads(1)  # one rank's core: no batch parts (OPENBLAS_NUM_THREADS=1 limits the library)
    B, Ns = args.batch, args.analysis_ranks
    print(f"t_step(N) = t_rank(B / N rows, measured on one thread) + t_comm(N), B = {B}; ring allreduce of "
          "S = 4 (P + B) bytes: t_comm = 2 (N - 1) alpha + 2 (N - 1) / N * S / beta; efficiency t_step(1) / "
          "(N t_step(N))")
    print("networks: " + "; ".join(f"{name}: alpha {1e6 * a:g} us, beta {b / 1e9:g} GB/s" for name, a, b in NETWORKS))
    print("| preset | P | N | rows per rank | t_rank (ms) | of it repeated on every rank (ms) | sent + received "
          "per rank (MB) | " + " | ".join(f"comm, {name} (ms)" for name, _, _ in NETWORKS) + " | efficiency, "
          + " / ".join(name for name, _, _ in NETWORKS) + " |")
    print("|" + "---|" * (8 + len(NETWORKS)))
    for preset in args.presets:
        rows = {N: -(-B // N) for N in Ns}  # the largest shard: the slowest rank
        c = _costs(preset, sorted(set(rows.values())), B)
        S, one = 4 * (c["P"] + B), None
        for N in Ns:
            compute = c["step"][rows[N]]
            volume = 2 * (N - 1) / N * S
            comm = [2 * (N - 1) * a + volume / b for _, a, b in NETWORKS]
            one = compute if N == 1 else one
            eff = " / ".join(f"{100 * one / (N * (compute + t)):.0f}%" for t in comm) if one else "n/a"
            print(f"| {preset} | {c['P']:,} | {N} | {rows[N]} | {1e3 * compute:.0f} | {1e3 * c['t_fixed']:.1f} | "
                  f"{volume / 1e6:.2f} | " + " | ".join(f"{1e3 * t:.1f}" for t in comm) + f" | {eff} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=None,
                        help="default: digits8 mnist28 (throughput), mnist28 shapes32 (--analysis)")
    parser.add_argument("--batch", type=int, default=64, help="global batch (default: 64)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default: 10)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks, and the one process's threads (default: 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the fastest is shown (default: 1)")
    parser.add_argument("--analysis", action="store_true",
                        help="instead, measure one rank's step on one thread and print the scaling model")
    parser.add_argument("--analysis-ranks", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--worker", nargs=3, metavar=("PRESET", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if args.analysis:
        args.presets = args.presets or ["mnist28", "shapes32"]
        _analysis(args)
    else:
        args.presets = args.presets or ["digits8", "mnist28"]
        _throughput(args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
