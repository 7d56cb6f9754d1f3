"""The normalizing flow's conv form for images (refdiff.models.flow holds the couplings and the likelihood): the
RealNVP plan of checkerboard and channel couplings around squeezes (Dinh et al. 2017, Sec. 3.4-3.6), the masks,
the squeeze, and the conv net that gives each coupling its s and t.

Plan (cfg.scales = L, cfg.couplings = K; C channels, S x S images; activations channels-last):

    scale l < L-1:  K checkerboard couplings (parities 0, 1, 0, ...)  on (S_l, S_l, C_l)
                    squeeze (S_l, S_l, C_l) -> (S_l / 2, S_l / 2, 4 C_l)
                    K channel couplings (parities 0, 1, 0, ...)       on (S_l / 2, S_l / 2, 4 C_l)
    scale L-1:      K + 1 checkerboard couplings                      on (S / 2^(L-1), S / 2^(L-1), C 4^(L-1))

Every dimension stays to the end (no factoring out at each scale: at 8x8 there is little to gain), so
z has D = C S S entries and the prior is N(0, I_D).

The s/t net of a coupling (Glow's shape, Kingma & Dhariwal 2018, Sec. 3.3, with SiLU):

    h = silu(conv3x3(b * x) [+ table[y]]);  h = silu(conv1x1(h));  [s_raw | t_raw] = conv3x3(h)    (N, H, W, 2 C)

the last conv initialised at zero, so that every coupling, and the flow, starts as the identity. b is the
coupling's binary mask (1 on the half that conditions). Class-conditional (cfg.num_classes = K): each coupling's
own label embedding (K + 1 rows, row K the null label) is added to its first hidden layer at every pixel.

Every coder of refdiff.models.flow has these functions: param_shapes, plan, mask, st_forward, st_backward,
to_flow, from_flow, latent_shape, check_x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from refdiff.backend import device, namespace
from refdiff.layers.basic import SiluCache, silu_backward, silu_forward
from refdiff.layers.conv import Conv2dCache, conv2d_backward, conv2d_forward
from refdiff.layers.embed import EmbeddingCache, embedding_backward, embedding_forward
from refdiff.models.common import check_int, check_sized_image


@dataclass(frozen=True)
class FlowConfig:
    """Architecture of the RealNVP flow for images; validated on construction."""

    in_channels: int = 1     # C of the data
    image_size: int = 8      # S
    hidden: int = 32         # channels of the s/t nets' hidden layers
    scales: int = 2          # L: L - 1 squeezes
    couplings: int = 3       # K couplings per mask type and scale (K + 1 at the last scale)
    s_bound: float = 2.0     # |s| < s_bound: s = s_bound tanh(s_raw / s_bound)
    levels: int = 17         # the data's values on [-1, 1] (dequantisation and bits/dim)
    num_classes: int | None = None  # K for a class-conditional flow, None for an unconditional one

    def __post_init__(self):
        for name, low in (("in_channels", 1), ("image_size", 2), ("hidden", 1), ("scales", 1), ("couplings", 1),
                          ("levels", 2)):
            check_int(name, getattr(self, name), low)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 1)
        b = self.s_bound
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < float("inf"):
            raise ValueError(f"s_bound must be a positive finite number, got {b!r}")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size must be a multiple of 2^(scales - 1) = {self.downsample_factor}, "
                             f"got {self.image_size}")

    @property
    def downsample_factor(self) -> int:
        """2^(L - 1): the squeezes shrink S by this much."""
        return 2 ** (self.scales - 1)

    @property
    def dims(self) -> int:
        """D = C S S, the number of values of one image (and of z)."""
        return self.in_channels * self.image_size**2


class Step(NamedTuple):
    """One step of the plan: a coupling ("checkerboard" or "channel", with its mask's parity and its
    parameters' prefix) or a "squeeze"; ``channels`` is C of the activation it acts on."""

    kind: str
    name: str  # "coupling{i}", the parameters' prefix ("" for a squeeze)
    parity: int
    channels: int


def plan(cfg: FlowConfig) -> tuple[Step, ...]:
    """The flow's steps from data to z, in order (the module docstring's plan)."""
    steps, C, K = [], cfg.in_channels, cfg.couplings

    def couplings(kind: str, count: int, channels: int):
        for k in range(count):
            steps.append(Step(kind, f"coupling{sum(s.kind != 'squeeze' for s in steps)}", k % 2, channels))

    for _ in range(cfg.scales - 1):
        couplings("checkerboard", K, C)
        steps.append(Step("squeeze", "", 0, C))
        C *= 4
        couplings("channel", K, C)
    couplings("checkerboard", K + 1, C)
    return tuple(steps)


def param_shapes(cfg: FlowConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in the order of init_params and log_prob_backward."""
    H, shapes = cfg.hidden, {}
    for step in plan(cfg):
        if step.kind == "squeeze":
            continue
        C, p = step.channels, step.name
        shapes.update({f"{p}.in.w": (3, 3, C, H), f"{p}.in.b": (H,)})
        if cfg.num_classes is not None:
            shapes[f"{p}.label.table"] = (cfg.num_classes + 1, H)  # row K is the null label
        shapes.update({f"{p}.mid.w": (1, 1, H, H), f"{p}.mid.b": (H,), f"{p}.out.w": (3, 3, H, 2 * C),
                       f"{p}.out.b": (2 * C,)})
    return shapes


def mask(step: Step, h: Any) -> Any:
    """The coupling's binary mask b (1 on the conditioning half) in h's library, device and dtype.

    Math: checkerboard b[i, j] = [(i + j + parity) even], broadcast over channels    (Dinh et al. 2017, Fig. 3)
          channel b[c] = [c < C / 2] for parity 0, [c >= C / 2] for parity 1

    h: (N, H, W, C). Returns (1, H, W, 1) or (1, 1, 1, C).
    """
    xp = namespace(h)
    _, H, W, C = h.shape
    if step.kind == "checkerboard":
        i = xp.reshape(xp.arange(H, device=device(h)), (H, 1))  # (H, 1)
        j = xp.reshape(xp.arange(W, device=device(h)), (1, W))  # (1, W)
        b = (i + j + step.parity) % 2 == 0  # (H, W)
        return xp.reshape(xp.astype(b, h.dtype), (1, H, W, 1))
    c = xp.arange(C, device=device(h))
    b = (c < C // 2) if step.parity == 0 else (c >= C // 2)
    return xp.reshape(xp.astype(b, h.dtype), (1, 1, 1, C))


class NetCache(NamedTuple):
    name: str
    conv_in: Conv2dCache
    label: EmbeddingCache | None  # None for an unconditional flow
    silu_in: SiluCache
    conv_mid: Conv2dCache
    silu_mid: SiluCache
    conv_out: Conv2dCache


def st_forward(params: dict, name: str, xb: Any, y: Any) -> tuple[Any, NetCache]:
    """The s/t net of coupling ``name`` on the masked input xb = b * x (N, H, W, C) and the labels y ((N,) in [0, K],
    or None for an unconditional flow): returns [s_raw | t_raw] (N, H, W, 2 C) like xb, and a NetCache."""
    xp, label = namespace(xb), None
    h, conv_in = conv2d_forward(xb, params[f"{name}.in.w"], params[f"{name}.in.b"])  # (N, H, W, hidden)
    if y is not None:
        e, label = embedding_forward(y, params[f"{name}.label.table"])  # (N, hidden)
        h = h + xp.reshape(e, (e.shape[0], 1, 1, e.shape[1]))  # (N, hidden) -> (N, 1, 1, hidden), every pixel
    h, silu_in = silu_forward(h)
    h, conv_mid = conv2d_forward(h, params[f"{name}.mid.w"], params[f"{name}.mid.b"])  # 1x1: (N, H, W, hidden)
    h, silu_mid = silu_forward(h)
    out, conv_out = conv2d_forward(h, params[f"{name}.out.w"], params[f"{name}.out.b"])  # (N, H, W, 2 C)
    return out, NetCache(name, conv_in, label, silu_in, conv_mid, silu_mid, conv_out)


def st_backward(dout: Any, c: NetCache) -> tuple[dict, Any]:
    """Gradients of st_forward: dout (N, H, W, 2 C) -> (grads of the net's parameters, d xb (N, H, W, C))."""
    g, p = {}, c.name
    dh, g[f"{p}.out.w"], g[f"{p}.out.b"] = conv2d_backward(dout, c.conv_out)
    dh, g[f"{p}.mid.w"], g[f"{p}.mid.b"] = conv2d_backward(silu_backward(dh, c.silu_mid), c.conv_mid)
    da = silu_backward(dh, c.silu_in)
    if c.label is not None:  # the embedding was added at every pixel: its gradient sums over them
        g[f"{p}.label.table"] = embedding_backward(namespace(da).sum(da, axis=(1, 2)), c.label)
    dxb, g[f"{p}.in.w"], g[f"{p}.in.b"] = conv2d_backward(da, c.conv_in)
    return g, dxb


def squeeze(h: Any) -> Any:
    """Space-to-depth: each 2x2 block of pixels becomes 4 C channels (Dinh et al. 2017, Sec. 3.6): a permutation
    of the entries, so its log-determinant is 0 and unsqueeze is its inverse (and its backward).

    h: (N, H, W, C). Returns (N, H / 2, W / 2, 4 C), channel index (2 a + c) C + k for pixel (2 i + a, 2 j + c).
    """
    xp = namespace(h)
    N, H, W, C = h.shape
    h = xp.reshape(h, (N, H // 2, 2, W // 2, 2, C))  # (N, i, a, j, c, k)
    h = xp.permute_dims(h, (0, 1, 3, 2, 4, 5))  # (N, i, j, a, c, k)
    return xp.reshape(h, (N, H // 2, W // 2, 4 * C))


def unsqueeze(h: Any) -> Any:
    """Depth-to-space, squeeze's inverse: h (N, H, W, 4 C) -> (N, 2 H, 2 W, C)."""
    xp = namespace(h)
    N, H, W, C4 = h.shape
    h = xp.reshape(h, (N, H, W, 2, 2, C4 // 4))  # (N, i, j, a, c, k)
    h = xp.permute_dims(h, (0, 1, 3, 2, 4, 5))  # (N, i, a, j, c, k)
    return xp.reshape(h, (N, 2 * H, 2 * W, C4 // 4))


def to_flow(x: Any) -> Any:
    """Images (N, C, S, S) -> the flow's channels-last layout (N, S, S, C)."""
    return namespace(x).permute_dims(x, (0, 2, 3, 1))


def from_flow(h: Any) -> Any:
    """The flow's layout (N, S, S, C) -> images (N, C, S, S)."""
    return namespace(h).permute_dims(h, (0, 3, 1, 2))


def latent_shape(cfg: FlowConfig, n: int) -> tuple[int, int, int, int]:
    """The shape of the last activation, z before flattening: (n, s, s, C 4^(L-1)), s = S / 2^(L-1)."""
    s = cfg.image_size // cfg.downsample_factor
    return n, s, s, cfg.in_channels * cfg.downsample_factor**2


def check_x(cfg: FlowConfig, x: Any) -> None:
    """Raise unless x is a real floating (N, C, S, S) array of finite values (one device read)."""
    check_sized_image(x, cfg)
    xp = namespace(x)
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError("x must be finite, got NaN or inf values")
