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

typedef CE_REAL CE_FN(ce_real);

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
#pragma omp simd reduction(+ : part, tpart)
        for (Py_ssize_t c = c0; c < c1; c++) {
            CE_REAL tw = (a * t[c] + b) * (w ? w[c] : (CE_REAL)1);
            CE_REAL term = tw * (m - x[c]);
            part += tw == 0 ? (CE_REAL)0 : term;
            tpart += tw;
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
#pragma omp simd
    for (Py_ssize_t c = 0; c < n; c++)
        g[c] = g[c] * k1 - k2 * (w ? w[c] : (CE_REAL)1) * (a * t[c] + b);
}

/* g[c] = exp(x[c] - lse) * k1 - k2 * w[c] over [lo, hi); returns the sum of the exps */
CE_INLINE double CE_FN(ce_grad_from_lse)(const CE_REAL *x, CE_REAL *g, const CE_REAL *w, Py_ssize_t lo,
                                         Py_ssize_t hi, CE_REAL lse, CE_REAL k1, CE_REAL k2)
{
    double s = 0.0;
    for (Py_ssize_t c0 = lo; c0 < hi; c0 += CE_CHUNK) {
        Py_ssize_t c1 = c0 + CE_CHUNK < hi ? c0 + CE_CHUNK : hi;
        CE_REAL part = 0;
#pragma omp simd reduction(+ : part)
        for (Py_ssize_t c = c0; c < c1; c++) {
            CE_REAL e = CE_EXP(x[c] - lse);
            part += e;
            g[c] = e * k1 - k2 * (w ? w[c] : (CE_REAL)1);
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
    const double eps_clip = sizeof(CE_REAL) == 4 ? (double)FLT_EPSILON : DBL_EPSILON;
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

/* Few classes (C <= CE_SMALL_C), contiguous rows, class-index targets: the
   row-wise loops above would be all prologue and epilogue, so a block is done
   as flat loops instead: row maxima spread into a shift buffer, one exp loop
   over the whole block, row sums, then one vectorized log over the rows. */
static int CE_FN(ce_small_ok)(const ce_problem *p)
{
    const Py_ssize_t n = p->n_classes;
    return n <= CE_SMALL_C && p->from_logits && p->target_kind == CE_TARGET_INDEX
        && (p->mode == CE_MODE_FORWARD || p->mode == CE_MODE_FUSED) && p->softcap == 0
        && p->inner == 1 && p->x.s_class == 1 && p->x.s_outer == n
        && (p->g.data == NULL || (p->g.s_class == 1 && p->g.s_outer == n))
        && p->block_rows <= CE_SMALL_ROWS;
}

CE_INLINE double CE_FN(ce_block_small)(ce_problem *p, Py_ssize_t r0, Py_ssize_t r1)
{
    const Py_ssize_t n = p->n_classes, nr = r1 - r0, len = nr * n;
    const CE_REAL *x = (const CE_REAL *)p->x.data + r0 * n;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const double eps = p->smoothing, z = p->z_loss, W = p->class_weight_sum;
    const int fused = p->mode == CE_MODE_FUSED;
    CE_REAL shift[CE_SMALL_ROWS * CE_SMALL_C], ebuf[CE_SMALL_ROWS * CE_SMALL_C];
    CE_REAL *e = fused ? (CE_REAL *)p->g.data + r0 * n : ebuf;
    double tot[CE_SMALL_ROWS], other[CE_SMALL_ROWS], err[CE_SMALL_ROWS], logs[CE_SMALL_ROWS];
    CE_REAL mx[CE_SMALL_ROWS];

    for (Py_ssize_t i = 0; i < nr; i++) {
        const CE_REAL *xr = x + i * n;
        CE_REAL m = xr[0];
        for (Py_ssize_t c = 1; c < n; c++)
            m = xr[c] > m ? xr[c] : m;
        m = m != m ? (CE_REAL)-INFINITY : m;   /* a leading NaN: let exp spread it */
        mx[i] = m;
        for (Py_ssize_t c = 0; c < n; c++)
            shift[i * n + c] = m;
    }
#pragma omp simd
    for (Py_ssize_t k = 0; k < len; k++)
        e[k] = CE_EXP(x[k] - shift[k]);
    for (Py_ssize_t i = 0; i < nr; i++) {
        int64_t y = p->labels[r0 + i];
        Py_ssize_t yy = y != p->ignore_index ? (Py_ssize_t)y : 0;
        const CE_REAL *er = e + i * n;
        double s_other = 0.0;
        for (Py_ssize_t c = 0; c < n; c++)
            s_other += c == yy ? 0.0 : (double)er[c];
        double a = (double)er[yy], s = a + s_other, bb = s - a;
        tot[i] = s;
        other[i] = s_other;
        err[i] = (a - (s - bb)) + (s_other - bb);   /* TwoSum, as in ce_log_sum2 */
    }
#pragma omp simd
    for (Py_ssize_t i = 0; i < nr; i++)
        logs[i] = ce_log_d(tot[i]);
    double acc = 0.0;
    for (Py_ssize_t i = 0; i < nr; i++) {
        Py_ssize_t r = r0 + i;
        int64_t y = p->labels[r];
        double sw = p->row_weight ? p->row_weight[r] : 1.0;
        const CE_REAL *xr = x + i * n;
        double s_other = other[i];
        double log_s = logs[i] + err[i] / tot[i];
        double m = (double)mx[i];
        double lse = m + log_s;
        if (p->row_lse)
            p->row_lse[r] = lse;
        if (p->row_argmax) {
            Py_ssize_t c = 0;
            while (c < n - 1 && xr[c] != mx[i])
                c++;
            p->row_argmax[r] = c;
        }
        if (y == p->ignore_index || sw == 0.0) {
            if (p->row_rank)
                p->row_rank[r] = 0;
            if (p->row_loss)
                p->row_loss[r] = 0.0;
            if (fused)
                memset(e + i * n, 0, (size_t)n * sizeof(CE_REAL));
            continue;
        }
        double w_y = w ? (double)w[y] : 1.0;
        if (p->row_rank)
            p->row_rank[r] = CE_FN(ce_count_greater)(xr, n, xr[y]);
        double shift_sum = 0.0;
        if (eps > 0)
            for (Py_ssize_t c = 0; c < n; c++)
                shift_sum += (w ? (double)w[c] : 1.0) * (m - (double)xr[c]);
        double nll = (m - (double)xr[y]) + log_s;
        double loss = sw * ((1.0 - eps) * w_y * nll + eps / (double)n * (shift_sum + W * log_s)
                            + z * w_y * lse * lse);
        if (p->row_loss)
            p->row_loss[r] = loss;
        acc += loss;
        if (fused) {
            CE_REAL *gr = e + i * n;
            double gi = p->grad_scale * (p->row_grad ? p->row_grad[r] : 1.0) * sw;
            double s = tot[i];
            double A = (1.0 - eps) * w_y + eps / (double)n * W + 2.0 * z * w_y * lse;
            CE_REAL k1 = (CE_REAL)(gi * A / s), k2 = (CE_REAL)(gi * eps / (double)n);
            for (Py_ssize_t c = 0; c < n; c++)
                gr[c] = gr[c] * k1 - k2 * (w ? w[c] : (CE_REAL)1);
            gr[y] = (CE_REAL)(gi * (-A * s_other / s + eps / (double)n * (W - w_y) + 2.0 * z * w_y * lse));
        }
    }
    return acc;
}

/* Rows [b * block_rows, ...) of the problem; adds their losses in row order
   into block_loss[b]. Scratch tiles are used only for strided rows, a strided
   gradient or the soft cap. */
CE_DISPATCH void CE_FN(ce_block)(ce_problem *p, Py_ssize_t b)
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
    if (CE_FN(ce_small_ok)(p)) {
        double acc = CE_FN(ce_block_small)(p, r0, r1);
        if (p->block_loss)
            p->block_loss[b] = acc;
        CE_FTZ_OFF(csr);
        return;
    }
    if (tile_x || tile_t || tile_g) {
        scratch = (CE_REAL *)malloc((size_t)(3 * n) * sizeof(CE_REAL));
        if (!scratch) {
            p->failed = 1;
            CE_FTZ_OFF(csr);
            return;
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
                    g[c] = (CE_REAL)((double)g[c] * (1.0 - th * th));
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
}

#undef CE_FN
#undef CE_CAT
#undef CE_CAT2
