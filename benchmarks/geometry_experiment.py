"""Is position learnt when the shapes sit well inside their quadrants? One text-demo training on smaller shapes.

Run: python benchmarks/geometry_experiment.py [--out out/geometry] [--steps 1200] [--per-prompt 16]
(the text demo's training, TEXT_DEMO_TRAIN on TEXT_DEMO_IMAGES with text16, about 5 min on a quiet 2-core CPU)

The captioned shapes of refdiff.data.captions are drawn with GEOMETRY instead of the module's defaults (the
module's globals replaced in this process only; its files are unchanged): smaller area fractions, and
centres MIDLINE pixels from the midlines, so that the centroids lie a median 3 pixels or more from the nearer
midline (docs/glide.md, "Why position stays at chance"). Then, printed and written to OUT/report.json:
  1. the centroids' distance from the midline (benchmarks/probe_text_words.py, section 3);
  2. the shipped shape classifier's accuracy on 1000 real images of the new geometry (it was trained on
     the old sizes: its shape score of the samples is invalid where this is poor);
  3. the demo's prompts sampled at guidance 3 and scored as the demo scores them (refdiff.demo.score_prompts;
     read_size with the new threshold);
  4. unless --no-probe, the word probe of the trained checkpoint on images of the new geometry.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import refdiff.data.captions as captions

GEOMETRY = {"SIZE_AREA": {"small": (0.012, 0.02), "large": (0.03, 0.045)}, "SIZE_THRESHOLD": 0.025, "MIDLINE": 2.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/geometry")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's 1200)")
    parser.add_argument("--per-prompt", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-probe", action="store_true", help="skip the word probe (section 4)")
    args = parser.parse_args()
    for name, value in GEOMETRY.items():
        setattr(captions, name, value)  # read at call time by load_captions and read_size
    from refdiff.captions_eval import shape_classifier, shape_data
    from refdiff.demo import (HELD_OUT_PROMPTS, SEEN_PROMPTS, TEXT_DEMO_IMAGES, TEXT_DEMO_TRAIN, _run_config,
                              format_prompt_scores, sample_prompts, score_prompts)
    from refdiff.generate import load_model
    from refdiff.models.presets import TEXT_PRESETS
    from refdiff.train import train

    sys.path.insert(0, str(Path(__file__).parent))
    import probe_text_words

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("geometry:", GEOMETRY)
    probe_text_words.margins()  # 1.
    x_real, y_real = shape_data(1000, seed=7)  # 2.
    classifier = shape_classifier()
    real = float(np.mean(classifier.predict(x_real) == y_real))
    print(f"the shipped shape classifier on 1000 real images of the new geometry: {real:.1%}")

    cfg = _run_config(TEXT_DEMO_TRAIN, args.steps, args.seed, "numpy")
    x, caps, _ = captions.load_captions(**TEXT_DEMO_IMAGES)
    start = time.perf_counter()
    train(cfg, TEXT_PRESETS["text16"](), x, captions.tokenize(caps)[0], out, overwrite=True,
          data_source={"data": "captions", "image_size": None})
    train_seconds = time.perf_counter() - start
    print(f"trained {cfg.steps} steps in {train_seconds:.0f} s")
    prompts = SEEN_PROMPTS + HELD_OUT_PROMPTS  # 3.
    images = sample_prompts(load_model(out / "checkpoint.npz"), prompts, args.per_prompt, args.guidance, 25, args.seed,
                            sampler="ddim")
    np.savez(out / "samples.npz", images=images, prompts=np.repeat(np.array(prompts), args.per_prompt))
    report = {"geometry": GEOMETRY, "train_seconds": train_seconds, "steps": cfg.steps, "real_shape_accuracy": real}
    report["scores"] = score_prompts(images, prompts, args.per_prompt, classifier)
    print(format_prompt_scores(report["scores"], args.guidance))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_probe:  # 4.
        sys.argv = ["probe_text_words.py", str(out / "checkpoint.npz")]
        probe_text_words.main()


if __name__ == "__main__":
    main()
