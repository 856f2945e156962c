"""ce.dask on a 2-worker LocalCluster, against the single-machine results."""
import subprocess
import sys

import numpy as np
import pytest

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def da(client):
    import dask.array

    return dask.array


def problem(n=1200, c=40, dtype=np.float64):
    x = (RNG.standard_normal((n, c)) * 3).astype(dtype)
    y = RNG.integers(0, c, n)
    y[RNG.random(n) < 0.1] = -100
    return x, y


def assert_same(a, b, rel=1e-12):
    assert (a.rows, a.count, a.top_k_correct.keys()) == (b.rows, b.count, b.top_k_correct.keys())
    for name in ("loss_sum", "weight_sum", "correct"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=rel), name
    for k in a.top_k_correct:
        assert a.top_k_correct[k] == pytest.approx(b.top_k_correct[k], rel=1e-12)


# chunks along the rows only, and along the rows and the classes (a split vocabulary)
CHUNKS = [(250, 40), (300, 13), (1200, 8)]


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("dtype, rel", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_score_matches_single_machine(da, chunks, dtype, rel):
    import ce.dask

    x, y = problem(dtype=dtype)
    kw = dict(top_k=(1, 2, 5, 40, 50))
    got = ce.dask.score(da.from_array(x, chunks=chunks), da.from_array(y, chunks=400), **kw)
    assert_same(got, ce.score(x, y, **kw), rel)


@pytest.mark.parametrize("chunks", CHUNKS)
def test_weights_and_probabilities(da, chunks):
    import ce.dask

    x, y = problem()
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    sw = RNG.random(len(y))
    sw[::7] = 0
    for arr, kw in [(x, dict(sample_weight=sw)), (p, dict(from_logits=False)),
                    (p, dict(from_logits=False, sample_weight=sw > 0.5))]:
        got = ce.dask.score(da.from_array(arr, chunks=chunks), y, top_k=(1, 3), **kw)
        assert_same(got, ce.score(arr, y, top_k=(1, 3), **kw))


def test_class_axis_and_padded_vocabulary(da):
    import ce.dask

    x = RNG.standard_normal((12, 9, 5))
    y = RNG.integers(0, 9, (12, 5))
    got = ce.dask.score(da.from_array(x, chunks=(4, 3, 5)), y, axis=1, top_k=(1, 2))
    assert_same(got, ce.score(x, y, axis=1, top_k=(1, 2)))
    v = RNG.standard_normal((300, 64))
    v[:, 50:] = -np.inf  # a vocabulary padded to 64 with -inf: a class chunk of all -inf
    t = RNG.integers(0, 50, 300)
    got = ce.dask.score(da.from_array(v, chunks=(100, 16)), t, top_k=(1, 5))
    assert_same(got, ce.score(v, t, top_k=(1, 5)))


@pytest.mark.parametrize("chunks", CHUNKS)
def test_cross_entropy(da, chunks):
    import ce.dask

    x, y = problem(dtype=np.float32)
    xd, yd = da.from_array(x, chunks=chunks), da.from_array(y, chunks=500)
    for reduction in ("mean", "sum"):
        got = ce.dask.cross_entropy(xd, yd, reduction=reduction)
        assert got.shape == () and got.dtype == np.float32
        assert got.compute() == pytest.approx(ce.cross_entropy(x, y, reduction=reduction),
                                              rel=1e-6)
    sw = RNG.random(len(y))
    rows = ce.dask.cross_entropy(xd, yd, reduction="none", sample_weight=sw).compute()
    np.testing.assert_allclose(rows, ce.cross_entropy(x, y, reduction="none", sample_weight=sw),
                               rtol=1e-6, atol=1e-6)
    assert rows.dtype == np.float32 and np.all(rows[y == -100] == 0)


def test_lazy_and_delayed(client, da):
    import dask

    import ce.dask

    assert dask.base.get_scheduler() == client.get  # the cluster runs the graphs

    x, y = problem(n=100)
    d = ce.dask.score(da.from_array(x, chunks=(30, 20)), y, compute=False)
    assert d.compute() == ce.dask.score(da.from_array(x, chunks=(30, 20)), y)
    empty = ce.dask.score(da.from_array(x[:0], chunks=(30, 20)), y[:0])
    assert empty.count == 0 and np.isnan(empty.mean_loss)


@pytest.mark.parametrize("chunks", [(250, 40), (250, 7)])
def test_bad_label_has_global_position(da, chunks):
    import ce.dask

    x, y = problem()
    y[1000] = 40
    with pytest.raises(ValueError, match=r"label 40 at position \(1000,\)"):
        ce.dask.score(da.from_array(x, chunks=chunks), y)
    with pytest.raises(ValueError, match="shape"):
        ce.dask.score(da.from_array(x, chunks=chunks), y[:-1])
    with pytest.raises(TypeError, match="integer"):
        ce.dask.cross_entropy(da.from_array(x, chunks=chunks), y.astype(float))


def test_clear_error_without_dask():
    code = ("import sys; sys.modules['dask'] = None; sys.modules['dask.array'] = None\n"
            "import numpy as np, ce.dask\n"
            "try:\n    ce.dask.score(np.zeros((2, 3)), np.zeros(2, int))\n"
            "except ImportError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pip install" in r.stdout and "ce[dask]" in r.stdout
