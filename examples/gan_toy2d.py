"""A GAN on a 2-D toy (8 Gaussians on a circle): which modes its samples cover, and where they land against the data.

    python examples/gan_toy2d.py --out out/gan_toy2d     # about a minute on a 2-core CPU
    python examples/gan_toy2d.py --loss hinge            # the hinge loss instead of the non-saturating one
    python examples/gan_toy2d.py --quick                 # a few seconds (the test's settings)

1. train the toy2d_gan preset (unconditional MLPs) on N_TRAIN points of load_toy2d("8gaussians") for SECONDS;
2. N_SAMPLES samples: the modes they cover and their quality, as Srivastava et al. 2017 (VEEGAN) count them: a
   sample is of high quality when it lies within 3 standard deviations (0.3) of a mode's centre, and a mode is
   covered when at least COVERED of the samples are such samples of it (an even spread puts 1/8 there);
3. the sliced Wasserstein-2 distance to held-out data, next to that of an independent data sample (the floor);
4. a PNG of the samples over the data, and one of the loss curves.
"""

import numpy as np
from _common import argument_parser, backend_and_out

from refdiff.data import load_toy2d
from refdiff.data.toy2d import DEFAULT_NOISE, GAUSSIAN_CENTRES
from refdiff.gan_train import GANTrainConfig, gan_samples, train_gan
from refdiff.metrics import sliced_wasserstein
from refdiff.models.gan import LOSSES
from refdiff.models.presets import toy2d_gan
from refdiff.plot import curves, scatter_2d

SECONDS = 45.0       # training budget (wall clock)
STEPS = 100_000      # an upper bound: the budget stops training
BATCH_SIZE = 256
LR = 1e-3            # both players; DCGAN's 2e-4 moves the MLPs too little in the budget
N_TRAIN, N_SAMPLES = 20_000, 2000
COVERED = 0.02       # a mode is covered by at least this fraction of the samples
SMOOTH = 100         # steps per point of the loss curves
QUICK = {"SECONDS": 2.0, "N_SAMPLES": 300}


def mode_coverage(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(per mode the fraction of the samples within 3 std of its centre (8,), the fraction of high-quality samples
    in all). points: (N, 2)."""
    d2 = np.sum((points[:, None, :] - GAUSSIAN_CENTRES[None, :, :]) ** 2, axis=2)  # (N, 8)
    near = d2 <= (3 * DEFAULT_NOISE["8gaussians"]) ** 2                            # (N, 8): modes are 1.08 apart
    return near.mean(axis=0), float(near.any(axis=1).mean())


def main():
    parser = argument_parser(__doc__, "out/gan_toy2d", "seeds the data, training and the samples", QUICK)
    parser.add_argument("--loss", default="non_saturating", choices=LOSSES, help="the GAN loss")
    args = parser.parse_args()
    backend, out = backend_and_out(args)
    seconds, n = (QUICK["SECONDS"], QUICK["N_SAMPLES"]) if args.quick else (SECONDS, N_SAMPLES)
    x_train, _ = load_toy2d("8gaussians", N_TRAIN, seed=args.seed)
    held_out, _ = load_toy2d("8gaussians", n, seed=args.seed + 1)

    # 1. train for a wall-clock budget
    train_cfg = GANTrainConfig(steps=STEPS, batch_size=BATCH_SIZE, lr_g=LR, lr_d=LR, loss=args.loss,
                               max_seconds=seconds, seed=args.seed, backend=backend.name)
    trained = train_gan(train_cfg, toy2d_gan(), x_train)
    print(f"trained {trained.info['steps_done']} steps in {trained.info['train_seconds']:.1f} s ({args.loss})")

    # 2. modes covered and sample quality
    points = gan_samples(trained, n, seed=args.seed + 2)
    per_mode, quality = mode_coverage(points)
    print(f"modes covered (>= {COVERED:.0%} of the samples within 3 std): {int(np.sum(per_mode >= COVERED))} of 8; "
          f"high-quality samples {quality:.1%}")
    print("samples per mode: " + ", ".join(f"{f:.1%}" for f in per_mode))
    data_per_mode, data_quality = mode_coverage(held_out)
    print(f"held-out data: {int(np.sum(data_per_mode >= COVERED))} of 8 modes, high-quality {data_quality:.1%}")

    # 3. distance to held-out data
    floor = sliced_wasserstein(load_toy2d("8gaussians", n, seed=args.seed + 4)[0], held_out)
    print(f"sliced W2 to held-out data: {sliced_wasserstein(points, held_out):.4f} (floor {floor:.4f})")

    # 4. the figures
    print(scatter_2d({f"GAN samples ({args.loss})": points}, out / "gan_toy2d.png", reference=held_out,
                     title="GAN on 8 Gaussians"))
    m = len(trained.g_losses) // SMOOTH * SMOOTH
    if m:
        steps = np.arange(m // SMOOTH) * SMOOTH + SMOOTH
        mean = lambda a: np.mean(np.reshape(a[:m], (m // SMOOTH, SMOOTH)), axis=1)  # noqa: E731 (steps,)
        print(curves({"L_D": (steps, mean(trained.d_losses)), "L_G": (steps, mean(trained.g_losses))},
                     out / "gan_toy2d_losses.png", xlabel="step", ylabel=f"loss (mean of {SMOOTH} steps)",
                     title=f"GAN losses on 8 Gaussians ({args.loss})"))


if __name__ == "__main__":
    main()
