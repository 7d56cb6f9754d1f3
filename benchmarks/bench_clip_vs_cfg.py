"""Classifier-free guidance against CLIP guidance (GLIDE, Sec. 3.2): caption fidelity and diversity of each over
a sweep of scales, at one sampler and step count, on the same prompts and noise; and the CLIP's zero-shot retrieval.

Run: python benchmarks/bench_clip_vs_cfg.py TEXT_CHECKPOINT CLIP_CHECKPOINT [--cfg-scales 1 2 3 5 8]
         [--clip-scales 0 ...] [--base 1] [--per-prompt 16] [--sample-steps 25] [--seed 0]
         [--t 0 250 500 750 900] [--out DIR]
(TEXT_CHECKPOINT: a text16 run, e.g. the text demo's; CLIP_CHECKPOINT: `refdiff train-clip`'s. About a minute
per classifier-free scale at 16 samples a prompt on a quiet 2-core CPU; a CLIP-guided one costs the CLIP's
forward and backward on top.)

refdiff.guidance_compare runs it: for each setting ``--per-prompt`` samples of each of the text demo's twelve
prompts (eight seen (colour, shape) pairs, four held out), DDIM ``--sample-steps`` steps from the noise of
``--seed``; classifier-free guidance at each s of ``--cfg-scales``; CLIP guidance at each lambda of
``--clip-scales`` on the model at classifier-free scale ``--base`` (1: the conditional model, GLIDE's setting; 0:
the unconditional one, CLIP alone). Scored per attribute and all four right, seen and held-out compositions apart,
with the diversity of each prompt's samples. Prints the retrieval table (caption -> image among 32 on 1024 fresh
images with full captions, at each t of ``--t``), then a Markdown table, a row per setting and group, with the
seconds each took and the load; writes ``clip_vs_cfg.png`` (fidelity against diversity, a curve per method),
a grid per setting and ``clip_vs_cfg.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

from refdiff.captions_eval import shape_classifier
from refdiff.clip_train import load_clip
from refdiff.demo import HELD_OUT_PROMPTS
from refdiff.generate import load_model
from refdiff.guidance_compare import PROMPTS, compare, markdown_table, plot_comparison, retrieval, retrieval_table, sweep
from refdiff.plot import image_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("clip")
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0, 8.0])
    parser.add_argument("--clip-scales", type=float, nargs="+", default=[0.0, 10.0, 30.0, 100.0])
    parser.add_argument("--base", type=float, default=1.0)
    parser.add_argument("--per-prompt", type=int, default=16)
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--t", type=int, nargs="+", default=[0, 250, 500, 750, 900])
    parser.add_argument("--out", default="out/clip_vs_cfg")
    args = parser.parse_args()
    if args.per_prompt < 2:
        raise SystemExit(f"--per-prompt must be an integer >= 2 (diversity needs two samples), got {args.per_prompt}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded, clip = load_model(args.checkpoint), load_clip(args.clip)
    print(f"{args.checkpoint}: {loaded.train_cfg['steps']} training steps; {args.clip}: {clip.info.get('steps_done')} "
          f"steps in {clip.info.get('train_seconds', 0):.0f} s; {args.per_prompt} samples a prompt, DDIM "
          f"{args.sample_steps} steps; load {os.getloadavg()[0]:.1f}", flush=True)

    start = time.perf_counter()
    found = retrieval(clip, args.t)
    print(retrieval_table(found) + f"\n({time.perf_counter() - start:.0f} s)", flush=True)

    def each(setting, images, report):
        name = f"{'cfg' if setting.method == 'classifier-free' else 'clip'}_{setting.scale:g}"
        image_grid(images, nrow=args.per_prompt, path=out / f"grid_{name}.png",
                   row_labels=[p + ("\n(held out)" if p in HELD_OUT_PROMPTS else "") for p in PROMPTS],
                   title=f"{setting.method} guidance {setting.scale:g}, DDIM {args.sample_steps} steps")
        print(f"{setting.method} {setting.scale:g}: all four {100 * report['seen']['fraction']['all']:.1f}% seen, "
              f"{100 * report['held_out']['fraction']['all']:.1f}% held-out; {report['seconds']:.0f} s "
              f"(load {report['load']:.1f})", flush=True)

    rows = compare(loaded, clip, sweep(args.cfg_scales, args.clip_scales, args.base), args.per_prompt,
                   args.sample_steps, args.seed, classifier=shape_classifier(), each=each)
    print(markdown_table(rows))
    (out / "clip_vs_cfg.json").write_text(json.dumps({"settings": vars(args), "retrieval": found, "rows": rows},
                                                     indent=2) + "\n")
    print(plot_comparison(rows, out / "clip_vs_cfg.png",
                          f"{pathlib.Path(args.checkpoint).name}: DDIM {args.sample_steps} steps, "
                          f"{args.per_prompt} samples a prompt; CLIP guidance on classifier-free scale {args.base:g}"))


if __name__ == "__main__":
    main()
