"""Caption fidelity against diversity across classifier-free guidance scales, from a text model's checkpoint.

Run: python benchmarks/bench_text_guidance.py CHECKPOINT [--guidance 0 1 3 8] [--per-prompt 16]
                                             [--sampler ddpm] [--sample-steps 100] [--weights ema]
                                             [--seed 0] [--out DIR]
(CHECKPOINT: the text demo's, out/text_demo/checkpoint.npz; about a minute per scale at 16 samples a
prompt on a 2-core CPU)

For every guidance scale s, ``--per-prompt`` samples of each of the text demo's prompts (refdiff.demo:
eight of seen (colour, shape) pairs, four of the held-out pairs) with the demo's sampler
(refdiff.demo.TEXT_DEMO_SAMPLER, or ``--sampler``) from the checkpoint's EMA weights (``--weights raw``: the
trained weights) and the same noise at every scale, scored as the demo scores them
(refdiff.demo.score_prompts: caption_fidelity per attribute and all-correct, seen and held-out
compositions apart, and the mean diversity of each prompt's samples).
Prints a Markdown table, a row per scale and group, with the seconds each scale took and the load
average; writes ``fidelity_vs_diversity.png`` (all-correct fraction against diversity, a line per group
through the scales, beside the mean of the four attributes' fractions), ``guidance_grid_s<s>.png`` (a row
per prompt) and the reports, ``guidance.json``, into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np

from refdiff.captions_eval import shape_classifier
from refdiff.data.captions import ATTRIBUTES
from refdiff.demo import HELD_OUT_PROMPTS, SEEN_PROMPTS, TEXT_DEMO_SAMPLER, sample_prompts, score_prompts
from refdiff.generate import SAMPLERS, load_model
from refdiff.plot import image_grid

GROUPS = (("seen", "seen"), ("held_out", "held-out"))
# What a sample that ignores its prompt scores: all four right 1/2 * 1/6 * 1/6 * 1/4; each attribute 1 / its values.
CHANCE = (1 / 288, np.mean([1 / 2, 1 / 6, 1 / 6, 1 / 4]))


def score_scales(loaded, scales: list[float], per_prompt: int, sampler: str, sample_steps: int, seed: int,
                 out: pathlib.Path) -> list[dict]:
    """A score_prompts report per scale, with its seconds and load average; each scale's grid written."""
    prompts, classifier, rows = SEEN_PROMPTS + HELD_OUT_PROMPTS, shape_classifier(), []
    for s in scales:
        start = time.perf_counter()
        images = sample_prompts(loaded, prompts, per_prompt, s, sample_steps, seed, sampler)
        report = score_prompts(images, prompts, per_prompt, classifier)
        report.update(guidance=s, seconds=time.perf_counter() - start, load=os.getloadavg()[0])
        image_grid(images, nrow=per_prompt, path=out / f"guidance_grid_s{s:g}.png",
                   row_labels=[p + ("\n(held out)" if p in HELD_OUT_PROMPTS else "") for p in prompts],
                   title=f"guidance {s:g}, {sampler.upper()} {sample_steps} steps")
        print(f"guidance {s:g}: {report['seconds']:.0f} s (load {report['load']:.1f})", flush=True)
        rows.append(report)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The reports as a Markdown table: a row per scale and group, the fractions in percent."""
    lines = ["| guidance | compositions | " + " | ".join(ATTRIBUTES) + " | all four | diversity |",
             "|---|---|" + "---|" * (len(ATTRIBUTES) + 2)]
    for report in rows:
        for group, title in GROUPS:
            fraction = report[group]["fraction"]
            cells = " | ".join(f"{100 * fraction[k]:.1f}%" for k in (*ATTRIBUTES, "all"))
            lines.append(f"| {report['guidance']:g} | {title} | {cells} | {report[group]['diversity']:.3f} |")
    return "\n".join(lines)


def plot_trade(rows: list[dict], path: pathlib.Path) -> pathlib.Path:
    """Fidelity against diversity, a line per group through the scales, each point labelled with its scale s:
    the all-correct fraction (left) and the mean of the four attributes' fractions (right), with chance."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    panels = zip(fig.subplots(1, 2), ("all four attributes right", "mean of the four attributes' fractions"),
                 (lambda f: f["all"], lambda f: np.mean([f[k] for k in ATTRIBUTES])), CHANCE)
    for ax, ylabel, fidelity, chance in panels:
        for group, title in GROUPS:
            xs = [r[group]["diversity"] for r in rows]
            ys = [fidelity(r[group]["fraction"]) for r in rows]
            ax.plot(xs, ys, marker="o", label=f"{title} compositions")
            for r, x, y in zip(rows, xs, ys):
                ax.annotate(f"s = {r['guidance']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(chance, color="0.4", linestyle="--", linewidth=1.0, label="chance")
        ax.set(xlabel="diversity (mean pairwise RMS distance of a prompt's samples)", ylabel=ylabel, ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("classifier-free guidance: caption fidelity against diversity", fontsize=10)
    fig.savefig(path, dpi=100)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 3.0, 8.0])
    parser.add_argument("--per-prompt", type=int, default=16)
    parser.add_argument("--sampler", choices=SAMPLERS, default=TEXT_DEMO_SAMPLER)
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                        help="sample from the checkpoint's EMA weights (the demo's) or its trained weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/text_guidance")
    args = parser.parse_args()
    if args.per_prompt < 2:
        raise SystemExit(f"--per-prompt must be an integer >= 2 (diversity needs two samples), got {args.per_prompt}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.checkpoint, use_ema=args.weights == "ema")
    print(f"{args.checkpoint}: {loaded.train_cfg['steps']} training steps, {args.weights} weights; "
          f"{args.per_prompt} samples a prompt, {args.sampler} {args.sample_steps} steps")
    rows = score_scales(loaded, args.guidance, args.per_prompt, args.sampler, args.sample_steps, args.seed, out)
    print(markdown_table(rows))
    (out / "guidance.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(plot_trade(rows, out / "fidelity_vs_diversity.png"))


if __name__ == "__main__":
    main()
