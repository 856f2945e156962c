"""Thread-count determinism: the same bits for any n_threads (the contract: fixed blocks of rows,
float64 block sums added in a fixed order). Concurrent Python threads: test_concurrency.py;
threadpoolctl limits: test_threadpool.py."""
import numpy as np
import pytest

import ce
from helpers import assert_close, bits, random_logits, seed_of
from reference import ref_cross_entropy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3000, 700), (200000, 10)])
def test_results_do_not_depend_on_thread_count(shape, dtype):
    rng = np.random.default_rng(seed_of("threads", shape))
    n, c = shape
    x = random_logits(rng, shape, dtype)
    y = rng.integers(0, c, n)
    y[::7] = -100
    w = rng.uniform(0.5, 2, c)
    e = rng.random(shape).astype(dtype)
    dense = e / e.sum(axis=1, keepdims=True)
    calls = {
        "dense mean": lambda k: ce.cross_entropy(x, dense, n_threads=k),
        "dense grad": lambda k: ce.cross_entropy_grad(x, dense, label_smoothing=0.1,
                                                      n_threads=k),
        "mean": lambda k: ce.cross_entropy(x, y, n_threads=k),
        "weighted sum": lambda k: ce.cross_entropy(x, y, weight=w, label_smoothing=0.1,
                                                   reduction="sum", n_threads=k),
        "grad": lambda k: ce.cross_entropy_grad(x, y, n_threads=k),
        "fused": lambda k: ce.cross_entropy_with_grad(x, y, weight=w, n_threads=k),
    }
    for name, call in calls.items():
        results = {k: call(k) for k in (1, 2, 3)}
        for k in (2, 3):
            a, b = results[1], results[k]
            if isinstance(a, tuple):
                for part_a, part_b in zip(a, b):
                    assert bits(part_a) == bits(part_b), f"{name}: n_threads=1 vs {k}"
            else:
                assert bits(a) == bits(b), f"{name}: n_threads=1 vs {k}"
    # and the parallel results are right
    assert_close(calls["mean"](2), ref_cross_entropy(x, y), dtype)


@pytest.mark.parametrize("shape", [(3000, 700), (200000, 10), (64, 1, 40, 700)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bits_do_not_depend_on_threads(shape, dtype):
    rng = np.random.default_rng(0)
    axis = 1 if len(shape) == 4 else -1
    x = rng.normal(size=shape).astype(dtype)
    c = shape[axis]
    y = rng.integers(0, c, tuple(d for i, d in enumerate(shape) if i != (axis % len(shape))))
    results = [ce.cross_entropy_with_grad(x, y, axis=axis, label_smoothing=0.1, n_threads=k) for k in (1, 2, 3)]
    for loss, g in results[1:]:
        assert loss.tobytes() == results[0][0].tobytes()
        assert g.tobytes() == results[0][1].tobytes()
