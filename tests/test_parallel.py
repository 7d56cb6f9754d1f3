"""Specification of refdiff.parallel: any forward/backward pair run in batch parts on host threads
gives the whole batch's results, with one BLAS thread, and steps aside on the reference path."""

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from refdiff import parallel as P
from refdiff import speed
from refdiff import workers as W
from refdiff.backend import Generator, to_numpy
from refdiff.models import classifier as C
from refdiff.models import mlp as M
from refdiff.models import unet as U
from support import assert_same_array_kind, host_data, on, random_params

# Small U-Nets with every switch (dropout off: a split batch must give the same numbers).
UNET = U.UNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
                    num_res_blocks=1, attention_resolutions=(4,), heads=2, groups=4, num_classes=3,
                    learn_sigma=True, time_embed_dim=12)
UNET_ADD = U.UNetConfig(in_channels=2, out_channels=2, image_size=8, base_channels=8, channel_mult=(1, 2),
                        num_res_blocks=1, attention_resolutions=(8,), heads=1, groups=2, scale_shift_norm=False,
                        time_embed_dim=12, time_embed_order="sin_cos")


def _parts(sizes):
    """A batch_parts replacement that splits every batch into parts of the given sizes."""
    def batch_parts(N, like):
        bounds = np.cumsum([0] + list(sizes))
        assert bounds[-1] == N
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return batch_parts


def _family(name):
    """(forward, backward, cfg, x shape, output shape, takes labels) of a small model of each family."""
    if name in ("unet", "unet_add"):
        cfg = UNET if name == "unet" else UNET_ADD
        return (U.unet_forward, U.unet_backward, cfg, U.param_shapes(cfg), (3, cfg.in_channels, 8, 8),
                (3, cfg.output_channels, 8, 8), cfg.num_classes is not None)
    if name == "mlp":
        cfg = M.MLPConfig(data_dim=2, hidden=16, num_classes=3)
        return M.mlp_forward, M.mlp_backward, cfg, M.param_shapes(cfg), (3, 2), (3, 2), True
    cfg = C.ClassifierConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), groups=4,
                             num_classes=3)
    return (C.classifier_forward, C.classifier_backward, cfg, C.param_shapes(cfg), (3, 1, 8, 8), (3, 3), False)


@pytest.mark.parametrize("name", ["unet", "unet_add", "mlp", "classifier"])
def test_a_split_batch_gives_the_whole_batch_results(backend, name, monkeypatch):
    """in_parts(forward, backward) with the batch split into parts (1 + 2 samples) equals the pair on
    the whole batch: the same output, dx, and parameter gradients (each the sum of the parts'
    gradients), float64 to 1e-12, on every backend, for the U-Net, the MLP and the classifier."""
    forward, backward, cfg, shapes, x_shape, out_shape, labelled = _family(name)
    params = on(backend, random_params(shapes, 0))
    x, dout = backend.asarray(host_data(1, x_shape)), backend.asarray(host_data(2, out_shape))
    t = backend.asarray(np.array([4, 500, 999]))
    labels = {"y": backend.asarray(np.array([0, 3, 1]))} if labelled else {}
    out1, cache1 = forward(params, cfg, x, t, train=True, generator=Generator(0), **labels)
    g1, dx1 = backward(dout, cache1, need_dx=True)
    monkeypatch.setattr(P, "batch_parts", _parts([1, 2]))
    forward_p, backward_p = P.in_parts(forward, backward)
    out2, cache2 = forward_p(params, cfg, x, t, train=True, generator=Generator(0), **labels)
    g2, dx2 = backward_p(dout, cache2, need_dx=True)
    assert len(cache2.caches) == 2 and list(g2) == list(g1)
    assert_same_array_kind(out2, x)
    assert_same_array_kind(dx2, x)
    for a, b in [(out2, out1), (dx2, dx1)] + [(g2[k], g1[k]) for k in g1]:
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-12, atol=1e-12)
    assert backward_p(dout, cache2).keys() == g1.keys()  # need_dx=False: the grads alone


@pytest.mark.parametrize("processes", [False, True])
def test_batch_parts_are_cache_sized_and_a_multiple_of_the_threads(processes):
    """On NumPy, batch_parts splits a batch into near-equal parts that cover it in order: cache-sized
    (PART_SIZE 28 x 28 images, more of smaller ones), a multiple of the 2 threads, of at least
    MIN_PART_PIXELS on threads (so digits8's training batch of 64 stays whole there) and
    MIN_PART_PIXELS_PROCESSES in worker processes on average; one part on the reference path."""
    threads, before = P.get_num_threads(), P.get_processes()
    cases = {False: [(28, 1, 1), (28, 2, 1), (28, 4, 1), (28, 7, 2), (28, 64, 2), (28, 96, 4), (28, 256, 8),
                     (8, 64, 1), (8, 100, 2), (8, 1024, 4), (32, 64, 2)],
             True: [(28, 1, 1), (28, 2, 2), (28, 7, 2), (28, 256, 8), (8, 4, 1), (8, 8, 1), (8, 16, 2),
                    (8, 64, 2), (8, 1024, 4), (32, 64, 2)]}[processes and W.AVAILABLE]
    least = P.MIN_PART_PIXELS_PROCESSES if processes and W.AVAILABLE else P.MIN_PART_PIXELS
    try:
        P.set_num_threads(2)
        P.set_processes(processes)
        for S, N, count in cases:
            parts = P.batch_parts(N, np.zeros((N, 1, S, S)))
            assert parts[0].start == 0 and parts[-1].stop == N
            assert all(a.stop == b.start for a, b in zip(parts[:-1], parts[1:]))
            sizes = [p.stop - p.start for p in parts]
            assert len(parts) == count and max(sizes) - min(sizes) <= 1, (S, N, sizes)
            assert count == 1 or N * S * S / count >= least
            with speed.reference_path():
                assert P.batch_parts(N, np.zeros((N, 1, S, S))) == [slice(0, N)]
    finally:
        P.set_num_threads(threads)
        P.set_processes(before)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        P.set_num_threads(0)


def test_parts_keep_the_threads_least_size_once_workers_failed_to_start(monkeypatch):
    """After worker processes failed to start (refdiff.workers._FAILED), the parts run on threads for good,
    so batch_parts splits no finer than MIN_PART_PIXELS: digits8's training batch of 64 stays whole
    (two parts of 32 while workers can start)."""
    if not W.AVAILABLE:
        pytest.skip("worker processes are POSIX only")
    threads, before = P.get_num_threads(), P.get_processes()
    x = np.zeros((64, 1, 8, 8))
    try:
        P.set_num_threads(2)
        P.set_processes(True)
        assert len(P.batch_parts(64, x)) == 2
        monkeypatch.setattr(W, "_FAILED", ["simulated: no worker started"])
        assert not W.startable() and not W.usable(P.forward_in_parts, 2)
        assert P.batch_parts(64, x) == [slice(0, 64)]
    finally:
        P.set_num_threads(threads)
        P.set_processes(before)


def test_parts_run_on_two_threads_and_dropout_keeps_one_part(monkeypatch):
    """With 2 threads the U-Net's two parts run at the same time on two worker threads and match the
    1-thread result; training with dropout keeps the batch whole (masks drawn in the same order on
    every backend)."""
    cfg = U.UNetConfig(**{**UNET.__dict__, "dropout": 0.3})
    forward = P.in_parts(U.unet_forward, U.unet_backward)[0]
    params, x, t = random_params(U.param_shapes(cfg), 0), host_data(1, (5, 1, 8, 8)), np.arange(5) * 100
    threads, seen, both = P.get_num_threads(), set(), threading.Barrier(2, timeout=30)

    def recording(*args, **kwargs):  # each part waits for the other: they must run at the same time
        seen.add(threading.current_thread().name)
        both.wait()
        return U.unet_forward(*args, **kwargs)

    monkeypatch.setattr(P, "MIN_PART_PIXELS", 1)  # the small test batch in two parts, on two threads
    processes = P.get_processes()
    try:
        P.set_num_threads(2)
        P.set_processes(False)
        out2, cache2 = P.forward_in_parts(recording, params, cfg, x, t, train=False)
        _, cache = forward(params, cfg, x, t, train=True, generator=Generator(0))
        P.set_num_threads(1)
        out1, _ = forward(params, cfg, x, t, train=False)
    finally:
        P.set_num_threads(threads)
        P.set_processes(processes)
    np.testing.assert_allclose(out2, out1, rtol=1e-12, atol=1e-12)
    assert len(cache2.caches) == 2 and len(cache.caches) == 1
    assert len(seen) == 2 and all(name.startswith("refdiff") for name in seen)


def _blas_threads():
    return {d["filepath"]: d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}


def test_blas_runs_one_thread_inside_a_wrapped_pair_and_is_restored_after():
    """While a pair runs in parts on the host, every BLAS library runs one thread (refdiff's threads
    split the batch; a BLAS pool's spinning workers collapse under load), also for a single part
    and on the reference path; afterwards each library has its own thread count again."""
    before, inside = _blas_threads(), []

    def probe(params, cfg, x, t, **options):
        inside.append(_blas_threads())
        return x, None

    x, t = np.zeros((1, 1, 8, 8)), np.zeros(1, dtype=np.int64)
    P.forward_in_parts(probe, {}, UNET, x, t)
    with speed.reference_path():
        P.forward_in_parts(probe, {}, UNET, x, t)
    assert before and all(set(d.values()) == {1} for d in inside) and len(inside) == 2
    assert _blas_threads() == before


def test_malloc_keeps_freed_memory_from_the_first_host_pair_on_the_speed_layer(monkeypatch):
    """The malloc tuning (_keep_freed_memory) starts with the first host call of a wrapped pair on
    the speed layer, also when the batch is one part (digits8's training batch: never threaded), and
    not on the reference path or for another library's arrays."""
    calls = []
    monkeypatch.setattr(P, "_keep_freed_memory", lambda: calls.append(1))

    def probe(params, cfg, x, t, **options):
        return x, None

    x, t = np.zeros((1, 1, 8, 8)), np.zeros(1, dtype=np.int64)
    with speed.reference_path():
        P.forward_in_parts(probe, {}, UNET, x, t)
    strict = pytest.importorskip("array_api_strict")
    P.forward_in_parts(probe, {}, UNET, strict.asarray(x), strict.asarray(t))
    assert calls == [] and len(P.batch_parts(1, x)) == 1
    P.forward_in_parts(probe, {}, UNET, x, t)
    assert calls == [1]


def test_a_map_inside_a_worker_runs_in_place():
    """parallel_map called from a worker thread runs its items in that thread (a worker waiting on
    its own pool could wait forever), and returns them in order."""
    threads = P.get_num_threads()
    try:
        P.set_num_threads(2)
        inner = P.parallel_map(lambda a: P.parallel_map(lambda b: (a, b, threading.current_thread().name),
                                                        [0, 1]), [0, 1])
    finally:
        P.set_num_threads(threads)
    for a, rows in enumerate(inner):
        assert [r[:2] for r in rows] == [(a, 0), (a, 1)]
        assert rows[0][2] == rows[1][2]


def test_backward_in_parts_refuses_a_cache_of_another_forward():
    """backward_in_parts needs forward_in_parts' PartsCache and names what it got."""
    with pytest.raises(TypeError, match="cache must be the PartsCache of forward_in_parts, got tuple"):
        P.backward_in_parts(U.unet_backward, np.zeros((1, 1, 8, 8)), (1, 2))
