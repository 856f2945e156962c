"""Core contract checks against a small plain-NumPy float64 formula written here
(independent of ce), finite differences, and the documented edge cases."""
import numpy as np
import pytest

import ce


def ref_loss_rows(x, y, w=None, eps=0.0, sw=None, ignore=-100, z=0.0):
    """Per-example loss (weights multiplied in) and the mean's denominator, float64."""
    x = np.asarray(x, np.float64)
    n, c = x.shape
    w = np.ones(c) if w is None else np.asarray(w, np.float64)
    sw = np.ones(n) if sw is None else np.asarray(sw, np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    rows, denom = np.zeros(n), 0.0
    for i in range(n):
        if y[i] == ignore or sw[i] == 0:
            continue
        nll = lse[i] - x[i, y[i]]
        smooth = np.sum(w * (lse[i] - x[i]))
        rows[i] = sw[i] * ((1 - eps) * w[y[i]] * nll + eps / c * smooth + z * w[y[i]] * lse[i] ** 2)
        denom += sw[i] * w[y[i]]
    return rows, denom


def numeric_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


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
        rows, denom = ref_loss_rows(xx, y, kw.get("weight"), kw.get("label_smoothing", 0.0),
                                    kw.get("sample_weight"), z=kw.get("z_loss", 0.0))
        return {"none": rows, "sum": rows.sum(), "mean": rows.sum() / denom}[reduction]

    loss = ce.cross_entropy(x, y, reduction=reduction, **kw)
    np.testing.assert_allclose(loss, ref(x), rtol=1e-12, atol=1e-13)
    go = rng.normal(size=n) if reduction == "none" else 0.7
    g = ce.cross_entropy_grad(x, y, reduction=reduction, grad_output=go, **kw)
    num = numeric_grad(lambda xx: np.sum(ref(xx) * go), x)
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


@pytest.mark.parametrize("shape", [(3000, 700), (200000, 10), (64, 1, 40, 700)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bits_do_not_depend_on_threads(shape, dtype):
    rng = np.random.default_rng(0)
    axis = 1 if len(shape) == 4 else -1
    x = rng.normal(size=shape).astype(dtype)
    c = shape[axis]
    y = rng.integers(0, c, tuple(d for i, d in enumerate(shape) if i != (axis % len(shape))))
    results = [ce.cross_entropy_with_grad(x, y, axis=axis, label_smoothing=0.1, n_threads=k) for k in (1, 2, 3)]
    for loss, g in results[1:]:
        assert loss.tobytes() == results[0][0].tobytes()
        assert g.tobytes() == results[0][1].tobytes()


def test_bad_label_names_value_and_position_and_writes_nothing():
    x = np.zeros((2, 3, 4))
    y = np.zeros((2, 4), np.int64)
    y[1, 2] = 7
    out = np.full_like(x, 42.0)
    with pytest.raises(ValueError, match=r"label 7 at position \(1, 2\)"):
        ce.cross_entropy_grad(x, y, axis=1, out=out)
    assert (out == 42.0).all()


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"reduction": "avg"}, ValueError, "reduction"),
    ({"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ({"weight": np.ones(4)}, ValueError, "weight"),
    ({"sample_weight": np.ones(5)}, ValueError, "sample_weight"),
    ({"n_threads": 0}, ValueError, "n_threads"),
    ({"n_threads": 1.5}, TypeError, "n_threads"),
    ({"axis": 2}, ValueError, "axis"),
    ({"out": np.zeros((2, 3), np.float32)}, TypeError, "out"),
    ({"out": np.zeros((3, 2))}, ValueError, "out"),
    ({"grad_output": np.ones(2)}, ValueError, "grad_output"),
])
def test_bad_options_raise_naming_the_argument(kwargs, exc, word):
    x = np.zeros((2, 3))
    with pytest.raises(exc, match=word):
        ce.cross_entropy_grad(x, np.array([0, 1]), **kwargs)


def test_bad_arrays():
    with pytest.raises(TypeError, match="logits"):
        ce.cross_entropy(np.zeros((2, 3), int), np.array([0, 1]))
    with pytest.raises(ValueError, match="logits"):
        ce.cross_entropy(np.float64(1.0), np.array(0))
    with pytest.raises(ValueError, match="logits"):
        ce.cross_entropy(np.zeros((2, 0)), np.array([0, 1]))
    with pytest.raises(TypeError, match="target"):
        ce.cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="target"):
        ce.cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))


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
