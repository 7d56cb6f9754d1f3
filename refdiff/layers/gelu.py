"""The Gaussian error linear unit, GELU(x) = x Phi(x) (Hendrycks & Gimpel 2016), as a forward/backward pair.

Two forms, a switch (docs/design.md rule 7):

- ``"tanh"`` (the default): Phi(x) ~= (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2, the approximation
  of Hendrycks & Gimpel 2016 (Sec. 2) that GPT and GPT-2 use, and torch.nn.GELU(approximate="tanh");
- ``"none"``: the exact Phi(x) = (1 + erf(x / sqrt(2))) / 2, torch.nn.GELU()'s default, which is what
  GLIDE's released text transformer (glide_text2im/xf.py, nn.GELU()) calls.

The two differ by at most about 5e-4 (near |x| = 2). The derivation is the "GELU" section of
docs/derivations/text_encoder.md; the numbered steps there are the numbered comments here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from refdiff.backend import erf, namespace

APPROXIMATIONS = ("tanh", "none")
_K = math.sqrt(2.0 / math.pi)  # sqrt(2 / pi)
_A = 0.044715  # the cubic coefficient of the tanh form (Hendrycks & Gimpel 2016, Sec. 2)


class GeluCache(NamedTuple):
    x: Any  # the input
    t: Any  # "tanh": tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3); "none": Phi(x); like x
    approximate: str  # "tanh" or "none"


def gelu_forward(x: Any, approximate: str = "tanh") -> tuple[Any, GeluCache]:
    """GELU activation, elementwise.

    Math: "tanh":  u = sqrt(2/pi) (x + 0.044715 x^3),  t = tanh(u),  y = x (1 + t) / 2
          "none":  Phi = (1 + erf(x / sqrt(2))) / 2,  y = x Phi            (Hendrycks & Gimpel 2016)

    x: any shape, real floating. Returns y like x; caches x and t (or Phi).
    """
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {', '.join(APPROXIMATIONS)}, got {approximate!r}")
    xp = namespace(x)
    if approximate == "none":
        Phi = 0.5 * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))  # steps 1-2: the normal CDF
        return x * Phi, GeluCache(x, Phi, approximate)  # step 3: y = x Phi
    u = _K * (x + _A * x * x * x)  # step 1
    t = xp.tanh(u)  # step 2
    y = 0.5 * x * (1.0 + t)  # step 3
    return y, GeluCache(x, t, approximate)


def gelu_backward(dy: Any, cache: GeluCache) -> Any:
    """Gradient of gelu_forward: returns dx, through its steps 3 to 1.

    Math: "tanh":  dx = dy (1 + t) / 2 + dy x / 2 * (1 - t^2) * sqrt(2/pi) (1 + 3 * 0.044715 x^2)
          "none":  dx = dy (Phi + x phi),  phi = exp(-x^2 / 2) / sqrt(2 pi) = Phi'
    """
    xp = namespace(dy)
    x, t, approximate = cache
    if approximate == "none":
        phi = xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))  # steps 2-1: Phi'(x)
        return dy * t + dy * x * phi  # step 3: the product rule on y = x Phi
    # step 3: y = x (1 + t) / 2, two paths to x
    dx = 0.5 * dy * (1.0 + t)
    dt = 0.5 * dy * x
    # step 2: t = tanh(u)
    du = dt * (1.0 - t * t)
    # step 1: u = sqrt(2/pi) (x + 0.044715 x^3)
    return dx + du * (_K * (1.0 + 3.0 * _A * x * x))
