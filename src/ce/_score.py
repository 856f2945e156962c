"""ce.score: loss, perplexity and top-k accuracy in one pass, as mergeable sums.

A `Score` holds sums only (float64) and counts (int), so the scores of row
chunks, threads or cluster partitions add up (``a + b``) to the score of the
whole; the means are derived from the sums on demand.
"""
import math
import operator

import numpy as np

from . import _kernels
from ._args import check_top_k, dense_not_accepted


class Score:
    """Mergeable scoring totals; the result of `ce.score`.

    Attributes
    ----------
    loss_sum : float
        Sum over the counted examples of sample_weight * loss (float64).
    weight_sum : float
        Sum of the counted examples' sample weights (their count without
        sample weights): the mean's denominator.
    count : int
        Number of counted examples: not ``ignore_index`` and sample weight != 0.
    rows : int
        Number of examples seen, ignored ones included.
    correct : float
        Sample-weighted number of top-1 hits.
    top_k_correct : dict of int to float
        Sample-weighted number of top-k hits, per k.

    Derived: `mean_loss`, `perplexity`, `accuracy`, `top_k_accuracy`.
    ``a + b`` (and ``sum([...])``) merges scores of disjoint examples.
    """

    __slots__ = ("loss_sum", "weight_sum", "count", "rows", "correct", "top_k_correct")

    def __init__(self, loss_sum=0.0, weight_sum=0.0, count=0, rows=0, correct=0.0,
                 top_k_correct=None):
        self.loss_sum = float(loss_sum)
        self.weight_sum = float(weight_sum)
        self.count = int(count)
        self.rows = int(rows)
        self.correct = float(correct)
        self.top_k_correct = {int(k): float(v) for k, v in (top_k_correct or {}).items()}

    @classmethod
    def empty(cls, top_k=(1,)):
        """The score of no examples (the neutral element of ``+``)."""
        return cls(top_k_correct={k: 0.0 for k in check_top_k(top_k)})

    def __add__(self, other):
        if isinstance(other, int) and other == 0:  # sum() starts from 0
            return self
        if not isinstance(other, Score):
            return NotImplemented
        if self.top_k_correct.keys() != other.top_k_correct.keys():
            raise ValueError(f"cannot merge scores with different top_k: "
                             f"{sorted(self.top_k_correct)} and {sorted(other.top_k_correct)}")
        return Score(self.loss_sum + other.loss_sum, self.weight_sum + other.weight_sum,
                     self.count + other.count, self.rows + other.rows,
                     self.correct + other.correct,
                     {k: v + other.top_k_correct[k] for k, v in self.top_k_correct.items()})

    __radd__ = __add__

    def __eq__(self, other):
        if not isinstance(other, Score):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable sums: not hashable

    @property
    def mean_loss(self):
        """loss_sum / weight_sum; NaN over nothing (as ce.cross_entropy's mean)."""
        return _ratio(self.loss_sum, self.weight_sum)

    @property
    def perplexity(self):
        """exp(mean_loss)."""
        m = self.mean_loss
        return math.inf if m > 709.0 else math.exp(m)

    @property
    def accuracy(self):
        """Sample-weighted fraction of counted examples whose label is the first argmax."""
        return self.correct / self.weight_sum if self.weight_sum else math.nan

    @property
    def top_k_accuracy(self):
        """{k: fraction of counted examples with fewer than k classes scoring above the label}."""
        return {k: (v / self.weight_sum if self.weight_sum else math.nan)
                for k, v in self.top_k_correct.items()}

    def to_dict(self):
        """The sums and the derived values, as plain Python numbers."""
        return {"rows": self.rows, "count": self.count, "weight_sum": self.weight_sum,
                "loss_sum": self.loss_sum, "mean_loss": self.mean_loss,
                "perplexity": self.perplexity, "accuracy": self.accuracy,
                "top_k_accuracy": self.top_k_accuracy, "correct": self.correct,
                "top_k_correct": dict(self.top_k_correct)}

    def __repr__(self):
        top = ", ".join(f"{k}: {v:.6g}" for k, v in self.top_k_accuracy.items())
        return (f"Score(mean_loss={self.mean_loss:.6g}, perplexity={self.perplexity:.6g}, "
                f"accuracy={self.accuracy:.6g}, top_k_accuracy={{{top}}}, count={self.count}, "
                f"rows={self.rows}, weight_sum={self.weight_sum:.6g}, loss_sum={self.loss_sum:.17g})")


def _ratio(total, denom):
    if denom == 0:  # the rule of ce.cross_entropy's "mean" over nothing
        return math.nan if total == 0 or math.isnan(total) else math.copysign(math.inf, total)
    return total / denom


def tally(labels, row_loss, argmax, hits, row_weight, ignore_index, loss_sum=None):
    """A Score from per-row results (flat arrays over the same rows).

    row_loss is each row's weighted loss (0 for masked rows); hits maps each k
    to the rows' top-k hit flags (unused for k = 1, which is argmax == label).
    A row with a NaN loss counts as a miss. The weight sum is taken like the hit
    sums, so that an accuracy of all hits is exactly 1.
    """
    keep = labels != ignore_index
    if row_weight is not None:
        keep &= row_weight != 0
    ok = keep & ~np.isnan(row_loss)
    weight_sum = np.count_nonzero(keep) if row_weight is None else row_weight[keep].sum()

    def weighted(flags):
        flags = flags & ok
        return np.count_nonzero(flags) if row_weight is None else row_weight[flags].sum()

    correct = weighted(argmax == labels)
    top = {k: (correct if k == 1 else weighted(h)) for k, h in hits.items()}
    if loss_sum is None:
        loss_sum = row_loss.sum()
    return Score(loss_sum, weight_sum, np.count_nonzero(keep), labels.size, correct, top)


def score(logits, target, *, axis=-1, ignore_index=-100, sample_weight=None, from_logits=True,
          top_k=(1,), n_threads=None):
    """Loss sum, mean loss, perplexity and top-k accuracy, in one pass over the logits.

    Parameters
    ----------
    logits : array_like, float16/32/64
        Scores (or probabilities with ``from_logits=False``), any shape with a
        class axis; any strides.
    target : array_like of ints
        Class indices: the logits' shape without the class axis. Dense
        (one-hot or probability) targets are not accepted.
    axis : int or tuple of ints, default -1
        The class axis, as in `ce.cross_entropy`.
    ignore_index : int, default -100
        Examples with this label are not counted.
    sample_weight : array_like, optional
        Per-example weights (float or bool mask); weights the loss and the
        accuracies. Examples of weight 0 are not counted.
    from_logits : bool, default True
        False: ``logits`` are probabilities; the loss is -log(max(p, eps)).
    top_k : int or sequence of ints >= 1, default (1,)
        The k for `Score.top_k_accuracy` (``accuracy``, top-1, is always computed).
    n_threads : int, optional
        Cap on OpenMP threads, as in `ce.cross_entropy`.

    Returns
    -------
    Score
        Sums that merge exactly with ``+`` (float64 loss and weight sums,
        integer counts), and ``mean_loss``, ``perplexity`` (exp of the mean
        loss), ``accuracy`` and ``top_k_accuracy``.

    Notes
    -----
    The loss and weights are those of ``ce.cross_entropy(..., reduction="sum")``;
    ``mean_loss`` equals its "mean" (to rounding, with sample weights). Top-1: an example is a hit when its label
    is the first index of the row's maximum (the argmax the loss already
    computes; a tie with an earlier class is a miss). Top-k for k > 1: a hit
    when fewer than k classes score strictly higher than the label, so ties
    count in the label's favour. ``top_k_accuracy[1]`` equals ``accuracy``.
    A row with a NaN loss is a miss. Everything comes from one kernel run
    (ranks for k > 1 are counted while the row is in cache).

    Examples
    --------
    >>> s = ce.score(logits, labels, top_k=(1, 5))
    >>> s.mean_loss, s.perplexity, s.accuracy, s.top_k_accuracy[5]
    >>> total = ce.score(x[:1000], y[:1000]) + ce.score(x[1000:], y[1000:])  # == one call
    """
    ks = check_top_k(top_k)
    call = _kernels.Call(logits=logits, target=target, axis=axis, reduction="sum",
                         sample_weight=sample_weight, ignore_index=ignore_index,
                         from_logits=from_logits, n_threads=n_threads)
    if not call.has_labels:
        raise dense_not_accepted(call.rest, "ce.score")
    n = call.n_rows
    row_loss, argmax = np.empty(n), np.empty(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64) if max(ks, default=1) > 1 else None
    loss_sum = _kernels.solve(call, row_loss=row_loss, row_argmax=argmax, row_rank=rank)
    hits = {k: (None if k == 1 else rank < k) for k in ks}
    return tally(call.labels, row_loss, argmax, hits, call.row_weight, call.ignore_index, loss_sum)
