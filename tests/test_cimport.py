"""The C-level API: a downstream Cython module cimports ce's kernels from the installed ce.

The module is written to a temporary directory, compiled against the installed
package's _kernels.pxd (never the source tree's, unless that is what is
installed) and its results are compared with the Python API.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest

import ce

pytest.importorskip("Cython", reason="Cython is needed to build a downstream module")
pytest.importorskip("setuptools", reason="setuptools is needed to build a downstream module")

DOWNSTREAM = textwrap.dedent("""
    # cython: language_level=3, boundscheck=False, wraparound=False
    from libc.stdint cimport int64_t
    from ce._kernels cimport (ce_forward_f32, ce_forward_f64, ce_fused_f32, ce_fused_f64,
                              ce_logsumexp_f32, ce_logsumexp_f64, ce_labels_valid)
    import numpy as np

    def labels_valid(const int64_t[::1] y, Py_ssize_t n_classes, int64_t ignore_index):
        cdef double total = 0.0
        cdef Py_ssize_t bad
        with nogil:
            bad = ce_labels_valid(&y[0], y.shape[0], n_classes, ignore_index, &total)
        return bad, total

    def forward_f64(const double[:, :] x, const int64_t[::1] y, int64_t ignore_index, int n_threads):
        # rows may be strided (a column slice): the class stride must be 1
        cdef double[::1] loss = np.empty(x.shape[0]), lse = np.empty(x.shape[0])
        cdef double total
        with nogil:
            total = ce_forward_f64(&x[0, 0], x.shape[0], x.shape[1], x.strides[0] // 8, &y[0],
                                   ignore_index, &loss[0], &lse[0], n_threads)
        return total, np.asarray(loss), np.asarray(lse)

    def forward_f32(const float[:, ::1] x, const int64_t[::1] y, int64_t ignore_index):
        cdef double total
        with nogil:
            total = ce_forward_f32(&x[0, 0], x.shape[0], x.shape[1], x.shape[1], &y[0],
                                   ignore_index, NULL, NULL, 0)
        return total

    def fused_f64(const double[:, ::1] x, const int64_t[::1] y, int64_t ignore_index, double scale):
        cdef double[:, ::1] g = np.empty((x.shape[0], x.shape[1]))
        cdef double[::1] lse = np.empty(x.shape[0])
        cdef double total
        with nogil:
            total = ce_fused_f64(&x[0, 0], x.shape[0], x.shape[1], x.shape[1], &y[0], ignore_index,
                                 scale, &g[0, 0], g.shape[1], &lse[0], 0)
        return total, np.asarray(g), np.asarray(lse)

    def fused_f32(const float[:, ::1] x, const int64_t[::1] y, int64_t ignore_index, double scale):
        cdef float[:, ::1] g = np.empty((x.shape[0], x.shape[1]), dtype=np.float32)
        cdef double total
        with nogil:
            total = ce_fused_f32(&x[0, 0], x.shape[0], x.shape[1], x.shape[1], &y[0], ignore_index,
                                 scale, &g[0, 0], g.shape[1], NULL, 1)
        return total, np.asarray(g)

    def logsumexp_f64(const double[:, ::1] x):
        cdef double[::1] out = np.empty(x.shape[0])
        cdef int status
        with nogil:
            status = ce_logsumexp_f64(&x[0, 0], x.shape[0], x.shape[1], x.shape[1], &out[0], 0)
        return status, np.asarray(out)

    def logsumexp_f32(const float[:, ::1] x):
        cdef double[::1] out = np.empty(x.shape[0])
        cdef int status
        with nogil:
            status = ce_logsumexp_f32(&x[0, 0], x.shape[0], x.shape[1], x.shape[1], &out[0], 0)
        return status, np.asarray(out)
""")

SETUP = textwrap.dedent("""
    import sys
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    include_path, include_dirs, cflags = sys.argv[1], sys.argv[2:4], sys.argv[4:]
    ext = Extension("ce_downstream", ["ce_downstream.pyx"], include_dirs=include_dirs,
                    extra_compile_args=cflags)
    setup(ext_modules=cythonize([ext], include_path=[include_path], quiet=True),
          script_args=["build_ext", "--inplace"])
""")


def _have_compiler():
    if sys.platform == "win32":
        return True  # MSVC is found by setuptools itself; a failed build says so below
    cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc")
    return shutil.which(cc.split()[0]) is not None


@pytest.fixture(scope="module")
def downstream(tmp_path_factory):
    if not _have_compiler():
        pytest.skip("no C compiler to build a downstream module")
    tmp = tmp_path_factory.mktemp("downstream")
    (tmp / "ce_downstream.pyx").write_text(DOWNSTREAM)
    (tmp / "setup.py").write_text(SETUP)
    pkg_dir = os.path.dirname(ce.__file__)  # the installed ce: _kernels.pxd (and its headers)
    cflags = [] if sys.platform == "win32" else ["-O1", "-w"]
    cmd = [sys.executable, "setup.py", os.path.dirname(pkg_dir), np.get_include(), pkg_dir, *cflags]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        if sys.platform == "win32" and "Microsoft Visual C++" in proc.stderr + proc.stdout:
            pytest.skip("no C compiler (MSVC) to build a downstream module")
        raise AssertionError(f"building the downstream module failed:\n{proc.stdout}\n{proc.stderr}")
    path = next(p for p in tmp.iterdir() if p.name.startswith("ce_downstream.") and p.suffix in (".so", ".pyd"))
    spec = importlib.util.spec_from_file_location("ce_downstream", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _problem(dtype, n=300, c=37, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n)
    y[::7] = -100
    return x, y


def test_labels_valid(downstream):
    _, y = _problem(np.float64)
    bad, total = downstream.labels_valid(y, 37, -100)
    assert bad == -1 and total == np.count_nonzero(y != -100)
    y = y.copy()
    y[5] = 37
    assert downstream.labels_valid(y, 37, -100)[0] == 5


def test_forward_f64(downstream):
    x, y = _problem(np.float64)
    total, loss, lse = downstream.forward_f64(x, y, -100, 0)
    np.testing.assert_allclose(total, ce.cross_entropy(x, y, reduction="sum"), rtol=1e-13)
    np.testing.assert_allclose(loss, ce.cross_entropy(x, y, reduction="none"), rtol=1e-13)
    np.testing.assert_allclose(lse, ce.logsumexp(x), rtol=1e-13)
    assert total == downstream.forward_f64(x, y, -100, 1)[0]  # same bits on one thread


def test_forward_strided_rows(downstream):
    x, y = _problem(np.float64)
    wide = np.zeros((x.shape[0], 50))
    wide[:, :37] = x
    total = downstream.forward_f64(wide[:, :37], y, -100, 0)[0]
    np.testing.assert_allclose(total, ce.cross_entropy(x, y, reduction="sum"), rtol=1e-13)


def test_forward_f32(downstream):
    x, y = _problem(np.float32)
    np.testing.assert_allclose(downstream.forward_f32(x, y, -100),
                               ce.cross_entropy(x.astype(np.float64), y, reduction="sum"), rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused(downstream, dtype):
    x, y = _problem(dtype)
    count = np.count_nonzero(y != -100)
    if dtype == np.float64:
        total, g, lse = downstream.fused_f64(x, y, -100, 1.0 / count)
        np.testing.assert_allclose(lse, ce.logsumexp(x), rtol=1e-13)
        rtol = 1e-12
    else:
        total, g = downstream.fused_f32(x, y, -100, 1.0 / count)
        rtol = 1e-5
    np.testing.assert_allclose(total / count, ce.cross_entropy(x, y), rtol=rtol)
    np.testing.assert_allclose(g, ce.cross_entropy_grad(x, y), rtol=rtol, atol=rtol / count)
    assert not g[::7].any()  # ignored rows have a zero gradient


def test_logsumexp(downstream):
    x, _ = _problem(np.float64)
    status, lse = downstream.logsumexp_f64(x)
    assert status == 0
    np.testing.assert_allclose(lse, ce.logsumexp(x), rtol=1e-13)
    status, lse = downstream.logsumexp_f32(x.astype(np.float32))
    assert status == 0
    np.testing.assert_allclose(lse, ce.logsumexp(x.astype(np.float32)), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_infinite_rows(downstream, dtype):
    """Rows of -inf only, with +inf, with NaN: what ce.logsumexp (and scipy) give."""
    inf, nan = np.inf, np.nan
    x = np.array([[-inf, -inf, -inf], [1.0, inf, 2.0], [inf, nan, 0.0], [-inf, 0.0, -inf],
                  [inf, inf, -inf], [0.5, -1.0, 2.0]], dtype=dtype)
    status, lse = (downstream.logsumexp_f32 if dtype == np.float32 else downstream.logsumexp_f64)(x)
    assert status == 0
    np.testing.assert_array_equal(np.asarray(lse)[:5], [-inf, inf, nan, 0.0, inf])
    np.testing.assert_allclose(np.asarray(lse), ce.logsumexp(x), rtol=1e-6)
