"""DDPM and DDIM on a 2-D mixture of 8 Gaussians, with its exact optimal denoiser (no training).

Run (from the repository root, after `pip install .`; or prefix PYTHONPATH=. to use the source tree):
    python examples/toy2d.py [--out DIR] [--backend numpy] [--seed 0] [--quick]

The data are 8 Gaussians on a circle (RADIUS, STD below). Its MSE-optimal eps-prediction is known in closed
form (refdiff.models.gaussian_mixture), so the samplers run on the model a perfectly trained network would be,
and every difference from the data comes from the sampler. Writes three PNGs to DIR (default out/toy2d) and
prints their paths:

- trajectories_ddpm.png: 20 particles from x_T ~ N(0, I) to x_0 under ancestral DDPM (Ho et al. 2020, Alg. 2)
  on the full chain of T steps: noisy paths, since every step adds fresh noise.
- trajectories_ddim.png: 200 particles from the same start points under deterministic DDIM (eta = 0, Song et
  al. 2021, eq. 12) with DDIM_STEPS strided steps: smooth paths of the probability-flow ODE, each ending at a
  component.
- samples.png: 2000 final samples of each sampler over held-out data (grey).

It also prints the sliced Wasserstein-2 distance of each sampler's output to held-out data next to the
distance between two independent data samples of the same size (the floor that finite samples set).
--backend array_api_strict runs on a fake non-CPU device; --quick uses fewer samples and steps (for tests).
Finishes in a few seconds on a laptop CPU.
"""

import time

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, to_numpy
from refdiff.metrics import sliced_wasserstein
from refdiff.plot import scatter_2d, trajectories_2d
from refdiff.samplers import ddim_loop, ddpm_loop

from _common import argument_parser, backend_and_out, circle_mixture, data_floor

# Settings
T = 1000                   # diffusion steps of the linear schedule (Ho et al. 2020)
COMPONENTS = 8             # Gaussians, evenly spaced on a circle
RADIUS, STD = 2.0, 0.15    # circle radius and each component's standard deviation
N_SAMPLES = 10_000         # samples per sampler and held-out data points (sliced W's sampling noise ~ 1/sqrt(N))
SHOWN = 2000               # of them drawn in the figures
FLOOR_DRAWS = 8            # independent data samples whose distances to the held-out data make the floor
DDIM_STEPS = 50            # strided DDIM steps ("trailing" spacing); DDPM runs all T steps
PATHS = {"ddpm": 20, "ddim": 200}   # trajectories drawn (DDPM's noisy paths tangle: fewer of them)
DTYPE = "float32"
QUICK = dict(N_SAMPLES=500, DDIM_STEPS=10, DDPM_STEPS=100)   # --quick: DDPM on a respaced 100-step chain


def run_chain(loop, x_T, keep: int, every: int = 1):
    """Run a sampling loop; return the final sample (host) and the first ``keep`` particles at x_T, at every
    ``every``-th step and at the last step: a list of host (keep, 2) arrays."""
    path = [to_numpy(x_T[:keep, ...])]
    for i, step in enumerate(loop, start=1):
        if i % every == 0:
            path.append(to_numpy(step.x[:keep, ...]))                       # (keep, 2)
    if i % every:
        path.append(to_numpy(step.x[:keep, ...]))
    return to_numpy(step.x), path


def main():
    args = argument_parser(__doc__, "out/toy2d", "seed of the start noise, the sampler noise and the data",
                           QUICK).parse_args()
    n, ddim_steps, ddpm_steps = N_SAMPLES, DDIM_STEPS, T
    if args.quick:
        n, ddim_steps, ddpm_steps = QUICK["N_SAMPLES"], QUICK["DDIM_STEPS"], QUICK["DDPM_STEPS"]
    backend, out = backend_and_out(args)
    started = time.perf_counter()

    # 1. The model: the exact eps-prediction of the mixture under the linear schedule.
    schedule = schedules.linear(T)
    model = circle_mixture(schedule, COMPONENTS, RADIUS, STD)

    # 2. One start point x_T ~ N(0, I) for both samplers (drawn on the host, moved to the backend).
    generator = Generator(args.seed)
    x_T = generator.normal((n, 2), like=backend.asarray(np.zeros(1), dtype=backend.dtype(DTYPE)))

    # 3. DDPM: ancestral sampling (fixed-small variance) on the full chain, or a respaced one with --quick.
    #    Its path is kept every few steps (about 100 points per particle) to keep the drawn lines legible.
    ddpm_schedule = schedules.respace(schedule, schedules.timesteps(T, ddpm_steps, "trailing"))
    ddpm, ddpm_path = run_chain(ddpm_loop(model, ddpm_schedule, x_T, generator), x_T, PATHS["ddpm"],
                                every=max(1, ddpm_steps // 100))

    # 4. DDIM with eta = 0 on ddim_steps strided steps: deterministic, the probability-flow ODE's discretization.
    ddim_schedule = schedules.respace(schedule, schedules.timesteps(T, ddim_steps, "trailing"))
    ddim, ddim_path = run_chain(ddim_loop(model, ddim_schedule, x_T), x_T, PATHS["ddim"])

    # 5. Distances to held-out data, and the floor: independent data samples of the same size.
    data = model.sample(n, seed=args.seed + 1)
    floor = data_floor(model, data, n, seed=args.seed + 100, draws=FLOOR_DRAWS)
    sw = {"DDPM": sliced_wasserstein(ddpm, data), "DDIM": sliced_wasserstein(ddim, data)}
    print(f"sliced Wasserstein-2 to held-out data ({n} points each, 128 directions):")
    print(f"  data vs data (floor)  {floor[0]:.4f}  (mean of {FLOOR_DRAWS} draws, range {floor[1]:.4f}-{floor[2]:.4f})")
    print(f"  DDPM, {ddpm_steps:4d} steps      {sw['DDPM']:.4f}")
    print(f"  DDIM, {ddim_steps:4d} steps      {sw['DDIM']:.4f}")

    # 6. Figures.
    paths = [
        trajectories_2d(ddpm_path, out / "trajectories_ddpm.png", reference=data[:SHOWN], max_paths=PATHS["ddpm"],
                        title=f"DDPM (ancestral), {ddpm_steps} steps: {PATHS['ddpm']} particles, x_T ~ N(0, I) to x_0"),
        trajectories_2d(ddim_path, out / "trajectories_ddim.png", reference=data[:SHOWN], max_paths=PATHS["ddim"],
                        title=f"DDIM (eta = 0), {ddim_steps} steps: {PATHS['ddim']} particles, x_T ~ N(0, I) to x_0"),
        scatter_2d({f"another data sample\nSW2 to data = {floor[0]:.3f} (mean; the floor)":
                        model.sample(SHOWN, seed=args.seed + 100),
                    f"DDPM, {ddpm_steps} steps\nSW2 to data = {sw['DDPM']:.3f}": ddpm[:SHOWN],
                    f"DDIM (eta = 0), {ddim_steps} steps\nSW2 to data = {sw['DDIM']:.3f}": ddim[:SHOWN]},
                   out / "samples.png", reference=data[:SHOWN],
                   title="8 Gaussians sampled with the exact denoiser (grey: held-out data)"),
    ]
    for path in paths:
        print(path)
    print(f"done in {time.perf_counter() - started:.1f} s on {args.backend}")


if __name__ == "__main__":
    main()
