/* Row kernels for one floating type; included from _ce_core.h with
 * CE_REAL (float or double), CE_SUFFIX (f32 or f64) and CE_EXP defined.
 *
 * A row is C contiguous elements (the block function gathers strided rows
 * into a scratch tile first). Every loop below is a plain `omp simd` loop on
 * one element type so that gcc vectorizes it; sums run in CE_REAL lanes for
 * at most CE_CHUNK elements and are then added up in double.
 */
#define CE_CAT2(a, b) a##_##b
#define CE_CAT(a, b) CE_CAT2(a, b)
#define CE_FN(name) CE_CAT(name, CE_SUFFIX)

CE_INLINE CE_REAL CE_FN(ce_row_max)(const CE_REAL *x, Py_ssize_t n)
{
    CE_REAL m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (Py_ssize_t c = 0; c < n; c++)
        m = x[c] > m ? x[c] : m;   /* NaN is skipped here; exp(NaN) spreads it later */
    return m;
}

/* sum of exp(x[c] - m) over [lo, hi) */
CE_INLINE double CE_FN(ce_sum_exp)(const CE_REAL *x, Py_ssize_t lo, Py_ssize_t hi, CE_REAL m)
{
    double s = 0.0;
    for (Py_ssize_t c0 = lo; c0 < hi; c0 += CE_CHUNK) {
        Py_ssize_t c1 = c0 + CE_CHUNK < hi ? c0 + CE_CHUNK : hi;
        CE_REAL part = 0;
#pragma omp simd reduction(+ : part)
        for (Py_ssize_t c = c0; c < c1; c++)
            part += CE_EXP(x[c] - m);
        s += part;
    }
    return s;
}

/* the same, also storing each exp(x[c] - m) in g[c] (g may be x) */
CE_INLINE double CE_FN(ce_sum_exp_store)(const CE_REAL *x, CE_REAL *g, Py_ssize_t lo, Py_ssize_t hi,
                                         CE_REAL m)
{
    double s = 0.0;
    for (Py_ssize_t c0 = lo; c0 < hi; c0 += CE_CHUNK) {
        Py_ssize_t c1 = c0 + CE_CHUNK < hi ? c0 + CE_CHUNK : hi;
        CE_REAL part = 0;
#pragma omp simd reduction(+ : part)
        for (Py_ssize_t c = c0; c < c1; c++) {
            CE_REAL e = CE_EXP(x[c] - m);
            g[c] = e;
            part += e;
        }
        s += part;
    }
    return s;
}

/* sum of w[c] * (m - x[c]) (w = 1 when NULL): the smoothing term, shifted */
CE_INLINE double CE_FN(ce_sum_shift)(const CE_REAL *x, const CE_REAL *w, Py_ssize_t n, CE_REAL m)
{
    double s = 0.0;
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CE_CHUNK) {
        Py_ssize_t c1 = c0 + CE_CHUNK < n ? c0 + CE_CHUNK : n;
        CE_REAL part = 0;
        if (w) {
#pragma omp simd reduction(+ : part)
            for (Py_ssize_t c = c0; c < c1; c++)
                part += w[c] * (m - x[c]);
        } else {
#pragma omp simd reduction(+ : part)
            for (Py_ssize_t c = c0; c < c1; c++)
                part += m - x[c];
        }
        s += part;
    }
    return s;
}

/* Dense target t' = a t + b, weighted: returns sum w t' (m - x) with the xlogy
   convention (a zero t' contributes 0 even against x = -inf); *wt gets sum w t'. */
CE_INLINE double CE_FN(ce_sum_dense)(const CE_REAL *x, const CE_REAL *t, const CE_REAL *w, Py_ssize_t n,
                                     CE_REAL m, CE_REAL a, CE_REAL b, double *wt)
{
    double s = 0.0, tot = 0.0;
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CE_CHUNK) {
        Py_ssize_t c1 = c0 + CE_CHUNK < n ? c0 + CE_CHUNK : n;
        CE_REAL part = 0, tpart = 0;
        if (w) {
#pragma omp simd reduction(+ : part, tpart)
            for (Py_ssize_t c = c0; c < c1; c++) {
                CE_REAL tw = (a * t[c] + b) * w[c];
                CE_REAL term = tw * (m - x[c]);
                part += tw == 0 ? (CE_REAL)0 : term;
                tpart += tw;
            }
        } else {
#pragma omp simd reduction(+ : part, tpart)
            for (Py_ssize_t c = c0; c < c1; c++) {
                CE_REAL tw = a * t[c] + b;
                CE_REAL term = tw * (m - x[c]);
                part += tw == 0 ? (CE_REAL)0 : term;
                tpart += tw;
            }
        }
        s += part;
        tot += tpart;
    }
    *wt = tot;
    return s;
}

/* g[c] = g[c] * k1 - k2 * w[c]  (w = 1 when NULL) */
CE_INLINE void CE_FN(ce_scale)(CE_REAL *g, const CE_REAL *w, Py_ssize_t n, CE_REAL k1, CE_REAL k2)
{
    if (w) {
#pragma omp simd
        for (Py_ssize_t c = 0; c < n; c++)
            g[c] = g[c] * k1 - k2 * w[c];
    } else {
#pragma omp simd
        for (Py_ssize_t c = 0; c < n; c++)
            g[c] = g[c] * k1 - k2;
    }
}

/* g[c] = g[c] * k1 - k2 * w[c] (a t[c] + b) */
CE_INLINE void CE_FN(ce_scale_dense)(CE_REAL *g, const CE_REAL *t, const CE_REAL *w, Py_ssize_t n,
                                     CE_REAL k1, CE_REAL k2, CE_REAL a, CE_REAL b)
{
    if (w) {
#pragma omp simd
        for (Py_ssize_t c = 0; c < n; c++)
            g[c] = g[c] * k1 - k2 * w[c] * (a * t[c] + b);
    } else {
#pragma omp simd
        for (Py_ssize_t c = 0; c < n; c++)
            g[c] = g[c] * k1 - k2 * (a * t[c] + b);
    }
}

/* g[c] = exp(x[c] - lse) * k1 - k2 * w[c] over [lo, hi); returns the sum of the exps */
CE_INLINE double CE_FN(ce_grad_from_lse)(const CE_REAL *x, CE_REAL *g, const CE_REAL *w, Py_ssize_t lo,
                                         Py_ssize_t hi, CE_REAL lse, CE_REAL k1, CE_REAL k2)
{
    double s = 0.0;
    for (Py_ssize_t c0 = lo; c0 < hi; c0 += CE_CHUNK) {
        Py_ssize_t c1 = c0 + CE_CHUNK < hi ? c0 + CE_CHUNK : hi;
        CE_REAL part = 0;
        if (w) {
#pragma omp simd reduction(+ : part)
            for (Py_ssize_t c = c0; c < c1; c++) {
                CE_REAL e = CE_EXP(x[c] - lse);
                part += e;
                g[c] = e * k1 - k2 * w[c];
            }
        } else {
#pragma omp simd reduction(+ : part)
            for (Py_ssize_t c = c0; c < c1; c++) {
                CE_REAL e = CE_EXP(x[c] - lse);
                part += e;
                g[c] = e * k1 - k2;
            }
        }
        s += part;
    }
    return s;
}

/* sum of w[c] (a t[c] + b) */
CE_INLINE double CE_FN(ce_sum_target)(const CE_REAL *t, const CE_REAL *w, Py_ssize_t n, CE_REAL a,
                                      CE_REAL b)
{
    double s = 0.0;
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CE_CHUNK) {
        Py_ssize_t c1 = c0 + CE_CHUNK < n ? c0 + CE_CHUNK : n;
        CE_REAL part = 0;
#pragma omp simd reduction(+ : part)
        for (Py_ssize_t c = c0; c < c1; c++)
            part += (a * t[c] + b) * (w ? w[c] : (CE_REAL)1);
        s += part;
    }
    return s;
}

CE_INLINE int64_t CE_FN(ce_first_equal)(const CE_REAL *x, Py_ssize_t n, CE_REAL m)
{
    for (Py_ssize_t c = 0; c < n; c++)
        if (x[c] == m)
            return c;
    return 0;
}

CE_INLINE int64_t CE_FN(ce_count_greater)(const CE_REAL *x, Py_ssize_t n, CE_REAL v)
{
    int64_t k = 0;
    for (Py_ssize_t c = 0; c < n; c++)
        k += x[c] > v;
    return k;
}

/* Probabilities in (from_logits=False): loss = -sum w t' log(max(p, eps)),
   gradient -w t' / p where p >= eps (0 where clipped). Rare path: plain libm. */
static double CE_FN(ce_row_probs)(const ce_problem *p, Py_ssize_t r, const CE_REAL *x, const CE_REAL *t,
                                  CE_REAL *g, double sw, double gi)
{
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const Py_ssize_t n = p->n_classes;
    const double eps_clip = p->clip > 0 ? p->clip : sizeof(CE_REAL) == 4 ? (double)FLT_EPSILON : DBL_EPSILON;
    const double a = 1.0 - p->smoothing, b = p->smoothing / (double)n;
    int64_t y = p->target_kind == CE_TARGET_INDEX ? p->labels[r] : -1;
    double loss = 0.0;
    for (Py_ssize_t c = 0; c < n; c++) {
        double tc = p->target_kind == CE_TARGET_INDEX ? a * (c == y) + b : a * (double)t[c] + b;
        double wt = tc * (w ? (double)w[c] : 1.0);
        double pc = (double)x[c];
        double clipped = pc < eps_clip ? eps_clip : pc;
        if (wt != 0)
            loss -= wt * log(clipped);
        if (g)
            g[c] = (CE_REAL)(pc < eps_clip ? 0.0 : -gi * wt / pc);
    }
    return sw * loss;
}

/* One row of a from-logits problem: writes the row outputs and g (when the
   mode has one); returns the row's weighted loss. */
CE_INLINE double CE_FN(ce_row)(ce_problem *p, Py_ssize_t r, const CE_REAL *x, const CE_REAL *t, CE_REAL *g)
{
    const Py_ssize_t n = p->n_classes;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const int mode = p->mode, kind = p->target_kind;
    const double eps = p->smoothing, z = p->z_loss, W = p->class_weight_sum;
    int64_t y = kind == CE_TARGET_INDEX ? p->labels[r] : -1;
    double sw = p->row_weight ? p->row_weight[r] : 1.0;
    int masked = sw == 0.0 || (kind == CE_TARGET_INDEX && y == p->ignore_index);
    double w_y = (kind == CE_TARGET_INDEX && !masked && w) ? (double)w[y] : 1.0;
    double gi = p->grad_scale * (p->row_grad ? p->row_grad[r] : 1.0) * sw;

    if (!p->from_logits) {
        if (p->row_argmax)
            p->row_argmax[r] = CE_FN(ce_first_equal)(x, n, CE_FN(ce_row_max)(x, n));
        if (p->row_rank)
            p->row_rank[r] = kind == CE_TARGET_INDEX && !masked ? CE_FN(ce_count_greater)(x, n, x[y]) : 0;
        double loss = masked ? 0.0 : CE_FN(ce_row_probs)(p, r, x, t, g, sw, gi);
        if (masked && g)
            memset(g, 0, (size_t)n * sizeof(CE_REAL));
        if (p->row_loss)
            p->row_loss[r] = loss;
        return loss;
    }

    if (mode == CE_MODE_GRAD_LSE) {
        if (masked) {
            memset(g, 0, (size_t)n * sizeof(CE_REAL));
            return 0.0;
        }
        double lse = p->lse_in[r];
        if (kind == CE_TARGET_INDEX) {
            double A = (1.0 - eps) * w_y + eps / (double)n * W + 2.0 * z * w_y * lse;
            CE_REAL k1 = (CE_REAL)(gi * A), k2 = (CE_REAL)(gi * eps / (double)n);
            double s_other = CE_FN(ce_grad_from_lse)(x, g, w, 0, y, (CE_REAL)lse, k1, k2)
                           + CE_FN(ce_grad_from_lse)(x, g, w, y + 1, n, (CE_REAL)lse, k1, k2);
            g[y] = (CE_REAL)(gi * (-A * s_other + eps / (double)n * (W - w_y) + 2.0 * z * w_y * lse));
        } else {
            CE_REAL a = (CE_REAL)(1.0 - eps), b = (CE_REAL)(eps / (double)n);
            double T = CE_FN(ce_sum_target)(t, w, n, a, b);
            CE_FN(ce_grad_from_lse)(x, g, NULL, 0, n, (CE_REAL)lse, (CE_REAL)(gi * (T + 2.0 * z * lse)), 0);
            /* subtract the target part separately: exp(x - lse) * k1 is in g */
#pragma omp simd
            for (Py_ssize_t c = 0; c < n; c++)
                g[c] -= (CE_REAL)gi * (w ? w[c] : (CE_REAL)1) * (a * t[c] + b);
        }
        return 0.0;
    }

    CE_REAL m = CE_FN(ce_row_max)(x, n);
    if (p->row_argmax)
        p->row_argmax[r] = CE_FN(ce_first_equal)(x, n, m);
    int store = g != NULL && mode != CE_MODE_FORWARD && mode != CE_MODE_LOG_SOFTMAX;
    double loss = 0.0, lse;

    if (kind == CE_TARGET_INDEX && !masked) {
        CE_REAL xy = x[y];
        if (p->row_rank)
            p->row_rank[r] = CE_FN(ce_count_greater)(x, n, xy);
        double shift_sum = eps > 0 ? CE_FN(ce_sum_shift)(x, w, n, m) : 0.0;
        double s_other = store ? CE_FN(ce_sum_exp_store)(x, g, 0, y, m)
                                   + CE_FN(ce_sum_exp_store)(x, g, y + 1, n, m)
                               : CE_FN(ce_sum_exp)(x, 0, y, m) + CE_FN(ce_sum_exp)(x, y + 1, n, m);
        double e_y = (double)CE_EXP(xy - m);
        double log_s = ce_log_sum2(e_y, s_other);
        lse = (double)m + log_s;
        /* (m - x_y) is exact in double; when y is the argmax it is 0 and the
           loss is log(1 + s_other) with no cancellation at all */
        double nll = ((double)m - (double)xy) + log_s;
        loss = sw * ((1.0 - eps) * w_y * nll + eps / (double)n * (shift_sum + W * log_s)
                     + z * w_y * lse * lse);
        if (store) {
            double s = s_other + e_y;
            double A = (1.0 - eps) * w_y + eps / (double)n * W + 2.0 * z * w_y * lse;
            CE_FN(ce_scale)(g, w, n, (CE_REAL)(gi * A / s), (CE_REAL)(gi * eps / (double)n));
            /* p_y - 1 = -s_other / s: the other classes' sum, never 1 - p_y */
            g[y] = (CE_REAL)(gi * (-A * s_other / s + eps / (double)n * (W - w_y) + 2.0 * z * w_y * lse));
        }
    } else if (kind == CE_TARGET_DENSE && !masked) {
        CE_REAL a = (CE_REAL)(1.0 - eps), b = (CE_REAL)(eps / (double)n);
        double T;
        double shifted = CE_FN(ce_sum_dense)(x, t, w, n, m, a, b, &T);
        double s = store ? CE_FN(ce_sum_exp_store)(x, g, 0, n, m) : CE_FN(ce_sum_exp)(x, 0, n, m);
        double log_s = ce_log_d(s);
        lse = (double)m + log_s;
        loss = sw * (shifted + T * log_s + z * lse * lse);
        if (store)
            CE_FN(ce_scale_dense)(g, t, w, n, (CE_REAL)(gi * (T + 2.0 * z * lse) / s), (CE_REAL)gi, a, b);
    } else {
        /* no target (softmax, log_softmax, logsumexp) or a masked row */
        double s = store ? CE_FN(ce_sum_exp_store)(x, g, 0, n, m) : CE_FN(ce_sum_exp)(x, 0, n, m);
        lse = (double)m + ce_log_d(s);
        if (store && mode == CE_MODE_SOFTMAX)
            CE_FN(ce_scale)(g, NULL, n, (CE_REAL)(1.0 / s), 0);
        if (g && mode == CE_MODE_LOG_SOFTMAX) {
            CE_REAL l = (CE_REAL)lse;
#pragma omp simd
            for (Py_ssize_t c = 0; c < n; c++)
                g[c] = x[c] - l;
        }
        if (masked) {
            if (g && mode == CE_MODE_FUSED)
                memset(g, 0, (size_t)n * sizeof(CE_REAL));
            if (p->row_rank)
                p->row_rank[r] = 0;
        }
    }
    if (p->row_lse)
        p->row_lse[r] = lse;
    if (p->row_loss)
        p->row_loss[r] = loss;
    return loss;
}

/* Copy a strided row into a contiguous tile, applying the soft cap. */
CE_INLINE void CE_FN(ce_gather)(CE_REAL *dst, const CE_REAL *src, Py_ssize_t n, Py_ssize_t stride,
                                double cap)
{
    if (cap > 0) {
        for (Py_ssize_t c = 0; c < n; c++)
            dst[c] = (CE_REAL)(cap * tanh((double)src[c * stride] / cap));
    } else {
        for (Py_ssize_t c = 0; c < n; c++)
            dst[c] = src[c * stride];
    }
}

/* The class-major kernel. Row-wise loops are all prologue, epilogue and
   dependency chains when C is small, and need a strided gather when the class
   axis is not last (N, C, H, W). Both are served by one kernel on a stripe of
   rows stored class-major: class c of row i at base[c * stride + i], so every
   step (max, exp, sums, log, gradient) is a loop across rows that vectorizes.
   Small C gets there by transposing a block into a tile; an (N, C, H, W) array
   already is laid out that way and is read and written in place. */
static int CE_FN(ce_columns_ok)(const ce_problem *p)
{
    const Py_ssize_t n = p->n_classes;
    if (!p->from_logits || p->mode == CE_MODE_GRAD_LSE || p->softcap != 0
        || (p->target_kind == CE_TARGET_NONE && p->mode == CE_MODE_FUSED)
        || p->block_rows > CE_SMALL_ROWS || n > (1 << 24))
        return 0;
    if (p->inner == 1) /* small C, C-ordered rows: transposed into a tile */
        return n <= CE_SMALL_C && p->x.s_class == 1 && p->x.s_outer == n
            && (p->target_kind != CE_TARGET_DENSE || (p->t.s_class == 1 && p->t.s_outer == n))
            && (p->g.data == NULL || (p->g.s_class == 1 && p->g.s_outer == n));
    /* class axis not last: rows of one outer index are contiguous per class */
    return p->x.s_inner == 1 && (p->target_kind != CE_TARGET_DENSE || p->t.s_inner == 1)
        && (p->g.data == NULL || p->g.s_inner == 1);
}

/* rows r0 .. r0 + nr - 1 (nr <= CE_SMALL_ROWS) held class-major in x (and t,
   and g when the mode writes one), with class strides xs, ts, gs. */
CE_INLINE double CE_FN(ce_columns)(ce_problem *p, Py_ssize_t r0, Py_ssize_t nr, const CE_REAL *x,
                                   Py_ssize_t xs, const CE_REAL *t, Py_ssize_t ts, CE_REAL *g,
                                   Py_ssize_t gs)
{
    enum { R = CE_SMALL_ROWS };
    const Py_ssize_t n = p->n_classes;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const int mode = p->mode, fused = mode == CE_MODE_FUSED;
    const int dense = p->target_kind == CE_TARGET_DENSE, index = p->target_kind == CE_TARGET_INDEX;
    const int store = fused || mode == CE_MODE_SOFTMAX;
    const double eps = p->smoothing, z = p->z_loss, W = p->class_weight_sum;
    const CE_REAL ta = (CE_REAL)(1.0 - eps), tb = (CE_REAL)(eps / (double)n);
    CE_REAL m[R], yf[R], xy[R], ey[R], acc[R], sacc[R], tacc[R];
    double so[R], ss[R], st[R];   /* the class sums in double: lane sums are flushed every CE_CHUNK classes */
    double tot[R], lg[R], lse[R], loss[R], k1[R], k2[R], gy[R];
    Py_ssize_t yi[R];
    unsigned char masked[R];

    memcpy(m, x, (size_t)nr * sizeof(CE_REAL));
    for (Py_ssize_t c = 1; c < n; c++) {
#pragma omp simd
        for (Py_ssize_t i = 0; i < nr; i++)
            m[i] = x[c * xs + i] > m[i] ? x[c * xs + i] : m[i];
    }
    for (Py_ssize_t i = 0; i < nr; i++) {
        int64_t y = index ? p->labels[r0 + i] : -1;
        double sw = p->row_weight ? p->row_weight[r0 + i] : 1.0;
        masked[i] = sw == 0.0 || (index && y == p->ignore_index);
        yi[i] = index && !masked[i] ? (Py_ssize_t)y : 0;
        yf[i] = index && !masked[i] ? (CE_REAL)y : (CE_REAL)-1;   /* exact: n <= 2^24 */
        xy[i] = x[yi[i] * xs + i];
    }
    /* sums that need the logits themselves, before g (which may be x) is written */
    memset(ss, 0, (size_t)nr * sizeof(double));
    memset(st, 0, (size_t)nr * sizeof(double));
    for (Py_ssize_t c0 = 0; c0 < n && (dense || eps > 0); c0 += CE_CHUNK) {
        const Py_ssize_t c1 = c0 + CE_CHUNK < n ? c0 + CE_CHUNK : n;
        memset(sacc, 0, (size_t)nr * sizeof(CE_REAL));
        memset(tacc, 0, (size_t)nr * sizeof(CE_REAL));
        for (Py_ssize_t c = c0; c < c1; c++) {
            CE_REAL wc = w ? w[c] : (CE_REAL)1;
            if (dense) {
#pragma omp simd
                for (Py_ssize_t i = 0; i < nr; i++) {
                    CE_REAL tw = (ta * t[c * ts + i] + tb) * wc;
                    CE_REAL term = tw * (m[i] - x[c * xs + i]);
                    sacc[i] += tw == 0 ? (CE_REAL)0 : term;   /* xlogy: 0 * inf is 0 */
                    tacc[i] += tw;
                }
            } else {
#pragma omp simd
                for (Py_ssize_t i = 0; i < nr; i++)
                    sacc[i] += wc * (m[i] - x[c * xs + i]);
            }
        }
        for (Py_ssize_t i = 0; i < nr; i++) {
            ss[i] += (double)sacc[i];
            st[i] += (double)tacc[i];
        }
    }
    /* the other classes' exp sum: the target's own term is left out here */
    memset(so, 0, (size_t)nr * sizeof(double));
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CE_CHUNK) {
      const Py_ssize_t c1 = c0 + CE_CHUNK < n ? c0 + CE_CHUNK : n;
      memset(acc, 0, (size_t)nr * sizeof(CE_REAL));
      for (Py_ssize_t c = c0; c < c1; c++) {
        const CE_REAL cf = (CE_REAL)c;
        if (store) {
#pragma omp simd
            for (Py_ssize_t i = 0; i < nr; i++) {
                CE_REAL e = CE_EXP(x[c * xs + i] - m[i]);
                g[c * gs + i] = e;
                acc[i] += cf == yf[i] ? (CE_REAL)0 : e;
            }
        } else {
#pragma omp simd
            for (Py_ssize_t i = 0; i < nr; i++) {
                CE_REAL e = CE_EXP(x[c * xs + i] - m[i]);
                acc[i] += cf == yf[i] ? (CE_REAL)0 : e;
            }
        }
      }
      for (Py_ssize_t i = 0; i < nr; i++)
          so[i] += (double)acc[i];
    }
#pragma omp simd
    for (Py_ssize_t i = 0; i < nr; i++)
        ey[i] = yf[i] >= 0 ? CE_EXP(xy[i] - m[i]) : (CE_REAL)0;
#pragma omp simd
    for (Py_ssize_t i = 0; i < nr; i++) {
        double a = (double)ey[i], b = so[i], s = a + b, bb = s - a;
        tot[i] = s;
        lg[i] = ((a - (s - bb)) + (b - bb)) / s;   /* TwoSum error of a + b, as in ce_log_sum2 */
    }
#pragma omp simd
    for (Py_ssize_t i = 0; i < nr; i++) {
        lg[i] += ce_log_d(tot[i]);
        lse[i] = (double)m[i] + lg[i];
        loss[i] = ((double)m[i] - (double)xy[i]) + lg[i];   /* the plain nll; exact when y is the argmax */
    }
    const int plain = index && eps == 0 && z == 0 && !w && !p->row_weight;
    for (Py_ssize_t i = 0; i < nr; i++) {
        Py_ssize_t r = r0 + i;
        if (masked[i] || !(index || dense)) {
            loss[i] = 0.0;
            continue;
        }
        if (plain)
            continue;
        double sw = p->row_weight ? p->row_weight[r] : 1.0;
        if (dense) {
            loss[i] = sw * (ss[i] + st[i] * lg[i] + z * lse[i] * lse[i]);
        } else {
            double w_y = w ? (double)w[yi[i]] : 1.0;
            double smooth = eps > 0 ? ss[i] + W * lg[i] : 0.0;
            loss[i] = sw * ((1.0 - eps) * w_y * loss[i] + eps / (double)n * smooth + z * w_y * lse[i] * lse[i]);
        }
    }
    double total = 0.0;
    for (Py_ssize_t i = 0; i < nr; i++)
        total += loss[i];
    if (p->row_loss)
        memcpy(p->row_loss + r0, loss, (size_t)nr * sizeof(double));
    if (p->row_lse)
        memcpy(p->row_lse + r0, lse, (size_t)nr * sizeof(double));
    if (p->row_argmax) {
        for (Py_ssize_t i = 0; i < nr; i++) {
            Py_ssize_t c = 0;
            while (c < n && x[c * xs + i] != m[i])
                c++;
            p->row_argmax[r0 + i] = c < n ? c : 0;   /* as ce_first_equal */
        }
    }
    if (p->row_rank) {
        for (Py_ssize_t i = 0; i < nr; i++) {
            int64_t k = 0;
            for (Py_ssize_t c = 0; c < n && index && !masked[i]; c++)
                k += x[c * xs + i] > xy[i];
            p->row_rank[r0 + i] = k;
        }
    }
    if (mode == CE_MODE_FORWARD)
        return total;

    if (mode == CE_MODE_SOFTMAX) {
        for (Py_ssize_t i = 0; i < nr; i++)
            k1[i] = 1.0 / tot[i];
        for (Py_ssize_t c = 0; c < n; c++) {
#pragma omp simd
            for (Py_ssize_t i = 0; i < nr; i++)
                g[c * gs + i] *= (CE_REAL)k1[i];
        }
        return total;
    }
    if (mode == CE_MODE_LOG_SOFTMAX) {
        for (Py_ssize_t c = 0; c < n; c++) {
#pragma omp simd
            for (Py_ssize_t i = 0; i < nr; i++)
                g[c * gs + i] = x[c * xs + i] - (CE_REAL)lse[i];
        }
        return total;
    }
    /* fused: g holds exp(x - m); scale each row, then set the target entries */
    for (Py_ssize_t i = 0; i < nr; i++) {
        Py_ssize_t r = r0 + i;
        double sw = p->row_weight ? p->row_weight[r] : 1.0;
        double gi = masked[i] ? 0.0 : p->grad_scale * (p->row_grad ? p->row_grad[r] : 1.0) * sw;
        double inv = 1.0 / tot[i];
        if (dense) {
            k1[i] = gi * (st[i] + 2.0 * z * lse[i]) * inv;
            k2[i] = gi;
        } else {
            double w_y = w ? (double)w[yi[i]] : 1.0;
            double A = (1.0 - eps) * w_y + eps / (double)n * W + 2.0 * z * w_y * lse[i];
            k1[i] = gi * A * inv;
            k2[i] = gi * eps / (double)n;
            /* p_y - 1 = -s_other / s: the other classes' sum, never 1 - p_y */
            gy[i] = gi * (-A * so[i] * inv + eps / (double)n * (W - w_y) + 2.0 * z * w_y * lse[i]);
        }
    }
    for (Py_ssize_t c = 0; c < n; c++) {
        CE_REAL wc = w ? w[c] : (CE_REAL)1;
        if (dense) {
#pragma omp simd
            for (Py_ssize_t i = 0; i < nr; i++)
                g[c * gs + i] = g[c * gs + i] * (CE_REAL)k1[i] - (CE_REAL)k2[i] * wc * (ta * t[c * ts + i] + tb);
        } else {
#pragma omp simd
            for (Py_ssize_t i = 0; i < nr; i++)
                g[c * gs + i] = g[c * gs + i] * (CE_REAL)k1[i] - (CE_REAL)k2[i] * wc;
        }
    }
    for (Py_ssize_t i = 0; i < nr; i++) {
        if (masked[i]) {
            for (Py_ssize_t c = 0; c < n; c++)
                g[c * gs + i] = 0;   /* even against NaN logits */
        } else if (index) {
            g[yi[i] * gs + i] = (CE_REAL)gy[i];
        }
    }
    return total;
}

CE_INLINE void CE_FN(ce_transpose)(CE_REAL *dst, Py_ssize_t ds, Py_ssize_t dc, const CE_REAL *src,
                                   Py_ssize_t ss, Py_ssize_t sc, Py_ssize_t nr, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < nr; i++)
        for (Py_ssize_t c = 0; c < n; c++)
            dst[i * ds + c * dc] = src[i * ss + c * sc];
}

/* rows [r0, r1) of the block through the class-major kernel */
CE_INLINE double CE_FN(ce_block_columns)(ce_problem *p, Py_ssize_t r0, Py_ssize_t r1)
{
    enum { R = CE_SMALL_ROWS };
    const Py_ssize_t n = p->n_classes, inner = p->inner;
    const int dense = p->target_kind == CE_TARGET_DENSE, has_g = p->g.data != NULL;
    if (inner == 1) {
        CE_REAL xt[CE_SMALL_C * R], tt[CE_SMALL_C * R], gt[CE_SMALL_C * R];
        Py_ssize_t nr = r1 - r0;
        CE_FN(ce_transpose)(xt, 1, R, (const CE_REAL *)p->x.data + r0 * n, n, 1, nr, n);
        if (dense)
            CE_FN(ce_transpose)(tt, 1, R, (const CE_REAL *)p->t.data + r0 * n, n, 1, nr, n);
        double total = CE_FN(ce_columns)(p, r0, nr, xt, R, tt, R, has_g ? gt : NULL, R);
        if (has_g)
            CE_FN(ce_transpose)((CE_REAL *)p->g.data + r0 * n, n, 1, gt, 1, R, nr, n);
        return total;
    }
    double total = 0.0;
    for (Py_ssize_t r = r0; r < r1;) {   /* one stripe per outer index */
        Py_ssize_t o = r / inner, i0 = r % inner;
        Py_ssize_t nr = inner - i0 < r1 - r ? inner - i0 : r1 - r;
        const CE_REAL *x = (const CE_REAL *)p->x.data + o * p->x.s_outer + i0;
        const CE_REAL *t = dense ? (const CE_REAL *)p->t.data + o * p->t.s_outer + i0 : NULL;
        CE_REAL *g = has_g ? (CE_REAL *)p->g.data + o * p->g.s_outer + i0 : NULL;
        total += CE_FN(ce_columns)(p, r, nr, x, p->x.s_class, t, dense ? p->t.s_class : 0, g,
                                   has_g ? p->g.s_class : 0);
        r += nr;
    }
    return total;
}

/* Rows [b * block_rows, ...) of the problem; adds their losses in row order
   into block_loss[b]. Scratch tiles are used only for strided rows, a strided
   gradient or the soft cap. Returns 0, or -1 when the scratch tile could not be
   allocated (the block wrote nothing then). */
CE_DISPATCH int CE_FN(ce_block)(ce_problem *p, Py_ssize_t b)
{
    unsigned int csr;
    CE_FTZ_ON(csr);
    const Py_ssize_t n = p->n_classes, inner = p->inner;
    const Py_ssize_t r0 = b * p->block_rows;
    const Py_ssize_t r1 = r0 + p->block_rows < p->n_rows ? r0 + p->block_rows : p->n_rows;
    const int has_t = p->target_kind == CE_TARGET_DENSE;
    const int has_g = p->g.data != NULL;
    const int tile_x = p->x.s_class != 1 || p->softcap > 0;
    const int tile_t = has_t && p->t.s_class != 1;
    const int tile_g = has_g && (p->g.s_class != 1 || tile_x);
    CE_REAL *scratch = NULL;
    if (CE_FN(ce_columns_ok)(p)) {
        double acc = CE_FN(ce_block_columns)(p, r0, r1);
        if (p->block_loss)
            p->block_loss[b] = acc;
        CE_FTZ_OFF(csr);
        return 0;
    }
    if (tile_x || tile_t || tile_g) {
        scratch = (CE_REAL *)malloc((size_t)(3 * n) * sizeof(CE_REAL));
        if (!scratch) {
            CE_FTZ_OFF(csr);
            return -1;
        }
    }
    double acc = 0.0;
    for (Py_ssize_t r = r0; r < r1; r++) {
        const CE_REAL *x = (const CE_REAL *)p->x.data + ce_offset(&p->x, r, inner);
        const CE_REAL *t = has_t ? (const CE_REAL *)p->t.data + ce_offset(&p->t, r, inner) : NULL;
        CE_REAL *g = has_g ? (CE_REAL *)p->g.data + ce_offset(&p->g, r, inner) : NULL;
        CE_REAL *gdst = g;
        if (tile_x) {
            CE_FN(ce_gather)(scratch, x, n, p->x.s_class, p->softcap);
            x = scratch;
        }
        if (tile_t) {
            CE_FN(ce_gather)(scratch + n, t, n, p->t.s_class, 0.0);
            t = scratch + n;
        }
        if (tile_g)
            g = scratch + 2 * n;
        acc += CE_FN(ce_row)(p, r, x, t, g);
        if (tile_g) {
            if (p->softcap > 0 && p->mode != CE_MODE_SOFTMAX && p->mode != CE_MODE_LOG_SOFTMAX) {
                /* chain rule of cap * tanh(x / cap): times 1 - tanh^2 */
                double inv = 1.0 / p->softcap;
                for (Py_ssize_t c = 0; c < n; c++) {
                    double th = (double)x[c] * inv;
                    /* a masked row's exact zeros stay zeros, even against NaN logits */
                    g[c] = g[c] == 0 ? (CE_REAL)0 : (CE_REAL)((double)g[c] * (1.0 - th * th));
                }
            }
            for (Py_ssize_t c = 0; c < n; c++)
                gdst[c * p->g.s_class] = g[c];
        }
    }
    if (p->block_loss)
        p->block_loss[b] = acc;
    free(scratch);
    CE_FTZ_OFF(csr);
    return 0;
}

#undef CE_FN
#undef CE_CAT
#undef CE_CAT2
