"""The U-Net's architecture from its config alone: the blocks in forward order, their parameters'
shapes and counts, and the multiply-adds of one forward pass, per layer (no arrays are built).

``unet_plan(cfg)`` is guided-diffusion's ``UNetModel.__init__`` (conv_resample=True) as a list of
``Step`` records; refdiff.models.unet runs the plan, refdiff.models.classifier cuts it after the middle
block. ``UNetConfig`` is validated on construction against the plan (channel counts divisible by the
groups and heads, attention at resolutions of the levels).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

from refdiff.layers.embed import ORDERS
from refdiff.models import blocks as B
from refdiff.models.common import check_int, count_params

KINDS = ("conv_in", "res", "attn", "down", "up", "head")


def _int_tuple(name: str, value: Any, low: int, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a tuple of integers >= {low}, got {value!r}")
    items = tuple(value)
    for v in items:
        check_int(f"every entry of {name}", v, low)
    if not items and not allow_empty:
        raise ValueError(f"{name} must have at least one entry, got {value!r}")
    return tuple(int(v) for v in items)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net; validated on construction (lists become tuples)."""

    in_channels: int = 1            # C of the data
    out_channels: int = 1           # channels of the prediction (eps, x0 or v); learn_sigma doubles them
    image_size: int = 28            # the resolution attention_resolutions refers to (ADM's image_size)
    base_channels: int = 32         # ADM's model_channels: level l has base_channels * channel_mult[l]
    channel_mult: tuple = (1, 2, 2)  # one entry per level; L entries give L - 1 downsamplings
    num_res_blocks: int = 1         # ResBlocks per level going down; num_res_blocks + 1 going up (ADM)
    attention_resolutions: tuple = ()  # resolutions (pixels) whose ResBlocks get attention; the middle has it always
    heads: int = 1                  # attention heads (must divide the channels of every attention block)
    dropout: float = 0.0            # drop probability inside every ResBlock, while training
    groups: int = 8                 # GroupNorm groups (must divide every normalized channel count)
    num_classes: int | None = None  # K; the label table has K + 1 rows, row K the null label
    learn_sigma: bool = False       # also output out_channels variance channels (learned-range variance)
    scale_shift_norm: bool = True   # AdaGN (ADM) if True, else the embedding is added before GN2 (DDPM)
    time_embed_dim: int | None = None  # E; None means 4 * base_channels (ADM)
    time_embed_order: str = "cos_sin"  # "cos_sin" (OpenAI, default) or "sin_cos" (diffusers)

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "image_size", "base_channels", "num_res_blocks", "heads",
                     "groups"):
            check_int(name, getattr(self, name), 1)
        object.__setattr__(self, "channel_mult", _int_tuple("channel_mult", self.channel_mult, 1, False))
        attn = _int_tuple("attention_resolutions", self.attention_resolutions, 1, True)
        object.__setattr__(self, "attention_resolutions", attn)
        if self.time_embed_dim is None:
            object.__setattr__(self, "time_embed_dim", 4 * self.base_channels)
        check_int("time_embed_dim", self.time_embed_dim, 1)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 1)
        for name in ("learn_sigma", "scale_shift_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ValueError(f"dropout must be a drop probability in [0, 1), got {d!r}")
        if self.time_embed_order not in ORDERS:
            raise ValueError(f"time_embed_order must be one of {', '.join(ORDERS)}, got {self.time_embed_order!r}")
        _check_architecture(self)

    @property
    def output_channels(self) -> int:
        """Channels of the output: out_channels, or 2 out_channels with learn_sigma."""
        return 2 * self.out_channels if self.learn_sigma else self.out_channels

    @property
    def downsample_factor(self) -> int:
        """2^(L - 1): H and W of the input must be multiples of it."""
        return 2 ** (len(self.channel_mult) - 1)


def _check_architecture(cfg: UNetConfig) -> None:
    """image_size, attention_resolutions, groups and heads fit the levels' channel counts."""
    f = cfg.downsample_factor
    if cfg.image_size % f:
        raise ValueError(f"image_size must be a multiple of 2^(len(channel_mult) - 1) = {f}, got {cfg.image_size}")
    sizes = [cfg.image_size // 2**level for level in range(len(cfg.channel_mult))]
    for r in cfg.attention_resolutions:
        if r not in sizes:
            raise ValueError(f"attention_resolutions must hold resolutions of the levels {sizes}, got {r}")
    for step in unet_plan(cfg):
        normalized = {"res": (step.c_in, step.c_out), "attn": (step.c_in,), "head": (step.c_in,)}.get(step.kind, ())
        for c in normalized:
            if c % cfg.groups:
                raise ValueError(f"groups must divide every normalized channel count ({step.name} has {c}), "
                                 f"got {cfg.groups}")
        if step.kind == "attn" and step.c_in % cfg.heads:
            raise ValueError(f"heads must divide the channels of every attention block ({step.name} has "
                             f"{step.c_in}), got {cfg.heads}")


# ----------------------------------------------------------------------------------- the plan

class Step(NamedTuple):
    """One block of the U-Net, in forward order."""

    kind: str    # one of KINDS
    name: str    # its parameter prefix, e.g. "down.0.res.0"
    c_in: int    # input channels (for a decoder ResBlock: h's channels plus the skip's)
    c_out: int   # output channels
    level: int   # the input's resolution level: (H / 2^level, W / 2^level)
    skip: int    # channels of the encoder activation concatenated to h before this block (0: none)
    push: bool   # the output is kept as a skip connection for the decoder


@functools.lru_cache(maxsize=64)
def unet_plan(cfg: UNetConfig) -> tuple[Step, ...]:
    """The U-Net's blocks in forward order (guided-diffusion's UNetModel.__init__, conv_resample=True)."""
    base, mult, R, last = cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks, len(cfg.channel_mult) - 1
    steps = [Step("conv_in", "input.conv", cfg.in_channels, base, 0, 0, True)]
    skips, ch = [base], base  # channels of the pushed activations
    for level, m in enumerate(mult):
        attn = cfg.image_size // 2**level in cfg.attention_resolutions
        for i in range(R):
            steps.append(Step("res", f"down.{level}.res.{i}", ch, base * m, level, 0, not attn))
            ch = base * m
            if attn:
                steps.append(Step("attn", f"down.{level}.attn.{i}", ch, ch, level, 0, True))
            skips.append(ch)
        if level < last:
            steps.append(Step("down", f"down.{level}.downsample", ch, ch, level, 0, True))
            skips.append(ch)
    steps += [Step("res", "mid.res.0", ch, ch, last, 0, False), Step("attn", "mid.attn", ch, ch, last, 0, False),
              Step("res", "mid.res.1", ch, ch, last, 0, False)]
    for level in reversed(range(last + 1)):
        attn = cfg.image_size // 2**level in cfg.attention_resolutions
        for i in range(R + 1):
            s = skips.pop()
            steps.append(Step("res", f"up.{level}.res.{i}", ch + s, base * mult[level], level, s, False))
            ch = base * mult[level]
            if attn:
                steps.append(Step("attn", f"up.{level}.attn.{i}", ch, ch, level, 0, False))
        if level > 0:
            steps.append(Step("up", f"up.{level}.upsample", ch, ch, level, 0, False))
    steps.append(Step("head", "out", ch, cfg.output_channels, 0, 0, False))
    return tuple(steps)


def _step_shapes(step: Step, cfg: UNetConfig) -> dict[str, tuple[int, ...]]:
    """The step's parameters under the block's short keys."""
    if step.kind == "res":
        return B.resblock_shapes(step.c_in, step.c_out, cfg.time_embed_dim, cfg.scale_shift_norm)
    if step.kind == "attn":
        return B.attnblock_shapes(step.c_in)
    if step.kind == "head":
        return B.head_shapes(step.c_in, step.c_out)
    if step.kind == "conv_in":
        return B.conv_shapes(step.c_in, step.c_out)
    return {f"conv.{k}": v for k, v in B.conv_shapes(step.c_in, step.c_out).items()}  # down, up


@functools.lru_cache(maxsize=64)
def _param_shapes(cfg: UNetConfig) -> dict[str, tuple[int, ...]]:
    E = cfg.time_embed_dim
    shapes = {"time_embed.fc1.w": (cfg.base_channels, E), "time_embed.fc1.b": (E,),
              "time_embed.fc2.w": (E, E), "time_embed.fc2.b": (E,)}
    if cfg.num_classes is not None:
        shapes["label_embed.table"] = (cfg.num_classes + 1, E)  # row K is the null label
    for step in unet_plan(cfg):
        shapes.update({f"{step.name}.{k}": v for k, v in _step_shapes(step, cfg).items()})
    return shapes


def param_shapes(cfg: UNetConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in forward order (the order of init_params and unet_backward)."""
    return dict(_param_shapes(cfg))


def param_count(cfg: UNetConfig) -> int:
    """Number of scalar parameters of the model ``cfg`` describes (no arrays are built)."""
    return count_params(_param_shapes(cfg))


def flops(cfg: UNetConfig, image_size: int | None = None) -> tuple[list[tuple[str, int]], int]:
    """Multiply-adds of one forward pass for one image, per layer, from the config alone.

    Counts the matrix products: a k x k conv from C_in to C_out channels at Ho x Wo output pixels is
    k^2 C_in C_out Ho Wo; a linear layer C_in C_out per row; attention over L = H W tokens of C
    channels is L 3C^2 (qkv) + 2 L^2 C (scores and A v) + L C^2 (output). GroupNorm, SiLU and the
    residual adds (a few operations per activation) are left out. One multiply-add is 2 FLOPs in a
    benchmark's GFLOP/s; a training step's backward costs about twice the forward.

    image_size: H = W of the input (a multiple of cfg.downsample_factor); cfg.image_size if None.
    Returns ([(layer name, multiply-adds), ...] in forward order, total).
    """
    S = cfg.image_size if image_size is None else image_size
    check_int("image_size", S, 1)
    if S % cfg.downsample_factor:
        raise ValueError(f"image_size must be a multiple of {cfg.downsample_factor}, got {S}")
    E = cfg.time_embed_dim
    layers = [("time_embed.fc1", cfg.base_channels * E), ("time_embed.fc2", E * E)]
    for step in unet_plan(cfg):
        n, ci, co = step.name, step.c_in, step.c_out
        L = (S // 2**step.level) ** 2  # pixels at the input's level
        if step.kind == "res":
            layers += [(f"{n}.conv1", 9 * ci * co * L), (f"{n}.emb", E * (2 * co if cfg.scale_shift_norm else co)),
                       (f"{n}.conv2", 9 * co * co * L)]
            if ci != co:
                layers.append((f"{n}.skip", ci * co * L))
        elif step.kind == "attn":
            layers += [(f"{n}.qkv", L * ci * 3 * ci), (f"{n}.attention", 2 * L * L * ci), (f"{n}.out", L * ci * ci)]
        elif step.kind in ("conv_in", "head"):
            layers.append((n if step.kind == "conv_in" else f"{n}.conv", 9 * ci * co * L))
        else:  # down: output at L / 4 pixels; up: at 4 L
            layers.append((f"{n}.conv", 9 * ci * co * (L // 4 if step.kind == "down" else 4 * L)))
    return layers, sum(count for _, count in layers)


def summary(cfg: UNetConfig, image_size: int | None = None) -> str:
    """A text report of the config, its parameter count and its per-layer multiply-adds
    (what ``refdiff info --model NAME`` prints)."""
    S = cfg.image_size if image_size is None else image_size
    return report(cfg, param_count(cfg), *flops(cfg, S), S)


def report(cfg: Any, n: int, layers: list[tuple[str, int]], total: int, S: int) -> str:
    """The text of ``summary`` for any model config with in_channels: n parameters and the per-layer
    multiply-adds ``layers`` (summing to ``total``) of one S x S image."""
    width = max(len(name) for name, _ in layers)
    lines = [repr(cfg),
             f"parameters: {n:,} ({n * 4 / 2**20:.2f} MiB in float32)",
             f"forward, one {cfg.in_channels}x{S}x{S} image: {total / 1e6:.1f} M multiply-adds "
             f"= {2 * total / 1e6:.1f} MFLOP (backward about twice that)",
             f"{'layer':<{width}}  {'multiply-adds':>14}  share"]
    lines += [f"{name:<{width}}  {count:>14,}  {100 * count / total:5.1f}%" for name, count in layers]
    return "\n".join(lines)
