"""Six samplers at 5 to 100 steps on one 2-D model: how sample quality grows with the number of steps.

Run (from the repository root, after `pip install .`; or prefix PYTHONPATH=. to use the source tree):
    python examples/samplers.py [--out DIR] [--backend numpy] [--seed 0] [--quick]

The model is the exact optimal denoiser of 8 Gaussians on a circle (refdiff.models.gaussian_mixture), so
every error in the samples comes from the sampler's discretization, none from training. Each sampler starts
from the same x_T ~ N(0, I) and runs at each step count in STEPS:

  DDPM         ancestral, fixed-small variance, respaced "trailing" grid      (Ho et al. 2020, Alg. 2)
  DDIM         eta = 0, respaced "trailing" grid                              (Song et al. 2021, eq. 12)
  Euler        probability-flow ODE, Karras sigma grid (rho = 7)              (Karras et al. 2022, Alg. 2)
  Heun         the same with the second-order correction (2 n - 1 model calls for n steps)
  Euler-a      Euler-ancestral on the Karras grid                             (diffusers' EulerAncestral)
  DPM++(2M)    DPM-Solver++(2M), multistep second order, Karras grid          (Lu et al. 2022, Alg. 2)

Writes two PNGs to DIR (default out/samplers) and prints their paths and a table of the sliced
Wasserstein-2 distance (refdiff.metrics.sliced_wasserstein) of each run's samples to held-out data:

- samplers_grid.png: one row per sampler, one column per step count, samples over the data (grey).
- quality_vs_steps.png: sliced Wasserstein-2 against steps (log-log), with the floor: the distance from
  independent data samples of the same size to the held-out data (mean and range over FLOOR_DRAWS draws),
  within which a sampler cannot be told from the data.

--backend array_api_strict runs on a fake non-CPU device; --quick runs 5 and 10 steps on fewer samples (for
tests). Finishes in about 5 s on a laptop CPU.
"""

import time

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, to_numpy
from refdiff.metrics import sliced_wasserstein
from refdiff.plot import curves, scatter_2d
from refdiff.samplers import (ddim_loop, ddpm_loop, dpmpp_2m_loop, euler_ancestral_loop, euler_loop, final,
                              heun_loop, karras_grid, to_sigma_scale)

from _common import argument_parser, backend_and_out, circle_mixture, data_floor

# Settings
T = 1000                        # diffusion steps of the linear schedule (Ho et al. 2020)
COMPONENTS = 8                  # Gaussians, evenly spaced on a circle
RADIUS, STD = 2.0, 0.15         # circle radius and each component's standard deviation
STEPS = (5, 10, 20, 50, 100)    # sampler steps (columns of the grid, x axis of the curve)
N_SAMPLES = 10_000              # samples per run and held-out data points (sliced W noise ~ 1 / sqrt(N))
SHOWN = 1000                    # of them drawn per panel
FLOOR_DRAWS = 8                 # independent data samples whose distances to the held-out data make the floor
DTYPE = "float32"
QUICK = dict(STEPS=(5, 10), N_SAMPLES=500)


def sample(name: str, model, schedule, x_T, steps: int, seed: int):
    """Run sampler ``name`` for ``steps`` steps from x_T (N, 2); returns (samples on the host, model calls)."""
    generator = Generator(seed)                      # the stochastic samplers' step noise
    if name in ("DDPM", "DDIM"):
        respaced = schedules.respace(schedule, schedules.timesteps(T, steps, "trailing"))
        loop = (ddpm_loop(model, respaced, x_T, generator) if name == "DDPM" else ddim_loop(model, respaced, x_T))
        return to_numpy(final(loop)), steps
    # Sigma-space samplers: x = x_T / sqrt(alpha_bar) = x0 + sigma eps, from sigma_max down to 0; the model is
    # fed fractional timesteps between the schedule's steps (continuous_t).
    sigmas = karras_grid(schedule, steps)
    x = to_sigma_scale(x_T, float(sigmas[0]))
    if name == "Euler":
        return to_numpy(final(euler_loop(model.continuous_t, schedule, x, sigmas))), steps
    if name == "Heun":
        return to_numpy(final(heun_loop(model.continuous_t, schedule, x, sigmas))), 2 * steps - 1
    if name == "Euler-a":
        return to_numpy(final(euler_ancestral_loop(model.continuous_t, schedule, x, sigmas, generator))), steps
    return to_numpy(final(dpmpp_2m_loop(model.continuous_t, schedule, x, sigmas))), steps


SAMPLERS = ("DDPM", "DDIM", "Euler", "Heun", "Euler-a", "DPM++(2M)")


def print_table(sw: dict, calls: dict, steps, floor) -> None:
    """sw[name][steps] as a table, model calls in brackets where they differ from the steps."""
    print(f"sliced Wasserstein-2 to held-out data; floor (data vs data, {FLOOR_DRAWS} draws): "
          f"{floor[0]:.4f} (range {floor[1]:.4f}-{floor[2]:.4f})")
    print(f"{'sampler':10s}" + "".join(f"{s:>14d}" for s in steps) + "   (steps)")
    for name in sw:
        cells = [f"{sw[name][s]:.4f}" + (f" [{calls[name][s]}]" if calls[name][s] != s else "") for s in steps]
        print(f"{name:10s}" + "".join(f"{c:>14s}" for c in cells))
    print("[n]: model calls, where they differ from the steps (Heun: 2 per step, 1 on the last)")


def main():
    args = argument_parser(__doc__, "out/samplers", "seed of the start noise, the sampler noise and the data",
                           QUICK).parse_args()
    steps_list, n = (QUICK["STEPS"], QUICK["N_SAMPLES"]) if args.quick else (STEPS, N_SAMPLES)
    backend, out = backend_and_out(args)
    started = time.perf_counter()

    # 1. The model and held-out data; the floor is the distance of independent data samples to the held-out data.
    schedule = schedules.linear(T)
    model = circle_mixture(schedule, COMPONENTS, RADIUS, STD)
    data = model.sample(n, seed=args.seed + 1)
    floor = data_floor(model, data, n, seed=args.seed + 100, draws=FLOOR_DRAWS)

    # 2. One start point x_T ~ N(0, I) for every run.
    x_T = Generator(args.seed).normal((n, 2), like=backend.asarray(np.zeros(1), dtype=backend.dtype(DTYPE)))

    # 3. Every sampler at every step count.
    samples, sw, calls = {}, {}, {}
    for name in SAMPLERS:
        sw[name], calls[name] = {}, {}
        for steps in steps_list:
            x0, calls[name][steps] = sample(name, model, schedule, x_T, steps, args.seed + 2)
            samples[name, steps] = x0
            sw[name][steps] = sliced_wasserstein(x0, data)
    print_table(sw, calls, steps_list, floor)

    # 4. Figures: the grid of samples, and quality against steps.
    panels = {f"{name}, {steps} steps\nSW2 = {sw[name][steps]:.3f}": samples[name, steps][:SHOWN]
              for name in SAMPLERS for steps in steps_list}
    series = {(name + " (2n - 1 calls)" if name == "Heun" else name):
              (np.array(steps_list), np.array([sw[name][s] for s in steps_list])) for name in SAMPLERS}
    paths = [
        scatter_2d(panels, out / "samplers_grid.png", reference=data[:SHOWN], ncols=len(steps_list),
                   title=f"8 Gaussians, exact denoiser: each sampler (rows) at {', '.join(map(str, steps_list))} steps "
                         f"(columns).\nGrey: held-out data. SW2: sliced Wasserstein-2 to it "
                         f"(floor, data vs data: {floor[0]:.3f}, range {floor[1]:.3f}-{floor[2]:.3f})"),
        curves(series, out / "quality_vs_steps.png", xlabel="sampler steps n", logx=True, logy=True,
               ylabel="sliced Wasserstein-2 to held-out data",
               hlines={f"floor: data vs data (mean of {FLOOR_DRAWS})": floor[0]},
               hbands={"floor: its range": floor[1:]},
               title=f"Quality against steps, exact denoiser, N = {n}"),
    ]
    for path in paths:
        print(path)
    print(f"done in {time.perf_counter() - started:.1f} s on {args.backend}")


if __name__ == "__main__":
    main()
