"""Cross-entropy of a linear layer's output, chunk by chunk: the logits
``hidden @ linear_weight.T + linear_bias`` are never materialised whole.

Each chunk of rows is one BLAS product into a reused buffer, then ce's fused
kernel in place on that buffer (the buffer becomes the chunk's gradient with
respect to its logits), then, for the gradients, two more BLAS products. All
arguments are validated, and the mean's denominator computed, before the
first chunk runs.
"""
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels
from ._args import (Reduction, as_array, as_logits, c_array, check_count, check_top_k,
                    dense_not_accepted, is_bfloat16, kernel_real, same_dtype)
from ._kernels import Call
from ._score import Score, tally

# Default chunk: its logits take about this many bytes ...
LOGITS_BUDGET = 32 << 20
# ... but at least this many rows (BLAS is slow on thinner products), unless
# that chunk would be larger than the weight matrix itself.
MIN_CHUNK_ROWS = 128


def _scipy_blas():
    """SciPy's BLAS module (C += A @ B in place, beta = 1), or None without SciPy.

    Imported on the first gradient call, not with ce: scipy.linalg takes about
    0.3 s to import, two thirds of ``import ce`` when it was imported eagerly.
    """
    try:
        from scipy.linalg import blas
    except ImportError:  # pragma: no cover - scipy is optional
        return None
    return blas


def default_chunk_rows(n_rows, n_features, n_classes, itemsize):
    """The chunk size for ``chunk_rows=None`` (the rule in the docstrings)."""
    rows = LOGITS_BUDGET // (n_classes * itemsize)
    rows = max(rows, min(MIN_CHUNK_ROWS, n_features))
    return int(max(1, min(rows, n_rows)))


class _Linear:
    """A validated linear cross-entropy call: the inputs in the computing dtype,
    one `Call` over the (never allocated) logits that validates every option
    and holds the labels, weights and upstream gradient of all rows, and the
    chunk size."""

    __slots__ = ("h", "w", "b", "call", "dtype", "shape", "n_rows", "n_classes", "chunk_rows",
                 "options")

    def __init__(self, hidden, linear_weight, target, *, linear_bias, chunk_rows, **options):
        chunk_rows = check_count(chunk_rows, "chunk_rows")
        h_in, w_in = as_array(hidden, "hidden"), as_array(linear_weight, "linear_weight")
        h, self.dtype = as_logits(h_in, "hidden")
        w, _ = as_logits(w_in, "linear_weight")
        if not same_dtype(h_in.dtype, w_in.dtype):
            raise TypeError(f"hidden and linear_weight must have the same dtype, "
                            f"got {h_in.dtype} and {w_in.dtype}")
        if w.ndim != 2:
            raise ValueError(f"linear_weight must have shape (V, D), got {w.shape}")
        n_classes, n_features = w.shape
        if h.shape[-1] != n_features:
            raise ValueError(f"hidden has {h.shape[-1]} features (last axis) but linear_weight "
                             f"has {n_features} (shape {w.shape} is (V, D))")
        if n_classes == 0:
            raise ValueError("linear_weight has no classes (V = 0)")
        self.shape, rest = h.shape, h.shape[:-1]
        self.n_rows, self.n_classes = math.prod(rest), n_classes
        # the cross-entropy call over a stand-in for the logits: a zero-stride
        # view of one element, so its validation allocates nothing of size N x V
        stand_in = np.broadcast_to(np.zeros((), dtype=self.dtype), rest + (n_classes,))
        self.call = Call(logits=stand_in, target=target, **options)
        if linear_bias is None:
            self.b = None
        else:
            b = as_array(linear_bias, "linear_bias")
            if b.dtype.kind not in "fiu" and not is_bfloat16(b.dtype):
                raise TypeError(f"linear_bias must be a real array, got dtype {b.dtype}")
            if b.shape != (n_classes,):
                raise ValueError(f"linear_bias must have shape ({n_classes},) (one per class), "
                                 f"got {b.shape}")
            self.b = c_array(b, dtype=kernel_real(h.dtype))
        # half precision: the products and the kernel run in float32
        self.h = c_array(h.reshape(self.n_rows, n_features), dtype=kernel_real(h.dtype))
        self.w = c_array(w, dtype=kernel_real(h.dtype))
        if chunk_rows is None:
            chunk_rows = default_chunk_rows(self.n_rows, n_features, n_classes, self.h.dtype.itemsize)
        self.chunk_rows = max(1, min(chunk_rows, self.n_rows))
        # the options every chunk's Call repeats (the per-row ones are sliced per chunk)
        self.options = {k: options[k] for k in ("ignore_index", "label_smoothing", "z_loss",
                                                "softcap", "n_threads") if k in options}

    def chunks(self):
        """(start, stop, logits) per chunk; logits is the reused buffer, filled."""
        n, m = self.n_rows, self.chunk_rows
        if n == 0:
            return
        buf = np.empty((m, self.n_classes), dtype=self.h.dtype)
        w_t = self.w.T
        for start in range(0, n, m):
            stop = min(start + m, n)
            logits = buf[: stop - start]
            np.matmul(self.h[start:stop], w_t, out=logits)
            if self.b is not None:
                logits += self.b
            yield start, stop, logits

    def chunk_call(self, start, stop, logits):
        """The Call of rows [start, stop): their slice of the labels (or dense
        target), sample weights and upstream gradient; "mean" and "sum" run as
        "sum" with the whole call's gradient scale."""
        c = self.call
        cut = slice(start, stop)
        if c.has_labels:
            target = c.labels[cut]
        else:  # a view of the dense target (V,), (N, V) or its (N, V, 1) rows view
            target = c.target_rows.reshape(self.n_rows, self.n_classes)[cut]
        upstream = None if c.upstream_grad is None else c.upstream_grad[cut]
        return Call(logits=logits, target=target, weight=c.class_weight_64,
                    sample_weight=None if c.row_weight is None else c.row_weight[cut],
                    reduction="none" if c.reduction == "none" else "sum",
                    grad_output=c.grad_scale if upstream is None else upstream, **self.options)

    def run(self, start, stop, logits, *, grad=False, row_loss=None, row_argmax=None,
            row_rank=None):
        """ce's kernel on one chunk (the gradient in place when grad); returns its loss sum."""
        cut = slice(start, stop)
        return _kernels.solve(
            self.chunk_call(start, stop, logits), grad=logits if grad else None,
            row_loss=None if row_loss is None else row_loss[cut],
            row_argmax=None if row_argmax is None else row_argmax[cut],
            row_rank=None if row_rank is None else row_rank[cut])

    def new_row_loss(self):
        return np.empty(self.n_rows) if self.call.reduction == "none" else None

    def result_dtype(self, a):
        return a if a.dtype == self.dtype else a.astype(self.dtype)


_DOC_CHUNKS = f"""
    chunk_rows : int >= 1, optional
        Rows per chunk. None picks ``max(LOGITS_BUDGET // (V * itemsize),
        min({MIN_CHUNK_ROWS}, D))`` rows, at most N, where LOGITS_BUDGET is
        {LOGITS_BUDGET >> 20} MiB: about {LOGITS_BUDGET >> 20} MiB of logits per chunk, and
        never fewer than {MIN_CHUNK_ROWS} rows (thinner products run BLAS below its
        speed) unless D is smaller (then a chunk of logits is at most as large as
        the weight).
    n_threads : int, optional
        Cap on ce's OpenMP threads (the cross-entropy kernel). The matrix products
        run on NumPy's BLAS with its own thread setting (threadpoolctl limits it).
"""


def linear_cross_entropy(hidden: ArrayLike, linear_weight: ArrayLike, target: ArrayLike, *,
                         linear_bias: ArrayLike | None = None, weight: ArrayLike | None = None,
                         sample_weight: ArrayLike | None = None, reduction: Reduction = "mean",
                         ignore_index: int = -100, label_smoothing: float = 0.0,
                         z_loss: float = 0.0, softcap: float | None = None,
                         chunk_rows: int | None = None, n_threads: int | None = None) -> Any:
    lin = _Linear(hidden, linear_weight, target, linear_bias=linear_bias, chunk_rows=chunk_rows,
                  weight=weight, sample_weight=sample_weight, reduction=reduction,
                  ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
                  softcap=softcap, n_threads=n_threads)
    row_loss = lin.new_row_loss()
    total = 0.0
    for start, stop, logits in lin.chunks():
        total += lin.run(start, stop, logits, row_loss=row_loss)
    return lin.call.result(total, row_loss)


def linear_cross_entropy_with_grad(
        hidden: ArrayLike, linear_weight: ArrayLike, target: ArrayLike, *,
        linear_bias: ArrayLike | None = None, weight: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None, reduction: Reduction = "mean",
        ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
        softcap: float | None = None, chunk_rows: int | None = None,
        n_threads: int | None = None, grad_output: ArrayLike = 1.0,
) -> tuple[Any, NDArray[Any], NDArray[Any], NDArray[Any] | None]:
    lin = _Linear(hidden, linear_weight, target, linear_bias=linear_bias, chunk_rows=chunk_rows,
                  weight=weight, sample_weight=sample_weight, reduction=reduction,
                  ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
                  softcap=softcap, n_threads=n_threads, grad_output=grad_output)
    row_loss = lin.new_row_loss()
    grad_h = np.empty_like(lin.h)
    grad_w = np.zeros_like(lin.w)
    grad_b = None if lin.b is None else np.zeros(lin.n_classes)  # float64 sums
    add_into = _gemm_accumulate(grad_w)
    total = 0.0
    for start, stop, logits in lin.chunks():
        total += lin.run(start, stop, logits, grad=True, row_loss=row_loss)
        g = logits  # now d loss / d logits of the chunk
        np.matmul(g, lin.w, out=grad_h[start:stop])
        add_into(g, lin.h[start:stop])
        if grad_b is not None:
            grad_b += g.sum(axis=0, dtype=np.float64)
    loss = lin.call.result(total, row_loss)
    grad_h = lin.result_dtype(grad_h.reshape(lin.shape))
    grad_w = lin.result_dtype(grad_w)
    if grad_b is not None:
        grad_b = grad_b.astype(lin.dtype)
    return loss, grad_h, grad_w, grad_b


def _gemm_accumulate(grad_w):
    """A function (g, h) -> grad_w += g.T @ h, in grad_w's dtype."""
    blas = _scipy_blas()
    if blas is not None:
        gemm = blas.sgemm if grad_w.dtype == np.float32 else blas.dgemm
        c = grad_w.T  # Fortran order: BLAS updates it in place

        def add_into(g, h):
            # Fortran view: c (D, V) += h.T (D, m) @ op(g.T) (m, V)
            gemm(1.0, h.T, g.T, beta=1.0, c=c, trans_b=1, overwrite_c=1)
        return add_into
    scratch = np.empty_like(grad_w)

    def add_into(g, h):
        np.matmul(g.T, h, out=scratch)
        grad_w += scratch
    return add_into


def linear_score(hidden: ArrayLike, linear_weight: ArrayLike, target: ArrayLike, *,
                 linear_bias: ArrayLike | None = None, top_k: int | Iterable[int] = (1,),
                 ignore_index: int = -100, sample_weight: ArrayLike | None = None,
                 softcap: float | None = None, chunk_rows: int | None = None,
                 n_threads: int | None = None) -> Score:
    ks = check_top_k(top_k)
    lin = _Linear(hidden, linear_weight, target, linear_bias=linear_bias, chunk_rows=chunk_rows,
                  sample_weight=sample_weight, reduction="sum", ignore_index=ignore_index,
                  softcap=softcap, n_threads=n_threads)
    call = lin.call
    if not call.has_labels:
        raise dense_not_accepted(call.rest, "ce.linear_score")
    n = call.n_rows
    row_loss, argmax = np.empty(n), np.empty(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64) if max(ks) > 1 else None
    for start, stop, logits in lin.chunks():
        lin.run(start, stop, logits, row_loss=row_loss, row_argmax=argmax, row_rank=rank)
    hits = {k: (None if k == 1 else rank < k) for k in ks}
    return tally(call.labels, row_loss, argmax, hits, call.row_weight, call.ignore_index)


_DOC_COMMON = """
    hidden : array_like, float32 or float64 (float16, bfloat16: computed in float32), shape (..., D)
        The inputs of the linear layer, one row per example.
    linear_weight : array_like of hidden's dtype, shape (V, D)
        The layer's weight (PyTorch's ``nn.Linear.weight`` layout); V classes.
    target : array_like
        Class indices of shape (...) (any integer dtype), or dense targets of
        shape (..., V), as in `ce.cross_entropy`.
    linear_bias : array_like of shape (V,), optional
        Added to every row of logits.
"""

_DOC_OPTIONS = """
    weight, sample_weight, reduction, ignore_index, label_smoothing, z_loss, softcap
        As in `ce.cross_entropy` (class axis last).
"""

_DOC_NOTES = """
    Notes
    -----
    Computed chunk by chunk: per chunk one BLAS product (NumPy's matmul)
    into a reused (chunk_rows, V) buffer, then ce's fused kernel in place on
    it. Only that buffer is of size O(V) per row: memory above the inputs
    (and the returned gradients) is one chunk of logits plus O(N) and what
    BLAS needs. Every argument is validated, and the mean's denominator
    taken over all rows, before the first chunk. The loss sum adds the
    chunks' float64 sums in order: the result is the same for any chunk size
    up to float64 rounding, and bitwise the same for any thread count at a
    fixed chunk size.
"""

linear_cross_entropy.__doc__ = f"""Cross-entropy of the logits ``hidden @ linear_weight.T + linear_bias``,
    never materialised whole.

    Equal to ``ce.cross_entropy(hidden @ linear_weight.T + linear_bias, target, ...)``
    in a memory of one chunk of logits.

    Parameters
    ----------{_DOC_COMMON}{_DOC_OPTIONS}{_DOC_CHUNKS}
    Returns
    -------
    numpy scalar of hidden's dtype ("mean", "sum"), or an array of the
    per-example shape (...) ("none").
{_DOC_NOTES}
    Examples
    --------
    >>> loss = ce.linear_cross_entropy(h, lm_head, tokens, ignore_index=-100)
    """

linear_cross_entropy_with_grad.__doc__ = f"""The loss and its gradients with respect to
    ``hidden``, ``linear_weight`` and ``linear_bias``, chunk by chunk.

    Parameters
    ----------{_DOC_COMMON}{_DOC_OPTIONS}{_DOC_CHUNKS}    grad_output : float or array, default 1.0
        The upstream gradient (an array broadcastable to the per-example shape
        for ``reduction="none"``).

    Returns
    -------
    loss : as `linear_cross_entropy`
    grad_hidden : ndarray of hidden's shape and dtype
    grad_linear_weight : ndarray of shape (V, D), hidden's dtype
    grad_linear_bias : ndarray of shape (V,), or None without ``linear_bias``
{_DOC_NOTES}
    Per chunk, the kernel turns the buffer into G = d loss / d logits in place;
    then ``grad_hidden[rows] = G @ W`` and ``grad_linear_weight += G.T @ H[rows]``
    (BLAS with beta = 1 through SciPy when it is installed, else a weight-sized
    scratch and an add), both in the input dtype, as PyTorch does;
    ``grad_linear_bias`` sums G's columns in float64. The gradients are new
    arrays returned only when every chunk is done: an interruption (Ctrl-C)
    leaves nothing partial behind.
    """

linear_score.__doc__ = f"""`ce.score` of the logits ``hidden @ linear_weight.T + linear_bias``,
    in bounded memory: how to evaluate a language model from its hidden states.

    Parameters
    ----------{_DOC_COMMON}    top_k : int or sequence of ints >= 1, default (1,)
        As in `ce.score`.
    ignore_index, sample_weight, softcap
        As in `ce.cross_entropy` (softcap changes the loss, never the ranks).
{_DOC_CHUNKS}
    Returns
    -------
    Score
        As `ce.score` of the full logits (class-index targets only).
{_DOC_NOTES}
    """
