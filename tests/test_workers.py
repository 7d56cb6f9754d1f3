"""Specification of refdiff.workers: a model's batch parts in worker processes give the threaded parts'
numbers bit for bit, keep each part's cache in its worker, raise a worker's error in the caller, and
start afresh after a worker dies."""

import os
import signal

import numpy as np
import pytest

from refdiff import parallel as P
from refdiff import workers as W
from refdiff.data.captions import load_captions, tokenize
from refdiff.models import text_unet as T
from refdiff.models import unet as U
from refdiff.models.presets import text16
from support import host_data, random_params

pytestmark = pytest.mark.skipif(not W.AVAILABLE, reason="worker processes are POSIX only")

UNET = U.UNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
                    num_res_blocks=1, attention_resolutions=(4,), heads=2, groups=4, num_classes=3,
                    learn_sigma=True, time_embed_dim=12)


@pytest.fixture
def two_parts(monkeypatch):
    """Two threads, every batch in two parts (the first 2 samples, the rest), worker processes on."""
    threads, processes = P.get_num_threads(), P.get_processes()
    monkeypatch.setattr(P, "batch_parts", lambda N, like: [slice(0, 2), slice(2, N)])
    P.set_num_threads(2)
    P.set_processes(True)
    yield
    P.set_num_threads(threads)
    P.set_processes(processes)


def _run(forward, backward, params, cfg, x, t, y, dout):
    forward_p, backward_p = P.in_parts(forward, backward)
    out, cache = forward_p(params, cfg, x, t, y, train=True)
    grads, dx = backward_p(dout, cache, need_dx=True)
    return out, cache, grads, dx


@pytest.mark.parametrize("model", ["unet", "text"])
def test_worker_processes_give_the_threads_numbers_bit_for_bit(two_parts, model):
    """The U-Net (labels, learned variances) and the text U-Net (tokens) in two parts, the second in a
    worker process: the same output, dx and gradients as on two threads, bit for bit, its cache a
    handle to the worker; a second call reuses the worker."""
    if model == "unet":
        cfg, forward, backward = UNET, U.unet_forward, U.unet_backward
        params, x = random_params(U.param_shapes(cfg), 0), host_data(1, (5, 1, 8, 8))
        y, out_channels = np.array([0, 3, 1, 2, 2]), 2
    else:
        cfg, forward, backward = text16(), T.text_unet_forward, T.text_unet_backward
        params, x = random_params(T.param_shapes(cfg), 0, "float32"), host_data(1, (5, 3, 16, 16), "float32")
        y, out_channels = tokenize(load_captions(5, seed=0)[1])[0], 3
        y[1] = 0  # the empty caption
    t, dout = np.array([4, 500, 999, 0, 250]), host_data(2, (5, out_channels, *x.shape[2:]), x.dtype.name)
    out, cache, grads, dx = _run(forward, backward, params, cfg, x, t, y, dout)
    assert isinstance(cache.caches[1], W.RemoteCache) and not isinstance(cache.caches[0], W.RemoteCache)
    pid = W._WORKERS[0].process.pid
    again = _run(forward, backward, params, cfg, x, t, y, dout)
    assert pid != os.getpid() and W._WORKERS[0].process.pid == pid and np.array_equal(again[0], out)
    P.set_processes(False)  # threads
    out_t, cache_t, grads_t, dx_t = _run(forward, backward, params, cfg, x, t, y, dout)
    assert not any(isinstance(c, W.RemoteCache) for c in cache_t.caches)
    for a, b in [(out, out_t), (dx, dx_t)] + [(grads[k], grads_t[k]) for k in grads_t]:
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_a_workers_error_is_raised_in_the_caller_and_the_workers_stay_in_step(two_parts):
    """A bad label in the worker's part alone: the caller gets the layer's own ValueError, with the
    worker's traceback as a note; the next call runs normally on the same worker."""
    params, x = random_params(U.param_shapes(UNET), 0), host_data(1, (3, 1, 8, 8))
    forward = P.in_parts(U.unet_forward, U.unet_backward)[0]
    t = np.array([1, 2, 3])
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 3\]") as raised:
        forward(params, UNET, x, t, np.array([0, 1, 9]))
    assert any("in refdiff worker process" in note for note in raised.value.__notes__)
    out, _ = forward(params, UNET, x, t, np.array([0, 1, 2]))
    P.set_processes(False)
    np.testing.assert_array_equal(out, forward(params, UNET, x, t, np.array([0, 1, 2]))[0])


def test_a_dead_worker_is_an_error_and_the_next_call_starts_a_new_one(two_parts):
    """A worker killed between calls: the next call raises WorkerDied (a RuntimeError naming the
    process), a backward with a cache it kept says the cache is gone, and the call after that starts
    a new worker and gives the same numbers."""
    params, x, t = random_params(U.param_shapes(UNET), 0), host_data(1, (3, 1, 8, 8)), np.array([1, 2, 3])
    forward, backward = P.in_parts(U.unet_forward, U.unet_backward)
    y = np.array([0, 1, 2])
    out, cache = forward(params, UNET, x, t, y, train=True)
    pid = W._WORKERS[0].process.pid
    os.kill(pid, signal.SIGKILL)
    W._WORKERS[0].process.wait()
    with pytest.raises(W.WorkerDied, match=f"refdiff worker process {pid} ended unexpectedly"):
        forward(params, UNET, x, t, y)
    with pytest.raises(RuntimeError, match="part 1's cache is not kept where its backward runs"):
        backward(out, cache)
    again, _ = forward(params, UNET, x, t, y)
    assert W._WORKERS[0].process.pid != pid
    np.testing.assert_array_equal(again, out)


def test_functions_that_do_not_pickle_run_on_threads_and_the_switch_is_checked(two_parts):
    """A forward defined inside a function cannot be sent to a worker: its parts run on threads, with
    the whole batch's numbers; set_processes takes a bool only."""
    params, x, t = random_params(U.param_shapes(UNET), 0), host_data(1, (3, 1, 8, 8)), np.array([1, 2, 3])

    def local_forward(*args, **kwargs):
        return U.unet_forward(*args, **kwargs)

    out, cache = P.forward_in_parts(local_forward, params, UNET, x, t, np.array([0, 1, 2]), train=True)
    assert not W.usable(local_forward, 2) and W.usable(U.unet_forward, 2)
    assert not any(isinstance(c, W.RemoteCache) for c in cache.caches)
    whole, _ = U.unet_forward(params, UNET, x, t, np.array([0, 1, 2]))
    np.testing.assert_allclose(out, whole, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="on must be a bool, got 1"):
        P.set_processes(1)


def test_a_forked_child_starts_its_own_workers(two_parts):
    """A child forked from a process with workers does not talk to its parent's worker (the replies
    would cross): it starts its own, gets the same numbers, and the parent's worker still serves."""
    params, x, t = random_params(U.param_shapes(UNET), 0), host_data(1, (3, 1, 8, 8)), np.array([1, 2, 3])
    forward = P.in_parts(U.unet_forward, U.unet_backward)[0]
    y = np.array([0, 1, 2])
    out, _ = forward(params, UNET, x, t, y)
    parent_worker = W._WORKERS[0].process.pid
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report whether it got the same numbers from a worker of its own
        try:
            same = np.array_equal(forward(params, UNET, x, t, y)[0], out)
            os.write(write, b"1" if same and W._WORKERS[0].process.pid != parent_worker else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(child, 0)
    np.testing.assert_array_equal(forward(params, UNET, x, t, y)[0], out)
    assert W._WORKERS[0].process.pid == parent_worker
