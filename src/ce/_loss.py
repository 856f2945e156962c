"""The public cross-entropy functions: normalise once, one kernel run, reduce."""
import math

import numpy as np

from . import _kernels
from ._args import as_array, as_logits, c_array, check_labels, class_axes, output_for, problem, rows_view

_DOC_KEYWORDS = """
    axis : int or tuple of ints, default -1
        The class axis. With a tuple, the classes are the sub-array over those
        axes, in the order given, and a class index is the C-order flat index
        into it (optax's rule).
    reduction : {"mean", "sum", "none"}
        "none" returns each example's weighted loss; "sum" adds them; "mean"
        divides the sum by the total weight of the counted examples (see README).
    weight : array of shape (C,), optional
        Per-class weights (PyTorch's ``weight``).
    sample_weight : array of the per-example shape, optional
        Per-example weights; a bool mask works as optax's ``where``.
    ignore_index : int, default -100
        Class-index targets equal to it contribute nothing (loss 0, gradient 0).
    label_smoothing : float in [0, 1], default 0
        PyTorch's formula.
    from_logits : bool, default True
        False: ``logits`` are probabilities; the loss is -sum t log(max(p, eps)).
    n_threads : int, optional
        Cap on OpenMP threads; None uses OpenMP's current setting, read on every call.
    z_loss : float >= 0, default 0
        Adds ``z_loss * lse**2`` per example (PaLM's auxiliary loss), weighted like the loss.
    softcap : float > 0, optional
        Replaces the logits by ``softcap * tanh(logits / softcap)`` first (Gemma 2).
"""


def _grad_scale(p, grad_output, denom):
    """Resolve grad_output into (scalar scale, per-row float64 array or None)."""
    try:
        go = np.asarray(grad_output)
    except Exception as exc:
        raise TypeError(f"grad_output must be a real number or array: {exc}") from exc
    if go.dtype.kind not in "fiub":
        raise TypeError(f"grad_output must be real, got dtype {go.dtype}")
    if p.reduction != "none":
        if go.ndim != 0:
            raise ValueError(
                f"grad_output must be a scalar for reduction={p.reduction!r}, got shape {go.shape}")
        scale = float(go)
        if p.reduction == "mean":
            scale = scale / denom if denom != 0 else 0.0  # a mean over nothing has zero gradient
        return scale, None
    if go.ndim == 0:
        return float(go), None
    try:
        rows = np.broadcast_to(go, p.rest)
    except ValueError:
        raise ValueError(
            f"grad_output of shape {go.shape} does not broadcast to the per-example shape {p.rest}"
        ) from None
    return 1.0, c_array(rows, dtype=np.float64).reshape(-1)


def _reduce(p, total, denom, row_loss):
    if p.reduction == "none":
        return row_loss.reshape(p.rest).astype(p.dtype)
    if p.reduction == "sum":
        return p.dtype.type(total)
    if denom == 0:  # a mean over nothing: 0/0 is NaN (PyTorch's answer too)
        return p.dtype.type(math.nan if total == 0 or math.isnan(total) else math.copysign(math.inf, total))
    return p.dtype.type(total / denom)


def _run(p, mode, g=None, row_grad=None, scale=1.0, lse_in=None, row_loss=None, row_lse=None):
    return _kernels.run(
        mode, p.x, p.kind, p.t, g, p.labels, p.ignore_index, p.class_weight,
        p.class_weight_sum, p.row_weight, row_grad, scale, p.smoothing, p.z_loss,
        p.softcap, p.from_logits, lse_in, row_loss, row_lse, None, None, p.n_threads,
        float(np.finfo(p.dtype).eps))


# Defaults as named objects: the plain-call fast path tests them by identity,
# which is cheap and never calls __eq__ on an array argument; the kernel module
# checks the remaining common options itself (types, ranges) or declines.
_LAST = -1
_MEAN = "mean"
_IGNORE = -100
_ZERO = 0.0


def cross_entropy(logits, target, *, axis=_LAST, reduction=_MEAN, weight=None,
                  sample_weight=None, ignore_index=_IGNORE, label_smoothing=_ZERO,
                  from_logits=True, n_threads=None, z_loss=_ZERO, softcap=None):
    if (axis is _LAST and weight is None and sample_weight is None and from_logits is True
            and n_threads is None and z_loss is _ZERO and softcap is None):
        loss = _kernels.plain_loss(logits, target, reduction, ignore_index, label_smoothing)
        if loss is not None:
            return loss
    p = problem(logits, target, axis, reduction, weight, sample_weight, ignore_index,
                label_smoothing, from_logits, n_threads, z_loss, softcap)
    denom = check_labels(p)
    row_loss = np.empty(p.n_rows) if p.reduction == "none" else None
    total = _run(p, _kernels.MODE_FORWARD, row_loss=row_loss)
    return _reduce(p, total, denom, row_loss)


def cross_entropy_and_lse(logits, target, **kwargs):
    """Forward only, also returning the per-example lse in float64 (for autograd
    adapters that save O(N) instead of the O(NC) log-softmax; float64 keeps the
    backward through ``lse=`` as exact as the fused call). Same keywords as
    cross_entropy."""
    p = problem(logits, target, kwargs.pop("axis", -1), kwargs.pop("reduction", "mean"),
                kwargs.pop("weight", None), kwargs.pop("sample_weight", None),
                kwargs.pop("ignore_index", -100), kwargs.pop("label_smoothing", 0.0),
                kwargs.pop("from_logits", True), kwargs.pop("n_threads", None),
                kwargs.pop("z_loss", 0.0), kwargs.pop("softcap", None))
    if kwargs:
        raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
    if not p.from_logits:
        raise ValueError("lse applies to logits only (from_logits=True)")
    denom = check_labels(p)
    row_loss = np.empty(p.n_rows) if p.reduction == "none" else None
    row_lse = np.empty(p.n_rows)
    total = _run(p, _kernels.MODE_FORWARD, row_loss=row_loss, row_lse=row_lse)
    return _reduce(p, total, denom, row_loss), row_lse.reshape(p.rest)  # float64: exact backward


def cross_entropy_grad(logits, target, *, axis=-1, reduction="mean", weight=None,
                       sample_weight=None, ignore_index=-100, label_smoothing=0.0,
                       from_logits=True, n_threads=None, z_loss=0.0, softcap=None,
                       grad_output=1.0, lse=None, out=None):
    p = problem(logits, target, axis, reduction, weight, sample_weight, ignore_index,
                label_smoothing, from_logits, n_threads, z_loss, softcap)
    denom = check_labels(p)
    scale, row_grad = _grad_scale(p, grad_output, denom)
    lse_rows = None
    if lse is not None:
        if not p.from_logits:
            raise ValueError("lse applies to logits only (from_logits=True)")
        lse_arr = as_array(lse, "lse")
        if lse_arr.dtype.kind != "f":
            raise TypeError(f"lse must be a float array, got dtype {lse_arr.dtype}")
        if lse_arr.shape != p.rest:
            raise ValueError(f"lse must have the per-example shape {p.rest}, got {lse_arr.shape}")
        lse_rows = c_array(lse_arr, dtype=np.float64).reshape(-1)
    result, view, copy_back = output_for(p, out)
    mode = _kernels.MODE_FUSED if lse_rows is None else _kernels.MODE_GRAD_LSE
    _run(p, mode, g=view, row_grad=row_grad, scale=scale, lse_in=lse_rows)
    if copy_back is not None:
        np.copyto(result, copy_back, casting="unsafe")
    return result


_ONE = 1.0


def cross_entropy_with_grad(logits, target, *, axis=_LAST, reduction=_MEAN, weight=None,
                            sample_weight=None, ignore_index=_IGNORE, label_smoothing=_ZERO,
                            from_logits=True, n_threads=None, z_loss=_ZERO, softcap=None,
                            grad_output=_ONE, out=None, return_lse=False):
    if (axis is _LAST and weight is None and sample_weight is None and from_logits is True
            and n_threads is None and z_loss is _ZERO and softcap is None
            and out is None and return_lse is False):
        pair = _kernels.plain_loss_and_grad(logits, target, reduction, ignore_index,
                                            label_smoothing, grad_output)
        if pair is not None:
            return pair
    p = problem(logits, target, axis, reduction, weight, sample_weight, ignore_index,
                label_smoothing, from_logits, n_threads, z_loss, softcap)
    denom = check_labels(p)
    scale, row_grad = _grad_scale(p, grad_output, denom)
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if return_lse and not p.from_logits:
        raise ValueError("return_lse applies to logits only (from_logits=True)")
    result, view, copy_back = output_for(p, out)
    row_loss = np.empty(p.n_rows) if p.reduction == "none" else None
    row_lse = np.empty(p.n_rows) if return_lse else None
    total = _run(p, _kernels.MODE_FUSED, g=view, row_grad=row_grad, scale=scale,
                 row_loss=row_loss, row_lse=row_lse)
    if copy_back is not None:
        np.copyto(result, copy_back, casting="unsafe")
    loss = _reduce(p, total, denom, row_loss)
    if return_lse:
        return loss, result, row_lse.reshape(p.rest).astype(p.dtype)
    return loss, result


class _Plain:
    """The few fields a target-free kernel run needs."""

    def __init__(self, x, axis, name):
        xc, self.dtype = as_logits(x, name)
        self.shape = xc.shape
        self.axes = tuple(sorted(class_axes(axis, xc.ndim)))  # no labels: the order is immaterial
        self.x, self.rest = rows_view(xc, self.axes)
        if self.x.shape[1] == 0:
            raise ValueError(f"{name} has no classes: the class axis {axis!r} has size 0")
        self.t = None


def _target_free(mode, x, axis, out, name="x"):
    q = _Plain(x, axis, name)
    if mode == _kernels.MODE_FORWARD:
        g = view = copy_back = None
        row_lse = np.empty(q.x.shape[0] * q.x.shape[2])
    else:
        q.reduction = "none"
        result, view, copy_back = output_for(q, out)
        row_lse = None
    _kernels.run(mode, q.x, _kernels.TARGET_NONE, None, view, None, 0, None,
                 float(q.x.shape[1]), None, None, 1.0, 0.0, 0.0, 0.0, True, None,
                 None, row_lse, None, None, 0)
    if mode == _kernels.MODE_FORWARD:
        odd = ~np.isfinite(row_lse)
        if odd.any():  # rows of -inf, or with +inf: -inf / +inf as scipy and torch (NaN stays NaN)
            rows = q.x.transpose(0, 2, 1).reshape(-1, q.x.shape[1])[odd]
            row_lse[odd] = np.where(np.isnan(rows).any(axis=1), np.nan, rows.max(axis=1))
        res = row_lse.reshape(q.rest).astype(q.dtype)
        return res[()] if res.ndim == 0 else res
    if copy_back is not None:
        np.copyto(result, copy_back, casting="unsafe")
    return result


def log_softmax(x, axis=-1, out=None):
    """log(softmax(x)) along `axis` (int or tuple), computed stably as x - logsumexp(x)."""
    return _target_free(_kernels.MODE_LOG_SOFTMAX, x, axis, out)


def softmax(x, axis=-1, out=None):
    """exp(x - logsumexp(x)) along `axis` (int or tuple)."""
    return _target_free(_kernels.MODE_SOFTMAX, x, axis, out)


def logsumexp(x, axis=-1):
    """log(sum(exp(x))) along `axis` (int or tuple), in x's dtype (float64 sums)."""
    return _target_free(_kernels.MODE_FORWARD, x, axis, None)
