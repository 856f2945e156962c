# cython: language_level=3, boundscheck=False, wraparound=False
"""Exact float64 sums (the C loop of _ce_exact.h), for Score's chunk-invariant totals.

`exact_sum` returns the exact sum of the finite values as an integer count of
2^-1074 (every finite double is one) plus a flag word for the non-finite ones;
adding those integers (and OR-ing the flags) merges sums of disjoint parts
without any rounding.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint32_t

cnp.import_array()

cdef extern from "_ce_exact.h" nogil:
    int CE_EXACT_LIMBS
    int CE_EXACT_POS_INF, CE_EXACT_NEG_INF, CE_EXACT_NAN
    ctypedef struct ce_exact:
        int64_t limb[68]
        int special
    void ce_exact_add(ce_exact *acc, const double *v, Py_ssize_t n, Py_ssize_t stride,
                      const uint8_t *mask)

POS_INF = CE_EXACT_POS_INF
NEG_INF = CE_EXACT_NEG_INF
NAN = CE_EXACT_NAN


def exact_sum(cnp.ndarray values, object mask=None):
    """(integer sum in units of 2^-1074 of the finite values, non-finite flags).

    values: a 1-D float64 array (any stride); mask: None or a 1-D bool array of
    the same length, C-contiguous (only the rows where it is True are added).
    """
    cdef ce_exact acc
    cdef Py_ssize_t n, stride, i
    cdef const uint8_t *m = NULL
    cdef uint32_t digits[68]
    if cnp.PyArray_TYPE(values) != cnp.NPY_DOUBLE or cnp.PyArray_NDIM(values) != 1:
        raise TypeError("exact_sum: values must be a 1-d float64 array")
    n = cnp.PyArray_DIM(values, 0)
    stride = cnp.PyArray_STRIDE(values, 0)
    if stride % 8 or not cnp.PyArray_ISALIGNED(values):
        raise ValueError("exact_sum: values must be aligned")
    stride //= 8
    if mask is not None:
        if (type(mask) is not cnp.ndarray or cnp.PyArray_TYPE(<cnp.ndarray>mask) != cnp.NPY_BOOL
                or cnp.PyArray_NDIM(<cnp.ndarray>mask) != 1 or cnp.PyArray_DIM(<cnp.ndarray>mask, 0) != n
                or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>mask)):
            raise ValueError("exact_sum: mask must be a contiguous 1-d bool array like values")
        m = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>mask)
    for i in range(CE_EXACT_LIMBS):
        acc.limb[i] = 0
    acc.special = 0
    with nogil:
        ce_exact_add(&acc, <const double *>cnp.PyArray_DATA(values), n, stride, m)
    for i in range(CE_EXACT_LIMBS):
        digits[i] = <uint32_t>acc.limb[i]   # normalised: low limbs in [0, 2^32), top limb fits int32
    total = int.from_bytes((<char *>digits)[:CE_EXACT_LIMBS * 4], "little", signed=True)
    return total, acc.special


def hit_counts(const int64_t[::1] labels, const double[::1] row_loss, const int64_t[::1] argmax,
               object rank, tuple ks, int64_t ignore_index):
    """(kept rows, top-1 hits, [top-k hits for each k of ks]) in one pass over the rows.

    The unweighted tally of a Score: a row is kept when its label is not
    ignore_index, and a hit only when kept and its loss is not NaN; top-1 is
    argmax == label, top-k (k > 1) rank < k. rank: int64 per row, or None when
    every k is 1. Integer counts, so any split of the rows adds up the same.
    """
    cdef Py_ssize_t n = labels.shape[0], i, j, nk = len(ks)
    cdef int64_t kept = 0, correct = 0, y
    cdef int64_t kv[64]
    cdef int64_t hits[64]
    cdef const int64_t[::1] rk
    cdef const int64_t *rp = NULL
    cdef bint ok
    if row_loss.shape[0] != n or argmax.shape[0] != n or nk > 64:
        raise ValueError("hit_counts: arrays of one length and at most 64 k")
    for j in range(nk):
        kv[j] = ks[j]
        hits[j] = 0
    if rank is not None:
        rk = rank
        if rk.shape[0] != n:
            raise ValueError("hit_counts: rank has another length")
        rp = &rk[0] if n else NULL
    with nogil:
        for i in range(n):
            y = labels[i]
            if y == ignore_index:
                continue
            kept += 1
            ok = row_loss[i] == row_loss[i]   # not NaN
            correct += ok and argmax[i] == y
            if rp != NULL and ok:
                for j in range(nk):
                    hits[j] += rp[i] < kv[j]
    return kept, correct, [correct if kv[j] == 1 else hits[j] for j in range(nk)]
