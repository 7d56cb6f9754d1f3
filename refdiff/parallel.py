"""Batch parts on host cores: the speed layer's way to use every core (docs/design.md rule 10).

Every sample goes through a denoiser on its own (GroupNorm and attention are per sample), so a model's
forward/backward pair can run a NumPy batch in parts, one part per core, and add the parts' parameter
gradients up afterwards. ``in_parts(forward, backward)`` wraps any such pair; the models stay one
plain forward and one plain backward over the whole batch.

The layout, and why it holds with other work on the cores:

- refdiff splits the batch itself; while a wrapped pair runs, every BLAS library is limited to one
  thread (threadpoolctl), also when the batch is a single part. A BLAS pool (OpenBLAS) splits each
  matrix product over the cores and its workers spin between products: with another process holding a
  core, every product waits for a descheduled worker, and a digits8 training step took 14-42x longer
  beside two busy loops (docs/performance.md, benchmarks/bench_load.py).
- the parts beyond the caller's own run in worker processes (refdiff.workers; ``set_processes``), or
  on worker threads where processes cannot be used. A worker takes its parts and hands back once per
  forward and once per backward, and waits asleep (on a socket or a lock), never spinning, so a loaded
  core costs its fair share. Processes because threads share one GIL: every NumPy call takes it for
  its dispatch, and at small parts the threads wait on each other (text16 at 16 images a part: two
  threads 1.55x one thread, two processes 2.0x), so parts in processes pay from far smaller batches
  (MIN_PART_PIXELS_PROCESSES against MIN_PART_PIXELS).
- glibc's malloc keeps freed memory for reuse (``_keep_freed_memory``), from the first host call of a
  wrapped pair on the speed layer, one part or several: fresh NumPy temporaries would otherwise
  page-fault in again on every layer (a digits8 group norm took 1.8x as long), and the threads'
  faults contend for one memory map.

Everything here steps aside where it cannot help: on a GPU or array_api_strict a batch is one part and
no thread or BLAS limit is used, and on the reference path (refdiff.speed) a batch is one part.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import math
import os
import threading
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from refdiff import speed, workers
from refdiff.backend import host_blas, library_name, namespace, one_thread_blas

# Ranks an MPI launcher started on this node (MPICH's Hydra, Open MPI): they share its cores.
_LOCAL_RANKS_ENV = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")

# Images per part when a host batch is split: parts this small keep a block's activations in the
# cores' caches (measured in docs/performance.md) ...
PART_SIZE = 32
# ... and the same part in pixels (PART_SIZE images of 28 x 28): smaller images get more per part.
PART_PIXELS = PART_SIZE * 28 * 28
# A part of fewer pixels costs more in per-layer overhead (Python, the thread hand-off) than a second
# core gains: 2 threads against 1 broke even between 2,000 and 3,200 pixels per part (digits8: 0.85-0.93x
# at 2 x 32 images of 8 x 8, 1.07-1.20x at 2 x 50; mnist28: 0.84-0.95x at 2 x 2 images, 1.17-1.39x at 2 x 3).
MIN_PART_PIXELS = 2500
# In worker processes (refdiff.workers) nothing waits on a GIL and the break-even is far lower: 2 parts
# against 1 measured 0.97x at digits8's 2 x 4 images (256 pixels a part), 1.08x at 2 x 8 (512), 1.30x at
# 2 x 16; mnist28 1.11x at 2 x 1 image (784) (docs/performance.md, "Batch parts in processes").
MIN_PART_PIXELS_PROCESSES = 500


def _default_threads() -> int:
    """REFDIFF_NUM_THREADS if set, else the CPUs this process may run on, shared by the MPI ranks
    of this node (so that ranks * threads does not oversubscribe the cores)."""
    env = os.environ.get("REFDIFF_NUM_THREADS")
    if env is not None:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    ranks = next((int(os.environ[k]) for k in _LOCAL_RANKS_ENV if os.environ.get(k, "").isdigit()), 1)
    return max(1, cpus // max(ranks, 1))


_NUM_THREADS = _default_threads()
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_IN_WORKER = threading.local()  # .active is True inside a pool worker: nested maps run in place
_PROCESSES = os.environ.get("REFDIFF_PROCESSES", "1") != "0"  # batch parts in worker processes (set_processes)


def set_num_threads(n: int) -> None:
    """Worker threads for refdiff's batch parts (batch_parts, parallel_map, in_parts); 1 turns them off.

    The default is REFDIFF_NUM_THREADS, or the CPUs the process may use divided by the MPI ranks
    on the node (MPI_LOCALNRANKS, OMPI_COMM_WORLD_LOCAL_SIZE).
    """
    global _NUM_THREADS, _POOL
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if _POOL is not None and n > 1 and n != _POOL_SIZE:  # n = 1 uses no pool: keep it for later
        _POOL.shutdown()
        _POOL = None
    _NUM_THREADS = int(n)


def get_num_threads() -> int:
    """The number of worker threads set_num_threads set (or the default)."""
    return _NUM_THREADS


def set_processes(on: bool) -> None:
    """Run a model's batch parts in worker processes (True, the default where refdiff.workers.AVAILABLE;
    REFDIFF_PROCESSES=0 at start-up turns it off) or on threads (False). The numbers are the same.
    Workers already started wait until they are used again or the process ends (workers.shutdown)."""
    global _PROCESSES
    if not isinstance(on, bool):
        raise ValueError(f"on must be a bool, got {on!r}")
    _PROCESSES = on


def get_processes() -> bool:
    """Whether a model's batch parts go to worker processes (set_processes)."""
    return _PROCESSES


def _in_processes(forward: Callable, rows: list, x: Any) -> bool:
    """Whether forward_in_parts sends parts beyond the first to worker processes (refdiff.workers)."""
    return len(rows) > 1 and _PROCESSES and _host(x) and workers.usable(forward, _NUM_THREADS)


def batch_parts(N: int, like: Any) -> list[slice]:
    """How to split a batch of N samples: slices of the batch axis, near-equal, in order.

    like: the (N, C, H, W) batch. Host NumPy on the speed layer: parts of about
    max(PART_SIZE, PART_PIXELS / (H W)) samples (even on one thread, parts that fit the caches run
    faster than the whole batch), at least one per thread and a multiple of the threads (no core idle
    in the last round), but no more than N H W / MIN_PART_PIXELS parts (MIN_PART_PIXELS_PROCESSES when
    the parts go to worker processes). Every other case (a GPU, array_api_strict, the reference path):
    one part, the whole batch.
    """
    if N <= 1 or library_name(like) != "numpy" or not speed.enabled():
        return [slice(0, N)]
    pixels = math.prod(like.shape[2:])                               # H * W of one sample
    least = MIN_PART_PIXELS_PROCESSES if _PROCESSES and workers.startable() else MIN_PART_PIXELS
    count = max(_NUM_THREADS, -(-N // max(PART_SIZE, PART_PIXELS // pixels)))
    count = -(-count // _NUM_THREADS) * _NUM_THREADS
    count = max(1, min(count, N, N * pixels // least))
    bounds = [round(i * N / count) for i in range(count + 1)]  # near-equal sizes
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


# glibc's malloc hands large freed blocks straight back to the OS (mmap threshold 128 KiB, heap
# trimming), so every fresh NumPy temporary above that size page-faults in again, and with worker
# threads those faults contend for the process's one memory map. Keeping up to 256 MiB of freed heap
# for reuse measured 10-14% faster for the 2-thread U-Net step, no change on one thread
# (docs/performance.md). mallopt options: M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD.
_MALLOC_OPTIONS = {-3: 32 << 20, -1: 256 << 20, -2: 64 << 20}
_MALLOC_TUNED = False


def _keep_freed_memory() -> None:
    """Apply _MALLOC_OPTIONS once, on glibc only; REFDIFF_MALLOC_TUNING=0 leaves malloc alone."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("REFDIFF_MALLOC_TUNING") == "0":
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    for option, value in _MALLOC_OPTIONS.items():
        mallopt(option, value)


_BLAS = None  # threadpoolctl's controller of the BLAS libraries loaded (built once: 130 us -> 6 us a use)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Limit every loaded BLAS library to one thread inside the block (refdiff's threads do the
    splitting; see the module docstring); restores the libraries' own settings after. SciPy's BLAS
    (backend.host_blas, the convolutions' in-place products) is loaded first, so the limit reaches it,
    and the block is a backend.one_thread_blas block, where those in-place products run."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        host_blas()
        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"), one_thread_blas():
        yield


# Environment variables that make OpenBLAS load other kernels or cache sizes than it detects for this CPU.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_libraries() -> list[dict]:
    """Every BLAS library loaded in this process (threadpoolctl's description: library, version,
    threads, file, and for OpenBLAS its kernel, "architecture"), with "overrides": the environment's
    OPENBLAS_OVERRIDES that chose an OpenBLAS's kernel. The kernel sets the speed of the U-Nets' thin
    products: on an AVX-512 CPU whose environment forced the AVX2 kernels ("Haswell"), the digits8
    training step took 1.4x and mnist28's 1.65x as long (docs/performance.md, "The BLAS kernel")."""
    from threadpoolctl import threadpool_info

    host_blas()  # SciPy's, which the convolutions' in-place products use, beside NumPy's
    overrides = {name: os.environ[name] for name in OPENBLAS_OVERRIDES if name in os.environ}
    return [dict(lib, overrides=overrides if lib.get("internal_api") == "openblas" else {})
            for lib in threadpool_info() if lib.get("user_api") == "blas"]


def describe_blas(lib: dict) -> str:
    """One line for a ``blas_libraries`` entry: "openblas 0.3.31, kernel SkylakeX, 2 threads", the
    kernel followed by the variables that chose it."""
    kernel = f", kernel {lib['architecture']}" if lib.get("architecture") else ""
    forced = " ".join(f"{k}={v}" for k, v in lib["overrides"].items())
    return (f"{lib.get('internal_api')} {lib.get('version')}{kernel}{f' ({forced})' if forced else ''}, "
            f"{lib.get('num_threads')} threads")


def blas_summary() -> str:
    """``describe_blas`` of every BLAS library loaded, "; "-separated: what a timing needs beside it."""
    return "; ".join(describe_blas(lib) for lib in blas_libraries())


def parallel_map(fn: Callable[[Any], Any], items: list) -> list:
    """[fn(item) for item in items], on get_num_threads() worker threads when there are two or more.

    For independent host work: NumPy releases the GIL inside BLAS calls and elementwise loops, so
    the parts of a batch run on several cores at once. The caller limits BLAS to one thread
    (one_blas_thread). A map called from inside a worker runs in place (a worker waiting on the pool
    it belongs to could wait forever).
    """
    if len(items) <= 1 or _NUM_THREADS == 1 or getattr(_IN_WORKER, "active", False):
        return [fn(item) for item in items]
    global _POOL, _POOL_SIZE
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(_NUM_THREADS, thread_name_prefix="refdiff",
                                                      initializer=setattr, initargs=(_IN_WORKER, "active", True))
        _POOL_SIZE = _NUM_THREADS
    return list(_POOL.map(fn, items))


# ----------------------------------------------------------------- a forward/backward pair in parts

class PartsCache(NamedTuple):
    """What backward_in_parts needs: each part's rows of the batch and the pair's cache for them."""

    rows: tuple    # slices of the batch axis, in order
    caches: tuple  # the wrapped forward's cache of each part


def _host(x: Any) -> bool:
    return library_name(x) == "numpy"


def host_layout(a: Any) -> contextlib.AbstractContextManager:
    """The thread layout for a pair run on ``a``'s library: on the host one BLAS thread
    (one_blas_thread) and, on the speed layer, malloc keeping freed memory (_keep_freed_memory);
    nothing elsewhere."""
    if not _host(a):
        return contextlib.nullcontext()
    if speed.enabled():
        _keep_freed_memory()
    return one_blas_thread()


def forward_in_parts(forward: Callable, params: dict, cfg: Any, x: Any, t: Any, y: Any = None, **options: Any):
    """forward(params, cfg, x, t[, y], **options) run over batch_parts(N, x): in worker processes, part i
    on executor i mod get_num_threads(), executor 0 this process (refdiff.workers.run_parts); else on
    the worker threads.

    x: (N, ...) and t: (N,), and y ((N,) labels or (N, L) tokens) when given, are split along the batch
    axis; options (train, generator, keep_cache) go to every part. Training with dropout keeps one part,
    so the masks are drawn in the same order on every backend and thread count. Returns (out,
    PartsCache), out the parts' outputs concatenated (N, ...); the cache is None when the forward kept
    none.
    """
    N = x.shape[0]
    dropout = options.get("train", False) and getattr(cfg, "dropout", 0) > 0
    rows = [slice(0, N)] if dropout else batch_parts(N, x)
    parts = [(x[r, ...], t[r], {} if y is None else {"y": y[r, ...]}) for r in rows]  # labels (N,), tokens (N, L)

    def run(part: tuple):
        x_r, t_r, labels = part
        return forward(params, cfg, x_r, t_r, **labels, **options)

    with host_layout(x):
        if _in_processes(forward, rows, x):
            results = workers.run_parts("forward", forward, (params, cfg, options), parts, run, _NUM_THREADS,
                                        host_layout)
        else:
            results = parallel_map(run, parts)
    outs = [out for out, _ in results]
    out = outs[0] if len(outs) == 1 else namespace(x).concat(outs, axis=0)  # (N, ...)
    if results[0][1] is None:
        return out, None
    return out, PartsCache(tuple(rows), tuple(cache for _, cache in results))


def backward_in_parts(backward: Callable, dout: Any, cache: PartsCache, need_dx: bool = False):
    """backward(dout[rows], part cache, need_dx) for every part of forward_in_parts, where its forward
    ran: here, in the worker process that keeps the part's cache, or on the threads.

    Math: every parameter serves every sample, so the parts' parameter gradients add up; dx is the
    parts' dx concatenated along the batch axis. Returns grads, or (grads, dx) with need_dx.
    """
    if not isinstance(cache, PartsCache):
        raise TypeError(f"cache must be the PartsCache of forward_in_parts, got {type(cache).__name__}")

    parts = [(dout[r, ...], c) for r, c in zip(cache.rows, cache.caches)]

    def run(part: tuple):
        dout_r, c = part
        return backward(dout_r, c, need_dx=need_dx)

    with host_layout(dout):
        if any(isinstance(c, workers.RemoteCache) for c in cache.caches):
            results = workers.run_parts("backward", backward, (need_dx,), parts, run, _NUM_THREADS, host_layout)
        else:
            results = parallel_map(run, parts)
    if need_dx:
        results, dxs = [g for g, _ in results], [dx for _, dx in results]
    grads = results[0]
    for g in results[1:]:  # every part's samples add to every parameter's gradient
        grads = {k: grads[k] + g[k] for k in grads}
    if not need_dx:
        return grads
    return grads, (dxs[0] if len(dxs) == 1 else namespace(dout).concat(dxs, axis=0))


def in_parts(forward: Callable, backward: Callable) -> tuple[Callable, Callable]:
    """The pair (forward, backward) run in batch parts: same signatures, PartsCache caches."""

    def forward_parts(params: dict, cfg: Any, x: Any, t: Any, y: Any = None, **options: Any):
        return forward_in_parts(forward, params, cfg, x, t, y, **options)

    def backward_parts(dout: Any, cache: PartsCache, need_dx: bool = False):
        return backward_in_parts(backward, dout, cache, need_dx)

    forward_parts.__name__ = f"{forward.__name__}_in_parts"
    backward_parts.__name__ = f"{backward.__name__}_in_parts"
    forward_parts.__doc__ = f"{forward.__name__} in batch parts (refdiff.parallel.forward_in_parts)."
    backward_parts.__doc__ = f"{backward.__name__} in batch parts (refdiff.parallel.backward_in_parts)."
    return forward_parts, backward_parts


# --- host memory: work that cannot fit is refused before it starts ------------------------------
