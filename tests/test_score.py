"""ce.score: against a plain NumPy float64 reference, and merge exactness."""
import math

import numpy as np
import pytest

import ce
from ce._score import Score
from reference import ref_score

RNG = np.random.default_rng(20240611)


def assert_matches(s, ref, rtol):
    assert s.count == ref["count"] and s.rows == ref["rows"]
    assert s.weight_sum == pytest.approx(ref["weight_sum"], rel=1e-13)
    assert s.loss_sum == pytest.approx(ref["loss_sum"], rel=rtol)
    assert s.correct == pytest.approx(ref["correct"], rel=1e-13)
    assert s.top_k_correct.keys() == ref["top_k_correct"].keys()
    for k, v in ref["top_k_correct"].items():
        assert s.top_k_correct[k] == pytest.approx(v, rel=1e-13)


def logits_labels(n=500, c=23, dtype=np.float64, ignored=0.1):
    x = RNG.standard_normal((n, c)).astype(dtype) * 2
    y = RNG.integers(0, c, n)
    y[RNG.random(n) < ignored] = -100
    return x, y


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("weights", [None, "float", "bool"])
def test_matches_reference(dtype, rtol, weights):
    x, y = logits_labels(dtype=dtype)
    sw = {None: None, "float": RNG.random(len(y)) * 2,
          "bool": RNG.random(len(y)) < 0.7}[weights]
    s = ce.score(x, y, sample_weight=sw, top_k=(1, 2, 5, 23, 40))
    assert_matches(s, ref_score(x, y, sample_weight=sw, top_k=(1, 2, 5, 23, 40)), rtol)
    assert s.top_k_accuracy[23] == 1.0 and s.top_k_accuracy[40] == 1.0


def test_derived_values():
    x, y = logits_labels()
    s = ce.score(x, y, top_k=(1, 3))
    assert s.mean_loss == s.loss_sum / s.weight_sum
    assert s.mean_loss == pytest.approx(float(ce.cross_entropy(x, y)), rel=1e-15)
    # the exact sum of the same kernel's per-row losses, rounded once
    assert s.loss_sum == math.fsum(ce.cross_entropy(x, y, reduction="none"))
    assert s.loss_sum == pytest.approx(float(ce.cross_entropy(x, y, reduction="sum")), rel=1e-15)
    assert s.perplexity == math.exp(s.mean_loss)
    assert s.accuracy == s.correct / s.weight_sum == s.top_k_accuracy[1]
    assert s.top_k_accuracy[3] == s.top_k_correct[3] / s.weight_sum
    d = s.to_dict()
    assert d["mean_loss"] == s.mean_loss and d["top_k_accuracy"] == s.top_k_accuracy
    assert "mean_loss" in repr(s)


def test_matches_cross_entropy_mean_with_weights():
    x, y = logits_labels(dtype=np.float32)
    sw = RNG.random(len(y))
    s = ce.score(x, y, sample_weight=sw)
    assert s.mean_loss == pytest.approx(float(ce.cross_entropy(x, y, sample_weight=sw)), rel=1e-6)


def test_class_axis_and_shapes():
    x = RNG.standard_normal((4, 7, 3, 5))
    y = RNG.integers(0, 7, (4, 3, 5))
    y[1, 2] = -100
    s = ce.score(x, y, axis=1, top_k=(1, 2))
    assert_matches(s, ref_score(x, y, axis=1, top_k=(1, 2)), 1e-12)
    t = ce.score(np.moveaxis(x, 1, -1), y, top_k=(1, 2))
    assert t.count == s.count and t.top_k_correct == s.top_k_correct
    assert t.loss_sum == pytest.approx(s.loss_sum, rel=1e-14)


def test_probabilities():
    x, y = logits_labels()
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    p[0, max(y[0], 0)] = 0.0  # clipped at eps
    s = ce.score(p, y, from_logits=False, top_k=(1, 4))
    assert_matches(s, ref_score(p, y, from_logits=False, top_k=(1, 4)), 1e-12)
    assert s.mean_loss == pytest.approx(float(ce.cross_entropy(p, y, from_logits=False)), rel=1e-14)


def test_float16_and_strided_input():
    x, y = logits_labels(dtype=np.float32)
    h = x.astype(np.float16)
    s = ce.score(h, y, top_k=(1, 3))
    assert_matches(s, ref_score(h.astype(np.float32), y, top_k=(1, 3)), 1e-6)
    f = np.asfortranarray(x)
    assert ce.score(f, y) == ce.score(x, y)
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), np.float32)
    wide[:, ::2] = x
    assert ce.score(wide[:, ::2], y) == ce.score(x, y)


def test_ties():
    x = np.array([[1.0, 3.0, 3.0, 0.0],   # label 1: the first argmax
                  [1.0, 3.0, 3.0, 0.0],   # label 2: tied with an earlier class
                  [3.0, 3.0, 3.0, 3.0]])  # label 3: everything tied
    y = np.array([1, 2, 3])
    s = ce.score(x, y, top_k=(1, 2))
    assert s.correct == 1  # top-1 is argmax == label: ties go to the first index
    assert s.top_k_correct[2] == 3  # top-k counts classes strictly above: ties favour the label


def test_ignored_and_zero_weight_rows_are_not_counted():
    x, y = logits_labels(n=50, ignored=0.0)
    y[:10] = 7
    x[:5] = -np.inf  # masked rows are skipped entirely, even non-finite ones
    y[:5] = -1
    s = ce.score(x, y, ignore_index=-1, sample_weight=np.r_[np.ones(45), np.zeros(5)])
    assert s.count == 40 and s.rows == 50 and s.weight_sum == 40.0
    assert math.isfinite(s.loss_sum)


def test_nothing_counted_is_nan():
    x, y = logits_labels(n=10)
    for s in (ce.score(x[:0], y[:0]), ce.score(x, np.full(10, -100))):
        assert s.count == 0 and s.loss_sum == 0 and s.weight_sum == 0
        assert math.isnan(s.mean_loss) and math.isnan(s.perplexity)
        assert math.isnan(s.accuracy) and math.isnan(s.top_k_accuracy[1])


def test_nan_row_is_a_miss():
    x = np.array([[5.0, 0.0, 0.0], [np.nan, 0.0, 0.0]])
    s = ce.score(x, np.array([0, 0]), top_k=(1, 2))
    assert math.isnan(s.loss_sum) and s.count == 2
    assert s.correct == 1 and s.top_k_correct[2] == 1


def test_threads_give_identical_scores():
    x, y = logits_labels(n=20000, c=50, dtype=np.float32)
    one = ce.score(x, y, top_k=(1, 5), n_threads=1)
    assert ce.score(x, y, top_k=(1, 5), n_threads=2) == one


# ---- merging ----

def splits(n, rng, pieces):
    cuts = np.sort(rng.choice(np.arange(1, n), size=pieces - 1, replace=False))
    return np.split(np.arange(n), cuts)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pieces", [2, 7, 64])
def test_chunks_merge_to_one_call(dtype, pieces):
    x, y = logits_labels(n=3000, c=31, dtype=dtype)
    sw = RNG.random(len(y))
    kw = dict(sample_weight=sw, top_k=(1, 5))
    whole = ce.score(x, y, **kw)
    parts = [ce.score(x[i], y[i], sample_weight=sw[i], top_k=(1, 5))
             for i in splits(len(y), RNG, pieces)]
    merged = sum(parts[1:], parts[0])
    assert sum(parts) == merged  # sum() starting from 0 works
    assert merged.count == whole.count and merged.rows == whole.rows
    for name in ("loss_sum", "weight_sum", "correct"):
        assert getattr(merged, name) == pytest.approx(getattr(whole, name), rel=1e-12, abs=0)
    for k in (1, 5):
        assert merged.top_k_correct[k] == pytest.approx(whole.top_k_correct[k], rel=1e-12)
    assert merged.mean_loss == pytest.approx(whole.mean_loss, rel=1e-12)


def test_unweighted_counts_merge_exactly_in_any_order():
    x, y = logits_labels(n=2000)
    parts = [ce.score(x[i], y[i], top_k=(1, 3)) for i in splits(len(y), RNG, 9)]
    a, b = sum(parts), sum(parts[::-1])
    whole = ce.score(x, y, top_k=(1, 3))
    for s in (a, b):
        assert (s.count, s.rows, s.weight_sum, s.correct, s.top_k_correct) == (
            whole.count, whole.rows, whole.weight_sum, whole.correct, whole.top_k_correct)
        assert s.loss_sum == pytest.approx(whole.loss_sum, rel=1e-12)


def test_empty_is_neutral_and_top_k_must_agree():
    x, y = logits_labels(n=100)
    s = ce.score(x, y, top_k=(1, 5))
    assert Score.empty((1, 5)) + s == s == s + ce.score(x[:0], y[:0], top_k=(5, 1))
    with pytest.raises(ValueError, match="top_k"):
        s + ce.score(x, y)
    with pytest.raises(TypeError):
        s + 1.5


# ---- errors ----

def test_dense_target_is_a_type_error():
    x, y = logits_labels(n=10, ignored=0)
    with pytest.raises(TypeError, match="target"):
        ce.score(x, np.eye(x.shape[1])[y])


def test_bad_label_names_value_and_position():
    x, y = logits_labels(n=10, ignored=0)
    y[6] = 23
    with pytest.raises(ValueError, match=r"label 23 at position \(6,\)"):
        ce.score(x, y)


@pytest.mark.parametrize("top_k, exc", [(0, ValueError), ((1, -2), ValueError),
                                         ("5", TypeError), ((1.5,), TypeError),
                                         (True, ValueError)])
def test_bad_top_k(top_k, exc):
    x, y = logits_labels(n=10)
    with pytest.raises(exc, match="top_k"):
        ce.score(x, y, top_k=top_k)


def test_top_k_forms():
    x, y = logits_labels(n=50)
    assert ce.score(x, y, top_k=3).top_k_correct.keys() == {3}
    assert list(ce.score(x, y, top_k=[5, 1, 5]).top_k_accuracy) == [1, 5]
    s = ce.score(x, y, top_k=())
    assert s.top_k_accuracy == {} and s.accuracy == ce.score(x, y).accuracy


@pytest.mark.parametrize("c, many_k", [(3, False), (10, False), (100, False), (10, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_unweighted_counts_equal_the_weighted_tally(c, many_k, dtype):
    # without sample weights the hits are tallied in the kernel pass (ce._kernels.score_counts,
    # up to a limit on the number of k); unit weights take the general tally of per-row
    # arrays: the two must agree bit for bit, NaN rows, ignored rows, ties and k > C included
    x, y = logits_labels(n=700, c=c, dtype=dtype)
    x[::7, 1] = x[::7, 0]        # ties with an earlier class
    x[5, 2], y[5] = np.nan, 0    # a NaN row is a miss
    ks = tuple(range(1, 40)) + (c + 3,) if many_k else (1, 2, 5, c + 3)
    fast = ce.score(x, y, top_k=ks)
    general = ce.score(x, y, top_k=ks, sample_weight=np.ones(len(y)))
    assert fast == general
    assert fast.count == general.count and fast.top_k_correct == general.top_k_correct
    assert fast.top_k_correct[c + 3] == fast.count - 1   # every row but the NaN one
