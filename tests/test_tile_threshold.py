"""The class-major tile's class-count limits (read from the kernels), straddled.

Row-major rows of up to _thresholds()["CE_TILE_MAX_C"] classes (float32; float64:
"CE_TILE_MAX_C_F64") run the class-major tile in every mode; past them the row kernel runs. Both sides of each limit, both
dtypes, both target kinds, strided layouts, 1 and 2 threads.
"""
import numpy as np
import pytest

import ce
from ce import _kernels
from helpers import assert_close, both_threads, seed_of
from reference import ref_cross_entropy, ref_grad, ref_softmax

LIMITS = _kernels._thresholds()
EDGES = sorted({c for name in ("CE_TILE_MAX_C", "CE_TILE_MAX_C_F64")
                for c in (LIMITS[name] + d for d in (-1, 0, 1))})
ROWS = 700   # enough logits for the parallel path (and a partial last tile)


def problem(c, dtype, seed):
    rng = np.random.default_rng(seed_of(*seed))
    x = (rng.standard_normal((ROWS, c)) * 3).astype(dtype)
    y = rng.integers(0, c, ROWS)
    y[::9] = -100
    return x, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", EDGES)
@pytest.mark.parametrize("layout", ["contiguous", "row_slice", "class_stride"])
def test_index_targets(dtype, c, layout):
    x, y = problem(c, dtype, (c, layout))
    if layout == "row_slice":
        big = np.zeros((ROWS, c + 7), dtype)
        big[:, 3:3 + c] = x
        x = big[:, 3:3 + c]
    elif layout == "class_stride":
        big = np.zeros((ROWS, 2 * c), dtype)
        big[:, ::2] = x
        x = big[:, ::2]
    loss = both_threads(lambda t: ce.cross_entropy(x, y, reduction="none", n_threads=t))
    assert_close(loss, ref_cross_entropy(x, y, reduction="none"), dtype, "loss")
    total, grad = both_threads(lambda t: ce.cross_entropy_with_grad(x, y, n_threads=t))
    assert_close(total, ref_cross_entropy(x, y), dtype, "fused loss")
    assert_close(grad, ref_grad(x, y), dtype, "grad")
    s = both_threads(lambda t: (ce.score(x, y, top_k=(1, 3), n_threads=t).loss_sum,))
    assert_close(s[0], ref_cross_entropy(x, y, reduction="sum"), dtype, "score loss sum")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", EDGES)
def test_dense_targets_and_softmax(dtype, c):
    x, _ = problem(c, dtype, (c, "dense"))
    t = np.random.default_rng(c).random((ROWS, c)).astype(dtype)
    kw = dict(label_smoothing=0.05, z_loss=1e-3)
    loss, grad = both_threads(
        lambda n: ce.cross_entropy_with_grad(x, t, reduction="none", n_threads=n, **kw))
    assert_close(loss, ref_cross_entropy(x, t, reduction="none", **kw), dtype, "dense loss")
    assert_close(grad, ref_grad(x, t, reduction="none", **kw), dtype, "dense grad")
    assert_close(ce.softmax(x), ref_softmax(x), dtype, "softmax")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [2, 10] + EDGES + [64, 300])
@pytest.mark.parametrize("layout", ["contiguous", "class_stride"])
def test_softcap(dtype, c, layout):
    """The soft cap in the class-major tile (applied to the tile, chain rule before the
    tile is written back) and in the row kernel's gathered rows agree with the reference;
    a masked row's gradient stays exactly 0 next to NaN logits."""
    x, y = problem(c, dtype, (c, "softcap", layout))
    x[::5] *= 20   # past the cap, where tanh saturates
    x[1, 0] = np.nan
    y[1] = -100
    if layout == "class_stride":
        big = np.zeros((ROWS, 2 * c), dtype)
        big[:, ::2] = x
        x = big[:, ::2]
    ok = np.arange(ROWS) != 1
    kw = dict(softcap=15.0, label_smoothing=0.1)
    loss, grad = both_threads(
        lambda t: ce.cross_entropy_with_grad(x, y, reduction="none", n_threads=t, **kw))
    assert_close(loss[ok], ref_cross_entropy(x[ok], y[ok], reduction="none", **kw), dtype, "loss")
    assert loss[1] == 0 and np.all(grad[1] == 0)
    assert_close(grad[ok], ref_grad(x[ok], y[ok], reduction="none", **kw), dtype, "grad")
    forward = both_threads(lambda t: ce.cross_entropy(x, y, reduction="none", n_threads=t, **kw))
    assert_close(forward[ok], ref_cross_entropy(x[ok], y[ok], reduction="none", **kw), dtype, "forward")
    assert forward[1] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", EDGES)
def test_forward_and_fused_loss_same_bits(dtype, c):
    """One tile limit serves every mode, so the forward and the fused call run the same
    kernel on either side of it and their losses are the same bits."""
    x, y = problem(c, dtype, (c, "same bits"))
    t = np.random.default_rng(c).random((ROWS, c)).astype(dtype)
    for target in (y, t):
        loss = ce.cross_entropy(x, target, reduction="none")
        fused, _ = ce.cross_entropy_with_grad(x, target, reduction="none")
        assert np.array_equal(loss, fused)
