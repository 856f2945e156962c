"""Memory: the forward allocates O(N) at most, the fused call only the gradient
(nothing of size N x C with out=). NumPy reports its buffers to tracemalloc."""
import tracemalloc

import numpy as np
import pytest

import ce

N, C = 4000, 1000


def peak_bytes(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del result
    return peak


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C), dtype=np.float32)
    y = rng.integers(0, C, N)
    return x, y


O_N = 8 * 8 * N  # a few float64 / int64 per row
GRAD = 4 * N * C


@pytest.mark.parametrize("options", [{}, {"reduction": "none"}, {"label_smoothing": 0.1, "weight": np.ones(C)},
                                     {"sample_weight": np.ones(N), "reduction": "sum"}])
def test_forward_allocates_o_n(data, options):
    x, y = data
    assert peak_bytes(lambda: ce.cross_entropy(x, y, **options)) < O_N


def test_forward_class_axis_not_last_allocates_o_n():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 100, 32, 32), dtype=np.float32)
    y = rng.integers(0, 100, (8, 32, 32))
    assert peak_bytes(lambda: ce.cross_entropy(x, y, axis=1)) < 8 * 8 * y.size


def test_fused_allocates_only_the_gradient(data):
    x, y = data
    assert peak_bytes(lambda: ce.cross_entropy_with_grad(x, y)) < GRAD + O_N
    assert peak_bytes(lambda: ce.cross_entropy_with_grad(x, y, reduction="none", return_lse=True)) < GRAD + O_N
    assert peak_bytes(lambda: ce.cross_entropy_grad(x, y)) < GRAD + O_N


def test_out_allocates_nothing_of_size_nc(data):
    x, y = data
    out = np.empty_like(x)
    assert peak_bytes(lambda: ce.cross_entropy_with_grad(x, y, out=out)) < O_N
    assert peak_bytes(lambda: ce.cross_entropy_grad(x, y, out=out, weight=np.ones(C))) < O_N
    xc = x.copy()
    assert peak_bytes(lambda: ce.cross_entropy_grad(xc, y, out=xc)) < O_N
    assert peak_bytes(lambda: ce.softmax(x, out=out)) < O_N
