"""Denoisers composed of refdiff.layers, each a forward/backward pair over a flat parameter dict.

- ``refdiff.models.unet``: the ADM-style U-Net (``UNetConfig``, ``init_params``, ``unet_forward``,
  ``unet_backward``, ``unet_model``, ``param_count``, ``flops``, ``summary``), built from the blocks of
  ``refdiff.models.blocks``; ``refdiff.models.presets``: the named configs (``PRESETS``).
- ``refdiff.models.mlp``: the MLP denoiser for 2-D toy data, with the same interface.

Each family has its own ``init_params``, so import the module (``from refdiff.models import unet``).
"""
