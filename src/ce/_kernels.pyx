# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of ce: one call runs one problem over fixed blocks of rows.

The arithmetic is in _ce_core.h / _ce_row.h (static inline C that gcc
vectorizes, built for three x86-64 levels and picked at run time). This
module fills the C problem struct from arrays the Python layer has already
validated, releases the GIL and runs the blocks in a prange. The block size
depends on the shape only, so every sum is bitwise the same for any number of
threads.
"""
cimport cython
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset, memcpy
from libc.math cimport NAN

cnp.import_array()

import numpy as np

cdef extern from "numpy/arrayobject.h":
    object PyArray_Scalar(void *data, cnp.PyArray_Descr *descr, object base)

cdef extern from "_ce_core.h" nogil:
    ctypedef struct ce_view:
        char *data
        Py_ssize_t s_outer, s_class, s_inner

    ctypedef struct ce_problem:
        Py_ssize_t n_rows, n_classes, inner, block_rows
        int mode, target_kind, from_logits
        int dtype
        ce_view x, t, g
        const int64_t *labels
        int64_t ignore_index
        const void *class_weight
        double class_weight_sum
        const double *row_weight
        const double *row_grad
        double grad_scale, smoothing, z_loss, softcap, clip
        const double *lse_in
        double *row_loss
        double *row_lse
        int64_t *row_argmax
        int64_t *row_rank
        double *block_loss
        int failed

    int CE_MODE_FORWARD, CE_MODE_FUSED, CE_MODE_GRAD_LSE, CE_MODE_SOFTMAX, CE_MODE_LOG_SOFTMAX
    int CE_TARGET_NONE, CE_TARGET_INDEX, CE_TARGET_DENSE
    int ce_max_threads()
    int ce_have_openmp()
    const char *ce_simd_level()
    double ce_probe_read(const double *a, Py_ssize_t n)
    void ce_probe_write(double *a, Py_ssize_t n, double v)
    void ce_block_f32(ce_problem *p, Py_ssize_t b)
    void ce_block_f64(ce_problem *p, Py_ssize_t b)
    int CE_DTYPE_F32, CE_DTYPE_F64, CE_DTYPE_F16, CE_DTYPE_BF16
    void ce_block_any(ce_problem *p, Py_ssize_t b)
    int ce_half_portable
    Py_ssize_t ce_check_labels(const int64_t *labels, Py_ssize_t n, Py_ssize_t n_classes,
                               int64_t ignore_index, const double *class_weight,
                               const double *row_weight, double *total, Py_ssize_t *count)

MODE_FORWARD = CE_MODE_FORWARD
MODE_FUSED = CE_MODE_FUSED
MODE_GRAD_LSE = CE_MODE_GRAD_LSE
MODE_SOFTMAX = CE_MODE_SOFTMAX
MODE_LOG_SOFTMAX = CE_MODE_LOG_SOFTMAX
TARGET_NONE = CE_TARGET_NONE
TARGET_INDEX = CE_TARGET_INDEX
TARGET_DENSE = CE_TARGET_DENSE

# Below this many logits a parallel region costs more than it saves.
DEF PARALLEL_MIN_ELEMENTS = 32768
# Rows per block: about this many logits, at most MAX_BLOCK_ROWS rows.
DEF BLOCK_ELEMENTS = 16384
DEF MAX_BLOCK_ROWS = 256
# Class axis not last: logits per stripe of rows (fits in L2).
DEF STRIPE_ELEMENTS = 131072


# libgomp's thread pool does not survive fork(): a parallel region in the child of a
# process that already went parallel waits for ever. A forked child therefore runs
# ce on one thread (spawn / forkserver children are unaffected).
cdef int forked_child = 0


def _after_fork_in_child():
    global forked_child
    forked_child = 1


import os as _os
import sys as _sys
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)


def max_threads():
    """OpenMP's current thread limit (re-read on every call)."""
    return ce_max_threads()


def have_openmp():
    return bool(ce_have_openmp())


def simd_level():
    return ce_simd_level().decode()


def probe_bandwidth(str kind, double[::1] a, double[::1] b, int n_threads):
    """Touch the float64 buffers in parallel chunks: kind "read" sums a, "write"
    fills a, "copy" copies a into b. For the benchmark's bandwidth figures."""
    cdef Py_ssize_t n = a.shape[0], t, lo, hi, chunk
    cdef int threads = n_threads if n_threads > 0 else ce_max_threads()
    cdef int k = 0 if kind == "read" else (1 if kind == "write" else 2)
    cdef double total = 0.0
    if k == 2 and b.shape[0] < n:
        raise ValueError("b is shorter than a")
    chunk = (n + threads - 1) // threads
    for t in prange(threads, nogil=True, num_threads=threads, schedule="static"):
        lo = t * chunk
        hi = lo + chunk if lo + chunk < n else n
        if lo < hi:
            if k == 0:
                total += ce_probe_read(&a[lo], hi - lo)
            elif k == 1:
                ce_probe_write(&a[lo], hi - lo, 1.0)
            else:
                memcpy(&b[lo], &a[lo], (hi - lo) * sizeof(double))
    return total


cdef inline Py_ssize_t block_rows_for(Py_ssize_t n_classes, Py_ssize_t inner) noexcept nogil:
    """Rows per block, a function of the shape only (so of no thread count).
    Row-major rows: about BLOCK_ELEMENTS logits a block. Class axis not last:
    wider stripes, since each class loop runs across the block's rows."""
    cdef Py_ssize_t c = n_classes if n_classes > 0 else 1
    cdef Py_ssize_t rows = (BLOCK_ELEMENTS if inner == 1 else STRIPE_ELEMENTS) // c
    cdef Py_ssize_t low = 1 if inner == 1 else 16
    if rows < low:
        return low
    if rows > MAX_BLOCK_ROWS:
        return MAX_BLOCK_ROWS
    return rows


cdef int ce_solve(ce_problem *p, int is_double, int n_threads) noexcept nogil:
    """Run every block of p; returns 0, or -1 when scratch memory ran out."""
    cdef Py_ssize_t n_blocks = (p.n_rows + p.block_rows - 1) // p.block_rows
    cdef Py_ssize_t b
    cdef int threads = n_threads if n_threads > 0 else ce_max_threads()
    if forked_child:
        threads = 1
    if threads > n_blocks:
        threads = <int>n_blocks
    if is_double and p.dtype == CE_DTYPE_F32:  # callers that set is_double only
        p.dtype = CE_DTYPE_F64
    if threads <= 1 or p.n_rows * p.n_classes < PARALLEL_MIN_ELEMENTS:
        for b in range(n_blocks):
            ce_block_any(p, b)
    else:
        for b in prange(n_blocks, num_threads=threads, schedule="static"):
            ce_block_any(p, b)
    return -1 if p.failed else 0


cdef inline void set_view(ce_view *v, cnp.ndarray a):
    """(outer, C, inner) array -> view with element strides."""
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a)
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(a)
    v.data = <char *>cnp.PyArray_DATA(a)
    v.s_outer = st[0] // item
    v.s_class = st[1] // item
    v.s_inner = st[2] // item


cdef inline const void *data_or_null(object a):
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


def check_labels(cnp.ndarray labels, Py_ssize_t n_classes, int64_t ignore_index,
                 object class_weight, object row_weight):
    """Validate int64 labels; returns (first bad position or -1, total weight, count)."""
    cdef double total = 0.0
    cdef Py_ssize_t count = 0, bad
    cdef const int64_t *lab = <const int64_t *>cnp.PyArray_DATA(labels)
    cdef const double *cw = <const double *>data_or_null(class_weight)
    cdef const double *rw = <const double *>data_or_null(row_weight)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(labels)
    with nogil:
        bad = ce_check_labels(lab, n, n_classes, ignore_index, cw, rw, &total, &count)
    return bad, total, count


cdef inline void init_rows(ce_problem *p, char *data, Py_ssize_t n_rows, Py_ssize_t n_classes,
                           Py_ssize_t row_stride, int mode, int target_kind) noexcept nogil:
    """A plain row-major problem for the C-level API; everything optional off."""
    memset(p, 0, sizeof(ce_problem))
    p.n_rows = n_rows
    p.n_classes = n_classes
    p.inner = 1
    p.block_rows = block_rows_for(n_classes, 1)
    p.mode = mode
    p.target_kind = target_kind
    p.from_logits = 1
    p.x.data = data
    p.x.s_outer = row_stride
    p.x.s_class = 1
    p.class_weight_sum = <double>n_classes
    p.grad_scale = 1.0


cdef double solve_summed(ce_problem *p, int is_double, int n_threads) noexcept nogil:
    """ce_solve plus the ordered sum of the block partials (NaN when out of memory)."""
    cdef Py_ssize_t n_blocks = (p.n_rows + p.block_rows - 1) // p.block_rows
    cdef Py_ssize_t b
    cdef double total = 0.0
    if p.n_rows <= 0:
        return 0.0
    p.block_loss = <double *>malloc(n_blocks * sizeof(double))
    if p.block_loss == NULL:
        return NAN
    if ce_solve(p, is_double, n_threads) != 0:
        total = NAN
    else:
        for b in range(n_blocks):
            total += p.block_loss[b]
    free(p.block_loss)
    p.block_loss = NULL
    return total


cdef Py_ssize_t ce_labels_valid(const int64_t *labels, Py_ssize_t n_rows, Py_ssize_t n_classes,
                                int64_t ignore_index, double *total) noexcept nogil:
    cdef Py_ssize_t count = 0
    return ce_check_labels(labels, n_rows, n_classes, ignore_index, NULL, NULL, total, &count)


cdef double ce_forward_f32(const float *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                           Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                           double *loss_out, double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>logits, n_rows, n_classes, row_stride, CE_MODE_FORWARD, CE_TARGET_INDEX)
    p.labels = labels
    p.ignore_index = ignore_index
    p.row_loss = loss_out
    p.row_lse = lse_out
    return solve_summed(&p, 0, n_threads)


cdef double ce_forward_f64(const double *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                           Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                           double *loss_out, double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>logits, n_rows, n_classes, row_stride, CE_MODE_FORWARD, CE_TARGET_INDEX)
    p.labels = labels
    p.ignore_index = ignore_index
    p.row_loss = loss_out
    p.row_lse = lse_out
    return solve_summed(&p, 1, n_threads)


cdef double ce_fused_f32(const float *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                         Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                         double grad_scale, float *grad, Py_ssize_t grad_row_stride,
                         double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>logits, n_rows, n_classes, row_stride, CE_MODE_FUSED, CE_TARGET_INDEX)
    p.labels = labels
    p.ignore_index = ignore_index
    p.grad_scale = grad_scale
    p.g.data = <char *>grad
    p.g.s_outer = grad_row_stride
    p.g.s_class = 1
    p.row_lse = lse_out
    return solve_summed(&p, 0, n_threads)


cdef double ce_fused_f64(const double *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                         Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                         double grad_scale, double *grad, Py_ssize_t grad_row_stride,
                         double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>logits, n_rows, n_classes, row_stride, CE_MODE_FUSED, CE_TARGET_INDEX)
    p.labels = labels
    p.ignore_index = ignore_index
    p.grad_scale = grad_scale
    p.g.data = <char *>grad
    p.g.s_outer = grad_row_stride
    p.g.s_class = 1
    p.row_lse = lse_out
    return solve_summed(&p, 1, n_threads)


cdef int ce_logsumexp_f32(const float *x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                          Py_ssize_t row_stride, double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>x, n_rows, n_classes, row_stride, CE_MODE_FORWARD, CE_TARGET_NONE)
    p.row_lse = lse_out
    return 0 if solve_summed(&p, 0, n_threads) == 0.0 else -1


cdef int ce_logsumexp_f64(const double *x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                          Py_ssize_t row_stride, double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>x, n_rows, n_classes, row_stride, CE_MODE_FORWARD, CE_TARGET_NONE)
    p.row_lse = lse_out
    return 0 if solve_summed(&p, 1, n_threads) == 0.0 else -1


cdef object plain_call(object logits, object target, object reduction, object ignore_index,
                       object smoothing, object grad_output, bint fused):
    """The common call, argument checks and all, without the Python layer:
    C-ordered 2-D float logits, 1-D int64 labels, reduction mean/sum/none,
    an int ignore_index, a float label_smoothing in [0, 1], a float grad_output;
    everything else at its default. Returns None for anything else (or a bad
    label), so the general path does the work and raises every error. Small
    problems keep the GIL: releasing it costs more than the work."""
    cdef cnp.ndarray x, t, g = None, rows = None
    cdef ce_problem p
    cdef double total = 0.0, count_w = 0.0, eps, go
    cdef double stack_partial[64]
    cdef double *partial
    cdef Py_ssize_t n, c, bad, count = 0, n_blocks, b
    cdef int typenum, status, red, dtype
    cdef int64_t ignore
    cdef float loss32
    cdef double loss64
    if type(logits) is not cnp.ndarray or type(target) is not cnp.ndarray:
        return None
    if type(smoothing) is not float or type(grad_output) is not float or type(ignore_index) is not int:
        return None
    eps = smoothing
    go = grad_output
    if not (0.0 <= eps <= 1.0) or not (-9223372036854775807 <= ignore_index <= 9223372036854775807):
        return None
    ignore = ignore_index
    if type(reduction) is not str:
        return None
    if reduction == "mean":
        red = 0
    elif reduction == "sum":
        red = 1
    elif reduction == "none":
        red = 2
    else:
        return None
    if red == 2 and fused:
        return None  # "none" with a gradient: the general path handles grad_output arrays
    x = <cnp.ndarray>logits
    t = <cnp.ndarray>target
    if cnp.PyArray_NDIM(x) != 2 or cnp.PyArray_NDIM(t) != 1:
        return None
    typenum = cnp.PyArray_TYPE(x)
    dtype = dtype_code(x)
    if dtype < 0 or cnp.PyArray_TYPE(t) != cnp.NPY_INT64:
        return None
    if not cnp.PyArray_ISCARRAY_RO(x) or not cnp.PyArray_ISCARRAY_RO(t):
        return None
    n = cnp.PyArray_DIM(x, 0)
    c = cnp.PyArray_DIM(x, 1)
    if n == 0 or c == 0 or cnp.PyArray_DIM(t, 0) != n:
        return None
    bad = ce_check_labels(<const int64_t *>cnp.PyArray_DATA(t), n, c, ignore, NULL, NULL,
                          &count_w, &count)
    if bad >= 0:
        return None
    init_rows(&p, <char *>cnp.PyArray_DATA(x), n, c, c, CE_MODE_FORWARD, CE_TARGET_INDEX)
    p.labels = <const int64_t *>cnp.PyArray_DATA(t)
    p.ignore_index = ignore
    p.smoothing = eps
    p.dtype = dtype
    if red == 2:
        rows = cnp.PyArray_EMPTY(1, cnp.PyArray_DIMS(x), cnp.NPY_DOUBLE, 0)
        p.row_loss = <double *>cnp.PyArray_DATA(rows)
    if fused:
        g = cnp.PyArray_EMPTY(2, cnp.PyArray_DIMS(x), typenum, 0) if dtype != CE_DTYPE_BF16 \
            else np.empty((n, c), dtype=x.dtype)
        p.mode = CE_MODE_FUSED
        p.g.data = <char *>cnp.PyArray_DATA(g)
        p.g.s_outer = c
        p.g.s_class = 1
        if red == 0:
            p.grad_scale = go / count_w if count > 0 else 0.0
        else:
            p.grad_scale = go
    n_blocks = (n + p.block_rows - 1) // p.block_rows
    if n_blocks <= 64:
        partial = &stack_partial[0]
    else:
        partial = <double *>malloc(n_blocks * sizeof(double))
    if partial == NULL:
        raise MemoryError()
    p.block_loss = partial
    if n * c < PARALLEL_MIN_ELEMENTS:
        status = ce_solve(&p, typenum == cnp.NPY_DOUBLE, 1)
    else:
        with nogil:
            status = ce_solve(&p, typenum == cnp.NPY_DOUBLE, 0)
    for b in range(n_blocks):
        total += partial[b]
    if partial != &stack_partial[0]:
        free(partial)
    if status != 0:
        raise MemoryError("ce: out of memory for a scratch row")
    if red == 2:
        return rows if typenum == cnp.NPY_DOUBLE else rows.astype(x.dtype)
    loss64 = total / count_w if red == 0 else total   # 0 / 0 = NaN: a mean over nothing
    if dtype >= CE_DTYPE_F16:  # float16 / bfloat16: rounded once from the float64 value
        loss = x.dtype.type(loss64)
    elif typenum == cnp.NPY_FLOAT:
        loss32 = <float>loss64
        loss = PyArray_Scalar(&loss32, cnp.PyArray_DESCR(x), None)
    else:
        loss = PyArray_Scalar(&loss64, cnp.PyArray_DESCR(x), None)
    return (loss, g) if fused else loss


def plain_loss(logits, target, reduction, ignore_index, label_smoothing):
    return plain_call(logits, target, reduction, ignore_index, label_smoothing, 1.0, False)


def plain_loss_and_grad(logits, target, reduction, ignore_index, label_smoothing, grad_output):
    return plain_call(logits, target, reduction, ignore_index, label_smoothing, grad_output, True)


cdef int dtype_code(cnp.ndarray x):
    """The ce_dtype of x (bfloat16: ml_dtypes', the only 2-byte user dtype taken), or -1."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum == cnp.NPY_FLOAT:
        return CE_DTYPE_F32
    if typenum == cnp.NPY_DOUBLE:
        return CE_DTYPE_F64
    if typenum == cnp.NPY_FLOAT16:
        return CE_DTYPE_F16
    if is_bfloat16(x.dtype):
        return CE_DTYPE_BF16
    return -1


_bfloat16_type = None


def is_bfloat16(dt):
    """True for ml_dtypes.bfloat16 (an array of it exists only once ml_dtypes is imported,
    so ce never imports it)."""
    global _bfloat16_type
    if _bfloat16_type is None:
        module = _sys.modules.get("ml_dtypes")
        if module is None:
            return False
        _bfloat16_type = module.bfloat16
    return dt.type is _bfloat16_type


def _set_half_portable(bint on):
    """Tests: use the portable float16 conversions even where F16C exists."""
    global ce_half_portable
    ce_half_portable = on


def run(int mode, cnp.ndarray x, int target_kind, object t, object g, object labels,
        int64_t ignore_index, object class_weight, double class_weight_sum,
        object row_weight, object row_grad, double grad_scale, double smoothing,
        double z_loss, double softcap, bint from_logits, object lse_in,
        object row_loss, object row_lse, object row_argmax, object row_rank,
        int n_threads, double clip=0.0):
    """Run one problem. x, t, g are (outer, C, inner) arrays of one float dtype;
    labels int64[N]; class_weight of x's dtype [C]; row_* float64 / int64 [N],
    all C-contiguous (the Python layer guarantees it). clip: the probability
    floor for from_logits=False (0: the dtype's eps). Returns the loss sum."""
    cdef ce_problem p
    cdef cnp.npy_intp *shape
    cdef int is_double = cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE
    cdef int dtype = dtype_code(x)
    # the Python layer guarantees these; checked again because a wrong pointer here
    # is a crash, not an exception
    for a, dims in ((x, 3), (t, 3), (g, 3), (labels, 1), (row_loss, 1), (row_lse, 1)):
        if a is not None and (type(a) is not cnp.ndarray or cnp.PyArray_NDIM(<cnp.ndarray>a) != dims):
            raise ValueError(f"ce._kernels.run: expected a {dims}-d ndarray")
    if dtype < 0:
        raise TypeError("ce._kernels.run: logits must be float16, bfloat16, float32 or float64")
    shape = cnp.PyArray_DIMS(x)
    cdef Py_ssize_t n_blocks, b
    cdef double total = 0.0
    cdef double *partial
    cdef int status
    p.n_rows = shape[0] * shape[2]
    p.n_classes = shape[1]
    p.inner = shape[2]
    p.block_rows = block_rows_for(p.n_classes, p.inner)
    p.mode = mode
    p.target_kind = target_kind
    p.from_logits = from_logits
    p.dtype = dtype
    set_view(&p.x, x)
    p.t.data = NULL
    p.g.data = NULL
    if t is not None:
        set_view(&p.t, <cnp.ndarray>t)
    if g is not None:
        set_view(&p.g, <cnp.ndarray>g)
    p.labels = <const int64_t *>data_or_null(labels)
    p.ignore_index = ignore_index
    p.class_weight = data_or_null(class_weight)
    p.class_weight_sum = class_weight_sum
    p.row_weight = <const double *>data_or_null(row_weight)
    p.row_grad = <const double *>data_or_null(row_grad)
    p.grad_scale = grad_scale
    p.smoothing = smoothing
    p.z_loss = z_loss
    p.softcap = softcap
    p.clip = clip
    p.lse_in = <const double *>data_or_null(lse_in)
    p.row_loss = <double *>data_or_null(row_loss)
    p.row_lse = <double *>data_or_null(row_lse)
    p.row_argmax = <int64_t *>data_or_null(row_argmax)
    p.row_rank = <int64_t *>data_or_null(row_rank)
    p.failed = 0
    if p.n_rows == 0:
        return 0.0
    n_blocks = (p.n_rows + p.block_rows - 1) // p.block_rows
    partial = <double *>malloc(n_blocks * sizeof(double))
    if partial == NULL:
        raise MemoryError()
    p.block_loss = partial
    with nogil:
        status = ce_solve(&p, is_double, n_threads)
        for b in range(n_blocks):
            total += partial[b]
    free(partial)
    if status != 0:
        raise MemoryError("ce: out of memory for a scratch row")
    return total
