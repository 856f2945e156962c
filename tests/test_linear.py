"""ce.linear_cross_entropy, ce.linear_cross_entropy_with_grad and ce.linear_score:
against the float64 reference of the materialised logits, finite differences,
chunkings, empty and all-ignored batches, memory, bad input, determinism."""
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import ce
import ce._linear
from helpers import assert_close, finite_difference, random_dense_target, seed_of
from reference import ref_cross_entropy, ref_linear

N, D, V = 37, 6, 11

OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": "w"},
    {"sample_weight": "sw", "reduction": "sum"},
    {"ignore_index": 3},
    {"label_smoothing": 0.2, "weight": "w"},
    {"z_loss": 1e-2},
    {"softcap": 2.0},
    {"bias": True},
    {"dense": True},
    {"dense": True, "label_smoothing": 0.1, "sample_weight": "sw"},
    {"bias": True, "weight": "w", "ignore_index": 0, "label_smoothing": 0.1, "z_loss": 1e-3,
     "softcap": 5.0, "sample_weight": "sw"},
]


def make(options, dtype, n=N, d=D, v=V, batch=None, seed=0):
    rng = np.random.default_rng(seed_of("linear", repr(options), str(dtype), n, d, v, seed))
    shape = batch if batch is not None else (n,)
    h = rng.standard_normal(shape + (d,)).astype(dtype)
    w = (rng.standard_normal((v, d)) * 0.7).astype(dtype)
    kw = {k: val for k, val in options.items() if k not in ("bias", "dense")}
    if options.get("bias"):
        kw["linear_bias"] = rng.standard_normal(v).astype(dtype)
    if kw.get("weight") == "w":
        kw["weight"] = rng.random(v) + 0.5
    if kw.get("sample_weight") == "sw":
        kw["sample_weight"] = rng.random(shape)
    if options.get("dense"):
        y = random_dense_target(rng, shape + (v,), -1, "probs")
    else:
        y = rng.integers(0, v, shape)
        if "ignore_index" in kw:
            y[rng.random(shape) < 0.3] = kw["ignore_index"]
            y.reshape(-1)[0] = (kw["ignore_index"] + 1) % v  # never all ignored
        else:
            y.reshape(-1)[::5] = -100
    return h, w, y, kw


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("options", OPTIONS, ids=repr)
@pytest.mark.parametrize("chunk_rows", [1, 7, None])
def test_matches_reference(options, dtype, chunk_rows):
    h, w, y, kw = make(options, dtype)
    rl, rgh, rgw, rgb = ref_linear(h, w, y, **kw)
    loss = ce.linear_cross_entropy(h, w, y, chunk_rows=chunk_rows, **kw)
    factor = 1.0 if dtype == np.float64 else 10.0  # float32 products of D terms
    assert np.asarray(loss).dtype == dtype
    assert_close(loss, rl, dtype, "loss", factor)
    l2, gh, gw, gb = ce.linear_cross_entropy_with_grad(h, w, y, chunk_rows=chunk_rows, **kw)
    assert_close(l2, rl, dtype, "loss with grad", factor)
    assert gh.shape == h.shape and gh.dtype == dtype
    assert gw.shape == w.shape and gw.dtype == dtype
    assert_close(gh, rgh, dtype, "grad_hidden", factor)
    assert_close(gw, rgw, dtype, "grad_linear_weight", factor)
    if rgb is None:
        assert gb is None
    else:
        assert gb.shape == (V,) and gb.dtype == dtype
        assert_close(gb, rgb, dtype, "grad_linear_bias", factor)


@pytest.mark.parametrize("options", [{}, {"reduction": "none"}, OPTIONS[-1], OPTIONS[-2]], ids=repr)
def test_finite_differences(options):
    """All three gradients against central differences of ce's own float64 loss."""
    h, w, y, kw = make(options, np.float64, n=5, d=3, v=4)
    go = 1.0
    if kw.get("reduction") == "none":
        go = np.linspace(0.5, 1.5, 5)
    bias = kw.pop("linear_bias", None)

    def loss(hh, ww, bb):
        value = ce.linear_cross_entropy(hh, ww, y, linear_bias=bb, chunk_rows=2, **kw)
        return float(np.sum(np.asarray(value) * go))

    _, gh, gw, gb = ce.linear_cross_entropy_with_grad(h, w, y, linear_bias=bias, chunk_rows=2,
                                                      grad_output=go, **kw)
    np.testing.assert_allclose(gh, finite_difference(lambda x: loss(x, w, bias), h), atol=1e-7)
    np.testing.assert_allclose(gw, finite_difference(lambda x: loss(h, x, bias), w), atol=1e-7)
    if bias is not None:
        np.testing.assert_allclose(gb, finite_difference(lambda x: loss(h, w, x), bias), atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chunkings_agree(reduction):
    """1, 7, N and more than N rows per chunk (37 is no multiple of 7): the same up
    to float64 rounding of the chunk sums; per-row results and gradients identical."""
    h, w, y, kw = make({"reduction": reduction, "bias": True}, np.float64)
    results = [ce.linear_cross_entropy_with_grad(h, w, y, chunk_rows=c, **kw)
               for c in (1, 7, N, N + 5, None)]
    for loss, gh, gw, gb in results[1:]:
        np.testing.assert_allclose(loss, results[0][0], rtol=1e-13)
        np.testing.assert_allclose(gh, results[0][1], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gw, results[0][2], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gb, results[0][3], rtol=1e-12, atol=1e-15)


def test_batched_and_single_example():
    h, w, y, kw = make({"bias": True}, np.float64, batch=(3, 4))
    rl, rgh, _, _ = ref_linear(h, w, y, **kw)
    loss, gh, _, _ = ce.linear_cross_entropy_with_grad(h, w, y, chunk_rows=5, **kw)
    assert_close(loss, rl, np.float64)
    assert gh.shape == (3, 4, D)
    assert_close(gh, rgh, np.float64)
    none = ce.linear_cross_entropy(h, w, y, reduction="none", chunk_rows=5, **kw)
    assert none.shape == (3, 4)
    one = ce.linear_cross_entropy(h[0, 0], w, y[0, 0], reduction="none", **kw)
    assert np.shape(one) == ()
    assert_close(one, ref_cross_entropy(h[0, 0] @ w.T + kw["linear_bias"], y[0, 0],
                                        reduction="none"), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch(dtype):
    h, w = np.zeros((0, D), dtype), np.ones((V, D), dtype)
    y = np.zeros(0, dtype=np.int64)
    assert np.isnan(ce.linear_cross_entropy(h, w, y))
    assert ce.linear_cross_entropy(h, w, y, reduction="sum") == 0
    assert ce.linear_cross_entropy(h, w, y, reduction="none").shape == (0,)
    loss, gh, gw, gb = ce.linear_cross_entropy_with_grad(h, w, y, linear_bias=np.ones(V, dtype))
    assert np.isnan(loss) and gh.shape == (0, D)
    assert not gw.any() and not gb.any() and gw.dtype == dtype


def test_all_ignored():
    h, w, _, _ = make({}, np.float32)
    y = np.full(N, -100)
    assert np.isnan(ce.linear_cross_entropy(h, w, y, chunk_rows=4))
    loss, gh, gw, gb = ce.linear_cross_entropy_with_grad(h, w, y, linear_bias=np.ones(V, np.float32),
                                                         chunk_rows=4)
    assert np.isnan(loss)
    assert not gh.any() and not gw.any() and not gb.any()
    s = ce.linear_score(h, w, y)
    assert s.count == 0 and s.rows == N and np.isnan(s.mean_loss)


def test_float16_hidden():
    h, w, y, kw = make({"bias": True}, np.float16)
    rl, rgh, rgw, _ = ref_linear(h, w, y, **kw)
    loss, gh, gw, gb = ce.linear_cross_entropy_with_grad(h, w, y, chunk_rows=8, **kw)
    assert np.asarray(loss).dtype == np.float16 and gh.dtype == gw.dtype == gb.dtype == np.float16
    assert_close(loss, rl, np.float16)
    assert_close(gw, rgw, np.float16)


def test_linear_score_matches_score():
    h, w, y, kw = make({"bias": True, "sample_weight": "sw"}, np.float64, n=200, v=30)
    logits = h @ w.T + kw["linear_bias"]
    want = ce.score(logits, y, sample_weight=kw["sample_weight"], top_k=(1, 3, 5))
    for chunk in (1, 7, None):
        got = ce.linear_score(h, w, y, linear_bias=kw["linear_bias"],
                              sample_weight=kw["sample_weight"], top_k=(1, 3, 5), chunk_rows=chunk)
        assert (got.count, got.rows) == (want.count, want.rows)
        assert got.correct == want.correct and got.top_k_correct == want.top_k_correct
        np.testing.assert_allclose(got.loss_sum, want.loss_sum, rtol=1e-13)
        assert got.weight_sum == want.weight_sum
    with pytest.raises(TypeError, match="class indices"):
        ce.linear_score(h, w, random_dense_target(np.random.default_rng(0), (200, 30), -1, "probs"))


# ---- memory: one chunk of logits, never N x V ----

def traced_peak(fn):
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del out
    return peak


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_memory_is_one_chunk(grad, reduction):
    n, d, v, chunk = 4096, 8, 2048, 64
    rng = np.random.default_rng(1)
    h = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((v, d), dtype=np.float32)
    y = rng.integers(0, v, n)
    fn = ce.linear_cross_entropy_with_grad if grad else ce.linear_cross_entropy
    peak = traced_peak(lambda: fn(h, w, y, chunk_rows=chunk, reduction=reduction,
                                  linear_bias=np.zeros(v, np.float32)))
    grads = (h.nbytes + w.nbytes + 8 * v) if grad else 0
    bound = 4 * chunk * v + grads + 40 * n + (1 << 16)  # a chunk, the gradients, O(N)
    assert peak <= bound, (peak, bound)
    assert peak < 4 * n * v / 8  # far from the full logits


def test_default_chunk_rule():
    rule = ce._linear.default_chunk_rows
    budget = ce._linear.LOGITS_BUDGET
    assert rule(10**6, 512, 32000, 4) == budget // (32000 * 4)
    assert rule(10, 512, 32000, 4) == 10
    assert rule(10**6, 4096, 10**7, 4) == ce._linear.MIN_CHUNK_ROWS
    assert rule(10**6, 16, 10**7, 4) == 16  # at most the weight's size
    h, w, y, _ = make({}, np.float32)
    assert ce._linear._Linear(h, w, y, linear_bias=None, chunk_rows=None).chunk_rows == N


# ---- bad input: raised before any chunk runs or N x V is allocated ----

BIG_N, BIG_V = 2048, 4096


@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(2)
    return (rng.standard_normal((BIG_N, 4), dtype=np.float32),
            rng.standard_normal((BIG_V, 4), dtype=np.float32), rng.integers(0, BIG_V, BIG_N))


def bad_cases(h, w, y):
    bad_y = y.copy()
    bad_y[BIG_N - 3] = BIG_V
    return [
        ((h[:, :3], w, y), {}, ValueError, "features"),
        ((h, w, y), {"weight": np.ones(BIG_V - 1)}, ValueError, "weight must have shape"),
        ((h, w.astype(np.float64), y), {}, TypeError, "same dtype"),
        ((h.astype(np.int32), w.astype(np.int32), y), {}, TypeError, "hidden must be a float"),
        ((h, w, bad_y), {}, ValueError, rf"label {BIG_V} at position \({BIG_N - 3},\)"),
        ((h, w, y), {"linear_bias": np.ones(BIG_V + 1, np.float32)}, ValueError, "linear_bias"),
        ((h, w, y), {"linear_bias": np.ones((1, BIG_V), np.float32)}, ValueError, "linear_bias"),
        ((h, w, y), {"chunk_rows": 0}, ValueError, "chunk_rows"),
        ((h, w, y), {"chunk_rows": -3}, ValueError, "chunk_rows"),
        ((h, w, y), {"chunk_rows": 2.0}, TypeError, "chunk_rows"),
        ((h, w, y), {"chunk_rows": True}, TypeError, "chunk_rows"),
        ((h, w[:, :, None], y), {}, ValueError, "linear_weight must have shape"),
        ((h, w[:0], y), {}, ValueError, "no classes"),
        ((h, w, y[:-1]), {}, ValueError, "target must have shape"),
        ((h, w, y), {"label_smoothing": 2.0}, ValueError, "label_smoothing"),
        ((h, w, y), {"reduction": "avg"}, ValueError, "reduction"),
        ((h, w, y.astype(np.float32)), {}, TypeError, "integer"),
    ]


@pytest.mark.parametrize("case", range(17))
@pytest.mark.parametrize("fn", ["linear_cross_entropy", "linear_cross_entropy_with_grad",
                                "linear_score"])
def test_bad_input_raises_before_work(big, case, fn, monkeypatch):
    args, kw, exc, match = bad_cases(*big)[case]
    if fn == "linear_score":
        kw = {k: v for k, v in kw.items() if k in ("linear_bias", "chunk_rows")}
        if not kw and case in (1, 14, 15):  # options linear_score does not take
            pytest.skip("not an option of linear_score")
    calls = []
    monkeypatch.setattr(ce._linear._kernels, "solve", lambda *a, **k: calls.append(1))
    def call():
        with pytest.raises(exc, match=match):
            getattr(ce, fn)(*args, **kw)

    peak = traced_peak(call)
    assert not calls, "a chunk ran before the error"
    assert peak < 4 * BIG_N * BIG_V / 16, peak


def test_interrupt_leaves_nothing_partial(monkeypatch):
    """Ctrl-C in the middle: the exception propagates, nothing is returned, and
    the inputs are untouched (the gradients only ever lived in new arrays)."""
    h, w, y, kw = make({"bias": True}, np.float32)
    before = (h.copy(), w.copy(), kw["linear_bias"].copy())
    real = ce._linear._kernels.solve
    count = [0]

    def interrupted(*args, **kwargs):
        count[0] += 1
        if count[0] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ce._linear._kernels, "solve", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ce.linear_cross_entropy_with_grad(h, w, y, chunk_rows=4, **kw)
    assert count[0] == 3
    for a, b in zip((h, w, kw["linear_bias"]), before):
        np.testing.assert_array_equal(a, b)


# ---- determinism ----

@pytest.mark.parametrize("blas_threads", [1, 2])
def test_bitwise_same_for_any_thread_count(blas_threads):
    """ce's threads (n_threads) never change a bit at a fixed chunk size. BLAS's
    own thread count can (OpenBLAS's G @ W differs in the last bits between 1 and
    2 threads on this kind of machine), so it is held fixed here."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(3)
    h = rng.standard_normal((300, 64), dtype=np.float32)
    w = rng.standard_normal((5000, 64), dtype=np.float32) * 0.1
    y = rng.integers(0, 5000, 300)
    results = []
    with threadpoolctl.threadpool_limits(blas_threads, user_api="blas"):
        for ce_threads in (1, 2, 1, 2):
            results.append(ce.linear_cross_entropy_with_grad(
                h, w, y, linear_bias=np.zeros(5000, np.float32), chunk_rows=96,
                n_threads=ce_threads, label_smoothing=0.1, reduction="sum"))
            results.append((ce.linear_cross_entropy(h, w, y, chunk_rows=96, n_threads=ce_threads),))
    for other in results[2::2]:
        for a, b in zip(results[0], other):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for other in results[3::2]:
        assert np.asarray(results[1][0]).tobytes() == np.asarray(other[0]).tobytes()


def test_bfloat16_bias():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf = ml_dtypes.bfloat16
    rng = np.random.default_rng(3)
    h, w = rng.standard_normal((5, 6)).astype(bf), rng.standard_normal((9, 6)).astype(bf)
    b, y = rng.standard_normal(9).astype(bf), rng.integers(0, 9, 5)
    got = ce.linear_cross_entropy(h, w, y, linear_bias=b)
    logits = h.astype(np.float32) @ w.astype(np.float32).T + b.astype(np.float32)
    assert got.dtype == np.dtype(bf)
    assert abs(float(got) - float(ce.cross_entropy(logits, y))) <= 2 ** -7 * abs(float(got))


def test_scipy_is_imported_by_the_first_gradient_call_not_by_import_ce():
    """scipy.linalg takes about 0.3 s to import: ce loads it only when a linear gradient needs it."""
    pytest.importorskip("scipy")
    code = ("import sys, numpy as np, ce\n"
            "assert not any(m.startswith('scipy') for m in sys.modules), 'import ce imported scipy'\n"
            "h, w = np.ones((3, 2), np.float32), np.ones((4, 2), np.float32)\n"
            "ce.linear_cross_entropy_with_grad(h, w, np.array([0, 1, 3]))\n"
            "assert 'scipy.linalg' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
