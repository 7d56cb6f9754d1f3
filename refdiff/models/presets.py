"""U-Net presets used by the CLI, the examples and the benchmarks.

Each preset is a function ``preset(num_classes=None, learn_sigma=False, **overrides) -> UNetConfig``;
``PRESETS`` maps the names ``refdiff train --preset`` accepts to them. ``**overrides`` replaces any
other field (``mnist28(dropout=0.1)``). ``refdiff info --model NAME`` prints the family's summary
(refdiff.models.registry) of ``PRESETS[NAME]()``: the config, the parameter count and the
multiply-adds of every layer. ``fit_data(cfg, (C, H, W))`` gives a preset's architecture for other
images (channels, resolution), as ``refdiff train`` does for the user's data.

``TEXT_PRESETS`` names the text-conditional U-Nets (refdiff.models.text_unet): ``preset(**overrides)
-> TextUNetConfig``, sized for a vocabulary and context of refdiff.data.captions.

``CLASSIFIER_PRESETS`` names the noisy classifiers (refdiff.models.classifier) that go with them:
``preset(num_classes=10, **overrides) -> ClassifierConfig``, each the encoder of the U-Net preset of
the same data (same channels, levels, embedding), pooled to ``num_classes`` logits.

``VAE_PRESETS`` names the VAEs (refdiff.models.vae), the baseline family of docs/families.md:
``preset(num_classes=None, **overrides) -> VAEConfig`` (or ``MLPVAEConfig`` for the 2-D toys).

``GAN_PRESETS`` names the GANs (refdiff.models.gan), the second baseline family of docs/families.md:
``preset(num_classes=None, **overrides) -> GANConfig`` (or ``MLPGANConfig`` for the 2-D toys).
``FLOW_PRESETS`` names the normalizing flows (refdiff.models.flow), docs/families.md's flow family:
``preset(num_classes=None, **overrides) -> FlowConfig`` (or ``MLPFlowConfig`` for the 2-D toys).

``CLIP_PRESETS`` names the noised CLIPs (refdiff.models.clip): ``preset(**overrides) -> ClipConfig``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from refdiff.models.classifier import ClassifierConfig
from refdiff.models.clip import ClipConfig
from refdiff.models.gan import GANConfig, MLPGANConfig
from refdiff.models.flow import FlowConfig, MLPFlowConfig
from refdiff.models.text_encoder import TextEncoderConfig
from refdiff.models.text_unet import TextUNetConfig
from refdiff.models.unet import UNetConfig
from refdiff.models.vae import MLPVAEConfig, VAEConfig


def digits8(num_classes: int | None = None, learn_sigma: bool = False, **overrides) -> UNetConfig:
    """1x8x8 (the embedded 8x8 digits): levels 8, 4 with 16 and 32 channels, one ResBlock down and two
    up per level, AdaGN, attention only in the middle block (at 4x4). Sized for ``refdiff demo``: its
    2000 training steps at batch 64 take about 3.5 minutes on a 2-core CPU (178k parameters)."""
    cfg = UNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=16, channel_mult=(1, 2),
                     num_res_blocks=1, attention_resolutions=(), heads=1, dropout=0.0, groups=8,
                     num_classes=num_classes, learn_sigma=learn_sigma, scale_shift_norm=True, time_embed_dim=64)
    return dataclasses.replace(cfg, **overrides)


def mnist28(num_classes: int | None = None, learn_sigma: bool = False, **overrides) -> UNetConfig:
    """1x28x28, the issue's benchmark model: base 32, multipliers (1, 2, 2) (levels 28, 14, 7), one
    ResBlock per level going down and two coming up with skip concatenation, GroupNorm with 8 groups,
    SiLU, sinusoidal time embedding -> MLP(32 -> 128 -> 128) added in every ResBlock (no AdaGN), the
    class embedding added to it, single-head attention at 7x7 in the middle block only (res, attn,
    res), stride-2 conv down, nearest + conv up."""
    cfg = UNetConfig(in_channels=1, out_channels=1, image_size=28, base_channels=32, channel_mult=(1, 2, 2),
                     num_res_blocks=1, attention_resolutions=(), heads=1, dropout=0.0, groups=8,
                     num_classes=num_classes, learn_sigma=learn_sigma, scale_shift_norm=False, time_embed_dim=128)
    return dataclasses.replace(cfg, **overrides)


def shapes32(num_classes: int | None = None, learn_sigma: bool = False, **overrides) -> UNetConfig:
    """3x32x32 (the procedural coloured shapes): base 32, multipliers (1, 2, 2) (levels 32, 16, 8), one
    ResBlock down and two up per level, AdaGN, single-head attention at 8x8 (in the level's ResBlocks
    and the middle block, ADM's placement at the lowest resolution)."""
    cfg = UNetConfig(in_channels=3, out_channels=3, image_size=32, base_channels=32, channel_mult=(1, 2, 2),
                     num_res_blocks=1, attention_resolutions=(8,), heads=1, dropout=0.0, groups=8,
                     num_classes=num_classes, learn_sigma=learn_sigma, scale_shift_norm=True, time_embed_dim=128)
    return dataclasses.replace(cfg, **overrides)


PRESETS: dict[str, Callable[..., UNetConfig]] = {"digits8": digits8, "mnist28": mnist28, "shapes32": shapes32}


def text16(**overrides) -> TextUNetConfig:
    """3x16x16 captioned shapes (refdiff.data.load_captions), text-conditional (GLIDE at toy scale): the
    U-Net of levels 16, 8 with 32 and 64 channels, one ResBlock down and two up per level, AdaGN, two-head
    attention at 8x8 (the level's blocks and the middle) reading the caption, a position table at the input
    (TextUNetConfig.position_embedding); a 2-block encoder of width 64 (4 heads) over the captions'
    vocabulary (19 words, padding 0) and context (6). No attention at 16x16: it cost a third of a training
    step (305 against 208 ms at batch 32), and the text demo's time spent on 2700 steps without it got all
    four attributes right in 73, 91 and 64% of the seen samples for training seeds 0, 1, 2, against 69, 92
    and 19% in 1800 steps with it (docs/glide.md, "Both cores, and attention at 8x8 alone").
    ``**overrides`` replaces fields of the TextUNetConfig (``unet=``, ``text=``)."""
    unet = UNetConfig(in_channels=3, out_channels=3, image_size=16, base_channels=32, channel_mult=(1, 2),
                      num_res_blocks=1, attention_resolutions=(8,), heads=2, dropout=0.0, groups=8,
                      scale_shift_norm=True, time_embed_dim=128)
    text = TextEncoderConfig(vocab_size=19, context_length=6, width=64, layers=2, heads=4, mlp_ratio=4)
    return dataclasses.replace(TextUNetConfig(unet=unet, text=text, pad_token=0, position_embedding=True), **overrides)


TEXT_PRESETS: dict[str, Callable[..., TextUNetConfig]] = {"text16": text16}


def fit_data(cfg: UNetConfig, shape: tuple[int, int, int]) -> UNetConfig:
    """``cfg``'s architecture for images of ``shape`` (C, H, W): the same levels, widths and blocks, with
    in and out channels C, image_size H, and attention at the same levels (each resolution r scaled to
    r H / cfg.image_size). What ``refdiff train`` does to a preset for the user's data.

    Raises ValueError naming the shape unless H and W are multiples of cfg.downsample_factor (2^(L - 1)).
    """
    C, H, W = shape
    f = cfg.downsample_factor
    if H % f or W % f or H == 0 or W == 0:
        raise ValueError(f"images of shape (C, H, W) = {tuple(shape)} do not fit a U-Net with "
                         f"{len(cfg.channel_mult)} levels: H and W must be positive multiples of {f}")
    attention = tuple(r * H // cfg.image_size for r in cfg.attention_resolutions)  # cfg.image_size / r = 2^level
    return dataclasses.replace(cfg, in_channels=C, out_channels=C, image_size=H, attention_resolutions=attention)


def _classifier_of(unet: UNetConfig, num_classes: int, overrides: dict) -> ClassifierConfig:
    """The classifier whose encoder is ``unet``'s encoder, with ``num_classes`` logits."""
    fields = ("in_channels", "image_size", "base_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
              "heads", "groups", "dropout", "scale_shift_norm", "time_embed_dim", "time_embed_order")
    cfg = ClassifierConfig(num_classes=num_classes, **{name: getattr(unet, name) for name in fields})
    return dataclasses.replace(cfg, **overrides)


def digits8_classifier(num_classes: int = 10, **overrides) -> ClassifierConfig:
    """1x8x8 digits: digits8's encoder (levels 8, 4 with 16 and 32 channels, AdaGN, attention in the
    middle block at 4x4), pooled to 32 features. 83k parameters; as the noisy classifier for guidance
    and, trained at t = 0, as refdiff.digits_eval's digit classifier."""
    return _classifier_of(digits8(), num_classes, overrides)


def mnist28_classifier(num_classes: int = 10, **overrides) -> ClassifierConfig:
    """1x28x28: mnist28's encoder (levels 28, 14, 7 with 32, 64, 64 channels, embedding added, attention in
    the middle block at 7x7), pooled to 64 features."""
    return _classifier_of(mnist28(), num_classes, overrides)


def shapes32_classifier(num_classes: int = 10, **overrides) -> ClassifierConfig:
    """3x32x32: shapes32's encoder (levels 32, 16, 8 with 32, 64, 64 channels, AdaGN, attention at 8x8),
    pooled to 64 features."""
    return _classifier_of(shapes32(), num_classes, overrides)


def shapes16_classifier(num_classes: int = 6, **overrides) -> ClassifierConfig:
    """3x16x16 (the captioned shapes of refdiff.data.load_captions): digits8's encoder fitted to 3x16x16
    images (``fit_data``: levels 16, 8 with 16 and 32 channels, AdaGN, attention in the middle block at
    8x8), pooled to 32 features, one logit per shape. 84k parameters; trained at t = 0 (600 steps at batch
    64, about 40 s of one CPU core), it is refdiff.captions_eval's shape classifier."""
    return _classifier_of(fit_data(digits8(), (3, 16, 16)), num_classes, overrides)


CLASSIFIER_PRESETS: dict[str, Callable[..., ClassifierConfig]] = {
    "digits8_classifier": digits8_classifier, "mnist28_classifier": mnist28_classifier,
    "shapes32_classifier": shapes32_classifier, "shapes16_classifier": shapes16_classifier}


def digits8_vae(num_classes: int | None = None, **overrides) -> VAEConfig:
    """1x8x8 digits: encoder levels 8, 4 with 16 and 32 channels, a 16-dimensional latent, decoder back through 4
    and 8, a discretized Gaussian on the digits' 17 grey levels (35k parameters unconditional, 40k with 10
    classes)."""
    cfg = VAEConfig(in_channels=1, image_size=8, channels=(16, 32), latent_dim=16, num_classes=num_classes, levels=17)
    return dataclasses.replace(cfg, **overrides)


def toy2d_vae(num_classes: int | None = None, **overrides) -> MLPVAEConfig:
    """2-D points (refdiff.data.toy2d): MLP encoder and decoder with two hidden layers of 64, a 2-dimensional latent,
    a Gaussian density with a learned scale per coordinate (9.1k parameters unconditional)."""
    return dataclasses.replace(MLPVAEConfig(data_dim=2, hidden=64, latent_dim=2, num_classes=num_classes), **overrides)


VAE_PRESETS: dict[str, Callable[..., VAEConfig | MLPVAEConfig]] = {"digits8_vae": digits8_vae, "toy2d_vae": toy2d_vae}


def digits8_gan(num_classes: int | None = None, **overrides) -> GANConfig:
    """1x8x8 digits: a 16-dimensional z, generator 4x4 -> 8x8 and discriminator 8x8 -> 4x4 with 16 and 32 channels
    (the VAE's decoder and encoder), projection on the 512 discriminator features (29k parameters with 10
    classes)."""
    cfg = GANConfig(in_channels=1, image_size=8, channels=(16, 32), latent_dim=16, num_classes=num_classes)
    return dataclasses.replace(cfg, **overrides)


def toy2d_gan(num_classes: int | None = None, **overrides) -> MLPGANConfig:
    """2-D points (refdiff.data.toy2d): MLP generator and discriminator with two hidden layers of 64, a 2-dimensional
    z (8.9k parameters unconditional)."""
    return dataclasses.replace(MLPGANConfig(data_dim=2, hidden=64, latent_dim=2, num_classes=num_classes), **overrides)


GAN_PRESETS: dict[str, Callable[..., GANConfig | MLPGANConfig]] = {"digits8_gan": digits8_gan, "toy2d_gan": toy2d_gan}


def digits8_flow(num_classes: int | None = None, **overrides) -> FlowConfig:
    """1x8x8 digits: RealNVP with 3 checkerboard couplings at 8x8, a squeeze, 3 channel and 4 checkerboard couplings
    at 4x4x4, s/t nets of 32 hidden channels, |s| < 2, dequantised on the digits' 17 grey levels (38k parameters
    unconditional, 41k with 10 classes)."""
    cfg = FlowConfig(in_channels=1, image_size=8, hidden=32, scales=2, couplings=3, s_bound=2.0, levels=17,
                     num_classes=num_classes)
    return dataclasses.replace(cfg, **overrides)


def toy2d_flow(num_classes: int | None = None, **overrides) -> MLPFlowConfig:
    """2-D points (refdiff.data.toy2d): 8 alternating couplings, s/t MLPs with two hidden layers of 64, |s| < 2
    (37k parameters unconditional)."""
    cfg = MLPFlowConfig(data_dim=2, hidden=64, couplings=8, s_bound=2.0, num_classes=num_classes)
    return dataclasses.replace(cfg, **overrides)


FLOW_PRESETS: dict[str, Callable[..., FlowConfig | MLPFlowConfig]] = {"digits8_flow": digits8_flow,
                                                                     "toy2d_flow": toy2d_flow}


def shapes16_clip(**overrides) -> ClipConfig:
    """3x16x16 captioned shapes (refdiff.data.captions): an image encoder with levels 16, 8 of 16 and 32
    channels (AdaGN, attention in the middle block at 8x8), a 2-block text encoder of width 32 (4 heads)
    on the captions' 19-word vocabulary and 6 positions, both projected to E = 32."""
    return dataclasses.replace(ClipConfig(), **overrides)


CLIP_PRESETS: dict[str, Callable[..., ClipConfig]] = {"shapes16_clip": shapes16_clip}
