"""The public cross-entropy functions: one Call (normalise), one kernel run, reduce.

Each function builds one `ce._kernels.Call` from its keywords (the arguments
are checked there, by ce._args) and hands it to a kernel entry of
ce._kernels, which runs the blocks and applies the reduction.
"""
import numpy as np

from . import _kernels
from ._kernels import Call


def cross_entropy(logits, target, *, axis=-1, reduction="mean", weight=None,
                  sample_weight=None, ignore_index=-100, label_smoothing=0.0,
                  from_logits=True, n_threads=None, z_loss=0.0, softcap=None):
    call = Call(logits=logits, target=target, axis=axis, reduction=reduction, weight=weight,
                sample_weight=sample_weight, ignore_index=ignore_index,
                label_smoothing=label_smoothing, from_logits=from_logits, n_threads=n_threads,
                z_loss=z_loss, softcap=softcap)
    return _kernels.loss(call)


def cross_entropy_and_lse(logits, target, **options):
    """Forward only, also returning the per-example lse in float64 (for autograd
    adapters that save O(N) instead of the O(NC) log-softmax; float64 keeps the
    backward through ``lse=`` as exact as the fused call). The keywords of
    cross_entropy."""
    return _kernels.loss_and_lse(Call(logits=logits, target=target, **options))


def cross_entropy_grad(logits, target, *, axis=-1, reduction="mean", weight=None,
                       sample_weight=None, ignore_index=-100, label_smoothing=0.0,
                       from_logits=True, n_threads=None, z_loss=0.0, softcap=None,
                       grad_output=1.0, lse=None, out=None):
    call = Call(logits=logits, target=target, axis=axis, reduction=reduction, weight=weight,
                sample_weight=sample_weight, ignore_index=ignore_index,
                label_smoothing=label_smoothing, from_logits=from_logits, n_threads=n_threads,
                z_loss=z_loss, softcap=softcap, grad_output=grad_output, lse=lse)
    return _kernels.gradient(call, out)


def cross_entropy_with_grad(logits, target, *, axis=-1, reduction="mean", weight=None,
                            sample_weight=None, ignore_index=-100, label_smoothing=0.0,
                            from_logits=True, n_threads=None, z_loss=0.0, softcap=None,
                            grad_output=1.0, out=None, return_lse=False):
    call = Call(logits=logits, target=target, axis=axis, reduction=reduction, weight=weight,
                sample_weight=sample_weight, ignore_index=ignore_index,
                label_smoothing=label_smoothing, from_logits=from_logits, n_threads=n_threads,
                z_loss=z_loss, softcap=softcap, grad_output=grad_output)
    return _kernels.loss_and_gradient(call, out, return_lse)


def _finite_lse(call, row_lse):
    """Rows of -inf, or with +inf: -inf / +inf as scipy and torch (NaN stays NaN)."""
    odd = ~np.isfinite(row_lse)
    if odd.any():
        x = call.rows
        rows = x.transpose(0, 2, 1).reshape(-1, x.shape[1])[odd]
        row_lse[odd] = np.where(np.isnan(rows).any(axis=1), np.nan, rows.max(axis=1))
    return row_lse


def _transform(x, axis, out, kind):
    call = Call(logits=x, axis=axis, name="x")
    result, view, copy_back = _kernels.output_for(call, out)
    _kernels.solve(call, **{kind: view})
    if copy_back is not None:
        np.copyto(result, copy_back, casting="unsafe")
    return result


def log_softmax(x, axis=-1, out=None):
    """log(softmax(x)) along `axis` (int or tuple), computed stably as x - logsumexp(x)."""
    return _transform(x, axis, out, "log_softmax")


def softmax(x, axis=-1, out=None):
    """exp(x - logsumexp(x)) along `axis` (int or tuple)."""
    return _transform(x, axis, out, "softmax")


def logsumexp(x, axis=-1):
    """log(sum(exp(x))) along `axis` (int or tuple), in x's dtype (float64 sums)."""
    call = Call(logits=x, axis=axis, name="x")
    row_lse = np.empty(call.n_rows)
    _kernels.solve(call, row_lse=row_lse)
    res = _finite_lse(call, row_lse).reshape(call.rest).astype(call.dtype)
    return res[()] if res.ndim == 0 else res
