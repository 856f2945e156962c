"""PyTorch adapter: ``F.linear_cross_entropy`` and ``nn.LinearCrossEntropyLoss``
on ce's chunked linear cross-entropy (re-exported by ``ce.torch``).

For the scalar reductions the forward computes the loss and all three
gradients in one chunked pass (three BLAS products per chunk, as PyTorch's
chunked path) and the backward scales them by the upstream gradient; for
``reduction="none"`` the backward recomputes them with the per-example
upstream gradient. The full logits are never materialised, whatever
``options`` says. K-dimensional weights, tensors off the CPU, and gradients
with respect to a probability target are the exceptions listed in the README.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._linear import linear_cross_entropy_with_grad, linear_cross_entropy as _ce_linear

__all__ = ["LinearCrossEntropyLoss", "linear_cross_entropy"]

_HALF = (torch.float16, torch.bfloat16)  # computed in float32


def _np(t):
    """NumPy view of a CPU tensor (half precision: a float32 copy)."""
    if t is None:
        return None
    t = t.detach()
    return (t.float() if t.dtype in _HALF else t).numpy()


def _tensor(a, like):
    return torch.from_numpy(np.ascontiguousarray(a)).to(like.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, linear_weight, target, linear_bias, weight, kw):
        h, w, t, b = _np(input), _np(linear_weight), _np(target), _np(linear_bias)
        kw = dict(kw, weight=_np(weight), linear_bias=b)
        precompute = kw.pop("precompute")
        ctx.kw = kw
        ctx.saved = None
        if precompute:
            loss, gh, gw, gb = linear_cross_entropy_with_grad(h, w, t, **kw)
            ctx.saved = (_tensor(gh, input), _tensor(gw, linear_weight),
                         None if gb is None else _tensor(gb, linear_bias))
        else:
            loss = _ce_linear(h, w, t, **kw)
        ctx.save_for_backward(input, linear_weight, target, linear_bias)
        return torch.from_numpy(np.asarray(loss)).to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, linear_weight, target, linear_bias = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if ctx.saved is not None:  # scalar reduction: gradients of the forward, scaled
            g = grad_output.reshape(())
            grads = [None if s is None else (s if bool(g == 1) else s * g) for s in ctx.saved]
        else:
            _, gh, gw, gb = linear_cross_entropy_with_grad(
                _np(input), _np(linear_weight), _np(target), grad_output=_np(grad_output),
                **ctx.kw)
            grads = [_tensor(gh, input), _tensor(gw, linear_weight),
                     None if gb is None else _tensor(gb, linear_bias)]
        grad_target = None
        if needs[2]:
            grad_target = _target_grad(input, linear_weight, target, linear_bias, grad_output,
                                       ctx.kw)
        return (grads[0] if needs[0] else None, grads[1] if needs[1] else None, grad_target,
                grads[2] if needs[3] else None, None, None)


def _target_grad(input, linear_weight, target, linear_bias, grad_output, kw):
    """d loss / d target for probability targets, chunk by chunk in torch:
    -(1 - label_smoothing) * weight[c] * log_softmax(logits)[c] * upstream."""
    x = input.detach().reshape(-1, input.shape[-1])
    t = target.detach().reshape(-1, linear_weight.shape[0])
    out = torch.empty_like(t)
    scale = -(1.0 - kw["label_smoothing"])
    if kw["reduction"] == "mean":
        scale /= max(x.shape[0], 1)
    g = grad_output.reshape(-1, 1) if kw["reduction"] == "none" else grad_output
    cw = None if kw["weight"] is None else torch.from_numpy(kw["weight"]).to(t.dtype)
    step = kw["chunk_rows"] or 1024
    for start in range(0, x.shape[0], step):
        rows = slice(start, start + step)
        logp = torch.log_softmax(F.linear(x[rows], linear_weight.detach(),
                                          None if linear_bias is None else linear_bias.detach()),
                                 dim=-1).to(t.dtype)
        if cw is not None:
            logp = logp * cw
        out[rows] = logp * ((g[rows] if kw["reduction"] == "none" else g) * scale)
    return out.reshape(target.shape)


def _chunk_rows(options):
    """The rows per chunk an options object asks for (None: ce's rule)."""
    if options is None:
        return None
    size = getattr(options, "batch_chunk_size", None)
    return size if isinstance(size, int) and size > 0 else None


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: "torch.nn.LinearCrossEntropyOptions | None" = None,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.linear_cross_entropy``, computed by ce on the CPU.

    Parameters
    ----------
    input : Tensor, shape (D,) or (N, D)
        Inputs of the linear layer (float16/bfloat16 computed in float32).
    linear_weight : Tensor, shape (C, D) or (C, d1, ..., dK, D)
        The weight; the logits are ``input @ linear_weight.T (+ linear_bias)``.
    target : Tensor
        Class indices of shape (), (N,) or (N, d1, ...), or class probabilities
        of the logits' shape.
    linear_bias : Tensor of shape (C,) or (C, d1, ..., dK), optional
    weight : Tensor of shape (C,), optional
        Per-class weights.
    reduction : {"mean", "sum", "none"}
    ignore_index : int, optional
        Default -100 for class indices; must stay None with probabilities (as PyTorch).
    label_smoothing : float in [0, 1]
    options : torch.nn.LinearCrossEntropyOptions, optional
        Its ``batch_chunk_size``, when set, is ce's ``chunk_rows``; its other
        fields are accepted and have no effect. Without it ce still chunks
        (``ce.linear_cross_entropy``'s rule): PyTorch's reference path
        materialises the logits, ce never does.

    Returns
    -------
    Tensor
        The loss, with gradients for ``input``, ``linear_weight`` and
        ``linear_bias`` (and a probability ``target``).

    Notes
    -----
    For "mean" and "sum" the forward computes the gradients too (one chunked
    pass) and keeps them until the backward; ``retain_graph=True`` works
    without any option. Tensors off the CPU go to ``F.linear_cross_entropy``;
    K-dimensional weights compute the logits with ``F.linear`` and the loss
    with ``ce.torch.cross_entropy`` (PyTorch's chunked path falls back the same way).
    """
    tensors = [a for a in (input, linear_weight, target, linear_bias, weight) if a is not None]
    if any(a.device.type != "cpu" for a in tensors):
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                      weight=weight, reduction=reduction,
                                      ignore_index=ignore_index,
                                      label_smoothing=label_smoothing, options=options)
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError(
            f"expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}")
    num_classes, out_features = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    logits_shape = (*input.shape[:-1], num_classes, *out_features)
    probabilities = tuple(target.shape) == logits_shape
    if probabilities and ignore_index is not None:
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")
    ignore_index = -100 if ignore_index is None else ignore_index
    if out_features:
        if input.dim() != 2:
            raise RuntimeError(
                f"K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} "
                f"requires batched input, (N, {input.shape[-1]}), got unbatched input with "
                f"shape {tuple(input.shape)}")
        from .torch import cross_entropy
        flat_w = linear_weight.reshape(-1, linear_weight.shape[-1])
        flat_b = None if linear_bias is None else linear_bias.reshape(-1)
        logits = F.linear(input, flat_w, flat_b).reshape(logits_shape)
        return cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                             reduction=reduction, label_smoothing=label_smoothing)
    # the scalar reductions compute their gradients in the forward (one pass)
    precompute = reduction != "none" and torch.is_grad_enabled() and any(
        a is not None and a.requires_grad for a in (input, linear_weight, linear_bias))
    kw = {"reduction": reduction, "ignore_index": ignore_index,
          "label_smoothing": label_smoothing, "chunk_rows": _chunk_rows(options),
          "precompute": precompute}
    return _LinearCrossEntropy.apply(input, linear_weight, target, linear_bias, weight, kw)


class LinearCrossEntropyLoss(torch.nn.LinearCrossEntropyLoss):
    """Drop-in for ``torch.nn.LinearCrossEntropyLoss`` (same constructor, a
    subclass of it) whose forward is :func:`ce.torch.linear_cross_entropy`."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        linear_weight = self.linear.weight.reshape(
            (self.num_classes, *self.out_features, self.linear.in_features))
        linear_bias = (None if self.linear.bias is None
                       else self.linear.bias.reshape((self.num_classes, *self.out_features)))
        return linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                    weight=self.weight, reduction=self.reduction,
                                    ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, options=self.options)
