# C-level API of ce, for other Cython packages:
#
#     from ce._kernels cimport ce_forward_f32, ce_fused_f32, ce_logsumexp_f32
#
# All functions take raw pointers to row-major (n_rows, n_classes) data with a
# row stride in elements (class stride 1), int64 labels that the caller has
# checked (each in [0, n_classes) or equal to ignore_index; see
# ce_labels_valid), release nothing (they are nogil already) and run on
# n_threads OpenMP threads (0: OpenMP's current setting). Results are bitwise
# the same for any thread count.
from libc.stdint cimport int64_t

# Returns the first invalid position, or -1; *total gets the number of
# non-ignored labels.
cdef Py_ssize_t ce_labels_valid(const int64_t *labels, Py_ssize_t n_rows, Py_ssize_t n_classes,
                                int64_t ignore_index, double *total) noexcept nogil

# Sum over rows of the cross-entropy (ignored rows count 0). loss_out and
# lse_out (n_rows doubles each) may be NULL. Returns NaN when out of memory.
cdef double ce_forward_f32(const float *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                           Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                           double *loss_out, double *lse_out, int n_threads) noexcept nogil
cdef double ce_forward_f64(const double *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                           Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                           double *loss_out, double *lse_out, int n_threads) noexcept nogil

# Forward plus the gradient of grad_scale * (sum of row losses) into grad
# (may equal logits). Use grad_scale = 1 / count for the mean.
cdef double ce_fused_f32(const float *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                         Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                         double grad_scale, float *grad, Py_ssize_t grad_row_stride,
                         double *lse_out, int n_threads) noexcept nogil
cdef double ce_fused_f64(const double *logits, Py_ssize_t n_rows, Py_ssize_t n_classes,
                         Py_ssize_t row_stride, const int64_t *labels, int64_t ignore_index,
                         double grad_scale, double *grad, Py_ssize_t grad_row_stride,
                         double *lse_out, int n_threads) noexcept nogil

# Per-row log-sum-exp into lse_out (n_rows doubles): a row of -inf only gives -inf, a row
# with +inf (and no NaN) +inf, a row with a NaN NaN, as ce.logsumexp and scipy. Returns 0,
# -1 when out of memory.
cdef int ce_logsumexp_f32(const float *x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                          Py_ssize_t row_stride, double *lse_out, int n_threads) noexcept nogil
cdef int ce_logsumexp_f64(const double *x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                          Py_ssize_t row_stride, double *lse_out, int n_threads) noexcept nogil
