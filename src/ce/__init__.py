"""ce: exact, fast softmax cross-entropy for NumPy.

Loss, gradient with respect to the logits, and the fused pair, computed by
vectorized C kernels with OpenMP. See the README for the full semantics.
"""
from ._loss import (
    cross_entropy,
    cross_entropy_grad,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    softmax,
)
from ._config import show_config
from ._score import Score, score
from ._sequence import SequenceScore, sequence_score
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad, linear_score

__version__ = "0.1.0"

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "softmax",
    "show_config",
    "score",
    "Score",
    "sequence_score",
    "SequenceScore",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "linear_score",
]
