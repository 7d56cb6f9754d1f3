"""PyTorch twin of refdiff's U-Net: the same architecture, the same parameter dict, NCHW tensors.

Used by ``benchmarks/bench_unet.py`` (speed against PyTorch's CPU/CUDA kernels) and by
``tests/test_torch_parity.py`` (outputs and gradients against refdiff in float64). Both import it
with ``sys.path`` pointing at ``benchmarks/``; the twin itself imports refdiff only for the plan
(``unet_plan``), so the architecture is written down once.

The twin is functional, like refdiff: ``torch_unet_forward(params, cfg, x, t, y)`` reads a dict of
torch tensors with refdiff's dotted keys. ``params_to_torch`` converts refdiff's arrays:

    conv weight   ours (k, k, C_in, C_out)  ->  torch (C_out, C_in, k, k)   (weight_to_torch)
    linear weight ours (C_in, C_out)        ->  kept, used as x @ w + b (torch.addmm)
    everything else                         ->  as is

and ``grads_from_torch`` converts the .grad of each tensor back to refdiff's layout. Dropout is
PyTorch's own (other masks than refdiff's): compare the two only with dropout off or train=False.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from refdiff.models.unet import UNetConfig, unet_plan


def _is_conv_weight(key: str, value) -> bool:
    return value.ndim == 4 and key.endswith(".w")


def params_to_torch(params: dict, device="cpu", requires_grad: bool = True) -> dict:
    """refdiff host params (NumPy, any float dtype) as contiguous torch leaf tensors, torch layouts."""
    out = {}
    for key, value in params.items():
        a = np.asarray(value)
        if _is_conv_weight(key, a):
            a = a.transpose(3, 2, 0, 1)  # (k, k, C_in, C_out) -> (C_out, C_in, k, k)
        out[key] = torch.tensor(np.ascontiguousarray(a), device=device, requires_grad=requires_grad)
    return out


def grads_from_torch(tparams: dict) -> dict:
    """The .grad of every twin parameter as a NumPy array in refdiff's layout."""
    out = {}
    for key, p in tparams.items():
        g = p.grad.detach().cpu().numpy()
        out[key] = g.transpose(2, 3, 1, 0) if _is_conv_weight(key, g) else g  # (C_out, C_in, k, k) -> ours
    return out


def _timestep_embedding(t, dim: int, order: str, dtype):
    """refdiff.layers.embed.timestep_embedding: frequencies in float64 on the host, cast once."""
    half = dim // 2
    freqs = np.exp(-math.log(10000) * np.arange(half, dtype=np.float64) / max(half, 1))
    freqs = torch.tensor(freqs, dtype=dtype, device=t.device)
    args = t.to(dtype)[:, None] * freqs[None, :]  # (N, half)
    parts = [torch.cos(args), torch.sin(args)] if order == "cos_sin" else [torch.sin(args), torch.cos(args)]
    if dim % 2:
        parts.append(torch.zeros((t.shape[0], 1), dtype=dtype, device=t.device))
    return torch.cat(parts, dim=1)


def _linear(x, p: dict, key: str):
    return torch.addmm(p[f"{key}.b"], x, p[f"{key}.w"])  # x @ w + b, w (C_in, C_out)


def _conv(x, p: dict, key: str, stride: int = 1):
    w = p[f"{key}.w"]
    return F.conv2d(x, w, p[f"{key}.b"], stride=stride, padding=w.shape[-1] // 2)


def _resblock(h, emb, p: dict, name: str, cfg: UNetConfig, train: bool):
    G = cfg.groups
    r = _conv(F.silu(F.group_norm(h, G, p[f"{name}.norm1.gamma"], p[f"{name}.norm1.beta"])), p, f"{name}.conv1")
    e = _linear(emb, p, f"{name}.emb")[:, :, None, None]  # (N, C or 2C, 1, 1)
    if cfg.scale_shift_norm:
        scale, shift = torch.chunk(e, 2, dim=1)
        r = F.group_norm(r, G, p[f"{name}.norm2.gamma"], p[f"{name}.norm2.beta"]) * (1 + scale) + shift
    else:
        r = F.group_norm(r + e, G, p[f"{name}.norm2.gamma"], p[f"{name}.norm2.beta"])
    r = F.dropout(F.silu(r), cfg.dropout, training=train)
    r = _conv(r, p, f"{name}.conv2")
    skip = _conv(h, p, f"{name}.skip") if f"{name}.skip.w" in p else h
    return skip + r


def _attnblock(h, p: dict, name: str, cfg: UNetConfig):
    N, C, H, W = h.shape
    heads, d = cfg.heads, C // cfg.heads
    a = F.group_norm(h, cfg.groups, p[f"{name}.norm.gamma"], p[f"{name}.norm.beta"])
    tokens = a.reshape(N, C, H * W).transpose(1, 2)  # (N, L, C)
    qkv = tokens @ p[f"{name}.w_qkv"] + p[f"{name}.b_qkv"]  # (N, L, 3C) = [q | k | v]
    q, k, v = qkv.reshape(N, H * W, 3, heads, d).permute(2, 0, 3, 1, 4)  # each (N, heads, L, d)
    A = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (N, heads, L, L)
    o = (A @ v).permute(0, 2, 1, 3).reshape(N, H * W, C)  # (N, L, C)
    o = o @ p[f"{name}.w_out"] + p[f"{name}.b_out"]
    return h + o.transpose(1, 2).reshape(N, C, H, W)


def torch_unet_forward(p: dict, cfg: UNetConfig, x, t, y=None, train: bool = False):
    """refdiff.models.unet.unet_forward in PyTorch: x (N, C, H, W) -> (N, output_channels, H, W).

    p: params_to_torch(refdiff params); t: (N,) steps; y: (N,) labels or None (the null label K of a
    class-conditional model); train: dropout on (PyTorch's masks)."""
    s = _timestep_embedding(t, cfg.base_channels, cfg.time_embed_order, x.dtype)
    emb = _linear(F.silu(_linear(s, p, "time_embed.fc1")), p, "time_embed.fc2")
    if cfg.num_classes is not None:
        if y is None:
            y = torch.full((x.shape[0],), cfg.num_classes, dtype=torch.int64, device=x.device)
        emb = emb + p["label_embed.table"][y]
    emb = F.silu(emb)
    h, skips = x, []
    for step in unet_plan(cfg):
        if step.skip:
            h = torch.cat((h, skips.pop()), dim=1)
        if step.kind == "res":
            h = _resblock(h, emb, p, step.name, cfg, train)
        elif step.kind == "attn":
            h = _attnblock(h, p, step.name, cfg)
        elif step.kind == "down":
            h = _conv(h, p, f"{step.name}.conv", stride=2)
        elif step.kind == "up":
            h = _conv(F.interpolate(h, scale_factor=2, mode="nearest"), p, f"{step.name}.conv")
        elif step.kind == "conv_in":
            h = _conv(h, p, step.name)
        else:  # head
            h = F.silu(F.group_norm(h, cfg.groups, p[f"{step.name}.norm.gamma"], p[f"{step.name}.norm.beta"]))
            h = _conv(h, p, f"{step.name}.conv")
        if step.push:
            skips.append(h)
    return h


class SavedTensorBytes:
    """Context manager counting the bytes autograd saves for the backward (PyTorch's activation
    cache), each storage once and the parameters left out: the twin of refdiff's cache_nbytes."""

    def __init__(self, params: dict):
        self.exclude = {p.untyped_storage().data_ptr() for p in params.values()}
        self.storages: dict[int, int] = {}

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.exclude:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())
