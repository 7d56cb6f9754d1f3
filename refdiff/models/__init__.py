"""Models composed of refdiff.layers (denoisers and the noisy classifier), each a forward/backward pair
over a flat parameter dict.

- ``refdiff.models.unet``: the ADM-style U-Net (``UNetConfig``, ``init_params``, ``unet_forward``,
  ``unet_backward``, ``unet_model``, ``param_count``, ``flops``, ``summary``), built from the blocks of
  ``refdiff.models.blocks``; ``refdiff.models.presets``: the named configs (``PRESETS``).
- ``refdiff.models.mlp``: the MLP denoiser for 2-D toy data, with the same interface.
- ``refdiff.models.classifier``: ADM's noisy classifier p(y | x_t, t), the U-Net's encoder pooled to K
  logits (``ClassifierConfig``, ``classifier_forward``, ``classifier_backward(need_dx=True)`` for the
  guidance gradient); ``CLASSIFIER_PRESETS`` in ``refdiff.models.presets``.
- ``refdiff.models.clip``: a noised CLIP (GLIDE, Sec. 2.4): the noisy classifier's encoder on x_t and the
  text encoder, each projected to a shared embedding and L2-normalised (``ClipConfig``,
  ``clip_image_forward`` / ``_backward``, ``clip_text_forward`` / ``_backward``); ``CLIP_PRESETS``.
- ``refdiff.models.registry``: the one model interface: every trainable family as a frozen record of
  these functions, found by config type or by the name checkpoints store (``registry.family(cfg)``,
  ``registry.by_name("UNetConfig")``, ``registry.config_to_dict`` / ``config_from_dict``). Training,
  generation, the CLI and checkpoint loading go through it; a new family is one module and one entry.
- ``refdiff.models.common``: what the families share (parameter count, initialisation, argument checks).

Each family has its own ``init_params``, so import the module (``from refdiff.models import unet``) or
ask the registry (``registry.family(cfg).init_params``).
"""
