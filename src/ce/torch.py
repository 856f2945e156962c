"""PyTorch adapter: ``F.cross_entropy`` and ``nn.CrossEntropyLoss`` on ce's kernels.

``torch.autograd.Function``s over CPU tensors, zero-copy through NumPy. The common
call (no ``torch.func`` transform active) goes to ``_PlainCrossEntropy`` through the C
``apply`` (``Function.apply`` would first bind the arguments with ``inspect.signature``,
which costs more than the kernels at small sizes). Its forward keeps, for the
backward, either the fused gradient (inputs up to 16 MiB: one pass over the logits) or
only the per-example log-sum-exp (O(N); PyTorch's own keeps the O(N*C) log-softmax),
from which the backward computes the gradient in one pass.

Under ``torch.func`` the same computation is ``_CrossEntropy``, with ``setup_context``
and a ``vmap`` rule, whose backward is a Function of its own (``_CrossEntropyGrad``,
with a ``vmap`` rule too), so that grad, vmap and their compositions work. Tensors on
other devices go to ``F.cross_entropy``.

Importing ``ce`` does not import this module (nor torch); ``import ce.torch`` does.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _args, _kernels

__all__ = ["CrossEntropyLoss", "cross_entropy"]

try:  # bfloat16 tensors pass zero-copy as ml_dtypes.bfloat16 arrays when it is installed
    import ml_dtypes

    _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    _BF16 = None

# PyTorch's target rules (ce itself takes any integer dtype): class indices are int64 or uint8
_INDEX_DTYPES = (torch.int64, torch.uint8)
_HALF = (torch.float16, torch.bfloat16)
_transforms_active = torch._C._are_functorch_transforms_active


def _np(t):
    """Zero-copy NumPy view of a CPU tensor (bfloat16 as ml_dtypes.bfloat16: the same bits
    reinterpreted; without ml_dtypes, a float32 copy)."""
    if t is None:
        return None
    if t.dtype is torch.bfloat16:
        if _BF16 is None:
            return t.detach().float().numpy()
        return t.detach().view(torch.int16).numpy().view(_BF16)
    return t.numpy(force=True)   # detach in C: cheaper than t.detach().numpy()


def _tensor(a, dtype):
    """Zero-copy tensor of a result (NumPy array or scalar) for logits of `dtype`
    (bfloat16 back through int16; without ml_dtypes it was computed in float32: cast)."""
    if dtype is torch.bfloat16 and _BF16 is not None:
        return torch.from_numpy(np.asarray(a).view(np.int16)).view(torch.bfloat16)
    t = torch.from_numpy(np.asarray(a))
    return t if t.dtype is dtype else t.to(dtype)


def _arrays(input, target, weight):
    """The NumPy views a Call is built from."""
    return _np(input), _np(target), _np(weight)


def _call(arrays, ndim, options, **more):
    """The ce._kernels.Call of a cross_entropy call (class axis: dim 1, the last one of a
    2-D input; dim 0 of a 1-D input); options: (ignore_index, reduction, label_smoothing)."""
    return _kernels.Call(logits=arrays[0], target=arrays[1], axis=1 if ndim > 2 else -1,
                         weight=arrays[2], ignore_index=options[0], reduction=options[1],
                         label_smoothing=options[2], **more)


def _loss_and_lse(arrays, ndim, dtype, options):
    """(loss tensor, float64 per-example lse array)."""
    loss, lse = _kernels.loss_and_lse(_call(arrays, ndim, options))
    return _tensor(loss, dtype), lse


def _grad_input(arrays, ndim, dtype, options, lse, grad_loss):
    """d loss / d input by ce's kernel, from the saved lse (an array)."""
    go = float(grad_loss) if options[1] != "none" else _np(grad_loss)
    return _tensor(_kernels.gradient(_call(arrays, ndim, options, grad_output=go, lse=lse)), dtype)


# Up to this size of the input, a forward that will be differentiated also computes the
# gradient (one fused kernel call, for an upstream gradient of 1) and keeps it for the
# backward: one pass over the logits instead of two. Above it (large vocabularies, where the
# memory held until the backward counts), the forward keeps only the per-example lse (O(N))
# and the backward computes the gradient from it.
_KEEP_GRADIENT_BYTES = 16 << 20


class _PlainCrossEntropy(torch.autograd.Function):
    """The loss, with ctx in the forward: the NumPy views of the forward (and the lse or
    the gradient) are kept for the backward as they are, with no second conversion.
    torch.func cannot call such a Function; _CrossEntropy is the same computation for it."""

    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing, keep_grad):
        arrays = _arrays(input, target, weight)
        options = (ignore_index, reduction, label_smoothing)
        call = _call(arrays, input.ndim, options)
        if keep_grad:
            loss, grad = _kernels.loss_and_gradient(call)
            lse = None
        else:
            loss, lse = _kernels.loss_and_lse(call)
            grad = None
        ctx.save_for_backward(input, target)   # PyTorch's check that neither changes in place
        ctx.kept = [arrays, lse, options, weight, grad]
        return _tensor(loss, input.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():   # create_graph=True: a double backward must raise
            return _once_differentiable_backward(ctx, grad_loss)
        return _plain_backward(ctx, grad_loss)


def _plain_backward(ctx, grad_loss):
    input, target = ctx.saved_tensors
    arrays, lse, options, weight, grad = ctx.kept
    ctx.kept[4] = None   # the kept gradient is given away once (a retained graph recomputes)
    gi = gt = None
    if ctx.needs_input_grad[0]:
        if grad is not None and float(grad_loss) == 1.0:
            gi = _tensor(grad, input.dtype)
        else:   # from the lse, or without one by the fused kernel
            gi = _grad_input(arrays, input.ndim, input.dtype, options, lse, grad_loss)
    if ctx.needs_input_grad[1]:   # probability targets
        gt = _target_grad(input, torch.from_numpy(lse), grad_loss, weight, options).to(target.dtype)
    return gi, gt, None, None, None, None, None


_once_differentiable_backward = once_differentiable(_plain_backward)


class _CrossEntropy(torch.autograd.Function):
    """(loss, per-example lse) of one call, for torch.func: setup_context, a vmap rule,
    and a backward that is a Function of its own (_CrossEntropyGrad) so that vmap can
    batch it too."""

    @staticmethod
    def forward(input, target, weight, ignore_index, reduction, label_smoothing):
        loss, lse = _loss_and_lse(_arrays(input, target, weight), input.ndim, input.dtype,
                                  (ignore_index, reduction, label_smoothing))
        return loss, torch.from_numpy(lse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, ignore_index, reduction, label_smoothing = inputs
        ctx.save_for_backward(input, target, output[1], weight)
        ctx.options = (ignore_index, reduction, label_smoothing)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):
        input, target, lse, weight = ctx.saved_tensors
        gi = gt = None
        if ctx.needs_input_grad[0]:
            gi = _CrossEntropyGrad.apply(input, target, lse, grad_loss, weight, *ctx.options)
        if ctx.needs_input_grad[1]:   # probability targets
            gt = _target_grad(input, lse, grad_loss, weight, ctx.options).to(target.dtype)
        return gi, gt, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, input, target, weight, ignore_index, reduction, label_smoothing):
        if in_dims[2] is not None:   # per-sample class weights: one call per sample
            return _vmap_loop(info, in_dims, input, target, weight, ignore_index, reduction,
                              label_smoothing)
        x, t, rows_x, rows_t = _batch_rows(info, in_dims, input, target)
        loss, lse = _dispatch(_CrossEntropy, rows_x, rows_t, weight, ignore_index, "none",
                              label_smoothing)
        per_sample = x.shape[:1] + ((x.shape[1],) + x.shape[3:] if x.ndim > 2 else ())
        loss = loss.reshape(x.shape[0], -1)
        if reduction != "none":
            total = loss.double().sum(1)
            if reduction == "mean":
                total = total / _mean_denominator(t, weight, ignore_index, x.shape)
            loss = total.to(input.dtype)
        else:
            loss = loss.reshape(per_sample)
        return (loss, lse.reshape(per_sample)), (0, 0)


def _target_grad(input, lse, grad_loss, weight, options):
    """d loss / d target for probability targets: -(1 - smoothing) * weight * log p
    (the smoothing is linear in the target)."""
    _, reduction, label_smoothing = options
    axis = 1 if input.ndim > 1 else 0
    x = input.detach() if input.dtype not in _HALF else input.detach().float()
    logp = x - lse.unsqueeze(axis)   # float64, as the lse
    if weight is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        logp = logp * weight.to(x.dtype).view(shape)
    scale = -(1.0 - label_smoothing)
    if reduction == "mean":
        scale /= max(lse.numel(), 1)
    g = grad_loss.unsqueeze(axis) if reduction == "none" else grad_loss
    return logp * (g * scale)


class _CrossEntropyGrad(torch.autograd.Function):
    """The backward of _CrossEntropy as a Function (used under torch.func only)."""

    @staticmethod
    def forward(input, target, lse, grad_loss, weight, ignore_index, reduction, label_smoothing):
        return _grad_input(_arrays(input, target, weight), input.ndim, input.dtype,
                           (ignore_index, reduction, label_smoothing), _np(lse), grad_loss)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("ce.torch.cross_entropy has no double backward: its backward is a "
                           "kernel call")

    @staticmethod
    def vmap(info, in_dims, input, target, lse, grad_loss, weight, ignore_index, reduction,
             label_smoothing):
        if in_dims[4] is not None:
            return _vmap_loop(info, in_dims, input, target, lse, grad_loss, weight, ignore_index,
                              reduction, label_smoothing, function=_CrossEntropyGrad)
        x, t, rows_x, rows_t = _batch_rows(info, in_dims, input, target)
        lse = _batched(lse, in_dims[2], info.batch_size)
        go = _batched(grad_loss, in_dims[3], info.batch_size)
        if reduction != "none":   # every row of sample b gets grad_loss[b] (/ its mean's total)
            if reduction == "mean":
                go = go / _mean_denominator(t, weight, ignore_index, x.shape).to(go.dtype)
            go = go.reshape(-1, 1).expand(lse.shape[0], lse[0].numel())
        rows = rows_x.shape[:1] + rows_x.shape[2:]   # the rows' per-example shape
        grad = _dispatch(_CrossEntropyGrad, rows_x, rows_t, lse.reshape(rows), go.reshape(rows),
                         weight, ignore_index, "none", label_smoothing)
        return grad.reshape(x.shape), 0


def _batched(t, dim, size):
    """`t` with its vmap batch dimension first (expanded when it has none)."""
    if dim is None:
        return t.expand((size,) + t.shape)
    return t.movedim(dim, 0)


def _batch_rows(info, in_dims, input, target):
    """The batched input and target, and the same with the batch merged into the rows:
    a sample of shape (N, C, ...) gives rows (B * N, C, ...); a sample (C,) gives (B, C)."""
    x = _batched(input, in_dims[0], info.batch_size)
    t = _batched(target, in_dims[1], info.batch_size)
    if x.ndim <= 2:
        return x, t, x, t
    return x, t, x.flatten(0, 1), t.flatten(0, 1)


def _mean_denominator(t, weight, ignore_index, x_shape):
    """Per sample, what reduction="mean" divides by: the total class weight of the counted
    class-index targets, the number of examples for probability targets (float64)."""
    b = t.shape[0]
    if t.shape == x_shape:
        return torch.full((b,), t[0].numel() // x_shape[2 if len(x_shape) > 2 else 1],
                          dtype=torch.float64)
    counted = t != ignore_index
    if weight is None:
        return counted.reshape(b, -1).sum(1).double()
    w = weight.double()[torch.where(counted, t, 0).long()] * counted
    return w.reshape(b, -1).sum(1)


def _vmap_loop(info, in_dims, *args, function=None):
    """A vmap rule by one call per sample (batched class weights)."""
    function = function or _CrossEntropy
    outs = []
    for i in range(info.batch_size):
        sample = [a if d is None else a.select(d, i) for a, d in zip(args, in_dims)]
        outs.append(_dispatch(function, *sample))
    if function is _CrossEntropy:
        return (torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])), (0, 0)
    return torch.stack(outs), 0


_c_apply = {f: super(torch.autograd.Function, f).apply
            for f in (_PlainCrossEntropy, _CrossEntropy, _CrossEntropyGrad)}
_unwrap = torch._C._functorch.unwrap_if_dead


def _dispatch(function, *args):
    """Function.apply, without its inspect.signature binding when no torch.func transform
    is active (then Function.apply does exactly this, after that binding)."""
    if _transforms_active():
        return function.apply(*args)
    return _c_apply[function](_unwrap(args[0]), _unwrap(args[1]), *args[2:])


def _autocast(t):
    """CPU autocast casts cross_entropy's floating inputs to float32 (PyTorch's policy:
    cross_entropy_loss is on the CPU float32 list; float64 is left alone)."""
    return t.float() if t is not None and t.dtype in _HALF else t


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
        Class indices (int64 or uint8, as PyTorch) of shape (), (N,) or (N, d1, ...),
        or class probabilities (floating) of the input's shape (not renormalised).
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
        backward that saves only the per-example log-sum-exp. Under
        ``torch.autocast("cpu")`` half-precision inputs are computed in float32 and
        the loss is float32, as PyTorch's autocast policy does.

    Raises
    ------
    RuntimeError
        Where PyTorch raises one for the target: class indices of another integer
        dtype than int64/uint8, an integer target of the input's shape, a probability
        target with ``ignore_index >= 0``.
    ValueError
        A label outside [0, C) (the message gives its position), a label smoothing
        outside [0, 1] (PyTorch accepts negative values), a target of the wrong shape.

    Notes
    -----
    Inputs on a device other than the CPU are passed to ``F.cross_entropy``.
    ``torch.func.grad``, ``torch.func.vmap`` (``vmap`` of ``grad`` too) work; forward-mode
    AD (``jvp``) and a double backward do not.

    Examples
    --------
    >>> import torch, ce.torch
    >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], requires_grad=True)
    >>> loss = ce.torch.cross_entropy(x, torch.tensor([0, 2]))
    >>> loss.backward()
    >>> round(loss.item(), 4), x.grad.shape
    (0.2056, torch.Size([2, 3]))
    """
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    if not (input.is_cpu and target.is_cpu and (weight is None or weight.is_cpu)):
        return F.cross_entropy(input, target, weight=weight, ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=label_smoothing)
    if target.dtype is not torch.int64 or target.ndim == input.ndim:
        _args.check_peer_target(target.ndim == input.ndim and target.shape == input.shape,
                                target.dtype.is_floating_point, target.dtype, _INDEX_DTYPES,
                                ignore_index, RuntimeError)
        if target.dtype.is_floating_point and target.dtype is not input.dtype:
            dtype = torch.promote_types(input.dtype, target.dtype)   # as PyTorch's loss
            input, target = input.to(dtype), target.to(dtype)
    if torch.is_autocast_enabled("cpu"):
        input, target, weight = _autocast(input), _autocast(target), _autocast(weight)
    if _transforms_active():
        return _CrossEntropy.apply(input, target, weight, ignore_index, reduction, label_smoothing)[0]
    keep_grad = (reduction != "none" and input.nbytes <= _KEEP_GRADIENT_BYTES
                 and input.requires_grad and not target.requires_grad and torch.is_grad_enabled())
    return _c_apply[_PlainCrossEntropy](_unwrap(input), _unwrap(target), weight, ignore_index,
                                        reduction, label_smoothing, keep_grad)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` (same constructor, a subclass of
    it) whose forward is :func:`ce.torch.cross_entropy`."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)


# linear cross-entropy (issue 11): lives in its own module
from ._torch_linear import LinearCrossEntropyLoss, linear_cross_entropy  # noqa: E402

__all__ += ["LinearCrossEntropyLoss", "linear_cross_entropy"]
