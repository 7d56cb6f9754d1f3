"""Models composed of refdiff.layers (denoisers and the noisy classifier), each a forward/backward pair
over a flat parameter dict.

- ``refdiff.models.unet``: the ADM-style U-Net (``UNetConfig``, ``init_params``, ``unet_forward``,
  ``unet_backward``, ``unet_model``, ``param_count``, ``flops``, ``summary``), built from the blocks of
  ``refdiff.models.blocks``; ``refdiff.models.presets``: the named configs (``PRESETS``).
- ``refdiff.models.mlp``: the MLP denoiser for 2-D toy data, with the same interface.
- ``refdiff.models.classifier``: ADM's noisy classifier p(y | x_t, t), the U-Net's encoder pooled to K
  logits (``ClassifierConfig``, ``classifier_forward``, ``classifier_backward(need_dx=True)`` for the
  guidance gradient); ``CLASSIFIER_PRESETS`` in ``refdiff.models.presets``.

Each family has its own ``init_params``, so import the module (``from refdiff.models import unet``).
"""
