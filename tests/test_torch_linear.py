"""ce.torch.linear_cross_entropy and ce.torch.LinearCrossEntropyLoss against
PyTorch's F.linear_cross_entropy / nn.LinearCrossEntropyLoss: signatures,
OpInfo and ModuleInfo samples, gradcheck, options."""
import inspect
import sys
import types
import unittest
import warnings

import pytest

torch = pytest.importorskip("torch")
if not hasattr(torch.nn.functional, "linear_cross_entropy"):
    pytest.skip("this PyTorch has no F.linear_cross_entropy", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

import ce.torch as ct  # noqa: E402
import ce._torch_linear  # noqa: E402


def _testing_module(name):
    """torch.testing._internal needs expecttest only for a TestCase base class."""
    try:
        import expecttest  # noqa: F401
    except ImportError:
        stub = types.ModuleType("expecttest")
        stub.TestCase = unittest.TestCase
        sys.modules["expecttest"] = stub
    return pytest.importorskip(f"torch.testing._internal.{name}")


def _parameters(fn):
    """Names, kinds and defaults (annotations are spelled differently, not meant differently)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_signatures_are_pytorchs():
    assert _parameters(ct.linear_cross_entropy) == _parameters(F.linear_cross_entropy)
    assert inspect.signature(ct.LinearCrossEntropyLoss.__init__) == \
        inspect.signature(torch.nn.LinearCrossEntropyLoss.__init__)
    assert inspect.signature(ct.LinearCrossEntropyLoss.forward) == \
        inspect.signature(torch.nn.LinearCrossEntropyLoss.forward)
    assert issubclass(ct.LinearCrossEntropyLoss, torch.nn.LinearCrossEntropyLoss)


def _tensors(sample):
    return [t for t in (sample.input, *sample.args, *sample.kwargs.values())
            if isinstance(t, torch.Tensor) and t.requires_grad]


def opinfo_samples():
    cmi = _testing_module("common_methods_invocations")
    ops = [op for op in cmi.op_db if "linear_cross_entropy" in op.name]
    assert ops, "op_db has no linear_cross_entropy entries"
    return ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opinfo_parity(dtype, requires_grad):
    """Every sample of every op_db entry named *linear_cross_entropy*: the loss and
    the gradients of every tensor that requires one, at assert_close's defaults."""
    count = 0
    for op in opinfo_samples():
        for s in op.sample_inputs("cpu", dtype, requires_grad=requires_grad):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = F.linear_cross_entropy(s.input, *s.args, **s.kwargs)
                got = ct.linear_cross_entropy(s.input, *s.args, **s.kwargs)
            torch.testing.assert_close(got, expected, msg=lambda m: f"{op.variant_test_name}: {s}: {m}")
            leaves = _tensors(s)
            if requires_grad and leaves:
                up = torch.rand_like(expected) + 0.5
                ge = torch.autograd.grad(expected, leaves, up)
                gg = torch.autograd.grad(got, leaves, up)
                for a, b in zip(gg, ge):
                    torch.testing.assert_close(a, b)
            count += 1
    assert count > 100


def test_module_db_parity():
    cm = _testing_module("common_modules")
    infos = [m for m in cm.module_db if m.module_cls is torch.nn.LinearCrossEntropyLoss]
    if not infos:
        pytest.skip("module_db has no LinearCrossEntropyLoss entry")
    count = 0
    for info in infos:
        for dtype in (torch.float32, torch.float64):
            for inp in info.module_inputs_func(info, device="cpu", dtype=dtype,
                                               requires_grad=True, training=True):
                if inp.forward_input is None:
                    continue
                args, kwargs = inp.constructor_input.args, inp.constructor_input.kwargs
                ref = info.module_cls(*args, **kwargs).to(dtype)
                mine = ct.LinearCrossEntropyLoss(*args, **kwargs).to(dtype)
                mine.load_state_dict(ref.state_dict())
                fa, fk = inp.forward_input.args, inp.forward_input.kwargs
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    expected, got = ref(*fa, **fk), mine(*fa, **fk)
                torch.testing.assert_close(got, expected)
                leaves = [t for t in fa if isinstance(t, torch.Tensor) and t.requires_grad]
                ge = torch.autograd.grad(expected.sum(), [*ref.parameters(), *leaves])
                gg = torch.autograd.grad(got.sum(), [*mine.parameters(), *leaves])
                for a, b in zip(gg, ge):
                    torch.testing.assert_close(a, b)
                count += 1
    assert count > 0


GRADCHECK = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": True, "ignore_index": 1},
    {"label_smoothing": 0.2, "weight": True, "reduction": "sum"},
    {"probabilities": True},
    {"probabilities": True, "label_smoothing": 0.1, "reduction": "none"},
    {"options": True},
]


@pytest.mark.parametrize("case", GRADCHECK, ids=repr)
@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck(case, bias):
    g = torch.Generator().manual_seed(0)
    n, d, c = 5, 3, 4
    x = torch.randn(n, d, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(c, d, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(c, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    kw = {k: v for k, v in case.items() if k in ("reduction", "ignore_index", "label_smoothing")}
    if case.get("weight"):
        kw["weight"] = torch.rand(c, dtype=torch.float64, generator=g) + 0.5
    if case.get("options"):
        kw["options"] = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2)
    if case.get("probabilities"):
        y = torch.softmax(torch.randn(n, c, dtype=torch.float64, generator=g), 1).requires_grad_()
    else:
        y = torch.tensor([0, 1, 2, 3, 1])

    def f(x, w, b, y):
        return ct.linear_cross_entropy(x, w, y, linear_bias=b, **kw)

    inputs = (x, w, b, y)
    assert torch.autograd.gradcheck(f, inputs)
    expected = F.linear_cross_entropy(x, w, y, linear_bias=b, **kw)
    torch.testing.assert_close(f(*inputs), expected)


def test_batch_chunk_size_is_honoured(monkeypatch):
    seen = []
    real = ce._torch_linear.linear_cross_entropy_with_grad

    def spy(*args, **kw):
        seen.append(kw["chunk_rows"])
        return real(*args, **kw)

    monkeypatch.setattr(ce._torch_linear, "linear_cross_entropy_with_grad", spy)
    x = torch.randn(10, 3, requires_grad=True)
    w = torch.randn(6, 3, requires_grad=True)
    y = torch.randint(0, 6, (10,))
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=3, acc_policy="accurate",
                                              allow_retain_graph=True)
    ct.linear_cross_entropy(x, w, y, options=opts).backward()
    ct.linear_cross_entropy(x, w, y, options=torch.nn.LinearCrossEntropyOptions()).backward()
    ct.linear_cross_entropy(x, w, y).backward()
    assert seen == [3, None, None]


def test_retain_graph_and_no_grad():
    x = torch.randn(7, 3, requires_grad=True)
    w = torch.randn(5, 3, requires_grad=True)
    y = torch.randint(0, 5, (7,))
    loss = ct.linear_cross_entropy(x, w, y)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)
    with torch.no_grad():
        value = ct.linear_cross_entropy(x, w, y)
    assert not value.requires_grad
    torch.testing.assert_close(value, F.linear_cross_entropy(x, w, y))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    x = torch.randn(8, 4).to(dtype).requires_grad_()
    w = torch.randn(6, 4).to(dtype).requires_grad_()
    y = torch.randint(0, 6, (8,))
    got = ct.linear_cross_entropy(x, w, y)
    assert got.dtype == dtype
    got.backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype
    ref = F.cross_entropy(x.detach().double() @ w.detach().double().T, y)
    torch.testing.assert_close(got.double(), ref, rtol=2e-2, atol=2e-2)


def test_errors():
    x, w, y = torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match="dimensionality 1 or 2"):
        ct.linear_cross_entropy(torch.randn(2, 2, 3), w, y)
    with pytest.raises(RuntimeError, match="ignore_index cannot be specified"):
        ct.linear_cross_entropy(x, w, torch.rand(2, 4), ignore_index=0)
    with pytest.raises(ValueError, match="features"):
        ct.linear_cross_entropy(torch.randn(2, 5), w, y)
    with pytest.raises(ValueError, match="outside"):
        ct.linear_cross_entropy(x, w, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="linear_bias"):
        ct.linear_cross_entropy(x, w, y, linear_bias=torch.randn(3))


def test_bench_linear_runs():
    """The --linear bench end to end on a tiny shape (no timing asserted)."""
    from ce import _bench_linear
    rows = _bench_linear.run([(64, 8, 100)], reps=1, log=lambda s: None)
    assert [r["which"] for r in rows] == ["forward", "forward+backward"]
    for r in rows:
        assert set(r["time"]) == {"ce", "torch reference", "torch chunked", "ce BLAS only"}
        assert r["ce_traced"] > 0
    table = _bench_linear.markdown(rows, {"cpu": "x", "threads": 2, "reps": 1})
    assert table.count("\n| 64 x 8 x 100 |") == 2
