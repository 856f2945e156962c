"""Every SIMD build of the kernels this machine can run, at class counts around every
threshold where the kernels change strategy.

ce._kernels._set_simd picks the build (baseline / avx2 / avx512) the kernels run at, so an
AVX-512 machine tests all three. The thresholds are read from the compiled module
(ce._kernels._thresholds), so the class counts follow the code when it changes. Checked:
the float64 reference, the same bits for 1 and 2 threads, and agreement between the builds.
"""
import contextlib
import os

import numpy as np
import pytest

import ce
from ce import _kernels
from helpers import assert_close, seed_of
from reference import (ref_cross_entropy, ref_grad, ref_log_softmax, ref_logsumexp, ref_lse,
                       ref_softmax)

LEVELS = _kernels.simd_levels()
SIZES = _kernels._thresholds()
IGNORE = -100


def straddle(*values):
    """value - 1, value, value + 1 for each value (at least 1)."""
    return {v + d for v in values for d in (-1, 0, 1) if v + d >= 1}


def class_counts():
    """Class counts on both sides of every switch of the kernels: the vector widths in
    elements of 16/32/64-byte vectors of float32 and float64, the row kernel's steps of one, two
    and CE_ROW_VECTORS vectors (the exp pass: from CE_EXP_WIDE_MIN classes) and its flush every
    CE_ROW_VECTORS * CE_CHUNK elements, the
    class-major tile (CE_TILE_MAX_C, CE_TILE_MAX_C_F64; CE_TILE / CE_SMALL_ROWS,
    where a tile stops holding CE_SMALL_ROWS rows), the rows per block (BLOCK_ELEMENTS /
    CE_SMALL_ROWS, and BLOCK_ELEMENTS, above which a block is one row) and the float lane sums
    flushed every CE_CHUNK elements."""
    widths = [nbytes // item for nbytes in (16, 32, 64) for item in (4, 8)]
    lanes, steps = SIZES["CE_LANES"], SIZES["CE_ROW_VECTORS"]
    row_steps = [lanes // per * k for per in (1, 2) for k in (1, 2, steps)]   # float32, float64
    return sorted({1, 2, 3} | straddle(*widths, *row_steps, steps * SIZES["CE_CHUNK"],
                                       SIZES["CE_EXP_WIDE_MIN"],
                                       SIZES["CE_TILE_MAX_C"], SIZES["CE_TILE_MAX_C_F64"],
                                       SIZES["CE_TILE"] // SIZES["CE_SMALL_ROWS"],
                                       SIZES["BLOCK_ELEMENTS"] // SIZES["CE_SMALL_ROWS"],
                                       SIZES["CE_CHUNK"], SIZES["BLOCK_ELEMENTS"]))


CLASS_COUNTS = class_counts()


@contextlib.contextmanager
def simd(level):
    previous = _kernels._set_simd(level)
    try:
        yield
    finally:
        _kernels._set_simd(previous)


def rows_for(c):
    """Enough rows for a second (partial) tile and block when C is small; a few when wide."""
    return max(3, min(SIZES["CE_SMALL_ROWS"] + 7, 40000 // c))


def problem(c, dtype, seed):
    rng = np.random.default_rng(seed)
    n = rows_for(c)
    x = (rng.standard_normal((n, c)) * 3.0).astype(dtype)
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.2] = IGNORE
    t = rng.random((n, c))
    t /= t.sum(axis=1, keepdims=True)
    return x, y, t.astype(dtype)


def layouts(x, y, t):
    """(name, logits, labels, dense target, axis): class axis last (contiguous, every other
    class of a wider array, every other row) and the class axis not last (N, C, 3)."""
    n, c = x.shape
    wide = np.repeat(x, 2, axis=1)
    wide[:, 1::2] = 7.0   # never read
    tall = np.repeat(x, 2, axis=0)
    yield "contiguous", x, y, t, -1
    yield "class stride 2", wide[:, ::2], y, t, -1
    yield "row stride 2", tall[::2], y, np.repeat(t, 2, axis=0)[::2], -1
    k = 3
    x3 = np.ascontiguousarray(np.stack([x[i::k][: n // k] for i in range(k)], axis=-1))
    y3 = np.stack([y[i::k][: n // k] for i in range(k)], axis=-1)
    t3 = np.ascontiguousarray(np.stack([t[i::k][: n // k] for i in range(k)], axis=-1))
    if x3.shape[0]:
        yield "class axis 1 of (N, C, 3)", x3, y3, t3, 1


def check_against_reference(x, y, t, axis, dtype, what):
    """Every mode, index and dense targets, against the float64 reference."""
    def close(actual, expected, name):
        assert_close(actual, expected, dtype, f"{what}: {name}")

    close(ce.cross_entropy(x, y, axis=axis, reduction="none"),
          ref_cross_entropy(x, y, axis=axis, reduction="none"), "forward, index")
    close(ce.cross_entropy(x, t, axis=axis, reduction="none"),
          ref_cross_entropy(x, t, axis=axis, reduction="none"), "forward, dense")
    loss, grad, lse = ce.cross_entropy_with_grad(x, y, axis=axis, return_lse=True)
    close(loss, ref_cross_entropy(x, y, axis=axis), "fused loss, index")
    close(grad, ref_grad(x, y, axis=axis), "fused grad, index")
    close(lse, ref_lse(x, axis=axis), "fused lse")
    close(ce.cross_entropy_grad(x, y, axis=axis, lse=lse), ref_grad(x, y, axis=axis),
          "grad from lse, index")
    loss, grad = ce.cross_entropy_with_grad(x, t, axis=axis, reduction="sum")
    close(loss, ref_cross_entropy(x, t, axis=axis, reduction="sum"), "fused loss, dense")
    close(grad, ref_grad(x, t, axis=axis, reduction="sum"), "fused grad, dense")
    close(ce.cross_entropy_grad(x, t, axis=axis, lse=lse, reduction="sum"),
          ref_grad(x, t, axis=axis, reduction="sum"), "grad from lse, dense")
    c = x.shape[axis]
    w = np.linspace(0.5, 1.5, c).astype(dtype)
    options = dict(axis=axis, weight=w, label_smoothing=0.1)
    loss, grad = ce.cross_entropy_with_grad(x, y, **options)
    close(loss, ref_cross_entropy(x, y, **options), "fused loss, weight and smoothing")
    close(grad, ref_grad(x, y, **options), "fused grad, weight and smoothing")
    close(ce.softmax(x, axis=axis), ref_softmax(x, axis=axis), "softmax")
    close(ce.log_softmax(x, axis=axis), ref_log_softmax(x, axis=axis), "log_softmax")
    close(ce.logsumexp(x, axis=axis), ref_logsumexp(x, axis=axis), "logsumexp")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("c", CLASS_COUNTS)
def test_reference_at_every_threshold(level, dtype, c):
    x, y, t = problem(c, dtype, seed_of("reference", c, np.dtype(dtype).name))
    with simd(level):
        for name, xl, yl, tl, axis in layouts(x, y, t):
            check_against_reference(xl, yl, tl, axis, dtype, f"{level}, C={c}, {name}")


def outputs(x, y, t, axis, n_threads, saved_lse, every=True):
    """The kernel outputs of one problem, as arrays (for bitwise and ulp comparisons): one
    call per mode (every=False: the five that cover every kind of pass); the gradient from a
    saved lse gets `saved_lse`, the same for every build."""
    kw = dict(axis=axis, n_threads=n_threads)
    loss, grad, lse = ce.cross_entropy_with_grad(x, y, return_lse=True, **kw)
    dloss, dgrad = ce.cross_entropy_with_grad(x, t, reduction="none", **kw)
    out = {
        "forward": ce.cross_entropy(x, y, reduction="none", **kw),
        "fused loss": np.asarray(loss), "fused grad": grad, "lse": lse,
        "grad from lse": ce.cross_entropy_grad(x, y, lse=saved_lse, **kw),
        "dense loss": dloss, "dense grad": dgrad, "softmax": ce.softmax(x, axis=axis),
    }
    if every:
        out["mean"] = np.asarray(ce.cross_entropy(x, y, **kw))
        out["log_softmax"] = ce.log_softmax(x, axis=axis)
    return out


def threaded_problem(c, dtype, seed):
    """At least two blocks and enough logits for the parallel path, with the class axis last
    and not last."""
    rng = np.random.default_rng(seed)
    n = max(2, -(-(SIZES["PARALLEL_MIN_ELEMENTS"] + 1) // c))
    x = (rng.standard_normal((n, c)) * 3.0).astype(dtype)
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.2] = IGNORE
    t = rng.random((n, c)).astype(dtype)
    yield "rows", x, y, t, -1
    x3 = np.ascontiguousarray(x[: n - n % 2].reshape(-1, 2, c).transpose(0, 2, 1))
    t3 = np.ascontiguousarray(t[: n - n % 2].reshape(-1, 2, c).transpose(0, 2, 1))
    yield "class axis 1", x3, y[: n - n % 2].reshape(-1, 2), t3, 1


# few rows, many classes: rows fewer than threads (the classes may be split across threads)
WIDE = [(1, 2 * SIZES["PARALLEL_MIN_ELEMENTS"] + 1), (3, SIZES["PARALLEL_MIN_ELEMENTS"] - 1)]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_same_bits_for_any_thread_count(level, dtype):
    with simd(level):
        for c in CLASS_COUNTS:
            for name, x, y, t, axis in threaded_problem(c, dtype, seed_of("threads", c)):
                lse = ref_lse(x, axis=axis)
                one = outputs(x, y, t, axis, 1, lse, every=False)
                two = outputs(x, y, t, axis, 2, lse, every=False)
                for key in one:
                    np.testing.assert_array_equal(one[key], two[key],
                                                  err_msg=f"{level}, C={c}, {name}: {key}")
        for n, c in WIDE:
            rng = np.random.default_rng(seed_of("wide", n, c))
            x = rng.standard_normal((n, c)).astype(dtype)
            y = rng.integers(0, c, n)
            t = rng.random((n, c)).astype(dtype)
            lse = ref_lse(x)
            one, two = outputs(x, y, t, -1, 1, lse), outputs(x, y, t, -1, 2, lse)
            for key in one:
                np.testing.assert_array_equal(one[key], two[key], err_msg=f"{level}, {n} x {c}: {key}")


def within_ulps(a, b, dtype, ulps, scale=None):
    """|a - b| at most `ulps` units of the dtype's eps times max(|b|, scale, tiny)."""
    info = np.finfo(dtype)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mag = np.abs(b) if scale is None else np.maximum(np.abs(b), scale)
    bound = ulps * float(info.eps) * np.maximum(mag, float(info.tiny))
    return np.abs(a - b) <= bound


@pytest.mark.skipif(len(LEVELS) < 2, reason="this CPU / build has one SIMD level")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_levels_agree_within_a_few_ulp(dtype):
    """The builds differ only in FMA contraction and in the order of vector reductions."""
    for c in CLASS_COUNTS:
        x, y, t = problem(c, dtype, seed_of("agree", c))
        results, lse = {}, ref_lse(x)
        for level in LEVELS:
            with simd(level):
                results[level] = outputs(x, y, t, -1, 1, lse)
        base = results[LEVELS[0]]
        lse = np.abs(base["lse"]) + np.abs(x).max(axis=1)
        # losses and log-probabilities are differences of terms of the size of the lse and
        # the row's largest logit; a
        # dense gradient entry p * coef - t is one of terms of the size of its row's largest
        scales = {"forward": lse, "lse": lse, "dense loss": lse, "log_softmax": lse[:, None],
                  "dense grad": np.abs(base["dense grad"]).max(axis=1, keepdims=True)}
        for level in LEVELS[1:]:
            for key, value in results[level].items():
                ok = within_ulps(value, base[key], dtype, 8, scales.get(key))
                assert ok.all(), (f"C={c}, {level} vs {LEVELS[0]}: {key} differs by up to "
                                  f"{np.max(np.abs(value - base[key]))}")


def test_set_simd_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="unknown SIMD level"):
        _kernels._set_simd("sse9")
    missing = [name for name in ("baseline", "avx2", "avx512") if name not in LEVELS]
    for name in missing:
        with pytest.raises(RuntimeError, match="not available"):
            _kernels._set_simd(name)
    if os.environ.get("CE_SIMD", "auto") not in ("", "auto"):
        pytest.skip("CE_SIMD chose the level of this process")
    automatic = ce.show_config(print_out=False)["simd"]
    assert "set by" not in automatic
    with simd(LEVELS[0]):
        assert "set by" in ce.show_config(print_out=False)["simd"]
        assert _kernels._set_simd(LEVELS[-1]) == LEVELS[0]
    assert ce.show_config(print_out=False)["simd"] == automatic   # restored: the automatic choice
    assert _kernels._set_simd(None) is None




@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_tile_transposes_same_bits_as_copy(level, dtype):
    """Contiguous rows enter and leave the class-major tile through register transposes
    (whole groups of a vector's lane count of rows, the rest copied), class-strided rows
    through the element copy: the same tile, so the same bits, at every class count the
    tile takes and row counts around the group size."""
    limit = SIZES["CE_TILE_MAX_C_F64" if dtype == np.float64 else "CE_TILE_MAX_C"]
    rng = np.random.default_rng(seed_of("transposes", level, dtype))
    with simd(level):
        for c in range(2, limit + 1):
            for n in (1, 7, 15, 16, 17, 40):
                x = (rng.standard_normal((n, c)) * 4).astype(dtype)
                y = rng.integers(0, c, n)
                t = rng.random((n, c)).astype(dtype)
                strided = np.zeros((n, 2 * c), dtype)[:, ::2]
                strided[...] = x
                pairs = [(ce.cross_entropy(v, y, reduction="none"),
                          ce.cross_entropy(v, t, reduction="none"),
                          *ce.cross_entropy_with_grad(v, y, reduction="none"),
                          *ce.cross_entropy_with_grad(v, t, reduction="none"),
                          ce.softmax(v), ce.log_softmax(v)) for v in (x, strided)]
                for a, b in zip(*pairs):
                    assert np.array_equal(a, b), (level, c, n)
                assert_close(pairs[0][0], ref_cross_entropy(x, y, reduction="none"), dtype,
                             f"loss c={c} n={n}")
                assert_close(pairs[0][3], ref_grad(x, y, reduction="none"), dtype,
                             f"grad c={c} n={n}")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_first_argmax_at_every_width(level, dtype):
    """ce.score's top-1 is the first index holding the row's max: a max that appears twice
    counts as correct only at its first position, wherever the two copies fall relative to
    the vector steps (the last step overlaps the one before)."""
    rng = np.random.default_rng(seed_of("argmax", level, dtype))
    with simd(level):
        for c in sorted(straddle(16, 32, 64, 128) | {2, 5, 100, 1000, 4099}):
            n = 64
            x = rng.standard_normal((n, c)).astype(dtype)
            first = rng.integers(0, c, n)
            second = np.minimum(first + rng.integers(1, c + 1, n), c - 1)
            rows = np.arange(n)
            x[rows, first] = x[rows, second] = 10.0
            y = np.where(rows % 2 == 0, first, second)
            s = ce.score(x, y)
            expected = int(np.sum((y == first) | (first == second)))
            assert s.correct == expected, (level, c)
            assert np.array_equal(np.argmax(x, axis=1), first)
