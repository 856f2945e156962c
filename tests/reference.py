"""An independent float64 reference for ``ce``, in plain NumPy.

Written for clarity, not speed: every input is converted to float64, the class axes are moved
to the end and flattened, so that every computation below works on a 2-D array of rows
``X`` with shape (N, C), one row per example. This module never imports ``ce``.

Semantics (the contract the tests hold ``ce`` to)
-------------------------------------------------
For one example with logits ``x`` (C classes; replaced by ``s * tanh(x / s)`` first when
``softcap=s``), ``lse = log(sum(exp(x)))``, class weights ``w`` (ones without ``weight``), sample
weight ``sw`` (1 without ``sample_weight``), smoothing ``eps``:

* class index ``y``::

    t' = (1 - eps) * onehot(y) + eps / C
    loss = sw * [ sum_c w[c] * t'[c] * (lse - x[c]) + z_loss * w[y] * lse**2 ]

  which is PyTorch's ``(1-eps) * w[y] * (lse - x[y]) + eps/C * sum_c w[c] * (lse - x[c])``.
  "mean" divides the sum by ``sum over non-ignored i of sw_i * w[y_i]``.

* dense target ``t`` (the logits' shape)::

    t' = (1 - eps) * t + eps / C
    loss = sw * [ sum_c w[c] * t'[c] * (lse - x[c]) + z_loss * lse**2 ]

  "mean" divides by ``sum_i sw_i`` (N without sample weights).

* a term with ``t'[c] == 0`` contributes 0 even where ``x[c] == -inf`` (xlogy convention).

* ``from_logits=False``: ``logits`` are probabilities ``p`` and ``-log(max(p, eps_dtype))``
  replaces ``lse - x``; z_loss and softcap do not apply. The gradient is taken with respect to
  ``p``: ``-sw * w[c] * t'[c] / p[c]`` where ``p[c] >= eps_dtype``, 0 where clipped.

* ignored rows (``y == ignore_index``) and rows with ``sw == 0`` contribute exactly 0 to the
  loss and get an exactly-zero gradient row, whatever their logits.

* a mean over nothing (empty, all ignored, zero total weight) is NaN; its gradient is zero.

* non-finite rows as PyTorch: NaN or +inf anywhere in a row -> NaN loss and NaN gradient row;
  an all -inf row -> NaN; a -inf target logit with finite others -> +inf loss, finite gradient.

Accuracy note: this is float64 arithmetic, not exact arithmetic. Where a gradient entry is a
tiny difference of numbers close to 1 (``p_y - 1`` with ``p_y`` within 1e-13 of 1) the relative
error of this reference is large; the tests check such cases against closed forms instead.
"""
import math

import numpy as np

__all__ = [
    "class_axes",
    "ref_cross_entropy",
    "ref_grad",
    "ref_lse",
    "ref_log_softmax",
    "ref_softmax",
    "ref_logsumexp",
    "ref_sequence_score",
    "ref_score",
    "ref_linear",
]


# --------------------------------------------------------------------------------------------
# Layout: class axes to the end, rows of C classes
# --------------------------------------------------------------------------------------------

def class_axes(ndim, axis):
    """The class axes as a tuple of non-negative ints in the order given: a label is the flat
    index into the class sub-array with its axes in that order (optax's rule for a tuple)."""
    if isinstance(axis, (tuple, list)):
        raw = list(axis)
    else:
        raw = [axis]
    axes = []
    for a in raw:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} out of range for {ndim}-d logits")
        axes.append(a % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"duplicate value in axis {axis!r}")
    return tuple(axes)


def _to_rows(a, axes):
    """(rows of shape (N, C), per-example shape, permutation used)."""
    batch = [d for d in range(a.ndim) if d not in axes]
    perm = batch + list(axes)
    moved = np.transpose(a, perm)
    batch_shape = moved.shape[: len(batch)]
    n = math.prod(batch_shape)
    c = math.prod(moved.shape[len(batch):])
    return moved.reshape(n, c), batch_shape, perm


def _from_rows(rows, shape, perm):
    """Inverse of _to_rows for an array of the original shape ``shape``."""
    moved_shape = tuple(shape[p] for p in perm)
    return np.transpose(rows.reshape(moved_shape), np.argsort(perm))


# --------------------------------------------------------------------------------------------
# Putting one problem in row form
# --------------------------------------------------------------------------------------------

class _Problem:
    """Everything the loss and the gradient need, in float64 rows."""

    def __init__(self, logits, target, axis, weight, sample_weight, ignore_index,
                 label_smoothing, from_logits, z_loss, softcap):
        logits = np.asarray(logits)
        self.dtype = logits.dtype
        self.shape = logits.shape
        x = logits.astype(np.float64)
        self.axes = class_axes(x.ndim, axis)
        self.X, self.batch_shape, self.perm = _to_rows(x, self.axes)
        n, c = self.X.shape
        self.N, self.C = n, c

        eps = float(label_smoothing)
        self.from_logits = bool(from_logits)
        self.z_loss = float(z_loss)
        self.softcap = None if softcap is None else float(softcap)

        w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64).reshape(c)
        if sample_weight is None:
            sw = np.ones(n)
        else:
            sw = np.broadcast_to(np.asarray(sample_weight, dtype=np.float64),
                                 self.batch_shape).reshape(n)
        self.sw = sw

        target = np.asarray(target)
        if target.shape == logits.shape:
            # dense target: one-hot or probabilities, not renormalised
            self.dense = True
            t, _, _ = _to_rows(target.astype(np.float64), self.axes)
            tp = (1.0 - eps) * t + eps / c
            self.counted = np.ones(n, dtype=bool)
            self.zw = np.ones(n)                   # z_loss is not class-weighted
            self.mean_weight = sw.copy()           # mean divides by sum(sw)
        else:
            self.dense = False
            y = target.reshape(n).astype(np.int64)
            self.counted = y != ignore_index
            y_safe = np.where(self.counted, y, 0)
            onehot = np.zeros((n, c))
            onehot[np.arange(n), y_safe] = 1.0
            tp = (1.0 - eps) * onehot + eps / c
            self.zw = w[y_safe]                    # z_loss weighted by w[y]
            self.mean_weight = sw * w[y_safe]      # mean divides by sum(sw * w[y])
        self.Tp = tp
        self.A = w * tp                            # coefficient of -log p[c] in the loss
        self.active = self.counted & (sw != 0)
        self.denominator = float(np.sum(self.mean_weight[self.counted]))

    # ---- forward -------------------------------------------------------------------------

    def capped(self):
        if self.softcap is None:
            return self.X
        return self.softcap * np.tanh(self.X / self.softcap)

    def row_lse(self):
        """Max-shifted log-sum-exp per row. A +inf or NaN anywhere gives NaN, and so does a
        row of only -inf (PyTorch's behaviour for the loss)."""
        z = self.capped()
        if self.C == 0:
            return np.full(self.N, np.nan)
        m = np.max(z, axis=1, keepdims=True)
        return (m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True)))[:, 0]

    def row_losses(self):
        """Per-example loss (sample weight and class weights included), shape (N,)."""
        with np.errstate(all="ignore"):
            if self.from_logits:
                lse = self.row_lse()
                neg_logp = lse[:, None] - self.capped()
            else:
                eps_d = np.finfo(self.dtype).eps
                neg_logp = -np.log(np.maximum(self.X, eps_d))
                lse = None
            terms = np.where(self.Tp != 0, self.A * neg_logp, 0.0)   # xlogy convention
            loss = terms.sum(axis=1)
            if self.from_logits and self.z_loss != 0.0:
                loss = loss + self.z_loss * self.zw * lse ** 2
            loss = self.sw * loss
        return np.where(self.active, loss, 0.0)

    # ---- backward ------------------------------------------------------------------------

    def row_grads(self):
        """d(per-example loss)/d(logits), rows of shape (N, C)."""
        with np.errstate(all="ignore"):
            if self.from_logits:
                lse = self.row_lse()
                p = np.exp(self.capped() - lse[:, None])
                g = self.A.sum(axis=1, keepdims=True) * p - self.A
                if self.z_loss != 0.0:
                    g = g + 2.0 * self.z_loss * (self.zw * lse)[:, None] * p
                if self.softcap is not None:
                    g = g * (1.0 - np.tanh(self.X / self.softcap) ** 2)
            else:
                eps_d = np.finfo(self.dtype).eps
                unclipped = self.X >= eps_d
                g = np.where(unclipped & (self.Tp != 0), -self.A / np.where(unclipped, self.X, 1.0),
                             0.0)
            g = self.sw[:, None] * g
        return np.where(self.active[:, None], g, 0.0)

    def row_coefficients(self, reduction, grad_output):
        """d(reduced loss)/d(per-example loss), times grad_output, shape (N,)."""
        if reduction == "none":
            go = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), self.batch_shape)
            return go.reshape(self.N).copy()
        go = float(grad_output)
        if reduction == "sum":
            return np.full(self.N, go)
        if reduction == "mean":
            if self.denominator == 0.0:
                return np.zeros(self.N)
            return np.full(self.N, go / self.denominator)
        raise ValueError(f"reduction {reduction!r}")


# --------------------------------------------------------------------------------------------
# Public reference functions
# --------------------------------------------------------------------------------------------

def ref_cross_entropy(logits, target, *, axis=-1, reduction="mean", weight=None,
                      sample_weight=None, ignore_index=-100, label_smoothing=0.0,
                      from_logits=True, z_loss=0.0, softcap=None):
    """The loss, in float64: a Python float for "sum"/"mean", an array for "none"."""
    pb = _Problem(logits, target, axis, weight, sample_weight, ignore_index, label_smoothing,
                  from_logits, z_loss, softcap)
    losses = pb.row_losses()
    if reduction == "none":
        return losses.reshape(pb.batch_shape)
    total = float(np.sum(losses))
    if reduction == "sum":
        return total
    if reduction == "mean":
        if pb.denominator == 0.0:
            return math.nan
        return total / pb.denominator
    raise ValueError(f"reduction {reduction!r}")


def ref_grad(logits, target, *, axis=-1, reduction="mean", weight=None, sample_weight=None,
             ignore_index=-100, label_smoothing=0.0, from_logits=True, z_loss=0.0,
             softcap=None, grad_output=1.0):
    """Gradient of ref_cross_entropy (with the same reduction) w.r.t. logits, times
    grad_output; float64, the logits' shape."""
    pb = _Problem(logits, target, axis, weight, sample_weight, ignore_index, label_smoothing,
                  from_logits, z_loss, softcap)
    coef = pb.row_coefficients(reduction, grad_output)
    with np.errstate(all="ignore"):
        g = pb.row_grads() * coef[:, None]
    g = np.where(pb.active[:, None], g, 0.0)
    return _from_rows(g, pb.shape, pb.perm)


def ref_lse(logits, *, axis=-1, softcap=None):
    """Per-example log-sum-exp of the (soft-capped) logits, the per-example shape."""
    x = np.asarray(logits).astype(np.float64)
    axes = class_axes(x.ndim, axis)
    rows, batch_shape, _ = _to_rows(x, axes)
    if softcap is not None:
        rows = softcap * np.tanh(rows / softcap)
    return _logsumexp_rows(rows).reshape(batch_shape)


def _logsumexp_rows(rows):
    """scipy.special.logsumexp's conventions: an all -inf row gives -inf, a +inf gives +inf."""
    with np.errstate(all="ignore"):
        m = np.max(rows, axis=1, keepdims=True)
        shift = np.where(np.isfinite(m), m, 0.0)
        return (shift + np.log(np.sum(np.exp(rows - shift), axis=1, keepdims=True)))[:, 0]


def ref_logsumexp(x, axis=-1):
    x = np.asarray(x).astype(np.float64)
    axes = class_axes(x.ndim, axis)
    rows, batch_shape, _ = _to_rows(x, axes)
    return _logsumexp_rows(rows).reshape(batch_shape)


def ref_log_softmax(x, axis=-1):
    x = np.asarray(x).astype(np.float64)
    axes = class_axes(x.ndim, axis)
    rows, _, perm = _to_rows(x, axes)
    with np.errstate(all="ignore"):
        out = rows - _logsumexp_rows(rows)[:, None]
    return _from_rows(out, x.shape, perm)


def ref_softmax(x, axis=-1):
    return np.exp(ref_log_softmax(x, axis=axis))


def ref_sequence_score(logits, target, *, ignore_index=-100):
    """Per-sequence log-likelihood the way lm-evaluation-harness computes it: a full float64
    log_softmax over (..., T, V), gather the targets, sum over the counted positions (target
    != ignore_index); greedy: every counted target is the first argmax of its row.
    Returns (logprob, count, greedy), arrays over the leading axes."""
    x = np.asarray(logits).astype(np.float64)
    y = np.asarray(target)
    logp = ref_log_softmax(x, axis=-1)                      # (..., T, V), materialised
    counted = y != ignore_index
    picked = np.take_along_axis(logp, np.where(counted, y, 0)[..., None], axis=-1)[..., 0]
    logprob = np.where(counted, picked, 0.0).sum(axis=-1)
    hit = (np.argmax(x, axis=-1) == y) & ~np.isnan(picked)
    greedy = np.all(hit | ~counted, axis=-1)
    return logprob, counted.sum(axis=-1), greedy


def ref_score(logits, target, *, axis=-1, ignore_index=-100, sample_weight=None,
              from_logits=True, top_k=(1,)):
    """The sums of a ``ce.Score`` from first principles: float64 log-sum-exp, the first argmax
    and strict ranks (k-hit: fewer than k classes score above the label), summed with
    math.fsum (exactly rounded, like Score's exact sums). Returns a dict of Score's fields."""
    x = np.asarray(logits)
    eps = np.finfo(x.dtype).eps
    v, _, _ = _to_rows(x.astype(np.float64), class_axes(x.ndim, axis))
    y = np.asarray(target).reshape(-1)
    w = (np.ones(len(y)) if sample_weight is None
         else np.broadcast_to(np.asarray(sample_weight, dtype=np.float64), np.shape(target)).reshape(-1))
    keep = (y != ignore_index) & (w != 0)
    yk = np.where(keep, y, 0)
    xy = v[np.arange(len(y)), yk]
    if from_logits:
        m = v.max(axis=1)
        loss = m + np.log(np.exp(v - m[:, None]).sum(axis=1)) - xy
    else:
        loss = -np.log(np.maximum(xy, eps))
    rank = (v > xy[:, None]).sum(axis=1)
    hit1 = keep & (v.argmax(axis=1) == y)
    return dict(loss_sum=math.fsum((w * loss)[keep]), weight_sum=math.fsum(w[keep]),
                count=int(keep.sum()), rows=len(y), correct=math.fsum(w[hit1]),
                top_k_correct={k: math.fsum(w[hit1] if k == 1 else w[keep & (rank < k)])
                               for k in top_k})


def ref_linear(hidden, linear_weight, target, *, linear_bias=None, grad_output=1.0, **options):
    """(loss, grad_hidden, grad_linear_weight, grad_linear_bias or None) of the materialised
    float64 logits ``hidden @ linear_weight.T + linear_bias``; ``options`` are
    ref_cross_entropy's (class axis last)."""
    h64, w64 = np.asarray(hidden, np.float64), np.asarray(linear_weight, np.float64)
    b = linear_bias
    logits = h64 @ w64.T + (0.0 if b is None else np.asarray(b, np.float64))
    loss = ref_cross_entropy(logits, target, **options)
    g = ref_grad(logits, target, grad_output=grad_output, **options)
    g2 = g.reshape(-1, w64.shape[0])
    gh = (g2 @ w64).reshape(h64.shape)
    gw = g2.T @ h64.reshape(-1, w64.shape[1])
    gb = None if b is None else g2.sum(axis=0)
    return loss, gh, gw, gb
