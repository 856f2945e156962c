"""Few wide rows: the classes of a row split into segments across threads.

The thresholds are read from the kernels (ce._kernels._thresholds()), and every
case runs at the class counts around them, against the float64 reference, and
on 1 and 2 threads (which must give the same bits).
"""
import numpy as np
import pytest

import ce
from ce import _kernels
from helpers import assert_close, both_threads
from reference import (ref_cross_entropy, ref_grad, ref_log_softmax, ref_logsumexp,
                       ref_softmax)

LIMITS = _kernels._thresholds()
MIN_C, MAX_ROWS, SEG = LIMITS["CE_SPLIT_MIN_C"], LIMITS["CE_SPLIT_MAX_ROWS"], LIMITS["CE_SPLIT_SEG"]
# below, at and above the least split class count (MIN_C + 1 leaves a one-class last segment)
WIDTHS = (MIN_C - 1, MIN_C, MIN_C + 1)
DTYPES = (np.float32, np.float64)


def wide(n, c, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n)
    y[0] = int(np.argmax(x[0]))          # a target that is the argmax
    if n > 2:
        y[2] = -100                      # an ignored row
    return x, y


def test_limits_are_consistent():
    assert MIN_C >= 2 * SEG and MAX_ROWS >= 2 and SEG % 256 == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", WIDTHS)
@pytest.mark.parametrize("n", [1, 3])
def test_loss_and_gradients(dtype, c, n):
    x, y = wide(n, c, dtype, (n, c, 1))
    loss = both_threads(lambda t: ce.cross_entropy(x, y, reduction="none", n_threads=t))
    assert_close(loss, ref_cross_entropy(x, y, reduction="none"), dtype, "loss")
    total, grad, lse = both_threads(
        lambda t: ce.cross_entropy_with_grad(x, y, return_lse=True, n_threads=t))
    assert_close(total, ref_cross_entropy(x, y), dtype, "fused loss")
    expected = ref_grad(x, y)
    assert_close(grad, expected, dtype, "fused grad")
    assert np.all(grad[2] == 0) if n > 2 else True
    from_lse = both_threads(lambda t: ce.cross_entropy_grad(x, y, lse=lse, n_threads=t))
    assert_close(from_lse, expected, dtype, "grad from lse", factor=4)
    # the target entry is -(sum of the other probabilities): no p_y - 1 cancellation
    assert grad[0, y[0]] < 0 and np.isfinite(grad).all()


def target_free(x, n_threads):
    """(lse, softmax, log_softmax) of the rows of x, through the kernel seam."""
    call = _kernels.Call(logits=x, n_threads=n_threads)
    lse, sm, ls = np.empty(len(x)), np.empty_like(x), np.empty_like(x)
    _kernels.solve(call, row_lse=lse)
    _kernels.solve(call, softmax=sm)
    _kernels.solve(call, log_softmax=ls)
    return lse, sm, ls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", WIDTHS)
def test_target_free_functions(dtype, c):
    x, _ = wide(2, c, dtype, (c, 2))
    lse, sm, ls = both_threads(lambda t: target_free(x, t))
    assert_close(lse, ref_logsumexp(x), dtype, "lse")
    assert_close(sm, ref_softmax(x), dtype, "softmax")
    assert_close(ls, ref_log_softmax(x), dtype, "log_softmax")
    assert_close(ce.logsumexp(x), ref_logsumexp(x), dtype, "logsumexp")
    assert np.array_equal(ce.softmax(x), sm) and np.array_equal(ce.log_softmax(x), ls)
    out = x.copy()
    ce.softmax(out, out=out)   # in place
    assert np.array_equal(out, ce.softmax(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [MAX_ROWS - 1, MAX_ROWS])
def test_row_count_threshold(dtype, n):
    x, y = wide(n, MIN_C, dtype, (n, 3))
    loss = both_threads(lambda t: ce.cross_entropy(x, y, reduction="none", n_threads=t))
    assert_close(loss, ref_cross_entropy(x, y, reduction="none"), dtype, "loss")


@pytest.mark.parametrize("dtype", DTYPES)
def test_argmax_ranks_and_score_across_segments(dtype):
    c = MIN_C + 1
    x, y = wide(4, c, dtype, (c, 4))
    x[1, SEG + 5] = x[1, 3] = 50           # a tie across segments: the first index wins
    y[1] = SEG + 5                         # so the label is not the argmax, rank 0
    x[3, c - 1] = 60                       # the max in the one-class last segment
    y[3] = 7
    for t in (1, 2):
        s = ce.score(x, y, top_k=(1, 2, 5), n_threads=t)
        assert s == ce.score(x, y, top_k=(1, 2, 5), n_threads=3 - t)
    call = _kernels.Call(logits=x, target=y, reduction="sum")
    rank, argmax = np.empty(4, np.int64), np.empty(4, np.int64)
    _kernels.solve(call, row_argmax=argmax, row_rank=rank)
    assert list(argmax) == [int(np.argmax(r)) for r in x] and argmax[1] == 3 and argmax[3] == c - 1
    xy = x[np.arange(4), np.where(y < 0, 0, y)]
    expected = (x > xy[:, None]).sum(axis=1)
    assert rank[0] == 0 and rank[1] == 0 and rank[3] == expected[3] and rank[2] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_segments(dtype):
    c = MIN_C + 1
    x, y = wide(5, c, dtype, (c, 5))
    y[2] = 1
    x[0, :SEG] = -np.inf                  # a whole segment of -inf: weighs 0
    x[1, SEG + 3] = np.nan                # NaN in one segment: NaN row
    x[2, :] = -np.inf                     # all -inf: NaN
    x[3, 2 * SEG] = np.inf                # +inf in the last segment: NaN
    x[4, y[4]] = -np.inf                  # -inf target logit: +inf loss, finite gradient
    loss, grad = both_threads(
        lambda t: ce.cross_entropy_with_grad(x, y, reduction="none", n_threads=t))
    ref = ref_cross_entropy(x, y, reduction="none")
    assert np.isfinite(loss[0]) and np.isnan(loss[1:4]).all() and loss[4] == np.inf
    assert_close(loss[0], ref[0], dtype, "row with a -inf segment")
    assert np.all(grad[0, :SEG] == 0) and np.isfinite(grad[0]).all()
    assert np.isnan(grad[1]).all() and np.isnan(grad[3]).all()
    assert np.isfinite(grad[4]).all()
    assert_close(grad[[0, 4]], ref_grad(x, y, reduction="none")[[0, 4]], dtype, "grad")
    # logsumexp follows scipy: NaN row NaN, +inf row +inf, all -inf row -inf
    assert_close(ce.logsumexp(x), ref_logsumexp(x), dtype, "logsumexp")


@pytest.mark.parametrize("dtype", DTYPES)
def test_options_and_layouts(dtype):
    c = MIN_C + 1
    x, y = wide(3, c, dtype, (c, 6))
    rng = np.random.default_rng(7)
    kw = dict(weight=rng.random(c).astype(dtype) + 0.5, sample_weight=rng.random(3), z_loss=1e-3)
    loss, grad = both_threads(lambda t: ce.cross_entropy_with_grad(x, y, n_threads=t, **kw))
    assert_close(loss, ref_cross_entropy(x, y, **kw), dtype, "weighted loss")
    assert_close(grad, ref_grad(x, y, **kw), dtype, "weighted grad")
    # strided rows (a column slice), classes strided, class axis first, dense targets,
    # label smoothing: some take the split path, some whole rows; all must agree
    big = np.zeros((3, c + 17), dtype)
    big[:, 5:5 + c] = x
    stepped = np.zeros((3, 2 * c), dtype)
    stepped[:, ::2] = x
    dense = np.eye(c, dtype=dtype)[np.where(y < 0, 0, y)]
    cases = [(big[:, 5:5 + c], y, {}), (stepped[:, ::2], y, {}), (x.T, y, {"axis": 0}),
             (x, dense, {}), (x, y, {"label_smoothing": 0.1})]
    for xv, target, extra in cases:
        loss, grad = both_threads(
            lambda t: ce.cross_entropy_with_grad(xv, target, reduction="none", n_threads=t, **extra))
        assert_close(loss, ref_cross_entropy(xv, target, reduction="none", **extra), dtype, str(extra))
        assert_close(grad, ref_grad(xv, target, reduction="none", **extra), dtype, str(extra))


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_gradient(dtype):
    c = MIN_C + 1
    x, y = wide(2, c, dtype, (c, 8))
    expected = ce.cross_entropy_grad(x, y)
    buf = x.copy()
    ce.cross_entropy_with_grad(buf, y, out=buf, n_threads=2)   # the target logit is read first
    assert np.array_equal(buf, expected)
