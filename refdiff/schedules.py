"""Noise schedules of the forward process, timestep grids for sampling, and respacing.

Everything here is float64 NumPy, built once (docs/design.md rule 3); ``refdiff.backend.gather`` moves a
table to an input's device and dtype at the point of use. Sources: Ho et al. 2020 (linear betas,
posterior, eqs. 4-7), Nichol & Dhariwal 2021 (cosine schedule eq. 17, clipped posterior log-variance,
respacing), Lin et al. 2024 (zero terminal SNR, Alg. 1), Karras et al. 2022 (sigma grid, eq. 5).

Index convention (OpenAI's): step t in [0, T) produces x_t from x_{t-1} with betas[t], where x_{-1}
is the data x0; so alpha_bar[t] = prod_{s <= t} (1 - betas[s]) and alpha_bar_prev[0] = 1.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete forward process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

    betas: (T,) float64 in (0, 1); only the last may equal 1 (zero terminal SNR).
    timestep_map: (T,) int64, the step index the model is fed at each step (the identity unless the
    schedule was respaced from a longer one). Every other field is derived from betas in float64.
    """

    betas: np.ndarray
    timestep_map: np.ndarray = None
    alphas: np.ndarray = field(init=False)
    alpha_bar: np.ndarray = field(init=False)
    alpha_bar_prev: np.ndarray = field(init=False)
    alpha_bar_next: np.ndarray = field(init=False)
    sqrt_alpha_bar: np.ndarray = field(init=False)
    sqrt_one_minus_alpha_bar: np.ndarray = field(init=False)
    sqrt_recip_alpha_bar: np.ndarray = field(init=False)
    sqrt_recipm1_alpha_bar: np.ndarray = field(init=False)
    posterior_variance: np.ndarray = field(init=False)
    posterior_variance_clipped: np.ndarray = field(init=False)
    posterior_log_variance_clipped: np.ndarray = field(init=False)
    posterior_mean_coef1: np.ndarray = field(init=False)
    posterior_mean_coef2: np.ndarray = field(init=False)

    def __post_init__(self):
        betas = _check_betas(self.betas)
        T = betas.shape[0]
        tmap = np.arange(T) if self.timestep_map is None else np.asarray(self.timestep_map)
        if tmap.shape != (T,) or not np.issubdtype(tmap.dtype, np.integer) or np.any(np.diff(tmap) <= 0):
            raise ValueError(f"timestep_map must be ({T},) strictly increasing integers, got {tmap!r}")
        tmap = np.array(tmap, dtype=np.int64)
        tmap.flags.writeable = False
        object.__setattr__(self, "timestep_map", tmap)
        alphas = 1.0 - betas
        alpha_bar = np.cumprod(alphas)                                # eq. 4 of Ho et al.
        alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
        with np.errstate(divide="ignore"):  # alpha_bar_T = 0 under zero terminal SNR: x0 from eps is +inf
            recip = 1.0 / alpha_bar
        posterior_variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)     # eq. 7
        # posterior_variance[0] == 0: improved DDPM puts posterior_variance[1] in its place before
        # taking logs (and beta_0 when T == 1, where there is no posterior_variance[1]).
        clipped = np.append(posterior_variance[1] if T > 1 else betas[0], posterior_variance[1:])
        fields = dict(
            betas=betas, alphas=alphas, alpha_bar=alpha_bar,
            alpha_bar_prev=alpha_bar_prev, alpha_bar_next=np.append(alpha_bar[1:], 0.0),
            sqrt_alpha_bar=np.sqrt(alpha_bar), sqrt_one_minus_alpha_bar=np.sqrt(1.0 - alpha_bar),
            sqrt_recip_alpha_bar=np.sqrt(recip), sqrt_recipm1_alpha_bar=np.sqrt(recip - 1.0),
            posterior_variance=posterior_variance, posterior_variance_clipped=clipped,
            posterior_log_variance_clipped=np.log(clipped),
            posterior_mean_coef1=betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar),   # eq. 7
            posterior_mean_coef2=(1.0 - alpha_bar_prev) * np.sqrt(alphas) / (1.0 - alpha_bar),
        )
        for name, value in fields.items():
            object.__setattr__(self, name, _readonly(value))

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return int(self.betas.shape[0])

    @property
    def sigmas(self) -> np.ndarray:
        """(T,) noise-to-signal ratios sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)."""
        return sigma_from_alpha_bar(self.alpha_bar)

    @property
    def snr(self) -> np.ndarray:
        """(T,) signal-to-noise ratios alpha_bar_t / (1 - alpha_bar_t)."""
        return self.alpha_bar / (1.0 - self.alpha_bar)


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")
    return int(T)


def _check_betas(betas) -> np.ndarray:
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.shape[0] < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
    inner_ok = np.all((b[:-1] > 0) & (b[:-1] < 1))
    last_ok = 0 < b[-1] <= 1  # beta = 1 only at the last step: zero terminal SNR
    if not (inner_ok and last_ok):
        raise ValueError(
            "betas must lie in (0, 1) (the last may be 1 for zero terminal SNR), got range "
            f"[{b.min()!r}, {b.max()!r}]"
        )
    return b


def from_betas(betas) -> Schedule:
    """The schedule with the given (T,) betas."""
    return Schedule(np.asarray(betas, dtype=np.float64))


def from_alpha_bar(alpha_bar) -> Schedule:
    """The schedule whose cumulative products are ``alpha_bar`` (strictly decreasing in [0, 1)).

    Math: beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, alpha_bar_{-1} = 1
    """
    ab = np.asarray(alpha_bar, dtype=np.float64)
    if ab.ndim != 1 or ab.shape[0] < 1:
        raise ValueError(f"alpha_bar must be a non-empty 1-D array, got shape {ab.shape}")
    prev = np.append(1.0, ab[:-1])
    if not (np.all(ab < prev) and np.all(ab[:-1] > 0) and ab[-1] >= 0):
        raise ValueError("alpha_bar must be strictly decreasing in (0, 1) (the last may be 0)")
    return from_betas(1.0 - ab / prev)


def linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02, rescale: bool = True) -> Schedule:
    """Betas evenly spaced from beta_start to beta_end (Ho et al. 2020, Sec. 4).

    rescale=True (OpenAI's convention) multiplies both ends by 1000 / T, so any T spans the same
    total noise as T = 1000; diffusers does not rescale. Identical at T = 1000.
    """
    T = _check_T(T)
    scale = 1000.0 / T if rescale else 1.0
    if not 0 < scale * beta_start <= scale * beta_end < 1:
        raise ValueError(
            f"linear betas must satisfy 0 < beta_start <= beta_end and beta_end * {scale:g} < 1"
            f"{' (rescale=True scales by 1000 / T)' if rescale else ''}, got beta_start={beta_start!r}, "
            f"beta_end={beta_end!r}, T={T}"
        )
    return from_betas(np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64))


def scaled_linear(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
    """Square roots of betas evenly spaced (latent diffusion / diffusers' ``scaled_linear``)."""
    T = _check_T(T)
    return from_betas(np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T) ** 2)


def sigmoid(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Betas along a sigmoid over [-6, 6] between beta_start and beta_end (diffusers' ``sigmoid``)."""
    T = _check_T(T)
    s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T)))
    return from_betas(s * (beta_end - beta_start) + beta_start)


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """The cosine schedule of improved DDPM (Nichol & Dhariwal 2021, eq. 17).

    Math: f(u) = cos((u + s) / (1 + s) * pi / 2)^2,  beta_t = min(1 - f((t+1)/T) / f(t/T), max_beta)
    Only the betas near t = T that exceed max_beta are capped, so alpha_bar follows f elsewhere.
    """
    T = _check_T(T)
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
    if not s >= 0:
        raise ValueError(f"s must be >= 0, got {s!r}")
    u = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
    return from_betas(np.minimum(1.0 - f[1:] / f[:-1], max_beta))


SCHEDULES = {"linear": linear, "cosine": cosine, "sigmoid": sigmoid, "scaled_linear": scaled_linear}


def by_name(name: str, T: int) -> Schedule:
    """The schedule called ``name`` (a key of SCHEDULES) with T steps and default parameters."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](T)


def rescale_zero_terminal_snr(schedule: Schedule) -> Schedule:
    """Shift and scale sqrt(alpha_bar) so alpha_bar_{T-1} = 0, keeping alpha_bar_0 (Lin et al. 2024, Alg. 1).

    Math: r_t = (sqrt(alpha_bar_t) - sqrt(alpha_bar_{T-1})) * sqrt(alpha_bar_0)
                / (sqrt(alpha_bar_0) - sqrt(alpha_bar_{T-1})),  alpha_bar'_t = r_t^2
    The last beta becomes 1: pair it with v or x0 prediction, since eps cannot give x0 there.
    """
    if schedule.T < 2:
        raise ValueError(f"schedule must have T >= 2 to rescale to zero terminal SNR, got T={schedule.T}")
    r = schedule.sqrt_alpha_bar
    r0, rT = r[0], r[-1]
    r = (r - rT) * r0 / (r0 - rT)
    return Schedule(from_alpha_bar(r**2).betas, schedule.timestep_map)


def timesteps(T: int, S: int | None = None, spacing: str = "leading") -> np.ndarray:
    """S distinct steps of [0, T) in sampling order (strictly decreasing), as int64.

    spacing (diffusers' names, T = 1000, S = 10):
      "leading"   t_i = i * (T // S)                      [900, 800, ..., 0]
      "trailing"  t_i = round((i + 1) * T / S) - 1        [999, 899, ..., 99]
      "linspace"  t_i = round(i * (T - 1) / (S - 1))      [999, 888, ..., 0]
    or an OpenAI section string: "10,10,3" (that many steps from each of 3 equal sections of [0, T))
    or "ddim50" (the integer stride giving 50 steps); S is then implied and may be left out.
    """
    T = _check_T(T)
    if spacing in SPACINGS:
        S = _check_S(S, T)
        i = np.arange(S)  # ascending; reversed into sampling order below
        if spacing == "leading":
            t = i * (T // S)
        elif spacing == "trailing":
            t = np.round(T * (i + 1) / S) - 1
        else:
            t = np.round(np.linspace(0, T - 1, S))
        return np.ascontiguousarray(t[::-1], dtype=np.int64)
    if isinstance(spacing, str) and (spacing.startswith("ddim") or spacing[:1].isdigit()):
        t = np.array(sorted(_openai_sections(T, spacing), reverse=True), dtype=np.int64)
        if S is not None and S != t.shape[0]:
            raise ValueError(f"S must equal the {t.shape[0]} steps of spacing {spacing!r}, got {S!r}")
        return t
    raise ValueError(
        f"spacing must be one of {', '.join(SPACINGS)} or an OpenAI section string such as "
        f"'10,10,3' or 'ddim50', got {spacing!r}"
    )


def _check_S(S, T: int) -> int:
    if isinstance(S, bool) or not isinstance(S, (int, np.integer)) or not 1 <= S <= T:
        raise ValueError(f"S must be an integer in [1, {T}], got {S!r}")
    return int(S)


def _openai_sections(T: int, sections: str) -> set[int]:
    """The steps kept by improved DDPM's section strings ("10,10,3" or "ddim50")."""
    if sections.startswith("ddim"):
        count = _parse_count(sections[4:], sections)
        for stride in range(1, T):
            if len(range(0, T, stride)) == count:
                return set(range(0, T, stride))
        raise ValueError(f"spacing {sections!r}: no integer stride gives exactly {count} of {T} steps")
    counts = [_parse_count(c, sections) for c in sections.split(",")]
    size, extra = divmod(T, len(counts))
    kept, start = set(), 0
    for k, count in enumerate(counts):
        length = size + (k < extra)  # the first T % len(counts) sections are one step longer
        if not 1 <= count <= length:
            raise ValueError(f"spacing {sections!r}: section {k} has {length} steps, cannot take {count}")
        stride = (length - 1) / (count - 1) if count > 1 else 1.0
        # Positions accumulate the float stride (not k * stride): that is how OpenAI's grids
        # round, and the two differ at ties for many (length, count) pairs.
        positions = itertools.accumulate([0.0] + [stride] * (count - 1))
        kept.update(start + round(p) for p in positions)
        start += length
    return kept


def _parse_count(text: str, sections: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"spacing {sections!r}: {text!r} is not a positive integer step count")
    return int(text)


def respace(schedule: Schedule, steps) -> Schedule:
    """The schedule that visits only ``steps`` of ``schedule`` (improved DDPM, Sec. 4).

    Math: alpha_bar'_k = alpha_bar_{s_k} for the kept steps s_0 < s_1 < ...;
          beta'_k = 1 - alpha_bar'_k / alpha_bar'_{k-1}
    The result's timestep_map holds the original indices (composed with schedule's own map), which
    is what a model trained on the original schedule must be fed.
    """
    s = np.asarray(steps)
    if s.ndim != 1 or s.shape[0] < 1 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"steps must be a non-empty 1-D integer array, got {s!r}")
    s = np.sort(s)
    if s[0] < 0 or s[-1] >= schedule.T or np.any(np.diff(s) == 0):
        raise ValueError(f"steps must be distinct integers in [0, {schedule.T}), got {steps!r}")
    respaced = from_alpha_bar(schedule.alpha_bar[s])
    return Schedule(respaced.betas, schedule.timestep_map[s])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """n noise levels from sigma_max down to sigma_min (Karras et al. 2022, eq. 5).

    Math: sigma_i = (sigma_max^(1/rho) + i / (n - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    Returns (n,) float64, strictly decreasing, sigma_0 = sigma_max and sigma_{n-1} = sigma_min.
    The final sigma = 0 of EDM's sampler is left to the sampler.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min!r}, {sigma_max!r}")
    if not 0 < rho < math.inf:
        raise ValueError(f"rho must be positive and finite, got {rho!r}")
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact ends despite the rho-th root round trip
    return sigmas


def sigma_from_alpha_bar(alpha_bar) -> np.ndarray:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar): x_t / sqrt(alpha_bar) = x0 + sigma * eps."""
    ab = np.asarray(alpha_bar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - ab) / ab)


def alpha_bar_from_sigma(sigma) -> np.ndarray:
    """alpha_bar = 1 / (1 + sigma^2), the inverse of sigma_from_alpha_bar."""
    return 1.0 / (1.0 + np.asarray(sigma, dtype=np.float64) ** 2)
