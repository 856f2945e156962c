"""ce.torch: a drop-in for F.cross_entropy / nn.CrossEntropyLoss on ce's kernels."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
ct = pytest.importorskip("ce.torch")

REDUCTIONS = ["mean", "sum", "none"]
N, C = 6, 5


def _inputs(dtype, shape=(N, C), seed=0, kind="index", ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    c = shape[1] if len(shape) > 1 else shape[0]
    if kind == "index":
        t_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
        t = torch.randint(0, c, t_shape, generator=g)
        if ignore and t.ndim:
            t.view(-1)[::3] = -100
    else:
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim=min(1, len(shape) - 1))
        t = t.to(dtype)
    w = torch.rand(c, generator=g, dtype=torch.float64).to(dtype) + 0.1
    return x, t, w


CASES = [
    {"kind": k, "reduction": r, "weighted": w, "smoothing": s}
    for k in ("index", "probs") for r in REDUCTIONS for w in (False, True) for s in (0.0, 0.3)
]


def _ids(case):
    return "-".join(f"{v}" for v in case.values())


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("shape", [(N, C), (3, C, 2, 2)], ids=["2d", "4d"])
def test_gradcheck_float64(case, shape):
    x, t, w = _inputs(torch.float64, shape, kind=case["kind"])
    x.requires_grad_()
    weight = w if case["weighted"] else None

    def f(x):
        return ct.cross_entropy(x, t, weight=weight, reduction=case["reduction"],
                                label_smoothing=case["smoothing"])

    assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("shape", [(N, C), (3, C, 2, 2), (C,)], ids=["2d", "4d", "1d"])
def test_matches_torch_float32(case, shape):
    x, t, w = _inputs(torch.float32, shape, kind=case["kind"], seed=1)
    kw = {"weight": w if case["weighted"] else None, "reduction": case["reduction"],
          "label_smoothing": case["smoothing"]}
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    ours = ct.cross_entropy(x1, t, **kw)
    theirs = F.cross_entropy(x2, t, **kw)
    assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-6)
    upstream = torch.rand(ours.shape) + 0.5  # a non-trivial grad_output
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_target_gradient(reduction):
    x, t, w = _inputs(torch.float64, kind="probs")
    x.requires_grad_()
    t.requires_grad_()

    def f(x, t):
        return ct.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=0.2)

    assert torch.autograd.gradcheck(f, (x, t))


def test_ignore_index_and_all_ignored():
    x, t, _ = _inputs(torch.float32, ignore=False)
    for ignore in (-100, 2):
        t2 = t.clone()
        t2[0] = ignore
        torch.testing.assert_close(ct.cross_entropy(x, t2, ignore_index=ignore),
                                   F.cross_entropy(x, t2, ignore_index=ignore))
    x.requires_grad_()
    loss = ct.cross_entropy(x, torch.full((N,), -100))
    assert torch.isnan(loss)  # a mean over nothing, as in PyTorch
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_module_is_a_drop_in():
    _, _, w = _inputs(torch.float32)
    ours = ct.CrossEntropyLoss(weight=w, ignore_index=1, reduction="sum", label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(weight=w, ignore_index=1, reduction="sum", label_smoothing=0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()  # weight is a buffer
    x, t, _ = _inputs(torch.float32, seed=3, ignore=False)
    torch.testing.assert_close(ours(x, t), theirs(x, t))
    with pytest.warns(UserWarning, match="deprecated"):  # PyTorch's legacy arguments
        legacy = ct.CrossEntropyLoss(size_average=False)
    assert legacy.reduction == "sum"
    torch.testing.assert_close(legacy(x, t), F.cross_entropy(x, t, reduction="sum"))
    with pytest.warns(UserWarning, match="deprecated"):
        ours_none = ct.cross_entropy(x, t, reduce=False)
    torch.testing.assert_close(ours_none, F.cross_entropy(x, t, reduction="none"))


def test_saves_only_per_example_lse():
    x, t, _ = _inputs(torch.float32, shape=(2049, 2048))  # above 16 MiB: the lse only
    x.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: (saved.append(s), s)[1], lambda s: s):
        loss = ct.cross_entropy(x, t)
    inputs = {x.untyped_storage().data_ptr(), t.untyped_storage().data_ptr()}
    new = [s for s in saved if s.untyped_storage().data_ptr() not in inputs]
    assert all(s.numel() <= 2049 for s in new), [s.shape for s in new]  # nothing of size N x C
    held = [a for a in loss.grad_fn.kept if isinstance(a, np.ndarray)]   # beside the inputs' views
    assert [a.shape for a in held] == [(2049,)], [a.shape for a in held]  # the lse
    small = ct.cross_entropy(x[:64, :100].detach().requires_grad_(), t[:64] % 100)
    assert small.grad_fn.kept[4].shape == (64, 100)   # small: the fused gradient is kept
    loss.backward()
    torch.testing.assert_close(x.grad, torch.func.grad(F.cross_entropy)(x.detach(), t))


def test_layouts_and_expanded_grad_output():
    x, t, _ = _inputs(torch.float64)
    xt = x.t().contiguous().t().requires_grad_()  # column-major (N, C)
    xr = x.clone().requires_grad_()
    ct.cross_entropy(xt, t, reduction="none").sum().backward()  # grad_output: expanded, stride 0
    F.cross_entropy(xr, t, reduction="none").sum().backward()
    torch.testing.assert_close(xt.grad, xr.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_in_float32(dtype):
    x, t, _ = _inputs(torch.float32)
    xl = x.to(dtype).requires_grad_()
    loss = ct.cross_entropy(xl, t)
    assert loss.dtype == dtype
    loss.backward()
    assert xl.grad.dtype == dtype
    x32 = xl.detach().float().requires_grad_()
    F.cross_entropy(x32, t).backward()
    torch.testing.assert_close(loss.float(), F.cross_entropy(x32, t).to(dtype).float())
    torch.testing.assert_close(xl.grad, x32.grad.to(dtype))


def test_errors():
    x, t, _ = _inputs(torch.float32, ignore=False)
    t[2] = C
    with pytest.raises(ValueError, match="label"):
        ct.cross_entropy(x, t)
    err = _raises_like_torch(lambda: ct.cross_entropy(x, t), lambda: F.cross_entropy(x, t))
    assert isinstance(err, IndexError) and "position (2,)" in str(err)  # PyTorch's type, ce's message
    with pytest.raises(ValueError, match="label_smoothing"):
        ct.cross_entropy(x, t.clamp(0, C - 1), label_smoothing=-0.1)
    x.requires_grad_()
    loss = ct.cross_entropy(x, t.clamp(0, C - 1))
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError):  # no double backward: the backward is a kernel call
        g.sum().backward()


def test_importing_ce_does_not_import_torch_or_mygrad():
    code = "import sys, ce; assert 'torch' not in sys.modules and 'mygrad' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numpy_zero_copy_forward():
    """The forward reads the tensor's memory in place: no copy of the logits."""
    import tracemalloc

    x, t, _ = _inputs(torch.float32, shape=(2048, 64), ignore=False)
    tracemalloc.start()
    ct.cross_entropy(x, t)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.numel() * x.element_size() // 4, peak
    np.testing.assert_allclose(ct.cross_entropy(x, t).item(),
                               F.cross_entropy(x.double(), t).item(), rtol=1e-6)


def _raises_like_torch(call_ours, call_theirs):
    """Both raise, and ce.torch the exception type PyTorch raises."""
    with pytest.raises(Exception) as theirs:
        call_theirs()
    with pytest.raises(type(theirs.value)) as ours:
        call_ours()
    return ours.value


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.bool])
def test_index_dtypes_as_torch(dtype):
    """PyTorch takes class indices of int64 or uint8 only; so does ce.torch."""
    x, t, _ = _inputs(torch.float32, ignore=False)
    err = _raises_like_torch(lambda: ct.cross_entropy(x, t.to(dtype)),
                             lambda: F.cross_entropy(x, t.to(dtype)))
    assert isinstance(err, RuntimeError) and "int64" in str(err)
    torch.testing.assert_close(ct.cross_entropy(x, t.to(torch.uint8)),
                               F.cross_entropy(x, t.to(torch.uint8)))


def test_probability_target_errors_as_torch():
    x, p, _ = _inputs(torch.float32, kind="probs")
    for ignore in (0, 3):   # a non-negative ignore_index cannot apply to probabilities
        err = _raises_like_torch(lambda: ct.cross_entropy(x, p, ignore_index=ignore),
                                 lambda: F.cross_entropy(x, p, ignore_index=ignore))
        assert isinstance(err, RuntimeError) and "ignore_index" in str(err)
    # a negative one is accepted and unused, as in PyTorch
    torch.testing.assert_close(ct.cross_entropy(x, p, ignore_index=-1),
                               F.cross_entropy(x, p, ignore_index=-1))
    for dtype in (torch.int64, torch.int32, torch.bool):   # integers of the input's shape
        err = _raises_like_torch(lambda: ct.cross_entropy(x, p.to(dtype)),
                                 lambda: F.cross_entropy(x, p.to(dtype)))
        assert isinstance(err, RuntimeError) and "floating point" in str(err)
    # a float target of the per-example shape is not class indices
    _raises_like_torch(lambda: ct.cross_entropy(x, p[:, 0]), lambda: F.cross_entropy(x, p[:, 0]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_autocast_result_dtype_as_torch(dtype, kind):
    """CPU autocast runs cross_entropy in float32 (its float32 list): the loss is float32
    for half inputs, float64 stays float64; the gradient keeps the input's dtype."""
    x, t, w = _inputs(torch.float32, kind=kind, ignore=False)
    x = x.to(dtype)
    t = t.to(dtype) if kind == "probs" else t
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = ct.cross_entropy(xs[0], t, weight=w.to(dtype), label_smoothing=0.1)
        theirs = F.cross_entropy(xs[1], t, weight=w.to(dtype), label_smoothing=0.1)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    assert xs[0].grad.dtype == xs[1].grad.dtype == dtype
    torch.testing.assert_close(xs[0].grad, xs[1].grad)


@pytest.mark.parametrize("shape", [(N, C), (1025, 2048)], ids=["gradient-kept", "lse-kept"])
def test_backward_variants(shape):
    """Both forwards (small: the fused gradient kept for the backward; large: the lse):
    a scaled upstream gradient, a retained graph run twice, no_grad, in-place edits."""
    x, t, _ = _inputs(torch.float64, shape=shape)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    ours, theirs = ct.cross_entropy(xs[0], t), F.cross_entropy(xs[1], t)
    for _ in range(2):   # retain_graph: the second backward recomputes
        (3 * ours).backward(retain_graph=True)
        (3 * theirs).backward(retain_graph=True)
        torch.testing.assert_close(xs[0].grad, xs[1].grad)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad)
    with torch.no_grad():
        torch.testing.assert_close(ct.cross_entropy(xs[0], t), F.cross_entropy(xs[1], t))
    loss = ct.cross_entropy(xs[0], t, reduction="sum")
    with torch.no_grad():
        xs[0].mul_(2)   # changed after the forward: PyTorch's saved-tensor check
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
