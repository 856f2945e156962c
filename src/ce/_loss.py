"""The public cross-entropy functions: one Call (normalise), one kernel run, reduce.

Each function builds one `ce._kernels.Call` from its keywords (the arguments
are checked there, by ce._args) and hands it to a kernel entry of
ce._kernels, which runs the blocks and applies the reduction.
"""
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels
from ._args import Reduction
from ._kernels import Call

Axis = int | tuple[int, ...]
_F = TypeVar("_F", bound=Callable[..., Any])

_KEYWORDS = """
    logits : array_like of float16, bfloat16, float32 or float64
        Unnormalised scores (probabilities with ``from_logits=False``), any
        shape with a class axis, any strides.
    target : array_like
        Class indices of the per-example shape (the logits' shape without the
        class axis; any integer dtype), or dense probabilities of the logits'
        shape (any real dtype; not renormalised).
    axis : int or tuple of ints, default -1
        The class axis. With a tuple, the classes are the sub-array over those
        axes, in the order given, and a class index is the C-order flat index
        into it (optax's rule).
    reduction : {"mean", "sum", "none"}, default "mean"
        "none": each example's weighted loss; "sum": their sum; "mean": the sum
        divided by the total weight of the counted examples (PyTorch's rule).
    weight : array_like of shape (C,), optional
        Per-class weights (PyTorch's ``weight``).
    sample_weight : array_like of the per-example shape, optional
        Per-example weights; a bool mask works as optax's ``where``.
    ignore_index : int, default -100
        Class-index targets equal to it contribute nothing (loss 0, gradient 0).
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's formula.
    from_logits : bool, default True
        False: ``logits`` are probabilities; the loss is -sum t log(max(p, eps)).
    n_threads : int, optional
        Cap on OpenMP threads; None uses OpenMP's current setting, read on every call.
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * lse**2`` per example (PaLM's auxiliary loss), weighted like the loss.
    softcap : float > 0, optional
        Replaces the logits by ``softcap * tanh(logits / softcap)`` first (Gemma 2)."""

_RAISES = """
    Raises
    ------
    TypeError
        An argument of the wrong type (integer logits, a float ignore_index, ...);
        the message names it.
    ValueError
        A bad value or shape: a label outside [0, C) (the message gives its
        position), label_smoothing outside [0, 1], a target of the wrong shape, ...
        Nothing is written before every argument is checked."""


def _doc(text: str) -> Callable[[_F], _F]:
    """Fill the shared parameter and raises sections into a docstring (typed, so
    that type checkers keep the decorated function's signature)."""
    def apply(fn: _F) -> _F:
        fn.__doc__ = text.replace("{keywords}", _KEYWORDS).replace("{raises}", _RAISES)
        return fn
    return apply


@_doc("""Softmax cross-entropy of `logits` against `target`.

    Parameters
    ----------{keywords}

    Returns
    -------
    numpy scalar or ndarray
        A scalar of the logits' dtype for "mean" and "sum", an array of the
        per-example shape for "none". Sums are accumulated in float64.
{raises}

    Examples
    --------
    >>> import numpy as np, ce
    >>> x = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], dtype=np.float32)
    >>> y = np.array([0, 2])
    >>> ce.cross_entropy(x, y)
    np.float32(0.20557866)
    >>> ce.cross_entropy(x, y, reduction="none")
    array([0.24131131, 0.16984601], dtype=float32)
    >>> ce.cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-4)
    np.float32(0.36466557)
    """)
def cross_entropy(logits: ArrayLike, target: ArrayLike, *, axis: Axis = -1,
                  reduction: Reduction = "mean", weight: ArrayLike | None = None,
                  sample_weight: ArrayLike | None = None, ignore_index: int = -100,
                  label_smoothing: float = 0.0, from_logits: bool = True,
                  n_threads: int | None = None, z_loss: float = 0.0,
                  softcap: float | None = None) -> Any:
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


@_doc("""Gradient of `cross_entropy` with respect to the logits.

    Parameters
    ----------{keywords}
    grad_output : float or array_like, default 1.0
        The upstream gradient: a scalar for "mean"/"sum", an array broadcastable
        to the per-example shape for "none".
    lse : array_like of the per-example shape, optional
        The log-sum-exp saved from a forward (``return_lse=True``); given, the
        gradient is computed without recomputing it.
    out : ndarray, optional
        Where the gradient is written: exactly the logits' shape and dtype; may
        be the logits themselves (in place).

    Returns
    -------
    ndarray
        The gradient, of the logits' shape and dtype (``out`` when given).
{raises}

    Examples
    --------
    >>> import numpy as np, ce
    >>> x = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], dtype=np.float32)
    >>> ce.cross_entropy_grad(x, np.array([0, 2])).round(4)
    array([[-0.1072,  0.0876,  0.0196],
           [ 0.021 ,  0.0571, -0.0781]], dtype=float32)
    """)
def cross_entropy_grad(logits: ArrayLike, target: ArrayLike, *, axis: Axis = -1,
                       reduction: Reduction = "mean", weight: ArrayLike | None = None,
                       sample_weight: ArrayLike | None = None, ignore_index: int = -100,
                       label_smoothing: float = 0.0, from_logits: bool = True,
                       n_threads: int | None = None, z_loss: float = 0.0,
                       softcap: float | None = None, grad_output: ArrayLike = 1.0,
                       lse: ArrayLike | None = None,
                       out: NDArray[Any] | None = None) -> NDArray[Any]:
    call = Call(logits=logits, target=target, axis=axis, reduction=reduction, weight=weight,
                sample_weight=sample_weight, ignore_index=ignore_index,
                label_smoothing=label_smoothing, from_logits=from_logits, n_threads=n_threads,
                z_loss=z_loss, softcap=softcap, grad_output=grad_output, lse=lse)
    return _kernels.gradient(call, out)


@_doc("""The loss and its gradient with respect to the logits, in one fused pass.

    Parameters
    ----------{keywords}
    grad_output : float or array_like, default 1.0
        The upstream gradient, as in `cross_entropy_grad`.
    out : ndarray, optional
        Where the gradient is written, as in `cross_entropy_grad`.
    return_lse : bool, default False
        Also return the per-example log-sum-exp (for a later ``lse=``).

    Returns
    -------
    loss : numpy scalar or ndarray
        As `cross_entropy` returns it.
    grad : ndarray
        As `cross_entropy_grad` returns it.
    lse : ndarray
        Only with ``return_lse=True``: the per-example shape, the logits' dtype.
{raises}

    Examples
    --------
    >>> import numpy as np, ce
    >>> x = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], dtype=np.float32)
    >>> loss, grad = ce.cross_entropy_with_grad(x, np.array([0, 2]))
    >>> loss
    np.float32(0.20557866)
    >>> grad.shape
    (2, 3)
    """)
def cross_entropy_with_grad(logits: ArrayLike, target: ArrayLike, *, axis: Axis = -1,
                            reduction: Reduction = "mean", weight: ArrayLike | None = None,
                            sample_weight: ArrayLike | None = None, ignore_index: int = -100,
                            label_smoothing: float = 0.0, from_logits: bool = True,
                            n_threads: int | None = None, z_loss: float = 0.0,
                            softcap: float | None = None, grad_output: ArrayLike = 1.0,
                            out: NDArray[Any] | None = None,
                            return_lse: bool = False) -> tuple[Any, ...]:
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
        with np.errstate(invalid="ignore"):  # signalling NaNs of bfloat16 warn when cast
            rows = x.transpose(0, 2, 1).reshape(-1, x.shape[1])[odd].astype(np.float64)
        row_lse[odd] = np.where(np.isnan(rows).any(axis=1), np.nan, rows.max(axis=1))
    return row_lse


def _transform(x, axis, out, kind):
    call = Call(logits=x, axis=axis, name="x")
    result, view, copy_back = _kernels.output_for(call, out)
    _kernels.solve(call, **{kind: view})
    if copy_back is not None:
        np.copyto(result, copy_back, casting="unsafe")
    return result


_TARGET_FREE = """
    Parameters
    ----------
    x : array_like of float16, bfloat16, float32 or float64
        Any shape, any strides.
    axis : int or tuple of ints, default -1
        The class axis (or axes)."""

# the out= parameter and the errors of the two transforms (log_softmax, softmax)
_OUT = """
    out : ndarray, optional
        Where the result is written: x's shape and dtype (may be x itself)."""
_RAISES_OUT = """    Raises
    ------
    TypeError, ValueError
        A non-float x, a bad axis or out.
"""


@_doc("""log(softmax(x)) along `axis`, computed stably as x - logsumexp(x).
""" + _TARGET_FREE + _OUT + """

    Returns
    -------
    ndarray
        Of x's shape and dtype.

""" + _RAISES_OUT + """
    Examples
    --------
    >>> import numpy as np, ce
    >>> ce.log_softmax(np.array([2.0, 0.5, -1.0], dtype=np.float32)).round(4)
    array([-0.2413, -1.7413, -3.2413], dtype=float32)
    """)
def log_softmax(x: ArrayLike, axis: Axis = -1, out: NDArray[Any] | None = None) -> NDArray[Any]:
    return _transform(x, axis, out, "log_softmax")


@_doc("""exp(x - logsumexp(x)) along `axis`.
""" + _TARGET_FREE + _OUT + """

    Returns
    -------
    ndarray
        Of x's shape and dtype; each row sums to 1.

""" + _RAISES_OUT + """
    Examples
    --------
    >>> import numpy as np, ce
    >>> ce.softmax(np.array([2.0, 0.5, -1.0], dtype=np.float32)).round(4)
    array([0.7856, 0.1753, 0.0391], dtype=float32)
    """)
def softmax(x: ArrayLike, axis: Axis = -1, out: NDArray[Any] | None = None) -> NDArray[Any]:
    return _transform(x, axis, out, "softmax")


@_doc("""log(sum(exp(x))) along `axis`, in x's dtype (float64 sums).
""" + _TARGET_FREE + """

    Returns
    -------
    numpy scalar or ndarray
        Of x's shape without the class axes; -inf for rows of -inf, +inf for
        rows with +inf, NaN for rows with NaN.

    Raises
    ------
    TypeError, ValueError
        A non-float x or a bad axis.

    Examples
    --------
    >>> import numpy as np, ce
    >>> ce.logsumexp(np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], dtype=np.float32))
    array([2.2413113, 3.169846 ], dtype=float32)
    """)
def logsumexp(x: ArrayLike, axis: Axis = -1) -> Any:
    call = Call(logits=x, axis=axis, name="x")
    row_lse = np.empty(call.n_rows)
    _kernels.solve(call, row_lse=row_lse)
    res = _finite_lse(call, row_lse).reshape(call.rest).astype(call.dtype)
    return res[()] if res.ndim == 0 else res
