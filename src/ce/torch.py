"""PyTorch adapter: ``F.cross_entropy`` and ``nn.CrossEntropyLoss`` on ce's kernels.

A ``torch.autograd.Function`` over CPU tensors, zero-copy through NumPy. The
forward saves the per-example log-sum-exp (O(N)); PyTorch's own saves the
log-softmax (O(N*C)). The backward recomputes the softmax from the logits and
that lse in one pass. Tensors on other devices go to ``F.cross_entropy``.

Importing ``ce`` does not import this module (nor torch); ``import ce.torch`` does.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._loss import cross_entropy_and_lse, cross_entropy_grad

__all__ = ["CrossEntropyLoss", "cross_entropy"]

try:  # bfloat16 tensors pass zero-copy as ml_dtypes.bfloat16 arrays when it is installed
    import ml_dtypes

    _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    _BF16 = None


def _np(t):
    """Zero-copy NumPy view of a CPU tensor (bfloat16 as ml_dtypes.bfloat16: the same bits
    reinterpreted; without ml_dtypes, a float32 copy)."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:
        if _BF16 is None:
            return t.float().numpy()
        return t.view(torch.int16).numpy().view(_BF16)
    return t.numpy()


def _tensor(a):
    """Zero-copy tensor of a NumPy array (bfloat16 back through int16)."""
    a = np.asarray(a)
    if _BF16 is not None and a.dtype == _BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _compute(x):
    return x.float() if x.dtype == torch.bfloat16 and _BF16 is None else x


def _keywords(x, weight, ignore_index, reduction, label_smoothing):
    return {"axis": 1 if x.ndim >= 2 else 0, "reduction": reduction, "weight": _np(weight),
            "ignore_index": ignore_index, "label_smoothing": label_smoothing}


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing):
        x = _compute(input)
        kw = _keywords(x, weight, ignore_index, reduction, label_smoothing)
        loss, lse = cross_entropy_and_lse(_np(x), _np(target), **kw)
        ctx.kw = kw
        ctx.save_for_backward(input, target, torch.from_numpy(lse))
        return _tensor(loss).to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, target, lse = ctx.saved_tensors
        x = _compute(input)
        grad_input = grad_target = None
        g = _np(grad_output.double())  # O(N) at most; ce takes real NumPy dtypes here
        if ctx.needs_input_grad[0]:
            grad = cross_entropy_grad(_np(x), _np(target), grad_output=g, lse=_np(lse), **ctx.kw)
            grad_input = _tensor(grad).to(input.dtype)
        if ctx.needs_input_grad[1]:  # probability targets: -(1 - eps) * weight * log p
            grad_target = _target_grad(x, lse, grad_output, ctx.kw).to(target.dtype)
        return grad_input, grad_target, None, None, None, None


def _target_grad(x, lse, grad_output, kw):
    """d loss / d target for probability targets (the target's smoothing is linear)."""
    axis = kw["axis"]
    logp = x.detach() - lse.unsqueeze(axis)
    if kw["weight"] is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        logp = logp * torch.from_numpy(kw["weight"]).to(x.dtype).view(shape)
    scale = -(1.0 - kw["label_smoothing"])
    if kw["reduction"] == "mean":
        scale /= max(lse.numel(), 1)
    g = grad_output.unsqueeze(axis) if kw["reduction"] == "none" else grad_output
    return logp * (g * scale)


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average: bool | None = None, ignore_index: int = -100,
                  reduce: bool | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.cross_entropy``, computed by ce on the CPU.

    Parameters
    ----------
    input : Tensor, shape (C,), (N, C) or (N, C, d1, ...)
        Logits, float16/bfloat16 (read by ce's kernels directly, zero-copy;
        bfloat16 needs ml_dtypes, else it is copied to float32), float32 or float64. The
        class axis is dim 1 (dim 0 for a 1-D input), as in PyTorch.
    target : Tensor
        Class indices of shape (), (N,) or (N, d1, ...), or class probabilities
        of the input's shape (not renormalised).
    weight : Tensor of shape (C,), optional
        Per-class weights.
    size_average, reduce : deprecated
        PyTorch's legacy arguments, mapped onto ``reduction`` as PyTorch does.
    ignore_index : int, default -100
        Class-index targets equal to it contribute nothing.
    reduction : {"mean", "sum", "none"}
        As PyTorch: "mean" divides by the total weight of the counted targets
        (by N for probability targets).
    label_smoothing : float in [0, 1], default 0
        PyTorch's formula.

    Returns
    -------
    Tensor
        The loss (a 0-d tensor, or per example for ``reduction="none"``), with a
        backward that saves only the per-example log-sum-exp.

    Notes
    -----
    Inputs on a device other than the CPU are passed to ``F.cross_entropy``.
    Errors are ce's: an out-of-range label is a ValueError, as is a label
    smoothing outside [0, 1] (PyTorch accepts negative values).
    """
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    tensors = (input, target) if weight is None else (input, target, weight)
    if any(t.device.type != "cpu" for t in tensors):
        return F.cross_entropy(input, target, weight=weight, ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=label_smoothing)
    return _CrossEntropy.apply(input, target, weight, ignore_index, reduction, label_smoothing)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` (same constructor, a subclass of
    it) whose forward is :func:`ce.torch.cross_entropy`."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)


# linear cross-entropy (issue 11): lives in its own module
from ._torch_linear import LinearCrossEntropyLoss, linear_cross_entropy  # noqa: E402

__all__ += ["LinearCrossEntropyLoss", "linear_cross_entropy"]
