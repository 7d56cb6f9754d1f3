"""One model interface: every trainable model family as one frozen record, found by its config type or
by the name checkpoints store (docs/design.md rule 11).

Training, generation, the CLI and checkpoint loading ask this module for a family's functions and
never name a family themselves, so a new family (a text model, a GAN, VAE or flow baseline) is one
module with the functions below and one entry in FAMILIES.

    name          what a checkpoint stores in config["model"]["kind"]: the config class's name when the
                  family was added (never changed, so old checkpoints keep loading)
    task          what forward computes, which decides its signature and who trains it:
                  "denoiser"    forward(params, cfg, x, t, y=None, train=False, generator=None)
                                -> (out like x: eps, x0 or v [+ variance channels], cache);
                                model(params, cfg) -> model(xt, t, y=None), the samplers' protocol;
                                y as ``condition`` says (refdiff.train)
                  "classifier"  forward(params, cfg, x, t, train=False, generator=None)
                                -> (logits (N, K), cache); model(params, cfg) -> classify(x, t)
                                (refdiff.classifier_train)
                  "contrastive" forward(params, cfg, x, t, train=False, generator=None)
                                -> (f (N, E) unit image embeddings, cache): a CLIP's image side, what
                                CLIP guidance differentiates; backward gives the "image.*" keys only,
                                the text side is refdiff.models.clip.clip_text_forward / _backward;
                                model(params, cfg) -> embed(x, t) (refdiff.clip_train)
    config        the frozen dataclass of the architecture, validated on construction
    param_shapes  cfg -> {dotted key: shape}, in the order of init_params and backward
    init_params   (cfg, generator, dtype) -> {key: NumPy host array}
    forward       the task's forward (above): the plain function over the whole batch
    backward      (dout, cache, need_dx=False) -> grads (params' keys), or (grads, dx) with need_dx
    in_parts()    (forward, backward) in batch parts on the host's cores (refdiff.parallel), as training
                  runs them (derived, like param_count(cfg), the total size of param_shapes(cfg))
    model         (params, cfg) -> the evaluation-mode callable of the task (no activations kept)
    flops         (cfg, image_size=None) -> ([(layer, multiply-adds)], total), or None
    summary       (cfg, image_size=None) -> the text ``refdiff info --model`` prints, or None
    condition     what a denoiser's y is (CONDITIONS): "label", (N,) integers, the null label
                  cfg.num_classes (None: unconditional); or "tokens", (N, L) caption tokens, the null
                  input the empty caption, all cfg.pad_token (null_condition gives the fill value)

The Gaussian-mixture denoiser (refdiff.models.gaussian_mixture) is exact, not trained, and not here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from refdiff.models import classifier, clip, mlp, text_unet, unet
from refdiff.models.common import count_params
from refdiff.parallel import in_parts

TASKS = ("denoiser", "classifier", "contrastive")
CONDITIONS = ("label", "tokens")


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family's functions (module docstring); ``param_count`` is derived from param_shapes."""

    name: str
    task: str
    config: type
    param_shapes: Callable
    init_params: Callable
    forward: Callable
    backward: Callable
    model: Callable
    flops: Callable | None = None
    summary: Callable | None = None
    condition: str = "label"

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, got {self.condition!r}")

    def param_count(self, cfg: Any) -> int:
        """Number of scalar parameters of the model cfg describes (no arrays are built)."""
        return count_params(self.param_shapes(cfg))

    def in_parts(self) -> tuple[Callable, Callable]:
        """(forward, backward) run in batch parts on the host's cores, as training calls them
        (refdiff.parallel.in_parts: same signatures; a GPU batch, or the reference path, is one part)."""
        return in_parts(self.forward, self.backward)


FAMILIES: tuple[Family, ...] = (
    Family("UNetConfig", "denoiser", unet.UNetConfig, unet.param_shapes, unet.init_params, unet.unet_forward,
           unet.unet_backward, unet.unet_model, unet.flops, unet.summary),
    Family("MLPConfig", "denoiser", mlp.MLPConfig, mlp.param_shapes, mlp.init_params, mlp.mlp_forward,
           mlp.mlp_backward, mlp.mlp_model),
    Family("ClassifierConfig", "classifier", classifier.ClassifierConfig, classifier.param_shapes,
           classifier.init_params, classifier.classifier_forward, classifier.classifier_backward,
           classifier.classifier_model, classifier.flops, classifier.summary),
    Family("TextUNetConfig", "denoiser", text_unet.TextUNetConfig, text_unet.param_shapes, text_unet.init_params,
           text_unet.text_unet_forward, text_unet.text_unet_backward, text_unet.text_unet_model, text_unet.flops,
           text_unet.summary, condition="tokens"),
    Family("ClipConfig", "contrastive", clip.ClipConfig, clip.param_shapes, clip.init_params,
           clip.clip_image_forward, clip.clip_image_backward, clip.clip_image_model),
)


def families(task: str | None = None) -> tuple[Family, ...]:
    """The registered families, in FAMILIES' order; with ``task`` only those of that task."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return tuple(f for f in FAMILIES if task is None or f.task == task)


def family(cfg: Any, task: str | None = None, argument: str = "model_cfg") -> Family:
    """The family whose config type is cfg's (cfg an instance or the type itself), of ``task`` if given.

    Raises a ValueError naming ``argument`` and the allowed config types otherwise.
    """
    cfg_type = cfg if isinstance(cfg, type) else type(cfg)
    allowed = families(task)
    for f in allowed:
        if f.config is cfg_type:
            return f
    names = ", ".join(f.config.__name__ for f in allowed)
    raise ValueError(f"{argument} must be one of {names}, got {cfg_type.__name__}")


def by_name(name: str, task: str | None = None) -> Family:
    """The family a checkpoint's stored name (config["model"]["kind"]) names, of ``task`` if given."""
    allowed = families(task)
    for f in allowed:
        if f.name == name:
            return f
    other = [f.task for f in FAMILIES if f.name == name]  # a registered kind of another task: say which
    task_of = f" (a {other[0]} model, not a {task})" if other else ""
    raise ValueError(f"model kind must be one of {', '.join(f.name for f in allowed)}, got {name!r}{task_of}")


def null_condition(cfg: Any) -> int | None:
    """The fill value of a denoiser's null input, what classifier-free guidance and label dropout feed it
    for "no condition": y filled with it is the null label K = cfg.num_classes of a "label" family (None
    for an unconditional model), the empty caption (all cfg.pad_token) of a "tokens" family."""
    if family(cfg, "denoiser", argument="cfg").condition == "tokens":
        return cfg.pad_token
    return getattr(cfg, "num_classes", None)


def config_to_dict(cfg: Any) -> dict:
    """What a checkpoint stores of a model config: {"kind": the family's name, every field}."""
    return {"kind": family(cfg, argument="cfg").name, **dataclasses.asdict(cfg)}


def config_from_dict(model: dict, task: str | None = None) -> Any:
    """The model config a checkpoint's ``config["model"]`` describes (config_to_dict's inverse after a
    JSON round trip: lists become tuples again), of a family of ``task`` if given."""
    f = by_name(model.get("kind"), task)
    return f.config(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if k != "kind"})


def sample_bytes(cfg: Any, data_shape: tuple[int, ...], dtype: str = "float32") -> int:
    """Bytes of the activations one sample of ``data_shape`` adds to a training forward's cache for the
    model cfg describes: the cache of two zero samples less that of one (which holds the parameters'
    share too). What memory estimates multiply by the batch. A denoiser family's config; an inpainting
    model's input has its 2C + 1 channels (x_t and the conditioning channels) for data of C."""
    import numpy as np

    from refdiff.backend import Generator

    f = family(cfg, "denoiser", argument="cfg")
    params = f.init_params(cfg, Generator(0), dtype=np.dtype(dtype))
    total = []
    for n in (1, 2):
        x, t = np.zeros((n, *data_shape), dtype=dtype), np.zeros(n, dtype=np.int64)
        if getattr(cfg, "inpaint", False):
            x = np.zeros((n, cfg.unet.in_channels, *data_shape[1:]), dtype=dtype)  # (n, 2C + 1, H, W)
        y = np.zeros(n, dtype=np.int64) if getattr(cfg, "num_classes", None) else None
        total.append(_nbytes(f.forward(params, cfg, x, t, y, train=True, generator=Generator(0))[1], set()))
    return total[1] - total[0]


def _nbytes(obj: Any, seen: set) -> int:
    """Total bytes of the distinct arrays inside nested tuples, lists and dicts."""
    if hasattr(obj, "nbytes") and hasattr(obj, "shape"):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return int(obj.nbytes)
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(v, seen) for v in obj)
    return 0
