"""refdiff's U-Net against its PyTorch twin (benchmarks/torch_twin.py): same weights, same outputs and
gradients in float64. PyTorch is a cross-check here, not the spec (the finite-difference and oracle
tests are); skipped where PyTorch is not installed."""

import pathlib
import sys

import numpy as np
import pytest

from refdiff.backend import Generator
from refdiff.models import unet as U
from refdiff.models.presets import PRESETS
from support import host_data, random_params

torch = pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_twin

# Two small configs that set every switch both ways between them (no dropout: the masks differ).
ADAGN = U.UNetConfig(in_channels=2, out_channels=2, image_size=8, base_channels=8, channel_mult=(1, 2),
                     num_res_blocks=1, attention_resolutions=(4,), heads=2, groups=4, num_classes=3,
                     learn_sigma=True, scale_shift_norm=True, time_embed_dim=12)
ADDED = U.UNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
                     num_res_blocks=2, attention_resolutions=(8,), heads=1, groups=2, num_classes=None,
                     scale_shift_norm=False, time_embed_dim=12, time_embed_order="sin_cos")
MNIST28 = PRESETS["mnist28"](num_classes=10)
# float64 results of ~40 layers in a row, compared entry by entry.
RTOL, ATOL = 1e-9, 1e-11


@pytest.mark.parametrize("cfg, N, S", [(ADAGN, 2, 8), (ADDED, 3, 8), (MNIST28, 2, 28)],
                         ids=["adagn", "added", "mnist28"])
def test_unet_matches_the_torch_twin_outputs_and_gradients(cfg, N, S):
    """unet_forward(params, x, t, y) == torch_unet_forward(params_to_torch(params), x, t, y) and, for
    L = sum(out * dout), unet_backward(dout) == autograd's gradients of every parameter and of x
    (float64, relative 1e-9): the same architecture, layouts converted by weight_to_torch."""
    params = random_params(U.param_shapes(cfg), 0)
    x, dout = host_data(1, (N, cfg.in_channels, S, S)), host_data(2, (N, cfg.output_channels, S, S))
    t = np.arange(N) * 397 % 1000
    y = None if cfg.num_classes is None else np.arange(N) % (cfg.num_classes + 1)
    out, cache = U.unet_forward(params, cfg, x, t, y, train=True, generator=Generator(0))
    grads, dx = U.unet_backward(dout, cache, need_dx=True)

    tparams = torch_twin.params_to_torch(params)
    tx = torch.tensor(x, requires_grad=True)
    ty = None if y is None else torch.tensor(y)
    tout = torch_twin.torch_unet_forward(tparams, cfg, tx, torch.tensor(t), ty, train=True)
    (tout * torch.tensor(dout)).sum().backward()
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=RTOL, atol=ATOL)
    tgrads = torch_twin.grads_from_torch(tparams)
    assert list(tgrads) == list(grads)
    for key in grads:
        np.testing.assert_allclose(grads[key], tgrads[key], rtol=RTOL, atol=ATOL, err_msg=key)


def test_activation_memory_counts_of_both_are_of_one_order():
    """The twin's saved-tensor count (torch_twin.SavedTensorBytes) and refdiff's cache_nbytes measure
    the same thing: both are positive and linear in the batch (the benchmark prints them side by side)."""
    cfg = ADAGN
    params = random_params(U.param_shapes(cfg), 0)
    tparams = torch_twin.params_to_torch(params)
    sizes = []
    for N in (1, 2):
        x, t, y = host_data(1, (N, 2, 8, 8)), np.zeros(N, dtype=np.int64), np.zeros(N, dtype=np.int64)
        with torch_twin.SavedTensorBytes(tparams) as saved:
            torch_twin.torch_unet_forward(tparams, cfg, torch.tensor(x), torch.tensor(t), torch.tensor(y))
        sizes.append(saved.nbytes)
    assert 0 < sizes[0] and 1.8 * sizes[0] < sizes[1] < 2.2 * sizes[0]
