"""Array backends: the one module that knows which array library is in use.

Library code never imports NumPy-as-xp, CuPy or array_api_strict directly: it asks ``namespace(x)``
for the namespace of its inputs (docs/design.md rules 1-2) and calls only Python Array API functions on it.
This module also owns host randomness (``Generator``: NumPy PCG64 on the host, moved to the device,
so one seed gives the same numbers on every backend), the one helper that moves a float64
schedule table to an input's device and dtype (``gather``), and the host threads that split a
NumPy batch over the cores (``set_num_threads``, ``batch_parts``, ``parallel_map``).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import importlib
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import array_api_compat
import numpy as np

BACKENDS = ("numpy", "cupy", "array_api_strict")

# The fake non-CPU device of array_api_strict: arrays on it refuse to mix with host arrays and
# refuse np.asarray, so a strict run catches every host/device mix-up without a GPU.
STRICT_DEVICE = "device1"


def namespace(*arrays: Any):
    """The Array API namespace shared by ``arrays`` (array_api_compat wraps NumPy and CuPy)."""
    return array_api_compat.array_namespace(*arrays)


def device(x: Any):
    """The device ``x`` lives on, in its library's own terms."""
    return array_api_compat.device(x)


def library_name(x: Any) -> str:
    """``"numpy"``, ``"cupy"`` or ``"array_api_strict"`` (else the array's module name)."""
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    return type(x).__module__.split(".")[0]


def to_numpy(x: Any) -> np.ndarray:
    """``x`` (any backend, any device) as a host NumPy array; a NumPy input is returned as is."""
    name = library_name(x)
    if name == "numpy":
        return np.asarray(x)
    if name == "cupy":
        return x.get()
    if name == "array_api_strict":
        strict = importlib.import_module("array_api_strict")
        return np.asarray(x.to_device(strict.Device("CPU_DEVICE")))
    return np.from_dlpack(x)


def host_dtype(dtype: Any, xp: Any) -> np.dtype:
    """The NumPy dtype with the same kind and width as ``dtype`` of namespace ``xp``."""
    if xp.isdtype(dtype, "real floating"):
        return np.dtype(f"float{xp.finfo(dtype).bits}")
    if xp.isdtype(dtype, "signed integer"):
        return np.dtype(f"int{xp.iinfo(dtype).bits}")
    if xp.isdtype(dtype, "unsigned integer"):
        return np.dtype(f"uint{xp.iinfo(dtype).bits}")
    if xp.isdtype(dtype, "bool"):
        return np.dtype(bool)
    raise TypeError(f"dtype must be a real floating, integer or bool dtype, got {dtype}")


def asarray(obj: Any, like: Any = None, dtype: Any = None):
    """Put host data ``obj`` in the library and on the device of ``like`` (NumPy if None).

    ``dtype`` is a dtype of ``like``'s namespace; the cast happens on the host, so a float64 table
    requested as float32 never exists as float64 on the device (docs/design.md rule 6).
    """
    if like is None:
        return np.asarray(obj, dtype=dtype)
    xp = namespace(like)
    if dtype is not None:
        obj = np.asarray(obj, dtype=host_dtype(dtype, xp))
    return xp.asarray(obj, device=device(like))


def gather(table: np.ndarray, t: Any, x: Any):
    """Gather ``table[t]`` on the device and in the dtype of ``x``, shaped to broadcast against x.

    table: (T,) float64 NumPy schedule quantity; t: (N,) integer array of x's library and device;
    x: (N, ...) floating array. Returns (N, 1, ..., 1) with x.ndim axes.
    """
    xp = namespace(x)
    coef = xp.take(asarray(table, like=x, dtype=x.dtype), t)  # (N,)
    return xp.reshape(coef, (coef.shape[0],) + (1,) * (x.ndim - 1))  # (N, 1, ..., 1)


# erf(6) == 1 - 2e-17 and the series below reaches 4e-15 absolute error on [0, 6] with 100 terms.
_ERF_CLIP = 6.0
_ERF_TERMS = 100


def erf(x: Any):
    """The error function, elementwise, on x's backend.

    Math: erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n (2 x^2)^n x / (1*3*...*(2n+1))   (A&S 7.1.6)

    SciPy / cupyx.scipy are the fast paths; other backends (array_api_strict, which the tests use to
    stand in for a GPU) use the series above: all its terms are positive, so it sums without
    cancellation, and 100 terms on |x| <= 6 give 4e-15 absolute error in float64.
    """
    name = library_name(x)
    if name == "numpy":
        import scipy.special

        return np.asarray(scipy.special.erf(x), dtype=x.dtype)
    if name == "cupy":
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(x)
    xp = namespace(x)
    z = xp.clip(x, -_ERF_CLIP, _ERF_CLIP)
    z2 = 2.0 * z * z
    term, total = z, z
    for n in range(1, _ERF_TERMS):
        term = term * z2 / (2 * n + 1)
        total = total + term
    return 2.0 / math.sqrt(math.pi) * xp.exp(-z * z) * total


# ------------------------------------------------------------------- host threads

# Ranks an MPI launcher started on this node (MPICH's Hydra, Open MPI): they share its cores.
_LOCAL_RANKS_ENV = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


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
# Images per part when a host batch is split (parallel_map's items): parts this small keep a
# block's activations in the cores' caches (measured in docs/performance.md) ...
PART_SIZE = 32
# ... and the same part in pixels (PART_SIZE images of 28 x 28): smaller images get more per part.
PART_PIXELS = PART_SIZE * 28 * 28
# A part of fewer pixels costs more in per-layer overhead (Python, the thread hand-off) than a second
# core gains: 2 threads against 1 broke even between 2,000 and 3,200 pixels per part (digits8: 0.85-0.93x
# at 2 x 32 images of 8 x 8, 1.07-1.20x at 2 x 50; mnist28: 0.84-0.95x at 2 x 2 images, 1.17-1.39x at 2 x 3).
MIN_PART_PIXELS = 2500


def set_num_threads(n: int) -> None:
    """Worker threads for refdiff's host batch splitting (batch_parts, parallel_map); 1 turns it off.

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


def batch_parts(N: int, like: Any) -> list[slice]:
    """How to split a batch of N samples for parallel_map: slices of the batch axis, near-equal, in order.

    like: the (N, C, H, W) batch. Host NumPy: parts of about max(PART_SIZE, PART_PIXELS / (H W))
    samples (even on one thread, parts that fit the caches run faster than the whole batch), at least
    one per thread and a multiple of the threads (no core idle in the last round), but no more than
    N H W / MIN_PART_PIXELS parts. Every other case (a GPU, array_api_strict): one part, the whole batch.
    """
    if N <= 1 or library_name(like) != "numpy":
        return [slice(0, N)]
    pixels = math.prod(like.shape[2:])                               # H * W of one sample
    count = max(_NUM_THREADS, -(-N // max(PART_SIZE, PART_PIXELS // pixels)))
    count = -(-count // _NUM_THREADS) * _NUM_THREADS
    count = max(1, min(count, N, N * pixels // MIN_PART_PIXELS))
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


def parallel_map(fn: Callable[[Any], Any], items: list) -> list:
    """[fn(item) for item in items], on get_num_threads() worker threads when there are two or more.

    For independent host work: NumPy releases the GIL inside BLAS calls and elementwise loops, so
    the parts of a batch run on several cores at once. Meanwhile every BLAS library is limited to
    one thread (threadpoolctl): threads splitting the batch and a BLAS pool splitting each product
    on the same cores would oversubscribe them (measured 2-4x slower on a loaded 2-core machine).
    The first threaded call also tunes glibc's malloc to keep freed memory (_keep_freed_memory).
    """
    if len(items) <= 1 or _NUM_THREADS == 1:
        return [fn(item) for item in items]
    global _POOL, _POOL_SIZE
    if _POOL is None:
        _keep_freed_memory()
        _POOL = concurrent.futures.ThreadPoolExecutor(_NUM_THREADS, thread_name_prefix="refdiff")
        _POOL_SIZE = _NUM_THREADS
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return list(_POOL.map(fn, items))


@dataclass(frozen=True)
class Backend:
    """A named array library and the device new arrays go to.

    ``get_backend(name)`` builds one; ``asarray`` puts host data on it. Library code never needs a
    Backend (it follows its inputs); entry points (CLI, examples, tests) use one to make the first
    arrays.
    """

    name: str
    xp: Any
    device: Any

    def asarray(self, obj: Any, dtype: Any = None):
        """Host data ``obj`` as an array of this backend, on its device, cast on the host."""
        if dtype is not None:
            obj = np.asarray(obj, dtype=host_dtype(dtype, self.xp))
        return self.xp.asarray(obj, device=self.device)

    def dtype(self, name: str):
        """The namespace's dtype called ``name`` (``"float32"``, ``"float64"``, ``"int64"``)."""
        return getattr(self.xp, name)


def get_backend(name: str = "numpy") -> Backend:
    """The backend called ``name``: one of ``"numpy"``, ``"cupy"``, ``"array_api_strict"``.

    array_api_strict puts its arrays on the fake device ``STRICT_DEVICE``; cupy on the current GPU.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "numpy":
        return Backend("numpy", array_api_compat.array_namespace(np.empty(0)), "cpu")
    if name == "cupy":
        try:
            cp = importlib.import_module("cupy")
        except ImportError as err:
            raise ValueError("backend 'cupy' needs CuPy: pip install 'refdiff[gpu]'") from err
        return Backend("cupy", array_api_compat.array_namespace(cp.empty(0)), cp.cuda.Device())
    strict = importlib.import_module("array_api_strict")
    return Backend("array_api_strict", strict, strict.Device(STRICT_DEVICE))


def available_backends() -> list[str]:
    """Names of the backends usable here: cupy only where it imports and sees a GPU."""
    names = ["numpy"]
    try:
        cp = importlib.import_module("cupy")
        if cp.cuda.runtime.getDeviceCount() > 0:
            names.append("cupy")
    except Exception:  # ImportError, or CUDA present without a driver/GPU
        pass
    if importlib.util.find_spec("array_api_strict") is not None:
        names.append("array_api_strict")
    return names


# ------------------------------------------------------------------- CUDA devices and NCCL (for refdiff.distributed)


def use_cuda_device(index: int) -> None:
    """Make CUDA device ``index`` modulo this machine's GPU count CuPy's current device (one GPU per rank)."""
    cp = importlib.import_module("cupy")
    cp.cuda.Device(index % cp.cuda.runtime.getDeviceCount()).use()


def nccl_binding() -> Any:
    """CuPy's NCCL binding (``cupy.cuda.nccl``), or None without CuPy or without NCCL in it."""
    try:
        binding = importlib.import_module("cupy.cuda.nccl")
    except Exception:  # no CuPy, or CuPy built without NCCL
        return None
    return binding if getattr(binding, "available", True) else None


def current_stream_ptr() -> int:
    """The raw pointer of CuPy's current CUDA stream, the stream NCCL calls are queued on."""
    return importlib.import_module("cupy").cuda.get_current_stream().ptr


class Generator:
    """Seeded randomness drawn on the host (NumPy PCG64) and moved to the target backend.

    The same seed gives the same numbers on NumPy, CuPy and array_api_strict (docs/design.md rule 4);
    ``get_state`` / ``set_state`` round-trip the exact stream position through a (6,) uint64 array,
    which a checkpoint stores as a plain array.
    """

    def __init__(self, seed: int):
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self._bitgen = np.random.PCG64(int(seed))
        self._rng = np.random.Generator(self._bitgen)

    def _float_dtype(self, like: Any, dtype: Any) -> np.dtype:
        """Host float dtype for a draw: the width of ``dtype`` (or of ``like``), float64 if neither."""
        if like is None:
            target = np.dtype(np.float64 if dtype is None else dtype)
            if target.kind != "f":
                raise TypeError(f"a float draw needs a real floating dtype, got {target}")
            return target
        xp = namespace(like)
        target = like.dtype if dtype is None else dtype
        if not xp.isdtype(target, "real floating"):
            raise TypeError(f"a float draw needs a real floating dtype, got {target}")
        return host_dtype(target, xp)

    def normal(self, shape: tuple[int, ...], like: Any = None, dtype: Any = None):
        """Standard normal draws of ``shape`` in the library/device/dtype of ``like``.

        Always drawn in float64 and cast, so float32 and float64 runs see the same noise.
        """
        host = self._rng.standard_normal(shape).astype(self._float_dtype(like, dtype))
        return host if like is None else asarray(host, like=like)

    def uniform(self, shape: tuple[int, ...], like: Any = None, dtype: Any = None,
                low: float = 0.0, high: float = 1.0):
        """Uniform draws on [low, high) of ``shape`` in the library/device/dtype of ``like``."""
        host = self._rng.uniform(low, high, shape).astype(self._float_dtype(like, dtype))
        return host if like is None else asarray(host, like=like)

    def integers(self, low: int, high: int, shape: tuple[int, ...], like: Any = None):
        """Integers uniform on [low, high) of ``shape``, int64, in the library/device of ``like``."""
        host = self._rng.integers(low, high, shape, dtype=np.int64)
        return host if like is None else asarray(host, like=like)

    def get_state(self) -> np.ndarray:
        """The stream position as a (6,) uint64 array: state hi/lo, increment hi/lo, uint32 cache."""
        s = self._bitgen.state
        mask = (1 << 64) - 1
        state, inc = s["state"]["state"], s["state"]["inc"]
        words = [state >> 64, state & mask, inc >> 64, inc & mask, s["has_uint32"], s["uinteger"]]
        return np.array(words, dtype=np.uint64)

    def set_state(self, words: np.ndarray) -> None:
        """Restore a position saved by ``get_state``."""
        w = [int(v) for v in np.asarray(words, dtype=np.uint64)]
        if len(w) != 6:
            raise ValueError(f"words must be the (6,) uint64 array of get_state, got {len(w)} values")
        self._bitgen.state = {
            "bit_generator": "PCG64",
            "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
            "has_uint32": w[4],
            "uinteger": w[5],
        }
