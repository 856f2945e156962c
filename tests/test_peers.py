"""Parity with the peers that are installed: PyTorch (loss and autograd gradient), scikit-learn's
log_loss (from_logits=False) and optax. Each block is skipped when its peer is missing."""
import inspect
import itertools
import warnings

import numpy as np
import pytest

import ce
from helpers import assert_close, seed_of
from reference import ref_cross_entropy, ref_grad

REDUCTIONS = ("none", "sum", "mean")


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------

TORCH_GRID = list(itertools.product(
    REDUCTIONS, (False, True), (False, True), (0.0, 0.2), ("index", "probabilities"),
    ("N,C", "N,C,d1,d2")))


def torch_id(p):
    reduction, weighted, ignore, smoothing, kind, layout = p
    return (f"{reduction}-{'w' if weighted else 'now'}-{'ign' if ignore else 'noign'}"
            f"-ls={smoothing}-{kind}-{layout.replace(',', '')}")


def torch_case(params, dtype):
    reduction, weighted, ignore, smoothing, kind, layout = params
    rng = np.random.default_rng(seed_of("torch", params))
    shape = (7, 5) if layout == "N,C" else (3, 5, 4, 2)
    c = 5
    per_example = (shape[0],) + shape[2:]
    x = (rng.standard_normal(shape) * 2.5).astype(dtype)
    if kind == "index":
        t = rng.integers(0, c, per_example)
        if ignore:
            t[rng.random(per_example) < 0.3] = -100
            t.flat[0] = -100
    else:
        e = rng.random(shape)
        t = e / e.sum(axis=1, keepdims=True)
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    if weighted:
        kw["weight"] = rng.uniform(0.5, 2.0, c)
    go = rng.standard_normal(per_example) if reduction == "none" else 1.3
    return x, t, kw, go


def torch_loss_and_grad(torch, x, t, kw, go):
    F = torch.nn.functional
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(t) if t.dtype.kind in "iu" else torch.tensor(t.astype(x.dtype))
    weight = kw.get("weight")
    wt = None if weight is None else torch.tensor(np.asarray(weight, dtype=x.dtype))
    loss = F.cross_entropy(xt, tt, weight=wt, ignore_index=-100, reduction=kw["reduction"],
                           label_smoothing=kw.get("label_smoothing", 0.0))
    (loss * torch.tensor(np.asarray(go), dtype=xt.dtype)).sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("params", TORCH_GRID, ids=[torch_id(p) for p in TORCH_GRID])
def test_torch_cross_entropy(params, dtype):
    torch = pytest.importorskip("torch")
    x, t, kw, go = torch_case(params, dtype)
    expected_loss, expected_grad = torch_loss_and_grad(torch, x, t, kw, go)

    loss = ce.cross_entropy(x, t, axis=1, **kw)
    assert_close(loss, expected_loss, dtype, "loss vs torch")
    grad = ce.cross_entropy_grad(x, t, axis=1, grad_output=go, **kw)
    assert_close(grad, expected_grad, dtype, "grad vs torch")
    loss2, grad2 = ce.cross_entropy_with_grad(x, t, axis=1, grad_output=go, **kw)
    assert_close(loss2, expected_loss, dtype, "fused loss vs torch")
    assert_close(grad2, expected_grad, dtype, "fused grad vs torch")


@pytest.mark.parametrize("params", TORCH_GRID, ids=[torch_id(p) for p in TORCH_GRID])
def test_reference_agrees_with_torch(params):
    """The test reference itself reproduces PyTorch to float64 precision."""
    torch = pytest.importorskip("torch")
    x, t, kw, go = torch_case(params, np.float64)
    expected_loss, expected_grad = torch_loss_and_grad(torch, x, t, kw, go)
    np.testing.assert_allclose(ref_cross_entropy(x, t, axis=1, **kw), expected_loss,
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ref_grad(x, t, axis=1, grad_output=go, **kw), expected_grad,
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("target", [2, "probabilities"])
def test_torch_unbatched(dtype, target):
    torch = pytest.importorskip("torch")
    x = np.array([0.3, -1.2, 2.0, 0.7], dtype=dtype)
    t = np.array(target) if target == 2 else np.array([0.1, 0.2, 0.3, 0.4])
    for reduction in REDUCTIONS:
        expected_loss, expected_grad = torch_loss_and_grad(
            torch, x, t, {"reduction": reduction, "label_smoothing": 0.1}, 0.9)
        assert_close(ce.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
                     expected_loss, dtype)
        assert_close(ce.cross_entropy_grad(x, t, reduction=reduction, label_smoothing=0.1,
                                           grad_output=0.9), expected_grad, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_non_finite_rows(dtype, reduction):
    """NaN / +inf anywhere, all -inf, and a -inf target logit: as PyTorch (loss and gradient)."""
    torch = pytest.importorskip("torch")
    inf, nan = np.inf, np.nan
    x = np.array([[nan, 0.0, 1.0], [inf, 0.0, 1.0], [0.0, inf, 1.0], [-inf, -inf, -inf],
                  [-inf, 0.0, 1.0], [-inf, 0.0, 1.0], [1.0, 2.0, 3.0]], dtype=dtype)
    y = np.array([1, 1, 1, 0, 0, 1, 2])
    go = np.linspace(0.5, 2.0, 7) if reduction == "none" else 0.8
    expected_loss, expected_grad = torch_loss_and_grad(torch, x, y, {"reduction": reduction}, go)
    assert_close(ce.cross_entropy(x, y, reduction=reduction), expected_loss, dtype)
    assert_close(ce.cross_entropy_grad(x, y, reduction=reduction, grad_output=go),
                 expected_grad, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_torch_ignore_index_inside_class_range(dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 4)).astype(dtype)
    y = rng.integers(0, 4, 9)
    w = rng.uniform(0.5, 2, 4)
    xt = torch.tensor(x, requires_grad=True)
    loss = F.cross_entropy(xt, torch.tensor(y), weight=torch.tensor(w.astype(dtype)),
                           ignore_index=1, label_smoothing=0.1)
    loss.backward()
    assert_close(ce.cross_entropy(x, y, weight=w, ignore_index=1, label_smoothing=0.1),
                 loss.item(), dtype)
    assert_close(ce.cross_entropy_grad(x, y, weight=w, ignore_index=1, label_smoothing=0.1),
                 xt.grad.numpy(), dtype)


# --------------------------------------------------------------------------------------------
# scikit-learn
# --------------------------------------------------------------------------------------------

def sklearn_probabilities(rng, n, c):
    """Rows summing to 1, every entry well inside (eps, 1 - eps)."""
    e = np.exp(rng.standard_normal((n, c)))
    return 0.9 * e / e.sum(axis=1, keepdims=True) + 0.1 / c


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("c", [2, 3, 10])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("kind", ["index", "one-hot"])
def test_sklearn_log_loss(dtype, c, weighted, kind):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed_of("sklearn", c, weighted, kind))
    n = 40
    p = sklearn_probabilities(rng, n, c).astype(dtype)
    y = rng.integers(0, c, n)
    sw = rng.uniform(0.1, 2.0, n) if weighted else None
    target = y if kind == "index" else np.eye(c, dtype=np.int64)[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # float32 rows sum to 1 only to float32 precision
        expected_mean = metrics.log_loss(y, p.astype(np.float64), labels=np.arange(c),
                                         sample_weight=sw)
        expected_sum = metrics.log_loss(y, p.astype(np.float64), labels=np.arange(c),
                                        sample_weight=sw, normalize=False)
    mean = ce.cross_entropy(p, target, from_logits=False, sample_weight=sw)
    assert_close(mean, expected_mean, dtype)
    total = ce.cross_entropy(p, target, from_logits=False, sample_weight=sw, reduction="sum")
    assert_close(total, expected_sum, dtype)
    # the gradient with respect to the probabilities: -sw * t / p / denominator
    onehot = np.eye(c)[y]
    weights = np.ones(n) if sw is None else sw
    expected_grad = -(weights[:, None] * onehot / p.astype(np.float64)) / weights.sum()
    assert_close(ce.cross_entropy_grad(p, target, from_logits=False, sample_weight=sw),
                 expected_grad, dtype)


# --------------------------------------------------------------------------------------------
# optax
# --------------------------------------------------------------------------------------------

def _optax():
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    return optax, jax, jax.numpy


def _has_parameter(fn, name):
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# optax's own test_axes parameterizations (its test_axes0..7), unsorted tuples included
OPTAX_TUPLE_AXES = [(1, 3), (3, 2), (2, 3), (-3, -1), (-1, -2), (-2, -1), (0, 1, 3), (-4, -3, -1)]


@pytest.mark.parametrize("shape,axis", [((6, 5), -1), ((4, 5, 3), 1)]
                         + [((2, 3, 4, 5), a) for a in OPTAX_TUPLE_AXES] + [((1, 2, 3), (2, 1))])
def test_optax_integer_labels(shape, axis):
    optax, jax, jnp = _optax()
    fn = optax.softmax_cross_entropy_with_integer_labels
    if axis != -1 and not _has_parameter(fn, "axis"):
        pytest.skip("this optax has no axis argument")
    rng = np.random.default_rng(seed_of("optax", shape, axis))
    x = rng.standard_normal(shape).astype(np.float32)
    axes = axis if isinstance(axis, tuple) else (axis,)
    axes = tuple(a % len(shape) for a in axes)
    per_example = tuple(n for d, n in enumerate(shape) if d not in axes)
    c = int(np.prod([shape[d] for d in axes]))
    y = rng.integers(0, c, per_example)
    kw = {} if axis == -1 else {"axis": axis}
    expected = np.asarray(fn(jnp.asarray(x), jnp.asarray(y), **kw))
    assert_close(ce.cross_entropy(x, y, axis=axis, reduction="none"), expected, np.float32)
    expected_grad = np.asarray(jax.grad(lambda z: fn(z, jnp.asarray(y), **kw).sum())(
        jnp.asarray(x)))
    assert_close(ce.cross_entropy_grad(x, y, axis=axis, reduction="sum"), expected_grad,
                 np.float32)


def test_tuple_axes_follow_the_order_given():
    """axis=(2, 1): the classes are x.transpose(0, 2, 1) flattened, as optax does (2.4561934
    here, the issue's example); a dense target gives the same loss for either order."""
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    assert_close(ce.cross_entropy(x, np.array([1]), axis=(2, 1), reduction="none"),
                 np.array([2.4561934]), np.float32)
    assert_close(ce.cross_entropy(x, np.array([1]), axis=(1, 2), reduction="none"),
                 np.array([4.4561934]), np.float32)
    t = np.random.default_rng(5).random((1, 2, 3)).astype(np.float32)
    assert_close(ce.cross_entropy_with_grad(x, t, axis=(2, 1))[1],
                 ce.cross_entropy_with_grad(x, t, axis=(1, 2))[1], np.float32)


def test_optax_where_is_a_bool_sample_weight():
    optax, jax, jnp = _optax()
    fn = optax.softmax_cross_entropy_with_integer_labels
    if not _has_parameter(fn, "where"):
        pytest.skip("this optax has no where argument")
    rng = np.random.default_rng(31)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = rng.integers(0, 6, 8)
    where = rng.random(8) > 0.3
    expected = np.asarray(fn(jnp.asarray(x), jnp.asarray(y), where=jnp.asarray(where)))
    assert_close(ce.cross_entropy(x, y, sample_weight=where, reduction="none"), expected,
                 np.float32)


def test_optax_softmax_cross_entropy_dense():
    optax, jax, jnp = _optax()
    rng = np.random.default_rng(32)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    e = rng.random((7, 5))
    t = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    expected = np.asarray(optax.softmax_cross_entropy(jnp.asarray(x), jnp.asarray(t)))
    assert_close(ce.cross_entropy(x, t, reduction="none"), expected, np.float32)
    expected_grad = np.asarray(jax.grad(
        lambda z: optax.softmax_cross_entropy(z, jnp.asarray(t)).sum())(jnp.asarray(x)))
    assert_close(ce.cross_entropy_grad(x, t, reduction="sum"), expected_grad, np.float32)


def test_optax_safe_softmax_cross_entropy_xlogy():
    optax, jax, jnp = _optax()
    fn = getattr(optax, "safe_softmax_cross_entropy", None) or getattr(
        getattr(optax, "losses", None), "safe_softmax_cross_entropy", None)
    if fn is None:
        pytest.skip("this optax has no safe_softmax_cross_entropy")
    x = np.array([[-np.inf, 0.0, 1.0], [2.0, -np.inf, -np.inf], [0.5, 0.2, 0.1]],
                 dtype=np.float32)
    t = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=np.float32)
    expected = np.asarray(fn(jnp.asarray(x), jnp.asarray(t)))
    loss = ce.cross_entropy(x, t, reduction="none")
    assert np.all(np.isfinite(loss))
    assert_close(loss, expected, np.float32)
    expected_grad = np.asarray(jax.grad(lambda z: fn(z, jnp.asarray(t)).sum())(jnp.asarray(x)))
    assert_close(ce.cross_entropy_grad(x, t, reduction="sum"), expected_grad, np.float32)
