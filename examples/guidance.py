"""Classifier-free guidance and classifier guidance on a class-conditional 2-D mixture, with exact models.

Run (from the repository root, after `pip install .`; or prefix PYTHONPATH=. to use the source tree):
    python examples/guidance.py [--out DIR] [--backend numpy] [--seed 0] [--quick]

The data: three overlapping Gaussians, one per class (CLASSES below). Its exact optimal denoiser
(refdiff.models.gaussian_mixture) is conditional for a label y < 3 and unconditional for the null label 3, and
its exact classifier gradient grad_x log p(y | x_t) = score(x_t | y) - score(x_t) is known in closed form, so
both kinds of guidance run without training. Every run targets class TARGET with DDPM (Ho et al. 2020, Alg. 2)
from the same x_T:

- classifier-free guidance (Ho & Salimans 2022; GLIDE): eps = eps_uncond + s (eps_cond - eps_uncond) at
  s = 0 (the unconditional model), 1 (the conditional model) and 3 (beyond it: p(x_t | y) p(y | x_t)^2);
- classifier guidance (Dhariwal & Nichol 2021, Alg. 1): the unconditional model's DDPM mean shifted by
  variance * s * grad_x log p(y | x_t), at s = 1 (the conditional distribution again, up to discretization)
  and s = 3.

Writes guidance.png to DIR (default out/guidance), one panel per run over all the data (grey), and prints its
path and, per run, the mean exact p(y = TARGET | x) of the samples, the fraction assigned to TARGET, and the
sliced Wasserstein-2 distance to class-TARGET data (the target of s = 1). Guidance scales above 1 buy a
sharper class at the price of diversity: the samples crowd into the part of the class far from the others.
--backend array_api_strict runs on a fake non-CPU device; --quick uses fewer samples and steps (for tests).
Finishes in under 10 s on a laptop CPU.
"""

import time

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, to_numpy
from refdiff.metrics import sliced_wasserstein
from refdiff.models.gaussian_mixture import GaussianMixtureDenoiser
from refdiff.plot import scatter_2d
from refdiff.samplers import classifier_free_guidance, classifier_guidance, ddpm_loop, final

from _common import argument_parser, backend_and_out

# Settings
T = 1000                                   # diffusion steps of the linear schedule
CLASSES = dict(weights=[1 / 3, 1 / 3, 1 / 3],            # one Gaussian per class: labels 0, 1, 2
               means=[[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]],
               stds=[[0.6, 0.6], [0.6, 0.6], [0.6, 0.6]])
NULL = 3                                   # the null label: the unconditional mixture
TARGET = 0                                 # the class every run asks for
CFG_SCALES = (0.0, 1.0, 3.0)
CLASSIFIER_SCALES = (1.0, 3.0)
STEPS = 1000                               # DDPM steps (respaced "trailing" grid when < T)
N_SAMPLES = 4000
DTYPE = "float32"
QUICK = dict(STEPS=50, N_SAMPLES=500)


def unconditional(model):
    """The model with its label ignored: what classifier guidance steers (the classifier brings the label)."""
    return lambda xt, t, y=None: model(xt, t, None)


def posterior_of_target(model, x0: np.ndarray) -> np.ndarray:
    """(N,) exact p(y = TARGET | x0) of host samples x0 (N, 2): the responsibilities at alpha_bar = 1 (no noise)."""
    return model.responsibilities(x0, np.ones((x0.shape[0], 1)))[:, TARGET]


def main():
    args = argument_parser(__doc__, "out/guidance", "seed of the start noise, the sampler noise and the data",
                           QUICK).parse_args()
    steps, n = (QUICK["STEPS"], QUICK["N_SAMPLES"]) if args.quick else (STEPS, N_SAMPLES)
    backend, out = backend_and_out(args)
    started = time.perf_counter()

    # 1. The exact conditional eps-model (labels 0..2; NULL = 3 is the unconditional mixture) and its data.
    schedule = schedules.linear(T)
    model = GaussianMixtureDenoiser(schedule, **CLASSES)
    respaced = schedules.respace(schedule, schedules.timesteps(T, steps, "trailing"))
    data, target_data = model.sample(n, seed=args.seed + 1), model.sample(n, seed=args.seed + 2, y=TARGET)

    # 2. One start point and one label array (all TARGET) for every run, on the backend.
    like = backend.asarray(np.zeros(1), dtype=backend.dtype(DTYPE))
    x_T = Generator(args.seed).normal((n, 2), like=like)
    y = backend.asarray(np.full(n, TARGET), dtype=backend.dtype("int64"))

    # 3. Classifier-free guidance: a guided model, sampled as any model.
    runs = {}
    for s in CFG_SCALES:
        guided = classifier_free_guidance(model, s, null_label=NULL)
        runs[f"classifier-free, s = {s:g}"] = final(ddpm_loop(guided, respaced, x_T, Generator(args.seed + 3), y=y))

    # 4. Classifier guidance: the unconditional model, and cond_fn = s * grad_x log p(y | x_t) of the exact classifier.
    for s in CLASSIFIER_SCALES:
        cond_fn = classifier_guidance(model.classifier_grad, s)
        runs[f"classifier guidance, s = {s:g}"] = final(ddpm_loop(unconditional(model), respaced, x_T,
                                                                  Generator(args.seed + 3), y=y, cond_fn=cond_fn))

    # 5. Numbers: how much each run looks like the target class, and how far it is from the class's data.
    floor = sliced_wasserstein(model.sample(n, seed=args.seed + 4, y=TARGET), target_data)
    print(f"DDPM, {steps} steps, {n} samples, target class {TARGET}. Exact p(y = {TARGET} | x) of the samples, "
          f"fraction with p > 1/2, sliced W2 to class-{TARGET} data (floor {floor:.3f}):")
    panels = {f"data of class {TARGET} (target of s = 1)\np = {posterior_of_target(model, target_data).mean():.2f}":
              target_data}
    for name, x in runs.items():
        x = to_numpy(x)
        p = posterior_of_target(model, x)
        sw = sliced_wasserstein(x, target_data)
        print(f"  {name:28s} mean p = {p.mean():.3f}   p > 1/2: {np.mean(p > 0.5):.3f}   SW2 = {sw:.3f}")
        panels[f"{name}\np = {p.mean():.2f}, SW2 = {sw:.2f}"] = x

    # 6. The figure: top row classifier-free guidance, bottom row the class's data and classifier guidance.
    order = [1, 2, 3, 0, 4, 5]                                          # panels as listed above -> grid order
    keys = list(panels)
    title = (f"Guidance towards class {TARGET} (centre {tuple(CLASSES['means'][TARGET])}) of 3 Gaussians, exact "
             f"models, DDPM {steps} steps\np: mean exact p(y = {TARGET} | x) of the samples\n"
             f"SW2: sliced Wasserstein-2 to class-{TARGET} data (floor {floor:.2f})")
    path = scatter_2d({keys[i]: panels[keys[i]] for i in order}, out / "guidance.png", reference=data, ncols=3,
                      reference_label="data, all classes", title=title)
    print(path)
    print(f"done in {time.perf_counter() - started:.1f} s on {args.backend}")


if __name__ == "__main__":
    main()
