"""A RealNVP flow on the embedded 8x8 digits: a minute of training, its held-out bits/dim, its samples scored.

    python examples/flow_digits.py --out out/flow        # about 1.5 minutes on a 2-core CPU
    python examples/flow_digits.py --quick               # a few seconds (small settings)

1. train the digits8_flow preset (unconditional) on the digits' training split for SECONDS of wall time, on
   uniformly dequantised digits;
2. bits/dim of the 180 held-out digits: the dequantised bound on -log2 P(x) / D, averaged over DRAWS draws of u;
3. N_SAMPLES samples x = f^{-1}(z), z ~ N(0, I), quantized to the 17 grey levels, scored with the shipped digit
   classifier: Frechet distance, precision, recall, Inception-Score analogue (refdiff.digits_eval);
4. write the samples as a PNG grid and print every number.
"""

import time

import numpy as np
from _common import argument_parser, backend_and_out

from refdiff.digits_eval import digit_classifier, digit_sample_report, digit_split, format_precision_recall
from refdiff.flow_train import FlowTrainConfig, flow_bits_per_dim, flow_samples, train_flow
from refdiff.models.presets import digits8_flow
from refdiff.plot import image_grid

SECONDS = 60.0       # training budget (wall clock)
STEPS = 3000         # the learning-rate schedule's length (the budget usually stops training first)
BATCH_SIZE = 64
LR = 3e-3            # higher than the usual 1e-3: a minute is a few hundred steps
DRAWS = 4            # dequantisation draws of the held-out bound
N_SAMPLES = 100
QUICK = {"SECONDS": 2.0, "STEPS": 20, "DRAWS": 1, "N_SAMPLES": 20}


def main():
    args = argument_parser(__doc__, "out/flow", "seeds training, the bound's draws and the samples", QUICK).parse_args()
    backend, out = backend_and_out(args)
    seconds, steps, draws, n = ((QUICK["SECONDS"], QUICK["STEPS"], QUICK["DRAWS"], QUICK["N_SAMPLES"]) if args.quick
                                else (SECONDS, STEPS, DRAWS, N_SAMPLES))
    x_train, x_test, y_train, y_test = digit_split()

    # 1. train for a wall-clock budget
    train_cfg = FlowTrainConfig(steps=steps, batch_size=BATCH_SIZE, lr=LR, max_seconds=seconds, seed=args.seed,
                                backend=backend.name)
    trained = train_flow(train_cfg, digits8_flow(), x_train)
    print(f"trained {trained.info['steps_done']} steps in {trained.info['train_seconds']:.1f} s; "
          f"last 50 steps' loss {np.mean(trained.losses[-50:]):.3f} bits/dim")

    # 2. held-out bits/dim (exact log-likelihood of the dequantised digits, a bound on the discrete ones)
    bpd = flow_bits_per_dim(trained, x_test, draws=draws, seed=args.seed)
    print(f"held-out bits/dim (dequantised, {draws} draws of u): {bpd['bits_per_dim']:.4f}")

    # 3. samples, scored
    start = time.perf_counter()
    images = flow_samples(trained, n, seed=args.seed)
    print(f"{n} samples in {time.perf_counter() - start:.3f} s")
    report = digit_sample_report(digit_classifier(), images, None, (x_test, y_test), reference=(x_train, y_train),
                                 seed=args.seed)
    print(f"Frechet distance vs held-out: {report['fd']:.3f} (floor {report['fd_floor']:.3f}, "
          f"real training digits {report['fd_real']:.3f})")
    print(format_precision_recall(report))

    # 4. the sample grid
    path = image_grid(images, nrow=10, path=out / "flow_samples.png", title="RealNVP samples")
    print(path)


if __name__ == "__main__":
    main()
