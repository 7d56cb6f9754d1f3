"""Array backends: the one module that knows which array library is in use.

Library code never imports NumPy-as-xp, CuPy or array_api_strict directly: it asks ``namespace(x)``
for the namespace of its inputs (docs/design.md rules 1-2) and calls only Python Array API functions on it.
This module also owns host randomness (``Generator``: NumPy PCG64 on the host, moved to the device,
so one seed gives the same numbers on every backend) and the one helper that moves a float64
schedule table to an input's device and dtype (``gather``), and ``add_product`` (c += a @ b in place:
host BLAS through SciPy's wrappers, a product and an addition elsewhere). How worker processes or threads
split a NumPy batch over the cores is refdiff.parallel's business.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Iterator

import array_api_compat
import numpy as np

BACKENDS = ("numpy", "cupy", "array_api_strict")

# The fake non-CPU device of array_api_strict: arrays on it refuse to mix with host arrays and
# refuse np.asarray, so a strict run catches every host/device mix-up without a GPU.
STRICT_DEVICE = "device1"


_NUMPY_NAMESPACE = array_api_compat.array_namespace(np.empty(0))


def namespace(*arrays: Any):
    """The Array API namespace shared by ``arrays`` (array_api_compat wraps NumPy and CuPy).

    Plain NumPy arrays take a shortcut to array_api_compat's NumPy namespace: the general lookup
    inspects every argument for every library it knows, about 5-10 us a call, and a U-Net step asks
    several hundred times.
    """
    if arrays and all(type(a) is np.ndarray for a in arrays):
        return _NUMPY_NAMESPACE
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


def host_blas() -> Any:
    """SciPy's BLAS wrappers (scipy.linalg.blas), imported on the first call.

    SciPy's wheels bring their own OpenBLAS, a second BLAS pool beside NumPy's: refdiff.parallel
    calls this before it takes control of the BLAS threads, so that its limits reach both pools.
    """
    from scipy.linalg import blas

    return blas


_ONE_THREAD_BLOCKS = 0  # how many one_thread_blas blocks are open (refdiff.parallel.one_blas_thread)


@contextlib.contextmanager
def one_thread_blas() -> Iterator[None]:
    """Marks a block in which every BLAS library runs one thread (refdiff.parallel.one_blas_thread
    holds them there and opens this block): only inside one does add_product call SciPy's gemm. With
    NumPy's and SciPy's OpenBLAS pools both on their default threads, each pool's workers spin on the
    cores the other's products need: a digits8 training step called outside refdiff's layout took
    470 ms against 42 ms."""
    global _ONE_THREAD_BLOCKS
    _ONE_THREAD_BLOCKS += 1
    try:
        yield
    finally:
        _ONE_THREAD_BLOCKS -= 1


GEMM_MIN_COLUMNS = 8
_GEMM = {np.dtype(np.float32): "sgemm", np.dtype(np.float64): "dgemm"}  # SciPy's gemm for c's dtype


def add_product(c: Any, a: Any, b: Any) -> None:
    """c += a @ b in place, for 2-D a (M, K), b (K, C) and c (M, C) of one library and dtype.

    Host NumPy float32/float64 inside a one_thread_blas block, with c C-contiguous and a, b each C- or
    F-contiguous (a transposed view is F-contiguous): BLAS gemm accumulates into c itself (beta = 1),
    no (M, C) temporary and no separate addition. gemm is Fortran-ordered, so it computes
    c^T += b^T a^T on the transposed views, each operand passed as it lies with its transpose flag.
    Elsewhere, and for fewer than GEMM_MIN_COLUMNS output columns (where OpenBLAS's gemm measured up to
    2.3x slower than NumPy's product and an addition): c += a @ b.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or tuple(c.shape) != (a.shape[0], b.shape[1]):
        raise ValueError(f"add_product needs c (M, C), a (M, K) and b (K, C), got c {tuple(c.shape)}, "
                         f"a {tuple(a.shape)}, b {tuple(b.shape)}")
    gemm_name = _GEMM.get(c.dtype) if type(c) is np.ndarray and _ONE_THREAD_BLOCKS > 0 else None
    gemm = (gemm_name is not None and c.shape[1] >= GEMM_MIN_COLUMNS and c.flags.c_contiguous
            and a.dtype == c.dtype and b.dtype == c.dtype)
    operands = [_fortran_operand(m) for m in (b, a)] if gemm else [None]  # gemm's factors: b^T, then a^T
    if None in operands:
        c += a @ b
        return
    (bt, trans_b), (at, trans_a) = operands
    getattr(host_blas(), gemm_name)(1.0, bt, at, beta=1.0, c=c.T, overwrite_c=1, trans_a=trans_b, trans_b=trans_a)


def _fortran_operand(m: np.ndarray) -> tuple[np.ndarray, int] | None:
    """m^T for Fortran BLAS without a copy: (m.T, 0) for C-contiguous m, (m, 1: "transpose it") for
    F-contiguous m; None for other strides."""
    if m.flags.c_contiguous:
        return m.T, 0
    if m.flags.f_contiguous:
        return m, 1
    return None


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
        return Backend("numpy", _NUMPY_NAMESPACE, "cpu")
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
