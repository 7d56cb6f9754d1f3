"""The forward chain q(x_t | x0) on real digits, under the linear and the cosine schedules.

Run (from the repository root, after `pip install .`; or prefix PYTHONPATH=. to use the source tree):
    python examples/forward_chain.py [--out DIR] [--backend numpy] [--seed 0]

Writes two PNGs to DIR (default out/forward_chain) and prints their paths:

- forward_chain.png: four 8x8 digits noised in closed form,
  x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps    (Ho et al. 2020, eq. 4),
  at the steps in T_COLUMNS, with the SAME eps under both schedules, so every difference between
  the two groups of rows comes from alpha_bar alone. The linear schedule (Ho et al. 2020) wipes the
  digit out by t ~ 400; the cosine schedule (Nichol & Dhariwal 2021, eq. 17) keeps it visible for
  longer and destroys it more evenly over the chain.
- schedules.png: alpha_bar_t and log10 SNR_t = log10(alpha_bar_t / (1 - alpha_bar_t)) against t / T
  for every schedule in refdiff.schedules.SCHEDULES and for the linear one rescaled to zero terminal
  SNR (Lin et al. 2024), whose last step has SNR = 0 (log10 SNR = -inf, left off the plot).

Index convention (OpenAI's, see refdiff.schedules): t = 0 is already one step of noise (beta_0 = 1e-4
for linear), so the figure shows the clean x0 in its own first column.
--backend array_api_strict runs the same arrays on a fake non-CPU device, which catches any mixing
of host and device arrays; --backend cupy runs on a GPU. Finishes in a few seconds on a CPU.
"""

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from refdiff import schedules  # noqa: E402
from refdiff.backend import Generator, to_numpy  # noqa: E402
from refdiff.data.digits import load_digits  # noqa: E402
from refdiff.diffusion import q_sample  # noqa: E402

from _common import argument_parser, backend_and_out  # noqa: E402

# Settings
T = 1000
DIGITS = (0, 3, 5, 7)                              # one example of each of these classes
T_COLUMNS = (0, 50, 100, 200, 400, 600, 800, 999)  # steps shown, left to right
CHAIN_SCHEDULES = ("linear", "cosine")             # row groups of forward_chain.png


def pick_digits(backend):
    """The first digit of each class in DIGITS as x0: (N, 1, 8, 8) float32 on ``backend``."""
    images, labels = load_digits(np.float32)                          # (1797, 1, 8, 8) in [-1, 1]
    index = [int(np.flatnonzero(labels == d)[0]) for d in DIGITS]
    return backend.asarray(images[index])                             # (N, 1, 8, 8)


def noise_chain(schedule, x0, eps, backend):
    """x_t = q_sample(x0, t, eps) for each t in T_COLUMNS, on the host: (len(T_COLUMNS), N, 8, 8)."""
    n = x0.shape[0]
    chain = []
    for t in T_COLUMNS:
        t_batch = backend.asarray(np.full(n, t), dtype=backend.dtype("int64"))   # (N,)
        xt = q_sample(schedule, x0, t_batch, eps)                                 # eq. 4, (N, 1, 8, 8)
        chain.append(to_numpy(xt)[:, 0])                                          # (N, 8, 8)
    return np.stack(chain)


def show(ax, image):
    """One 8x8 panel: grey, nearest pixels, [-1, 1] mapped to black..white (clipped for display)."""
    ax.imshow(np.clip(image, -1.0, 1.0), cmap="gray", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_chain(x0, chains, path):
    """forward_chain.png: one block of rows per schedule, a row per digit, columns = x0 then t."""
    n, cols = x0.shape[0], 1 + len(T_COLUMNS)
    fig = plt.figure(figsize=(1.1 * cols + 1.0, (1.1 * n + 0.7) * len(chains) + 0.4), layout="constrained")
    fig.suptitle(f"Forward chain x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, T = {T}, "
                 "the same eps under both schedules", fontsize=10)
    for sub, (name, (schedule, chain)) in zip(fig.subfigures(len(chains), 1), chains.items()):
        sub.suptitle(f"{name} schedule", fontsize=10, fontweight="bold")
        axes = sub.subplots(n, cols, squeeze=False)
        for i in range(n):
            show(axes[i, 0], x0[i, 0])
            for j in range(len(T_COLUMNS)):
                show(axes[i, 1 + j], chain[j, i])
            axes[i, 0].set_ylabel(f"{name}\ndigit {DIGITS[i]}", fontsize=9)
        axes[0, 0].set_title("x0 (data)", fontsize=9)
        for j, t in enumerate(T_COLUMNS):
            axes[0, 1 + j].set_title(f"t = {t}\nalpha_bar = {schedule.alpha_bar[t]:.2g}", fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def schedule_curves():
    """{label: (t / T, alpha_bar, log10 SNR)} for every schedule, float64 host arrays of shape (T,)."""
    named = {name: schedules.by_name(name, T) for name in schedules.SCHEDULES}
    named["linear, zero terminal SNR"] = schedules.rescale_zero_terminal_snr(named["linear"])
    u = np.arange(T) / T
    curves = {}
    for label, schedule in named.items():
        with np.errstate(divide="ignore"):  # SNR = 0 at the last step of the zero-terminal schedule
            log_snr = np.log10(schedule.snr)
        curves[label] = (u, schedule.alpha_bar, np.where(np.isfinite(log_snr), log_snr, np.nan))
    return curves


def plot_schedules(path):
    """schedules.png: alpha_bar_t and log10 SNR_t against t / T, one line per schedule."""
    fig, (ax_ab, ax_snr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, (u, alpha_bar, log_snr) in schedule_curves().items():
        # The zero-terminal curve lies on linear's until the last steps: draw it dashed over a wide line.
        style = {"linear": dict(lw=3.0), "linear, zero terminal SNR": dict(ls="--", lw=1.5)}.get(label, dict(lw=1.8))
        ax_ab.plot(u, alpha_bar, label=label, **style)
        ax_snr.plot(u, log_snr, label=label, **style)
    ax_ab.set(xlabel="t / T", ylabel="alpha_bar_t", title="Signal kept: alpha_bar_t")
    ax_snr.set(xlabel="t / T", ylabel="log10 SNR_t",
               title="log10 SNR_t = log10(alpha_bar_t / (1 - alpha_bar_t))")
    ax_snr.annotate("zero terminal SNR:\nlog10 SNR = -inf at t = T-1\n(not drawn)", xy=(0.98, 0.97),
                    xycoords="axes fraction", ha="right", va="top", fontsize=8)
    for ax in (ax_ab, ax_snr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    args = argument_parser(__doc__, "out/forward_chain", "seed of the noise eps").parse_args()
    backend, out = backend_and_out(args)

    # 1. Data: one digit per class in DIGITS, in [-1, 1], on the chosen backend.
    x0 = pick_digits(backend)                                      # (N, 1, 8, 8)

    # 2. One eps for every schedule, drawn on the host and moved to x0's device (docs/design.md rule 4).
    eps = Generator(args.seed).normal(x0.shape, like=x0)           # (N, 1, 8, 8)

    # 3. Noise x0 to every t in T_COLUMNS under each schedule; bring results to the host to plot.
    chains = {}
    for name in CHAIN_SCHEDULES:
        schedule = schedules.by_name(name, T)
        chains[name] = (schedule, noise_chain(schedule, x0, eps, backend))  # (len(T_COLUMNS), N, 8, 8)

    # 4. Figures.
    chain_path, schedules_path = out / "forward_chain.png", out / "schedules.png"
    plot_chain(to_numpy(x0), chains, chain_path)
    plot_schedules(schedules_path)
    print(chain_path)
    print(schedules_path)


if __name__ == "__main__":
    main()
