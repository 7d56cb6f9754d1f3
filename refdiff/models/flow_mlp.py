"""The normalizing flow's MLP form for low-dimensional points, the 2-D toys (refdiff.models.flow holds the couplings
and the likelihood): alternating coordinate masks and an MLP that gives each coupling its s and t.

Plan: cfg.couplings couplings on (N, D) points, the mask of coupling k b[d] = [(d + k) even] (for D = 2 the two
coordinates take turns: one conditions, the other is scaled and shifted).

The s/t net of a coupling:

    h = silu((b * x) W_in + b_in [+ table[y]]);  h = silu(h W_mid + b_mid);  [s_raw | t_raw] = h W_out + b_out  (N, 2 D)

W_out and b_out start at zero, so the flow starts as the identity. Class-conditional (cfg.num_classes = K): each
coupling's own label embedding (K + 1 rows, row K the null label) is added to its first hidden layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from refdiff.backend import device, namespace
from refdiff.layers.basic import LinearCache, SiluCache, linear_backward, linear_forward, silu_backward, silu_forward
from refdiff.layers.embed import EmbeddingCache, embedding_backward, embedding_forward
from refdiff.models.common import check_int


@dataclass(frozen=True)
class MLPFlowConfig:
    """Architecture of the flow for points; validated on construction."""

    data_dim: int = 2        # D
    hidden: int = 64         # H, the width of the s/t nets' hidden layers
    couplings: int = 8       # number of coupling layers
    s_bound: float = 2.0     # |s| < s_bound: s = s_bound tanh(s_raw / s_bound)
    num_classes: int | None = None  # K for a class-conditional flow, None for an unconditional one

    def __post_init__(self):
        for name, low in (("data_dim", 2), ("hidden", 1), ("couplings", 1)):
            check_int(name, getattr(self, name), low)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 1)
        b = self.s_bound
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < float("inf"):
            raise ValueError(f"s_bound must be a positive finite number, got {b!r}")

    @property
    def dims(self) -> int:
        """D, the number of values of one point."""
        return self.data_dim


class Step(NamedTuple):
    """One coupling of the plan: its mask's parity and its parameters' prefix."""

    kind: str  # "alternate"
    name: str
    parity: int


def plan(cfg: MLPFlowConfig) -> tuple[Step, ...]:
    """The flow's couplings from data to z, in order."""
    return tuple(Step("alternate", f"coupling{k}", k % 2) for k in range(cfg.couplings))


def param_shapes(cfg: MLPFlowConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in the order of init_params and log_prob_backward."""
    D, H, shapes = cfg.data_dim, cfg.hidden, {}
    for step in plan(cfg):
        p = step.name
        shapes.update({f"{p}.in.w": (D, H), f"{p}.in.b": (H,)})
        if cfg.num_classes is not None:
            shapes[f"{p}.label.table"] = (cfg.num_classes + 1, H)  # row K is the null label
        shapes.update({f"{p}.mid.w": (H, H), f"{p}.mid.b": (H,), f"{p}.out.w": (H, 2 * D), f"{p}.out.b": (2 * D,)})
    return shapes


def mask(step: Step, h: Any) -> Any:
    """The coupling's binary mask b[d] = [(d + parity) even] in h's library, device and dtype: (1, D)."""
    xp = namespace(h)
    d = xp.arange(h.shape[1], device=device(h))
    return xp.reshape(xp.astype((d + step.parity) % 2 == 0, h.dtype), (1, h.shape[1]))


class NetCache(NamedTuple):
    name: str
    fc_in: LinearCache
    label: EmbeddingCache | None  # None for an unconditional flow
    silu_in: SiluCache
    fc_mid: LinearCache
    silu_mid: SiluCache
    fc_out: LinearCache


def st_forward(params: dict, name: str, xb: Any, y: Any) -> tuple[Any, NetCache]:
    """The s/t net of coupling ``name`` on the masked input xb = b * x (N, D) and the labels y ((N,) in [0, K], or
    None for an unconditional flow): returns [s_raw | t_raw] (N, 2 D) like xb, and a NetCache."""
    label = None
    h, fc_in = linear_forward(xb, params[f"{name}.in.w"], params[f"{name}.in.b"])  # (N, H)
    if y is not None:
        e, label = embedding_forward(y, params[f"{name}.label.table"])  # (N, H)
        h = h + e
    h, silu_in = silu_forward(h)
    h, fc_mid = linear_forward(h, params[f"{name}.mid.w"], params[f"{name}.mid.b"])  # (N, H)
    h, silu_mid = silu_forward(h)
    out, fc_out = linear_forward(h, params[f"{name}.out.w"], params[f"{name}.out.b"])  # (N, 2 D)
    return out, NetCache(name, fc_in, label, silu_in, fc_mid, silu_mid, fc_out)


def st_backward(dout: Any, c: NetCache) -> tuple[dict, Any]:
    """Gradients of st_forward: dout (N, 2 D) -> (grads of the net's parameters, d xb (N, D))."""
    g, p = {}, c.name
    dh, g[f"{p}.out.w"], g[f"{p}.out.b"] = linear_backward(dout, c.fc_out)
    dh, g[f"{p}.mid.w"], g[f"{p}.mid.b"] = linear_backward(silu_backward(dh, c.silu_mid), c.fc_mid)
    da = silu_backward(dh, c.silu_in)
    if c.label is not None:
        g[f"{p}.label.table"] = embedding_backward(da, c.label)  # a = x W + b + table[y]: da reaches both
    dxb, g[f"{p}.in.w"], g[f"{p}.in.b"] = linear_backward(da, c.fc_in)
    return g, dxb


def to_flow(x: Any) -> Any:
    """Points are already in the flow's layout (N, D)."""
    return x


def from_flow(h: Any) -> Any:
    """The flow's layout is the points' (N, D)."""
    return h


def latent_shape(cfg: MLPFlowConfig, n: int) -> tuple[int, int]:
    """The shape of z: (n, D)."""
    return n, cfg.data_dim


def check_x(cfg: MLPFlowConfig, x: Any) -> None:
    """Raise unless x is a real floating (N, D) array of finite points (one device read)."""
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating") or x.ndim != 2 or x.shape[1] != cfg.data_dim or x.shape[0] < 1:
        raise ValueError(f"x must be a real floating (N, {cfg.data_dim}) array of points (cfg.data_dim), got shape "
                         f"{tuple(x.shape)} and dtype {x.dtype}")
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError("x must be finite, got NaN or inf values")
