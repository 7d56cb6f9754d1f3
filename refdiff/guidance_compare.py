"""Classifier-free guidance against CLIP guidance on the captioned shapes (GLIDE, Nichol et al. 2021, Sec. 3.2),
measured: at one sampler, one step count, the same prompts and the same noise, each method's sweep of scales
scored for caption fidelity and diversity (refdiff.demo.score_prompts on refdiff.captions_eval) and for how far
their pixels leave the data's colours (``palette_error``, a realism check: 0 for every training image), and the
CLIP's own zero-shot retrieval at several noise levels. What benchmarks/bench_clip_vs_cfg.py and
examples/clip_vs_cfg.py run; the page: docs/clip.md, "CLIP guidance against classifier-free guidance".

    classifier-free, scale s:  eps = eps(x_t | empty) + s (eps(x_t | c) - eps(x_t | empty))     (GLIDE, eq. 4)
    CLIP, scale lambda:        the model at classifier-free scale ``base`` (1: the conditional model, as GLIDE's
                               CLIP-guided samples; 0: the unconditional one, CLIP alone), its mean shifted by
                               lambda Sigma grad_x (f(x_t, t) . g(c))                            (GLIDE, eq. 3)
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from refdiff.clip_train import TrainedClip, check_clip_fits, clip_guidance, retrieval_accuracy
from refdiff.data.captions import ATTRIBUTES, PALETTE, load_captions, tokenize
from refdiff.demo import HELD_OUT_PROMPTS, SEEN_PROMPTS, score_prompts
from refdiff.generate import LoadedModel, generate

METHODS = ("classifier-free", "CLIP")
PROMPTS = SEEN_PROMPTS + HELD_OUT_PROMPTS  # the text demo's: 8 seen (colour, shape) pairs, 4 held out
GROUPS = (("seen", "seen"), ("held_out", "held-out"))
# What a sample that ignores its prompt scores: all four right 1/2 * 1/6 * 1/6 * 1/4; each attribute 1 / its values.
CHANCE = {"all": 1 / 288, "mean": float(np.mean([1 / 2, 1 / 6, 1 / 6, 1 / 4]))}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of a sweep: ``method`` at ``scale``; the sampler runs classifier-free guidance at ``guidance``
    and CLIP guidance at ``clip_scale`` (0: none)."""

    method: str
    scale: float
    guidance: float
    clip_scale: float


def sweep(cfg_scales: list[float], clip_scales: list[float], base: float = 1.0) -> list[Setting]:
    """The settings of both sweeps: classifier-free at each s of cfg_scales (no CLIP), CLIP at each lambda of
    clip_scales on the model at classifier-free scale ``base``."""
    for name, scales in (("cfg_scales", cfg_scales), ("clip_scales", clip_scales), ("base", [base])):
        if not all(isinstance(s, (int, float)) and 0 <= s < float("inf") for s in scales):
            raise ValueError(f"{name} must hold finite numbers >= 0, got {scales!r}")
    return ([Setting("classifier-free", s, s, 0.0) for s in cfg_scales] +
            [Setting("CLIP", s, base, s) for s in clip_scales])


def sample_setting(loaded: LoadedModel, clip: TrainedClip | None, setting: Setting, prompts: tuple[str, ...],
                   per_prompt: int, sample_steps: int, seed: int) -> np.ndarray:
    """``per_prompt`` samples of each prompt, (P * per_prompt, C, H, W) host images clipped to [-1, 1]: DDIM
    with ``sample_steps`` steps from the noise of ``seed`` (the same for every setting), guided as
    ``setting`` says (one caption per sample for the model and for the CLIP)."""
    text = loaded.model_cfg.text
    tokens, mask = tokenize(list(np.repeat(np.array(prompts), per_prompt)), context=text.context_length)
    cond_fn = None
    if setting.clip_scale:
        if clip is None:
            raise ValueError(f"setting {setting} needs a CLIP, got None")
        check_clip_fits(clip, loaded.data_shape, text.vocab_size, text.context_length, loaded.train_cfg["schedule"],
                        loaded.schedule.T)
        cond_fn = clip_guidance(clip, tokens, mask, setting.clip_scale)
    images = generate(loaded, (tokens.shape[0], *loaded.data_shape), tokens, "ddim", sample_steps,
                      guidance=setting.guidance, seed=seed, cond_fn=cond_fn)
    return np.clip(images, -1.0, 1.0)  # the final x0 is clipped already; float error may not be


def compare(loaded: LoadedModel, clip: TrainedClip | None, settings: list[Setting], per_prompt: int,
            sample_steps: int, seed: int = 0, prompts: tuple[str, ...] = PROMPTS, classifier: Any = None,
            each: Callable[[Setting, np.ndarray, dict], Any] | None = None) -> list[dict]:
    """A score_prompts report per setting (fidelity per attribute and all four, seen and held-out apart, and
    diversity) and the samples' palette_error, with the setting's fields, its seconds and the 1-minute load average; ``each(setting, images,
    report)`` is called after each (to write a grid, print progress)."""
    rows = []
    for setting in settings:
        start = time.perf_counter()
        images = sample_setting(loaded, clip, setting, prompts, per_prompt, sample_steps, seed)
        report = score_prompts(images, prompts, per_prompt, classifier)
        report.update(palette_error=palette_error(images))
        report.update(dataclasses.asdict(setting), seconds=time.perf_counter() - start, load=os.getloadavg()[0])
        rows.append(report)
        if each is not None:
            each(setting, images, report)
    return rows


def palette_error(images) -> float:
    """The RMS distance of the samples' pixels from the colours a captioned-shape image can have, in [0, 1] units.

    Math: p = (x + 1) / 2 per pixel (RGB in [0, 1]); every data pixel is a c_k with a in [0, 1], c_k a colour of
          PALETTE (refdiff.data.captions: x = 2 a c_k - 1); its distance to that segment is
          min_k || p - clip(p . c_k / ||c_k||^2, 0, 1) c_k ||; the result is the root mean square over all pixels.
    0 for every training image; speckle, off-colour fringes and adversarial textures raise it.
    images: (N, 3, H, W) host array in [-1, 1].
    """
    p = (np.moveaxis(np.asarray(images, dtype=np.float64), 1, -1).reshape(-1, 3) + 1) / 2  # (N H W, 3)
    a = np.clip(p @ PALETTE.T / np.sum(PALETTE**2, axis=1), 0.0, 1.0)                       # (N H W, 6)
    distance = np.linalg.norm(p[:, None, :] - a[:, :, None] * PALETTE[None], axis=2)       # (N H W, 6)
    return float(np.sqrt(np.mean(np.min(distance, axis=1) ** 2)))


# -------------------------------------------------------------------------------------- retrieval

def attribute_labels(attributes: dict) -> np.ndarray:
    """One integer per image for its (size, colour, shape, position): equal labels, equal full captions."""
    label = np.zeros_like(attributes["size"])
    for key in ATTRIBUTES:
        label = label * 10 + attributes[key]  # every attribute has fewer than 10 values
    return label


def chance(labels: np.ndarray, n: int) -> float:
    """The accuracy of a random pick: the mean over captions of the fraction of its group that matches."""
    N = labels.size // n * n
    groups = labels[:N].reshape(-1, n)  # (N / n, n)
    return float(np.mean(groups[:, :, None] == groups[:, None, :]))


def retrieval(clip: TrainedClip, ts: list[int], count: int = 1024, n: int = 32, seed: int = 1000) -> list[dict]:
    """The CLIP's zero-shot retrieval, caption -> image among n, on ``count`` fresh images (load_captions of
    ``seed``) with full captions, at each t of ``ts``: [{"t", "accuracy", "chance"}] (refdiff.clip_train.
    retrieval_accuracy; a pick counts when the image has the caption's four attributes)."""
    x, captions, attributes = load_captions(count, resolution=clip.cfg.image_size, seed=seed, p_keep=1.0)
    tokens, mask = tokenize(captions, context=clip.cfg.context_length)
    labels = attribute_labels(attributes)
    return [{"t": t, "accuracy": retrieval_accuracy(clip, x, tokens, mask, t, n=n, labels=labels),
             "chance": chance(labels, n)} for t in ts]


# ------------------------------------------------------------------------------------ the outputs

def _mean_attribute(fraction: dict) -> float:
    return float(np.mean([fraction[k] for k in ATTRIBUTES]))


def markdown_table(rows: list[dict]) -> str:
    """compare's reports as a Markdown table: a row per setting and group, the fractions in percent (the palette
    error and the seconds are the setting's, on both of its rows)."""
    lines = ["| method | scale | compositions | " + " | ".join(ATTRIBUTES) + " | mean | all four | diversity | "
             "palette error | s |", "|---|---|---|" + "---|" * (len(ATTRIBUTES) + 5)]
    for r in rows:
        for group, title in GROUPS:
            fraction = r[group]["fraction"]
            cells = " | ".join(f"{100 * fraction[k]:.1f}%" for k in ATTRIBUTES)
            lines.append(f"| {r['method']} | {r['scale']:g} | {title} | {cells} | {100 * _mean_attribute(fraction):.1f}% "
                         f"| {100 * fraction['all']:.1f}% | {r[group]['diversity']:.3f} | {r['palette_error']:.3f} "
                         f"| {r['seconds']:.0f} |")
    return "\n".join(lines)


def retrieval_table(rows: list[dict], n: int = 32) -> str:
    """retrieval's rows as a Markdown table: a column per t."""
    return "\n".join(["| t | " + " | ".join(str(r["t"]) for r in rows) + " |",
                      "|---|" + "---|" * len(rows),
                      f"| accuracy (caption -> image among {n}) | " + " | ".join(f"{r['accuracy']:.3f}" for r in rows)
                      + " |",
                      "| chance | " + " | ".join(f"{r['chance']:.3f}" for r in rows) + " |"])


def plot_comparison(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Fidelity against diversity, one curve per method through its scales (solid: seen compositions, dashed:
    held-out), each point labelled with its scale: all four attributes right (left), the mean of the four
    attributes' fractions (right), with chance."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    panels = zip(fig.subplots(1, 2), ("all four attributes right", "mean of the four attributes' fractions"),
                 (lambda f: f["all"], _mean_attribute), (CHANCE["all"], CHANCE["mean"]))
    for ax, ylabel, fidelity, floor in panels:
        for colour, method in zip(("C0", "C3"), METHODS):
            mine = [r for r in rows if r["method"] == method]
            for (group, name), style in zip(GROUPS, ("-", "--")):
                xs = [r[group]["diversity"] for r in mine]
                ys = [fidelity(r[group]["fraction"]) for r in mine]
                ax.plot(xs, ys, style, color=colour, marker="o", label=f"{method} guidance, {name}")
                for r, x, y in zip(mine, xs, ys):
                    ax.annotate(f"{r['scale']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                color=colour)
        ax.axhline(floor, color="0.4", linestyle=":", linewidth=1.0, label="chance")
        ax.set(xlabel="diversity (mean pairwise RMS distance of a prompt's samples)", ylabel=ylabel, ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "classifier-free against CLIP guidance: caption fidelity against diversity", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
