"""Score sums are exact: any split of the rows, any thread count, any CLI memory
budget and any Dask row chunking give the same bits as one call."""
import json
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

import ce
from ce._exactsum import ExactSum

RNG = np.random.default_rng(20261201)


def exact_value(values):
    """The exact sum of the finite values, as a Fraction (the plain reference)."""
    return sum((Fraction(float(v)) for v in values if math.isfinite(v)), Fraction(0))


def nasty(n):
    """float64 values over the whole range: normal, tiny, subnormal, huge, both signs."""
    kind = RNG.integers(0, 5, n)
    g = RNG.standard_normal(n)
    v = np.select([kind == 1, kind == 2, kind == 3, kind == 4],
                  [g * 10.0 ** RNG.integers(-300, 300, n),
                   RNG.integers(1, 2**52, n) * 5e-324,                # subnormals
                   np.sign(g) * 1.7e308,                              # near the top
                   np.sign(g) * 2.0 ** RNG.integers(-80, 70, n) * (1 + RNG.random(n))],  # fast-path edges
                  g)
    return v


@pytest.mark.parametrize("n", [0, 1, 7, 4095, 4096, 4097, 10000])
def test_exact_sum_is_exact(n):
    v = nasty(n)
    where = RNG.random(n) < 0.6
    s = ExactSum.of_array(v)
    assert Fraction(s.units, 2**1074) == exact_value(v)
    sm = ExactSum.of_array(v, where)
    assert Fraction(sm.units, 2**1074) == exact_value(v[where])
    # strided input takes the scalar path: the same integer
    w = np.repeat(v, 2)[::2]
    assert ExactSum.of_array(w) == s
    # float() is the exact value rounded once to nearest
    expect = exact_value(v)
    assert float(s) == float(expect) if abs(expect) < 2**1023 else True


def test_exact_sum_rounds_once_and_is_order_free():
    v = np.array([1e16, 1.0, -1e16, 1.0, 1e-300, 2.0**-1074])
    assert float(ExactSum.of_array(v)) == 2.0
    for _ in range(20):
        p = RNG.permutation(v)
        cut = RNG.integers(0, len(v) + 1)
        assert ExactSum.of_array(p[:cut]) + ExactSum.of_array(p[cut:]) == ExactSum.of_array(v)
    assert float(ExactSum.of_array(np.array([1.7e308, 1.7e308]))) == math.inf
    assert float(ExactSum.of_array(np.array([1.7e308, 1.7e308, -1.7e308]))) == 1.7e308


@pytest.mark.parametrize("values, expect", [
    ([1.0, np.inf], math.inf), ([-np.inf, 2.0], -math.inf), ([np.inf, -np.inf], math.nan),
    ([np.nan, 1.0], math.nan), ([np.inf, np.nan], math.nan)])
def test_non_finite_values(values, expect):
    s = ExactSum.of_array(np.array(values))
    assert float(s) == expect or (math.isnan(expect) and math.isnan(float(s)))
    parts = ExactSum.of_array(np.array(values[:1])) + ExactSum.of_array(np.array(values[1:]))
    assert parts == s


def test_of_float_matches_of_array():
    for v in nasty(200):
        assert ExactSum.of_float(v) == ExactSum.of_array(np.array([v]))
    assert ExactSum.of_float(3) == ExactSum.of_array(np.array([3.0]))


def random_split(n, pieces):
    cuts = np.sort(RNG.integers(0, n + 1, pieces - 1))
    return [0, *cuts.tolist(), n]


CASES = [  # (n, C, dtype, weights, top_k, from_logits)
    (3000, 10, np.float32, None, (1,), True),        # the small-C kernel
    (2000, 37, np.float64, "float", (1, 3), True),
    (500, 1000, np.float32, "bool", (1, 5), True),
    (1500, 23, np.float64, "float", (1, 2), False),  # probabilities
]


@pytest.mark.parametrize("n, c, dtype, weights, top_k, from_logits", CASES)
def test_score_any_split_same_bits(n, c, dtype, weights, top_k, from_logits):
    x = (RNG.standard_normal((n, c)) * 4).astype(dtype)
    if not from_logits:
        x = np.exp(x - x.max(axis=1, keepdims=True))
        x = (x / x.sum(axis=1, keepdims=True)).astype(dtype)
    y = RNG.integers(0, c, n)
    y[RNG.random(n) < 0.1] = -100
    sw = {None: None, "float": RNG.random(n) * 3, "bool": RNG.random(n) < 0.8}[weights]
    kw = dict(top_k=top_k, from_logits=from_logits)
    whole = ce.score(x, y, sample_weight=sw, **kw)
    for threads in (1, 2):
        assert ce.score(x, y, sample_weight=sw, n_threads=threads, **kw) == whole
    for trial in range(25):
        cuts = random_split(n, int(RNG.integers(2, 12)))
        parts = [ce.score(x[a:b], y[a:b], sample_weight=None if sw is None else sw[a:b],
                          n_threads=int(RNG.integers(1, 3)), **kw)
                 for a, b in zip(cuts[:-1], cuts[1:])]
        order = RNG.permutation(len(parts))
        merged = sum((parts[i] for i in order), ce.Score.empty(top_k))
        assert merged == whole, (trial, cuts)
        for f in ("loss_sum", "weight_sum", "correct", "mean_loss"):
            a, b = getattr(merged, f), getattr(whole, f)
            assert np.float64(a).tobytes() == np.float64(b).tobytes(), f
        assert merged.top_k_correct == whole.top_k_correct


def test_score_sums_are_the_rounded_exact_sums():
    x = RNG.standard_normal((800, 12)) * 3
    y = RNG.integers(0, 12, 800)
    sw = RNG.random(800)
    s = ce.score(x, y, sample_weight=sw)
    rows = ce.cross_entropy(x, y, reduction="none", sample_weight=sw)
    assert s.loss_sum == float(exact_value(rows))
    assert s.weight_sum == float(exact_value(sw))


def test_score_constructor_and_nan_rows():
    s = ce.Score(loss_sum=0.1, weight_sum=2, count=2, rows=3, correct=1.0, top_k_correct={1: 1.0})
    t = s + ce.Score(loss_sum=0.2, weight_sum=1, count=1, rows=1, correct=0.0,
                     top_k_correct={1: 0.0})
    assert t.loss_sum == float(Fraction(0.1) + Fraction(0.2))  # 0.30000000000000004 rounded once
    x = np.zeros((4, 3))
    x[1, 0] = np.nan
    a = ce.score(x, [0, 0, 1, 2])
    b = ce.score(x[:2], [0, 0]) + ce.score(x[2:], [1, 2])
    assert a == b and math.isnan(a.loss_sum)


def run_cli(*args):
    r = subprocess.run([sys.executable, "-m", "ce", "score", *map(str, args), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cli_memory_budget_does_not_change_the_bits(tmp_path):
    x = (RNG.standard_normal((4001, 29)) * 5).astype(np.float32)
    y = RNG.integers(0, 29, 4001)
    y[::13] = -100
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    s = ce.score(x, y, top_k=(1, 5))
    docs = [run_cli(tmp_path / "x.npy", tmp_path / "y.npy", "--top-k", "1,5",
                    "--memory-budget", budget, "--threads", threads)
            for budget, threads in (("256MB", 2), ("16MB", 1), ("40KB", 2), ("1KB", 1), ("7KB", 2))]
    for doc in docs:
        assert doc["loss_sum"] == s.loss_sum and doc["weight_sum"] == s.weight_sum
        assert doc["mean_loss"] == s.mean_loss and doc["correct"] == s.correct
        assert {k: v for k, v in doc.items() if k != "seconds"} == \
            {k: v for k, v in docs[0].items() if k != "seconds"}


def test_dask_row_chunkings_same_bits():
    da = pytest.importorskip("dask.array")
    import dask

    import ce.dask

    n, c = 2500, 31
    x = (RNG.standard_normal((n, c)) * 3).astype(np.float32)
    y = RNG.integers(0, c, n)
    y[RNG.random(n) < 0.1] = -100
    sw = RNG.random(n)
    whole = ce.score(x, y, sample_weight=sw, top_k=(1, 3))
    with dask.config.set(scheduler="synchronous"):
        for trial in range(10):
            cuts = random_split(n, int(RNG.integers(1, 9)))
            chunks = tuple(b - a for a, b in zip(cuts[:-1], cuts[1:]) if b > a)
            s = ce.dask.score(da.from_array(x, chunks=(chunks, c)), da.from_array(y, chunks=(chunks,)),
                              sample_weight=da.from_array(sw, chunks=(chunks,)), top_k=(1, 3))
            assert s == whole, chunks
        total = ce.dask.cross_entropy(da.from_array(x, chunks=(chunks, c)),
                                      da.from_array(y, chunks=(chunks,)), reduction="sum")
        assert total.compute() == np.float32(ce.score(x, y).loss_sum)
        # class chunks: a logaddexp merge of per-chunk log-sum-exps, close but not bitwise
        s = ce.dask.score(da.from_array(x, chunks=(700, 10)), da.from_array(y, chunks=(700,)),
                          sample_weight=da.from_array(sw, chunks=(700,)), top_k=(1, 3))
        assert s.count == whole.count and s.weight_sum == whole.weight_sum
        assert s.loss_sum == pytest.approx(whole.loss_sum, rel=1e-8)  # float32 kernel sums
