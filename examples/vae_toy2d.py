"""A VAE on a 2-D toy (8 Gaussians on a circle): where its samples land against the data, and its bound.

    python examples/vae_toy2d.py --out out/vae_toy2d     # about a minute on a 2-core CPU
    python examples/vae_toy2d.py --quick                 # a few seconds (the test's settings)

1. train the toy2d_vae preset (unconditional) on N_TRAIN points of load_toy2d("8gaussians") for SECONDS;
2. the held-out bound from the ELBO and from the IWAE bound (K_IWAE samples), in nats per point (a density);
3. N_SAMPLES samples from the prior (the decoder's mean, and the mean plus the decoder's Gaussian noise), with the
   sliced Wasserstein-2 distance to held-out data next to that of an independent data sample (the floor);
4. a PNG of both kinds of samples over the data.
"""

import numpy as np
from _common import argument_parser, backend_and_out

from refdiff.backend import Generator
from refdiff.data import load_toy2d
from refdiff.metrics import sliced_wasserstein
from refdiff.models.presets import toy2d_vae
from refdiff.plot import scatter_2d
from refdiff.vae_train import VAETrainConfig, train_vae, vae_bits_per_dim, vae_samples

SECONDS = 45.0       # training budget (wall clock)
STEPS = 3000         # the learning-rate schedule's length
BATCH_SIZE = 256
N_TRAIN, N_SAMPLES = 20_000, 2000
K_IWAE = 100
QUICK = {"SECONDS": 2.0, "STEPS": 50, "N_SAMPLES": 300, "K_IWAE": 5}


def main():
    args = argument_parser(__doc__, "out/vae_toy2d", "seeds the data, training and the samples", QUICK).parse_args()
    backend, out = backend_and_out(args)
    seconds, steps, n, k = ((QUICK["SECONDS"], QUICK["STEPS"], QUICK["N_SAMPLES"], QUICK["K_IWAE"]) if args.quick
                            else (SECONDS, STEPS, N_SAMPLES, K_IWAE))
    x_train, _ = load_toy2d("8gaussians", N_TRAIN, seed=args.seed)
    held_out, _ = load_toy2d("8gaussians", n, seed=args.seed + 1)

    # 1. train for a wall-clock budget
    train_cfg = VAETrainConfig(steps=steps, batch_size=BATCH_SIZE, max_seconds=seconds, seed=args.seed,
                               backend=backend.name)
    trained = train_vae(train_cfg, toy2d_vae(), x_train)
    print(f"trained {trained.info['steps_done']} steps in {trained.info['train_seconds']:.1f} s")

    # 2. the held-out bound, in nats per point (bits/dim times D ln 2)
    bpd = vae_bits_per_dim(trained, held_out, k=k, seed=args.seed)
    to_nats = -2 * np.log(2.0)  # log p per point = -bits/dim * D ln 2, D = 2
    print(f"held-out log-likelihood bound per point: ELBO {bpd['elbo'] * to_nats:.3f} nats, "
          f"IWAE (k = {k}) {bpd['iwae'] * to_nats:.3f} nats")

    # 3. samples and their distance to held-out data
    means = vae_samples(trained, n, seed=args.seed + 2)
    scale = np.exp(np.asarray(trained.params["dec.log_scale"], dtype=np.float64))  # (2,) the decoder's std
    noisy = means + scale * Generator(args.seed + 3).normal((n, 2))
    floor = sliced_wasserstein(load_toy2d("8gaussians", n, seed=args.seed + 4)[0], held_out)
    for name, points in (("decoder mean", means), ("mean + decoder noise", noisy)):
        print(f"sliced W2 to held-out data, {name}: {sliced_wasserstein(points, held_out):.4f} (floor {floor:.4f})")

    # 4. the figure
    path = scatter_2d({"VAE: decoder mean": means, "VAE: mean + decoder noise": noisy}, out / "vae_toy2d.png",
                      reference=held_out, title="VAE on 8 Gaussians")
    print(path)


if __name__ == "__main__":
    main()
