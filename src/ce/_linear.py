"""Cross-entropy of a linear layer's output, chunk by chunk: the logits
``hidden @ linear_weight.T + linear_bias`` are never materialised whole.

Each chunk of rows is one BLAS product into a reused buffer, then ce's fused
kernel in place on that buffer (the buffer becomes the chunk's gradient with
respect to its logits), then, for the gradients, two more BLAS products. All
arguments are validated, and the mean's denominator computed, before the
first chunk runs.
"""
import math

import numpy as np

from . import _kernels
from ._args import as_array, as_logits, c_array, check_count, check_labels, problem, same_dtype
from ._loss import _grad_scale, _reduce
from ._score import check_top_k, tally

# Default chunk: its logits take about this many bytes ...
LOGITS_BUDGET = 32 << 20
# ... but at least this many rows (BLAS is slow on thinner products), unless
# that chunk would be larger than the weight matrix itself.
MIN_CHUNK_ROWS = 128

try:  # C += A @ B in place (beta = 1); without it, a weight-sized scratch and an add
    from scipy.linalg import blas as _blas
except ImportError:  # pragma: no cover - scipy is optional
    _blas = None


def default_chunk_rows(n_rows, n_features, n_classes, itemsize):
    """The chunk size for ``chunk_rows=None`` (the rule in the docstrings)."""
    rows = LOGITS_BUDGET // (n_classes * itemsize)
    rows = max(rows, min(MIN_CHUNK_ROWS, n_features))
    return int(max(1, min(rows, n_rows)))


class _Linear:
    """A validated linear cross-entropy call: the inputs in the computing
    dtype, the cross-entropy problem over the (never allocated) logits, and
    the chunk size."""

    __slots__ = ("h", "w", "b", "p", "dtype", "shape", "n_rows", "n_classes", "chunk_rows",
                 "denom")

    def __init__(self, hidden, linear_weight, target, linear_bias, weight, sample_weight,
                 reduction, ignore_index, label_smoothing, z_loss, softcap, chunk_rows,
                 n_threads):
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
        # the cross-entropy problem over a stand-in for the logits: a zero-stride
        # view of one element, so its validation allocates nothing of size N x V
        stand_in = np.broadcast_to(np.zeros((), dtype=h.dtype), rest + (n_classes,))
        self.p = problem(stand_in, target, -1, reduction, weight, sample_weight, ignore_index,
                         label_smoothing, True, n_threads, z_loss, softcap)
        if linear_bias is None:
            self.b = None
        else:
            b = as_array(linear_bias, "linear_bias")
            if b.dtype.kind not in "fiu":
                raise TypeError(f"linear_bias must be a real array, got dtype {b.dtype}")
            if b.shape != (n_classes,):
                raise ValueError(f"linear_bias must have shape ({n_classes},) (one per class), "
                                 f"got {b.shape}")
            self.b = c_array(b, dtype=h.dtype)
        self.denom = check_labels(self.p)
        self.h = c_array(h.reshape(self.n_rows, n_features))
        self.w = c_array(w)
        if chunk_rows is None:
            chunk_rows = default_chunk_rows(self.n_rows, n_features, n_classes, h.dtype.itemsize)
        self.chunk_rows = max(1, min(chunk_rows, self.n_rows))

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

    def run(self, mode, start, stop, logits, grad=False, scale=1.0, row_grad=None,
            row_loss=None, argmax=None, rank=None):
        """ce's kernel on one chunk (in place when grad); returns its loss sum."""
        p = self.p
        x = logits.reshape(stop - start, self.n_classes, 1)
        cut = slice(start, stop)
        return _kernels.run(
            mode, x, p.kind, None if p.t is None else p.t[cut], x if grad else None,
            None if p.labels is None else p.labels[cut], p.ignore_index, p.class_weight,
            p.class_weight_sum, None if p.row_weight is None else p.row_weight[cut],
            None if row_grad is None else row_grad[cut], scale, p.smoothing, p.z_loss,
            p.softcap, True, None, None if row_loss is None else row_loss[cut], None,
            None if argmax is None else argmax[cut], None if rank is None else rank[cut],
            p.n_threads, float(np.finfo(self.h.dtype).eps))

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


def linear_cross_entropy(hidden, linear_weight, target, *, linear_bias=None, weight=None,
                         sample_weight=None, reduction="mean", ignore_index=-100,
                         label_smoothing=0.0, z_loss=0.0, softcap=None, chunk_rows=None,
                         n_threads=None):
    lin = _Linear(hidden, linear_weight, target, linear_bias, weight, sample_weight, reduction,
                  ignore_index, label_smoothing, z_loss, softcap, chunk_rows, n_threads)
    p = lin.p
    row_loss = np.empty(p.n_rows) if p.reduction == "none" else None
    total = 0.0
    for start, stop, logits in lin.chunks():
        total += lin.run(_kernels.MODE_FORWARD, start, stop, logits, row_loss=row_loss)
    p.dtype = lin.dtype
    return _reduce(p, total, lin.denom, row_loss)


def linear_cross_entropy_with_grad(hidden, linear_weight, target, *, linear_bias=None,
                                   weight=None, sample_weight=None, reduction="mean",
                                   ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                                   softcap=None, chunk_rows=None, n_threads=None,
                                   grad_output=1.0):
    lin = _Linear(hidden, linear_weight, target, linear_bias, weight, sample_weight, reduction,
                  ignore_index, label_smoothing, z_loss, softcap, chunk_rows, n_threads)
    p = lin.p
    scale, row_grad = _grad_scale(p, grad_output, lin.denom)
    row_loss = np.empty(p.n_rows) if p.reduction == "none" else None
    grad_h = np.empty_like(lin.h)
    grad_w = np.zeros_like(lin.w)
    grad_b = None if lin.b is None else np.zeros(lin.n_classes)  # float64 sums
    add_into = _gemm_accumulate(grad_w)
    total = 0.0
    for start, stop, logits in lin.chunks():
        total += lin.run(_kernels.MODE_FUSED, start, stop, logits, grad=True, scale=scale,
                         row_grad=row_grad, row_loss=row_loss)
        g = logits  # now d loss / d logits of the chunk
        np.matmul(g, lin.w, out=grad_h[start:stop])
        add_into(g, lin.h[start:stop])
        if grad_b is not None:
            grad_b += g.sum(axis=0, dtype=np.float64)
    p.dtype = lin.dtype
    loss = _reduce(p, total, lin.denom, row_loss)
    grad_h = lin.result_dtype(grad_h.reshape(lin.shape))
    grad_w = lin.result_dtype(grad_w)
    if grad_b is not None:
        grad_b = grad_b.astype(lin.dtype)
    return loss, grad_h, grad_w, grad_b


def _gemm_accumulate(grad_w):
    """A function (g, h) -> grad_w += g.T @ h, in grad_w's dtype."""
    if _blas is not None:
        gemm = _blas.sgemm if grad_w.dtype == np.float32 else _blas.dgemm
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


def linear_score(hidden, linear_weight, target, *, linear_bias=None, top_k=(1,),
                 ignore_index=-100, sample_weight=None, softcap=None, chunk_rows=None,
                 n_threads=None):
    ks = check_top_k(top_k)
    lin = _Linear(hidden, linear_weight, target, linear_bias, None, sample_weight, "sum",
                  ignore_index, 0.0, 0.0, softcap, chunk_rows, n_threads)
    p = lin.p
    if p.kind != _kernels.TARGET_INDEX:
        raise TypeError(f"target must hold class indices of shape {p.rest}; ce.linear_score "
                        f"does not take one-hot or probability targets")
    n = p.n_rows
    row_loss, argmax = np.empty(n), np.empty(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64) if max(ks) > 1 else None
    loss_sum = 0.0
    for start, stop, logits in lin.chunks():
        loss_sum += lin.run(_kernels.MODE_FORWARD, start, stop, logits, row_loss=row_loss,
                            argmax=argmax, rank=rank)
    hits = {k: (None if k == 1 else rank < k) for k in ks}
    return tally(p.labels, row_loss, argmax, hits, p.row_weight, p.ignore_index, loss_sum)


_DOC_COMMON = """
    hidden : array_like, float32 or float64 (float16: computed in float32), shape (..., D)
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
