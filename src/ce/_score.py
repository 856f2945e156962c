"""ce.score: loss, perplexity and top-k accuracy in one pass, as mergeable sums.

A `Score` holds exact sums (`ExactSum`) and counts (int), so the scores of
row chunks, threads or cluster partitions add up (``a + b``) to the bitwise
same score as one call over the whole, whatever the split; the float sums
and the means are derived on demand (each rounded once).
"""
import math
import operator
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _kernels
from ._args import check_top_k, dense_not_accepted
from ._exactsum import ExactSum


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
    ``a + b`` (and ``sum([...])``) merges scores of disjoint examples. The
    float sums are exact sums of the per-example float64 values rounded once,
    so a merge of the scores of any split of the examples equals, bit for
    bit, the score of one call over all of them.
    """

    __slots__ = ("_loss", "_weight", "count", "rows", "_correct", "_top")

    count: int
    rows: int

    def __init__(self, loss_sum: Any = 0.0, weight_sum: Any = 0.0, count: int = 0, rows: int = 0,
                 correct: Any = 0.0, top_k_correct: dict[int, Any] | None = None) -> None:
        self._loss = _exact(loss_sum)
        self._weight = _exact(weight_sum)
        self.count = int(count)
        self.rows = int(rows)
        self._correct = _exact(correct)
        self._top = {int(k): _exact(v) for k, v in (top_k_correct or {}).items()}

    @classmethod
    def empty(cls, top_k: int | Iterable[int] = (1,)) -> "Score":
        """The score of no examples (the neutral element of ``+``)."""
        return cls(top_k_correct={k: 0.0 for k in check_top_k(top_k)})

    @property
    def loss_sum(self) -> float:
        """Sum over the counted examples of sample_weight * loss, rounded once to float64."""
        return float(self._loss)

    @property
    def weight_sum(self) -> float:
        """Sum of the counted examples' sample weights (their count without weights)."""
        return float(self._weight)

    @property
    def correct(self) -> float:
        """Sample-weighted number of top-1 hits."""
        return float(self._correct)

    @property
    def top_k_correct(self) -> dict[int, float]:
        """{k: sample-weighted number of top-k hits} (a new dict of floats)."""
        return {k: float(v) for k, v in self._top.items()}

    def __add__(self, other: "Score | int") -> "Score":
        if isinstance(other, int) and other == 0:  # sum() starts from 0
            return self
        if not isinstance(other, Score):
            return NotImplemented
        if self._top.keys() != other._top.keys():
            raise ValueError(f"cannot merge scores with different top_k: "
                             f"{sorted(self._top)} and {sorted(other._top)}")
        return Score(self._loss + other._loss, self._weight + other._weight,
                     self.count + other.count, self.rows + other.rows,
                     self._correct + other._correct,
                     {k: v + other._top[k] for k, v in self._top.items()})

    __radd__ = __add__

    def __eq__(self, other: object) -> bool:
        """Equal exact sums and counts (so equal bits in every float field)."""
        if not isinstance(other, Score):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable sums: not hashable

    @property
    def mean_loss(self) -> float:
        """loss_sum / weight_sum; NaN over nothing (as ce.cross_entropy's mean)."""
        return _ratio(self.loss_sum, self.weight_sum)

    @property
    def perplexity(self) -> float:
        """exp(mean_loss)."""
        m = self.mean_loss
        return math.inf if m > 709.0 else math.exp(m)

    @property
    def accuracy(self) -> float:
        """Sample-weighted fraction of counted examples whose label is the first argmax."""
        return self.correct / self.weight_sum if self.weight_sum else math.nan

    @property
    def top_k_accuracy(self) -> dict[int, float]:
        """{k: fraction of counted examples with fewer than k classes scoring above the label}."""
        return {k: (v / self.weight_sum if self.weight_sum else math.nan)
                for k, v in self.top_k_correct.items()}

    def to_dict(self) -> dict[str, Any]:
        """The sums and the derived values, as plain Python numbers."""
        return {"rows": self.rows, "count": self.count, "weight_sum": self.weight_sum,
                "loss_sum": self.loss_sum, "mean_loss": self.mean_loss,
                "perplexity": self.perplexity, "accuracy": self.accuracy,
                "top_k_accuracy": self.top_k_accuracy, "correct": self.correct,
                "top_k_correct": dict(self.top_k_correct)}

    def __repr__(self) -> str:
        top = ", ".join(f"{k}: {v:.6g}" for k, v in self.top_k_accuracy.items())
        return (f"Score(mean_loss={self.mean_loss:.6g}, perplexity={self.perplexity:.6g}, "
                f"accuracy={self.accuracy:.6g}, top_k_accuracy={{{top}}}, count={self.count}, "
                f"rows={self.rows}, weight_sum={self.weight_sum:.6g}, loss_sum={self.loss_sum:.17g})")


def _exact(value):
    """An ExactSum as it is, or the exact value of a float / int."""
    return value if isinstance(value, ExactSum) else ExactSum.of_float(value)


def _ratio(total, denom):
    if denom == 0:  # the rule of ce.cross_entropy's "mean" over nothing
        return math.nan if total == 0 or math.isnan(total) else math.copysign(math.inf, total)
    return total / denom


def tally(labels, row_loss, argmax, hits, row_weight, ignore_index):
    """A Score from per-row results (flat arrays over the same rows).

    row_loss is each row's weighted float64 loss (0 for masked rows); hits maps
    each k to the rows' top-k hit flags (unused for k = 1, which is argmax ==
    label). A row with a NaN loss counts as a miss. Every sum is exact (so it
    does not depend on how the rows were split); the weight sum is taken like
    the hit sums, so that an accuracy of all hits is exactly 1.
    """
    keep = labels != ignore_index
    if row_weight is not None:
        row_weight = np.asarray(row_weight, dtype=np.float64)
        keep &= row_weight != 0
    ok = keep & ~np.isnan(row_loss)

    def weighted(flags):
        if row_weight is None:
            return ExactSum.of_float(np.count_nonzero(flags))
        return ExactSum.of_array(row_weight, flags)

    correct = weighted((argmax == labels) & ok)
    top = {k: (correct if k == 1 else weighted(h & ok)) for k, h in hits.items()}
    loss_sum = ExactSum.of_array(row_loss)
    return Score(loss_sum, weighted(keep), np.count_nonzero(keep), labels.size, correct, top)


def score(logits: ArrayLike, target: ArrayLike, *, axis: int | tuple[int, ...] = -1,
          ignore_index: int = -100, sample_weight: ArrayLike | None = None,
          from_logits: bool = True, top_k: int | Iterable[int] = (1,),
          n_threads: int | None = None) -> Score:
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
        Exact sums that merge with ``+`` (the loss, weight and hit sums are
        exact sums of the per-example float64 values, rounded once when
        read; counts are ints), so the merged scores of any split of the
        examples equal one call bit for bit, and ``mean_loss``, ``perplexity`` (exp of the mean
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
    counts = _kernels.score_counts(call, tuple(min(k, 1 << 62) for k in ks))
    if counts is not None:   # unweighted: tallied in the kernel pass, no per-row arrays
        units, special, correct, top = counts
        kept = int(call.weight_total)   # the count of rows not ignored
        return Score(ExactSum(units, special), kept, kept, n, correct, dict(zip(ks, top)))
    row_loss, argmax = np.empty(n), np.empty(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64) if max(ks, default=1) > 1 else None
    _kernels.solve(call, row_loss=row_loss, row_argmax=argmax, row_rank=rank)
    hits = {k: (None if k == 1 else rank < k) for k in ks}
    return tally(call.labels, row_loss, argmax, hits, call.row_weight, call.ignore_index)
