"""MyGrad adapter: ``mygrad.nnet.losses.softmax_crossentropy`` on ce's kernels.

The operation keeps the per-example log-sum-exp from the forward (O(N));
MyGrad's own keeps the N x C gradient. Importing ``ce`` does not import MyGrad.
"""
import numpy as np
from mygrad import Tensor
from mygrad.operation_base import Operation
from mygrad.typing import ArrayLike

from . import _kernels
from ._args import as_logits, bad_label, c_array
from ._loss import cross_entropy_and_lse, cross_entropy_grad

__all__ = ["softmax_crossentropy"]

# No label can equal it, so nothing is ignored (MyGrad has no ignore_index).
_NO_IGNORE = -(2**63)


class SoftmaxCrossEntropy(Operation):
    """Mean softmax cross-entropy of (N, C) scores and N class indices."""

    can_return_view = False

    def __call__(self, x, y_true):
        if isinstance(y_true, Tensor):
            y_true = y_true.data
        y_true = np.asarray(y_true)
        if x.ndim != 2:
            raise ValueError(f"`x` must be a 2-dimensional array-like object, got {x.ndim}-dim")
        if not np.issubdtype(y_true.dtype, np.integer):
            raise TypeError(f"`y_true` must be an integer-type array-like object, got {y_true.dtype}")
        if y_true.ndim != 1 or y_true.shape[0] != x.shape[0]:
            raise ValueError(f"`y_true` must be a shape-(N,) array: expected shape-{(x.shape[0],)}, "
                             f"got shape-{y_true.shape}")
        self.variables = (x,)
        scores = x.data.astype(np.float64) if x.dtype.kind in "iub" else x.data
        as_logits(scores, "`x`")  # the core's TypeError (complex, object, ...), in MyGrad's name
        labels = c_array(y_true, dtype=np.int64)
        # ignore_index=0 is a valid class, so exactly the labels outside [0, C) are flagged
        bad = _kernels.check_labels(labels, scores.shape[1], 0, None, None)[0]
        if bad >= 0:
            raise bad_label(labels, bad, labels.shape, scores.shape[1], None, name="`y_true`")
        loss, lse = cross_entropy_and_lse(scores, y_true, ignore_index=_NO_IGNORE)
        self._saved = (scores, y_true, lse)
        return loss

    def backward_var(self, grad, index, **kwargs):
        scores, y_true, lse = self._saved
        return cross_entropy_grad(scores, y_true, ignore_index=_NO_IGNORE, grad_output=grad,
                                  lse=lse)


def softmax_crossentropy(x: ArrayLike, y_true: ArrayLike, *, constant: bool | None = None) -> Tensor:
    """Drop-in for ``mygrad.nnet.losses.softmax_crossentropy``, computed by ce.

    Parameters
    ----------
    x : ArrayLike, shape (N, C)
        The C class scores for each of the N data (integer scores are taken as float64).
    y_true : ArrayLike, shape (N,)
        The correct class indices, each in [0, C) (a ValueError otherwise).
    constant : bool, optional
        If True, the returned tensor is a constant (it back-propagates no gradient).

    Returns
    -------
    mygrad.Tensor
        The mean softmax cross-entropy over the N data, a 0-d tensor.

    Raises
    ------
    ValueError
        Bad dimensionalities for ``x`` or ``y_true``, or a label outside [0, C).
    TypeError
        ``y_true`` is not an integer array, or ``x`` is not real (complex scores, say).
    """
    return Tensor._op(SoftmaxCrossEntropy, x, op_args=(y_true,), constant=constant)
