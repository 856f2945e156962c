"""ce.mygrad: a drop-in for mygrad.nnet.losses.softmax_crossentropy."""
import numpy as np
import pytest

mg = pytest.importorskip("mygrad")
from mygrad.nnet.losses import softmax_crossentropy as reference  # noqa: E402

from ce.mygrad import softmax_crossentropy  # noqa: E402


def _data(dtype, n=7, c=5, seed=0):
    rng = np.random.default_rng(seed)
    return (3 * rng.normal(size=(n, c))).astype(dtype), rng.integers(0, c, n)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("label_kind", ["array", "list", "tensor"])
def test_matches_mygrad(dtype, label_kind):
    x, y = _data(dtype)
    labels = {"array": y, "list": y.tolist(), "tensor": mg.tensor(y)}[label_kind]
    ours_x, ref_x = mg.tensor(x), mg.tensor(x)
    ours = softmax_crossentropy(ours_x, labels)
    ref = reference(ref_x, labels)
    assert isinstance(ours, mg.Tensor) and ours.shape == () and ours.dtype == ref.dtype
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(ours.data, ref.data, rtol=rtol)
    (3 * ours).backward()  # an upstream gradient other than 1
    (3 * ref).backward()
    assert ours_x.grad.dtype == ref_x.grad.dtype
    np.testing.assert_allclose(ours_x.grad, ref_x.grad, rtol=rtol, atol=rtol)


def test_gradient_matches_finite_differences():
    x, y = _data(np.float64, n=4, c=3, seed=1)
    t = mg.tensor(x)
    softmax_crossentropy(t, y).backward()
    h, fd = 1e-6, np.empty_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        fd[i] = (softmax_crossentropy(x + e, y).item() - softmax_crossentropy(x - e, y).item()) / (2 * h)
    np.testing.assert_allclose(t.grad, fd, rtol=1e-6, atol=1e-9)


def test_in_a_graph():
    x, y = _data(np.float64, seed=2)
    w = np.random.default_rng(3).normal(size=(5, 5))
    a, b = mg.tensor(x), mg.tensor(x)
    softmax_crossentropy(mg.matmul(a, w) ** 2, y).backward()
    reference(mg.matmul(b, w) ** 2, y).backward()
    np.testing.assert_allclose(a.grad, b.grad, rtol=1e-12)


def test_constant():
    x, y = _data(np.float64)
    assert softmax_crossentropy(x, y).constant is reference(x, y).constant
    t = mg.tensor(x)
    loss = softmax_crossentropy(t, y, constant=True)
    assert loss.constant
    loss.backward()
    assert t.grad is None
    assert not softmax_crossentropy(mg.tensor(x), y, constant=False).constant


def test_integer_scores_as_mygrad():
    scores, y = [[1, 2, 3], [0, 0, 4]], [0, 2]
    np.testing.assert_allclose(softmax_crossentropy(scores, y).data, reference(scores, y).data)


@pytest.mark.parametrize("x, y, error", [
    (np.zeros(3), [0], ValueError),                  # x not 2-D
    (np.zeros((2, 3, 1)), [0, 1], ValueError),
    (np.zeros((2, 3)), [0], ValueError),             # wrong N
    (np.zeros((2, 3)), [[0, 1]], ValueError),        # y not 1-D
    (np.zeros((2, 3)), [0.0, 1.0], TypeError),       # y not integer
])
def test_bad_input_as_mygrad(x, y, error):
    with pytest.raises(error):
        reference(x, y)
    with pytest.raises(error):
        softmax_crossentropy(x, y)


def test_out_of_range_label_is_an_error():
    """The message names MyGrad's argument and no ignore_index (MyGrad has none)."""
    for bad in (3, -1, -(2**63)):  # -1: MyGrad would wrap around
        with pytest.raises(ValueError, match="label") as info:
            softmax_crossentropy(np.zeros((2, 3)), [0, bad])
        message = str(info.value)
        assert message.startswith("`y_true` has label") and f"{bad} at position (1,)" in message
        assert "ignore_index" not in message and "target" not in message


class _ComplexScores:
    """What the Operation sees if a complex array ever gets past Tensor's own check."""
    data = np.ones((2, 3), dtype=np.complex128)
    dtype, ndim, shape = data.dtype, 2, (2, 3)


def test_complex_scores_are_the_cores_type_error():
    from ce.mygrad import SoftmaxCrossEntropy
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning: refused, not cast
        with pytest.raises(TypeError, match="`x` must be a float"):
            SoftmaxCrossEntropy()(_ComplexScores(), np.array([0, 1]))
    with pytest.raises(TypeError):
        softmax_crossentropy(np.ones((2, 3), dtype=np.complex64), [0, 1])


def test_no_graph():
    x, y = _data(np.float64)
    with mg.no_autodiff:
        loss = softmax_crossentropy(mg.tensor(x), y)
    np.testing.assert_allclose(loss.data, reference(x, y).data)
