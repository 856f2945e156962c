"""ce.sequence_score: per-sequence log-likelihood and greedy match, in one pass over the logits.

The kernel's forward already yields each position's loss (-log p(target)) and
its row's first argmax; the per-sequence totals are O(N) reductions of those
over the time axis. Nothing of size T x V is allocated.
"""
import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels
from ._args import as_array, as_logits, check_index_target
from ._kernels import Call


class SequenceScore:
    """Per-sequence results of `ce.sequence_score`, arrays over the leading axes.

    Attributes
    ----------
    logprob : ndarray of float64
        Sum of log p(target) over the counted positions (0.0 where none).
    count : ndarray of int64
        Number of counted positions (target != ignore_index).
    greedy : ndarray of bool
        True where every counted target is the first argmax of its row
        (greedy decoding would have produced it); True where nothing is counted.
    """

    __slots__ = ("logprob", "count", "greedy")

    logprob: NDArray[np.float64]
    count: NDArray[np.int64]
    greedy: NDArray[np.bool_]

    def __init__(self, logprob: NDArray[np.float64], count: NDArray[np.int64],
                 greedy: NDArray[np.bool_]) -> None:
        self.logprob, self.count, self.greedy = logprob, count, greedy

    def __repr__(self) -> str:
        return (f"SequenceScore(logprob={self.logprob!r}, count={self.count!r}, "
                f"greedy={self.greedy!r})")


def sequence_score(logits: ArrayLike, target: ArrayLike, *, ignore_index: int = -100,
                   n_threads: int | None = None) -> SequenceScore:
    """Log-likelihood of each sequence's targets, and whether greedy decoding gives them.

    Parameters
    ----------
    logits : array_like, float16/bfloat16/float32/float64, shape (..., T, V)
        Next-token scores, the class (vocabulary) axis last; any strides.
    target : array_like of ints, shape (..., T)
        The token each position should predict; ``ignore_index`` marks the
        positions not scored (a prompt, padding).
    ignore_index : int, default -100
        Target value of the positions that are not counted.
    n_threads : int, optional
        Cap on OpenMP threads, as in `ce.cross_entropy`.

    Returns
    -------
    SequenceScore
        ``logprob`` (float64), ``count`` (int64) and ``greedy`` (bool),
        arrays of shape ``logits.shape[:-2]`` (0-d for one sequence).

    Raises
    ------
    ValueError
        If logits has fewer than 2 dimensions, the target's shape is not
        ``logits.shape[:-1]``, or a counted target is outside [0, V) (the
        message gives its position). Nothing is computed before the checks.
    TypeError
        For non-float logits or non-integer targets.

    Notes
    -----
    ``logprob`` is a float64 sum, over the time axis, of each position's
    log-softmax at the target, computed as in ``ce.cross_entropy(...,
    reduction="none")`` (max-shifted log-sum-exp, float32 lanes flushed to
    float64 for float32 and half-precision logits). A position whose logits
    hold a NaN gives a NaN ``logprob`` and is not greedy.

    Examples
    --------
    >>> s = ce.sequence_score(logits, target)   # logits (B, T, V), target (B, T)
    >>> s.logprob, s.count, s.greedy
    """
    x, _ = as_logits(logits)
    if x.ndim < 2:
        raise ValueError(f"logits must have shape (..., T, V) (at least 2 dimensions), "
                         f"got {x.shape}")
    tgt = as_array(target, "target")
    check_index_target(tgt.shape, tgt.dtype, x.shape[:-1])
    call = Call(logits=x, target=tgt, reduction="none", ignore_index=ignore_index,
                n_threads=n_threads)
    n = call.n_rows
    row_loss, argmax = np.empty(n), np.empty(n, dtype=np.int64)
    _kernels.solve(call, row_loss=row_loss, row_argmax=argmax)
    seq = call.rest                    # (..., T)
    assert call.labels is not None     # an index target (checked above)
    labels = call.labels.reshape(seq)
    counted = labels != call.ignore_index
    loss = row_loss.reshape(seq)
    hit = (argmax.reshape(seq) == labels) & ~np.isnan(loss)
    logprob = 0.0 - loss.sum(axis=-1)  # 0.0 - 0.0 is +0.0 where nothing is counted
    return SequenceScore(np.asarray(logprob, dtype=np.float64),
                         np.asarray(counted.sum(axis=-1), dtype=np.int64),
                         np.asarray(np.all(hit | ~counted, axis=-1)))
