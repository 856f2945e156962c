"""ce against the float64 reference in tests/reference.py: every option combination, dtypes,
axes, gradients (also against finite differences), grad_output, out=, lse reuse, the fused call,
softmax / log_softmax / logsumexp, non-finite rows, memory layouts, and exactness (thread-count
determinism: tests/test_threads.py)."""
import itertools
import math

import numpy as np
import pytest

import ce
from helpers import (
    DTYPES,
    assert_array_of,
    assert_close,
    assert_loss_type,
    assert_numpy_scalar,
    batch_shape_of,
    finite_difference,
    normalized_axes,
    num_classes,
    onehot,
    random_dense_target,
    random_labels,
    random_logits,
    random_probabilities,
    seed_of,
)
from reference import (
    ref_cross_entropy,
    ref_grad,
    ref_log_softmax,
    ref_logsumexp,
    ref_lse,
    ref_softmax,
)

REDUCTIONS = ("none", "sum", "mean")

# (name, shape from (N, C), class axis)
LAYOUTS = (
    ("N,C", lambda n, c: (n, c), -1),
    ("N,C axis=1", lambda n, c: (n, c), 1),
    ("C,N axis=0", lambda n, c: (c, n), 0),
    ("N,C,3 axis=1", lambda n, c: (n, c, 3), 1),
    ("N,2,C axis=-1", lambda n, c: (n, 2, c), -1),
    ("N,C,2 axis=(1,2)", lambda n, c: (n, c, 2), (1, 2)),
    ("C,N,2 axis=(2,0)", lambda n, c: (c, n, 2), (2, 0)),
)

EXTRAS = {
    "plain": {},
    "z_loss": {"z_loss": 0.05},
    "softcap": {"softcap": 2.5},
    "z_loss+softcap": {"z_loss": 0.1, "softcap": 4.0},
    "probabilities": {"from_logits": False},
}


class Case:
    """One random problem: logits, target and keyword arguments for ce and the reference."""

    def __init__(self, seed, dtype, kind, reduction, weight, sample_weight, smoothing, extra,
                 garbage_in_inactive_rows=True, layouts=LAYOUTS, sizes=((1, 2, 5, 13),
                                                                        (1, 2, 3, 7, 16))):
        rng = np.random.default_rng(seed)
        name, make_shape, axis = layouts[rng.integers(len(layouts))]
        n = int(rng.choice(sizes[0]))
        c = int(rng.choice(sizes[1]))
        shape = make_shape(n, c)
        self.layout = name
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.batch_shape = batch_shape_of(shape, axis)
        C = num_classes(shape, axis)
        probs = extra == "probabilities"

        x = (random_probabilities(rng, shape, axis, dtype) if probs
             else random_logits(rng, shape, dtype))
        kw = {"axis": axis, "reduction": reduction}
        kw.update(EXTRAS[extra])

        if kind == "index":
            choice = int(rng.integers(3))
            label_dtype = [np.int64, np.int32, np.int16, np.int8][int(rng.integers(4))]
            if choice == 0:      # default ignore_index, some labels -100
                t = random_labels(rng, self.batch_shape, C, ignore_index=-100, dtype=label_dtype)
                counted = t != -100
            elif choice == 1:    # explicit negative ignore_index
                kw["ignore_index"] = -1
                t = random_labels(rng, self.batch_shape, C, ignore_index=-1, dtype=label_dtype)
                counted = t != -1
            else:                # ignore_index inside [0, C): that class is ignored
                kw["ignore_index"] = 0
                t = random_labels(rng, self.batch_shape, C, dtype=np.uint8 if C < 200 else
                                  np.int64)
                counted = t != 0
        else:
            style = ["probs", "onehot_int", "raw"][int(rng.integers(3))]
            t = random_dense_target(rng, shape, axis, style)
            counted = np.ones(self.batch_shape, dtype=bool)

        if weight:
            kw["weight"] = rng.uniform(0.5, 2.0, C)
        sw_nonzero = np.ones(self.batch_shape, dtype=bool)
        if sample_weight == "float":
            sw = rng.uniform(0.0, 2.0, self.batch_shape)
            sw[rng.random(self.batch_shape) < 0.2] = 0.0
            kw["sample_weight"] = sw
            sw_nonzero = sw != 0
        elif sample_weight == "bool":
            sw = rng.random(self.batch_shape) > 0.25
            kw["sample_weight"] = sw
            sw_nonzero = sw
        if smoothing:
            kw["label_smoothing"] = smoothing

        self.active = counted & sw_nonzero
        if garbage_in_inactive_rows and rng.random() < 0.5:
            # rows that do not count get NaN or -inf logits: they must still give exactly 0
            axes = normalized_axes(len(shape), axis)
            inactive = np.broadcast_to(np.expand_dims(~self.active, axes), shape)
            x = x.copy()
            x[inactive] = np.nan if rng.random() < 0.5 else -np.inf

        if reduction == "none":
            form = int(rng.integers(3))
            if form == 0:
                go = 1.5
            elif form == 1:
                go = rng.standard_normal(self.batch_shape)
            else:   # broadcast along all but the first per-example dimension
                go = rng.standard_normal(self.batch_shape[:1] + (1,) * (len(self.batch_shape) - 1))
        else:
            go = float(rng.choice([1.0, -0.75, 2.0]))

        self.x, self.t, self.kw, self.go = x, t, kw, go
        self.from_logits = not probs
        self.softcap = kw.get("softcap")

    def __repr__(self):
        return f"Case(layout={self.layout}, shape={self.shape}, kw={sorted(self.kw)})"


OPTION_GRID = list(itertools.product(
    ("index", "dense"), REDUCTIONS, (False, True), (None, "float", "bool"), (0.0, 0.15),
    tuple(EXTRAS)))


def grid_id(params):
    kind, reduction, weight, sw, smoothing, extra = params
    return (f"{kind}-{reduction}-{'w' if weight else 'now'}-sw={sw}-ls={smoothing}-{extra}")


# --------------------------------------------------------------------------------------------
# Every option combination against the reference
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("params", OPTION_GRID, ids=[grid_id(p) for p in OPTION_GRID])
def test_against_reference(params, dtype):
    case = Case(seed_of(params, np.dtype(dtype).name), dtype, *params)
    x, t, kw, go = case.x, case.t, case.kw, case.go
    reduction = kw["reduction"]

    expected_loss = ref_cross_entropy(x, t, **kw)
    expected_grad = ref_grad(x, t, grad_output=go, **kw)

    loss = ce.cross_entropy(x, t, **kw)
    assert_loss_type(loss, reduction, case.batch_shape, dtype)
    assert_close(loss, expected_loss, dtype, f"loss {case}")

    grad = ce.cross_entropy_grad(x, t, grad_output=go, **kw)
    assert_array_of(grad, case.shape, dtype)
    assert_close(grad, expected_grad, dtype, f"grad {case}")

    loss2, grad2 = ce.cross_entropy_with_grad(x, t, grad_output=go, **kw)
    assert_loss_type(loss2, reduction, case.batch_shape, dtype)
    assert_close(loss2, expected_loss, dtype, f"fused loss {case}")
    assert_array_of(grad2, case.shape, dtype)
    assert_close(grad2, expected_grad, dtype, f"fused grad {case}")

    if case.from_logits:
        loss3, grad3, lse = ce.cross_entropy_with_grad(x, t, grad_output=go, return_lse=True,
                                                       **kw)
        assert_close(loss3, expected_loss, dtype, f"fused loss with lse {case}")
        assert_close(grad3, expected_grad, dtype, f"fused grad with lse {case}")
        assert_array_of(lse, case.batch_shape, dtype)
        if case.softcap is None:
            assert_close(np.where(case.active, lse, 0.0),
                         np.where(case.active, ref_lse(x, axis=kw["axis"]), 0.0),
                         dtype, f"lse {case}")
        # the saved lse gives the same gradient (float16 lse is rounded: looser)
        grad3 = ce.cross_entropy_grad(x, t, grad_output=go, lse=lse, **kw)
        assert_close(grad3, expected_grad, dtype, f"grad from lse {case}",
                     factor=4.0 if np.dtype(dtype) == np.float16 else 1.0)


LARGE_LAYOUTS = [((5000, 10), -1), ((60, 1200), -1), ((10, 5000), 0), ((30, 7, 8, 25), (1, 3))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("extra", list(EXTRAS))
@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize("shape,axis", LARGE_LAYOUTS)
def test_large_problems_against_reference(shape, axis, kind, extra, dtype):
    """Sizes above the single-thread threshold, wide rows and class-major layouts (the blocked
    and parallel kernels), with weights, smoothing, sample weights and ignored rows."""
    rng = np.random.default_rng(seed_of("large", shape, axis, kind, extra))
    c = num_classes(shape, axis)
    batch = batch_shape_of(shape, axis)
    x = (random_probabilities(rng, shape, axis, dtype) if extra == "probabilities"
         else random_logits(rng, shape, dtype))
    t = (random_labels(rng, batch, c, ignore_index=-100) if kind == "index"
         else random_dense_target(rng, shape, axis, "raw"))
    sw = rng.uniform(0.0, 2.0, batch)
    sw[rng.random(batch) < 0.2] = 0.0
    kw = dict(axis=axis, weight=rng.uniform(0.5, 2.0, c), label_smoothing=0.1, sample_weight=sw,
              **EXTRAS[extra])
    for reduction in REDUCTIONS:
        go = rng.standard_normal(batch) if reduction == "none" else 0.7
        expected_grad = ref_grad(x, t, reduction=reduction, grad_output=go, **kw)
        assert_close(ce.cross_entropy(x, t, reduction=reduction, **kw),
                     ref_cross_entropy(x, t, reduction=reduction, **kw), dtype, reduction)
        assert_close(ce.cross_entropy_grad(x, t, reduction=reduction, grad_output=go, **kw),
                     expected_grad, dtype, reduction)
        _, grad = ce.cross_entropy_with_grad(x, t, reduction=reduction, grad_output=go, **kw)
        assert_close(grad, expected_grad, dtype, reduction)


@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("extra", list(EXTRAS))
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted+smoothed"])
def test_gradient_matches_finite_differences(kind, reduction, extra, weighted):
    """Central differences of ce's own float64 loss against ce's gradient."""
    rng = np.random.default_rng(seed_of("fd", kind, reduction, extra, weighted))
    shape, axis = (2, 4, 3), 1
    probs = extra == "probabilities"
    x = (random_probabilities(rng, shape, axis, np.float64) if probs
         else random_logits(rng, shape, np.float64, scale=1.5))
    if kind == "index":
        t = np.array([[1, 3, -100], [0, 2, 3]])
    else:
        t = random_dense_target(rng, shape, axis, "raw")
    kw = dict(axis=axis, reduction=reduction, **EXTRAS[extra])
    if weighted:
        kw.update(weight=rng.uniform(0.5, 2.0, 4), label_smoothing=0.2,
                  sample_weight=np.array([[0.5, 1.5, 1.0], [2.0, 0.0, 1.0]]))
    go = rng.standard_normal((2, 3)) if reduction == "none" else 0.8

    def f(z):
        return np.sum(go * ce.cross_entropy(z, t, **kw).astype(np.float64))

    numeric = finite_difference(f, x)
    analytic = ce.cross_entropy_grad(x, t, grad_output=go, **kw)
    scale = max(1.0, np.abs(numeric).max())
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7 * scale)
    # and the reference's gradient agrees with the same differences
    np.testing.assert_allclose(ref_grad(x, t, grad_output=go, **kw), numeric, rtol=1e-6,
                               atol=1e-7 * scale)


@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize("extra", list(EXTRAS))
def test_reference_gradient_matches_finite_differences(kind, extra):
    """The reference is self-consistent: ref_grad is the derivative of ref_cross_entropy."""
    rng = np.random.default_rng(seed_of("ref-fd", kind, extra))
    shape = (3, 5)
    x = (random_probabilities(rng, shape, -1, np.float64) if extra == "probabilities"
         else random_logits(rng, shape, np.float64, scale=1.5))
    t = np.array([4, -100, 0]) if kind == "index" else random_dense_target(rng, shape, -1, "raw")
    kw = dict(weight=rng.uniform(0.5, 2, 5), sample_weight=np.array([0.3, 1.0, 2.0]),
              label_smoothing=0.1, **EXTRAS[extra])
    for reduction in ("sum", "mean"):
        numeric = finite_difference(lambda z: ref_cross_entropy(z, t, reduction=reduction, **kw),
                                    x)
        np.testing.assert_allclose(ref_grad(x, t, reduction=reduction, **kw), numeric,
                                   rtol=1e-6, atol=1e-8)


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


# --------------------------------------------------------------------------------------------
# Axes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tuple_axis_label_is_flat_index_into_sub_array(dtype):
    rng = np.random.default_rng(11)
    x = random_logits(rng, (2, 3, 4, 5), dtype)
    labels = rng.integers(0, 15, (2, 4))
    loss = ce.cross_entropy(x, labels, axis=(1, 3), reduction="none")
    expected = np.empty((2, 4))
    for i in range(2):
        for k in range(4):
            sub = x[i, :, k, :].astype(np.float64).ravel()   # C order over axes (1, 3)
            expected[i, k] = np.log(np.sum(np.exp(sub - sub.max()))) + sub.max() - sub[labels[i, k]]
    assert_close(loss, expected, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["index", "dense"])
def test_tuple_axis_sign_does_not_matter_and_order_orders_the_labels(dtype, kind):
    """A label indexes the class sub-array flattened in the order the axes are given
    (optax's rule): under axis=(3, 1) the label of (i1, i3) is i3 * 3 + i1. A dense
    target is laid out like the logits, so the order does not change its result."""
    rng = np.random.default_rng(12)
    shape = (2, 3, 4, 5)
    x = random_logits(rng, shape, dtype)
    labels = rng.integers(0, 15, (2, 4))
    t = labels if kind == "index" else onehot(labels, shape, (1, 3)) * 0.9 + 0.1 / 15
    base_loss, base_grad = ce.cross_entropy_with_grad(x, t, axis=(1, 3), reduction="none")
    assert_close(base_loss, ref_cross_entropy(x, t, axis=(1, 3), reduction="none"), dtype)
    assert_close(base_grad, ref_grad(x, t, axis=(1, 3), reduction="none"), dtype)
    i1, i3 = np.unravel_index(labels, (3, 5))
    swapped = np.ravel_multi_index((i3, i1), (5, 3)) if kind == "index" else t
    for axis in [(1, -1), (-3, -1)]:  # the same axes, the same order: the same bits
        loss, grad = ce.cross_entropy_with_grad(x, t, axis=axis, reduction="none")
        np.testing.assert_array_equal(loss, base_loss)
        np.testing.assert_array_equal(grad, base_grad)
    for axis in [(-1, 1), (3, -3)]:  # reordered classes: sums in another order, so to rounding
        loss, grad = ce.cross_entropy_with_grad(x, swapped, axis=axis, reduction="none")
        assert_close(loss, base_loss, dtype, factor=0.1)
        assert_close(grad, base_grad, dtype, factor=0.1)
    if kind == "index":  # and the order is not ignored: the unswapped labels give other losses
        assert not np.allclose(ce.cross_entropy(x, labels, axis=(3, 1), reduction="none"), base_loss)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_element_tuple_axis_equals_int(dtype):
    rng = np.random.default_rng(13)
    x = random_logits(rng, (4, 6, 3), dtype)
    y = rng.integers(0, 6, (4, 3))
    assert_close(ce.cross_entropy(x, y, axis=(1,), reduction="none"),
                 ce.cross_entropy(x, y, axis=1, reduction="none"), dtype, factor=0.1)
    assert_close(ce.cross_entropy_grad(x, y, axis=(-2,)), ce.cross_entropy_grad(x, y, axis=1),
                 dtype, factor=0.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_class_axis_anywhere_equals_moving_it_last(dtype, axis):
    rng = np.random.default_rng(seed_of("anywhere", axis))
    shape = (2, 5, 3, 4)
    x = random_logits(rng, shape, dtype)
    C = shape[axis]
    y = rng.integers(0, C, batch_shape_of(shape, axis))
    y.flat[::5] = -100
    kw = dict(label_smoothing=0.1, weight=rng.uniform(0.5, 2, C))
    moved = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    loss = ce.cross_entropy(x, y, axis=axis, reduction="none", **kw)
    loss_last = ce.cross_entropy(moved, y, axis=-1, reduction="none", **kw)
    assert_close(loss, loss_last, dtype)
    assert_close(loss, ref_cross_entropy(x, y, axis=axis, reduction="none", **kw), dtype)
    grad = ce.cross_entropy_grad(x, y, axis=axis, **kw)
    grad_last = ce.cross_entropy_grad(moved, y, axis=-1, **kw)
    assert_close(grad, np.moveaxis(grad_last, -1, axis), dtype)
    assert_close(grad, ref_grad(x, y, axis=axis, **kw), dtype)


# --------------------------------------------------------------------------------------------
# Edge shapes, empty and fully ignored batches, return types
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", ["index", "dense"])
def test_empty_batch(dtype, kind):
    x = np.zeros((0, 5), dtype=dtype)
    t = np.zeros(0, dtype=np.int64) if kind == "index" else np.zeros((0, 5))
    none = ce.cross_entropy(x, t, reduction="none")
    assert_array_of(none, (0,), dtype)
    total = ce.cross_entropy(x, t, reduction="sum")
    assert_numpy_scalar(total, dtype)
    assert total == 0
    mean = ce.cross_entropy(x, t, reduction="mean")
    assert_numpy_scalar(mean, dtype)
    assert np.isnan(mean)
    for reduction in REDUCTIONS:
        grad = ce.cross_entropy_grad(x, t, reduction=reduction)
        assert_array_of(grad, (0, 5), dtype)
        loss, grad, lse = ce.cross_entropy_with_grad(x, t, reduction=reduction, return_lse=True)
        assert_array_of(grad, (0, 5), dtype)
        assert_array_of(lse, (0,), dtype)
    # empty along another axis too
    x4 = np.zeros((3, 5, 0, 2), dtype=dtype)
    t4 = np.zeros((3, 0, 2), dtype=np.int64) if kind == "index" else np.zeros(x4.shape)
    assert_array_of(ce.cross_entropy(x4, t4, axis=1, reduction="none"), (3, 0, 2), dtype)
    assert np.isnan(ce.cross_entropy(x4, t4, axis=1))
    assert_array_of(ce.cross_entropy_grad(x4, t4, axis=1), x4.shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_all_ignored_mean_is_nan_with_zero_gradient(dtype, ignore_index):
    x = np.array([[1.0, 2.0, 3.0], [np.nan, 0.0, 0.0], [-np.inf, -np.inf, -np.inf]], dtype=dtype)
    y = np.full(3, ignore_index)
    for kw in [{}, {"label_smoothing": 0.3}, {"weight": np.array([1.0, 2.0, 3.0])},
               {"z_loss": 0.1}]:
        mean = ce.cross_entropy(x, y, ignore_index=ignore_index, **kw)
        assert_numpy_scalar(mean, dtype)
        assert np.isnan(mean)
        assert ce.cross_entropy(x, y, ignore_index=ignore_index, reduction="sum", **kw) == 0
        np.testing.assert_array_equal(
            ce.cross_entropy(x, y, ignore_index=ignore_index, reduction="none", **kw), 0)
        for reduction in REDUCTIONS:
            grad = ce.cross_entropy_grad(x, y, ignore_index=ignore_index, reduction=reduction,
                                         **kw)
            np.testing.assert_array_equal(grad, 0)
            loss, grad = ce.cross_entropy_with_grad(x, y, ignore_index=ignore_index,
                                                    reduction=reduction, **kw)
            np.testing.assert_array_equal(grad, 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["index", "dense"])
def test_all_sample_weights_zero(dtype, kind):
    x = np.array([[1.0, 2.0, 3.0], [np.nan, 0.0, 0.0]], dtype=dtype)
    t = np.array([0, 2]) if kind == "index" else np.array([[1.0, 0, 0], [0, 0, 1.0]])
    sw = np.zeros(2)
    assert np.isnan(ce.cross_entropy(x, t, sample_weight=sw))
    assert ce.cross_entropy(x, t, sample_weight=sw, reduction="sum") == 0
    for reduction in REDUCTIONS:
        np.testing.assert_array_equal(
            ce.cross_entropy_grad(x, t, sample_weight=sw, reduction=reduction), 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_single_class_loss_and_gradient_are_zero(dtype):
    x = np.array([[3.0], [-2.0], [0.5]], dtype=dtype)
    y = np.zeros(3, dtype=np.int64)
    for kw in [{}, {"label_smoothing": 0.5}, {"weight": np.array([2.0])}]:
        np.testing.assert_array_equal(ce.cross_entropy(x, y, reduction="none", **kw), 0)
        assert ce.cross_entropy(x, y, **kw) == 0
        np.testing.assert_array_equal(ce.cross_entropy_grad(x, y, **kw), 0)
        np.testing.assert_array_equal(ce.cross_entropy_grad(x, np.ones((3, 1)), **kw), 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("target", [2, np.int64(2), np.array(2), np.array(2, dtype=np.int8),
                                    "dense"], ids=["int", "np.int64", "0d", "0d-int8", "dense"])
def test_one_dimensional_logits(dtype, target):
    x = np.array([0.5, -1.0, 2.0, 0.0], dtype=dtype)
    t = np.array([0.0, 0.0, 1.0, 0.0]) if isinstance(target, str) else target
    expected = ref_cross_entropy(x, t, reduction="none")
    for reduction in REDUCTIONS:
        loss = ce.cross_entropy(x, t, reduction=reduction)
        assert_loss_type(loss, reduction, (), dtype)
        assert_close(loss, expected, dtype)
        grad = ce.cross_entropy_grad(x, t, reduction=reduction)
        assert_array_of(grad, (4,), dtype)
        assert_close(grad, ref_grad(x, t, reduction=reduction), dtype)


@pytest.mark.parametrize("label_dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8,
                                         np.uint16, np.uint32, np.uint64, np.intp])
def test_any_integer_label_dtype(label_dtype):
    rng = np.random.default_rng(14)
    x = random_logits(rng, (9, 7), np.float64)
    y = rng.integers(0, 7, 9)
    expected = ref_cross_entropy(x, y, reduction="none")
    assert_close(ce.cross_entropy(x, y.astype(label_dtype), reduction="none"), expected,
                 np.float64)
    assert_close(ce.cross_entropy_grad(x, y.astype(label_dtype)), ref_grad(x, y), np.float64)


def test_label_list_is_accepted():
    x = np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    assert_close(ce.cross_entropy(x, [2, 0]), ref_cross_entropy(x, np.array([2, 0])), np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("target_dtype", [np.int8, np.int32, np.int64, np.uint8, np.float16,
                                          np.float32, np.float64])
def test_dense_target_of_any_real_dtype(dtype, target_dtype):
    rng = np.random.default_rng(15)
    x = random_logits(rng, (6, 5), dtype)
    labels = rng.integers(0, 5, 6)
    t = np.eye(5)[labels]
    expected_loss = ref_cross_entropy(x, labels, reduction="none")
    expected_grad = ref_grad(x, labels)
    loss, grad = ce.cross_entropy_with_grad(x, t.astype(target_dtype), reduction="none")
    assert_close(loss, expected_loss, dtype)
    assert_close(ce.cross_entropy_grad(x, t.astype(target_dtype)), expected_grad, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_rows_are_not_renormalised(dtype):
    x = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]], dtype=dtype)
    t = np.array([[2.0, 0.0, 1.0], [0.1, 0.1, 0.1]])
    assert_close(ce.cross_entropy(x, t, reduction="none"),
                 ref_cross_entropy(x, t, reduction="none"), dtype)
    lse = ref_lse(x)
    assert_close(ce.cross_entropy(x, t, reduction="none"),
                 [2 * (lse[0] - 1) + (lse[0] - 3), 0.1 * (3 * lse[1] - 0)], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["index", "dense"])
def test_bool_sample_weight_equals_zero_one_floats(dtype, kind):
    rng = np.random.default_rng(16)
    x = random_logits(rng, (8, 4), dtype)
    t = rng.integers(0, 4, 8) if kind == "index" else random_dense_target(rng, (8, 4), -1, "probs")
    mask = np.array([1, 0, 1, 1, 0, 1, 1, 1], dtype=bool)
    for reduction in REDUCTIONS:
        a = ce.cross_entropy(x, t, sample_weight=mask, reduction=reduction)
        b = ce.cross_entropy(x, t, sample_weight=mask.astype(np.float64), reduction=reduction)
        assert_close(a, b, dtype, factor=0.1)
        assert_close(ce.cross_entropy_grad(x, t, sample_weight=mask, reduction=reduction),
                     ce.cross_entropy_grad(x, t, sample_weight=mask.astype(float),
                                           reduction=reduction), dtype, factor=0.1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mean_divides_by_total_weight(dtype):
    """Index targets: sum / sum(sw * w[y]) over non-ignored; dense: sum / sum(sw)."""
    x = np.array([[1.0, 2.0, 0.0], [0.5, 0.5, 3.0], [2.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=dtype)
    y = np.array([0, 2, -100, 1])
    w = np.array([2.0, 3.0, 0.5])
    sw = np.array([1.0, 2.0, 5.0, 0.5])
    per = ce.cross_entropy(x, y, weight=w, sample_weight=sw, reduction="none").astype(float)
    mean = ce.cross_entropy(x, y, weight=w, sample_weight=sw)
    assert_close(mean, per.sum() / (1.0 * 2.0 + 2.0 * 0.5 + 0.5 * 3.0), dtype)
    t = np.eye(3)[[0, 2, 1, 1]]
    per = ce.cross_entropy(x, t, weight=w, sample_weight=sw, reduction="none").astype(float)
    assert_close(ce.cross_entropy(x, t, weight=w, sample_weight=sw), per.sum() / sw.sum(), dtype)
    assert_close(ce.cross_entropy(x, t, weight=w), ce.cross_entropy(x, t, weight=w,
                                                                    reduction="sum") / 4, dtype)


def test_float16_is_float32_rounded():
    rng = np.random.default_rng(17)
    x16 = random_logits(rng, (50, 9), np.float16)
    y = rng.integers(0, 9, 50)
    x32 = x16.astype(np.float32)
    for reduction in REDUCTIONS:
        l16, g16 = ce.cross_entropy_with_grad(x16, y, reduction=reduction)
        l32, g32 = ce.cross_entropy_with_grad(x32, y, reduction=reduction)
        assert np.asarray(l16).dtype == np.float16 and g16.dtype == np.float16
        for a, b in [(l16, l32), (g16, g32)]:
            a = np.asarray(a, dtype=np.float64)
            b16 = np.asarray(b).astype(np.float16)
            # within one float16 ulp of the float32 result rounded to float16
            assert np.all(np.abs(a - b16) <= np.spacing(np.abs(b16)).astype(np.float64))


def test_mean_over_nothing_is_nan_with_zero_gradient():
    x = np.ones((3, 4))
    loss, g = ce.cross_entropy_with_grad(x, np.full(3, -100))
    assert np.isnan(loss) and (g == 0).all()


# --------------------------------------------------------------------------------------------
# grad_output
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_scalar_grad_output_scales(dtype, reduction):
    rng = np.random.default_rng(18)
    x = random_logits(rng, (6, 5), dtype)
    y = rng.integers(0, 5, 6)
    g1 = ce.cross_entropy_grad(x, y, reduction=reduction).astype(np.float64)
    for go in [2.5, -1.0, 0.0, np.float32(0.5), np.array(3.0)]:
        assert_close(ce.cross_entropy_grad(x, y, reduction=reduction, grad_output=go),
                     float(go) * g1, dtype)
        _, g = ce.cross_entropy_with_grad(x, y, reduction=reduction, grad_output=go)
        assert_close(g, float(go) * g1, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["index", "dense"])
def test_grad_output_array_for_none(dtype, kind):
    rng = np.random.default_rng(19)
    shape = (4, 6, 3)    # classes on axis 1, per-example shape (4, 3)
    x = random_logits(rng, shape, dtype)
    t = rng.integers(0, 6, (4, 3)) if kind == "index" else random_dense_target(rng, shape, 1,
                                                                                  "probs")
    full = rng.standard_normal((4, 3))
    column = rng.standard_normal((4, 1))
    row = rng.standard_normal(3)
    for go in [full, column, row, 0.7, np.array(0.7)]:
        expected = ref_grad(x, t, axis=1, reduction="none", grad_output=go)
        assert_close(ce.cross_entropy_grad(x, t, axis=1, reduction="none", grad_output=go),
                     expected, dtype)
        _, g = ce.cross_entropy_with_grad(x, t, axis=1, reduction="none", grad_output=go)
        assert_close(g, expected, dtype)
    # a scalar is the same as an array full of it
    assert_close(ce.cross_entropy_grad(x, t, axis=1, reduction="none", grad_output=0.7),
                 ce.cross_entropy_grad(x, t, axis=1, reduction="none",
                                       grad_output=np.full((4, 3), 0.7)), dtype, factor=0.1)


# --------------------------------------------------------------------------------------------
# out=, lse reuse, fused == separate
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("out_kind", ["C", "F", "strided"])
def test_out_is_filled_and_returned(dtype, out_kind):
    rng = np.random.default_rng(20)
    x = random_logits(rng, (7, 5), dtype)
    y = rng.integers(0, 5, 7)
    expected = ref_grad(x, y, label_smoothing=0.1)

    def make_out():
        if out_kind == "C":
            return np.full((7, 5), 123, dtype=dtype)
        if out_kind == "F":
            return np.asfortranarray(np.full((7, 5), 123, dtype=dtype))
        return np.full((7, 10), 123, dtype=dtype)[:, ::2]

    out = make_out()
    result = ce.cross_entropy_grad(x, y, label_smoothing=0.1, out=out)
    assert result is out
    assert_close(out, expected, dtype)

    out = make_out()
    loss, result = ce.cross_entropy_with_grad(x, y, label_smoothing=0.1, out=out)
    assert result is out
    assert_close(out, expected, dtype)
    assert_close(loss, ref_cross_entropy(x, y, label_smoothing=0.1), dtype)

    out = make_out()
    loss, result, lse = ce.cross_entropy_with_grad(x, y, label_smoothing=0.1, out=out,
                                                   return_lse=True)
    assert result is out
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize("options", [{}, {"weight": np.array([1.0, 2.0, 0.5, 1.0, 3.0]),
                                          "label_smoothing": 0.2, "z_loss": 0.01},
                                     {"softcap": 3.0}, {"from_logits": False}],
                         ids=["plain", "weighted", "softcap", "probabilities"])
def test_out_may_be_logits_in_place(dtype, kind, options):
    rng = np.random.default_rng(21)
    shape = (6, 5)
    if options.get("from_logits") is False:
        x0 = random_probabilities(rng, shape, -1, dtype)
    else:
        x0 = random_logits(rng, shape, dtype)
    t = rng.integers(0, 5, 6) if kind == "index" else random_dense_target(rng, shape, -1, "raw")
    expected_loss = ref_cross_entropy(x0, t, **options)
    expected_grad = ref_grad(x0, t, **options)

    x = x0.copy()
    result = ce.cross_entropy_grad(x, t, out=x, **options)
    assert result is x
    assert_close(x, expected_grad, dtype)

    x = x0.copy()
    loss, result = ce.cross_entropy_with_grad(x, t, out=x, **options)
    assert result is x
    assert_close(loss, expected_loss, dtype)    # the loss was taken before the overwrite
    assert_close(x, expected_grad, dtype)

    # in place with the class axis first (a class-major layout)
    xt = np.ascontiguousarray(x0.T)
    loss, result = ce.cross_entropy_with_grad(xt, t.T if t.ndim == 2 else t, axis=0, out=xt,
                                              **options)
    assert result is xt
    assert_close(loss, expected_loss, dtype)
    assert_close(xt, expected_grad.T, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_lse_reuse(dtype, kind, reduction):
    rng = np.random.default_rng(seed_of("lse", kind, reduction))
    shape = (9, 3, 6)    # classes on axis 2
    x = random_logits(rng, shape, dtype)
    t = rng.integers(0, 6, (9, 3)) if kind == "index" else random_dense_target(rng, shape, -1,
                                                                                  "probs")
    kw = dict(reduction=reduction, weight=rng.uniform(0.5, 2, 6), label_smoothing=0.1,
              z_loss=0.02)
    loss, grad, lse = ce.cross_entropy_with_grad(x, t, return_lse=True, **kw)
    assert_array_of(lse, (9, 3), dtype)
    assert_close(lse, ref_lse(x), dtype)
    assert_close(loss, ce.cross_entropy(x, t, **kw), dtype, factor=0.05)
    again = ce.cross_entropy_grad(x, t, lse=lse, **kw)
    assert_close(again, grad, dtype)     # lse is rounded to the dtype: not bitwise
    assert_close(again, ref_grad(x, t, **kw), dtype)
    # a wrong lse is used, not silently recomputed
    wrong = ce.cross_entropy_grad(x, t, lse=(lse + 1.0).astype(dtype), **kw)
    assert not np.allclose(wrong, grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("params", [p for p in OPTION_GRID if p[3] != "bool" and p[4] == 0.15],
                         ids=grid_id)
def test_fused_equals_separate_calls(dtype, params):
    case = Case(seed_of("fused", params), dtype, *params)
    # float16 results may differ by one float16 rounding of slightly different float32 values
    factor = 0.5 if np.dtype(dtype) == np.float16 else 0.05
    loss, grad = ce.cross_entropy_with_grad(case.x, case.t, grad_output=case.go, **case.kw)
    assert_close(loss, ce.cross_entropy(case.x, case.t, **case.kw), dtype, factor=factor)
    assert_close(grad, ce.cross_entropy_grad(case.x, case.t, grad_output=case.go, **case.kw),
                 dtype, factor=factor)


def test_in_place_gradient():
    rng = np.random.default_rng(1)
    for c in (5, 50):
        x = rng.normal(size=(30, c))
        y = rng.integers(0, c, 30)
        expect = ce.cross_entropy_grad(x, y, label_smoothing=0.1)
        assert ce.cross_entropy_grad(x, y, label_smoothing=0.1, out=x) is x
        np.testing.assert_allclose(x, expect, rtol=1e-13, atol=1e-16)


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


# --------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# --------------------------------------------------------------------------------------------

SOFTMAX_LAYOUTS = [((7, 5), -1), ((7, 5), 0), ((3, 4, 5), 1), ((3, 4, 5), -2), ((6,), 0),
                   ((2, 3, 4), 2), ((0, 5), -1), ((4, 1), -1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", SOFTMAX_LAYOUTS)
def test_softmax_family(dtype, shape, axis):
    rng = np.random.default_rng(seed_of("softmax", shape, axis))
    x = random_logits(rng, shape, dtype)
    sm = ce.softmax(x, axis=axis)
    assert_array_of(sm, shape, dtype)
    assert_close(sm, ref_softmax(x, axis=axis), dtype)
    if x.size:
        assert_close(sm.astype(np.float64).sum(axis=axis),
                     np.ones(batch_shape_of(shape, axis)), dtype)
    lsm = ce.log_softmax(x, axis=axis)
    assert_array_of(lsm, shape, dtype)
    assert_close(lsm, ref_log_softmax(x, axis=axis), dtype)
    lse = ce.logsumexp(x, axis=axis)
    reduced = batch_shape_of(shape, axis)
    assert np.shape(lse) == reduced and np.asarray(lse).dtype == np.dtype(dtype)
    assert_close(lse, ref_logsumexp(x, axis=axis), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_softmax_family_defaults_and_out(dtype):
    rng = np.random.default_rng(22)
    x = random_logits(rng, (6, 4), dtype)
    assert_close(ce.softmax(x), ref_softmax(x), dtype)
    assert_close(ce.log_softmax(x), ref_log_softmax(x), dtype)
    assert_close(ce.logsumexp(x), ref_logsumexp(x), dtype)
    for fn, ref in [(ce.softmax, ref_softmax), (ce.log_softmax, ref_log_softmax)]:
        out = np.full_like(x, 7)
        assert fn(x, out=out) is out
        assert_close(out, ref(x), dtype)
        out = np.full((6, 8), 7, dtype=dtype)[:, ::2]
        assert fn(x, out=out) is out
        assert_close(out, ref(x), dtype)
        y = x.copy()
        assert fn(y, out=y) is y
        assert_close(y, ref(x), dtype)
        xt = np.ascontiguousarray(x.T)
        assert fn(xt, axis=0, out=xt) is xt
        assert_close(xt, ref(x).T, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_family_is_stable(dtype):
    x = np.array([[1000.0, 1000.0], [-1000.0, -1000.0], [88.0, -88.0]], dtype=dtype)
    assert_close(ce.softmax(x), [[0.5, 0.5], [0.5, 0.5], ref_softmax(x)[2]], dtype)
    assert_close(ce.logsumexp(x), [1000 + math.log(2), -1000 + math.log(2), 88.0], dtype)
    assert_close(ce.log_softmax(x), ref_log_softmax(x), dtype)
    assert np.all(np.isfinite(ce.log_softmax(x)))


# --------------------------------------------------------------------------------------------
# Non-finite rows
# --------------------------------------------------------------------------------------------

INF, NAN = np.inf, np.nan


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_rows_index_target(dtype):
    x = np.array([
        [NAN, 0.0, 1.0],        # 0: NaN anywhere         -> NaN, NaN row
        [INF, 0.0, 1.0],        # 1: +inf off target      -> NaN, NaN row
        [0.0, INF, 1.0],        # 2: +inf at target       -> NaN, NaN row
        [-INF, -INF, -INF],     # 3: all -inf             -> NaN
        [-INF, 0.0, 1.0],       # 4: -inf at target       -> +inf, finite gradient
        [-INF, 0.0, 1.0],       # 5: -inf off target      -> finite
        [-INF, -INF, -INF],     # 6: ignored              -> 0, zero row
        [NAN, INF, -INF],       # 7: ignored              -> 0, zero row
        [1.0, 2.0, 3.0],        # 8: ordinary
    ], dtype=dtype)
    y = np.array([1, 1, 1, 0, 0, 1, -100, -100, 2])
    none = ce.cross_entropy(x, y, reduction="none")
    assert np.all(np.isnan(none[:4]))
    assert none[4] == np.inf
    assert np.isfinite(none[5]) and np.isfinite(none[8])
    assert none[6] == 0 and none[7] == 0
    assert_close(none, ref_cross_entropy(x, y, reduction="none"), dtype)

    assert np.isnan(ce.cross_entropy(x, y, reduction="sum"))
    assert np.isnan(ce.cross_entropy(x, y))
    for reduction in REDUCTIONS:
        for grad in [ce.cross_entropy_grad(x, y, reduction=reduction),
                     ce.cross_entropy_with_grad(x, y, reduction=reduction)[1]]:
            assert np.all(np.isnan(grad[:4]))
            assert np.all(np.isfinite(grad[4:]))
            np.testing.assert_array_equal(grad[6:8], 0)
            assert_close(grad, ref_grad(x, y, reduction=reduction), dtype)
    # the -inf-target row's gradient is softmax - onehot
    g = ce.cross_entropy_grad(x[4:5], y[4:5], reduction="sum")
    assert_close(g, [[-1.0, 1 / (1 + math.e), math.e / (1 + math.e)]], dtype)
    # zero sample weight hides non-finite rows like ignore_index does
    sw = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=float)
    assert np.isfinite(ce.cross_entropy(x, y, sample_weight=sw))
    grad = ce.cross_entropy_grad(x, y, sample_weight=sw)
    np.testing.assert_array_equal(grad[:5], 0)
    assert np.all(np.isfinite(grad))
    assert_close(grad, ref_grad(x, y, sample_weight=sw), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_rows_dense_target(dtype):
    x = np.array([
        [-INF, 0.0, 1.0],      # 0: zero target on the -inf logit -> finite (xlogy)
        [-INF, 0.0, 1.0],      # 1: positive target on the -inf logit -> +inf
        [NAN, 0.0, 1.0],       # 2: NaN -> NaN
        [1.0, INF, 0.0],       # 3: +inf -> NaN
        [1.0, 2.0, 3.0],       # 4: ordinary
    ], dtype=dtype)
    t = np.array([[0.0, 0.5, 0.5], [0.2, 0.4, 0.4], [1, 0, 0], [0, 1, 0], [0.3, 0.3, 0.4]])
    none = ce.cross_entropy(x, t, reduction="none")
    assert np.isfinite(none[0]) and none[1] == np.inf
    assert np.isnan(none[2]) and np.isnan(none[3])
    assert_close(none, ref_cross_entropy(x, t, reduction="none"), dtype)
    grad = ce.cross_entropy_grad(x, t, reduction="sum")
    assert np.all(np.isfinite(grad[[0, 1, 4]]))
    assert np.all(np.isnan(grad[[2, 3]]))
    assert grad[0, 0] == 0
    assert_close(grad, ref_grad(x, t, reduction="sum"), dtype)
    # rows with zero sample weight are exactly zero whatever they hold
    sw = np.array([1.0, 0.0, 0.0, 0.0, 1.0])
    grad = ce.cross_entropy_grad(x, t, sample_weight=sw)
    np.testing.assert_array_equal(grad[1:4], 0)
    assert_close(ce.cross_entropy(x, t, sample_weight=sw),
                 ref_cross_entropy(x, t, sample_weight=sw), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_from_logits_false_clips_at_eps(dtype):
    eps = np.finfo(dtype).eps
    p = np.array([[0.0, 0.5, 0.5], [eps / 4, 0.25, 0.75], [0.2, 0.3, 0.5]], dtype=dtype)
    y = np.array([0, 0, 1])
    none = ce.cross_entropy(p, y, from_logits=False, reduction="none")
    assert_close(none, [-math.log(eps), -math.log(eps), -math.log(float(p[2, 1]))], dtype)
    grad = ce.cross_entropy_grad(p, y, from_logits=False, reduction="sum")
    assert grad[0, 0] == 0 and grad[1, 0] == 0        # clipped: no gradient
    assert_close(grad, ref_grad(p, y, from_logits=False, reduction="sum"), dtype)
    assert_close(grad[2], [0, -1 / float(p[2, 1]), 0], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("how", ["ignored", "sample_weight_0", "bool_mask"])
@pytest.mark.parametrize("fill", ["nan", "-inf", "+inf", "mixed"])
@pytest.mark.parametrize("extra", list(EXTRAS) + ["smoothing+weight"])
def test_inactive_rows_are_exactly_zero_whatever_their_logits(dtype, how, fill, extra):
    x = np.array([[1.0, 2.0, 0.5, -1.0]] * 4, dtype=dtype)
    if extra == "probabilities":
        x = np.array([[0.1, 0.2, 0.3, 0.4]] * 4, dtype=dtype)
    x[1] = {"nan": NAN, "-inf": -INF, "+inf": INF, "mixed": [NAN, INF, -INF, 0.0]}[fill]
    kw = dict(EXTRAS.get(extra, {}))
    if extra == "smoothing+weight":
        kw.update(label_smoothing=0.2, weight=np.array([1.0, 2.0, 0.5, 3.0]))
    y = np.array([0, 1, 2, 3])
    if how == "ignored":
        y[1] = -100
    elif how == "sample_weight_0":
        kw["sample_weight"] = np.array([1.0, 0.0, 2.0, 1.0])
    else:
        kw["sample_weight"] = np.array([True, False, True, True])
    for reduction in REDUCTIONS:
        none = ce.cross_entropy(x, y, reduction="none", **kw)
        assert none[1] == 0
        assert np.all(np.isfinite(none))
        assert np.all(np.isfinite(ce.cross_entropy(x, y, reduction=reduction, **kw)))
        grad = ce.cross_entropy_grad(x, y, reduction=reduction, **kw)
        np.testing.assert_array_equal(grad[1], 0, err_msg=f"{reduction} {kw}")
        assert_close(grad, ref_grad(x, y, reduction=reduction, **kw), dtype)
        _, grad = ce.cross_entropy_with_grad(x, y, reduction=reduction, **kw)
        np.testing.assert_array_equal(grad[1], 0, err_msg=f"fused {reduction} {kw}")


def test_non_finite_rows_follow_the_table():
    x = np.array([[0.0, np.nan, 1.0], [np.inf, 0, 0], [-np.inf] * 3, [-np.inf, 0, 1], [-np.inf] * 3])
    y = np.array([0, 1, 2, 0, -100])
    loss, g = ce.cross_entropy_with_grad(x, y, reduction="none")
    assert np.isnan(loss[:3]).all() and np.isnan(g[:3]).all()
    assert loss[3] == np.inf and np.isfinite(g[3]).all()
    assert loss[4] == 0 and (g[4] == 0).all()
    t = np.array([[0.0, 1.0, 0.0]])
    assert np.isfinite(ce.cross_entropy(np.array([[-np.inf, 0.0, 1.0]]), t))


# --------------------------------------------------------------------------------------------
# Memory layouts of the inputs
# --------------------------------------------------------------------------------------------

def _layout(name, base):
    """A view or copy of ``base`` (shape (8, 6), classes last) in the named layout, and the
    class axis to use with it."""
    if name == "C":
        return base.copy(), -1
    if name == "F":
        return np.asfortranarray(base), -1
    if name == "cols_sliced":
        big = np.zeros((8, 12), dtype=base.dtype)
        big[:, ::2] = base
        return big[:, ::2], -1
    if name == "rows_sliced":
        big = np.zeros((16, 6), dtype=base.dtype)
        big[::2] = base
        return big[::2], -1
    if name == "neg_rows":
        return base[::-1].copy()[::-1], -1
    if name == "neg_cols":
        return base[:, ::-1].copy()[:, ::-1], -1
    if name == "readonly":
        v = base.copy()
        v.flags.writeable = False
        return v, -1
    if name == "big_endian":
        return base.astype(base.dtype.newbyteorder(">")), -1
    if name == "little_endian":
        return base.astype(base.dtype.newbyteorder("<")), -1
    if name == "transposed_view":
        return np.ascontiguousarray(base.T).T, -1     # F-ordered view, classes on the last axis
    if name == "class_major":
        return np.ascontiguousarray(base.T), 0
    raise ValueError(name)


LAYOUT_NAMES = ["C", "F", "cols_sliced", "rows_sliced", "neg_rows", "neg_cols", "readonly",
                "big_endian", "little_endian", "transposed_view", "class_major"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_input_layouts(dtype, kind, name):
    rng = np.random.default_rng(seed_of("layout", kind))
    base = random_logits(rng, (8, 6), np.dtype(dtype))
    labels = rng.integers(0, 6, 8)
    labels[3] = -100
    dense = random_dense_target(rng, (8, 6), -1, "raw")
    x, axis = _layout(name, base)
    if kind == "index":
        t = labels
    else:
        t = dense.T.copy() if axis == 0 else dense
    kw = dict(axis=axis, weight=rng.uniform(0.5, 2, 6), label_smoothing=0.1,
              sample_weight=rng.uniform(0.5, 2, 8))
    x_before = x.copy()
    for reduction in REDUCTIONS:
        expected_loss = ref_cross_entropy(base, labels if kind == "index" else dense,
                                          reduction=reduction,
                                          **{k: v for k, v in kw.items() if k != "axis"})
        expected_grad = ref_grad(base, labels if kind == "index" else dense, reduction=reduction,
                                 **{k: v for k, v in kw.items() if k != "axis"})
        if axis == 0:
            expected_grad = expected_grad.T
        loss = ce.cross_entropy(x, t, reduction=reduction, **kw)
        if reduction == "none":
            assert loss.shape == (8,) and loss.dtype.type is np.dtype(dtype).type
        else:
            assert_numpy_scalar(loss, dtype)
        assert_close(loss, expected_loss, dtype)
        grad = ce.cross_entropy_grad(x, t, reduction=reduction, **kw)
        # the logits' shape and float type (byte order is not part of the contract)
        assert grad.shape == x.shape and grad.dtype.type is np.dtype(dtype).type
        assert_close(grad, expected_grad, dtype)
        loss2, grad2 = ce.cross_entropy_with_grad(x, t, reduction=reduction, **kw)
        assert_close(loss2, expected_loss, dtype)
        assert_close(grad2, expected_grad, dtype)
    np.testing.assert_array_equal(x, x_before)     # the input is never written
    sm = ce.softmax(x, axis=axis)
    assert_close(sm, ref_softmax(x_before, axis=axis), dtype)
    assert_close(ce.log_softmax(x, axis=axis), ref_log_softmax(x_before, axis=axis), dtype)
    assert_close(ce.logsumexp(x, axis=axis), ref_logsumexp(x_before, axis=axis), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_four_dimensional_layouts(dtype):
    """(N, C, H, W) with axis=1, also Fortran-ordered, sliced and reversed."""
    rng = np.random.default_rng(23)
    base = random_logits(rng, (3, 5, 4, 6), dtype)
    y = rng.integers(0, 5, (3, 4, 6))
    y[0, 1, 2] = -100
    big = np.zeros((3, 5, 8, 6), dtype=dtype)
    big[:, :, ::2] = base
    variants = {
        "C": base,
        "F": np.asfortranarray(base),
        "sliced": big[:, :, ::2],
        "reversed": base[:, :, ::-1].copy()[:, :, ::-1],
        "big_endian": base.astype(np.dtype(dtype).newbyteorder(">")),
    }
    expected_loss = ref_cross_entropy(base, y, axis=1, reduction="none")
    expected_grad = ref_grad(base, y, axis=1)
    for name, x in variants.items():
        assert_close(ce.cross_entropy(x, y, axis=1, reduction="none"), expected_loss, dtype,
                     name)
        loss, grad = ce.cross_entropy_with_grad(x, y, axis=1)
        assert_close(loss, ref_cross_entropy(base, y, axis=1), dtype, name)
        assert_close(grad, expected_grad, dtype, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_target_and_weight_layouts(dtype):
    rng = np.random.default_rng(24)
    x = random_logits(rng, (8, 6), dtype)
    y = rng.integers(0, 6, 8)
    w = rng.uniform(0.5, 2, 6)
    sw = rng.uniform(0.5, 2, 8)
    expected = ref_grad(x, y, weight=w, sample_weight=sw, reduction="sum")
    big_y = np.zeros(16, dtype=np.int64)
    big_y[::2] = y
    big_w = np.zeros(12)
    big_w[::2] = w
    big_sw = np.zeros(16)
    big_sw[::2] = sw
    for yy, ww, ss in [(big_y[::2], big_w[::2], big_sw[::2]),
                       (y[::-1].copy()[::-1], w[::-1].copy()[::-1], sw[::-1].copy()[::-1]),
                       (y.astype(">i8"), w.astype(">f8"), sw.astype(">f4").astype(">f8")),
                       (y.astype(np.int32), w.astype(np.float32), sw)]:
        ss_expected = ref_grad(x, y, weight=ww, sample_weight=ss, reduction="sum")
        assert_close(ce.cross_entropy_grad(x, yy, weight=ww, sample_weight=ss, reduction="sum"),
                     ss_expected, dtype)
    assert_close(ce.cross_entropy_grad(x, big_y[::2], weight=big_w[::2], sample_weight=big_sw[::2],
                                       reduction="sum"), expected, dtype)
    # dense targets in other layouts
    t = random_dense_target(rng, (8, 6), -1, "probs")
    expected = ref_cross_entropy(x, t, reduction="none")
    for tt in [np.asfortranarray(t), t[::-1].copy()[::-1], t.astype(">f8"), t.astype(np.float32)]:
        assert_close(ce.cross_entropy(x, tt, reduction="none"),
                     ref_cross_entropy(x, np.asarray(tt, dtype=np.float64), reduction="none"),
                     dtype)
    assert_close(ce.cross_entropy(x, np.asfortranarray(t), reduction="none"), expected, dtype)


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


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_ndarray_subclasses_are_plain_input():
    x = np.random.default_rng(2).normal(size=(5, 4))
    y = np.array([0, 1, 2, 3, 0])
    m = np.asmatrix(x)
    assert ce.cross_entropy(m, y) == ce.cross_entropy(x, y)
    np.testing.assert_array_equal(ce.softmax(m), ce.softmax(x))
    np.testing.assert_array_equal(ce.logsumexp(m), ce.logsumexp(x))


# --------------------------------------------------------------------------------------------
# Exactness: no cancellation for confident rows
# --------------------------------------------------------------------------------------------

def _confident_expectations(row, label):
    """Closed forms, accurate in float64: with x[label] the row maximum,
    loss = log1p(S), S = sum_{c != label} exp(x_c - x_label); grad = p - onehot with
    p_label - 1 = -S / (1 + S)."""
    row = np.asarray(row, dtype=np.float64)
    others = np.exp(np.delete(row, label) - row[label])
    s = others.sum()
    grad = np.exp(row - row[label]) / (1.0 + s)
    grad[label] = -s / (1.0 + s)
    return math.log1p(s), grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_confident_row_is_exact(dtype):
    x = np.array([[30.0, 0.0, -5.0]], dtype=dtype)
    y = np.array([0])
    loss_expected, grad_expected = _confident_expectations(x[0], 0)
    assert grad_expected[0] == pytest.approx(-9.357622968839299e-14, rel=1e-12)
    for reduction in REDUCTIONS:
        loss = ce.cross_entropy(x, y, reduction=reduction)
        assert float(np.ravel(loss)[0]) == pytest.approx(loss_expected, rel=1e-3)
        grad = ce.cross_entropy_grad(x, y, reduction=reduction)
        assert grad[0, 0] < 0
        np.testing.assert_allclose(grad[0], grad_expected, rtol=1e-3)
        loss, grad = ce.cross_entropy_with_grad(x, y, reduction=reduction)
        assert float(np.ravel(loss)[0]) == pytest.approx(loss_expected, rel=1e-3)
        np.testing.assert_allclose(grad[0], grad_expected, rtol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c,n,axis", [(3, 37, -1), (64, 5, -1), (3, 37, 0), (1000, 3, -1)])
def test_confident_rows_exact_in_every_kernel(dtype, c, n, axis):
    """The same confident row, in batches and widths that take other code paths."""
    rng = np.random.default_rng(seed_of("confident", c, n))
    x = np.full((n, c), -5.0)
    x[:, 1] = 0.0
    x[:, 0] = 30.0
    x[:, 2:] = -5.0 - rng.random((n, c - 2)) if c > 2 else x[:, 2:]
    x = x.astype(dtype)
    y = np.zeros(n, dtype=np.int64)
    xin = np.ascontiguousarray(x.T) if axis == 0 else x
    loss = ce.cross_entropy(xin, y, axis=axis, reduction="none")
    grad = ce.cross_entropy_grad(xin, y, axis=axis, reduction="sum")
    if axis == 0:
        grad = grad.T
    for i in range(n):
        loss_expected, grad_expected = _confident_expectations(x[i], 0)
        assert float(loss[i]) == pytest.approx(loss_expected, rel=1e-3)
        np.testing.assert_allclose(grad[i], grad_expected, rtol=1e-3,
                                   atol=1e-3 * np.abs(grad_expected).min())


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


# --------------------------------------------------------------------------------------------
# n_threads (thread-count determinism: tests/test_threads.py)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_threads", [None, 1, 2, np.int64(2)])
def test_valid_n_threads(n_threads):
    x = np.array([[1.0, 2.0], [0.0, 1.0]])
    y = np.array([0, 1])
    assert_close(ce.cross_entropy(x, y, n_threads=n_threads), ref_cross_entropy(x, y),
                 np.float64)
