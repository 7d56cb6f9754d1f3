"""Layers as forward/backward pairs (docs/design.md rule 5), channels-last (N, H, W, C) activations and
(N, L, C) token sequences.

``y, cache = <layer>_forward(...)`` and ``grads = <layer>_backward(dy, cache)``; the derivations of
the nontrivial backward passes are in docs/derivations/ (conv2d, group_norm, attention, layer_norm,
text_encoder, contrastive). Every
function is the textbook form; its speed form, where one exists, is in refdiff/layers/fast.py (conv2d's
in the "speed layer" section of refdiff/layers/conv.py) and runs unless refdiff.speed selects the
reference path.
"""

from refdiff.layers.attention import self_attention_backward, self_attention_forward, softmax
from refdiff.layers.basic import (dropout_backward, dropout_forward, linear_backward, linear_forward,
                                  silu_backward, silu_forward)
from refdiff.layers.contrastive import (contrastive_backward, contrastive_forward, l2_normalize_backward,
                                        l2_normalize_forward)
from refdiff.layers.conv import conv2d_backward, conv2d_forward, weight_from_torch, weight_to_torch
from refdiff.layers.cross_entropy import cross_entropy, log_softmax
from refdiff.layers.embed import (embedding_backward, embedding_forward, timestep_embedding, token_embedding_backward,
                                  token_embedding_forward)
from refdiff.layers.gelu import gelu_backward, gelu_forward
from refdiff.layers.layer_norm import layer_norm_backward, layer_norm_forward
from refdiff.layers.masked_attention import (context_attention_backward, context_attention_forward,
                                             masked_self_attention_backward, masked_self_attention_forward,
                                             masked_softmax)
from refdiff.layers.norm import (group_norm_backward, group_norm_forward, scale_shift_backward, scale_shift_forward,
                                 sum_over_space)
from refdiff.layers.resample import avg_pool2x_backward, avg_pool2x_forward, upsample2x_backward, upsample2x_forward

__all__ = [
    "conv2d_forward", "conv2d_backward", "weight_from_torch", "weight_to_torch",
    "upsample2x_forward", "upsample2x_backward", "avg_pool2x_forward", "avg_pool2x_backward",
    "linear_forward", "linear_backward", "silu_forward", "silu_backward", "dropout_forward", "dropout_backward",
    "group_norm_forward", "group_norm_backward", "scale_shift_forward", "scale_shift_backward", "sum_over_space",
    "self_attention_forward", "self_attention_backward", "softmax",
    "timestep_embedding", "embedding_forward", "embedding_backward",
    "token_embedding_forward", "token_embedding_backward",
    "layer_norm_forward", "layer_norm_backward", "gelu_forward", "gelu_backward",
    "masked_self_attention_forward", "masked_self_attention_backward", "masked_softmax",
    "context_attention_forward", "context_attention_backward",
    "cross_entropy", "log_softmax",
    "l2_normalize_forward", "l2_normalize_backward", "contrastive_forward", "contrastive_backward",
]
