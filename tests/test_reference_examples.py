"""Worked examples published by the peers, reproduced with ce (and with the test reference).

Sources:
- MyGrad, ``mygrad.nnet.losses.softmax_crossentropy`` docstring: scores
  [[2, 2, 2], [0, 0, 1e6]], labels [0, 2] -> 0.54930614 (the mean).
- optax, ``softmax_cross_entropy_with_integer_labels`` / ``softmax_cross_entropy`` docstrings
  (optax/losses/_classification.py): logits [[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]], labels
  [0, 1] -> [0.2761, 2.9518]; and the tuple-axis example: logits = arange(24).reshape(1, 2, 3, 4)
  (float32), labels = ravel_multi_index(([[1, 2]], [[1, 3]]), (3, 4)), axis=(2, 3)
  -> [[6.4587, 0.4587]].
- PyTorch tutorial by Patrick Loeber (github.com/patrickloeber/pytorchTutorial,
  11_softmax_and_crossentropy.py), nn.CrossEntropyLoss: logits [[2.0, 1.0, 0.1]], label 0
  -> 0.4170; batch of three with labels [2, 0, 1]: "good" logits -> 0.2834, "bad" -> 1.6418.
- numpy-ml, ``CrossEntropy``: one-hot y = [[1, 0, 0]], predicted probabilities
  [[0.7, 0.2, 0.1]] -> 0.35667494393873245 (summed; = -log 0.7); its gradient with respect to
  the logits z is softmax(z) - y.
"""
import math

import numpy as np
import pytest

import ce
from reference import ref_cross_entropy, ref_grad, ref_softmax

FLOATS = [np.float64, np.float32]


def rel(dtype):
    return 1e-12 if dtype == np.float64 else 1e-6


# ---------------------------------------------------------------------------------- MyGrad

@pytest.mark.parametrize("dtype", FLOATS)
def test_mygrad_softmax_crossentropy(dtype):
    scores = np.array([[2.0, 2.0, 2.0], [0.0, 0.0, 1e6]], dtype=dtype)
    labels = np.array([0, 2])
    expected = 0.54930614
    assert ref_cross_entropy(scores, labels) == pytest.approx(expected, abs=5e-9)
    loss = ce.cross_entropy(scores, labels)
    assert loss.dtype == dtype
    assert float(loss) == pytest.approx(expected, abs=5e-9 if dtype == np.float64 else 1e-6)
    # and exactly log(3) / 2 in float64
    assert float(loss) == pytest.approx(math.log(3.0) / 2.0, rel=rel(dtype))


# ----------------------------------------------------------------------------------- optax

OPTAX_LOGITS = [[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]]


@pytest.mark.parametrize("dtype", FLOATS)
def test_optax_integer_labels(dtype):
    logits = np.array(OPTAX_LOGITS, dtype=dtype)
    labels = np.array([0, 1])
    expected = [0.2761, 2.9518]
    np.testing.assert_allclose(ref_cross_entropy(logits, labels, reduction="none"), expected,
                               atol=5e-5)
    loss = ce.cross_entropy(logits, labels, reduction="none")
    assert loss.shape == (2,) and loss.dtype == dtype
    np.testing.assert_allclose(loss, expected, atol=5e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_optax_one_hot_labels(dtype):
    logits = np.array(OPTAX_LOGITS, dtype=dtype)
    labels = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    loss = ce.cross_entropy(logits, labels, reduction="none")
    np.testing.assert_allclose(loss, [0.2761, 2.9518], atol=5e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_optax_tuple_axis_example(dtype):
    shape = (1, 2, 3, 4)
    logits = np.arange(np.prod(shape), dtype=dtype).reshape(shape)
    ix = np.array([[1, 2]])
    jx = np.array([[1, 3]])
    labels = np.ravel_multi_index((ix, jx), shape[2:])
    assert labels.tolist() == [[5, 11]]
    expected = [[6.4587, 0.4587]]
    np.testing.assert_allclose(ref_cross_entropy(logits, labels, axis=(2, 3), reduction="none"),
                               expected, atol=5e-5)
    loss = ce.cross_entropy(logits, labels, axis=(2, 3), reduction="none")
    assert loss.shape == (1, 2) and loss.dtype == dtype
    np.testing.assert_allclose(loss, expected, atol=5e-5)


# --------------------------------------------------------------------------------- PyTorch

@pytest.mark.parametrize("dtype", FLOATS)
def test_pytorch_tutorial_single_example(dtype):
    logits = np.array([[2.0, 1.0, 0.1]], dtype=dtype)
    labels = np.array([0])
    assert ref_cross_entropy(logits, labels) == pytest.approx(0.4170, abs=5e-5)
    assert float(ce.cross_entropy(logits, labels)) == pytest.approx(0.4170, abs=5e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_pytorch_tutorial_batch_of_three(dtype):
    labels = np.array([2, 0, 1])
    good = np.array([[0.1, 0.2, 3.9], [1.2, 0.1, 0.3], [0.3, 2.2, 0.2]], dtype=dtype)
    bad = np.array([[0.9, 0.2, 0.1], [0.1, 0.3, 1.5], [1.2, 0.2, 0.5]], dtype=dtype)
    assert ref_cross_entropy(good, labels) == pytest.approx(0.2834, abs=5e-5)
    assert ref_cross_entropy(bad, labels) == pytest.approx(1.6418, abs=5e-5)
    assert float(ce.cross_entropy(good, labels)) == pytest.approx(0.2834, abs=5e-5)
    assert float(ce.cross_entropy(bad, labels)) == pytest.approx(1.6418, abs=5e-5)


# -------------------------------------------------------------------------------- numpy-ml

@pytest.mark.parametrize("dtype", FLOATS)
def test_numpy_ml_probabilities(dtype):
    y = np.array([[1, 0, 0]])
    p = np.array([[0.7, 0.2, 0.1]], dtype=dtype)
    expected = 0.35667494393873245
    # the float32 input is 0.699999988..., hence the looser comparison with the example
    assert ref_cross_entropy(p, y, from_logits=False, reduction="sum") == pytest.approx(
        -math.log(float(p[0, 0])), rel=1e-15)
    loss = ce.cross_entropy(p, y, from_logits=False, reduction="sum")
    assert loss.dtype == dtype
    assert float(loss) == pytest.approx(-math.log(float(p[0, 0])), rel=rel(dtype))
    assert float(loss) == pytest.approx(expected, rel=1e-15 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_numpy_ml_gradient_is_softmax_minus_onehot(dtype):
    rng = np.random.default_rng(7)
    z = rng.standard_normal((5, 4)).astype(dtype)
    labels = rng.integers(0, 4, 5)
    y = np.eye(4)[labels]
    expected = ref_softmax(z) - y
    np.testing.assert_allclose(ref_grad(z, y, reduction="sum"), expected, atol=1e-15)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(ce.cross_entropy_grad(z, y, reduction="sum"), expected, atol=tol)
    np.testing.assert_allclose(ce.cross_entropy_grad(z, labels, reduction="sum"), expected,
                               atol=tol)


def test_worked_examples():
    assert ce.cross_entropy(np.array([[2.0, 2, 2], [0, 0, 1e6]]), np.array([0, 2])) == pytest.approx(0.54930614)
    assert ce.cross_entropy(np.array([[2.0, 1.0, 0.1]]), np.array([0])) == pytest.approx(0.4170, abs=1e-4)
    np.testing.assert_allclose(
        ce.cross_entropy(np.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]]), np.array([0, 1]), reduction="none"),
        [0.2761, 2.9518], atol=1e-4)
    assert ce.cross_entropy(np.array([[0.7, 0.2, 0.1]]), np.array([[1, 0, 0]]), from_logits=False,
                            reduction="sum") == pytest.approx(0.35667494393873245, rel=1e-15)
