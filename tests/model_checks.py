"""Checks shared by the model test modules (U-Net, MLP, classifier): a forward call with one bad argument, the
bad arguments and config fields that more than one model rejects alike, and the gradients of a backward pass
against the parameters."""

import numpy as np

from refdiff.backend import Generator
from support import assert_same_array_kind, on

# Bad x and t for a forward on a batch of 3 one-channel 8x8 images through two levels (the U-Net's and the
# classifier's encoder): (change, message) as bad_forward_arguments takes them.
IMAGE_INPUT_ERRORS = [
    ({"x": np.zeros((3, 2, 8, 8))},
     r"x must be a real floating \(N, 1, H, W\) array \(NCHW\), got shape \(3, 2, 8, 8\)"),
    ({"x": np.zeros((3, 8, 8, 1))}, r"x must be a real floating \(N, 1, H, W\) array"),
    ({"x": np.zeros((3, 1, 8, 8), dtype=np.int64)}, "x must be a real floating"),
    ({"x": np.zeros((3, 1, 7, 8))},
     r"x's height and width must be positive multiples of .* = 2, got \(H, W\) = \(7, 8\)"),
    ({"t": np.zeros(2, dtype=np.int64)}, r"t must be an \(N,\) array .* N = 3"),
]

# Bad encoder fields, which UNetConfig and ClassifierConfig (through the U-Net's checks) reject alike:
# (kwargs, message) on top of the default config (28x28, base 32, levels 28, 14, 7).
ENCODER_FIELD_ERRORS = [
    ({"in_channels": 0}, "in_channels must be an integer >= 1, got 0"),
    ({"channel_mult": ()}, "channel_mult must have at least one entry"),
    ({"image_size": 6, "channel_mult": (1, 2, 2)},
     r"image_size must be a multiple of 2\^\(len\(channel_mult\) - 1\) = 4"),
    ({"attention_resolutions": (5,)},
     r"attention_resolutions must hold resolutions of the levels \[28, 14, 7\], got 5"),
    ({"groups": 3}, r"groups must divide every normalized channel count \(down.0.res.0 has 32\), got 3"),
    ({"heads": 3}, r"heads must divide the channels of every attention block \(mid.attn has 64\)"),
    ({"dropout": 1.0}, r"dropout must be a drop probability in \[0, 1\), got 1.0"),
    ({"time_embed_order": "sincos"}, "time_embed_order must be one of cos_sin, sin_cos"),
]


def init_bad_arguments(base, config_name: str) -> list:
    """(args, message) of init_params(*args) that every model rejects: a non-refdiff generator and a
    non-floating dtype with the config ``base``, and a non-config (``config_name``: "a UNetConfig", ...)."""
    return [
        ((base, 0), "generator must be a refdiff.backend.Generator"),
        ((base, Generator(0), "int64"), "dtype must be a NumPy real floating dtype"),
        (({}, Generator(0)), f"cfg must be {config_name}"),
    ]


def bad_forward_arguments(backend, init_params, valid: dict, change: dict) -> dict:
    """The keyword arguments of a model's forward: the host arguments ``valid`` with ``change`` applied, on
    ``backend``.

    valid: a correct call but for params (cfg, x, t, ...). params start as init_params(cfg) in float64 where
    cfg (the changed one if ``change`` has it) is of the type of valid["cfg"], else as {}. change: argument ->
    host value, or "params.KEY" -> the value of the one parameter KEY. A params dict and x, t, y (where not
    None) are moved to ``backend``."""
    cfg = change.get("cfg", valid["cfg"])
    params = init_params(cfg, Generator(0), dtype=np.float64) if isinstance(cfg, type(valid["cfg"])) else {}
    args = dict(valid, params=params)
    for key, value in change.items():
        if key.startswith("params."):
            args["params"] = dict(params, **{key[len("params."):]: value})
        else:
            args[key] = value
    if isinstance(args["params"], dict):
        args["params"] = on(backend, args["params"])
    for key in ("x", "t", "y"):
        if args.get(key) is not None:
            args[key] = backend.asarray(args[key])
    return args


def assert_grads_like_params(grads: dict, params: dict, shapes: dict, dx, x) -> None:
    """One gradient per parameter: the keys of ``params`` and of the model's param_shapes ``shapes`` in the
    same order, each gradient of its parameter's shape, library, device and dtype; dx like x."""
    assert list(grads) == list(params) == list(shapes)
    for k in params:
        assert_same_array_kind(grads[k], params[k])
        assert grads[k].shape == params[k].shape, k
    assert_same_array_kind(dx, x)
    assert dx.shape == x.shape
