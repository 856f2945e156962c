# Cython directives: COMPILER_DIRECTIVES in setup.py (their one source).
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
from cython.parallel cimport prange, threadid
from libc.stdint cimport int64_t, uint16_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy
from libc.math cimport NAN, INFINITY
from cpython.long cimport PyLong_AsLongLongAndOverflow

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

    # the enums are defined in _ce_core.h only; these are declarations of names
    int CE_MODE_FORWARD, CE_MODE_FUSED, CE_MODE_GRAD_LSE, CE_MODE_SOFTMAX, CE_MODE_LOG_SOFTMAX
    int CE_TARGET_NONE, CE_TARGET_INDEX, CE_TARGET_DENSE
    # rows per block of the class-major kernel: the most rows any block may have
    enum: CE_SMALL_ROWS
    int ce_max_threads()
    int ce_have_openmp()
    const char *ce_simd_level()
    int CE_SIMD_BASELINE, CE_SIMD_AVX2, CE_SIMD_AVX512
    int ce_simd_supported(int level)
    int ce_simd_set(int level)
    int ce_simd_now()
    int ce_simd_forced
    # the kernels' fixed sizes (thresholds of the dispatch, for the tests)
    enum: CE_TILE_MAX_C, CE_CHUNK, CE_TILE, CE_LANES, CE_ROW_VECTORS, CE_HALF_TILE, CE_EXP_WIDE_MIN
    double ce_probe_read(const double *a, Py_ssize_t n)
    int ce_probe_write(double *a, Py_ssize_t n, double v)
    int ce_block_f32(ce_problem *p, Py_ssize_t b)
    int ce_block_f64(ce_problem *p, Py_ssize_t b)
    int CE_DTYPE_F32, CE_DTYPE_F64, CE_DTYPE_F16, CE_DTYPE_BF16
    int ce_block_any(ce_problem *p, Py_ssize_t b)
    # few wide rows: classes split into segments (_ce_core.h)
    enum: CE_SPLIT_SEG, CE_SPLIT_MIN_C, CE_SPLIT_MAX_ROWS, CE_TILE_MAX_C_F64
    ctypedef struct ce_seg:
        pass
    Py_ssize_t ce_split_segments(Py_ssize_t n_classes)
    int ce_split_ok(const ce_problem *p)
    void ce_split_prepare_any(const ce_problem *p, ce_seg *segs)
    void ce_split_scan_any(const ce_problem *p, ce_seg *segs, Py_ssize_t item)
    void ce_split_merge_any(ce_problem *p, ce_seg *segs)
    void ce_split_apply_any(const ce_problem *p, ce_seg *segs, Py_ssize_t item)
    void ce_split_finish_any(ce_problem *p, ce_seg *segs)
    int ce_half_portable
    void ce_half_store(uint16_t *dst, Py_ssize_t stride, const float *src, Py_ssize_t n, int bf)
    double ce_weight_sum(const double *w, Py_ssize_t n)
    Py_ssize_t ce_check_labels(const int64_t *labels, Py_ssize_t n, Py_ssize_t n_classes,
                               int64_t ignore_index, const double *class_weight,
                               const double *row_weight, double *total, Py_ssize_t *count)

cdef extern from "_ce_score.h" nogil:
    enum: CE_SCORE_MAX_K, CE_EXACT_LIMBS
    ctypedef struct ce_exact:
        int64_t limb[68]
        int special
    ctypedef struct ce_score_acc:
        ce_exact loss
        int64_t correct
        int64_t hits[16]
        int64_t failed
    void ce_score_block(const ce_problem *p, Py_ssize_t b, const int64_t *ks, int nk, int want_rank,
                        ce_score_acc *acc)
    void ce_score_merge(ce_score_acc *a, const ce_score_acc *b)

# Below this many logits a parallel region costs more than it saves (and the GIL is kept).
# Measured (2 threads, AVX-512): 256 x 100, 1000 x 10 and 32 x 1000 (two blocks and more) ran
# 1.24-1.59x faster in parallel than on one thread.
DEF PARALLEL_MIN_ELEMENTS = 16384
PARALLEL_MIN_LOGITS = PARALLEL_MIN_ELEMENTS   # for Python (tests that need real threads)
# Rows per block: about this many logits, at most CE_SMALL_ROWS rows.
DEF BLOCK_ELEMENTS = 16384
# Class axis not last: logits per stripe of rows (fits in L2).
DEF STRIPE_ELEMENTS = 131072
# Blocks whose partial sums fit on the stack (more: one malloc).
DEF STACK_BLOCKS = 64
# Labels past this many are checked without the GIL.
DEF LABEL_CHECK_NOGIL = 65536


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
    """The SIMD level the kernels run at (and whether CE_SIMD / _set_simd chose it)."""
    level = ce_simd_level().decode()
    return level + " (set by CE_SIMD or _set_simd)" if ce_simd_forced else level


# SIMD levels by name: the x86-64 builds of every block function. A build
# without runtime dispatch (CE_NO_DISPATCH, clang, not x86-64) has only "baseline".
SIMD_LEVELS = {"baseline": CE_SIMD_BASELINE, "avx2": CE_SIMD_AVX2, "avx512": CE_SIMD_AVX512}


def simd_levels():
    """The SIMD levels this CPU and build can run, lowest first."""
    return [name for name, code in SIMD_LEVELS.items() if ce_simd_supported(code)]


def _set_simd(level):
    """Run the kernels at `level` ("baseline", "avx2", "avx512"; None or "auto":
    the best this CPU has) from now on; returns the previous setting (None when
    it was the automatic choice), so that _set_simd(previous) restores it.
    Raises ValueError for another name and RuntimeError when this CPU or build
    lacks the level. For tests and benchmarks: not while a ce call is running."""
    cdef int code = -1
    previous = None
    if ce_simd_forced:
        previous = [name for name, c in SIMD_LEVELS.items() if c == ce_simd_now()][0]
    if level is not None and level != "auto":
        if level not in SIMD_LEVELS:
            raise ValueError(f"ce: unknown SIMD level {level!r} (one of auto, "
                             f"{', '.join(SIMD_LEVELS)})")
        code = SIMD_LEVELS[level]
    if ce_simd_set(code) != 0:
        raise RuntimeError(f"ce: SIMD level {level!r} is not available on this CPU / build "
                           f"(available: {', '.join(simd_levels())})")
    return previous


def _thresholds():
    """The sizes at which the kernels change strategy (class counts, rows, elements)."""
    return {"CE_TILE_MAX_C": CE_TILE_MAX_C, "CE_SMALL_ROWS": CE_SMALL_ROWS, "CE_CHUNK": CE_CHUNK,
            "CE_TILE": CE_TILE, "CE_LANES": CE_LANES, "CE_HALF_TILE": CE_HALF_TILE,
            # the row kernel steps by 1, 2 or CE_ROW_VECTORS 64-byte vectors (by the row's
            # length) and flushes its float lane sums every CE_ROW_VECTORS * CE_CHUNK elements
            "CE_ROW_VECTORS": CE_ROW_VECTORS,
            # the exp pass takes CE_ROW_VECTORS-vector steps from this row length up, else two
            "CE_EXP_WIDE_MIN": CE_EXP_WIDE_MIN,
            "BLOCK_ELEMENTS": BLOCK_ELEMENTS, "STRIPE_ELEMENTS": STRIPE_ELEMENTS,
            "PARALLEL_MIN_ELEMENTS": PARALLEL_MIN_ELEMENTS,
            # the class-major tile's class-count limit for float64 (CE_TILE_MAX_C: float32's,
            # and float16/bfloat16's); a problem of fewer than CE_SPLIT_MAX_ROWS rows of at least
            # CE_SPLIT_MIN_C classes has each row cut into segments of CE_SPLIT_SEG classes
            # (float32/float64 logits, index targets or none, no smoothing or soft cap,
            # classes contiguous)
            "CE_TILE_MAX_C_F64": CE_TILE_MAX_C_F64, "CE_SPLIT_MIN_C": CE_SPLIT_MIN_C,
            "CE_SPLIT_MAX_ROWS": CE_SPLIT_MAX_ROWS, "CE_SPLIT_SEG": CE_SPLIT_SEG}


if _os.environ.get("CE_SIMD", "") not in ("", "auto"):
    try:
        _set_simd(_os.environ["CE_SIMD"])
    except (ValueError, RuntimeError) as error:
        raise ImportError(f"CE_SIMD={_os.environ['CE_SIMD']!r}: {error}") from None


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
    if rows > CE_SMALL_ROWS:
        return CE_SMALL_ROWS
    return rows


cdef Py_ssize_t ce_solve(ce_problem *p, int n_threads) noexcept nogil:
    """Run every block of p; returns the number of blocks that failed (each block
    reports its own status: only a scratch allocation can fail)."""
    cdef Py_ssize_t n_blocks = (p.n_rows + p.block_rows - 1) // p.block_rows
    cdef Py_ssize_t b, failures = 0
    cdef int threads = n_threads if n_threads > 0 else ce_max_threads()
    if forked_child:
        threads = 1
    if ce_split_ok(p):
        return solve_split(p, threads, n_blocks)
    if threads > n_blocks:
        threads = <int>n_blocks
    if threads <= 1 or p.n_rows * p.n_classes < PARALLEL_MIN_ELEMENTS:
        for b in range(n_blocks):
            failures += ce_block_any(p, b) != 0
    else:
        for b in prange(n_blocks, num_threads=threads, schedule="static"):
            failures += ce_block_any(p, b) != 0
    return failures


cdef Py_ssize_t solve_split(ce_problem *p, int threads, Py_ssize_t n_blocks) noexcept nogil:
    """Few wide rows: a prange over (row, class segment) items, the merge in
    segment order, then (modes that write g) a second prange that scales each
    segment. Returns n_blocks (all failed) when the partials cannot be allocated."""
    cdef Py_ssize_t items = p.n_rows * ce_split_segments(p.n_classes)
    cdef ce_seg *segs = <ce_seg *>malloc(items * sizeof(ce_seg))
    if segs == NULL:
        return n_blocks
    if threads > items:
        threads = <int>items
    ce_split_prepare_any(p, segs)
    if p.mode == CE_MODE_GRAD_LSE:
        if p.block_loss != NULL:
            memset(p.block_loss, 0, n_blocks * sizeof(double))
    else:
        split_pass(p, segs, items, threads, False)
        ce_split_merge_any(p, segs)
    if p.mode != CE_MODE_FORWARD:
        split_pass(p, segs, items, threads, True)
        ce_split_finish_any(p, segs)
    free(segs)
    return 0


cdef void split_pass(ce_problem *p, ce_seg *segs, Py_ssize_t items, int threads,
                     bint apply) noexcept nogil:
    """The scan (or, apply: the scaling) of every (row, segment) item, one static chunk per thread."""
    cdef Py_ssize_t i
    for i in prange(items, num_threads=threads if threads > 1 else 1, schedule="static",
                    use_threads_if=threads > 1):
        if apply:
            ce_split_apply_any(p, segs, i)
        else:
            ce_split_scan_any(p, segs, i)


def score_counts(Call call not None, tuple ks):
    """The unweighted tally of ce.score in the kernel pass, without per-row arrays:
    (loss sum in units of 2^-1074, its non-finite flags, top-1 hits, [hits per k]),
    or None where it does not apply (sample weights, class axis not last, more than
    CE_SCORE_MAX_K values of k, or few wide rows, which split their classes instead).
    ks: ints >= 1 (capped to int64); a row counts when its label is not
    ignore_index and its loss is not NaN."""
    cdef ce_problem p = call.p
    cdef Py_ssize_t n_blocks, b, nk = len(ks), j
    cdef int64_t kv[CE_SCORE_MAX_K]
    cdef int threads, want_rank = 0
    cdef ce_score_acc *accs
    if (p.target_kind != CE_TARGET_INDEX or p.row_weight != NULL or p.inner != 1 or nk > CE_SCORE_MAX_K
            or (p.n_rows < CE_SPLIT_MAX_ROWS and p.n_classes >= CE_SPLIT_MIN_C)):
        return None
    for j in range(nk):
        kv[j] = ks[j]
        want_rank |= kv[j] > 1
    n_blocks = (p.n_rows + p.block_rows - 1) // p.block_rows
    threads = call.n_threads if call.n_threads > 0 else ce_max_threads()
    if forked_child or p.n_rows * p.n_classes < PARALLEL_MIN_ELEMENTS:
        threads = 1
    threads = <int>min(threads, max(n_blocks, 1))
    accs = <ce_score_acc *>calloc(threads, sizeof(ce_score_acc))
    if accs == NULL:
        raise MemoryError()
    with nogil:
        for b in prange(n_blocks, num_threads=threads, schedule="static", use_threads_if=threads > 1):
            ce_score_block(&p, b, kv, <int>nk, want_rank, &accs[threadid()])
        for j in range(1, threads):
            ce_score_merge(&accs[0], &accs[j])
    units = sum(int(accs[0].loss.limb[j]) << (32 * j) for j in range(CE_EXACT_LIMBS))
    result = (units, accs[0].loss.special, accs[0].correct,
              [accs[0].correct if kv[j] == 1 else accs[0].hits[j] for j in range(nk)])
    failed = accs[0].failed
    free(accs)
    if failed:
        raise MemoryError(f"ce: out of memory for a scratch row ({failed} blocks failed)")
    return result


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
                           Py_ssize_t row_stride, int mode, int target_kind, int dtype) noexcept nogil:
    """A plain row-major problem for the C-level API; everything optional off."""
    memset(p, 0, sizeof(ce_problem))
    p.dtype = dtype
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


cdef double solve_summed(ce_problem *p, int n_threads) noexcept nogil:
    """ce_solve plus the ordered sum of the block partials (NaN when out of memory)."""
    cdef Py_ssize_t n_blocks = (p.n_rows + p.block_rows - 1) // p.block_rows
    cdef Py_ssize_t b
    cdef double total = 0.0
    if p.n_rows <= 0:
        return 0.0
    p.block_loss = <double *>malloc(n_blocks * sizeof(double))
    if p.block_loss == NULL:
        return NAN
    if ce_solve(p, n_threads) != 0:
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
    init_rows(&p, <char *>logits, n_rows, n_classes, row_stride, CE_MODE_FORWARD, CE_TARGET_INDEX, CE_DTYPE_F32)
    p.labels = labels
    p.ignore_index = ignore_index
    p.row_loss = loss_out
    p.row_lse = lse_out
    return solve_summed(&p, n_threads)


cdef double ce_forward_f64(const double *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                           Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                           double *loss_out, double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>logits, n_rows, n_classes, row_stride, CE_MODE_FORWARD, CE_TARGET_INDEX, CE_DTYPE_F64)
    p.labels = labels
    p.ignore_index = ignore_index
    p.row_loss = loss_out
    p.row_lse = lse_out
    return solve_summed(&p, n_threads)


cdef double ce_fused_f32(const float *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                         Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                         double grad_scale, float *grad, Py_ssize_t grad_row_stride,
                         double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>logits, n_rows, n_classes, row_stride, CE_MODE_FUSED, CE_TARGET_INDEX, CE_DTYPE_F32)
    p.labels = labels
    p.ignore_index = ignore_index
    p.grad_scale = grad_scale
    p.g.data = <char *>grad
    p.g.s_outer = grad_row_stride
    p.g.s_class = 1
    p.row_lse = lse_out
    return solve_summed(&p, n_threads)


cdef double ce_fused_f64(const double *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                         Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                         double grad_scale, double *grad, Py_ssize_t grad_row_stride,
                         double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>logits, n_rows, n_classes, row_stride, CE_MODE_FUSED, CE_TARGET_INDEX, CE_DTYPE_F64)
    p.labels = labels
    p.ignore_index = ignore_index
    p.grad_scale = grad_scale
    p.g.data = <char *>grad
    p.g.s_outer = grad_row_stride
    p.g.s_class = 1
    p.row_lse = lse_out
    return solve_summed(&p, n_threads)


ctypedef fused c_real:
    float
    double


cdef void infinite_rows_lse(const c_real *x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                            Py_ssize_t row_stride, double *lse) noexcept nogil:
    """The kernel gives NaN for a row of -inf only (-inf - -inf) or with a +inf:
    such rows get -inf / +inf, as ce.logsumexp and scipy give (a NaN stays NaN)."""
    cdef Py_ssize_t r, c
    cdef double m, v
    for r in range(n_rows):
        if lse[r] == lse[r]:
            continue
        m = -INFINITY
        for c in range(n_classes):
            v = x[r * row_stride + c]
            if v != v:
                m = NAN
                break
            m = v if v > m else m
        lse[r] = m


cdef int ce_logsumexp_f32(const float *x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                          Py_ssize_t row_stride, double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>x, n_rows, n_classes, row_stride, CE_MODE_FORWARD, CE_TARGET_NONE, CE_DTYPE_F32)
    p.row_lse = lse_out
    if solve_summed(&p, n_threads) != 0.0:
        return -1
    infinite_rows_lse(x, n_rows, n_classes, row_stride, lse_out)
    return 0


cdef int ce_logsumexp_f64(const double *x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                          Py_ssize_t row_stride, double *lse_out, int n_threads) noexcept nogil:
    cdef ce_problem p
    init_rows(&p, <char *>x, n_rows, n_classes, row_stride, CE_MODE_FORWARD, CE_TARGET_NONE, CE_DTYPE_F64)
    p.row_lse = lse_out
    if solve_summed(&p, n_threads) != 0.0:
        return -1
    infinite_rows_lse(x, n_rows, n_classes, row_stride, lse_out)
    return 0


# ---- the Python-level seam: a Call describes one call, solve() runs it ----

from . import _args   # the validation layer: every rejection and its message come from there



NO_TARGET = object()   # a Call without a target: softmax, log_softmax, logsumexp


cdef inline bint row_major_ok(cnp.ndarray a) noexcept:
    """Aligned, with strides in whole elements: the kernels can index it."""
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a), i
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(a)
    if not cnp.PyArray_ISALIGNED(a):
        return False
    for i in range(cnp.PyArray_NDIM(a)):
        if st[i] % item:
            return False
    return True


cdef inline bint is_array(object a, int typenum) noexcept:
    """An exact ndarray of `typenum`, C-contiguous, aligned, native: usable as it is."""
    return (type(a) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>a)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a))


cdef inline bint is_real_array(object a, bint allow_bool=True) noexcept:
    """An exact ndarray of reals (bool too when allowed) in native byte order."""
    return (type(a) is cnp.ndarray and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a)
            and (cnp.PyArray_ISFLOAT(<cnp.ndarray>a) or cnp.PyArray_ISINTEGER(<cnp.ndarray>a)
                 or (allow_bool and cnp.PyArray_ISBOOL(<cnp.ndarray>a))))


cdef inline object flat(cnp.ndarray a):
    return a if cnp.PyArray_NDIM(a) == 1 else a.reshape(-1)


cdef inline object as_float64_rows(cnp.ndarray a):
    """A C-contiguous float64 copy of `a`, or `a` itself when it already is one."""
    if is_array(a, cnp.NPY_DOUBLE):
        return a
    return cnp.PyArray_FROMANY(a, cnp.NPY_DOUBLE, 0, 0, cnp.NPY_ARRAY_CARRAY | cnp.NPY_ARRAY_FORCECAST)


cdef inline void memory_extent(cnp.ndarray a, char **lo, char **hi) noexcept:
    """[lo, hi): the bytes an array with at least one element touches."""
    cdef Py_ssize_t i, step
    cdef char *low = <char *>cnp.PyArray_DATA(a)
    cdef char *high = low
    for i in range(cnp.PyArray_NDIM(a)):
        step = (cnp.PyArray_DIM(a, i) - 1) * cnp.PyArray_STRIDES(a)[i]
        if step < 0:
            low += step
        else:
            high += step
    lo[0] = low
    hi[0] = high + cnp.PyArray_ITEMSIZE(a)


cdef inline bint overlaps(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef char *alo
    cdef char *ahi
    cdef char *blo
    cdef char *bhi
    memory_extent(a, &alo, &ahi)
    memory_extent(b, &blo, &bhi)
    return alo < bhi and blo < ahi


cdef class Call:
    """One cross-entropy (or target-free) call, validated and described by name.

    Built once, with keywords only, from the public arguments; it owns the C
    problem struct the kernels read (inputs and options only: outputs are passed
    to `solve`). Every check and every error message comes from ce._args; the
    common argument types (an ndarray, an int, a float, None) are accepted here
    without a call into Python, the rest are handed to _args, so there is one
    path for every combination of options.
    """
    cdef ce_problem p
    cdef int is_double
    cdef int red                    # 0 mean, 1 sum, 2 none
    cdef Py_ssize_t outer           # rows = outer x inner
    cdef readonly int n_threads
    cdef readonly object reduction, dtype, axes, name
    cdef readonly object x          # the logits, native float (not yet a rows view)
    cdef readonly object labels     # int64[n_rows] class indices, or None
    cdef readonly object target_rows   # dense target as an (outer, C, inner) view, or None
    cdef readonly object class_weight, class_weight_64, row_weight, upstream_grad, lse_in
    cdef readonly double weight_total   # the mean's denominator
    cdef object _rows, _rest

    def __init__(self, *, logits, target=NO_TARGET, axis=-1, reduction="mean", weight=None,
                 sample_weight=None, ignore_index=-100, label_smoothing=0.0, from_logits=True,
                 n_threads=None, z_loss=0.0, softcap=None, grad_output=1.0, lse=None,
                 name="logits"):
        cdef cnp.ndarray x, t
        cdef ce_problem *p = &self.p
        cdef int nd, typenum, real_type, overflow = 0
        cdef Py_ssize_t item, outer, bad, count = 0
        cdef cnp.npy_intp *st
        cdef double total = 0.0
        cdef const double *cw64
        memset(p, 0, sizeof(ce_problem))
        self.name = name

        if type(reduction) is str and reduction == "mean":
            self.red = 0
        elif type(reduction) is str and reduction == "sum":
            self.red = 1
        elif type(reduction) is str and reduction == "none":
            self.red = 2
        else:
            reduction = _args.check_reduction(reduction)
            self.red = ("mean", "sum", "none").index(reduction)
        self.reduction = reduction

        # logits -> a native float array, then the struct's (outer, C, inner) view
        if (type(logits) is cnp.ndarray and cnp.PyArray_NDIM(<cnp.ndarray>logits) >= 1
                and (cnp.PyArray_TYPE(<cnp.ndarray>logits) == cnp.NPY_FLOAT
                     or cnp.PyArray_TYPE(<cnp.ndarray>logits) == cnp.NPY_DOUBLE)
                and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>logits)):
            x = <cnp.ndarray>logits
            self.dtype = <object>cnp.PyArray_DESCR(x)
        else:
            x, self.dtype = _args.as_logits(logits, name)
        self.x = x
        typenum = cnp.PyArray_TYPE(x)
        p.dtype = dtype_code(x)
        if p.dtype < 0:
            raise TypeError(f"ce: no kernel for the dtype {x.dtype}")
        self.is_double = p.dtype == CE_DTYPE_F64
        # class weights and dense targets are float32 for half-precision logits (the kernels
        # compute in float32; a target above 65504 must not overflow)
        real_type = cnp.NPY_FLOAT if p.dtype >= CE_DTYPE_F16 else typenum
        nd = cnp.PyArray_NDIM(x)
        item = cnp.PyArray_ITEMSIZE(x)
        if type(axis) is int and (axis == -1 or axis == nd - 1) and nd <= 2 and row_major_ok(x):
            # class axis last of a 1-d or 2-d array: the array itself is the rows view
            st = cnp.PyArray_STRIDES(x)
            self.axes = (nd - 1,)
            p.n_classes = cnp.PyArray_DIM(x, nd - 1)
            outer = cnp.PyArray_DIM(x, 0) if nd == 2 else 1
            p.x.data = <char *>cnp.PyArray_DATA(x)
            p.x.s_class = st[nd - 1] // item
            p.x.s_outer = st[0] // item if nd == 2 else p.n_classes * p.x.s_class
            p.x.s_inner = 1
            p.inner = 1
            p.n_rows = outer
            self.outer = outer
        else:
            self.axes = _args.class_axes(axis, nd)
            self._rows, self._rest = _args.rows_view(x, self.axes)
            set_view(&p.x, self._rows)
            p.n_classes = self._rows.shape[1]
            p.inner = self._rows.shape[2]
            self.outer = self._rows.shape[0]
            p.n_rows = self.outer * p.inner
        if p.n_classes == 0:
            _args.check_classes(p.n_classes, axis, name)
        p.block_rows = block_rows_for(p.n_classes, p.inner)

        if n_threads is None:
            self.n_threads = 0
        elif type(n_threads) is int and n_threads >= 1:
            self.n_threads = n_threads if n_threads < 65536 else 65536
        else:
            self.n_threads = _args.check_threads(n_threads)
        if type(label_smoothing) is float and 0.0 <= <double>label_smoothing <= 1.0:
            p.smoothing = label_smoothing
        else:
            p.smoothing = _args.check_float(label_smoothing, "label_smoothing", 0.0, 1.0)
        if type(z_loss) is float and <double>z_loss >= 0.0:
            p.z_loss = z_loss
        else:
            p.z_loss = _args.check_float(z_loss, "z_loss", 0.0)
        p.softcap = 0.0 if softcap is None else _args.check_softcap(softcap)
        if from_logits is True:
            p.from_logits = 1
        elif from_logits is False:
            p.from_logits = 0
        else:
            p.from_logits = _args.check_bool(from_logits, "from_logits")
        if not p.from_logits and (p.z_loss != 0.0 or p.softcap != 0.0):
            _args.check_logit_options(p.from_logits, p.z_loss, p.softcap)
        if type(ignore_index) is int:
            p.ignore_index = PyLong_AsLongLongAndOverflow(ignore_index, &overflow)
            if overflow:
                _args.check_ignore_index(ignore_index)
        else:
            p.ignore_index = _args.check_ignore_index(ignore_index)

        # class weights: the computing dtype for the kernel, float64 for the sums
        if weight is None:
            p.class_weight_sum = <double>p.n_classes
        elif (is_real_array(weight, False) and cnp.PyArray_NDIM(<cnp.ndarray>weight) == 1
                and cnp.PyArray_DIM(<cnp.ndarray>weight, 0) == p.n_classes):
            self.class_weight = weight if is_array(weight, real_type) else cnp.PyArray_FROMANY(
                weight, real_type, 0, 0, cnp.NPY_ARRAY_CARRAY | cnp.NPY_ARRAY_FORCECAST)
            self.class_weight_64 = as_float64_rows(<cnp.ndarray>weight)
        else:
            self.class_weight, self.class_weight_64 = _args.class_weights(
                weight, p.n_classes, _args.kernel_real(x.dtype))
        if weight is not None:
            p.class_weight = cnp.PyArray_DATA(<cnp.ndarray>self.class_weight)
            p.class_weight_sum = weight_sum(<cnp.ndarray>self.class_weight_64)

        # target: class indices (the per-example shape) or dense (the logits' shape)
        if target is NO_TARGET:
            p.target_kind = CE_TARGET_NONE
        elif is_array(target, cnp.NPY_INT64) and self.per_example(<cnp.ndarray>target):
            p.target_kind = CE_TARGET_INDEX
            self.labels = target if nd == 2 else target.reshape(1)
        elif (self._rows is None and type(target) is cnp.ndarray
                and cnp.PyArray_TYPE(<cnp.ndarray>target) == real_type
                and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>target)
                and same_shape(<cnp.ndarray>target, x) and row_major_ok(<cnp.ndarray>target)):
            p.target_kind = CE_TARGET_DENSE   # the logits' shape and dtype: its own rows view
            self.target_rows = target
            set_output_view(&p.t, target, self, "target", False, real_type)
        else:
            dense, self.labels, self.target_rows = _args.target_rows(
                target, self.shape, self.rest, self.axes, _args.kernel_real(x.dtype), p.n_classes)
            p.target_kind = CE_TARGET_DENSE if dense else CE_TARGET_INDEX
            if dense:
                set_view(&p.t, self.target_rows)
        if self.labels is not None:
            p.labels = <const int64_t *>cnp.PyArray_DATA(<cnp.ndarray>self.labels)

        if sample_weight is not None:
            if is_real_array(sample_weight) and self.per_example(<cnp.ndarray>sample_weight):
                self.row_weight = flat(as_float64_rows(<cnp.ndarray>sample_weight))
            else:
                self.row_weight = _args.sample_weights(sample_weight, self.rest)
            p.row_weight = <const double *>cnp.PyArray_DATA(<cnp.ndarray>self.row_weight)

        # labels in [0, C) or ignore_index, before anything is written; the mean's denominator
        if p.target_kind == CE_TARGET_INDEX:
            cw64 = <const double *>data_or_null(self.class_weight_64)
            if p.n_rows < LABEL_CHECK_NOGIL:
                bad = ce_check_labels(p.labels, p.n_rows, p.n_classes, p.ignore_index, cw64,
                                      p.row_weight, &total, &count)
            else:
                with nogil:
                    bad = ce_check_labels(p.labels, p.n_rows, p.n_classes, p.ignore_index, cw64,
                                          p.row_weight, &total, &count)
            if bad >= 0:
                raise _args.bad_label(self.labels, bad, self.rest, p.n_classes, p.ignore_index)
            self.weight_total = total
        elif self.row_weight is None:
            self.weight_total = <double>p.n_rows
        else:
            self.weight_total = float(self.row_weight.sum())

        # the upstream gradient: a scale, times a per-row array for reduction="none"
        if type(grad_output) is float:
            p.grad_scale = grad_output
        elif (self.red == 2 and is_real_array(grad_output)
                and self.per_example(<cnp.ndarray>grad_output)):
            p.grad_scale = 1.0
            self.upstream_grad = flat(as_float64_rows(<cnp.ndarray>grad_output))
            p.row_grad = <const double *>cnp.PyArray_DATA(<cnp.ndarray>self.upstream_grad)
        else:
            p.grad_scale, self.upstream_grad = _args.upstream_grad(grad_output, self.reduction,
                                                                   self.rest)
            if self.upstream_grad is not None:
                p.row_grad = <const double *>cnp.PyArray_DATA(<cnp.ndarray>self.upstream_grad)
        if self.red == 0:   # a mean over nothing has a zero gradient
            p.grad_scale = p.grad_scale / self.weight_total if self.weight_total != 0 else 0.0
        if lse is not None:
            if (p.from_logits and is_real_array(lse, False) and cnp.PyArray_ISFLOAT(<cnp.ndarray>lse)
                    and self.per_example(<cnp.ndarray>lse)):
                self.lse_in = flat(as_float64_rows(<cnp.ndarray>lse))
            else:
                self.lse_in = _args.saved_lse(lse, self.rest, p.from_logits)
            p.lse_in = <const double *>cnp.PyArray_DATA(<cnp.ndarray>self.lse_in)
        if p.dtype >= CE_DTYPE_F16:   # computed in float32: clip at the half dtype's eps
            p.clip = _args.eps(self.dtype)

    cdef bint overlaps_inputs(self, cnp.ndarray out):
        """out shares memory with an input the kernel reads besides the logits and the
        target rows (then _args.output_for names it in its error)."""
        for a in (self.class_weight, self.class_weight_64, self.row_weight, self.upstream_grad,
                  self.lse_in, self.labels):
            if a is not None and cnp.PyArray_SIZE(<cnp.ndarray>a) > 0 and overlaps(out, <cnp.ndarray>a):
                return True
        return False

    cdef bint per_example(self, cnp.ndarray a) noexcept:
        """`a` has the per-example shape (the class axis last of 1-d / 2-d logits only)."""
        if self._rows is not None:
            return False
        if cnp.PyArray_NDIM(<cnp.ndarray>self.x) == 1:
            return cnp.PyArray_NDIM(a) == 0
        return cnp.PyArray_NDIM(a) == 1 and cnp.PyArray_DIM(a, 0) == self.outer

    @property
    def n_rows(self):
        return self.p.n_rows

    @property
    def n_classes(self):
        return self.p.n_classes

    @property
    def ignore_index(self):
        return self.p.ignore_index

    @property
    def from_logits(self):
        return bool(self.p.from_logits)

    @property
    def has_labels(self):
        return self.p.target_kind == CE_TARGET_INDEX

    @property
    def grad_scale(self):
        """The factor of every row's gradient: grad_output, divided by the total
        weight for "mean" (times each row's upstream_grad for "none")."""
        return self.p.grad_scale

    def result(self, double total, row_loss=None):
        """The reduction's value from the rows' loss sum (or, for "none", from the
        float64 row losses), in the result dtype: for callers that run the
        kernel over parts of the rows (ce.linear_cross_entropy's chunks)."""
        return self.value(total, row_loss)

    @property
    def shape(self):
        """The logits' shape."""
        return self.x.shape

    @property
    def rest(self):
        """The per-example shape (the logits' shape without the class axes)."""
        if self._rest is None:
            self._rest = self.x.shape[:len(self.x.shape) - 1]
        return self._rest

    @property
    def rows(self):
        """The logits as the kernels see them: an (outer, C, inner) view."""
        if self._rows is None:
            self._rows = _args.rows_view(self.x, self.axes)[0]
        return self._rows

    def arrays(self):
        """Every array whose memory the kernels read (for tests)."""
        return [a for a in (self.x if self._rows is None else self._rows, self.labels,
                            self.target_rows, self.class_weight, self.row_weight,
                            self.upstream_grad, self.lse_in) if a is not None]

    cdef object value(self, double total, object row_loss):
        """The reduction of the rows' losses, in the result dtype."""
        cdef double v
        cdef float v32
        if self.red == 2:
            return self.per_example_result(row_loss)
        v = total / self.weight_total if self.red == 0 else total   # 0 / 0: NaN, a mean over nothing
        if self.p.dtype >= CE_DTYPE_F16 or self.dtype is not <object>cnp.PyArray_DESCR(<cnp.ndarray>self.x):
            return self.dtype.type(v)   # half precision: rounded once from the float64 value
        if self.is_double:
            return PyArray_Scalar(&v, cnp.PyArray_DESCR(<cnp.ndarray>self.x), None)
        v32 = <float>v
        return PyArray_Scalar(&v32, cnp.PyArray_DESCR(<cnp.ndarray>self.x), None)

    cdef object per_example_result(self, object rows64):
        """float64 per-row values -> an array of the per-example shape in the result dtype."""
        cdef cnp.ndarray rows
        if self._rows is None and cnp.PyArray_NDIM(<cnp.ndarray>self.x) == 2 \
                and self.p.dtype <= CE_DTYPE_F64 \
                and self.dtype is <object>cnp.PyArray_DESCR(<cnp.ndarray>self.x):
            if self.is_double:
                return rows64
            rows = cnp.PyArray_EMPTY(1, cnp.PyArray_DIMS(<cnp.ndarray>rows64), cnp.NPY_FLOAT, 0)
            cnp.PyArray_CopyInto(rows, <cnp.ndarray>rows64)
            return rows
        return rows64.reshape(self.rest).astype(self.dtype)

    cdef tuple gradient_buffer(self, object out):
        """(array for the caller, view the kernel writes, array to copy into it or None)."""
        cdef cnp.ndarray x = <cnp.ndarray>self.x
        cdef cnp.ndarray g
        if (self._rows is None and self.p.dtype != CE_DTYPE_BF16   # a user dtype: via NumPy
                and self.dtype is <object>cnp.PyArray_DESCR(x)):
            if out is None:
                g = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x), 0)
                return g, g, None
            if (type(out) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>out) == cnp.PyArray_TYPE(x)
                    and same_shape(<cnp.ndarray>out, x) and cnp.PyArray_SIZE(x) > 0
                    and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)
                    and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>out) and row_major_ok(<cnp.ndarray>out)
                    and (self.target_rows is None or not overlaps(<cnp.ndarray>out, <cnp.ndarray>self.target_rows))
                    and not self.overlaps_inputs(<cnp.ndarray>out)
                    and (not overlaps(<cnp.ndarray>out, x) or same_view(<cnp.ndarray>out, x))):
                return out, out, None
        return _args.output_for(self, out)


cdef inline bint same_shape(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef int i
    if cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(b):
        return False
    for i in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIM(a, i) != cnp.PyArray_DIM(b, i):
            return False
    return True


cdef inline bint same_view(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Element for element the same memory (out= is the logits: in place)."""
    cdef int i
    if cnp.PyArray_DATA(a) != cnp.PyArray_DATA(b) or not same_shape(a, b):
        return False
    for i in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_STRIDES(a)[i] != cnp.PyArray_STRIDES(b)[i]:
            return False
    return True


cdef double weight_sum(cnp.ndarray w64):
    """The float64 class weights' sum (it enters the smoothed loss), in 32 lanes (ce_weight_sum):
    NumPy's w.sum() costs about 2 us at C = 10, a serial loop 1 us at C = 1000."""
    return ce_weight_sum(<const double *>cnp.PyArray_DATA(w64), cnp.PyArray_DIM(w64, 0))


cdef inline int set_output_view(ce_view *v, object a, Call call, str name,
                                bint written=True, int typenum=-1) except -1:
    """An array of the logits' computing dtype: the (outer, C, inner) rows view,
    or, when inner is 1, the 2-d (outer, C) / 1-d (C,) array itself."""
    cdef cnp.ndarray arr, x = <cnp.ndarray>call.x
    cdef Py_ssize_t item, outer = call.outer
    cdef int nd
    if type(a) is not cnp.ndarray:
        raise TypeError(f"ce._kernels.solve: {name} must be an ndarray")
    arr = <cnp.ndarray>a
    nd = cnp.PyArray_NDIM(arr)
    if typenum < 0:
        typenum = cnp.PyArray_TYPE(x)
    if (cnp.PyArray_TYPE(arr) != typenum or (written and not cnp.PyArray_ISWRITEABLE(arr))
            or not cnp.PyArray_ISNOTSWAPPED(arr) or not row_major_ok(arr)):
        raise ValueError(f"ce._kernels.solve: {name} must be a writeable aligned native "
                         f"array of dtype {x.dtype}")
    if nd == 3 and (arr.shape[0] == outer and arr.shape[1] == call.p.n_classes
                    and arr.shape[2] == call.p.inner):
        set_view(v, arr)
        return 0
    if call.p.inner != 1 or not (
            (nd == 2 and arr.shape[0] == outer and arr.shape[1] == call.p.n_classes)
            or (nd == 1 and outer == 1 and arr.shape[0] == call.p.n_classes)):
        raise ValueError(f"ce._kernels.solve: {name} has shape {a.shape}, not the rows "
                         f"({outer}, {call.p.n_classes}, {call.p.inner})")
    item = cnp.PyArray_ITEMSIZE(arr)
    v.data = <char *>cnp.PyArray_DATA(arr)
    v.s_class = cnp.PyArray_STRIDES(arr)[nd - 1] // item
    v.s_outer = cnp.PyArray_STRIDES(arr)[0] // item if nd == 2 else call.p.n_classes * v.s_class
    v.s_inner = 1
    return 0


cdef inline void *row_output(object a, Call call, int typenum, str name) except NULL:
    """A per-row output: a C-contiguous writeable array of n_rows float64 / int64."""
    if (type(a) is not cnp.ndarray or cnp.PyArray_NDIM(<cnp.ndarray>a) != 1
            or cnp.PyArray_DIM(<cnp.ndarray>a, 0) != call.p.n_rows
            or cnp.PyArray_TYPE(<cnp.ndarray>a) != typenum
            or not cnp.PyArray_ISCARRAY(<cnp.ndarray>a)
            or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a)):
        raise ValueError(f"ce._kernels.solve: {name} must be a C-contiguous writeable "
                         f"1-d array of {call.p.n_rows} {'float64' if typenum == cnp.NPY_DOUBLE else 'int64'}")
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef double run_call(Call call, object grad, object softmax, object log_softmax, object row_loss,
                     object row_lse, object row_argmax, object row_rank) except? -1.0:
    """The kernel entry: one run of `call` into the named outputs; returns the loss sum."""
    cdef ce_problem p = call.p          # a copy: the call itself stays read-only
    cdef Py_ssize_t n_blocks, b, failures
    cdef double total = 0.0
    cdef double stack_partial[STACK_BLOCKS]
    cdef double *partial
    if (grad is not None) + (softmax is not None) + (log_softmax is not None) > 1:
        raise ValueError("ce._kernels.solve: at most one of grad, softmax, log_softmax")
    p.mode = CE_MODE_FORWARD
    if grad is not None:
        p.mode = CE_MODE_FUSED if p.lse_in == NULL else CE_MODE_GRAD_LSE
        set_output_view(&p.g, grad, call, "grad")
    elif softmax is not None:
        p.mode = CE_MODE_SOFTMAX
        set_output_view(&p.g, softmax, call, "softmax")
    elif log_softmax is not None:
        p.mode = CE_MODE_LOG_SOFTMAX
        set_output_view(&p.g, log_softmax, call, "log_softmax")
    elif p.lse_in != NULL:
        raise ValueError("ce._kernels.solve: a call with lse= needs a grad output")
    if row_loss is not None:
        p.row_loss = <double *>row_output(row_loss, call, cnp.NPY_DOUBLE, "row_loss")
    if row_lse is not None:
        p.row_lse = <double *>row_output(row_lse, call, cnp.NPY_DOUBLE, "row_lse")
    if row_argmax is not None:
        p.row_argmax = <int64_t *>row_output(row_argmax, call, cnp.NPY_INT64, "row_argmax")
    if row_rank is not None:
        p.row_rank = <int64_t *>row_output(row_rank, call, cnp.NPY_INT64, "row_rank")
    if p.n_rows == 0:
        return 0.0
    n_blocks = (p.n_rows + p.block_rows - 1) // p.block_rows
    partial = &stack_partial[0] if n_blocks <= STACK_BLOCKS else <double *>malloc(n_blocks * sizeof(double))
    if partial == NULL:
        raise MemoryError()
    p.block_loss = partial
    if p.n_rows * p.n_classes < PARALLEL_MIN_ELEMENTS:   # small: keeping the GIL is cheaper
        failures = ce_solve(&p, 1)
    else:
        with nogil:
            failures = ce_solve(&p, call.n_threads)
    for b in range(n_blocks):
        total += partial[b]
    if partial != &stack_partial[0]:
        free(partial)
    if failures:
        raise MemoryError(f"ce: out of memory for a scratch row ({failures} blocks failed)")
    return total


cdef int dtype_code(cnp.ndarray x):
    """The ce_dtype of x (bfloat16: ml_dtypes', the only 2-byte user dtype taken), or -1."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum == cnp.NPY_FLOAT:
        return CE_DTYPE_F32
    if typenum == cnp.NPY_DOUBLE:
        return CE_DTYPE_F64
    if typenum == cnp.NPY_FLOAT16:
        return CE_DTYPE_F16
    if _args.is_bfloat16(x.dtype):
        return CE_DTYPE_BF16
    return -1


def _set_half_portable(bint on):
    """Tests: use the portable half conversions even where F16C / AVX512_BF16 exist."""
    global ce_half_portable
    ce_half_portable = on


def _half_round(cnp.ndarray src, bint bf):
    """Tests: the kernels' rounding of float32 values (1-D, contiguous) to float16 or
    bfloat16, as uint16 bits (F16C / AVX512_BF16 or portable, as _set_half_portable says)."""
    if cnp.PyArray_TYPE(src) != cnp.NPY_FLOAT or src.ndim != 1 or not src.flags.c_contiguous:
        raise TypeError("src: a contiguous 1-D float32 array")
    cdef cnp.ndarray dst = np.empty(src.shape[0], dtype=np.uint16)
    ce_half_store(<uint16_t *>cnp.PyArray_DATA(dst), 1, <const float *>cnp.PyArray_DATA(src),
                  src.shape[0], bf)
    return dst


def solve(Call call not None, *, grad=None, softmax=None, log_softmax=None, row_loss=None,
          row_lse=None, row_argmax=None, row_rank=None):
    """Run `call` once into the named outputs; returns the sum of the rows' losses.

    grad / softmax / log_softmax (at most one): the (outer, C, inner) rows view
    of an array of the computing dtype (or, with the class axis last, the 2-d
    array). row_loss / row_lse: float64[n_rows]; row_argmax / row_rank:
    int64[n_rows]. A call built with lse= computes the gradient from it.
    """
    return run_call(call, grad, softmax, log_softmax, row_loss, row_lse, row_argmax, row_rank)


cdef inline object new_rows(Call call, int typenum):
    cdef cnp.npy_intp n = call.p.n_rows
    return cnp.PyArray_EMPTY(1, &n, typenum, 0)


def loss(Call call not None):
    """The reduced loss of `call` (reduction "none": each example's)."""
    row_loss = new_rows(call, cnp.NPY_DOUBLE) if call.red == 2 else None
    return call.value(run_call(call, None, None, None, row_loss, None, None, None), row_loss)


def loss_and_lse(Call call not None):
    """(reduced loss, float64 per-example lse): a forward that saves O(N) for a backward."""
    if not call.p.from_logits:
        _args.check_lse_applies(False)
    row_loss = new_rows(call, cnp.NPY_DOUBLE) if call.red == 2 else None
    row_lse = new_rows(call, cnp.NPY_DOUBLE)
    total = run_call(call, None, None, None, row_loss, row_lse, None, None)
    return call.value(total, row_loss), row_lse.reshape(call.rest)


def gradient(Call call not None, out=None):
    """d loss / d logits of `call` (from call.lse_in when the call has one), into `out`."""
    result, view, copy_back = call.gradient_buffer(out)
    run_call(call, view, None, None, None, None, None, None)
    if copy_back is not None:
        np.copyto(result, copy_back, casting="unsafe")
    return result


def loss_and_gradient(Call call not None, out=None, return_lse=False):
    """(loss, gradient) or (loss, gradient, lse) of `call` in one fused run."""
    if return_lse is not False and not (return_lse is True and call.p.from_logits):
        _args.check_return_lse(return_lse, call.p.from_logits)
    result, view, copy_back = call.gradient_buffer(out)
    row_loss = new_rows(call, cnp.NPY_DOUBLE) if call.red == 2 else None
    row_lse = new_rows(call, cnp.NPY_DOUBLE) if return_lse else None
    total = run_call(call, view, None, None, row_loss, row_lse, None, None)
    if copy_back is not None:
        np.copyto(result, copy_back, casting="unsafe")
    value = call.value(total, row_loss)
    if return_lse:
        return value, result, call.per_example_result(row_lse)
    return value, result


def output_for(Call call not None, out=None):
    """(array for the caller, view the kernel writes, array to copy into it or None)."""
    return call.gradient_buffer(out)
