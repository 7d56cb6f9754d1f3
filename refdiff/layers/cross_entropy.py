"""Cross-entropy of integer labels under a softmax: the classifier's loss layer.

The loss over the last axis of (N, K) logits, with the maximum subtracted before the exponentials
(``log_softmax``) so that logits of any size stay finite. Like cs231n's ``softmax_loss`` it returns the
loss and its gradient together: nothing sits above a loss, so its backward needs no upstream
gradient (it is 1). refdiff.classifier_train trains with the "mean" reduction; classifier guidance
takes the gradient of the "sum" reduction to x_t.
"""

from __future__ import annotations

from typing import Any

from refdiff.backend import device, namespace

REDUCTIONS = ("mean", "sum")


def log_softmax(logits: Any):
    """log softmax over the last axis, with the maximum subtracted first.

    Math: log p_k = z_k - m - log sum_j exp(z_j - m),  m = max_j z_j
    Every exp argument is <= 0 and the largest is 0, so nothing overflows and the sum is >= 1 (its log
    is finite) for logits of any size; the naive form overflows in float32 at z > 88.
    logits: (..., K) real floating. Returns (..., K) like logits.
    """
    xp = namespace(logits)
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)  # (..., K), each row's max is 0
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def cross_entropy(logits: Any, y: Any, reduction: str = "mean"):
    """Cross-entropy of integer labels under softmax(logits), and its gradient w.r.t. the logits.

    Math: L_n = -log p_{n, y_n},  p_n = softmax(z_n) (log_softmax, max-subtracted)
          loss = (1/N) sum_n L_n ("mean") or sum_n L_n ("sum")
          dL_n / dz_nk = p_nk - [k == y_n],  so dlogits = (p - onehot(y)) / N or (p - onehot(y))
    (With reduction="sum", -dlogits = onehot(y) - p is the gradient of sum_n log p(y_n | x_n) that
    classifier guidance backpropagates to x_t.)

    logits: (N, K) real floating; y: (N,) integer labels in [0, K) of logits' library and device.
    Returns (loss 0-d, dlogits (N, K)) like logits.
    """
    _check_cross_entropy(logits, y, reduction)
    xp = namespace(logits, y)
    N, K = logits.shape
    logp = log_softmax(logits)  # (N, K)
    onehot = xp.astype(y[:, None] == xp.arange(K, device=device(y))[None, :], logits.dtype)  # (N, K)
    per_sample = -xp.sum(onehot * logp, axis=1)  # (N,) L_n
    dlogits = xp.exp(logp) - onehot  # (N, K) p - onehot(y)
    if reduction == "sum":
        return xp.sum(per_sample), dlogits
    return xp.mean(per_sample), dlogits / N


def _check_cross_entropy(logits, y, reduction) -> None:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    xp = namespace(logits)
    if not xp.isdtype(logits.dtype, "real floating") or logits.ndim != 2 or 0 in logits.shape:
        raise ValueError(f"logits must be a real floating (N, K) array with N, K >= 1, got shape "
                         f"{tuple(logits.shape)} and dtype {logits.dtype}")
    N, K = logits.shape
    try:
        same = namespace(y, logits) is xp and device(y) == device(logits)
    except TypeError:  # array_api_compat refuses to mix libraries
        same = False
    if not same or y.ndim != 1 or y.shape[0] != N or not xp.isdtype(y.dtype, "integral"):
        raise ValueError(f"y must be an ({N},) integer array of logits' library and device, got "
                         f"{type(y).__name__} of shape {tuple(getattr(y, 'shape', ()))}")
    if bool(xp.any((y < 0) | (y >= K))):  # one device-to-host read on a GPU
        raise ValueError(f"y must hold labels in [0, {K}), got values in [{int(xp.min(y))}, {int(xp.max(y))}]")
