"""The four families on a 2-D toy: diffusion, GAN, VAE and flow, the same CPU time each, samples over the data.

    python examples/families_toy2d.py --out out/families_toy2d   # about 2 minutes on a 2-core CPU (4 x 20 CPU s)
    python examples/families_toy2d.py --quick                    # a few seconds (the test's settings)

1. train each family, unconditional MLPs of 9k to 10k parameters (CONFIGS), on N_TRAIN points of
   load_toy2d("8gaussians") for SECONDS of CPU time each, with refdiff.compare.train_family (the loop, clock and
   trainers of `refdiff compare`);
2. N_SAMPLES samples of each: diffusion by DDIM (SAMPLE_STEPS steps from the EMA weights, x0 clipped to the data's
   range), the GAN's G(z), the VAE's decoder mean plus its decoder noise (a draw of p(x | z)), the flow's inverse;
3. the sliced Wasserstein-2 distance of each to held-out points, beside the floor (an independent data sample);
4. one figure: each family's samples over the held-out data.
"""

import time

import numpy as np
from _common import argument_parser, backend_and_out

from refdiff.backend import Generator
from refdiff.compare import CompareSettings, diffusion_model, param_counts, train_family
from refdiff.data import load_toy2d
from refdiff.flow_train import FlowTrainConfig, flow_samples
from refdiff.gan_train import GANTrainConfig, gan_samples
from refdiff.generate import generate
from refdiff.metrics import sliced_wasserstein
from refdiff.models.mlp import MLPConfig
from refdiff.models.presets import toy2d_flow, toy2d_gan, toy2d_vae
from refdiff.plot import scatter_2d
from refdiff.train import TrainConfig
from refdiff.vae_train import VAETrainConfig, vae_samples

SECONDS = 20.0       # CPU seconds of training per family
STEPS = 100_000      # the learning-rate schedules' length: the budget stops every family first
BATCH_SIZE = 256
N_TRAIN, N_SAMPLES = 20_000, 2000
SAMPLE_STEPS = 50
QUICK = {"SECONDS": 0.5, "N_SAMPLES": 300, "SAMPLE_STEPS": 5}
# 9.6k, 8.9k (both networks), 9.1k (encoder and decoder), 10.3k parameters; the GAN's, VAE's and flow's learning
# rates are their own examples' (gan_toy2d.py, vae_toy2d.py, flow_toy2d.py), diffusion's `refdiff train`'s default.
CONFIGS = {"diffusion": MLPConfig(data_dim=2, hidden=44, depth=3, time_embed_dim=32), "gan": toy2d_gan(),
           "vae": toy2d_vae(), "flow": toy2d_flow(hidden=32)}
TRAIN = {"diffusion": TrainConfig(steps=STEPS, batch_size=BATCH_SIZE, lr=2e-3, warmup_steps=100,
                                  checkpoint_every=STEPS),
         "gan": GANTrainConfig(steps=STEPS, batch_size=BATCH_SIZE, lr_g=1e-3, lr_d=1e-3),
         "vae": VAETrainConfig(steps=STEPS, batch_size=BATCH_SIZE),
         "flow": FlowTrainConfig(steps=STEPS, batch_size=BATCH_SIZE, lr=3e-3)}


def samples(name, run, x_train, n, steps, seed):
    """n samples (n, 2) of a trained family (step 2)."""
    if name == "diffusion":
        loaded = diffusion_model(run, data_shape=(2,), data_bound=float(np.max(np.abs(x_train))))
        return generate(loaded, (n, 2), None, "ddim", steps, seed=seed)
    if name == "vae":
        scale = np.exp(np.asarray(run.params["dec.log_scale"], dtype=np.float64))  # (2,) the decoder's std
        return vae_samples(run, n, seed=seed) + scale * Generator(seed + 1).normal((n, 2))
    return {"gan": gan_samples, "flow": flow_samples}[name](run, n, seed=seed)


def main():
    args = argument_parser(__doc__, "out/families_toy2d", "seeds the data, training and the samples",
                           QUICK).parse_args()
    _, out = backend_and_out(args)
    seconds, n, steps = (QUICK["SECONDS"], QUICK["N_SAMPLES"], QUICK["SAMPLE_STEPS"]) if args.quick else \
        (SECONDS, N_SAMPLES, SAMPLE_STEPS)
    x_train, _ = load_toy2d("8gaussians", N_TRAIN, seed=args.seed)
    held_out, _ = load_toy2d("8gaussians", n, seed=args.seed + 1)
    settings = CompareSettings(seconds=seconds, seed=args.seed)

    panels = {}
    print(f"{'family':<10} {'params':>7} {'steps':>6} {'CPU s':>6} {'sliced W2':>9} {'CPU ms/sample':>13}")
    for name in CONFIGS:
        run = train_family(name, settings, x_train, None, configs=CONFIGS, train=TRAIN)         # 1.
        cpu = time.process_time()
        points = samples(name, run, x_train, n, steps, args.seed + 2)                            # 2.
        cpu = (time.process_time() - cpu) / n
        w2 = sliced_wasserstein(points, held_out)                                                # 3.
        print(f"{name:<10} {param_counts(name, CONFIGS)[0]:>7} {run.info['steps_done']:>6} "
              f"{run.info['train_cpu_seconds']:>6.1f} {w2:>9.4f} {1000 * cpu:>13.4f}")
        panels[f"{name}: sliced W2 {w2:.3f}"] = points
    floor = sliced_wasserstein(load_toy2d("8gaussians", n, seed=args.seed + 4)[0], held_out)
    print(f"floor: an independent data sample, sliced W2 {floor:.4f}")
    print(scatter_2d(panels, out / "families_toy2d.png", reference=held_out,                    # 4.
                     title=f"8 Gaussians: {seconds:g} CPU s of training each, {n} samples over held-out data"))


if __name__ == "__main__":
    main()
