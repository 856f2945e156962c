# cython: boundscheck=False, wraparound=False
"""Mean softmax cross-entropy and its gradient through ce's C API.

ce's C functions trust their caller: they do not check shapes, buffer sizes or labels.
So everything is checked here, with the GIL held, before the kernel runs.
"""
from libc.math cimport NAN
from libc.stdint cimport int64_t

from ce._kernels cimport ce_fused_f32, ce_labels_valid


def loss_and_grad(const float[:, ::1] x, const int64_t[::1] y, float[:, ::1] g,
                  int64_t ignore_index=-100):
    """Mean cross-entropy of (N, C) float32 logits `x` against int64 labels `y`.

    The gradient of the mean with respect to `x` is written into `g`, an (N, C) float32
    C-contiguous array (it may be `x` itself). Labels equal to `ignore_index` count for
    nothing; the mean is over the others (NaN, and a zero gradient, when there are none).
    Raises ValueError for mismatched shapes or a label outside [0, C), before writing.
    """
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], bad
    cdef double count = 0.0, total
    if c == 0:
        raise ValueError("x must have at least one class (x.shape[1] > 0)")
    if y.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) (one label per row of x), got ({y.shape[0]},)")
    if g.shape[0] != n or g.shape[1] != c:
        raise ValueError(f"g must have x's shape ({n}, {c}), got ({g.shape[0]}, {g.shape[1]})")
    if n == 0:
        return NAN
    with nogil:
        bad = ce_labels_valid(&y[0], n, c, ignore_index, &count)
    if bad >= 0:
        raise ValueError(f"y[{bad}] = {y[bad]} is outside [0, {c}) and not "
                         f"ignore_index={ignore_index}")
    with nogil:
        total = ce_fused_f32(&x[0, 0], n, c, c, &y[0], ignore_index,
                             1.0 / count if count > 0 else 0.0, &g[0, 0], c, NULL, 0)
    return total / count if count > 0 else NAN
