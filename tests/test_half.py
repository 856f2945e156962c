"""float16 and bfloat16 logits, read and written by the kernels directly.

Against the float64 reference computed from the half-precision values: the row loss within
the float32-accumulation error the README states, gradients / softmax / log_softmax within
1 ulp of the half dtype. Also: bitwise what float32 computation rounded to nearest even gives
(the kernels run the float32 code on a converted tile), the portable conversions equal to
F16C, zero-copy torch views, CLI files, and dtype errors.
"""
import subprocess
import sys

import numpy as np
import pytest

import ce
from ce import _kernels
from reference import (ref_cross_entropy, ref_grad, ref_log_softmax, ref_logsumexp,
                       ref_sequence_score, ref_softmax)

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALVES = [F16, BF16]
RNG = np.random.default_rng(1602)

# the README's float32-accumulation bound on a row loss (float32 and half-precision logits)
LOSS_ABS, LOSS_REL = 2e-6, 1e-6


@pytest.fixture(params=["f16c", "portable"])
def conversions(request):
    """Run a test with the F16C conversions (where the CPU has them) and the portable ones."""
    _kernels._set_half_portable(request.param == "portable")
    yield request.param
    _kernels._set_half_portable(False)


def ulp(ref, dt):
    """The spacing of dt's values at |ref| (subnormal spacing below the normal range)."""
    mant, emin = (10, -14) if dt == F16 else (7, -126)
    a = np.abs(np.asarray(ref, dtype=np.float64))
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    e = np.maximum(np.where(a > 0, e, emin), emin)
    return 2.0 ** (e - mant)


def assert_within_ulp(got, ref, dt, n_ulp=1.0, slack=0.0):
    assert got.dtype == dt
    g = got.astype(np.float64)
    ok = (np.abs(g - ref) <= n_ulp * ulp(ref, dt) + slack) | (g == ref)
    if dt == BF16:  # the float32 kernel flushes values below FLT_MIN to zero
        ok |= (np.abs(ref) < np.finfo(np.float32).tiny) & (g == 0)
    assert ok.all(), (g[~ok][:5], ref[~ok][:5])


def half_logits(shape, dt, scale=3.0):
    return (RNG.standard_normal(shape) * scale).astype(dt)


SHAPES = [(300, 3), (200, 10), (150, 16), (120, 17), (64, 100), (16, 1000), (3, 5000)]


@pytest.mark.parametrize("dt", HALVES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_and_grad_against_reference(dt, shape, conversions):
    x = half_logits(shape, dt)
    y = RNG.integers(0, shape[1], shape[0])
    y[::7] = -100
    x64 = x.astype(np.float64)
    rows = ce.cross_entropy(x, y, reduction="none")
    assert rows.dtype == dt
    ref_rows = ref_cross_entropy(x64, y, reduction="none")
    # the kernel's float64 row values, before rounding to dt: through score's per-row sums
    s = ce.score(x, y)
    assert abs(s.loss_sum - ref_rows.sum()) <= LOSS_ABS * len(y) + LOSS_REL * abs(ref_rows.sum())
    assert_within_ulp(rows, ref_rows, dt)
    loss, g = ce.cross_entropy_with_grad(x, y)
    assert loss.dtype == dt and g.dtype == dt
    ref_g = ref_grad(x64, y)
    assert_within_ulp(g, ref_g, dt)
    assert_within_ulp(ce.cross_entropy_grad(x, y), ref_g, dt)
    # bitwise: the float32 computation on the same values, rounded to nearest even
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(g.view(np.uint16),
                                  ce.cross_entropy_grad(x32, y).astype(dt).view(np.uint16))


@pytest.mark.parametrize("dt", HALVES, ids=str)
@pytest.mark.parametrize("shape", [(200, 10), (40, 333), (2, 20000)])
def test_row_loss_float32_accumulation_bound(dt, shape):
    x = half_logits(shape, dt, scale=8.0)
    y = RNG.integers(0, shape[1], shape[0])
    row = np.empty(shape[0])
    _kernels.solve(_kernels.Call(logits=x, target=y, reduction="none"), row_loss=row)
    ref = ref_cross_entropy(x.astype(np.float64), y, reduction="none")
    assert np.all(np.abs(row - ref) <= LOSS_ABS + LOSS_REL * np.abs(ref))


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_target_free_functions(dt, conversions):
    x = half_logits((50, 70), dt, scale=6.0)
    x64 = x.astype(np.float64)
    assert_within_ulp(ce.softmax(x), ref_softmax(x64), dt)
    # x - lse is formed in float32: near 0 it carries float32's absolute error at |lse|
    lse = ref_logsumexp(x64)[:, None]
    assert_within_ulp(ce.log_softmax(x), ref_log_softmax(x64), dt,
                      slack=2 * 2.0**-24 * np.maximum(np.abs(lse), np.abs(x64)))
    assert_within_ulp(ce.logsumexp(x), ref_logsumexp(x64), dt)
    # softmax values deep in the subnormal range of float16
    z = np.zeros((40, 2), dtype=dt)
    z[:, 1] = -np.linspace(8, 18, 40).astype(dt)
    assert_within_ulp(ce.softmax(z), ref_softmax(z.astype(np.float64)), dt)
    x32 = z.astype(np.float32)
    np.testing.assert_array_equal(ce.softmax(z).view(np.uint16),
                                  ce.softmax(x32).astype(dt).view(np.uint16))


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_every_half_value_is_read_exactly(dt, conversions):
    bits = np.arange(65536, dtype=np.uint16)
    x = bits.view(dt).reshape(-1, 1)
    finite = np.isfinite(x.astype(np.float32))[:, 0] & (bits != 0x8000)  # -0: lse is +0
    if dt == BF16:  # below FLT_MIN: read exactly, but the float32 kernel treats them as 0 (DAZ)
        tiny = np.abs(x.astype(np.float32))[:, 0] < np.finfo(np.float32).tiny
        assert (ce.logsumexp(x)[tiny & finite].astype(np.float32) == 0).all()
        finite &= ~tiny
    lse = ce.logsumexp(x)                    # one class: lse is the value itself
    np.testing.assert_array_equal(lse[finite].view(np.uint16), bits[finite])
    assert np.isnan(lse[np.isnan(x.astype(np.float32))[:, 0]].astype(np.float32)).all()


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_layouts_weights_dense_options(dt, conversions):
    x = half_logits((6, 13, 5), dt)          # class axis 1, not last
    y = RNG.integers(0, 13, (6, 5))
    w = RNG.random(13) + 0.5
    sw = RNG.random((6, 5))
    kw = dict(axis=1, weight=w, sample_weight=sw, label_smoothing=0.1, z_loss=1e-3, softcap=4.0)
    loss, g = ce.cross_entropy_with_grad(x, y, **kw)
    x64 = x.astype(np.float64)
    ref_l = ref_cross_entropy(x64, y, **kw)
    assert abs(float(loss) - ref_l) <= 2 * ulp(ref_l, dt)
    assert_within_ulp(g, ref_grad(x64, y, **kw), dt)
    # dense probability targets in the logits' dtype, Fortran order, in place
    t = RNG.random((40, 9))
    t = (t / t.sum(axis=1, keepdims=True)).astype(dt)
    xf = np.asfortranarray(half_logits((40, 9), dt))
    ref_g = ref_grad(xf.astype(np.float64), t.astype(np.float64))
    assert_within_ulp(ce.cross_entropy_grad(xf, t), ref_g, dt)
    inplace = xf.copy()
    out = ce.cross_entropy_grad(inplace, t, out=inplace)
    assert out is inplace
    assert_within_ulp(inplace, ref_g, dt)
    # probabilities in: eps is the half dtype's
    p = np.full((4, 3), 1 / 3).astype(dt)
    p[0] = [1, 0, 0]
    yl = np.array([1, 0, 2, 1])
    eps = 2.0 ** -10 if dt == F16 else 2.0 ** -7
    ref_p = ref_cross_entropy(p.astype(np.float64), yl, from_logits=False, reduction="none",
                              )
    got = ce.cross_entropy(p, yl, from_logits=False, reduction="none")
    assert got[0] == np.asarray(-np.log(eps), dtype=dt)
    assert_within_ulp(got[1:], ref_p[1:], dt)


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_score_and_sequence_score(dt):
    x = half_logits((4, 30, 50), dt)
    y = RNG.integers(0, 50, (4, 30))
    y[:, :10] = -100
    s = ce.sequence_score(x, y)
    lp, count, greedy = ref_sequence_score(x.astype(np.float64), y)
    np.testing.assert_allclose(s.logprob, lp, rtol=0, atol=LOSS_ABS * 30 + LOSS_REL * np.abs(lp).max())
    np.testing.assert_array_equal(s.count, count)
    np.testing.assert_array_equal(s.greedy, greedy)
    sc = ce.score(x.reshape(-1, 50), y.reshape(-1), top_k=(1, 3))
    s32 = ce.score(x.astype(np.float32).reshape(-1, 50), y.reshape(-1), top_k=(1, 3))
    assert sc == s32   # the same float32 computation, exact sums: the same bits


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_no_float32_copy_of_the_logits(dt):
    import tracemalloc

    x = half_logits((4096, 256), dt)
    y = RNG.integers(0, 256, 4096)
    ce.cross_entropy(x, y)
    tracemalloc.start()
    ce.cross_entropy(x, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < x.nbytes // 4   # a float32 copy would be 2 * x.nbytes


def test_dtype_errors():
    for bad in (np.zeros((3, 4), dtype="V2"), np.zeros((3, 4), dtype=[("a", "<i2")]),
                np.zeros((3, 4), dtype=np.int16)):
        with pytest.raises(TypeError, match=str(bad.dtype).replace("[", r"\[").replace("(", r"\(")
                           .replace(")", r"\)")):
            ce.cross_entropy(bad, np.zeros(3, dtype=np.int64))
        with pytest.raises(TypeError, match="logits"):
            ce.sequence_score(bad, np.zeros(3, dtype=np.int64))
        with pytest.raises(TypeError, match="x"):
            ce.softmax(bad)
    x = half_logits((3, 4), BF16)
    with pytest.raises(TypeError, match="dtype"):
        ce.cross_entropy_grad(x, [0, 1, 2], out=np.empty((3, 4), dtype=F16))
    with pytest.raises(TypeError, match="dtype"):
        ce.cross_entropy_grad(x, [0, 1, 2], out=np.empty((3, 4), dtype="V2"))


def test_works_without_ml_dtypes():
    code = ("import sys; sys.modules['ml_dtypes'] = None\n"
            "import numpy as np, ce\n"
            "x = np.random.default_rng(0).standard_normal((20, 7)).astype(np.float16)\n"
            "l, g = ce.cross_entropy_with_grad(x, np.arange(20) % 7)\n"
            "assert l.dtype == np.float16 and g.dtype == np.float16\n"
            "import torch, ce.torch\n"
            "xb = torch.randn(8, 5, dtype=torch.bfloat16, requires_grad=True)\n"
            "ce.torch.cross_entropy(xb, torch.arange(8) % 5).backward()\n"
            "assert xb.grad.dtype == torch.bfloat16\n"
            "print('ok')\n")
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("tdt", ["float16", "bfloat16"])
def test_torch_zero_copy_and_peer(tdt):
    torch = pytest.importorskip("torch")
    import ce.torch as ct
    from ce.torch import _np

    dt = getattr(torch, tdt)
    x = (torch.randn(64, 300) * 3).to(dt)
    a = _np(x)
    assert a.dtype == (F16 if tdt == "float16" else BF16)
    assert a.__array_interface__["data"][0] == x.data_ptr()
    y = torch.randint(0, 300, (64,))
    xa = x.clone().requires_grad_()
    loss = ct.cross_entropy(xa, y)
    loss.backward()
    assert loss.dtype == dt and xa.grad.dtype == dt
    x64 = x.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(x64, y)
    ref.backward()
    assert abs(loss.double().item() - ref.item()) <= ulp(ref.item(), a.dtype)
    assert_within_ulp(_np(xa.grad), x64.grad.numpy(), a.dtype)


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_cli_scores_half_npy_files(dt, tmp_path):
    x = half_logits((3000, 40), dt)
    y = RNG.integers(0, 40, 3000)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    r = subprocess.run([sys.executable, "-m", "ce", "score", tmp_path / "x.npy",
                        tmp_path / "y.npy", "--json", "--memory-budget", "64KB"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    doc = json.loads(r.stdout)
    s = ce.score(x, y, top_k=(1, 5))
    assert doc["dtype"] == str(dt) and doc["loss_sum"] == s.loss_sum
    assert doc["correct"] == s.correct


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_dense_target_is_not_rounded_to_the_half_dtype(dt):
    """Dense targets of half logits are float32 in the kernel: an entry above float16's
    range (65504) or a tiny one must not overflow or flush on the way in."""
    x = np.array([[10.0, 0.0, -3.0]])
    t = np.array([[70000.0, 1e-9, 0.5]])
    xh = x.astype(dt)
    ref = ref_cross_entropy(xh.astype(np.float64), t, reduction="sum")
    got = ce.cross_entropy(xh, t, reduction="sum")
    assert np.isfinite(float(got))
    assert abs(float(got) - ref) <= 2 * float(ce._args.eps(np.dtype(dt))) * abs(ref)
    g = ce.cross_entropy_grad(xh, t.astype(np.float32), reduction="sum")  # the no-copy route
    g_ref = ref_grad(xh.astype(np.float64), t, reduction="sum")
    assert_within_ulp(g, g_ref, dt)


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_return_lse_round_trip(dt):
    x = half_logits((6, 40), dt)
    y = RNG.integers(0, 40, 6)
    loss, g, lse = ce.cross_entropy_with_grad(x, y, return_lse=True)
    assert lse.dtype == np.dtype(dt)
    g2 = ce.cross_entropy_grad(x, y, lse=lse)   # accepted, and used as given (rounded to dt)
    x64, lse64 = x.astype(np.float64), lse.astype(np.float64)
    ref = np.exp(x64 - lse64[:, None])
    rows = np.arange(6)
    # the target entry is minus the other classes' probabilities (no p_y - 1 cancellation)
    ref[rows, y] = -(ref.sum(axis=1) - ref[rows, y])
    assert_within_ulp(g2, ref / 6, dt, n_ulp=2.0)


@pytest.mark.parametrize("dt", HALVES, ids=str)
def test_rounding_to_half_equals_numpy(dt, conversions):
    """The kernels' float32 -> half rounding (F16C / AVX512_BF16 where the CPU has them, and
    the portable code) against NumPy / ml_dtypes: every upper 16-bit pattern with lower
    halves at and around the tie, plus random bits; float32 subnormals left out (the float32
    kernel flushes its results below FLT_MIN, so none reach the rounding)."""
    high = np.arange(65536, dtype=np.uint32) << 16
    low = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x1000, 0x0FFF], dtype=np.uint32)
    bits = (high[:, None] | low[None, :]).ravel()
    bits = np.concatenate([bits, RNG.integers(0, 2**32, 200000, dtype=np.uint32)])
    x = bits.view(np.float32)
    x = x[~((np.abs(x) < np.finfo(np.float32).tiny) & (x != 0))]
    got = _kernels._half_round(np.ascontiguousarray(x), dt == BF16)
    want = x.astype(dt).view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(got[nan].view(dt).astype(np.float32)).all()
