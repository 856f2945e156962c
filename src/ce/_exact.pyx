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
