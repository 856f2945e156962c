"""The one seam: ce._kernels.Call (keyword-only) and solve(call, *, outputs).

A Call accepts the common argument types in Cython and hands every other type to
ce._args. Both routes must describe the same problem: the results are compared
bit for bit, for every option, between arguments that take the Cython route
(C-ordered ndarrays, Python int/float/None) and equal values that take the
_args route (lists, other integer widths, NumPy scalars, strided copies).
"""
import numpy as np
import pytest

import ce
from ce import _kernels
from helpers import bits


class _Sub(np.ndarray):
    """An ndarray subclass: same memory and layout, but not an exact ndarray."""


def _slow(a):
    """The same values in a form the Cython route declines: an ndarray subclass view
    (same memory layout, so the same kernel path) for arrays of two or more
    dimensions, a list otherwise; a NumPy scalar for numbers."""
    if isinstance(a, np.ndarray):
        if a.ndim >= 2:
            return a.view(_Sub)
        return a.tolist()
    if isinstance(a, bool) or a is None:
        return a
    if isinstance(a, int):
        return np.int32(a)
    if isinstance(a, float):
        return np.float64(a)
    return a


def _same_bits(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _same_bits(u, v)
        return
    assert bits(a) == bits(b)


OPTIONS = [
    {},
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(ignore_index=2),
    dict(label_smoothing=0.1),
    dict(z_loss=1e-3),
    dict(softcap=5.0),
    dict(n_threads=1),
    dict(weight="w"),
    dict(sample_weight="sw"),
    dict(weight="w", sample_weight="sw", label_smoothing=0.2, z_loss=1e-3, ignore_index=1,
         reduction="sum"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dense", [False, True], ids=["index", "dense"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "common")
def test_both_routes_give_the_same_bits(options, dense, dtype):
    rng = np.random.default_rng(3)
    n, c = 37, 11
    x = rng.standard_normal((n, c)).astype(dtype) * 3
    y = rng.integers(0, c, n)
    y[::7] = 2  # some rows hit ignore_index=2
    t = rng.random((n, c)).astype(dtype)
    values = {"w": rng.random(c).astype(dtype), "sw": rng.random(n)}
    fast = {k: values.get(v, v) if isinstance(v, str) and k != "reduction" else v
            for k, v in options.items()}
    slow = {k: (v if k == "reduction" else _slow(v)) for k, v in fast.items()}
    target = t if dense else y
    slow_target = _slow(t) if dense else y.astype(np.int32)
    for fn in (ce.cross_entropy, ce.cross_entropy_with_grad, ce.cross_entropy_grad):
        _same_bits(fn(x, target, **fast), fn(_slow(x), slow_target, **slow))


def test_call_is_keyword_only_and_solve_takes_named_outputs():
    x = np.random.default_rng(0).standard_normal((4, 3))
    y = np.array([0, 1, 2, 0])
    with pytest.raises(TypeError):
        _kernels.Call(x, y)
    call = _kernels.Call(logits=x, target=y, reduction="none")
    row_loss, grad = np.empty(4), np.empty_like(x)
    total = _kernels.solve(call, grad=grad, row_loss=row_loss)
    loss, expected = ce.cross_entropy_with_grad(x, y, reduction="none")
    assert total == pytest.approx(row_loss.sum())
    _same_bits(row_loss, loss)
    _same_bits(grad, expected)
    with pytest.raises(ValueError, match="row_loss"):
        _kernels.solve(call, row_loss=np.empty(3))
    with pytest.raises(ValueError, match="at most one"):
        _kernels.solve(call, grad=grad, softmax=np.empty_like(x))
    # a call is read-only: solving it twice gives the same bits
    again = np.empty(4)
    _kernels.solve(call, row_loss=again)
    _same_bits(again, row_loss)


@pytest.mark.parametrize("bad", [dict(ignore_index=True), dict(ignore_index=1.5),
                                 dict(from_logits=1), dict(n_threads=0), dict(reduction="meam")])
def test_front_ends_share_the_checks(bad):
    """ce.dask (and ce.score) reject exactly what the core rejects, with its exception type."""
    da = pytest.importorskip("dask.array")
    import ce.dask

    x = np.random.default_rng(0).standard_normal((6, 4))
    y = np.array([0, 1, 2, 3, 0, 1])
    with pytest.raises(Exception) as core:
        ce.cross_entropy(x, y, **bad)
    with pytest.raises(type(core.value)):
        ce.dask.cross_entropy(da.from_array(x, chunks=(3, 4)), da.from_array(y, chunks=3), **bad)
    if "reduction" not in bad:
        with pytest.raises(type(core.value)):
            ce.score(x, y, **bad)
