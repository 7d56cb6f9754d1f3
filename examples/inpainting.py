"""Inpainting (replacement and RePaint) and SDEdit on real digits, with the exact denoiser of the training set.

Run (from the repository root, after `pip install .`; or prefix PYTHONPATH=. to use the source tree):
    python examples/inpainting.py [--out DIR] [--backend numpy] [--seed 0] [--mask bottom|left] [--quick]

No network is trained. The model is the exact optimal denoiser of the EMPIRICAL distribution of the training
digits blurred by BLUR (``GaussianMixtureDenoiser.from_data``: one Gaussian per training digit): what a network
trained to convergence on these 1500 digits would approach. It memorizes: its samples are training digits, so
inpainting here completes a held-out digit with the training digits that agree with its known half.
Writes two PNGs to DIR (default out/inpainting) and prints their paths:

- inpainting.png: one held-out digit of each class per column; rows: the masked input (red = unknown), the
  completion by plain replacement (the known region replaced by its forward-noised version at every step;
  Song et al. 2021, App. I.2), the completion by RePaint's resampling (Lugmayr et al. 2022, Alg. 1: every
  JUMP steps the chain goes back up JUMP levels, RESAMPLE times, which lets the unknown region adapt to the
  known one), and the original. The known pixels equal the original exactly in both completions.
- sdedit.png: SDEdit (Meng et al. 2022): a coarse 4x4 version of each digit is noised to level strength * T and
  denoised back with DDIM; rows: original, coarse input, SDEdit at each strength in SDEDIT_STRENGTHS.
  Low strength keeps the input's layout; higher strength gives a cleaner digit further from the input.

It also prints, on the unknown pixels, each completion's mean squared error to the original and its RMS distance
to the nearest training digit (about BLUR: a memorized training digit; the held-out originals are much further),
and the same distances for the SDEdit outputs.
--backend array_api_strict runs on a fake non-CPU device; --quick uses fewer digits and steps (for tests).
Finishes in a few seconds on a laptop CPU.
"""

import time

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, to_numpy
from refdiff.data import load_digits
from refdiff.models.gaussian_mixture import GaussianMixtureDenoiser
from refdiff.plot import image_grid
from refdiff.samplers import final, inpaint_loop, sdedit_loop

from _common import argument_parser, backend_and_out

# Settings
T = 1000                        # diffusion steps of the linear schedule the denoiser is defined on
STEPS = 250                     # sampling steps (respaced "trailing" grid)
N_TRAIN = 1500                  # the first N_TRAIN digits are the training set, the rest are held out
BLUR = 0.05                     # std of each training digit's Gaussian (pixel values lie in [-1, 1])
CLASSES = tuple(range(10))      # one held-out digit of each class, a column each
JUMP, RESAMPLE = 10, 10         # RePaint's jump length j and resample count r (the paper's values)
SDEDIT_STRENGTHS = (0.3, 0.6)
DTYPE = "float32"
QUICK = dict(STEPS=50, CLASSES=(0, 1, 2, 3), JUMP=5, RESAMPLE=3)
UNKNOWN_RGB = (0.8, -0.8, -0.8)  # the unknown region of the masked input, in [-1, 1] RGB: red


def parse_args():
    parser = argument_parser(__doc__, "out/inpainting", "seed of the sampler noise", QUICK)
    parser.add_argument("--mask", default="bottom", choices=("bottom", "left"), help="the half to inpaint")
    return parser.parse_args()


def split_digits(classes):
    """Training digits (N_TRAIN, 1, 8, 8) and the first held-out digit of each class: (len(classes), 1, 8, 8)."""
    images, labels = load_digits(np.float32)                          # (1797, 1, 8, 8) in [-1, 1]
    held_images, held_labels = images[N_TRAIN:], labels[N_TRAIN:]
    index = [int(np.flatnonzero(held_labels == c)[0]) for c in classes]
    return images[:N_TRAIN], held_images[index]


def known_mask(half: str) -> np.ndarray:
    """(1, 1, 8, 8) float 0/1 mask, 1 = known: the top half known (``bottom`` masked) or the right half."""
    mask = np.ones((1, 1, 8, 8), dtype=np.float32)
    if half == "bottom":
        mask[..., 4:, :] = 0.0
    else:
        mask[..., :, :4] = 0.0
    return mask


def coarse(x: np.ndarray) -> np.ndarray:
    """The 4x4 block means of 8x8 images, shown at 8x8: (N, 1, 8, 8) -> (N, 1, 8, 8)."""
    blocks = x.reshape(x.shape[0], 1, 4, 2, 4, 2).mean(axis=(3, 5))    # (N, 1, 4, 4)
    return np.repeat(np.repeat(blocks, 2, axis=2), 2, axis=3)


def rgb(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Grey images (N, 1, H, W) as RGB (N, 3, H, W); where mask = 0, the UNKNOWN_RGB colour."""
    out = np.repeat(x, 3, axis=1)
    if mask is not None:
        unknown = np.broadcast_to(mask == 0, x.shape)[:, 0]             # (N, H, W)
        for c, value in enumerate(UNKNOWN_RGB):
            out[:, c][unknown] = value
    return out


def nearest_distance(x: np.ndarray, train: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """(N,) root-mean-square pixel distance from each image to its nearest training image, over the pixels
    where ``where`` (a (1, 8, 8) bool mask) is True, or all of them."""
    pick = np.ones(x.shape[1:], dtype=bool) if where is None else np.broadcast_to(where, x.shape[1:])
    d2 = ((x[:, None, pick] - train[None, :, pick]) ** 2).mean(axis=2)    # (N, N_TRAIN)
    return np.sqrt(d2.min(axis=1))


def main():
    args = parse_args()
    steps, classes, jump, resample = STEPS, CLASSES, JUMP, RESAMPLE
    if args.quick:
        steps, classes, jump, resample = QUICK["STEPS"], QUICK["CLASSES"], QUICK["JUMP"], QUICK["RESAMPLE"]
    backend, out = backend_and_out(args)
    started = time.perf_counter()

    # 1. Data and the model: the exact denoiser of the blurred training set, on a respaced sampling grid.
    train, held = split_digits(classes)
    schedule = schedules.linear(T)
    model = GaussianMixtureDenoiser.from_data(train, BLUR, schedule)
    respaced = schedules.respace(schedule, schedules.timesteps(T, steps, "trailing"))
    dtype = backend.dtype(DTYPE)
    known, mask = backend.asarray(held, dtype=dtype), backend.asarray(known_mask(args.mask), dtype=dtype)

    # 2. Inpainting: plain replacement (j = r = 1) and RePaint's resampling, from the same x_T.
    x_T = Generator(args.seed).normal(known.shape, like=known)
    completions = {}
    for name, (j, r) in {"replacement": (1, 1), f"RePaint (j = {jump}, r = {resample})": (jump, resample)}.items():
        loop = inpaint_loop(model, respaced, x_T, known, mask, Generator(args.seed + 1), jump_length=j, resample=r)
        completions[name] = to_numpy(final(loop))                      # (N, 1, 8, 8)

    # 3. SDEdit from coarse inputs: noise to strength * T, then DDIM (eta = 0) back to the data.
    guide = coarse(held)
    edits = {s: to_numpy(final(sdedit_loop(model, respaced, backend.asarray(guide, dtype=dtype), s,
                                           Generator(args.seed + 2)))) for s in SDEDIT_STRENGTHS}

    # 4. Numbers: error on the unknown pixels, and distance to the nearest training digit there (memorization).
    unknown = known_mask(args.mask)[0] == 0                             # (1, 8, 8)
    print(f"inpainting the {args.mask} half of {len(classes)} held-out digits, {steps} steps; on the unknown pixels:")
    for name, x in completions.items():
        mse = np.mean((x - held)[:, unknown] ** 2)
        print(f"  {name:24s} MSE to the original {mse:.3f}   RMS distance to the nearest training digit "
              f"{nearest_distance(x, train, unknown).mean():.3f}")
    print(f"  {'(held-out originals)':24s} {'':24s}   RMS distance to the nearest training digit "
          f"{nearest_distance(held, train, unknown).mean():.3f}")
    print("SDEdit from coarse 4x4 inputs (RMS distances):")
    for s, x in edits.items():
        print(f"  strength {s:.1f}: to its input {np.sqrt(np.mean((x - guide) ** 2)):.3f}   to the original "
              f"{np.sqrt(np.mean((x - held) ** 2)):.3f}   to the nearest training digit "
              f"{nearest_distance(x, train).mean():.3f}")

    # 5. Figures (RGB, so the unknown region can be marked in red).
    host_mask = known_mask(args.mask)
    rows = [rgb(held, host_mask)] + [rgb(x) for x in completions.values()] + [rgb(held)]
    labels = ["masked input\n(red: unknown)"] + [f"{name}" for name in completions] + ["original"]
    inpaint_path = image_grid(np.concatenate(rows), len(classes), out / "inpainting.png", row_labels=labels,
                              title=f"Inpainting the {args.mask} half of held-out digits, exact denoiser of "
                                    f"{N_TRAIN} training digits, {steps} steps")
    sdedit_rows = [held, guide] + list(edits.values())
    sdedit_labels = ["original", "coarse input"] + [f"SDEdit, strength {s:.1f}" for s in edits]
    sdedit_path = image_grid(np.concatenate(sdedit_rows), len(classes), out / "sdedit.png", row_labels=sdedit_labels,
                             title=f"SDEdit from coarse inputs, DDIM, exact denoiser of {N_TRAIN} training digits")
    print(inpaint_path)
    print(sdedit_path)
    print(f"done in {time.perf_counter() - started:.1f} s on {args.backend}")


if __name__ == "__main__":
    main()
