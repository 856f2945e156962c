"""ce.sequence_score against the log_softmax + gather + sum + argmax reference."""
import numpy as np
import pytest

import ce
from reference import ref_sequence_score

RNG = np.random.default_rng(4242)


def tokens(shape, v, ignored=0.3, ignore_index=-100):
    y = RNG.integers(0, v, shape)
    y[RNG.random(shape) < ignored] = ignore_index
    return y


def check(s, logits, target, ignore_index=-100, rtol=1e-12):
    lp, count, greedy = ref_sequence_score(logits, target, ignore_index=ignore_index)
    assert s.logprob.dtype == np.float64 and s.logprob.shape == lp.shape
    assert s.count.dtype == np.int64 and s.greedy.dtype == np.bool_
    np.testing.assert_allclose(s.logprob, lp, rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(s.count, count)
    np.testing.assert_array_equal(s.greedy, greedy)


@pytest.mark.parametrize("shape, v", [((3, 7), 11), ((2, 3, 5), 1000), ((9,), 4), ((1, 64), 32000),
                                      ((4, 40), 16), ((2, 33), 17)])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_matches_reference(shape, v, dtype, rtol):
    x = (RNG.standard_normal(shape + (v,)) * 3).astype(dtype)
    y = tokens(shape, v)
    check(ce.sequence_score(x, y), x, y, rtol=rtol)


def test_greedy_sequences_and_ties():
    x = RNG.standard_normal((4, 6, 9))
    y = np.argmax(x, axis=-1)
    y[1, 2] = (y[1, 2] + 1) % 9        # one miss: sequence 1 is not greedy
    y[2, :4] = -100                    # context positions are not checked
    y[3, :] = -100                     # nothing counted: greedy, logprob 0, count 0
    x[0, 3, :] = 1.0                   # an all-tied row: the first argmax (0) is greedy
    y[0, 3] = 0
    s = ce.sequence_score(x, y)
    np.testing.assert_array_equal(s.greedy, [True, False, True, True])
    np.testing.assert_array_equal(s.count, [6, 6, 2, 0])
    assert s.logprob[3] == 0.0 and not np.signbit(s.logprob[3])
    x[0, 3, 0] = 1.0
    y[0, 3] = 5                        # tied with an earlier class: not the first argmax
    assert not ce.sequence_score(x, y).greedy[0]
    check(ce.sequence_score(x, y), x, y)


def test_layouts_ignore_index_threads():
    x = RNG.standard_normal((3, 10, 50)).astype(np.float32)
    y = tokens((3, 10), 50, ignore_index=7)
    s = ce.sequence_score(x, y, ignore_index=7, n_threads=1)
    check(s, x, y, ignore_index=7, rtol=1e-5)
    f = np.asfortranarray(x)           # strided input, the same answer
    t = ce.sequence_score(f, y, ignore_index=7, n_threads=2)
    np.testing.assert_array_equal(t.logprob, s.logprob)
    one = ce.sequence_score(x[1], y[1], ignore_index=7)  # a single sequence: 0-d arrays
    assert one.logprob.shape == () and one.logprob == s.logprob[1]
    assert one.count == s.count[1] and one.greedy == s.greedy[1]


def test_nan_rows():
    x = RNG.standard_normal((2, 4, 5))
    x[0, 1, 2] = np.nan
    x[1, 0, :] = np.nan                # ignored position: no effect
    y = np.array([[1, 2, 3, 4], [-100, 0, 1, 2]])
    s = ce.sequence_score(x, y)
    assert np.isnan(s.logprob[0]) and not s.greedy[0]
    assert np.isfinite(s.logprob[1])
    check(s, x, y)


def test_matches_cross_entropy_none():
    x = RNG.standard_normal((5, 12, 30))
    y = tokens((5, 12), 30)
    s = ce.sequence_score(x, y)
    per = ce.cross_entropy(x, y, reduction="none")
    np.testing.assert_allclose(s.logprob, -per.sum(axis=-1), rtol=1e-14)


def test_lm_eval_loglikelihood_request():
    """The README's recipe: (context, continuation) -> (logprob, is_greedy)."""
    v = 20
    context, continuation = [3, 7, 1, 4], [9, 2, 5]
    tokens_ = context + continuation
    logits = RNG.standard_normal((len(tokens_) - 1, v))     # the model's outputs for tokens[:-1]
    target = np.array(tokens_[1:])
    target[: len(context) - 1] = -100                       # score the continuation only
    s = ce.sequence_score(logits, target)
    lp = ref_sequence_score(logits, target)[0]
    assert s.count == len(continuation) and s.logprob == pytest.approx(lp, rel=1e-13)


@pytest.mark.parametrize("target, err, match", [
    (np.zeros((2, 5), dtype=np.int64), ValueError, r"\(2, 4\)"),            # wrong shape
    (np.zeros((2, 4, 6)), ValueError, "shape"),                              # dense: refused
    (np.zeros((2, 4)), TypeError, "integer"),
    (np.array([[0, 1, 2, 3], [0, 6, 1, 2]]), ValueError, r"label 6 at position \(1, 1\)"),
    (np.array([[0, 1, 2, 3], [0, -1, 1, 2]]), ValueError, r"label -1 at position \(1, 1\)"),
])
def test_bad_target(target, err, match):
    x = RNG.standard_normal((2, 4, 6))
    with pytest.raises(err, match=match):
        ce.sequence_score(x, target)


def test_bad_logits():
    with pytest.raises(ValueError, match="at least 2"):
        ce.sequence_score(np.zeros(5), np.zeros((), dtype=np.int64))
    with pytest.raises(TypeError, match="logits"):
        ce.sequence_score(np.zeros((2, 3), dtype=np.int32), np.zeros(2, dtype=np.int64))
    with pytest.raises(TypeError, match="ignore_index"):
        ce.sequence_score(np.zeros((2, 3)), np.zeros(2, dtype=np.int64), ignore_index=1.5)
