"""``refdiff demo``: the main job. Train a class-conditional U-Net on the embedded digits, then sample;
``refdiff demo --task text``: the same for text, GLIDE's text-conditional U-Net on captioned shapes.

Steps (each prints what it writes):
  1. load the 1797 digits and hold out the fixed test split (180 digits, seed 0: refdiff.digits_eval.digit_split);
  2. write the forward chain of a few digits (forward_chain.png);
  3. train the ``digits8`` U-Net with classifier-free label dropout (checkpoint.npz, loss_curve.png;
     a rerun into the same folder replaces them);
  4. sample every class with DDIM and classifier-free guidance from the EMA weights
     (samples.png: one row per class; samples.npz: ``images`` in [-1, 1] and ``labels``);
  5. score the samples against the held-out digits (refdiff.digits_eval.digit_sample_report): the Frechet
     distance on the digit classifier's features next to its floor (two class-stratified halves of the
     held-out digits) and to real training digits of the same class counts, and the fraction of samples
     classified as their label (metrics.json, printed), with the digit classifier refdiff ships.
Defaults are sized for a 2-core laptop CPU: about a minute in all. Under ``mpirun -n N`` the ranks
train data-parallel (step 3) and rank 0 alone does the rest.

The text demo (``run_text_demo``, issue 14): train the ``text16`` model on 5000 captioned shapes with
caption dropout (checkpoint.npz, loss_curve.png); sample each of eight prompts of seen (colour, shape)
pairs and four of the held-out pairs with DDPM and classifier-free guidance (samples.png: a row per
prompt, the held-out ones marked; samples.npz: ``images`` and ``prompts``); score every sample against
its prompt (refdiff.captions_eval: size, colour, shape, position and all at once, seen and held-out
compositions apart, with the diversity of each prompt's samples; metrics.json, printed). Its defaults
took 9 min 47 s of a quiet 2-core CPU, both cores (docs/glide.md, "The demo").
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator
from refdiff.captions_eval import caption_fidelity, diversity, shape_classifier
from refdiff.checkpoint import LOCK_NAME
from refdiff.data.captions import ATTRIBUTES, COLOURS, HELD_OUT, load_captions, parse_captions, tokenize
from refdiff.data.digits import NUM_CLASSES
from refdiff.data.shapes import SHAPES
from refdiff.diffusion import q_sample
from refdiff.digits_eval import digit_classifier, digit_sample_report, digit_split, format_sample_report
from refdiff.distributed import get_communicator
from refdiff.generate import check_sampling, generate, load_model
from refdiff.models.presets import PRESETS, TEXT_PRESETS
from refdiff.plot import curves, image_grid
from refdiff.train import TrainConfig, hold_output, train

# 600 steps at lr 4e-3 (cosine decay to 0 at the end): the least time at which the demo's samples
# reached its targets on every seed tried (benchmarks/bench_quality.py, docs/performance.md, "Time to a
# good sample": class fraction >= 99% and a Frechet distance within 10% of real digits', seeds 0-2);
# 2000 steps at 2e-3 scored no better.
DEMO_TRAIN = TrainConfig(steps=600, batch_size=64, lr=4e-3, warmup_steps=100, lr_decay="cosine",
                         ema_decay=0.999, schedule="cosine", T=1000, label_dropout=0.1, checkpoint_every=300)
CHAIN_STEPS = (0, 100, 250, 500, 750, 999)
OUTPUTS = ("forward_chain.png", "checkpoint.npz", "loss_curve.png", "samples.png", "samples.npz", "metrics.json")


def check_demo_folder(out: Path, force: bool = False, outputs: tuple[str, ...] = OUTPUTS) -> None:
    """Refuse (ValueError) a folder that holds anything but an earlier demo's outputs, unless ``force``:
    the demo writes only into a folder that is new, empty or its own. An earlier demo's folder holds
    only ``outputs`` (OUTPUTS, or the text demo's TEXT_OUTPUTS) and the lock file, and a checkpoint.npz
    there comes with that demo's metrics.json."""
    if not out.is_dir() or force:
        return
    names = {p.name for p in out.iterdir()} - {LOCK_NAME}
    foreign = sorted(names - set(outputs))
    if "checkpoint.npz" in names and "metrics.json" not in names:
        foreign.insert(0, "checkpoint.npz (without a demo's metrics.json)")
    if foreign:
        raise ValueError(f"--out {out} holds files that are not an earlier demo's ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}): give a new or empty folder, or --force to write "
                         "into it")
    if names:
        print(f"replacing the earlier demo's {', '.join(n for n in outputs if n in names)} in {out}")


def write_forward_chain(x: np.ndarray, schedule: schedules.Schedule, path: Path) -> Path:
    """x (n, 1, 8, 8) noised to each of CHAIN_STEPS with one eps: rows = digits, columns = t."""
    eps = Generator(0).normal(x.shape)
    frames = [q_sample(schedule, x, np.full(x.shape[0], t), eps) for t in CHAIN_STEPS]  # each (n, 1, 8, 8)
    grid = np.stack(frames, axis=1).reshape(-1, *x.shape[1:])                         # (n * len, 1, 8, 8)
    return image_grid(np.clip(grid, -1, 1), nrow=len(CHAIN_STEPS), path=path,
                      title="forward chain q(x_t | x0), t = " + ", ".join(map(str, CHAIN_STEPS)))


def _run_config(defaults: TrainConfig, steps: int | None, seed: int, backend: str) -> TrainConfig:
    """A demo's TrainConfig: its defaults with the run's seed and backend, and ``steps`` if given (the
    warm-up shortened to fit a shorter run)."""
    steps = defaults.steps if steps is None else steps
    return dataclasses.replace(defaults, seed=seed, backend=backend, steps=steps,
                               warmup_steps=min(defaults.warmup_steps, steps - 1))


def run_demo(out: str | Path = "out/demo", steps: int | None = None, samples_per_class: int = 10,
             guidance: float = 3.0, sample_steps: int = 50, seed: int = 0, backend: str = "numpy",
             progress: bool = True, model_overrides: dict | None = None, force: bool = False) -> dict[str, Path]:
    """Run the demo's five steps into ``out``; returns the paths written. ``out`` must be new, empty or
    an earlier demo's folder unless ``force`` (check_demo_folder).

    Under ``mpirun -n N`` the ranks train data-parallel (refdiff.train); rank 0 alone writes files,
    samples and scores, and returns the paths, while the others wait for it and return {}.
    """
    start = time.perf_counter()
    out = Path(out)
    cfg = _run_config(DEMO_TRAIN, steps, seed, backend)
    if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise ValueError(f"samples_per_class must be an integer >= 1, got {samples_per_class!r}")
    check_sampling("ddim", sample_steps, guidance, cfg.T)  # before minutes of training, not after
    check_demo_folder(out, force)  # before the lock file is made: a refused folder is left as it was
    comm = get_communicator()
    with hold_output(out, comm):  # one run at a time in a folder (refdiff.checkpoint.folder_lock)
        paths = _demo_steps(out, cfg, samples_per_class, guidance, sample_steps, progress, model_overrides, comm,
                            start)
    comm.barrier("rank 0's sampling and scoring")
    return paths


def _demo_steps(out: Path, cfg: TrainConfig, samples_per_class: int, guidance: float, sample_steps: int,
                progress: bool, model_overrides: dict | None, comm, start: float) -> dict[str, Path]:
    """Steps 1-5 of the demo into out (run_demo's settings); rank 0 returns the paths written, others {}."""
    # 1. the fixed split (seed 0, whatever the run's seed) that `refdiff train/eval --data digits` and the
    #    digit classifier use: the held-out digits are never trained on by either network.
    split = digit_split()
    x_train, _, y_train, _ = split
    paths = {}
    with comm.abort_on_error():  # a failure on rank 0 ends every rank, here and after training
        if comm.rank == 0:
            paths["forward_chain"] = write_forward_chain(x_train[:6].astype(np.float64), cfg.schedule_obj(),
                                                         out / "forward_chain.png")            # 2.
    model_cfg = PRESETS["digits8"](num_classes=NUM_CLASSES, **(model_overrides or {}))
    state = train(cfg, model_cfg, x_train, y_train, out, progress=progress, comm=comm,
                  overwrite=True)                                                                # 3.
    with comm.abort_on_error():
        if comm.rank == 0:
            paths["checkpoint"] = out / "checkpoint.npz"
            paths["loss_curve"] = curves({"training loss": (np.arange(1, len(state.losses) + 1),
                                                            np.asarray(state.losses))},
                                         out / "loss_curve.png", xlabel="step", ylabel="loss (MSE of eps)")
            paths.update(sample_and_score(out, split, samples_per_class, guidance, sample_steps, cfg.seed,
                                          cfg.backend, start))                                 # 4., 5.
    return paths


def sample_and_score(out: Path, split: tuple, samples_per_class: int, guidance: float, sample_steps: int,
                     seed: int, backend: str, start: float) -> dict[str, Path]:
    """Steps 4 and 5: sample every class from out/checkpoint.npz with DDIM and classifier-free guidance
    (samples.png, samples.npz), then score them (metrics.json, write_metrics)."""
    loaded = load_model(out / "checkpoint.npz", backend=backend)
    labels = np.repeat(np.arange(NUM_CLASSES), samples_per_class)
    images = generate(loaded, (labels.size, *loaded.data_shape), labels, "ddim", sample_steps, guidance=guidance,
                      seed=seed)
    paths = {"samples": image_grid(images, nrow=samples_per_class, path=out / "samples.png",
                                   title=f"DDIM {sample_steps} steps, guidance {guidance:g}: one row per class",
                                   row_labels=[str(k) for k in range(NUM_CLASSES)])}
    np.savez(out / "samples.npz", images=images.astype(np.float32), labels=labels)
    paths["samples_npz"] = out / "samples.npz"
    settings = dict(train_steps=loaded.train_cfg["steps"], guidance=guidance, sample_steps=sample_steps)
    paths["metrics"] = write_metrics(out, images, labels, split, seed, settings, start)
    return paths


def write_metrics(out: Path, images: np.ndarray, labels: np.ndarray, split: tuple, seed: int,
                  extra: dict, start: float) -> Path:
    """Score the samples (digit_sample_report against the held-out split, the training split as the
    class-matched real reference), print the numbers and write them to out/metrics.json with ``extra``
    and demo_seconds, the wall time since ``start`` (a time.perf_counter value), with the shipped digit
    classifier."""
    x_train, x_test, y_train, y_test = split
    classifier = digit_classifier()
    report = digit_sample_report(classifier, images, labels, (x_test, y_test), reference=(x_train, y_train),
                                 seed=seed)
    print(format_sample_report(report))
    report.update(demo_seconds=time.perf_counter() - start, **extra)
    path = out / "metrics.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


# The text demo (issue 14): GLIDE's text16 on captioned shapes. Batch 32: refdiff.parallel runs it as two parts
# of 16 images, one a core, the second in a worker process (refdiff.workers): 159 ms a forward and backward
# against 215 on two threads. lr 4e-3 with min-SNR-5 weighting (Hang et al. 2023): the colour right in 100% of the
# samples at guidance 3, against 52% without it (the earlier text16). The encoder at 0.03 of the rate: at one
# rate its residual stream grows a part common to every caption that its final LayerNorm divides out, and the
# position words are lost. 3200 steps: what the worker processes' time buys within about 9 minutes on a quiet
# 2-core CPU (docs/glide.md, "The demo's defaults now").
TEXT_DEMO_TRAIN = TrainConfig(steps=3200, batch_size=32, lr=4e-3, warmup_steps=100, lr_decay="cosine",
                              ema_decay=0.999, schedule="cosine", T=1000, weighting="min_snr", caption_dropout=0.2,
                              text_lr_scale=0.03, checkpoint_every=300)
TEXT_DEMO_IMAGES = {"n": 5000, "seed": 0}  # load_captions' images, those `refdiff train --data captions` trains on
# Seen compositions (pairs of the "train" split): every colour, shape, size and position at least once.
SEEN_PROMPTS = ("small red circle top left", "large green square top right", "small blue diamond bottom left",
                "large yellow ring bottom right", "small magenta triangle top right", "large cyan cross bottom left",
                "large magenta circle bottom right", "small cyan square top left")
# The four (colour, shape) pairs of refdiff.data.captions.HELD_OUT, never trained on, each at a size and place.
HELD_OUT_PROMPTS = ("large red square top left", "small green ring top right", "large blue triangle bottom left",
                    "small yellow cross bottom right")
TEXT_OUTPUTS = ("checkpoint.npz", "loss_curve.png", "samples.png", "samples.npz", "metrics.json")
# DDPM's ancestral sampler with 100 steps: all four attributes right in 78.1, 96.9 and 73.4% of the seen samples
# of training seeds 0, 1, 2, against DDIM 25's 73.4, 90.6 and 64.1% (DDIM 50: 76.6, 82.8, 71.9%; DDPM 50 and
# 200 as 100 within a point on average; docs/glide.md, "The sampler"); 30 s for the demo's 96 samples.
TEXT_DEMO_SAMPLER = "ddpm"


def run_text_demo(out: str | Path = "out/text_demo", steps: int | None = None, per_prompt: int = 8,
                  guidance: float = 3.0, sample_steps: int = 100, seed: int = 0, backend: str = "numpy",
                  progress: bool = True, force: bool = False) -> dict[str, Path]:
    """The text demo into ``out``: train text16 on captioned shapes (TEXT_DEMO_TRAIN, ``steps`` if given),
    sample ``per_prompt`` images of each of SEEN_PROMPTS and HELD_OUT_PROMPTS with TEXT_DEMO_SAMPLER
    (``sample_steps`` steps) and classifier-free guidance from the EMA weights (samples.png: a row per prompt,
    held-out ones marked; samples.npz: ``images`` and ``prompts``), and score them with refdiff.captions_eval (metrics.json, printed).
    ``out`` must be new, empty or an earlier text demo's folder unless ``force``. Returns the paths written;
    under ``mpirun -n N`` the ranks train data-parallel and rank 0 alone samples and writes, the others return {}.
    """
    start = time.perf_counter()
    out = Path(out)
    cfg = _run_config(TEXT_DEMO_TRAIN, steps, seed, backend)
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or per_prompt < 1:
        raise ValueError(f"per_prompt must be an integer >= 1, got {per_prompt!r}")
    check_sampling(TEXT_DEMO_SAMPLER, sample_steps, guidance, cfg.T)  # before minutes of training, not after
    check_demo_folder(out, force, TEXT_OUTPUTS)
    x, captions, _ = load_captions(**TEXT_DEMO_IMAGES)
    comm = get_communicator()
    with hold_output(out, comm):
        state = train(cfg, TEXT_PRESETS["text16"](), x, tokenize(captions)[0], out, progress=progress, comm=comm,
                      overwrite=True, data_source={"data": "captions", "image_size": None})
        paths = {}
        with comm.abort_on_error():
            if comm.rank == 0:
                paths = _text_demo_outputs(out, state.losses, per_prompt, guidance, sample_steps, cfg, start)
    comm.barrier("rank 0's sampling and scoring")
    return paths


def _text_demo_outputs(out: Path, losses: list[float], per_prompt: int, guidance: float, sample_steps: int,
                       cfg: TrainConfig, start: float) -> dict[str, Path]:
    """The text demo's files after training: the loss curve, the prompt grid, the samples and the scores."""
    paths = {"checkpoint": out / "checkpoint.npz",
             "loss_curve": curves({"training loss": (np.arange(1, len(losses) + 1), np.asarray(losses))},
                                  out / "loss_curve.png", xlabel="step",
                                  ylabel=f"loss (MSE of eps, {cfg.weighting} weighting)")}
    loaded = load_model(out / "checkpoint.npz", backend=cfg.backend)
    prompts = SEEN_PROMPTS + HELD_OUT_PROMPTS
    images = sample_prompts(loaded, prompts, per_prompt, guidance, sample_steps, cfg.seed)
    rows = [p + ("\n(held out)" if p in HELD_OUT_PROMPTS else "") for p in prompts]
    paths["samples"] = image_grid(images, nrow=per_prompt, path=out / "samples.png", row_labels=rows,
                                  title=f"{TEXT_DEMO_SAMPLER.upper()} {sample_steps} steps, guidance {guidance:g}: "
                                        "a row per prompt")
    np.savez(out / "samples.npz", images=images.astype(np.float32), prompts=np.repeat(np.array(prompts), per_prompt))
    paths["samples_npz"] = out / "samples.npz"
    report = score_prompts(images, prompts, per_prompt)
    print(format_prompt_scores(report, guidance))
    report.update(demo_seconds=time.perf_counter() - start, train_steps=cfg.steps, guidance=guidance,
                  sampler=TEXT_DEMO_SAMPLER, sample_steps=sample_steps, per_prompt=per_prompt)
    paths["metrics"] = out / "metrics.json"
    paths["metrics"].write_text(json.dumps(report, indent=2) + "\n")
    return paths


def sample_prompts(loaded, prompts: tuple[str, ...], per_prompt: int, guidance: float, sample_steps: int,
                   seed: int, sampler: str = TEXT_DEMO_SAMPLER) -> np.ndarray:
    """``per_prompt`` samples of each prompt from a text model, prompt by prompt: (P * per_prompt, C, H, W)
    host images clipped to [-1, 1], ``sampler`` (one of refdiff.generate.SAMPLERS) with classifier-free
    guidance ``guidance``."""
    tokens, _ = tokenize(list(np.repeat(np.array(prompts), per_prompt)), context=loaded.model_cfg.text.context_length)
    images = generate(loaded, (tokens.shape[0], *loaded.data_shape), tokens, sampler, sample_steps, guidance=guidance,
                      seed=seed)
    return np.clip(images, -1.0, 1.0)  # the final x0 is clipped already; float error may not be


def is_held_out(prompt: str) -> bool:
    """Whether a prompt names a (colour, shape) pair of refdiff.data.captions.HELD_OUT."""
    named = parse_captions(prompt)
    colour, shape = int(named["colour"][0]), int(named["shape"][0])
    return colour >= 0 and shape >= 0 and (COLOURS[colour], SHAPES[shape]) in HELD_OUT


def score_prompts(images: np.ndarray, prompts: tuple[str, ...], per_prompt: int, classifier=None) -> dict:
    """caption_fidelity of the samples of seen and of held-out compositions apart (is_held_out), and the
    diversity of each prompt's samples, averaged over the prompts of each group.

    images: (P * per_prompt, 3, 16, 16) in [-1, 1], the samples of prompt p in rows p * per_prompt onward;
    classifier: the shape classifier (the shipped one if None). Returns {"seen": ..., "held_out": ...}, each
    {"prompts", "fraction", "correct", "named" (per attribute and "all"), "diversity" (None if per_prompt
    is 1)} for a group with prompts, and "shape_classifier_accuracy".
    """
    classifier = shape_classifier() if classifier is None else classifier
    by_prompt = images.reshape(len(prompts), per_prompt, *images.shape[1:])  # (P, per_prompt, 3, 16, 16)
    report = {}
    for group in ("seen", "held_out"):
        which = [i for i, p in enumerate(prompts) if is_held_out(p) == (group == "held_out")]
        if not which:
            continue
        named = list(np.repeat(np.array(prompts)[which], per_prompt))
        scores = caption_fidelity(by_prompt[which].reshape(-1, *images.shape[1:]), named, classifier)
        spread = [diversity(by_prompt[i]) for i in which] if per_prompt >= 2 else None
        report[group] = {"prompts": [prompts[i] for i in which],
                         **{k: scores[k] for k in ("fraction", "correct", "named")},
                         "diversity": None if spread is None else float(np.mean(spread))}
    report["shape_classifier_accuracy"] = classifier.test_accuracy
    return report


def format_prompt_scores(report: dict, guidance: float) -> str:
    """score_prompts' numbers as a printable table: a row per group, the fraction right per attribute."""
    columns = (*ATTRIBUTES, "all")
    lines = [f"caption fidelity at guidance {guidance:g} (fraction of samples right; all: every attribute named)",
             f"{'':<24}" + "".join(f"{k:>10}" for k in columns) + f"{'diversity':>11}"]
    for group, title in (("seen", "seen compositions"), ("held_out", "held-out compositions")):
        if group in report:
            row = report[group]
            spread = "-" if row["diversity"] is None else f"{row['diversity']:.3f}"
            lines.append(f"{title:<24}" + "".join(f"{row['fraction'][k]:>10.1%}" for k in columns) + f"{spread:>11}")
    lines.append(f"(the shape classifier reads {report['shape_classifier_accuracy']:.2%} of fresh real images right)")
    return "\n".join(lines)
