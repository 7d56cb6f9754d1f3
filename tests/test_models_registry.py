"""Specification of refdiff.models.registry: the one model interface of every trainable family, and that
training, generation and checkpoints go through it (a family added there alone trains and samples)."""

import dataclasses
import json
from typing import NamedTuple

import numpy as np
import pytest

from refdiff.backend import Generator
from refdiff.generate import generate, load_model
from refdiff.models import registry
from refdiff.models.classifier import ClassifierConfig
from refdiff.models.clip import IMAGE, ClipConfig
from refdiff.models.mlp import MLPConfig
from refdiff.models.text_encoder import TextEncoderConfig
from refdiff.models.text_unet import TextUNetConfig
from refdiff.models.unet import UNetConfig
from refdiff.train import TrainConfig, train
from support import TOLERANCE, host_data, random_params

# One small config per registered family, with the shape of one input sample. A new family adds its
# line here (test_every_registered_family_has_a_config_here).
CONFIGS = {
    "UNetConfig": (UNetConfig(in_channels=2, out_channels=2, image_size=8, base_channels=8, channel_mult=(1, 2),
                              num_res_blocks=1, attention_resolutions=(4,), heads=2, groups=4, num_classes=3,
                              learn_sigma=True, time_embed_dim=12), (2, 8, 8)),
    "MLPConfig": (MLPConfig(data_dim=3, hidden=8, depth=2, time_embed_dim=4, num_classes=2), (3,)),
    "ClassifierConfig": (ClassifierConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
                                          groups=4, num_classes=5, time_embed_dim=12), (1, 8, 8)),
    "TextUNetConfig": (TextUNetConfig(unet=UNetConfig(in_channels=2, out_channels=2, image_size=8, base_channels=8,
                                                      channel_mult=(1, 2), groups=4, time_embed_dim=12),
                                      text=TextEncoderConfig(vocab_size=5, context_length=4, width=4, layers=1,
                                                             heads=2)), (2, 8, 8)),
    "ClipConfig": (ClipConfig(embed_dim=4, in_channels=2, image_size=8, base_channels=8, groups=4, time_embed_dim=12,
                              vocab_size=5, context_length=4, text_width=4, text_layers=1, text_heads=2), (2, 8, 8)),
}
# What y is for a denoiser of each condition, for a batch of 3: labels, or captions of 2, 0 and 3 tokens.
CONDITIONS = {"label": np.array([0, 1, 1]), "tokens": np.array([[1, 2, 0], [0, 0, 0], [3, 1, 4]])}
# The names checkpoints have stored in config["model"]["kind"] since each family was added: they never change.
STORED = {"UNetConfig": UNetConfig, "MLPConfig": MLPConfig, "ClassifierConfig": ClassifierConfig,
          "TextUNetConfig": TextUNetConfig, "ClipConfig": ClipConfig}


def test_every_registered_family_has_a_config_here():
    """CONFIGS covers exactly the registered families, and every stored checkpoint name still names its family."""
    assert sorted(CONFIGS) == sorted(f.name for f in registry.FAMILIES)
    for name, config in STORED.items():
        assert registry.by_name(name).config is config


@pytest.mark.parametrize("name", CONFIGS)
def test_config_round_trips_through_the_name_a_checkpoint_stores(name):
    """family(cfg) == family(type(cfg)) == by_name(its name), and config_from_dict(JSON of config_to_dict(cfg))
    == cfg: what a checkpoint stores gives back the config and its family."""
    cfg, _ = CONFIGS[name]
    family = registry.family(cfg)
    assert family.name == name and family.config is type(cfg)
    assert registry.family(type(cfg)) is family is registry.by_name(name) is registry.by_name(name, family.task)
    assert family in registry.families(family.task) and family.task in registry.TASKS
    stored = json.loads(json.dumps(registry.config_to_dict(cfg)))  # tuples come back as lists
    assert stored == {"kind": name, **json.loads(json.dumps(dataclasses.asdict(cfg)))}
    assert registry.config_from_dict(stored) == cfg == registry.config_from_dict(stored, family.task)


@pytest.mark.parametrize("name", CONFIGS)
def test_init_forward_backward_and_model_agree_on_shapes(name):
    """init_params has param_shapes' keys (in order) and shapes, param_count == sum of their sizes;
    forward gives (N, ...) like x for a denoiser, (N, K) logits for a classifier and (N, E) unit image
    embeddings for a CLIP; backward gives grads with the params' keys and shapes (a CLIP's image side:
    its "image." keys); model(params, cfg) is forward in evaluation mode, and
    in_parts() the same pair; summary (where offered) states param_count and flops' total."""
    cfg, sample = CONFIGS[name]
    family = registry.family(cfg)
    shapes = family.param_shapes(cfg)
    init = family.init_params(cfg, Generator(0), np.float64)
    assert list(init) == list(shapes) and {k: v.shape for k, v in init.items()} == shapes
    assert family.param_count(cfg) == sum(v.size for v in init.values())
    params = random_params(shapes, seed=1)
    x, t = host_data(2, (3, *sample)), np.array([0, 5, 999])
    inputs = (x, t, CONDITIONS[family.condition]) if family.task == "denoiser" else (x, t)
    out, cache = family.forward(params, cfg, *inputs)
    if family.task == "denoiser":
        assert out.shape[0] == 3 and out.shape[2:] == x.shape[2:]
    elif family.task == "classifier":
        assert out.shape == (3, cfg.num_classes)
    else:
        assert out.shape == (3, cfg.embed_dim)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, *TOLERANCE["float64"])
        shapes = {k: v for k, v in shapes.items() if k.startswith(IMAGE)}
    grads = family.backward(host_data(3, out.shape), cache)
    assert list(grads) == list(shapes) and {k: v.shape for k, v in grads.items()} == shapes
    np.testing.assert_allclose(family.model(params, cfg)(*inputs), out, *TOLERANCE["float64"])
    forward, backward = family.in_parts()
    parts_out, parts_cache = forward(params, cfg, *inputs)
    np.testing.assert_allclose(parts_out, out, *TOLERANCE["float64"])
    for key, g in backward(host_data(3, out.shape), parts_cache).items():
        np.testing.assert_allclose(g, grads[key], *TOLERANCE["float64"], err_msg=key)
    if family.summary is not None:
        text = family.summary(cfg)
        assert f"parameters: {family.param_count(cfg):,}" in text
        assert f"{family.flops(cfg)[1] / 1e6:.1f} M multiply-adds" in text


def test_null_condition_is_the_null_label_or_the_padding_token():
    """null_condition(cfg) is K = num_classes for a "label" family (None when unconditional) and the padding
    token for a "tokens" family, whose y filled with it is the empty caption; a classifier has none, and a
    family of another condition is refused naming the allowed ones."""
    assert registry.null_condition(CONFIGS["UNetConfig"][0]) == 3
    assert registry.null_condition(dataclasses.replace(CONFIGS["MLPConfig"][0], num_classes=None)) is None
    assert registry.null_condition(CONFIGS["TextUNetConfig"][0]) == 0
    assert registry.family(CONFIGS["TextUNetConfig"][0]).condition == "tokens"
    with pytest.raises(ValueError, match="cfg must be one of .*, got ClassifierConfig"):
        registry.null_condition(CONFIGS["ClassifierConfig"][0])
    with pytest.raises(ValueError, match="condition must be one of label, tokens, got 'image'"):
        dataclasses.replace(registry.family(CONFIGS["UNetConfig"][0]), condition="image")


def test_lookups_name_the_argument_and_the_allowed_families():
    """A config of no family, a family of another task, an unknown stored name and an unknown task raise
    ValueErrors that name what was given and what is allowed (and the task of a stored name of another
    task: a CLIP checkpoint given to ``refdiff sample`` says it is a contrastive model)."""
    with pytest.raises(ValueError, match="model_cfg must be one of UNetConfig, MLPConfig, ClassifierConfig, "
                                         "TextUNetConfig, ClipConfig, got dict"):
        registry.family({})
    with pytest.raises(ValueError,
                       match="cfg must be one of UNetConfig, MLPConfig, TextUNetConfig, got ClassifierConfig"):
        registry.family(CONFIGS["ClassifierConfig"][0], "denoiser", argument="cfg")
    with pytest.raises(ValueError, match=r"model kind must be one of ClassifierConfig, got 'MLPConfig' "
                                         r"\(a denoiser model, not a classifier\)"):
        registry.config_from_dict({"kind": "MLPConfig"}, "classifier")
    with pytest.raises(ValueError, match=r"got 'ClipConfig' \(a contrastive model, not a denoiser\)"):
        registry.by_name("ClipConfig", "denoiser")
    with pytest.raises(ValueError, match="model kind must be one of .*, got 'GANConfig'"):
        registry.by_name("GANConfig")
    with pytest.raises(ValueError, match="task must be one of denoiser, classifier, contrastive, got 'gan'"):
        registry.families("gan")


# ------------------------------------------------------ a family added in one place trains and samples

@dataclasses.dataclass(frozen=True)
class LinearConfig:
    """A denoiser no module of refdiff knows: out = x W (t and y ignored)."""

    data_dim: int = 2
    num_classes: int | None = None


class LinearCache(NamedTuple):
    x: np.ndarray


def _linear_forward(params, cfg, x, t, y=None, train=False, generator=None):
    return x @ params["w"], LinearCache(x)


def _linear_backward(dout, cache, need_dx=False):
    return {"w": cache.x.T @ dout}  # out = x W: dW = x^T dout


LINEAR = registry.Family(
    "LinearConfig", "denoiser", LinearConfig, lambda cfg: {"w": (cfg.data_dim, cfg.data_dim)},
    lambda cfg, generator, dtype=np.float32: {"w": generator.normal((cfg.data_dim, cfg.data_dim), dtype=dtype)},
    _linear_forward, _linear_backward, lambda params, cfg: lambda xt, t, y=None: _linear_forward(params, cfg, xt, t)[0])


def test_a_family_registered_in_one_place_trains_resumes_and_samples(tmp_path, monkeypatch):
    """With LinearConfig's family appended to FAMILIES and nothing else changed, train() initialises,
    steps and checkpoints it (the checkpoint stores kind "LinearConfig"), resumes it, and load_model +
    generate rebuild and sample it: train, generate and checkpoint loading find models by the registry."""
    monkeypatch.setattr(registry, "FAMILIES", registry.FAMILIES + (LINEAR,))
    cfg, model_cfg = TrainConfig(steps=4, batch_size=8, warmup_steps=1, T=10, checkpoint_every=2), LinearConfig()
    x = host_data(0, (64, 2), scale=0.5)
    train(cfg, model_cfg, x, None, tmp_path, progress=False, stop_at=2)
    state = train(cfg, model_cfg, x, None, tmp_path, progress=False, resume=True)
    assert state.step == 4 and state.params["w"].shape == (2, 2)
    loaded = load_model(tmp_path / "checkpoint.npz", dtype="float64")
    assert loaded.model_cfg == model_cfg
    np.testing.assert_array_equal(loaded.model(x[:3], np.zeros(3, dtype=np.int64)), x[:3] @ state.ema["w"])
    assert generate(loaded, (5, 2), sampler="ddim", steps=3).shape == (5, 2)
