"""Data parallelism over MPI (mpi4py; NCCL through CuPy for GPU buffers): ranks, shards, one allreduce per step.

How ``mpirun -n N refdiff train`` splits a step of global batch B (docs/scaling.md):

    rows      rank r keeps rows [lo_r, hi_r) of the global batch (``shard``: contiguous, sizes
              B // N or B // N + 1, the first B % N ranks take one more)
    draws     every rank draws the whole global batch's random numbers (indices, label dropout, t,
              eps, dropout masks) from the shared generator state and keeps its rows
              (``ShardedGenerator``): the generator advances as in a one-process run, so every rank's
              generator, and every checkpoint, is the same whatever N is
    gradient  rank r computes g_r = (n_r / B) * (1/n_r) sum_{n in its rows} c_n grad L_n;
              one allreduce (sum) of one flat buffer [g_r, the rank's L_n at their rows] gives every
              rank g = (1/B) sum_n c_n grad L_n and all B per-sample losses (``allreduce_batch``);
              ``data_parallel`` wraps a gradient function in these rows, draws and allreduce
    step      clipping, AdamW, EMA and the timestep sampler then see the same numbers on every rank

A Communicator is ``rank``, ``size`` and the few collectives training and sampling use.
``SingleProcess`` is the trivial one, so the training loop has one code path. mpi4py is imported
only when the process was started by an MPI launcher with more than one rank (``get_communicator``).
CuPy's NCCL binding and the choice of a rank's GPU come from refdiff.backend (``nccl_binding``,
``use_cuda_device``), the one place that imports CuPy.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
import warnings
from typing import Any, Callable

import numpy as np

from refdiff.backend import (Generator, asarray, current_stream_ptr, device, host_dtype, library_name, namespace,
                             nccl_binding, to_numpy, use_cuda_device)

# Environment variables an MPI launcher sets to the number of ranks: MPICH and Intel MPI (hydra, also
# Slurm's PMI-2), Open MPI, MVAPICH2.
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# REFDIFF_MPI=1 forces MPI (a launcher this list misses); REFDIFF_MPI=0 ignores the launcher.
FORCE_VAR = "REFDIFF_MPI"
TIMEOUT_VAR = "REFDIFF_MPI_TIMEOUT"
# Seconds a rank waits in a collective before it decides another rank failed or hangs. Rank 0 writes
# checkpoints and preview grids while the others wait at the next allreduce, so this is generous.
DEFAULT_TIMEOUT = 900.0
# A waiting rank polls without sleeping this long (nonblocking MPI progresses only while polled).
SPIN_SECONDS = 0.01
# Seconds an aborting rank waits between printing its message and MPI_Abort: the launcher forwards a
# rank's stderr asynchronously, and MPICH's hydra can drop what is still in the pipe when the abort
# tears the job down (seen in CI: an empty stderr from the aborting rank).
ABORT_GRACE_SECONDS = 1.0


class DistributedError(RuntimeError):
    """A distributed run cannot start (a launcher without mpi4py, a batch smaller than the ranks)."""


# ------------------------------------------------------------------------------------------ shards


def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of an n-row batch that ``rank`` of ``size`` keeps.

    The remainder rule: contiguous shards of n // size rows, the first n % size ranks take one more
    (NumPy's array_split). A rank may get no rows when n < size; training refuses that (``check_batch``).
    """
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def check_batch(batch_size: int, size: int) -> None:
    """Refuse a global batch that leaves a rank without samples; uneven shards follow ``shard``'s rule."""
    if batch_size < size:
        raise DistributedError(f"batch_size {batch_size} is smaller than the number of ranks {size}: every rank "
                               f"needs at least one sample: start at most {batch_size} ranks, or use a batch of "
                               f"at least {size}")


class ShardedGenerator:
    """The draws a one-process run would make for a whole n-row batch, of which this rank keeps rows [lo, hi).

    Every draw must have the batch as its leading axis, of this rank's length hi - lo: it is drawn
    for all n rows from the wrapped generator and sliced, so the wrapped generator advances exactly as
    in a one-process run (the cost: each rank draws all n rows). Models and samplers call it like a
    refdiff.backend.Generator (dropout masks, sampler noise).
    """

    def __init__(self, generator: Generator, lo: int, hi: int, n: int):
        if not 0 <= lo <= hi <= n:
            raise ValueError(f"rows must satisfy 0 <= lo <= hi <= n, got lo={lo}, hi={hi}, n={n}")
        self.generator, self.lo, self.hi, self.n = generator, lo, hi, n

    def _global(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(shape)
        if not shape or shape[0] != self.hi - self.lo:
            raise ValueError(f"a sharded draw needs the batch as its leading axis ({self.hi - self.lo} rows), "
                             f"got shape {shape}")
        return (self.n, *shape[1:])

    def _host_dtype(self, like: Any, dtype: Any):
        if like is None:
            return dtype
        return host_dtype(like.dtype if dtype is None else dtype, namespace(like))

    def normal(self, shape: tuple[int, ...], like: Any = None, dtype: Any = None):
        """Standard normal draws of ``shape`` (this rank's rows), as Generator.normal."""
        host = self.generator.normal(self._global(shape), dtype=self._host_dtype(like, dtype))[self.lo:self.hi]
        return host if like is None else asarray(host, like=like)

    def uniform(self, shape: tuple[int, ...], like: Any = None, dtype: Any = None, low: float = 0.0,
                high: float = 1.0):
        """Uniform draws on [low, high) of ``shape`` (this rank's rows), as Generator.uniform."""
        host = self.generator.uniform(self._global(shape), dtype=self._host_dtype(like, dtype), low=low,
                                      high=high)[self.lo:self.hi]
        return host if like is None else asarray(host, like=like)

    def integers(self, low: int, high: int, shape: tuple[int, ...], like: Any = None):
        """Integers uniform on [low, high) of ``shape`` (this rank's rows), as Generator.integers."""
        host = self.generator.integers(low, high, self._global(shape))[self.lo:self.hi]
        return host if like is None else asarray(host, like=like)


# ------------------------------------------------------------------------------------- the allreduce


def allreduce_batch(comm, grads: dict, per_sample: Any, lo: int, hi: int, n: int) -> tuple[dict, Any]:
    """The global batch's gradient and all n per-sample losses, on every rank, from one allreduce.

    Math: g = sum_r (n_r / n) g_r, g_r the mean gradient over rank r's n_r rows; L[lo_r:hi_r] = L_r.
    The flat buffer is [(n_r / n) g_r for every key, in the dict's order; zeros(lo), L_r, zeros(n - hi)]:
    (P + n,) in the gradients' dtype. One process returns its inputs untouched.
    grads: {key: array}; per_sample: (hi - lo,) losses. Returns ({key: array}, (n,) losses).
    """
    if comm.size == 1:
        return grads, per_sample
    xp = namespace(per_sample)
    like = next(iter(grads.values()))
    dt, dev, scale = like.dtype, device(like), (hi - lo) / n
    parts = [scale * xp.reshape(g, (-1,)) for g in grads.values()]
    parts += [xp.zeros((lo,), dtype=dt, device=dev), xp.astype(per_sample, dt),
              xp.zeros((n - hi,), dtype=dt, device=dev)]
    buf = comm.allreduce_sum(xp.concat(parts), what="the gradient allreduce")  # (P + n,)
    out, offset = {}, 0
    for key, g in grads.items():
        size = int(np.prod(g.shape))
        out[key] = xp.reshape(buf[offset:offset + size], g.shape)
        offset += size
    return out, buf[offset:]


def data_parallel(gradient: Callable, comm: Any) -> Callable:
    """``gradient`` run data-parallel: ``run(batch, generator)`` gives every rank what one process's
    ``gradient`` gives for the whole batch, to float tolerance.

    Rank r calls gradient(its rows [lo_r, hi_r) of batch (``shard``), a ShardedGenerator for those rows)
    -> (grads, per-sample losses), and one allreduce (``allreduce_batch``) sums the ranks' gradients and
    gathers all n losses. batch: a NamedTuple of arrays (or None) with the n-row batch as leading axis;
    gradient's grads are the mean over its rows. With one process the rows are the whole batch.
    """
    def run(batch: tuple, generator: Generator) -> tuple[dict, Any]:
        n = next(a for a in batch if a is not None).shape[0]
        lo, hi = shard(n, comm.rank, comm.size)
        rows = type(batch)(*(None if a is None else a[lo:hi] for a in batch))
        grads, per_sample = gradient(rows, ShardedGenerator(generator, lo, hi, n))
        return allreduce_batch(comm, grads, per_sample, lo, hi, n)

    return run


# ------------------------------------------------------------------------------------ communicators


class SingleProcess:
    """The communicator of a run without MPI: rank 0 of 1; every collective returns its input."""

    rank, size = 0, 1
    allreduce_seconds, allreduce_calls = 0.0, 0

    def allreduce_sum(self, buf: Any, what: str = "an allreduce") -> Any:
        return buf

    def bcast(self, obj: Any) -> Any:
        return obj

    def gather_rows(self, rows: np.ndarray, what: str = "a gather") -> np.ndarray:
        return rows

    def barrier(self, what: str = "a barrier") -> None:
        return None

    def abort_on_error(self, collective: tuple = ()):
        return contextlib.nullcontext()

    def use_local_gpu(self) -> None:
        return None


SINGLE_PROCESS = SingleProcess()


class MPICommunicator:
    """MPI_COMM_WORLD through mpi4py, with a timeout on every wait and MPI_Abort on a failed rank.

    Every wait for the other ranks is a nonblocking barrier polled under a timeout: a rank that
    waits longer than ``timeout`` seconds aborts the job with a message, instead of hanging. The
    transfer that follows (all ranks present) is a blocking allreduce: host (NumPy) buffers go through
    MPI; CuPy buffers through NCCL where CuPy has it, else through MPI directly where it is
    CUDA-aware, else through host memory with a warning. Counts the calls and the seconds spent in
    ``allreduce_sum`` (for the benchmark).
    """

    def __init__(self, comm: Any, timeout: float = DEFAULT_TIMEOUT):
        from mpi4py import MPI

        self.MPI, self.comm, self.timeout = MPI, comm, float(timeout)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.allreduce_seconds, self.allreduce_calls = 0.0, 0
        self._device_path: str | None = None  # "nccl" | "cuda-aware" | "host", agreed at the first device buffer
        self._nccl, self._warned = None, False

    # --- failure handling
    def abort(self, message: str, code: int = 1) -> None:
        """Print ``message`` naming this rank, then end every rank of the job (MPI_Abort)."""
        print(f"refdiff: rank {self.rank} of {self.size}: {message}; aborting all ranks", file=sys.stderr, flush=True)
        time.sleep(ABORT_GRACE_SECONDS)  # let the launcher pass the message on before the abort
        self.comm.Abort(code)

    @contextlib.contextmanager
    def abort_on_error(self, collective: tuple = ()):
        """Turn an exception on one rank into MPI_Abort, so the other ranks exit instead of waiting forever.

        ``collective``: exception types every rank raises at the same point (a non-finite loss, which
        the allreduce gives to all ranks): those propagate normally.
        """
        try:
            yield
        except collective:
            raise
        except Exception as err:
            if not isinstance(err, (ValueError, FileNotFoundError, RuntimeError)):
                traceback.print_exc()
            self.abort(f"{type(err).__name__}: {err}")

    def _wait(self, request: Any, what: str) -> None:
        """Poll a non-blocking request until it completes; abort after ``timeout`` seconds.

        Spins for SPIN_SECONDS (a rank a little behind), then sleeps up to 1 ms between polls (a rank
        writing a checkpoint, or a failed one) so that a waiting rank leaves its core to the others.
        """
        start = time.monotonic()
        pause = 0.0
        while not request.Test():
            waited = time.monotonic() - start
            if waited > self.timeout:
                self.abort(f"waited {self.timeout:g} s for the other ranks in {what}: a rank failed or hangs "
                           f"(set {TIMEOUT_VAR} or --mpi-timeout to wait longer)")
            if waited > SPIN_SECONDS:
                time.sleep(pause)
                pause = min(max(2.0 * pause, 1e-5), 1e-3)

    # --- collectives
    def allreduce_sum(self, buf: Any, what: str = "an allreduce") -> Any:
        """The elementwise sum of a 1-D buffer over all ranks, on every rank, same library and device."""
        start = time.perf_counter()
        self.barrier(what)  # every rank has arrived (or the timeout aborted): the transfer only moves data
        name = library_name(buf)
        if name == "numpy":
            out = self._host_allreduce(np.ascontiguousarray(buf))
        elif name == "cupy":
            out = self._device_allreduce(buf)
        else:
            self._warn_host_copy(name)
            out = asarray(self._host_allreduce(np.array(to_numpy(buf))), like=buf)
        self.allreduce_seconds += time.perf_counter() - start
        self.allreduce_calls += 1
        return out

    def _host_allreduce(self, buf: np.ndarray) -> np.ndarray:
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def bcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled: for configs and checkpoints, once per run)."""
        return self.comm.bcast(obj, root=0)

    def barrier(self, what: str = "a barrier") -> None:
        """Wait for every rank, with the timeout."""
        self._wait(self.comm.Ibarrier(), what)

    def gather_rows(self, rows: np.ndarray, what: str = "a gather") -> np.ndarray | None:
        """Every rank's host rows, concatenated in rank order on rank 0 (None on the others)."""
        self.barrier(what)  # the long part (each rank's work) ends here, under the timeout
        parts = self.comm.gather(np.asarray(rows), root=0)
        return None if parts is None else np.concatenate(parts, axis=0)

    # --- GPUs
    def use_local_gpu(self) -> None:
        """Make this rank's current CUDA device its node-local rank modulo the node's GPUs."""
        use_cuda_device(self.comm.Split_type(self.MPI.COMM_TYPE_SHARED).Get_rank())

    def _device_allreduce(self, buf: Any) -> Any:
        if self._device_path is None:
            self._device_path = self._agree_device_path()
        if self._device_path == "nccl":
            return self._nccl_allreduce(buf)
        buf.device.synchronize()  # the kernels writing buf have finished before MPI reads it
        if self._device_path == "cuda-aware":
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            return buf
        return asarray(self._host_allreduce(to_numpy(buf)), like=buf)  # to_numpy copies to a fresh host array

    def _agree_device_path(self) -> str:
        """The best path every rank has: NCCL, else CUDA-aware MPI, else host copies (with a warning)."""
        def everywhere(flag: bool) -> bool:
            return bool(self.comm.allreduce(int(flag), op=self.MPI.MIN))

        path = "host"
        if everywhere(nccl_binding() is not None):
            path = "nccl"
        elif everywhere(_mpi_cuda_aware(self.MPI)):
            path = "cuda-aware"
        if path == "nccl":
            nccl = nccl_binding()
            uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        elif path == "host":
            self._warn_host_copy("cupy")
        return path

    def _nccl_allreduce(self, buf: Any) -> Any:
        """In-place NCCL sum on the current stream (later kernels on the stream see the result)."""
        nccl = nccl_binding()
        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        ptr = buf.data.ptr
        self._nccl.allReduce(ptr, ptr, buf.size, types[np.dtype(buf.dtype)], nccl.NCCL_SUM, current_stream_ptr())
        return buf

    def _warn_host_copy(self, library: str) -> None:
        if self.rank == 0 and not self._warned:
            warnings.warn(f"no NCCL and no CUDA-aware MPI for {library} buffers: every allreduce copies the "
                          "gradients to host memory and back (slower); install CuPy with NCCL "
                          "(pip install 'refdiff[gpu]') or use a CUDA-aware MPI", RuntimeWarning, stacklevel=3)
        self._warned = True


def _mpi_cuda_aware(MPI: Any) -> bool:
    try:
        return bool(MPI.Query_cuda_support())  # MPIX_Query_cuda_support, mpi4py >= 4
    except Exception:
        return False


# ---------------------------------------------------------------------------------------- entry point


def launched_size() -> int:
    """The number of ranks an MPI launcher started, from its environment (1 without a launcher)."""
    for var in LAUNCHER_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


_WORLD: MPICommunicator | None = None


def get_communicator(timeout: float | None = None):
    """The communicator of this process: MPI_COMM_WORLD under ``mpirun -n N`` (N > 1), else SINGLE_PROCESS.

    mpi4py is imported only under a launcher (or REFDIFF_MPI=1); a run started by one without mpi4py
    installed is an error, not N separate trainings. timeout: seconds a rank waits in a collective
    (default REFDIFF_MPI_TIMEOUT or DEFAULT_TIMEOUT).
    """
    global _WORLD
    force = os.environ.get(FORCE_VAR, "")
    if force == "0" or (force != "1" and launched_size() <= 1):
        return SINGLE_PROCESS
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_VAR, DEFAULT_TIMEOUT))
    if not timeout > 0:
        raise ValueError(f"the MPI timeout must be a positive number of seconds, got {timeout!r}")
    if _WORLD is None:
        try:
            from mpi4py import MPI
        except ImportError as err:
            raise DistributedError(f"this process was started by an MPI launcher ({launched_size()} ranks) but "
                                   "mpi4py is not installed: pip install 'refdiff[mpi]'") from err
        if MPI.COMM_WORLD.Get_size() == 1:
            return SINGLE_PROCESS
        _WORLD = MPICommunicator(MPI.COMM_WORLD, timeout)
    _WORLD.timeout = float(timeout)
    return _WORLD
