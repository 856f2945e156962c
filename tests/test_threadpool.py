"""Threads: ce follows OMP_NUM_THREADS and threadpoolctl, and shares a process with
other OpenMP users (PyTorch, scikit-learn) in any import order."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ce
from ce import _kernels

threadpoolctl = pytest.importorskip("threadpoolctl")
needs_openmp = pytest.mark.skipif(not _kernels.have_openmp(), reason="ce was built without OpenMP")


def _run(code, *args, **env):
    """Run `python -c code` (or `python *args`) in a fresh interpreter with `env` added;
    OMP_NUM_THREADS (and the other *_NUM_THREADS) unset unless given."""
    # no *_NUM_THREADS from the parent: dask.distributed, for one, sets MKL_NUM_THREADS=1
    # and friends in its process, and torch applies those to OpenMP at import
    full = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    full.update(env)
    cmd = [sys.executable, *args] if args else [sys.executable, "-c", textwrap.dedent(code)]
    proc = subprocess.run(cmd, env=full, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _problem(n=512, c=1000):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, c)).astype(np.float32), rng.integers(0, c, n)


@needs_openmp
@pytest.mark.parametrize("n", ["1", "3"])
def test_omp_num_threads(n):
    assert _run("import ce._kernels as k; print(k.max_threads())", OMP_NUM_THREADS=n).strip() == n


@needs_openmp
def test_threadpool_limits():
    before = _kernels.max_threads()
    with threadpoolctl.threadpool_limits(limits=1):
        assert _kernels.max_threads() == 1
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert _kernels.max_threads() == 1
    assert _kernels.max_threads() == before


@needs_openmp
def test_threadpoolctl_lists_an_openmp_runtime():
    info = json.loads(_run(None, "-m", "threadpoolctl", "-i", "ce"))
    # numpy's BLAS uses pthreads: an OpenMP entry after importing ce alone is ce's runtime
    assert any(entry["user_api"] == "openmp" for entry in info), info


def test_results_do_not_depend_on_the_limit():
    x, y = _problem()
    loss, grad = ce.cross_entropy_with_grad(x, y)
    with threadpoolctl.threadpool_limits(limits=1):
        loss1, grad1 = ce.cross_entropy_with_grad(x, y)
    assert loss1 == loss and np.array_equal(grad1, grad)  # bitwise, as the contract says


CHECK = """
    import numpy as np
    import ce
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 1000))
    y = rng.integers(0, 1000, 512)
    m = x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
    expected = np.mean(lse - x[np.arange(512), y])
    assert np.isclose(ce.cross_entropy(x, y), expected, rtol=1e-12, atol=0)
    assert np.isclose(ce.cross_entropy(x.astype(np.float32), y), expected, rtol=1e-5, atol=0)
    print("ok", ce._kernels.max_threads())
"""


@pytest.mark.parametrize("first", ["torch", "sklearn"])
@pytest.mark.parametrize("order", ["ce first", "other first"])
def test_import_orders(first, order):
    pytest.importorskip(first)
    other = f"import {first}\n"
    if first == "torch":
        other += "import torch.nn.functional as F\n"
    else:
        other += "import sklearn.ensemble\n"  # loads scikit-learn's OpenMP runtime
    head = "import ce\n" + other if order == "ce first" else other + "import ce\n"
    code = head + textwrap.dedent(CHECK)
    if first == "torch":  # also run PyTorch's own OpenMP kernels and ce's adapter side by side
        code += textwrap.dedent("""
            import ce.torch
            xt = torch.from_numpy(x).requires_grad_()
            xr = torch.from_numpy(x).requires_grad_()
            yt = torch.from_numpy(y)
            ce.torch.cross_entropy(xt, yt).backward()
            F.cross_entropy(xr, yt).backward()
            assert torch.allclose(xt.grad, xr.grad, rtol=1e-10, atol=1e-14)
        """)
    assert _run(code, OMP_NUM_THREADS="2").startswith("ok 2")
