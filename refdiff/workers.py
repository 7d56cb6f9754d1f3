"""Worker processes for batch parts: a model's parts on the other cores without sharing a GIL.

refdiff.parallel splits a host batch into parts, one a core. On threads, each part's thousands of
NumPy calls take the interpreter's lock (the GIL) for their dispatch and hand it back around their
loops, and two threads wait on each other at every hand-off: at the text16 U-Net's 16 images a part,
two threads ran a training forward and backward 1.55x as fast as one, where two processes ran 2.0x
(docs/performance.md, "Batch parts in processes"). Here the parts beyond the main process's own run in
worker processes, each with its own interpreter:

- part i runs on executor i mod P (P = refdiff.parallel.get_num_threads()): executor 0 is the calling
  process itself, executors 1 .. P - 1 are workers; a part's cache stays in the worker that computed
  it, and the main process keeps a handle (``RemoteCache``), so only the inputs, the parameters, the
  outputs and the gradients travel;
- every part runs the same code on one BLAS thread as on a thread, so the numbers are bit for bit
  those of the threaded parts;
- workers start on first use (a fresh interpreter each, ``python -c``: no re-import of the caller's
  script), ignore Ctrl-C, and end when the main process closes their socket or exits; an error in a
  worker is raised again in the caller, with the worker's traceback as a note.

One message and one reply per worker and call, pickled over a socket pair (multiprocessing's
Connection). Workers are POSIX only (they inherit their socket by file descriptor); elsewhere, and
for a function that does not pickle, the parts run on threads as before.
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import traceback
import warnings
import weakref
from multiprocessing.connection import Connection
from typing import Any, Callable

from refdiff import speed

AVAILABLE = os.name == "posix"


class WorkerDied(RuntimeError):
    """A worker process ended while the main process waited for its reply."""


class RemoteCache:
    """A part's cache kept by a worker under ``key``; the worker forgets it when this handle is freed."""

    __slots__ = ("worker", "key", "__weakref__")

    def __init__(self, worker: "_Worker", key: int):
        self.worker, self.key = worker, key
        weakref.finalize(self, worker.forget, key)


class _Worker:
    """One worker process and the main process's end of its socket; started, it has said hello."""

    def __init__(self):
        parent, child = socket.socketpair()
        path = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]  # the caller's imports, in order
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), REFDIFF_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        code = "import sys; from refdiff.workers import serve; serve(int(sys.argv[1]))"
        self.process = subprocess.Popen([sys.executable, "-c", code, str(child.fileno())], env=env,
                                        pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        child.close()
        self.connection = Connection(parent.detach())
        self.owner = os.getpid()  # a forked child of the owner must not talk to this worker
        self.keys = 0
        self.forgotten: list[int] = []  # keys whose handles were freed, sent with the next message
        self.receive()  # the worker's hello once it has imported refdiff

    def forget(self, key: int) -> None:
        self.forgotten.append(key)  # a finalizer may run at any time: no I/O here

    def send(self, kind: str, body: tuple) -> None:
        forgotten, self.forgotten = self.forgotten, []
        try:
            self.connection.send((kind, forgotten, body))
        except OSError as error:
            raise self._died() from error

    def receive(self) -> tuple[str, Any]:
        """The worker's reply, ("ok", value) or ("error", exception); WorkerDied if it ended."""
        try:
            return self.connection.recv()
        except (EOFError, OSError) as error:
            raise self._died() from error

    def _died(self) -> WorkerDied:
        return WorkerDied(f"refdiff worker process {self.process.pid} ended unexpectedly (exit code "
                          f"{self.process.poll()})")

    def close(self) -> None:
        self.connection.close()  # the worker reads EOF and exits
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_WORKERS: list[_Worker] = []
_LOCK = threading.Lock()  # one caller at a time; another thread's parts run on threads meanwhile
_PICKLES: dict[Callable, bool] = {}
_FAILED: list[str] = []  # why workers could not start: then the parts run on threads for good


def startable() -> bool:
    """Whether worker processes can serve this process: POSIX, and no start of them has failed here
    (after one has, the parts run on threads for good)."""
    return AVAILABLE and not _FAILED


def usable(fn: Callable, threads: int) -> bool:
    """Whether parts of ``fn`` can go to workers: startable, two or more threads, not inside a worker,
    and ``fn`` picklable by reference (a module-level function)."""
    if not startable() or threads < 2 or os.environ.get("REFDIFF_WORKER") == "1":
        return False
    if fn not in _PICKLES:
        try:
            pickle.dumps(fn)
            _PICKLES[fn] = True
        except (pickle.PicklingError, AttributeError, TypeError):
            _PICKLES[fn] = False
    return _PICKLES[fn]


def shutdown() -> None:
    """End every worker (they start again on the next use); in a forked child, only forget them."""
    while _WORKERS:
        worker = _WORKERS.pop()
        if worker.owner == os.getpid():
            worker.close()


atexit.register(shutdown)


def _workers(count: int) -> list[_Worker] | None:
    """``count`` running workers, started if need be; None (and threads from then on) if they cannot start."""
    if len(_WORKERS) != count or _WORKERS[0].owner != os.getpid():
        shutdown()
        try:
            for _ in range(count):
                _WORKERS.append(_Worker())
        except (OSError, WorkerDied) as error:
            shutdown()
            _FAILED.append(str(error))
            warnings.warn(f"refdiff could not start worker processes ({error}); batch parts run on threads",
                          RuntimeWarning, stacklevel=3)
            return None
    return _WORKERS


def run_parts(kind: str, fn: Callable, shared: tuple, parts: list, local: Callable, threads: int,
              layout: Callable) -> list:
    """[local(part) or a worker's fn on it, for every part], part i on executor i mod threads (0: here).

    kind: "forward" (parts (x, t, labels); results (out, cache, a RemoteCache, or None)) or
    "backward" (parts (dout, cache); results as fn returns them). shared: what every part of the call
    uses, sent once a worker: (params, cfg, options) or (need_dx,). layout: layout(array), the context
    a worker runs its parts in (refdiff.parallel.host_layout), a module-level function like fn. Runs
    every part here, one after another, while another thread holds the workers or if they cannot start.
    """
    if not _LOCK.acquire(blocking=False):
        return [local(part) for part in parts]
    try:
        workers = _workers(threads - 1)
        if workers is None:
            return [local(part) for part in parts]
        remote = {w: list(range(w + 1, len(parts), threads)) for w in range(threads - 1)}
        handles = {i: RemoteCache(workers[w], _next_key(workers[w])) for w, rows in remote.items()
                   for i in rows} if kind == "forward" else {}
        if kind == "backward":
            _check_caches(parts, workers, threads)
        results: list = [None] * len(parts)
        pending = []  # the workers that have a message
        try:
            for w in (w for w in remote if remote[w]):
                message = [(handles[i].key, *parts[i]) if kind == "forward" else (parts[i][0], parts[i][1].key)
                           for i in remote[w]]
                workers[w].send(kind, (fn, shared, message, speed.enabled(), layout))
                pending.append(w)
            for i in range(0, len(parts), threads):
                results[i] = local(parts[i])
        except Exception as error:
            _receive(workers, pending)  # keep the workers in step, then the caller's error
            if isinstance(error, WorkerDied):
                shutdown()
            raise
        except BaseException:  # Ctrl-C while workers compute: their replies are lost, and so are they
            shutdown()
            raise
        for w, (status, values) in zip(pending, _receive(workers, pending)):
            if status == "error":
                raise values
            for i, value in zip(remote[w], values):
                results[i] = (value[0], handles[i] if value[1] else None) if kind == "forward" else value
        return results
    finally:
        _LOCK.release()


def _check_caches(parts: list, workers: list, threads: int) -> None:
    """Every backward part's cache is where its executor is: here, or kept by its worker."""
    for i, (_, cache) in enumerate(parts):
        worker = None if i % threads == 0 else workers[i % threads - 1]
        if (cache.worker if isinstance(cache, RemoteCache) else None) is not worker:
            raise RuntimeError(f"part {i}'s cache is not kept where its backward runs (the workers or the thread "
                               "count changed since the forward): run the forward again")


def _next_key(worker: _Worker) -> int:
    worker.keys += 1
    return worker.keys


def _receive(workers: list, pending: list) -> list[tuple[str, Any]]:
    """Every pending worker's reply, in order; a worker that died takes all of them down."""
    try:
        return [workers[w].receive() for w in pending]
    except BaseException:
        shutdown()
        raise


# ------------------------------------------------------------------------------ the worker's side

def serve(fd: int) -> None:
    """A worker's loop: say hello, then read a message, run its parts, reply; exit when the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    os.environ["REFDIFF_WORKER"] = "1"
    connection = Connection(fd)
    connection.send(("ok", os.getpid()))
    caches: dict[int, Any] = {}
    while True:
        try:
            kind, forgotten, (fn, shared, parts, fast, layout) = connection.recv()
        except EOFError:
            return
        for key in forgotten:
            caches.pop(key, None)
        try:
            like = parts[0][1] if kind == "forward" else parts[0][0]  # x or dout: the parts' library
            with speed.reference_path(not fast), layout(like):
                reply = ("ok", _run(kind, fn, shared, parts, caches))
        except Exception as error:
            reply = ("error", _picklable(error))
        connection.send(reply)


def _run(kind: str, fn: Callable, shared: tuple, parts: list, caches: dict) -> list:
    """A message's parts through fn: a forward keeps each cache under its key and returns (out, key or
    None); a backward looks its cache up and returns what fn returns."""
    if kind == "forward":
        params, cfg, options = shared
        values = []
        for key, x, t, labels in parts:
            out, cache = fn(params, cfg, x, t, **labels, **options)
            if cache is not None:
                caches[key] = cache
            values.append((out, None if cache is None else key))
        return values
    (need_dx,) = shared
    values = []
    for dout, key in parts:
        if key not in caches:
            raise KeyError(f"no cache {key} in refdiff worker {os.getpid()}: its handle was freed")
        values.append(fn(dout, caches[key], need_dx=need_dx))
    return values


def _picklable(error: Exception) -> Exception:
    """The error itself, with the worker's traceback as a note, if it pickles; else a RuntimeError."""
    text = "".join(traceback.format_exception(error))
    try:
        error.add_note(f"in refdiff worker process {os.getpid()}:\n{text}")
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"in refdiff worker process {os.getpid()}:\n{text}")
