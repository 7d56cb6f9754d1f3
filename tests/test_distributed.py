"""Specification of data-parallel training and sampling (refdiff.distributed), with real MPI ranks.

In-process tests pin the pieces (shards, sharded draws, sharded sampling, no mpi4py import without a
launcher). The MPI tests launch ``mpiexec -n 2`` (the mpich wheel's, beside sys.executable) on this
file run as a script, whose ``__main__`` part is the rank-side code of each scenario; they are skipped
where mpi4py or mpiexec is missing. Every launch has a timeout and kills its whole process group.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refdiff
import refdiff.train as train_module
import refdiff.train_state as train_state
from refdiff import schedules
from refdiff.backend import Generator, to_numpy
from refdiff.checkpoint import load_checkpoint
from refdiff.cli import main
from refdiff.distributed import (SINGLE_PROCESS, DistributedError, ShardedGenerator, allreduce_batch, check_batch,
                                 data_parallel, get_communicator, shard)
from refdiff.generate import LoadedModel, generate
from refdiff.models import registry
from refdiff.models.mlp import MLPConfig, init_params
from refdiff.train import TrainConfig, train

HERE = Path(__file__).resolve()
K = 8  # steps of the MPI training scenario
# float64, so that "2 ranks == 1 rank" holds to 1e-9 whatever the reduction order; batch 15 on 2 ranks
# gives uneven shards (8 and 7 rows); T = 4 warms the importance sampler up within the first steps;
# dropout and label dropout make every rank depend on the shared generator.
CFG = TrainConfig(steps=K, batch_size=15, lr=1e-2, warmup_steps=1, T=4, timesteps="importance", dtype="float64",
                  checkpoint_every=2)
MODEL = MLPConfig(hidden=16, depth=2, time_embed_dim=8, num_classes=2, dropout=0.1)
TOL = dict(rtol=1e-9, atol=1e-12)


def _toy_data():
    """Two labelled 2-D clusters: x (200, 2), y (200,)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([-0.5, 0.0], 0.1, (100, 2)), rng.normal([0.5, 0.3], 0.1, (100, 2))])
    return x, np.repeat([0, 1], 100)


# ---------------------------------------------------------------------------------------- in-process


@given(n=st.integers(1, 200), size=st.integers(1, 70))
def test_shards_tile_the_batch_contiguously_and_differ_by_at_most_one_row(n, size):
    """shard(n, r, N) for r = 0..N-1 are contiguous, in rank order, cover [0, n) exactly, and their sizes are
    n // N or n // N + 1, the larger ones first (the documented remainder rule)."""
    bounds = [shard(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert set(sizes) <= {n // size, n // size + 1} and sizes == sorted(sizes, reverse=True)


def test_sharded_draws_are_slices_of_the_one_process_draws_and_keep_generators_in_step():
    """For every draw (normal, uniform, integers) the ranks' ShardedGenerator draws, concatenated in rank
    order, equal one generator's draw for the whole batch, and every rank's generator ends in the same
    state as the one-process generator."""
    n, size = 7, 3
    whole = Generator(5)
    expected = [whole.normal((n, 2, 3)), whole.uniform((n, 4), low=-1.0), whole.integers(0, 9, (n,))]
    parts, states = [[], [], []], []
    for rank in range(size):
        lo, hi = shard(n, rank, size)
        g = ShardedGenerator(Generator(5), lo, hi, n)
        for i, draw in enumerate([g.normal((hi - lo, 2, 3)), g.uniform((hi - lo, 4), low=-1.0),
                                  g.integers(0, 9, (hi - lo,))]):
            parts[i].append(draw)
        states.append(g.generator.get_state())
    for want, got in zip(expected, parts):
        np.testing.assert_array_equal(np.concatenate(got), want)
    for state in states:
        np.testing.assert_array_equal(state, whole.get_state())
    with pytest.raises(ValueError, match="batch as its leading axis"):
        ShardedGenerator(Generator(0), 0, 2, 7).normal((3, 2))


def test_sharded_sampling_gives_the_rows_of_the_whole_sample():
    """generate(..., rows=(lo, hi)) over the shards of 3 ranks, concatenated, equals generate() of all rows:
    DDPM draws fresh noise at every step, and each rank draws it for all rows and keeps its own."""
    cfg = MLPConfig(hidden=16, depth=1, time_embed_dim=8, num_classes=2)
    params = {k: v + 0.1 * Generator(1).normal(v.shape) for k, v in init_params(cfg, Generator(0), np.float64).items()}
    schedule = schedules.by_name("cosine", 50)
    model = registry.family(cfg).model(params, cfg)
    loaded = LoadedModel(model, cfg, {"prediction": "eps"}, (2,), schedule, params["out.w"])
    labels = np.arange(10) % 2
    whole = generate(loaded, (10, 2), labels, "ddpm", 6, seed=3)
    parts = [generate(loaded, (10, 2), labels, "ddpm", 6, seed=3, rows=shard(10, r, 3)) for r in range(3)]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-12, atol=1e-12)
    assert generate(loaded, (10, 2), labels, "ddpm", 6, seed=3, rows=(4, 4)).shape == (0, 2)


class _Recorder:
    """Rank ``rank`` of 2 in one process: allreduce_sum keeps the buffer it was given and returns it plus
    ``other`` (the other rank's buffer), i.e. the sum the real allreduce would give."""

    def __init__(self, rank: int, other=None):
        self.rank, self.size, self.other, self.sent = rank, 2, other, None

    def allreduce_sum(self, buf, what=""):
        self.sent = buf
        return buf if self.other is None else buf + self.other


def test_allreduce_batch_gives_the_global_mean_gradient_and_every_loss(backend):
    """With shards of 3 and 2 rows of a batch of 5, the summed flat buffers give sum_r (n_r / B) g_r for
    every parameter (g_r each rank's mean gradient, of the parameter's shape) and the 5 per-sample
    losses in batch order, on every backend, in the gradients' library, device and dtype."""
    f64 = backend.dtype("float64")
    rng = np.random.default_rng(0)
    g = [{"w": rng.normal(size=(2, 3)), "b": rng.normal(size=(3,))} for _ in range(2)]
    losses = [rng.normal(size=(3,)), rng.normal(size=(2,))]
    dev = [({k: backend.asarray(v, dtype=f64) for k, v in g[r].items()}, backend.asarray(losses[r], dtype=f64))
           for r in range(2)]
    first = _Recorder(0)
    allreduce_batch(first, *dev[0], 0, 3, 5)
    grads, every = allreduce_batch(_Recorder(1, other=first.sent), *dev[1], 3, 5, 5)
    for key in ("w", "b"):
        np.testing.assert_allclose(to_numpy(grads[key]), 0.6 * g[0][key] + 0.4 * g[1][key], rtol=1e-15)
        assert grads[key].shape == g[0][key].shape and grads[key].dtype == f64
    np.testing.assert_array_equal(to_numpy(every), np.concatenate(losses))
    assert type(every) is type(dev[0][1])


class _Batch(NamedTuple):
    x: np.ndarray
    y: None


def _row_gradient(batch, generator):
    """A gradient that draws per row like dropout: z_n ~ N(0, I); grads {"w": mean_n x_n z_n}, L_n = sum x_n z_n."""
    assert batch.y is None  # None fields pass through
    z = generator.normal(batch.x.shape)
    return {"w": np.mean(batch.x * z, axis=0)}, np.sum(batch.x * z, axis=1)


def test_data_parallel_gives_each_rank_the_whole_batch_gradient():
    """data_parallel(gradient, comm) on 2 ranks (shards of 3 and 2 rows of 5, each drawing from the same
    generator state) gives the second rank the gradient and the 5 per-sample losses that one process
    computes for the whole batch, and leaves its generator where one process leaves it."""
    batch = _Batch(np.random.default_rng(0).normal(size=(5, 4)), None)
    one_generator = Generator(7)
    grads, losses = data_parallel(_row_gradient, SINGLE_PROCESS)(batch, one_generator)
    first = _Recorder(0)
    data_parallel(_row_gradient, first)(batch, Generator(7))
    second_generator = Generator(7)
    two, every = data_parallel(_row_gradient, _Recorder(1, other=first.sent))(batch, second_generator)
    np.testing.assert_allclose(two["w"], grads["w"], rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(every, losses)
    np.testing.assert_array_equal(second_generator.get_state(), one_generator.get_state())


def test_a_batch_smaller_than_the_ranks_is_refused_naming_both():
    """Every rank needs a sample: batch 3 on 4 ranks is an error naming both numbers; batch 4 is fine."""
    with pytest.raises(DistributedError, match="batch_size 3 is smaller than the number of ranks 4"):
        check_batch(3, 4)
    check_batch(4, 4)


def test_without_a_launcher_the_communicator_is_the_single_process(monkeypatch):
    """No MPI launcher in the environment: get_communicator() is SINGLE_PROCESS (rank 0 of 1), whose
    collectives return their inputs."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "REFDIFF_MPI"):
        monkeypatch.delenv(var, raising=False)
    comm = get_communicator()
    assert comm is SINGLE_PROCESS and (comm.rank, comm.size) == (0, 1)
    buf = np.arange(3.0)
    assert comm.allreduce_sum(buf) is buf and comm.bcast("x") == "x"


def _child_env(**extra) -> dict:
    """The environment of a child process that imports the refdiff under test, with one BLAS thread."""
    package_parent = str(Path(refdiff.__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_RANK")}
    return {**env, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **extra}


def test_single_process_training_never_imports_mpi4py_and_a_launcher_without_it_is_an_error():
    """With mpi4py made unimportable, one process trains without touching it (no import at module level);
    a process that an MPI launcher started (PMI_SIZE=2) stops with an error that says how to install it."""
    code = """if True:
        import sys
        sys.modules["mpi4py"] = None  # importing mpi4py now raises ImportError, as if it were not installed
        import numpy as np
        from refdiff.models.mlp import MLPConfig
        from refdiff.train import TrainConfig, train
        x = np.random.default_rng(0).normal(size=(64, 2))
        train(TrainConfig(steps=2, batch_size=8, warmup_steps=0, T=10), MLPConfig(hidden=8, depth=1), x, None,
              sys.argv[1], progress=False)
        print("trained", "mpi4py" in sys.modules and sys.modules["mpi4py"] is not None)
    """
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, timeout=120,
                              env=_child_env())
        assert done.returncode == 0 and done.stdout.split() == ["trained", "False"], done.stderr
        done = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, timeout=120,
                              env=_child_env(PMI_SIZE="2"))
    assert done.returncode != 0
    assert "started by an MPI launcher (2 ranks) but mpi4py is not installed: pip install 'refdiff[mpi]'" in done.stderr


# ------------------------------------------------------------------------------------ with mpiexec -n 2


def _mpiexec() -> str | None:
    """mpiexec beside this Python (the mpich wheel installs it there), else on PATH; None without mpi4py."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()


def _require_mpi() -> None:
    """Skip without mpi4py or mpiexec; fail instead where CI demands MPI (REFDIFF_REQUIRE_MPI=1, .ci/run)."""
    if MPIEXEC is not None:
        return
    message = "needs mpi4py and mpiexec: pip install '.[mpi]'"
    if os.environ.get("REFDIFF_REQUIRE_MPI") == "1":
        pytest.fail(f"REFDIFF_REQUIRE_MPI=1, but this test {message}")
    pytest.skip(message)


def _launch(args: list[str], timeout: float = 120, **env) -> tuple[subprocess.CompletedProcess, float]:
    """``mpiexec -n 2 python ARGS``: (the finished process, wall seconds); on timeout its whole process group
    (launcher and ranks) is killed and the test fails."""
    start = time.perf_counter()
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(**env),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpiexec {' '.join(args)} did not finish in {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.perf_counter() - start


def _assert_close_states(a: dict, b: dict, groups=("params", "ema", "opt")) -> None:
    for group in groups:
        assert a[group].keys() == b[group].keys()
        for key in a[group]:
            np.testing.assert_allclose(a[group][key], b[group][key], **TOL, err_msg=f"{group}/{key}")


@pytest.mark.mpi
def test_two_ranks_train_like_one_and_checkpoints_resume_across_rank_counts(tmp_path):
    """With the same seed and global batch (15: shards of 8 and 7 rows), float64, importance-sampled t,
    dropout and label dropout:
    - 2 ranks give the parameters, EMA and optimizer state of 1 rank after K steps, to 1e-9;
    - after every step the 2 ranks hold bit-identical parameters, EMA, optimizer, generator and sampler
      states (checked on the ranks: a mismatch fails the launch);
    - a checkpoint written by 2 ranks holds the generator state a 1-rank run has at that step, bit for bit;
    - it resumes on 1 rank, and a 1-rank checkpoint resumes on 2 ranks, to the 1-rank run's numbers."""
    _require_mpi()
    x, y = _toy_data()
    one = train(CFG, MODEL, x, y, tmp_path / "one", progress=False, comm=SINGLE_PROCESS)
    train(CFG, MODEL, x, y, tmp_path / "b", progress=False, stop_at=K // 2, comm=SINGLE_PROCESS)
    rng_half = load_checkpoint(tmp_path / "b" / "checkpoint.npz")["rng"]
    done, seconds = _launch([str(HERE), "steps", str(tmp_path)])
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"mpiexec -n 2 steps scenario: {seconds:.1f} s")
    reference = {"params": one.params, "ema": one.ema, "opt": one.opt}
    with np.load(tmp_path / "steps.npz") as npz:  # rank 0's state after K steps of train_step
        stepped = {g: {k[len(g) + 1:]: npz[k] for k in npz.files if k.startswith(g + "/")} for g in reference}
    _assert_close_states(stepped, reference)
    two_half = load_checkpoint(tmp_path / "a" / "checkpoint.npz")
    assert two_half["step"] == K // 2 and two_half["config"]["ranks"] == 2
    np.testing.assert_array_equal(two_half["rng"], rng_half)
    resumed_on_one = train(CFG, MODEL, x, y, tmp_path / "a", resume=True, progress=False, comm=SINGLE_PROCESS)
    _assert_close_states(vars(resumed_on_one), reference)
    resumed_on_two = load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert resumed_on_two["step"] == K and resumed_on_two["config"]["ranks"] == 2
    _assert_close_states(resumed_on_two, reference)
    np.testing.assert_allclose(resumed_on_two["log"]["loss"], one.losses, **TOL)


@pytest.mark.mpi
@pytest.mark.parametrize("failure", ["raise", "hang"])
def test_a_failing_or_hanging_rank_ends_the_job_with_a_message_instead_of_a_hang(tmp_path, failure):
    """Rank 1 raises at step 2 ("raise"): it prints its error and aborts the job. Rank 1 hangs at step 2
    ("hang"): rank 0 gives up after the timeout (REFDIFF_MPI_TIMEOUT=2) in the gradient allreduce and
    aborts. Either way mpiexec exits nonzero with a message naming the rank, long before the hanging
    rank would wake up (300 s)."""
    _require_mpi()
    wait = "2" if failure == "hang" else "120"  # a rank slow to start must not time out before the failure
    done, seconds = _launch([str(HERE), failure, str(tmp_path)], timeout=150, REFDIFF_MPI_TIMEOUT=wait)
    assert done.returncode != 0
    expected = ("rank 1 of 2: RuntimeError: injected failure at step 2" if failure == "raise" else
                "rank 0 of 2: waited 2 s for the other ranks in the gradient allreduce")
    assert expected in done.stderr and "aborting all ranks" in done.stderr, done.stderr
    assert seconds < 100


@pytest.mark.mpi
def test_cli_train_and_sample_under_mpiexec(tmp_path):
    """`mpiexec -n 2 refdiff train --sample-every 3` writes one checkpoint (rank 0 prints once) that records
    2 ranks, and the sample grid and loss curve;
    `mpiexec -n 2 refdiff sample --sampler ddpm` gathers every rank's rows into one .npz equal to the
    one-process samples; a batch smaller than the ranks exits 1 with the error printed once."""
    _require_mpi()
    out = tmp_path / "run"
    common = ["-m", "refdiff", "train", "--data", "toy2d:two_moons", "--preset", "mlp", "--batch-size", "16",
              "--T", "20", "--out", str(out)]
    done, _ = _launch(common + ["--steps", "3", "--sample-every", "3"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("checkpoint:") == 1 and "(2 ranks)" in done.stdout
    assert (out / "samples_step3.png").exists() and (out / "loss_curve.png").exists()
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt["step"] == 3 and ckpt["config"]["ranks"] == 2
    sample = ["sample", str(out / "checkpoint.npz"), "--sampler", "ddpm", "--steps", "5", "--count", "3"]
    done, _ = _launch(["-m", "refdiff", *sample, "--out", str(tmp_path / "two.npz")])
    assert done.returncode == 0 and done.stdout.count("samples:") == 1, done.stderr
    assert main([*sample, "--out", str(tmp_path / "one.npz")]) == 0
    with np.load(tmp_path / "two.npz") as two, np.load(tmp_path / "one.npz") as one:
        assert two["images"].shape == (6, 2)
        np.testing.assert_array_equal(two["labels"], one["labels"])
        np.testing.assert_allclose(two["images"], one["images"], rtol=1e-5, atol=1e-5)
    done, _ = _launch(common + ["--steps", "3", "--batch-size", "1"])
    assert done.returncode == 1
    assert done.stderr.count("batch_size 1 is smaller than the number of ranks 2") == 1, done.stderr


@pytest.mark.mpi
def test_demo_under_mpiexec_trains_on_both_ranks_and_rank_0_alone_samples_and_writes(tmp_path):
    """`mpiexec -n 2 refdiff demo` (a few steps): the checkpoint records 2 ranks, and every file is
    written and printed once, by rank 0; the other rank waits for it and ends cleanly."""
    _require_mpi()
    out = tmp_path / "demo"
    done, seconds = _launch(["-m", "refdiff", "demo", "--out", str(out), "--steps", "4", "--per-class", "1",
                             "--sample-steps", "2"])
    assert done.returncode == 0, done.stderr
    print(f"mpiexec -n 2 refdiff demo: {seconds:.1f} s")
    for name in ("forward_chain", "checkpoint", "loss_curve", "samples", "samples_npz", "metrics"):
        assert done.stdout.count(f"{name + ':':<15} {out}") == 1, (name, done.stdout)
    assert done.stdout.count("Frechet distance, 10 samples") == 1, done.stdout
    assert load_checkpoint(out / "checkpoint.npz")["config"]["ranks"] == 2
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 4


@pytest.mark.mpi
def test_device_buffers_take_nccl_else_cuda_aware_mpi_else_host_copies_with_one_warning(tmp_path):
    """CuPy buffers on 2 ranks, with stand-ins for CuPy (a NumPy array with .data.ptr and .device) and for
    its NCCL binding (whose allReduce sums through MPI): the ranks agree on the best path they all have.
    - NCCL on both: one NcclCommunicator(2, rank 0's unique id, rank) per rank, and every allreduce is one
      in-place allReduce(ptr, ptr, size, the dtype's code, SUM, the current stream), no host copy;
    - NCCL on rank 1 only, CUDA-aware MPI on both: MPI reads the device buffer after a synchronize;
    - NCCL on rank 0 only, no CUDA-aware MPI: host copies (after a synchronize too), and rank 0 alone
      warns, once for two calls.
    Every path gives the elementwise sum over the ranks, in float32 and float64."""
    _require_mpi()
    done, _ = _launch([str(HERE), "device", str(tmp_path)], timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads((tmp_path / "device.json").read_text())  # per path: each rank's record
    for path in ("nccl", "cuda-aware", "host"):
        for rank, record in enumerate(seen[path]):
            assert record["sums_ok"] == [True, True], (path, rank)
            assert record["nccl_comms"] == ([[2, [0, "unique id"], rank]] if path == "nccl" else []), (path, rank)
            assert record["nccl_calls"] == ([["same ptr", 5, 8, 0, 77], ["same ptr", 5, 7, 0, 77]]
                                            if path == "nccl" else []), (path, rank)
            assert record["syncs"] == (0 if path == "nccl" else 2), (path, rank)  # MPI reads after the kernels
            assert record["warnings"] == (1 if path == "host" and rank == 0 else 0), (path, rank)


# ------------------------------------------------------------------------- the ranks' side (mpiexec)


def _digest(state) -> str:
    """A hash of everything a step updates: params, EMA, optimizer, generator and sampler states."""
    h = hashlib.sha256()
    for group in (state.params, state.ema, state.opt):
        for key in sorted(group):
            h.update(np.ascontiguousarray(to_numpy(group[key])).tobytes())
    h.update(state.generator.get_state().tobytes())
    for value in state.sampler.get_state().values():
        h.update(value.tobytes())
    return h.hexdigest()


def _rank_steps(out: Path) -> None:
    """K steps of train_step, the ranks' digests compared after each; then train to K/2 in out/a, and
    resume out/b (a 1-rank checkpoint at K/2) to K."""
    comm = get_communicator()
    assert comm.size == 2, comm.size
    x, y = _toy_data()
    state, schedule = train_state.init_state(CFG, MODEL), CFG.schedule_obj()
    for step in range(K):
        train_module.train_step(CFG, MODEL, schedule, state, x, y, comm)
        digests = comm.comm.allgather(_digest(state))
        if len(set(digests)) != 1:
            raise AssertionError(f"ranks differ after step {step + 1}: {digests}")
    if comm.rank == 0:
        groups = {"params": state.params, "ema": state.ema, "opt": state.opt}
        np.savez(out / "steps.npz", **{f"{g}/{k}": to_numpy(v) for g, d in groups.items() for k, v in d.items()})
    train(CFG, MODEL, x, y, out / "a", progress=False, stop_at=K // 2)
    train(CFG, MODEL, x, y, out / "b", progress=False, resume=True)


def _rank_failure(out: Path, failure: str) -> None:
    """Train, with rank 1 raising or hanging at step 2."""
    real_step = train_module.train_step

    def flaky(cfg, model_cfg, schedule, state, x, y, comm):
        if comm.rank == 1 and state.step == 2:
            if failure == "raise":
                raise RuntimeError("injected failure at step 2")
            time.sleep(300)
        return real_step(cfg, model_cfg, schedule, state, x, y, comm)

    train_module.train_step = flaky
    x, y = _toy_data()
    train(dataclasses.replace(CFG, steps=6), MODEL, x, y, out, progress=False)


class _DeviceLike(np.ndarray):
    """A NumPy array dressed as a CuPy one: ``.data.ptr`` is its address, ``.device.synchronize()`` counts."""

    syncs = 0

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    @property
    def device(self):
        return types.SimpleNamespace(synchronize=_DeviceLike._synchronize)

    @staticmethod
    def _synchronize():
        _DeviceLike.syncs += 1


class _FakeNccl:
    """CuPy's NCCL binding, as far as refdiff uses it: records its calls; allReduce sums through MPI."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0

    def __init__(self, world, buffers: dict):
        self.world, self.buffers, self.comms, self.calls = world, buffers, [], []

    def get_unique_id(self):
        return (self.world.Get_rank(), "unique id")

    def NcclCommunicator(self, size, uid, rank):  # noqa: N802 (CuPy's name)
        self.comms.append([size, list(uid), rank])
        return self

    def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802 (CuPy's name)
        self.calls.append(["same ptr" if send == recv else "two ptrs", count, dtype, op, stream])
        from mpi4py import MPI
        self.world.Allreduce(MPI.IN_PLACE, np.asarray(self.buffers[recv]), op=MPI.SUM)


def _rank_device_paths(out: Path) -> None:
    """Two allreduces of a (5,) device buffer (float64, then float32) on each of three setups of NCCL and
    CUDA-aware MPI; rank 0 writes every rank's record to out/device.json."""
    from mpi4py import MPI

    import refdiff.distributed as distributed

    world, rank = MPI.COMM_WORLD, MPI.COMM_WORLD.Get_rank()
    real_library_name = distributed.library_name
    distributed.library_name = lambda x: "cupy" if isinstance(x, _DeviceLike) else real_library_name(x)
    distributed.current_stream_ptr = lambda: 77
    setups = {"nccl": ([True, True], False), "cuda-aware": ([False, True], True), "host": ([True, False], False)}
    seen = {}
    for path, (has_nccl, cuda_aware) in setups.items():
        buffers = {}
        nccl = _FakeNccl(world, buffers)
        distributed.nccl_binding = lambda: nccl if has_nccl[rank] else None
        distributed._mpi_cuda_aware = lambda MPI: cuda_aware
        comm, _DeviceLike.syncs, sums_ok = distributed.MPICommunicator(world), 0, []
        with comm.abort_on_error(), warnings.catch_warnings(record=True) as caught:  # a failure ends both ranks
            warnings.simplefilter("always")
            for dtype in (np.float64, np.float32):
                buf = (np.arange(5, dtype=dtype) + 10 * rank).view(_DeviceLike)
                buffers[buf.data.ptr] = buf
                total = to_numpy(comm.allreduce_sum(buf))
                sums_ok.append(bool(np.array_equal(total, 2 * np.arange(5) + 10)) and total.dtype == dtype)
        seen[path] = world.gather({"sums_ok": sums_ok, "nccl_comms": nccl.comms, "nccl_calls": nccl.calls,
                                   "syncs": _DeviceLike.syncs, "warnings": len(caught)}, root=0)
    if rank == 0:
        (out / "device.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    scenario, folder = sys.argv[1], Path(sys.argv[2])
    if scenario == "steps":
        _rank_steps(folder)
    elif scenario == "device":
        _rank_device_paths(folder)
    else:
        _rank_failure(folder, scenario)
