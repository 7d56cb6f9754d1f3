"""``refdiff compare``: the four families of generative models on the same data, in one table (docs/families.md).

``run_compare(out, settings)`` trains a class-conditional model of each family on the embedded digits' training
split, at roughly matched parameter counts (CONFIGS: about 40k each) and the same budget of CPU time each
(``settings.seconds``, CLOCK), then scores every family's samples in the same way against the 180 held-out digits:

  1. train each family for ``seconds``: diffusion (Algorithm 1, ``refdiff.train.train_step``, in the small
     trainers' time-budgeted loop ``refdiff.run_config.run_steps``; the EMA weights are the model), the GAN
     (``refdiff.gan_train``), the VAE (``refdiff.vae_train``), the RealNVP flow (``refdiff.flow_train``);
  2. held-out bits/dim where the family defines one, each an upper bound on -log2 P(x | y) / D of the discrete
     digits: diffusion's variational bound (``refdiff.likelihood.bits_per_dim``, on the schedule respaced to
     ``vlb_steps`` steps, all of them by default), the VAE's IWAE bound, the flow's exact likelihood of the
     dequantised digits; none for the GAN, which has no density;
  3. ``per_class`` samples of every class, timed: diffusion by DDIM with classifier-free guidance at each scale of
     GUIDANCE (one row per scale, one training), the others in one pass of their generator;
  4. the scores (``refdiff.digits_eval``): Frechet distance, precision, recall, class fraction, Inception-Score
     analogue; and two stability readings: the worst class's recall (``per_class_coverage``: a collapsed class
     shows there) and the loss regress (``loss_regress``: where a family's loss ended between its best and its
     worst window; none for the GAN, whose losses are a two-player game's, not a measure of progress);
  5. print the table and write compare.json and compare_samples.png (a sample grid per row, side by side).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, asarray
from refdiff.data.digits import NUM_CLASSES
from refdiff.demo import DEMO_TRAIN
from refdiff.digits_eval import digit_classifier, digit_sample_report, digit_split, per_class_coverage
from refdiff.flow_train import FlowTrainConfig, flow_bits_per_dim, flow_samples, train_flow
from refdiff.gan_train import GANTrainConfig, gan_samples, train_gan
from refdiff.generate import LoadedModel, check_sampling, generate
from refdiff.likelihood import bits_per_dim
from refdiff.models import flow, gan, registry, vae
from refdiff.models.presets import digits8, digits8_flow, digits8_gan, digits8_vae
from refdiff.plot import image_grids
from refdiff.run_config import TrainedRun, check_count, check_positive, run_steps
from refdiff.train import TrainConfig, train_step
from refdiff.train_state import init_state
from refdiff.vae_train import VAETrainConfig, train_vae, vae_bits_per_dim, vae_samples

FAMILIES = ("diffusion", "gan", "vae", "flow")
# About 40k parameters each (every count is printed): the digits8 U-Net narrowed to 8 base channels (45k; the
# demo's 16 give 178k), the GAN's two networks together widened to 20 and 40 channels (39k, the generator 25k),
# the VAE and flow presets as docs/families.md measured them (40k, 41k).
CONFIGS = {"diffusion": digits8(NUM_CLASSES, base_channels=8, time_embed_dim=32, groups=4),
           "gan": digits8_gan(NUM_CLASSES, channels=(20, 40)),
           "vae": digits8_vae(NUM_CLASSES),
           "flow": digits8_flow(NUM_CLASSES)}
# The learning-rate schedules' length: far past what the budget allows (40 CPU s gave 1000 to 4500 steps), so the
# budget stops every family, and the cosine decays (diffusion, VAE, flow) are cut alike, part way. Each family
# keeps its own measured learning rate (docs/families.md). With the examples' 3000 steps the VAE ended its
# schedule after 26 of its 40 CPU s.
SCHEDULE_STEPS = 10_000
TRAIN = {"diffusion": dataclasses.replace(DEMO_TRAIN, steps=SCHEDULE_STEPS, checkpoint_every=SCHEDULE_STEPS),
         "gan": GANTrainConfig(steps=100_000, batch_size=64, lr_g=2e-4, lr_d=2e-4),     # constant: DCGAN's
         "vae": VAETrainConfig(steps=SCHEDULE_STEPS, batch_size=64),
         "flow": FlowTrainConfig(steps=SCHEDULE_STEPS, batch_size=64, lr=3e-3)}
# The budget counts this process's CPU seconds (refdiff.run_config.CLOCKS): on a machine shared with other work,
# wall time would give each family whatever share of the cores the others left it in its minute.
CLOCK = "cpu"
GUIDANCE = (1.0, 3.0)  # diffusion's rows: the conditional model alone, and the demo's classifier-free guidance
LEVELS = 17            # the digits' grey levels
MAX_PER_CLASS = 1000   # samples of each class per row: 10,000 images, far past any use


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """What a comparison run does besides the families' fixed CONFIGS and TRAIN."""

    seconds: float = 40.0    # training budget of every family, in CPU seconds (CLOCK)
    per_class: int = 20      # samples of each class per row (at least 4: the per-class recall's k-NN needs k + 1)
    sample_steps: int = 50   # diffusion's DDIM steps
    vlb_steps: int = 1000    # diffusion's bound on the schedule respaced to this many steps (0: not computed)
    iwae_k: int = 100        # importance samples of the VAE's bound
    flow_draws: int = 4      # dequantisation draws of the flow's bound
    seed: int = 0

    def __post_init__(self):
        check_positive("seconds", self.seconds)
        check_count("per_class", self.per_class, 4)
        if self.per_class > MAX_PER_CLASS:
            raise ValueError(f"per_class must be an integer in [4, {MAX_PER_CLASS}], got {self.per_class}")
        T = TRAIN["diffusion"].T
        check_sampling("ddim", self.sample_steps, 1.0, T)
        vlb = self.vlb_steps
        if isinstance(vlb, bool) or not isinstance(vlb, int) or not 0 <= vlb <= T:
            raise ValueError(f"vlb_steps must be an integer in [0, {T}] (0: no bound), got {vlb!r}")
        for name in ("iwae_k", "flow_draws"):
            check_count(name, getattr(self, name))
        check_count("seed", self.seed, 0)


# ------------------------------------------------------------------------------------------- the families

class _Budget(NamedTuple):
    """What run_steps reads of a config: the steps at most, the time budget and its clock."""

    steps: int
    max_seconds: float
    budget_clock: str


def train_diffusion(train_cfg: TrainConfig, model_cfg: Any, x: np.ndarray, y: np.ndarray, seconds: float,
                    clock: str = "cpu", progress: bool = False) -> TrainedRun:
    """refdiff.train.train_step (Ho et al. 2020, Alg. 1) from a fresh state, in run_steps' loop for ``seconds`` on
    the clock refdiff.run_config.CLOCKS[clock] (train_cfg.steps at most), without checkpoints. Returns a TrainedRun
    whose params are the EMA."""
    state, schedule, info = init_state(train_cfg, model_cfg), train_cfg.schedule_obj(), {}
    for _, bar in run_steps(_Budget(train_cfg.steps, seconds, clock), "diffusion", progress, info):
        loss = train_step(train_cfg, model_cfg, schedule, state, x, y)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return TrainedRun(state.ema, model_cfg, train_cfg, state.losses, info)


def diffusion_model(run: TrainedRun, dtype: str = "float32", data_shape: tuple = (1, 8, 8),
                    data_bound: float = 1.0) -> LoadedModel:
    """The trained denoiser (run.params, in dtype) as refdiff.generate's LoadedModel, for generate and the bound;
    data_shape: one sample's (the digits' by default), data_bound: the training data's max |x| (generate clips x0
    of points to it)."""
    params = {k: np.asarray(v, dtype=dtype) for k, v in run.params.items()}
    model = registry.family(run.cfg, "denoiser").model(params, run.cfg)
    like = next(iter(params.values()))
    return LoadedModel(model, run.cfg, dataclasses.asdict(run.train_cfg), tuple(data_shape),
                       run.train_cfg.schedule_obj(), like, float(data_bound))


def diffusion_bits_per_dim(run: TrainedRun, x: np.ndarray, y: np.ndarray, steps: int, seed: int,
                           progress: bool = False) -> dict:
    """{"bits_per_dim": the mean variational bound of the digits x given labels y (Ho et al. 2020, eq. 5; float64),
    "steps": steps, and its parts "prior", "decoder", "kl_terms"}: on the schedule respaced to ``steps`` steps
    (linspace: t = T - 1 and t = 0 kept; all T steps give the model's full bound, fewer the bound of the model
    respaced to them, a quicker and different number), the discretized decoder on LEVELS levels."""
    loaded = diffusion_model(run, "float64")
    schedule = loaded.schedule
    if steps < schedule.T:
        schedule = schedules.respace(schedule, schedules.timesteps(schedule.T, steps, "linspace"))
    x0, labels = asarray(x.astype(np.float64), like=loaded.like), asarray(y.astype(np.int64), like=loaded.like)
    result = bits_per_dim(loaded.model, schedule, x0, Generator(seed), labels, param=run.train_cfg.parameterization(),
                          levels=LEVELS, progress=progress)
    return {"bits_per_dim": float(np.mean(result.total)), "steps": int(steps),           # and its parts:
            "prior": float(np.mean(result.prior)), "decoder": float(np.mean(result.terms[:, 0])),  # L_T, L_0
            "kl_terms": float(np.mean(np.sum(result.terms[:, 1:], axis=1)))}                 # sum of L_1..L_{S-1}


def _ddim(loaded: LoadedModel, steps: int, guidance: float, labels: np.ndarray, seed: int) -> np.ndarray:
    """Samples of labels by DDIM (eta 0) with classifier-free guidance scale ``guidance``."""
    return generate(loaded, (labels.size, *loaded.data_shape), labels, "ddim", steps, guidance=guidance, seed=seed)


def train_family(name: str, s: CompareSettings, x: np.ndarray, y: np.ndarray | None, progress: bool = False,
                 configs: dict = CONFIGS, train: dict = TRAIN) -> Any:
    """configs[name] trained by its family's trainer with train[name], for s.seconds of CPU time (CLOCK) and seed
    s.seed, on the data x with labels y (None: unconditional; the defaults are the digits' models). Returns the
    trainer's result: a TrainedRun (diffusion's, its params the EMA), TrainedGAN, TrainedVAE or TrainedFlow."""
    if name == "diffusion":
        return train_diffusion(dataclasses.replace(train[name], seed=s.seed), configs[name], x, y, s.seconds,
                               CLOCK, progress)
    trainer = {"gan": train_gan, "vae": train_vae, "flow": train_flow}[name]
    budgeted = dataclasses.replace(train[name], max_seconds=float(s.seconds), budget_clock=CLOCK, seed=s.seed)
    return trainer(budgeted, configs[name], x, y, progress)


def held_out_bits_per_dim(name: str, run: TrainedRun, s: CompareSettings, split: tuple,
                          progress: bool = False) -> dict | None:
    """The family's bound on the held-out digits given their labels, {"bits_per_dim": ..., ...}; None for the GAN
    (no density) and for diffusion with s.vlb_steps = 0. The VAE reports its IWAE bound (the tighter one) and
    its ELBO beside it."""
    _, x_test, _, y_test = split
    if name == "diffusion" and s.vlb_steps:
        return diffusion_bits_per_dim(run, x_test, y_test, s.vlb_steps, s.seed, progress)
    if name == "vae":
        bounds = vae_bits_per_dim(run, x_test, y_test, k=s.iwae_k, seed=s.seed)
        return {"bits_per_dim": bounds["iwae"], "elbo": bounds["elbo"], "k": bounds["k"]}
    if name == "flow":
        return flow_bits_per_dim(run, x_test, y_test, draws=s.flow_draws, seed=s.seed)
    return None


def sample_rows(name: str, run: TrainedRun, s: CompareSettings) -> dict[str, Callable]:
    """The family's rows of the table, {row name: sample(labels, seed) -> (N, 1, 8, 8) host images}: diffusion
    one per guidance scale of GUIDANCE (DDIM, s.sample_steps steps), the others one (their generator's pass)."""
    if name == "diffusion":
        loaded = diffusion_model(run)
        return {f"diffusion, guidance {g:g}": _bind(_ddim, loaded, s.sample_steps, g) for g in GUIDANCE}
    sample = {"gan": gan_samples, "vae": vae_samples, "flow": flow_samples}[name]
    return {name: lambda labels, seed: sample(run, labels.size, labels, seed)}


def _bind(fn: Callable, *args: Any) -> Callable:
    """fn with its first arguments bound: sample(labels, seed) -> fn(*args, labels, seed)."""
    return lambda labels, seed: fn(*args, labels, seed)


def param_counts(name: str, configs: dict = CONFIGS) -> tuple[int, int]:
    """(parameters trained, parameters that sample) of configs[name]: the same for diffusion and the flow; the
    GAN's generator and the VAE's decoder (with its label table) sample, its discriminator or encoder is trained
    and then left out."""
    cfg = configs[name]
    if name == "diffusion":
        n = registry.family(cfg, "denoiser").param_count(cfg)
        return n, n
    if name == "flow":
        return flow.param_count(cfg), flow.param_count(cfg)
    shapes = {"gan": gan, "vae": vae}[name].param_shapes(cfg)
    sampler = gan.generator_keys(cfg) if name == "gan" else [k for k in shapes if not k.startswith("enc.")]
    return sum(math.prod(v) for v in shapes.values()), sum(math.prod(shapes[k]) for k in sampler)


# ------------------------------------------------------------------------------------------ the scores

def loss_regress(losses: list[float], windows: int = 10) -> float:
    """How much of its range the loss gave back by the end: (m_last - min m) / (max m - min m) over the means m of
    ``windows`` consecutive equal windows of the log (fewer for a short log); 0 when the last window is the best,
    1 when it is the worst, 0 for a flat log. A stationary objective that still improves reads near 0."""
    w = max(1, len(losses) // windows)
    m = np.mean(np.reshape(np.asarray(losses[: len(losses) // w * w], dtype=np.float64), (-1, w)), axis=1)  # (n,)
    spread = float(np.max(m) - np.min(m))
    return float((m[-1] - np.min(m)) / spread) if spread > 0 else 0.0


def loss_curve(losses: list[float], points: int = 50) -> list[float]:
    """The loss log as the means of at most ``points`` consecutive equal windows (for compare.json)."""
    w = max(1, math.ceil(len(losses) / points))
    return [float(np.mean(losses[i : i + w])) for i in range(0, len(losses), w)]


def score_row(classifier: Any, images: np.ndarray, labels: np.ndarray, split: tuple, seed: int) -> dict:
    """A row's sample scores against the held-out digits (refdiff.digits_eval): fd, precision, recall,
    class_fraction, inception_score, and per_class [(class, recall, fraction classified as it)] with the worst
    class's recall."""
    x_train, x_test, y_train, y_test = split
    report = digit_sample_report(classifier, images, labels, (x_test, y_test), reference=(x_train, y_train),
                                 seed=seed)
    coverage = per_class_coverage(classifier, images, labels, (x_test, y_test))
    row = {k: report[k] for k in ("fd", "precision", "recall", "class_fraction", "inception_score")}
    reference = {k: report[k] for k in ("fd_floor", "fd_real", "inception_score_held_out",
                                        "classifier_test_accuracy")}
    return {**row, "worst_class_recall": min(r for _, r, _ in coverage), "per_class": coverage,
            "reference": reference}


def compare_family(name: str, s: CompareSettings, split: tuple, classifier: Any, labels: np.ndarray,
                   progress: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """Train, bound, sample and score one family: (its entry of compare.json, {row name: its images})."""
    run = train_family(name, s, split[0], split[2], progress)
    cpu = time.process_time()
    losses = run.losses if name != "gan" else run.g_losses
    params, sampler_params = param_counts(name)
    entry = {"params": params, "sampler_params": sampler_params, "train_steps": run.info["steps_done"],
             "train_seconds": run.info["train_seconds"], "train_cpu_seconds": run.info["train_cpu_seconds"],
             "bits_per_dim": held_out_bits_per_dim(name, run, s, split, progress),
             "bound_cpu_seconds": time.process_time() - cpu,
             "loss_regress": None if name == "gan" else loss_regress(losses), "losses": loss_curve(losses),
             "rows": {}}
    if name == "gan":
        entry["d_losses"] = loss_curve(run.d_losses)
    images = {}
    for row, sample in sample_rows(name, run, s).items():
        start, cpu = time.perf_counter(), time.process_time()
        images[row] = sample(labels, s.seed)
        entry["rows"][row] = {"sample_seconds_per_image": (time.perf_counter() - start) / labels.size,
                              "sample_cpu_seconds_per_image": (time.process_time() - cpu) / labels.size,
                              **score_row(classifier, images[row], labels, split, s.seed)}
    return entry, images


# ---------------------------------------------------------------------------------------------- the run

def run_compare(out: str | Path = "out/compare", settings: CompareSettings = CompareSettings(),
                progress: bool = True) -> dict:
    """Steps 1-5 of the module docstring into ``out`` (created where missing; its compare.json and
    compare_samples.png are replaced). Returns the report written to compare.json, with "files": the paths."""
    start, load_start, out = time.perf_counter(), os.getloadavg(), Path(out)
    split, classifier = digit_split(), digit_classifier()
    labels = np.repeat(np.arange(NUM_CLASSES), settings.per_class)                          # (10 per_class,)
    families, images = {}, {}
    for name in FAMILIES:
        families[name], shown = compare_family(name, settings, split, classifier, labels, progress)
        images.update(shown)
        done = families[name]
        print(f"{name}: {done['train_steps']} steps in {done['train_cpu_seconds']:.1f} CPU s "
              f"({done['train_seconds']:.1f} s of wall time)")
    reference = next(iter(families["diffusion"]["rows"].values()))["reference"]
    report = {"settings": dataclasses.asdict(settings), "families": families, "reference": reference,
              "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
              "wall_seconds": time.perf_counter() - start}
    out.mkdir(parents=True, exist_ok=True)
    per_row = min(settings.per_class, 10)
    shown = np.concatenate([np.flatnonzero(labels == k)[:per_row] for k in range(NUM_CLASSES)])  # (10 per_row,)
    title = f"{settings.seconds:g} CPU s of training each: one row per class"
    figure = image_grids({row: x[shown] for row, x in images.items()}, per_row, out / "compare_samples.png", title)
    report["files"] = {"figure": str(figure), "json": str(out / "compare.json")}
    Path(report["files"]["json"]).write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    return report


# The table's columns: (header, format of the value); each column as wide as its header, at least 7.
COLUMNS = (("params", "{:.1f}k"), ("steps", "{}"), ("CPU s", "{:.1f}"), ("FD", "{:.3f}"), ("prec.", "{:.2f}"),
           ("recall", "{:.2f}"), ("class", "{:.1%}"), ("IS", "{:.2f}"), ("bits/dim", "{}"), ("CPU ms/image", "{:.3f}"),
           ("worst class", "{:.2f}"), ("regress", "{}"))
ROW_WIDTH = 22


def format_table(report: dict) -> str:
    """The report as the printed table: a line per row (a family, or diffusion at one guidance scale), the
    references under it."""
    widths = [max(7, len(name)) for name, _ in COLUMNS]
    lines = ["row".ljust(ROW_WIDTH) + " ".join(name.rjust(w) for (name, _), w in zip(COLUMNS, widths))]
    for family in report["families"].values():
        bpd = "n/a" if family["bits_per_dim"] is None else f"{family['bits_per_dim']['bits_per_dim']:.3f}"
        regress = "n/a" if family["loss_regress"] is None else f"{family['loss_regress']:.2f}"
        for row, r in family["rows"].items():
            values = (family["params"] / 1000, family["train_steps"], family["train_cpu_seconds"], r["fd"],
                      r["precision"], r["recall"], r["class_fraction"], r["inception_score"], bpd,
                      1000 * r["sample_cpu_seconds_per_image"], r["worst_class_recall"], regress)
            lines.append(row.ljust(ROW_WIDTH) + " ".join(fmt.format(v).rjust(w)
                                                          for (_, fmt), v, w in zip(COLUMNS, values, widths)))
    ref = report["reference"]
    lines.append("CPU s: training's (the budget); class: samples classified as their label; bits/dim: a held-out "
                 "upper bound; CPU ms/image: sampling's;\nworst class: the least per-class recall; regress: the loss's "
                 "end above its best, as a fraction of its range (n/a: the GAN's is a game's)")
    lines.append(f"references: FD floor (two halves of the held-out digits) {ref['fd_floor']:.3f}, real training "
                 f"digits {ref['fd_real']:.3f}; IS of the held-out digits {ref['inception_score_held_out']:.2f}")
    return "\n".join(lines)
