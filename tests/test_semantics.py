"""Core contract checks against the float64 reference (tests/reference.py), finite
differences, and the documented edge cases."""
import numpy as np
import pytest

import ce
from helpers import finite_difference
from reference import ref_cross_entropy


@pytest.mark.parametrize("c", [1, 3, 10, 17, 300])
@pytest.mark.parametrize("options", [
    {}, {"weight": "w"}, {"label_smoothing": 0.2}, {"sample_weight": "sw"}, {"z_loss": 0.01},
    {"weight": "w", "label_smoothing": 0.3, "sample_weight": "sw", "z_loss": 1e-3},
])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_loss_and_grad_match_reference(c, options, reduction):
    rng = np.random.default_rng(c)
    n = 7
    x = rng.normal(size=(n, c)) * 3
    y = rng.integers(0, c, n)
    y[2] = -100
    kw = dict(options)
    w, sw = rng.random(c) + 0.5, rng.random(n)
    if kw.get("weight") == "w":
        kw["weight"] = w
    if kw.get("sample_weight") == "sw":
        kw["sample_weight"] = sw

    def ref(xx):
        return ref_cross_entropy(xx, y, reduction=reduction, **kw)

    loss = ce.cross_entropy(x, y, reduction=reduction, **kw)
    np.testing.assert_allclose(loss, ref(x), rtol=1e-12, atol=1e-13)
    go = rng.normal(size=n) if reduction == "none" else 0.7
    g = ce.cross_entropy_grad(x, y, reduction=reduction, grad_output=go, **kw)
    num = finite_difference(lambda xx: np.sum(ref(xx) * go), x)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-7)
    l2, g2 = ce.cross_entropy_with_grad(x, y, reduction=reduction, grad_output=go, **kw)
    np.testing.assert_array_equal(l2, loss)
    np.testing.assert_allclose(g2, g, rtol=1e-14, atol=1e-16)


def test_confident_row_has_no_cancellation():
    x = np.array([[30.0, 0.0, -5.0]], np.float32)
    loss, g = ce.cross_entropy_with_grad(x, np.array([0]))
    expected = np.exp(-30.0) + np.exp(-35.0)  # log1p(s_other) and -(sum of the others)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert g[0, 0] == pytest.approx(-expected, rel=1e-5)
    assert g[0, 1] == pytest.approx(np.exp(-30.0), rel=1e-5)
    _, _, lse = ce.cross_entropy_with_grad(x, np.array([0]), return_lse=True)
    g_lse = ce.cross_entropy_grad(x, np.array([0]), lse=lse)
    assert g_lse[0, 0] == pytest.approx(-expected, rel=1e-5)


def test_worked_examples():
    assert ce.cross_entropy(np.array([[2.0, 2, 2], [0, 0, 1e6]]), np.array([0, 2])) == pytest.approx(0.54930614)
    assert ce.cross_entropy(np.array([[2.0, 1.0, 0.1]]), np.array([0])) == pytest.approx(0.4170, abs=1e-4)
    np.testing.assert_allclose(
        ce.cross_entropy(np.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]]), np.array([0, 1]), reduction="none"),
        [0.2761, 2.9518], atol=1e-4)
    assert ce.cross_entropy(np.array([[0.7, 0.2, 0.1]]), np.array([[1, 0, 0]]), from_logits=False,
                            reduction="sum") == pytest.approx(0.35667494393873245, rel=1e-15)


@pytest.mark.parametrize("layout", ["fortran", "sliced", "negative", "readonly", "bigendian", "nchw", "tuple"])
def test_layouts_agree_with_contiguous(layout):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(40, 12)).astype(np.float32)
    y = rng.integers(0, 12, 40)
    x, axis, yy, expect = base, -1, y, ce.cross_entropy(base, y, reduction="none")
    if layout == "fortran":
        x = np.asfortranarray(base)
    elif layout == "sliced":
        x = np.repeat(base, 2, axis=1)[:, ::2]
    elif layout == "negative":
        x = base[::-1, ::-1]
        expect = ce.cross_entropy(np.ascontiguousarray(x), y, reduction="none")
    elif layout == "readonly":
        x = base.copy()
        x.flags.writeable = False
    elif layout == "bigendian":
        x = base.astype(">f4")
    elif layout == "nchw":
        x = np.ascontiguousarray(base.reshape(4, 10, 12).transpose(0, 2, 1))  # (4, 12, 10)
        axis, yy, expect = 1, y.reshape(4, 10), expect.reshape(4, 10)
    elif layout == "tuple":
        x = base.reshape(40, 3, 4)
        axis = (1, 2)
    np.testing.assert_allclose(ce.cross_entropy(x, yy, axis=axis, reduction="none"), expect, rtol=2e-6)


def test_non_finite_rows_follow_the_table():
    x = np.array([[0.0, np.nan, 1.0], [np.inf, 0, 0], [-np.inf] * 3, [-np.inf, 0, 1], [-np.inf] * 3])
    y = np.array([0, 1, 2, 0, -100])
    loss, g = ce.cross_entropy_with_grad(x, y, reduction="none")
    assert np.isnan(loss[:3]).all() and np.isnan(g[:3]).all()
    assert loss[3] == np.inf and np.isfinite(g[3]).all()
    assert loss[4] == 0 and (g[4] == 0).all()
    t = np.array([[0.0, 1.0, 0.0]])
    assert np.isfinite(ce.cross_entropy(np.array([[-np.inf, 0.0, 1.0]]), t))


def test_mean_over_nothing_is_nan_with_zero_gradient():
    x = np.ones((3, 4))
    loss, g = ce.cross_entropy_with_grad(x, np.full(3, -100))
    assert np.isnan(loss) and (g == 0).all()


def test_in_place_gradient():
    rng = np.random.default_rng(1)
    for c in (5, 50):
        x = rng.normal(size=(30, c))
        y = rng.integers(0, c, 30)
        expect = ce.cross_entropy_grad(x, y, label_smoothing=0.1)
        assert ce.cross_entropy_grad(x, y, label_smoothing=0.1, out=x) is x
        np.testing.assert_allclose(x, expect, rtol=1e-13, atol=1e-16)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_ndarray_subclasses_are_plain_input():
    x = np.random.default_rng(2).normal(size=(5, 4))
    y = np.array([0, 1, 2, 3, 0])
    m = np.asmatrix(x)
    assert ce.cross_entropy(m, y) == ce.cross_entropy(x, y)
    np.testing.assert_array_equal(ce.softmax(m), ce.softmax(x))
    np.testing.assert_array_equal(ce.logsumexp(m), ce.logsumexp(x))


@pytest.mark.parametrize("func", ["softmax", "log_softmax", "grad"])
def test_out_overlapping_the_logits_in_another_layout(func):
    rng = np.random.default_rng(4)
    for shape, axis in (((5, 4), -1), ((2, 4, 3), 1)):
        x = rng.normal(size=shape)
        y = rng.integers(0, shape[axis], (2, 3) if axis == 1 else 5)
        call = {"softmax": lambda a, **k: ce.softmax(a, axis=axis, **k),
                "log_softmax": lambda a, **k: ce.log_softmax(a, axis=axis, **k),
                "grad": lambda a, **k: ce.cross_entropy_grad(a, y, axis=axis, **k)}[func]
        expect = call(x.copy())
        flipped = x[tuple(slice(None, None, -1) for _ in shape)]  # the same memory, reversed
        result = call(x, out=flipped)
        assert result is flipped
        np.testing.assert_allclose(flipped, expect, rtol=1e-14, atol=1e-16)
