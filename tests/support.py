"""Shared test helpers: tolerances by dtype, host comparison, and hypothesis strategies."""

import contextlib
import math

import numpy as np
from hypothesis import strategies as st

from refdiff import schedules
from refdiff.backend import namespace, to_numpy

# One place for tolerances: (rtol, atol) per dtype, for results a few roundings from the oracle.
TOLERANCE = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-13)}
DTYPES = ("float32", "float64")


def dtype_name(x) -> str:
    """'float32' or 'float64' for an array of any backend."""
    xp = namespace(x)
    return "float32" if x.dtype == xp.float32 else "float64"


def assert_close(actual, expected, scale: float = 1.0):
    """actual (any backend) == expected (host) to the tolerance of actual's dtype, times ``scale``.

    ``scale`` is the condition number of the computation under test when it amplifies rounding
    (for example 1 / sqrt(alpha_bar) when recovering x0), stated by the caller.
    """
    rtol, atol = TOLERANCE[dtype_name(actual)]
    np.testing.assert_allclose(to_numpy(actual), np.asarray(expected), rtol=rtol * scale, atol=atol * scale)


def assert_same_array_kind(out, like):
    """``out`` is an array of ``like``'s library, device and dtype (docs/design.md rules 1 and 6)."""
    assert namespace(out) is namespace(like), f"namespace {namespace(out)} != {namespace(like)}"
    assert out.device == like.device, f"device {out.device} != {like.device}"
    assert out.dtype == like.dtype, f"dtype {out.dtype} != {like.dtype} (no silent upcast)"


@contextlib.contextmanager
def no_float64_intermediates():
    """Fail if array_api_strict creates any float64 array inside the block (docs/design.md rule 6).

    Every array_api_strict operation builds its result through the private ``Array._new``; wrapping
    it catches a float64 intermediate even when the final result is cast back to float32. 0-d
    arrays are let through: array_api_strict itself wraps Python-float arguments (``clip`` bounds)
    as float64 scalars, which cost nothing and cannot upcast a float32 array.
    """
    from array_api_strict import _array_object

    original = _array_object.Array.__dict__["_new"]

    def _new(cls, x, /, device):
        if np.ndim(x) > 0 and np.asarray(x).dtype == np.float64:
            raise AssertionError(f"a float64 array of shape {np.shape(x)} was created from float32 inputs")
        return original.__func__(cls, x, device=device)

    _array_object.Array._new = classmethod(_new)
    try:
        yield
    finally:
        _array_object.Array._new = original


def float64_tripwire(backend):
    """no_float64_intermediates on array_api_strict (the only backend it can watch), else nothing."""
    return no_float64_intermediates() if backend.name == "array_api_strict" else contextlib.nullcontext()


@st.composite
def schedule_strategy(draw, min_T: int = 1, max_T: int = 300, zero_terminal: bool = False):
    """A schedule of every kind refdiff builds, T in [min_T, max_T] (linear needs T > 20)."""
    name = draw(st.sampled_from(sorted(schedules.SCHEDULES)))
    low = max(min_T, 21) if name == "linear" else min_T
    T = draw(st.integers(low, max(low, max_T)))
    schedule = schedules.by_name(name, T)
    if zero_terminal and T >= 2 and draw(st.booleans()):
        schedule = schedules.rescale_zero_terminal_snr(schedule)
    return schedule


def host_data(seed: int, shape, dtype="float64", scale: float = 1.0) -> np.ndarray:
    """Reproducible standard normal host data of ``shape`` (times ``scale``)."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def random_params(shapes: dict, seed: int, dtype="float64") -> dict:
    """Host arrays of ``shapes`` (a model's param_shapes), all random, the zero-initialised ones too (so
    that every gradient is nonzero): weights N(0, 1/fan_in) with fan_in the product of all but the last
    dimension (about unit gain per layer), 1-D parameters N(0, 1/4), GroupNorm gamma around 1."""
    params = {}
    for i, (key, shape) in enumerate(shapes.items()):
        scale = 1 / math.sqrt(math.prod(shape[:-1])) if len(shape) > 1 else 0.5
        params[key] = host_data(seed + i, shape, dtype, scale=scale) + (1.0 if key.endswith("gamma") else 0.0)
    return {key: value.astype(dtype) for key, value in params.items()}


def on(backend, arrays: dict) -> dict:
    """A dict of host arrays moved to ``backend`` (None stays None)."""
    return {k: (None if v is None else backend.asarray(v)) for k, v in arrays.items()}


def assert_moments_match(samples: np.ndarray, mean, std):
    """Sample mean, standard deviation and correlation of (N, 2) draws match a diagonal Gaussian within
    5 standard errors: se(mean) = s / sqrt(n), se(std) = s / sqrt(2n), se(corr) = 1 / sqrt(n)."""
    n = samples.shape[0]
    mean, std = np.asarray(mean), np.asarray(std)
    assert np.all(np.abs(samples.mean(0) - mean) < 5 * std / math.sqrt(n)), samples.mean(0)
    assert np.all(np.abs(samples.std(0, ddof=1) - std) < 5 * std / math.sqrt(2 * n)), samples.std(0)
    assert abs(np.corrcoef(samples.T)[0, 1]) < 5 / math.sqrt(n)


def quick_digit_classifier(path):
    """A digit classifier trained for 5 steps, cached at ``path`` (the real one takes seconds to train):
    what the CLI and MPI tests hand to the demo and to ``refdiff eval --samples``."""
    from refdiff.classifier_train import ClassifierTrainConfig
    from refdiff.digits_eval import digit_classifier

    digit_classifier(path, train_cfg=ClassifierTrainConfig(steps=5, noisy=False))
    return path


def malformed_files(folder, checkpoint) -> dict:
    """Files that are not what a refdiff command reads, made from a good ``checkpoint`` into ``folder``:
    {name: path} for an empty file, a truncated and a bit-flipped copy, a text file, a .npy, object
    arrays, a config that is not JSON, one without its model, one with an unknown model or training
    field, one whose model is a list, a folder, and images of the wrong shape."""
    import json
    from pathlib import Path

    folder, data = Path(folder), Path(checkpoint).read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(checkpoint, allow_pickle=False) as npz:
        arrays = {n: npz[n] for n in npz.files}
    config = json.loads(str(arrays["config"]))
    files = {"empty": b"", "truncated": data[: len(data) // 2], "text": b"not an archive\n",
             "flipped": data[:200] + bytes(b ^ 0xFF for b in data[200:260]) + data[260:]}
    for name, content in files.items():
        (folder / f"{name}.npz").write_bytes(content)
    configs = {"bad_json": "{not json", "no_model": json.dumps({k: v for k, v in config.items() if k != "model"}),
               "unknown_field": json.dumps({**config, "model": {**config["model"], "wings": 2}}),
               "model_list": json.dumps({**config, "model": [1, 2]}), "list_config": "[1, 2]",
               "unknown_train": json.dumps({**config, "train": {**config["train"], "wings": 2}})}
    for name, text in configs.items():
        np.savez(folder / f"{name}.npz", **{**arrays, "config": np.array(text)})
    np.save(folder / "one_array.npy", np.zeros(3))
    np.savez(folder / "objects.npz", images=np.array([{"a": 1}, None], dtype=object))
    np.savez(folder / "wrong_shape.npz", images=np.zeros((3, 5), np.float32), labels=np.zeros(3, np.int64))
    (folder / "a_folder").mkdir(exist_ok=True)
    names = [*files, *configs, "objects", "wrong_shape"]
    return {**{name: folder / f"{name}.npz" for name in names}, "npy": folder / "one_array.npy",
            "folder": folder / "a_folder"}
