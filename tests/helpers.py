"""Shared helpers for the ce tests: tolerances, comparisons and random inputs (no ce here)."""
import math
import zlib

import numpy as np

DTYPES = (np.float64, np.float32, np.float16)

# (rtol, atol); atol is scaled by max(1, max |expected|). float16 is computed in float32 and
# rounded to float16 (eps 9.8e-4) on the way out.
TOLERANCES = {
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float32): (2e-5, 2e-6),
    np.dtype(np.float16): (4e-3, 2e-3),
}


def seed_of(*parts):
    """A stable seed from a test's parameters (so each case has its own deterministic data)."""
    return zlib.crc32(repr(parts).encode())


def assert_close(actual, expected, dtype, what="", factor=1.0):
    """Compare with per-dtype tolerances; NaN must match NaN and infinities must match."""
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol * factor, atol=atol * factor * scale,
                               equal_nan=True, err_msg=what)


# rtol of assert_close_rounded (tests/test_hypothesis.py), relative to the expected value
ROUNDED_RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 5e-5, np.dtype(np.float16): 3e-3}


def assert_close_rounded(actual, expected, dtype, what, atol=0.0, rtol=None):
    """Compare in float64 after rounding the expected value to `dtype` (so overflow to inf in
    float16/float32 outputs is expected). NaN must match NaN, infinities must match."""
    dtype = np.dtype(dtype)
    rtol = ROUNDED_RTOL[dtype] if rtol is None else rtol
    a = np.asarray(actual).astype(np.float64)
    with np.errstate(all="ignore"):
        e = np.asarray(expected, dtype=np.float64).astype(dtype).astype(np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), (
        f"{what}: NaN where not expected or missing at {np.argwhere(nan_a != nan_e)[:5].tolist()}"
        f"\nactual={a[nan_a != nan_e][:5]} expected={e[nan_a != nan_e][:5]}")
    big = np.finfo(dtype).max / 2
    inf_e, inf_a = np.isinf(e), np.isinf(a)
    near_max = (inf_e & (np.abs(a) >= big)) | (inf_a & (np.abs(e) >= big))
    both = (inf_e | inf_a) & ~near_max
    assert np.array_equal(a[both], e[both]), f"{what}: infinities differ"
    fin = ~(nan_e | inf_e | inf_a)
    err = np.abs(a[fin] - e[fin])
    lim = rtol * np.abs(e[fin]) + atol + (6e-8 if dtype == np.float16 else 0.0)
    if not np.all(err <= lim):
        i = int(np.argmax(err - lim))
        raise AssertionError(f"{what}: |{a[fin][i]!r} - {e[fin][i]!r}| = {err[i]:.3g} > {lim[i]:.3g} "
                             f"({np.count_nonzero(err > lim)} of {err.size} entries)")


def bits(a):
    """(dtype, shape, bytes) of an array or scalar: equal exactly when two results have the same
    bits (NaN payloads and the sign of zero included)."""
    a = np.asarray(a)
    return a.dtype.str, a.shape, a.tobytes()


def assert_numpy_scalar(value, dtype):
    """A NumPy scalar (not a Python float, not an array) of exactly ``dtype``."""
    assert isinstance(value, np.generic), f"expected a NumPy scalar, got {type(value)}"
    assert value.dtype == np.dtype(dtype), f"dtype {value.dtype} != {np.dtype(dtype)}"


def assert_array_of(value, shape, dtype):
    assert isinstance(value, np.ndarray), f"expected an ndarray, got {type(value)}"
    assert value.shape == tuple(shape), f"shape {value.shape} != {tuple(shape)}"
    assert value.dtype == np.dtype(dtype), f"dtype {value.dtype} != {np.dtype(dtype)}"


def assert_loss_type(loss, reduction, batch_shape, dtype):
    if reduction == "none":
        if batch_shape == ():
            # a 0-d array or a NumPy scalar are both acceptable for one example
            assert np.shape(loss) == () and np.asarray(loss).dtype == np.dtype(dtype)
        else:
            assert_array_of(loss, batch_shape, dtype)
    else:
        assert_numpy_scalar(loss, dtype)


# --------------------------------------------------------------------------------------------
# Layouts: class axes and the shapes that go with them
# --------------------------------------------------------------------------------------------

def normalized_axes(ndim, axis):
    axes = axis if isinstance(axis, tuple) else (axis,)
    return tuple(sorted(a % ndim for a in axes))


def batch_shape_of(shape, axis):
    axes = normalized_axes(len(shape), axis)
    return tuple(n for d, n in enumerate(shape) if d not in axes)


def num_classes(shape, axis):
    axes = normalized_axes(len(shape), axis)
    return math.prod(shape[d] for d in axes)


def onehot(labels, shape, axis, dtype=np.float64):
    """Dense one-hot array of the logits' shape for class-index labels (C-order flat index into
    the sub-array over the sorted class axes)."""
    axes = normalized_axes(len(shape), axis)
    k = len(axes)
    moved_shape = batch_shape_of(shape, axis) + tuple(shape[d] for d in axes)
    out = np.zeros(moved_shape, dtype=dtype)
    flat = out.reshape(-1, num_classes(shape, axis))
    labels = np.asarray(labels).reshape(-1)
    flat[np.arange(flat.shape[0]), labels] = 1
    return np.moveaxis(flat.reshape(moved_shape), range(len(shape) - k, len(shape)), axes)


def random_logits(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def random_probabilities(rng, shape, axis, dtype, floor=0.2):
    """Rows of probabilities along the class axes, each at least floor / C (no clipping)."""
    axes = normalized_axes(len(shape), axis)
    c = num_classes(shape, axis)
    e = np.exp(rng.standard_normal(shape))
    p = (1.0 - floor) * e / e.sum(axis=axes, keepdims=True) + floor / max(c, 1)
    return p.astype(dtype)


def random_labels(rng, batch_shape, c, ignore_index=None, ignore_fraction=0.25,
                  dtype=np.int64):
    y = rng.integers(0, c, batch_shape).astype(dtype)
    if ignore_index is not None:
        mask = rng.random(batch_shape) < ignore_fraction
        y[mask] = ignore_index
    return y


def random_dense_target(rng, shape, axis, style):
    """style: 'probs' (rows sum to 1), 'onehot_int' (int8 one-hot), 'raw' (not normalised,
    with exact zeros)."""
    c = num_classes(shape, axis)
    if style == "probs":
        return random_probabilities(rng, shape, axis, np.float64, floor=0.0)
    if style == "onehot_int":
        labels = rng.integers(0, c, batch_shape_of(shape, axis))
        return onehot(labels, shape, axis, dtype=np.int8)
    if style == "raw":
        t = rng.random(shape) * 2.0
        t[rng.random(shape) < 0.3] = 0.0
        return t
    raise ValueError(style)


def central_difference(f, x, index, h=1e-6):
    """d f / d x[index] of the scalar function f at x by central differences (float64)."""
    x = np.array(x, dtype=np.float64)
    xp = x.copy()
    xm = x.copy()
    xp[index] += h
    xm[index] -= h
    return (float(f(xp)) - float(f(xm))) / (2.0 * h)


def finite_difference(f, x, h=1e-6):
    """Central differences of the scalar function f at x (float64), every entry."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        g[i] = central_difference(f, x, i, h)
    return g


def both_threads(f):
    """f(n_threads) on 1 and on 2 threads: the results must be bitwise equal."""
    one, two = f(1), f(2)
    for a, b in zip(one if isinstance(one, tuple) else (one,), two if isinstance(two, tuple) else (two,)):
        a, b = np.atleast_1d(a), np.atleast_1d(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), "1 and 2 threads differ"
    return one
