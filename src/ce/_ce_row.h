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

#define CE_L (64 / (int)sizeof(CE_REAL))   /* lanes of one 64-byte vector: 16 floats, 8 doubles */
#define CE_W (CE_ROW_VECTORS * CE_L)         /* lanes of a wide step */
/* Rows this long take the exp pass in four-vector steps, shorter ones in
   two-vector steps: two chains already hide the add latency behind the exp's
   arithmetic, and half the lanes halve the per-row flush and lane sum (float32,
   one thread, 25 interleaved rounds: 1.03-1.09x at C = 65-256, forward and fused;
   even from 512 up; at 32000 fused, two vectors 0.95x). The max pass keeps four
   vectors at every n >= CE_W (at two, it ran 2x slower at C = 65-256). */
#ifndef CE_EXP_WIDE_MIN
#define CE_EXP_WIDE_MIN 4096
#endif

static const CE_REAL CE_FN(ce_lane)[64] = {   /* >= CE_W */
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
    28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52,
    53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63};

/* The row kernel's reductions keep w partial results in a lane array that
   gcc holds in vector registers: w = CE_W (four vectors, four independent
   dependency chains) for rows of at least CE_W (the exp pass: CE_EXP_WIDE_MIN),
   else 2 CE_L or CE_L. A row of
   n >= w elements is covered by steps of w, the last one overlapping the one
   before (lanes below `skip` were already counted), so no step runs a scalar
   remainder. The steps before the last have skip = 0 and a constant w, which
   is what lets gcc drop the masking from them. */

/* max of x[0, n), n >= w (NaN skipped; exp(NaN) spreads it later); branch-free */
CE_INLINE CE_REAL CE_FN(ce_max_steps)(const CE_REAL *x, Py_ssize_t n, const int w)
{
    CE_REAL mx[CE_W];
    for (int j = 0; j < w; j++)
        mx[j] = -INFINITY;
    for (Py_ssize_t c0 = 0; c0 < n; c0 += w) {
        const Py_ssize_t b = c0 + w <= n ? c0 : n - w;   /* overlap: max is idempotent */
#pragma omp simd
        for (int j = 0; j < w; j++) {
            CE_REAL v = x[b + j];
            mx[j] = v > mx[j] ? v : mx[j];
        }
    }
    for (int k = CE_L; k < w; k += CE_L)   /* the vectors folded into one, then its lanes */
#pragma omp simd
        for (int j = 0; j < CE_L; j++)
            mx[j] = mx[k + j] > mx[j] ? mx[k + j] : mx[j];
    for (int j = 0; j < 8 && CE_L == 16; j++)   /* the lanes to 8, then a tree in registers */
        mx[j] = mx[j + 8] > mx[j] ? mx[j + 8] : mx[j];
    CE_REAL a = mx[4] > mx[0] ? mx[4] : mx[0], b = mx[5] > mx[1] ? mx[5] : mx[1];
    CE_REAL c = mx[6] > mx[2] ? mx[6] : mx[2], d = mx[7] > mx[3] ? mx[7] : mx[3];
    a = c > a ? c : a;
    b = d > b ? d : b;
    return b > a ? b : a;
}

/* the first lane of x[0, CE_L) equal to m, or CE_L */
CE_INLINE int CE_FN(ce_first_equal)(const CE_REAL *x, CE_REAL m)
{
    int first = CE_L;
#pragma omp simd reduction(min : first)
    for (int j = 0; j < CE_L; j++) {
        const int lane = x[j] == m ? j : CE_L;
        first = lane < first ? lane : first;
    }
    return first;
}

/* the max (ce_max_steps with w lanes) and the first index holding it (0 when
   no element is above -inf: NaN and -inf only), n >= CE_L. An index-tracking
   select in the max loop compiled into a data-dependent branch per vector; a
   second look for the first vector holding the max is cheap: the row is in L1
   and the search stops there. The last vector overlaps the one before, whose
   lanes did not match. */
CE_INLINE CE_REAL CE_FN(ce_argmax_steps)(const CE_REAL *x, Py_ssize_t n, const int w, int64_t *arg)
{
    const CE_REAL m = CE_FN(ce_max_steps)(x, n, w);
    *arg = 0;
    for (Py_ssize_t c0 = 0; c0 < n && m != -INFINITY; c0 += CE_L) {
        const Py_ssize_t b = c0 + CE_L <= n ? c0 : n - CE_L;
        const int first = CE_FN(ce_first_equal)(x + b, m);
        if (first < CE_L) {
            *arg = b + first;
            break;
        }
    }
    return m;
}

/* one step of the exp pass over x[0, w): e = exp(x - m), stored in g (when
   store) for the lanes not yet done; acc gets e except in lane yr (the
   target; yr < 0: not in this step), cnt counts the lanes with x > xy (when
   count) */
CE_INLINE void CE_FN(ce_exp_step_)(const CE_REAL *x, CE_REAL *g, CE_REAL m, CE_REAL skip, CE_REAL yr,
                                   CE_REAL xy, CE_REAL *acc, CE_REAL *cnt, const int w, const int store,
                                   const int count, const int has_target)
{
#pragma omp simd
    for (int j = 0; j < w; j++) {
        CE_REAL e = CE_EXP(x[j] - m);
        int fresh = CE_FN(ce_lane)[j] >= skip;
        if (count)   /* before the store: g may be x */
            cnt[j] += fresh & (x[j] > xy) ? (CE_REAL)1 : (CE_REAL)0;
        acc[j] += fresh & (!has_target | (CE_FN(ce_lane)[j] != yr)) ? e : (CE_REAL)0;
        if (store)
            g[j] = fresh ? e : g[j];
    }
}

/* ce_exp_step, with the target's lane test compiled out of the steps that do
   not hold it (all but one of a row's: two vector instructions of about 20) */
CE_INLINE void CE_FN(ce_exp_step)(const CE_REAL *x, CE_REAL *g, CE_REAL m, CE_REAL skip, CE_REAL yr,
                                  CE_REAL xy, CE_REAL *acc, CE_REAL *cnt, const int w, const int store,
                                  const int count)
{
    if (yr >= 0)
        CE_FN(ce_exp_step_)(x, g, m, skip, yr, xy, acc, cnt, w, store, count, 1);
    else
        CE_FN(ce_exp_step_)(x, g, m, skip, yr, xy, acc, cnt, w, store, count, 0);
}

/* lane sums into double lanes (often enough that a float lane never adds up
   more than CE_CHUNK / CE_L terms); the first flush sets dacc, so that a row
   flushed once zeroes no double lanes at all */
CE_INLINE void CE_FN(ce_flush)(double *dacc, CE_REAL *acc, const int w, const int first)
{
#pragma omp simd
    for (int j = 0; j < w; j++) {
        dacc[j] = (first ? 0.0 : dacc[j]) + (double)acc[j];
        acc[j] = 0;
    }
}

/* the count in lanes cnt (each at most CE_CHUNK / CE_L since the last fold,
   so their float sum is exact), then the lanes zeroed */
CE_INLINE int64_t CE_FN(ce_count_fold)(CE_REAL *cnt, const int w)
{
    CE_REAL total = 0;
#pragma omp simd reduction(+ : total)
    for (int j = 0; j < w; j++) {
        total += cnt[j];
        cnt[j] = 0;
    }
    return (int64_t)total;
}

/* the lanes added up in a fixed order: the vectors into the first, then a tree */
CE_INLINE double CE_FN(ce_lanes_total)(double *d, const int w)
{
    for (int k = CE_L; k < w; k += CE_L)
#pragma omp simd
        for (int j = 0; j < CE_L; j++)
            d[j] += d[k + j];
    /* the lanes to 8, then the tree ((d0 + d4) + (d2 + d6)) + ((d1 + d5) + (d3 + d7))
       as halving vector adds, 32 and 16 bytes wide (written as one scalar
       expression, it had every lane extracted: 2-8% of a row's cost at C = 65-256) */
    for (int j = 0; j < 8 && CE_L == 16; j++)
        d[j] += d[j + 8];
#pragma omp simd
    for (int j = 0; j < 4; j++)
        d[j] += d[j + 4];
#pragma omp simd
    for (int j = 0; j < 2; j++)
        d[j] += d[j + 2];
    return d[0] + d[1];
}

/* the target's lane in a step of w lanes from b, or -1 when y is not in it */
CE_INLINE CE_REAL CE_FN(ce_target_lane)(Py_ssize_t y, Py_ssize_t b, int w)
{
    const Py_ssize_t dy = y - b;
    return dy >= 0 && dy < w ? (CE_REAL)dy : (CE_REAL)-1;
}

/* Sum of exp(x[c] - m) over c != y in [0, n), n >= w (y < 0: all c), each
   exp stored in g[c] when g (g may be x); *rank (when rank) gets the count of
   x[c] > xy. Steps of w cover the row while more than w elements remain, and
   one-vector steps the rest (the last one overlapping), so that no more than
   one vector's lanes are computed twice. Each step prefetches the same span
   of pf (the next row, or NULL), so that the next row's max pass reads from
   cache while this pass computes. */
CE_INLINE double CE_FN(ce_exp_steps)(const CE_REAL *x, CE_REAL *g, Py_ssize_t n, CE_REAL m, Py_ssize_t y,
                                     CE_REAL xy, int64_t *rank, const CE_REAL *pf, const int w,
                                     const int store, const int count)
{
    CE_REAL acc[CE_W], cnt[CE_W];
    double dacc[CE_W];
    int64_t counted = 0;
    for (int j = 0; j < w; j++)   /* only the w lanes in use, and the counts only when counted */
        acc[j] = 0;
    if (count)
        for (int j = 0; j < w; j++)
            cnt[j] = 0;
    /* wide steps between flushes: with the up to w / CE_L one-vector steps
       after the last flush, no lane adds up more than CE_CHUNK / CE_L terms */
    const Py_ssize_t run = (Py_ssize_t)w * (CE_CHUNK / CE_L + 1 - w / CE_L);
    Py_ssize_t c0 = 0;
    for (; c0 + w < n; c0 += w) {
        const CE_REAL yr = CE_FN(ce_target_lane)(y, c0, w);
        if (pf)
            for (int j = 0; j < w; j += CE_L)   /* one 64-byte line per vector */
                __builtin_prefetch(pf + c0 + j);
        CE_FN(ce_exp_step)(x + c0, store ? g + c0 : NULL, m, 0, yr, xy, acc, cnt, w, store, count);
        if ((c0 + w) % run == 0) {
            CE_FN(ce_flush)(dacc, acc, w, c0 + w == run);
            if (count)
                counted += CE_FN(ce_count_fold)(cnt, w);
        }
    }
    const int flushed = c0 >= run;
    for (; c0 + CE_L < n; c0 += CE_L) {   /* one-vector steps */
        const CE_REAL yr = CE_FN(ce_target_lane)(y, c0, CE_L);
        if (pf)
            __builtin_prefetch(pf + c0);
        CE_FN(ce_exp_step)(x + c0, store ? g + c0 : NULL, m, 0, yr, xy, acc, cnt, CE_L, store, count);
    }
    const Py_ssize_t b = n - CE_L;   /* the last, overlapping the one before */
    const CE_REAL skip = (CE_REAL)(c0 - b), yr = CE_FN(ce_target_lane)(y, b, CE_L);
    if (pf)
        __builtin_prefetch(pf + b);
    CE_FN(ce_exp_step)(x + b, store ? g + b : NULL, m, skip, yr, xy, acc, cnt, CE_L, store, count);
    CE_FN(ce_flush)(dacc, acc, w, !flushed);
    if (count)
        *rank = counted + CE_FN(ce_count_fold)(cnt, w);
    return CE_FN(ce_lanes_total)(dacc, w);
}

CE_INLINE double CE_FN(ce_exp_width)(const CE_REAL *x, CE_REAL *g, Py_ssize_t n, CE_REAL m, Py_ssize_t y,
                                     CE_REAL xy, int64_t *rank, const CE_REAL *pf, const int w)
{
    if (g && rank)
        return CE_FN(ce_exp_steps)(x, g, n, m, y, xy, rank, pf, w, 1, 1);
    if (g)
        return CE_FN(ce_exp_steps)(x, g, n, m, y, xy, rank, pf, w, 1, 0);
    if (rank)
        return CE_FN(ce_exp_steps)(x, g, n, m, y, xy, rank, pf, w, 0, 1);
    return CE_FN(ce_exp_steps)(x, g, n, m, y, xy, rank, pf, w, 0, 0);
}

/* Rows shorter than CE_L: padded with -inf (exp 0, never the max) to one step. */
CE_INLINE CE_REAL CE_FN(ce_lane_max)(const CE_REAL *x, Py_ssize_t n, int64_t *arg)
{
    if (n < CE_L) {
        CE_REAL xb[CE_L];
        for (int j = 0; j < CE_L; j++)
            xb[j] = j < n ? x[j] : -INFINITY;
        return arg ? CE_FN(ce_argmax_steps)(xb, CE_L, CE_L, arg) : CE_FN(ce_max_steps)(xb, CE_L, CE_L);
    }
    if (arg)   /* the width a constant in each call, so gcc keeps each step's width fixed */
        return n >= CE_W ? CE_FN(ce_argmax_steps)(x, n, CE_W, arg)
             : n >= 2 * CE_L ? CE_FN(ce_argmax_steps)(x, n, 2 * CE_L, arg) : CE_FN(ce_argmax_steps)(x, n, CE_L, arg);
    return n >= CE_W ? CE_FN(ce_max_steps)(x, n, CE_W)
         : n >= 2 * CE_L ? CE_FN(ce_max_steps)(x, n, 2 * CE_L) : CE_FN(ce_max_steps)(x, n, CE_L);
}

/* pf: the next row to prefetch, or NULL */
CE_INLINE double CE_FN(ce_lane_exp)(const CE_REAL *x, CE_REAL *g, Py_ssize_t n, CE_REAL m, Py_ssize_t y,
                                    CE_REAL xy, int64_t *rank, const CE_REAL *pf)
{
    if (n >= CE_EXP_WIDE_MIN)
        return CE_FN(ce_exp_width)(x, g, n, m, y, xy, rank, pf, CE_W);
    if (n >= 2 * CE_L)
        return CE_FN(ce_exp_width)(x, g, n, m, y, xy, rank, pf, 2 * CE_L);
    if (n >= CE_L)
        return CE_FN(ce_exp_width)(x, g, n, m, y, xy, rank, pf, CE_L);
    CE_REAL xb[CE_L], gb[CE_L];
    for (int j = 0; j < CE_L; j++)
        xb[j] = j < n ? x[j] : -INFINITY;
    double s = CE_FN(ce_exp_width)(xb, g ? gb : NULL, CE_L, m, y, xy, rank, NULL, CE_L);
    if (g)
        memcpy(g, gb, (size_t)n * sizeof(CE_REAL));
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

/* What a row needs besides its logits: label, weights, upstream gradient. */
typedef struct {
    Py_ssize_t y;      /* the label (index targets, not masked), else -1 */
    double sw;         /* sample weight; 0 for a masked row */
    double w_y;        /* class weight of y (1 when none) */
    double gi;         /* upstream gradient times the sample weight */
    int masked;
    const CE_REAL *next;   /* the next row's logits, prefetched during the exp pass (or NULL) */
} CE_FN(ce_row_info);

CE_INLINE CE_FN(ce_row_info) CE_FN(ce_info)(const ce_problem *p, Py_ssize_t r)
{
    CE_FN(ce_row_info) in;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const int index = p->target_kind == CE_TARGET_INDEX;
    int64_t y = index ? p->labels[r] : -1;
    in.sw = p->row_weight ? p->row_weight[r] : 1.0;
    in.masked = in.sw == 0.0 || (index && y == p->ignore_index);
    in.y = index && !in.masked ? (Py_ssize_t)y : -1;
    in.w_y = in.y >= 0 && w ? (double)w[in.y] : 1.0;
    in.gi = in.masked ? 0.0 : p->grad_scale * (p->row_grad ? p->row_grad[r] : 1.0) * in.sw;
    if (in.masked)
        in.sw = 0.0;
    in.next = NULL;
    return in;
}

/* CE_MODE_GRAD_LSE: the gradient from a given lse (no max, no log) */
CE_INLINE void CE_FN(ce_row_grad_lse)(const ce_problem *p, Py_ssize_t r, CE_FN(ce_row_info) in,
                                      const CE_REAL *x, const CE_REAL *t, CE_REAL *g)
{
    const Py_ssize_t n = p->n_classes;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const ce_consts k = ce_consts_of(p->smoothing, n, p->class_weight_sum, p->z_loss);
    const double lse = p->lse_in[r];
    if (in.masked) {
        memset(g, 0, (size_t)n * sizeof(CE_REAL));
    } else if (in.y >= 0) {
        double A = ce_coef_index(k, in.w_y, lse);
        double other = CE_FN(ce_lane_exp)(x, g, n, (CE_REAL)lse, in.y, 0, NULL, in.next);   /* g = softmax */
        CE_FN(ce_scale)(g, w, n, (CE_REAL)(in.gi * A), (CE_REAL)(in.gi * k.eps_n));
        g[in.y] = (CE_REAL)(in.gi * ce_target_entry(k, A, in.w_y, other, lse));
    } else {
        CE_REAL a = (CE_REAL)k.one_eps, b = (CE_REAL)k.eps_n;
        double T = CE_FN(ce_sum_target)(t, w, n, a, b);
        CE_FN(ce_lane_exp)(x, g, n, (CE_REAL)lse, -1, 0, NULL, in.next);
        CE_FN(ce_scale_dense)(g, t, w, n, (CE_REAL)(in.gi * ce_coef_dense(k, T, lse)), (CE_REAL)in.gi, a, b);
    }
}

/* An index-target row from its max m, target logit xy, the other classes'
   exp sum s_other (relative to m) and the smoothing shift: lse, the weighted
   loss, and the gradient's factor k1 of exp(x - m) and target entry gy. */
typedef struct { double lse, loss, k1, gy; } CE_FN(ce_index_stats);

CE_INLINE CE_FN(ce_index_stats) CE_FN(ce_index_finish)(ce_consts k, CE_FN(ce_row_info) in, CE_REAL m,
                                                       CE_REAL xy, double s_other, double shift)
{
    CE_FN(ce_index_stats) o;
    double e_y = (double)CE_EXP(xy - m);
    double log_s = ce_log_sum2(e_y, s_other);
    double lse = (double)m + log_s;
    /* (m - x_y) is exact in double; when y is the argmax it is 0 and the
       loss is log(1 + s_other) with no cancellation at all */
    double nll = ((double)m - (double)xy) + log_s;
    double s = s_other + e_y, A = ce_coef_index(k, in.w_y, lse);
    o.lse = lse;
    o.loss = in.sw * ce_loss_index(k, in.w_y, nll, shift, log_s, lse);
    o.k1 = in.gi * A / s;
    o.gy = in.gi * ce_target_entry(k, A, in.w_y, s_other / s, lse);
    return o;
}

/* index target, row not masked: returns the weighted loss, writes lse, rank, g */
CE_INLINE double CE_FN(ce_row_index)(const ce_problem *p, Py_ssize_t r, CE_FN(ce_row_info) in,
                                     const CE_REAL *x, CE_REAL *g, CE_REAL m, double *lse_out)
{
    const Py_ssize_t n = p->n_classes;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const ce_consts k = ce_consts_of(p->smoothing, n, p->class_weight_sum, p->z_loss);
    const CE_REAL xy = x[in.y];
    double shift = k.eps_n > 0 ? CE_FN(ce_sum_shift)(x, w, n, m) : 0.0;
    double s_other = CE_FN(ce_lane_exp)(x, g, n, m, in.y, xy, p->row_rank ? p->row_rank + r : NULL, in.next);
    CE_FN(ce_index_stats) o = CE_FN(ce_index_finish)(k, in, m, xy, s_other, shift);
    if (g) {
        CE_FN(ce_scale)(g, w, n, (CE_REAL)o.k1, (CE_REAL)(in.gi * k.eps_n));
        g[in.y] = (CE_REAL)o.gy;
    }
    *lse_out = o.lse;
    return o.loss;
}

/* dense target, row not masked */
CE_INLINE double CE_FN(ce_row_dense)(const ce_problem *p, CE_FN(ce_row_info) in, const CE_REAL *x,
                                     const CE_REAL *t, CE_REAL *g, CE_REAL m, double *lse_out)
{
    const Py_ssize_t n = p->n_classes;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const ce_consts k = ce_consts_of(p->smoothing, n, p->class_weight_sum, p->z_loss);
    const CE_REAL a = (CE_REAL)k.one_eps, b = (CE_REAL)k.eps_n;
    double T;
    double shifted = CE_FN(ce_sum_dense)(x, t, w, n, m, a, b, &T);
    double s = CE_FN(ce_lane_exp)(x, g, n, m, -1, 0, NULL, in.next);
    double log_s = ce_log_d(s);
    double lse = (double)m + log_s;
    if (g)
        CE_FN(ce_scale_dense)(g, t, w, n, (CE_REAL)(in.gi * ce_coef_dense(k, T, lse) / s), (CE_REAL)in.gi, a, b);
    *lse_out = lse;
    return in.sw * ce_loss_dense(k, shifted, T, log_s, lse);
}

/* no target (softmax, log_softmax, logsumexp) or a masked row: returns the lse */
CE_INLINE double CE_FN(ce_row_free)(const ce_problem *p, Py_ssize_t r, CE_FN(ce_row_info) in,
                                    const CE_REAL *x, CE_REAL *g, CE_REAL m, int store)
{
    const Py_ssize_t n = p->n_classes;
    double s = CE_FN(ce_lane_exp)(x, store ? g : NULL, n, m, -1, 0, NULL, in.next);
    double lse = (double)m + ce_log_d(s);
    if (store && p->mode == CE_MODE_SOFTMAX)
        CE_FN(ce_scale)(g, NULL, n, (CE_REAL)(1.0 / s), 0);
    if (g && p->mode == CE_MODE_LOG_SOFTMAX) {
        CE_REAL l = (CE_REAL)lse;
#pragma omp simd
        for (Py_ssize_t c = 0; c < n; c++)
            g[c] = x[c] - l;
    }
    if (in.masked) {
        if (g && p->mode == CE_MODE_FUSED)
            memset(g, 0, (size_t)n * sizeof(CE_REAL));
        if (p->row_rank)
            p->row_rank[r] = 0;
    }
    return lse;
}

/* One row of a problem: writes the row outputs and g (when the mode has one);
   returns the row's weighted loss. next: the next row's logits, or NULL. */
CE_INLINE double CE_FN(ce_row)(ce_problem *p, Py_ssize_t r, const CE_REAL *x, const CE_REAL *t, CE_REAL *g,
                               const CE_REAL *next)
{
    const Py_ssize_t n = p->n_classes;
    CE_FN(ce_row_info) in = CE_FN(ce_info)(p, r);
    in.next = next;
    if (p->from_logits && p->mode == CE_MODE_GRAD_LSE) {
        CE_FN(ce_row_grad_lse)(p, r, in, x, t, g);
        return 0.0;
    }
    int64_t arg;
    CE_REAL m = CE_FN(ce_lane_max)(x, n, p->row_argmax ? &arg : NULL);
    if (p->row_argmax)
        p->row_argmax[r] = arg;
    if (!p->from_logits) {
        if (p->row_rank)
            p->row_rank[r] = in.y >= 0 ? CE_FN(ce_count_greater)(x, n, x[in.y]) : 0;
        double loss = in.masked ? 0.0 : CE_FN(ce_row_probs)(p, r, x, t, g, in.sw, in.gi);
        if (in.masked && g)
            memset(g, 0, (size_t)n * sizeof(CE_REAL));
        if (p->row_loss)
            p->row_loss[r] = loss;
        return loss;
    }
    const int store = g != NULL && p->mode != CE_MODE_FORWARD && p->mode != CE_MODE_LOG_SOFTMAX;
    double loss = 0.0, lse;
    if (in.y >= 0)
        loss = CE_FN(ce_row_index)(p, r, in, x, store ? g : NULL, m, &lse);
    else if (p->target_kind == CE_TARGET_DENSE && !in.masked)
        loss = CE_FN(ce_row_dense)(p, in, x, t, store ? g : NULL, m, &lse);
    else
        lse = CE_FN(ce_row_free)(p, r, in, x, g, m, store);
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
    if (cap > 0 && sizeof(CE_REAL) == 4) {   /* float32 (and half): the vectorized tanh */
        const double inv = 1.0 / cap;   /* a product, not a vector division per element */
#pragma omp simd
        for (Py_ssize_t c = 0; c < n; c++)
            dst[c] = (CE_REAL)(cap * ce_tanh_d((double)src[c * stride] * inv));
    } else if (cap > 0) {   /* float64: libm's tanh, correctly rounded to a few ulp of double */
        for (Py_ssize_t c = 0; c < n; c++)
            dst[c] = (CE_REAL)(cap * tanh((double)src[c * stride] / cap));
    } else {
        for (Py_ssize_t c = 0; c < n; c++)
            dst[c] = src[c * stride];
    }
}

/* The soft cap's chain rule on a gradient computed from capped logits x:
   times 1 - tanh^2 = 1 - (x / cap)^2 (not for softmax / log_softmax, which
   are of the capped logits) */
CE_INLINE void CE_FN(ce_cap_grad)(const ce_problem *p, CE_REAL *g, const CE_REAL *x, Py_ssize_t n)
{
    if (!(p->softcap > 0) || p->mode == CE_MODE_SOFTMAX || p->mode == CE_MODE_LOG_SOFTMAX)
        return;
    const double inv = 1.0 / p->softcap;
#pragma omp simd
    for (Py_ssize_t c = 0; c < n; c++) {
        double th = (double)x[c] * inv;
        /* a masked row's exact zeros stay zeros, even against NaN logits */
        g[c] = g[c] == 0 ? (CE_REAL)0 : (CE_REAL)((double)g[c] * (1.0 - th * th));
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
    if (!p->from_logits || p->mode == CE_MODE_GRAD_LSE || (p->softcap != 0 && p->inner != 1)
        || (p->target_kind == CE_TARGET_NONE && p->mode == CE_MODE_FUSED)
        || p->block_rows > CE_SMALL_ROWS || n > (1 << 24))
        return 0;
    if (p->inner == 1) /* small C, C-ordered rows: transposed into a tile (the soft cap applied there) */
        return n <= (sizeof(CE_REAL) == 4 ? CE_TILE_MAX_C : CE_TILE_MAX_C_F64);   /* any strides: the tile is a copy */
    /* class axis not last: rows of one outer index are contiguous per class */
    return p->x.s_inner == 1 && (p->target_kind != CE_TARGET_DENSE || p->t.s_inner == 1)
        && (p->g.data == NULL || p->g.s_inner == 1);
}

/* per-row state of the class-major kernel (up to CE_SMALL_ROWS rows) */
typedef struct {
    CE_REAL m[CE_SMALL_ROWS], am[CE_SMALL_ROWS], yf[CE_SMALL_ROWS], xy[CE_SMALL_ROWS];
    CE_REAL acc[CE_SMALL_ROWS], cnt[CE_SMALL_ROWS], sacc[CE_SMALL_ROWS], tacc[CE_SMALL_ROWS];
    CE_REAL k1[CE_SMALL_ROWS], k2[CE_SMALL_ROWS];
    double so[CE_SMALL_ROWS], ss[CE_SMALL_ROWS], st[CE_SMALL_ROWS], tot[CE_SMALL_ROWS];
    double lg[CE_SMALL_ROWS], lse[CE_SMALL_ROWS], loss[CE_SMALL_ROWS], gy[CE_SMALL_ROWS];
    double wy[CE_SMALL_ROWS], sw[CE_SMALL_ROWS], gi[CE_SMALL_ROWS];
    Py_ssize_t yi[CE_SMALL_ROWS];
} CE_FN(ce_cols);

/* labels, weights and the target logit of each row (yf = -1: no target) */
CE_INLINE void CE_FN(ce_cols_setup)(const ce_problem *p, Py_ssize_t r0, Py_ssize_t nr, const CE_REAL *x,
                                    Py_ssize_t xs, CE_FN(ce_cols) *T)
{
    if (p->target_kind == CE_TARGET_INDEX && !p->row_weight && !p->row_grad && !p->class_weight) {
        const int64_t *lab = p->labels + r0;
        const int64_t ignore = p->ignore_index;
        const double gs = p->grad_scale;
        for (Py_ssize_t i = 0; i < nr; i++) {
            int keep = lab[i] != ignore;
            T->yi[i] = keep ? (Py_ssize_t)lab[i] : 0;
            T->yf[i] = keep ? (CE_REAL)lab[i] : (CE_REAL)-1;   /* exact: n <= 2^24 */
            T->sw[i] = keep ? 1.0 : 0.0;
            T->wy[i] = 1.0;
            T->gi[i] = keep ? gs : 0.0;
        }
    } else {
        for (Py_ssize_t i = 0; i < nr; i++) {
            CE_FN(ce_row_info) in = CE_FN(ce_info)(p, r0 + i);
            T->yi[i] = in.y >= 0 ? in.y : 0;
            T->yf[i] = (CE_REAL)in.y;
            T->sw[i] = in.sw;
            T->wy[i] = in.w_y;
            T->gi[i] = in.gi;
        }
    }
    for (Py_ssize_t i = 0; x && i < nr; i++)   /* x NULL: the caller reads them */
        T->xy[i] = x[T->yi[i] * xs + i];
}

/* row maxima (NaN skipped), and the first class holding each when argmax (0
   when no element is above -inf, as ce_argmax_steps). The argmax is a second
   pass that takes the max of n - c over the classes equal to the max: an
   index-tracking select in the max loop compiled into a masked store behind a
   branch on its mask, which random data mispredicts (perf at C = 32: about a
   quarter of the forward's samples). */
CE_INLINE void CE_FN(ce_cols_max)(const CE_REAL *x, Py_ssize_t xs, Py_ssize_t nr, Py_ssize_t n, int argmax,
                                  CE_FN(ce_cols) *T)
{
    for (Py_ssize_t i = 0; i < nr; i++) {
        T->m[i] = -INFINITY;
        T->am[i] = 0;
    }
    for (Py_ssize_t c = 0; c < n; c++) {
#pragma omp simd
        for (Py_ssize_t i = 0; i < nr; i++) {
            CE_REAL v = x[c * xs + i];
            T->m[i] = v > T->m[i] ? v : T->m[i];
        }
    }
    for (Py_ssize_t c = 0; c < n && argmax; c++) {
        const CE_REAL from_end = (CE_REAL)(n - c);   /* exact: n <= 2^24 */
#pragma omp simd
        for (Py_ssize_t i = 0; i < nr; i++) {
            CE_REAL hit = x[c * xs + i] == T->m[i] ? from_end : (CE_REAL)0;
            T->am[i] = hit > T->am[i] ? hit : T->am[i];
        }
    }
    for (Py_ssize_t i = 0; i < nr && argmax; i++)
        T->am[i] = T->m[i] == -INFINITY ? (CE_REAL)0 : (CE_REAL)n - T->am[i];
}

/* sums that need the logits themselves (before g, which may be x, is written):
   ss = sum w t' (m - x) (dense) or sum w (m - x) (smoothing); st = sum w t' */
CE_INLINE void CE_FN(ce_cols_shift)(const ce_problem *p, const CE_REAL *x, Py_ssize_t xs, const CE_REAL *t,
                                    Py_ssize_t ts, Py_ssize_t nr, CE_FN(ce_cols) *T)
{
    const Py_ssize_t n = p->n_classes;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const int dense = p->target_kind == CE_TARGET_DENSE;
    const ce_consts k = ce_consts_of(p->smoothing, n, p->class_weight_sum, p->z_loss);
    const CE_REAL ta = (CE_REAL)k.one_eps, tb = (CE_REAL)k.eps_n;
    memset(T->ss, 0, (size_t)nr * sizeof(double));
    memset(T->st, 0, (size_t)nr * sizeof(double));
    for (Py_ssize_t c0 = 0; c0 < n && (dense || k.eps_n > 0); c0 += CE_CHUNK) {
        const Py_ssize_t c1 = c0 + CE_CHUNK < n ? c0 + CE_CHUNK : n;
        memset(T->sacc, 0, (size_t)nr * sizeof(CE_REAL));
        memset(T->tacc, 0, (size_t)nr * sizeof(CE_REAL));
        for (Py_ssize_t c = c0; c < c1; c++) {
            const CE_REAL wc = w ? w[c] : (CE_REAL)1;
            if (dense) {
#pragma omp simd
                for (Py_ssize_t i = 0; i < nr; i++) {
                    CE_REAL tw = (ta * t[c * ts + i] + tb) * wc;
                    CE_REAL term = tw * (T->m[i] - x[c * xs + i]);
                    T->sacc[i] += tw == 0 ? (CE_REAL)0 : term;   /* xlogy: 0 * inf is 0 */
                    T->tacc[i] += tw;
                }
            } else {
#pragma omp simd
                for (Py_ssize_t i = 0; i < nr; i++)
                    T->sacc[i] += wc * (T->m[i] - x[c * xs + i]);
            }
        }
        for (Py_ssize_t i = 0; i < nr; i++) {
            T->ss[i] += (double)T->sacc[i];
            T->st[i] += (double)T->tacc[i];
        }
    }
}

/* so = the other classes' exp sum (the target's own term left out), exps
   stored into g when store, cnt = classes above the target logit when count */
CE_INLINE void CE_FN(ce_cols_exp)(const CE_REAL *x, Py_ssize_t xs, CE_REAL *g, Py_ssize_t gs, Py_ssize_t nr,
                                  Py_ssize_t n, int store, int count, CE_FN(ce_cols) *T)
{
    memset(T->so, 0, (size_t)nr * sizeof(double));
    memset(T->cnt, 0, (size_t)nr * sizeof(CE_REAL));
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CE_CHUNK) {
        const Py_ssize_t c1 = c0 + CE_CHUNK < n ? c0 + CE_CHUNK : n;
        memset(T->acc, 0, (size_t)nr * sizeof(CE_REAL));
        for (Py_ssize_t c = c0; c < c1; c++) {
            const CE_REAL cf = (CE_REAL)c;
            const CE_REAL *xc = x + c * xs;
            if (store) {
                CE_REAL *gc = g + c * gs;
#pragma omp simd
                for (Py_ssize_t i = 0; i < nr; i++) {
                    CE_REAL e = CE_EXP(xc[i] - T->m[i]);
                    T->acc[i] += cf == T->yf[i] ? (CE_REAL)0 : e;
                    gc[i] = e;
                }
            } else if (count) {
#pragma omp simd
                for (Py_ssize_t i = 0; i < nr; i++) {
                    CE_REAL e = CE_EXP(xc[i] - T->m[i]);
                    T->acc[i] += cf == T->yf[i] ? (CE_REAL)0 : e;
                    T->cnt[i] += xc[i] > T->xy[i] ? (CE_REAL)1 : (CE_REAL)0;
                }
            } else {
#pragma omp simd
                for (Py_ssize_t i = 0; i < nr; i++) {
                    CE_REAL e = CE_EXP(xc[i] - T->m[i]);
                    T->acc[i] += cf == T->yf[i] ? (CE_REAL)0 : e;
                }
            }
        }
        for (Py_ssize_t i = 0; i < nr; i++)
            T->so[i] += (double)T->acc[i];
    }
}

/* log, lse and the loss of each row; returns their sum in row order */
CE_INLINE double CE_FN(ce_cols_finish)(const ce_problem *p, Py_ssize_t nr, CE_FN(ce_cols) *T)
{
    const ce_consts k = ce_consts_of(p->smoothing, p->n_classes, p->class_weight_sum, p->z_loss);
    const int index = p->target_kind == CE_TARGET_INDEX, dense = p->target_kind == CE_TARGET_DENSE;
#pragma omp simd
    for (Py_ssize_t i = 0; i < nr; i++)   /* acc is free now: it gets the target's exp */
        T->acc[i] = T->yf[i] >= 0 ? CE_EXP(T->xy[i] - T->m[i]) : (CE_REAL)0;
#pragma omp simd
    for (Py_ssize_t i = 0; i < nr; i++) {
        double a = (double)T->acc[i], b = T->so[i], s = a + b, bb = s - a;
        T->tot[i] = s;
        /* log(a + b) with the rounding error of a + b folded back in, as ce_log_sum2 */
        T->lg[i] = ce_log_d(s) + ((a - (s - bb)) + (b - bb)) / s;
        T->lse[i] = (double)T->m[i] + T->lg[i];
    }
#pragma omp simd
    for (Py_ssize_t i = 0; i < nr; i++) {
        double nll = ((double)T->m[i] - (double)T->xy[i]) + T->lg[i];   /* exact when y is the argmax */
        double l = index ? ce_loss_index(k, T->wy[i], nll, T->ss[i], T->lg[i], T->lse[i])
                 : dense ? ce_loss_dense(k, T->ss[i], T->st[i], T->lg[i], T->lse[i]) : 0.0;
        T->loss[i] = T->sw[i] == 0 ? 0.0 : T->sw[i] * l;
    }
    /* their sum: 8 running sums (a fixed order, no serial chain of nr adds) */
    double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    Py_ssize_t i8 = nr - nr % 8;
    for (Py_ssize_t i = 0; i < i8; i += 8)
        for (int j = 0; j < 8; j++)
            part[j] += T->loss[i + j];
    for (Py_ssize_t i = i8; i < nr; i++)
        part[i - i8] += T->loss[i];
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

CE_INLINE void CE_FN(ce_cols_outputs)(ce_problem *p, Py_ssize_t r0, Py_ssize_t nr, CE_FN(ce_cols) *T)
{
    if (p->row_loss)
        memcpy(p->row_loss + r0, T->loss, (size_t)nr * sizeof(double));
    if (p->row_lse)
        memcpy(p->row_lse + r0, T->lse, (size_t)nr * sizeof(double));
    if (p->row_argmax)
        for (Py_ssize_t i = 0; i < nr; i++)
            p->row_argmax[r0 + i] = (int64_t)T->am[i];
    if (p->row_rank)
        for (Py_ssize_t i = 0; i < nr; i++)
            p->row_rank[r0 + i] = T->yf[i] >= 0 ? (int64_t)T->cnt[i] : 0;
}

/* the per-row coefficients of g = e * k1 - k2 * w (t'), and the target entries */
CE_INLINE void CE_FN(ce_cols_coefs)(const ce_problem *p, Py_ssize_t nr, CE_FN(ce_cols) *T)
{
    const ce_consts k = ce_consts_of(p->smoothing, p->n_classes, p->class_weight_sum, p->z_loss);
    const int mode = p->mode, dense = p->target_kind == CE_TARGET_DENSE;
#pragma omp simd
    for (Py_ssize_t i = 0; i < nr; i++) {
        double inv = 1.0 / T->tot[i], gi = T->gi[i];
        double A = ce_coef_index(k, T->wy[i], T->lse[i]);
        double coef = mode == CE_MODE_SOFTMAX ? 1.0 : dense ? gi * ce_coef_dense(k, T->st[i], T->lse[i]) : gi * A;
        T->k1[i] = (CE_REAL)(coef * inv);
        T->k2[i] = (CE_REAL)(mode == CE_MODE_SOFTMAX ? 0.0 : dense ? gi : gi * k.eps_n);
        T->gy[i] = gi * ce_target_entry(k, A, T->wy[i], T->so[i] * inv, T->lse[i]);
    }
}

/* the modes that write g: softmax, log_softmax, fused (g holds exp(x - m)) */
CE_INLINE void CE_FN(ce_cols_grad)(const ce_problem *p, Py_ssize_t nr, const CE_REAL *x, Py_ssize_t xs,
                                   const CE_REAL *t, Py_ssize_t ts, CE_REAL *g, Py_ssize_t gs,
                                   CE_FN(ce_cols) *T)
{
    const Py_ssize_t n = p->n_classes;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const int dense = p->target_kind == CE_TARGET_DENSE;
    const ce_consts k = ce_consts_of(p->smoothing, n, p->class_weight_sum, p->z_loss);
    const CE_REAL ta = (CE_REAL)k.one_eps, tb = (CE_REAL)k.eps_n;
    if (p->mode == CE_MODE_LOG_SOFTMAX) {
        for (Py_ssize_t i = 0; i < nr; i++)
            T->k1[i] = (CE_REAL)T->lse[i];
        for (Py_ssize_t c = 0; c < n; c++) {
#pragma omp simd
            for (Py_ssize_t i = 0; i < nr; i++)
                g[c * gs + i] = x[c * xs + i] - T->k1[i];
        }
        return;
    }
    CE_FN(ce_cols_coefs)(p, nr, T);
    for (Py_ssize_t c = 0; c < n; c++) {
        const CE_REAL wc = w ? w[c] : (CE_REAL)1;
        CE_REAL *gc = g + c * gs;
        if (dense) {
            const CE_REAL *tc = t + c * ts;
#pragma omp simd
            for (Py_ssize_t i = 0; i < nr; i++)
                gc[i] = gc[i] * T->k1[i] - T->k2[i] * wc * (ta * tc[i] + tb);
        } else {
#pragma omp simd
            for (Py_ssize_t i = 0; i < nr; i++)
                gc[i] = gc[i] * T->k1[i] - T->k2[i] * wc;
        }
    }
    if (p->mode != CE_MODE_FUSED)
        return;
    for (Py_ssize_t i = 0; i < nr; i++) {
        if (T->sw[i] == 0) {
            for (Py_ssize_t c = 0; c < n; c++)
                g[c * gs + i] = 0;   /* a masked row is 0, even against NaN logits */
        } else if (T->yf[i] >= 0) {
            g[T->yi[i] * gs + i] = (CE_REAL)T->gy[i];
        }
    }
}

/* rows r0 .. r0 + nr - 1 (nr <= CE_SMALL_ROWS) held class-major in x (and t,
   and g when the mode writes one), with class strides xs, ts, gs. */
CE_INLINE double CE_FN(ce_columns)(ce_problem *p, Py_ssize_t r0, Py_ssize_t nr, const CE_REAL *x,
                                   Py_ssize_t xs, const CE_REAL *t, Py_ssize_t ts, CE_REAL *g,
                                   Py_ssize_t gs)
{
    CE_FN(ce_cols) T;
    const int store = p->mode == CE_MODE_FUSED || p->mode == CE_MODE_SOFTMAX;
    CE_FN(ce_cols_setup)(p, r0, nr, x, xs, &T);
    CE_FN(ce_cols_max)(x, xs, nr, p->n_classes, p->row_argmax != NULL, &T);
    CE_FN(ce_cols_shift)(p, x, xs, t, ts, nr, &T);
    CE_FN(ce_cols_exp)(x, xs, g, gs, nr, p->n_classes, store, p->row_rank != NULL, &T);
    double total = CE_FN(ce_cols_finish)(p, nr, &T);
    CE_FN(ce_cols_outputs)(p, r0, nr, &T);
    if (p->mode != CE_MODE_FORWARD)
        CE_FN(ce_cols_grad)(p, nr, x, xs, t, ts, g, gs, &T);
    return total;
}

/* class-major tile of nr rows (row stride rs) <- rows of n classes at element
   strides (so between rows, sc between classes); contiguous classes go through
   register transposes (_ce_transpose.h) for whole groups of rows */
CE_INLINE void CE_FN(ce_tile_in)(CE_REAL *tile, Py_ssize_t rs, const CE_REAL *src, Py_ssize_t so, Py_ssize_t sc,
                                 Py_ssize_t nr, Py_ssize_t n)
{
    const Py_ssize_t done = sc == 1 ? CE_FN(ce_tile_in_vec)(tile, rs, src, so, nr, n) : 0;
    for (Py_ssize_t c = 0; c < n; c++)
        for (Py_ssize_t i = done; i < nr; i++)
            tile[c * rs + i] = src[i * so + c * sc];
}

CE_INLINE void CE_FN(ce_tile_out)(CE_REAL *dst, Py_ssize_t so, Py_ssize_t sc, const CE_REAL *tile, Py_ssize_t rs,
                                  Py_ssize_t nr, Py_ssize_t n)
{
    const Py_ssize_t done = sc == 1 ? CE_FN(ce_tile_out_vec)(dst, so, tile, rs, nr, n) : 0;
    for (Py_ssize_t i = done; i < nr; i++)
        for (Py_ssize_t c = 0; c < n; c++)
            dst[i * so + c * sc] = tile[c * rs + i];
}

/* rows [r0, r1) of the block through the class-major kernel */
CE_INLINE double CE_FN(ce_block_columns)(ce_problem *p, Py_ssize_t r0, Py_ssize_t r1)
{
    const Py_ssize_t n = p->n_classes, inner = p->inner;
    const int dense = p->target_kind == CE_TARGET_DENSE, has_g = p->g.data != NULL;
    double total = 0.0;
    if (inner == 1) {
        CE_REAL xt[CE_TILE], tt[CE_TILE], gt[CE_TILE];
        Py_ssize_t rs = CE_TILE / n < CE_SMALL_ROWS ? CE_TILE / n : CE_SMALL_ROWS;
        rs = rs >= 2 * CE_LANES ? rs - rs % CE_LANES : rs;   /* whole vectors across the rows */
        for (Py_ssize_t r = r0; r < r1; r += rs) {
            Py_ssize_t nr = r1 - r < rs ? r1 - r : rs;
            CE_FN(ce_tile_in)(xt, rs, (const CE_REAL *)p->x.data + r * p->x.s_outer, p->x.s_outer,
                              p->x.s_class, nr, n);
            if (p->softcap > 0)
                for (Py_ssize_t c = 0; c < n; c++)
                    CE_FN(ce_gather)(xt + c * rs, xt + c * rs, nr, 1, p->softcap);   /* in place */
            if (dense)
                CE_FN(ce_tile_in)(tt, rs, (const CE_REAL *)p->t.data + r * p->t.s_outer, p->t.s_outer,
                                  p->t.s_class, nr, n);
            total += CE_FN(ce_columns)(p, r, nr, xt, rs, tt, rs, has_g ? gt : NULL, rs);
            if (has_g && p->softcap > 0)
                for (Py_ssize_t c = 0; c < n; c++)
                    CE_FN(ce_cap_grad)(p, gt + c * rs, xt + c * rs, nr);
            if (has_g)
                CE_FN(ce_tile_out)((CE_REAL *)p->g.data + r * p->g.s_outer, p->g.s_outer, p->g.s_class, gt,
                                   rs, nr, n);
        }
        return total;
    }
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

/* The row-major kernel for contiguous rows: the max and exp passes run along
   each row (wide vector steps), and what is left per row (the target's exp,
   the log, the loss, the gradient's coefficients) runs vectorized across the
   rows with the class-major kernel's code: at C of a few dozen to a few
   hundred those scalar tails, not the passes, were most of a row's cost. */
static int CE_FN(ce_rows_ok)(const ce_problem *p)
{
    return p->from_logits && p->mode != CE_MODE_GRAD_LSE && p->softcap == 0
        && !(p->target_kind == CE_TARGET_NONE && p->mode == CE_MODE_FUSED)
        && p->x.s_class == 1 && (p->target_kind != CE_TARGET_DENSE || p->t.s_class == 1)
        && (p->g.data == NULL || p->g.s_class == 1);
}

/* the per-row passes of rows r0 .. r0 + nr - 1 into T (m, so, ss, st, and
   the exps into g when store) */
CE_INLINE void CE_FN(ce_rows_scan)(ce_problem *p, Py_ssize_t r0, Py_ssize_t nr, int store, CE_FN(ce_cols) *T)
{
    const Py_ssize_t n = p->n_classes, inner = p->inner;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const int dense = p->target_kind == CE_TARGET_DENSE;
    const ce_consts k = ce_consts_of(p->smoothing, n, p->class_weight_sum, p->z_loss);
    const CE_REAL ta = (CE_REAL)k.one_eps, tb = (CE_REAL)k.eps_n;
    for (Py_ssize_t i = 0; i < nr; i++) {
        const Py_ssize_t r = r0 + i;
        const CE_REAL *x = (const CE_REAL *)p->x.data + ce_offset(&p->x, r, inner);
        const CE_REAL *next = i + 1 < nr ? (const CE_REAL *)p->x.data + ce_offset(&p->x, r + 1, inner) : NULL;
        CE_REAL *g = store ? (CE_REAL *)p->g.data + ce_offset(&p->g, r, inner) : NULL;
        const Py_ssize_t y = T->yf[i] >= 0 ? T->yi[i] : -1;
        int64_t arg, rank = 0;
        CE_REAL m = CE_FN(ce_lane_max)(x, n, p->row_argmax ? &arg : NULL);
        if (p->row_argmax)
            p->row_argmax[r] = arg;
        T->m[i] = m;
        T->xy[i] = x[T->yi[i]];
        T->ss[i] = T->st[i] = 0.0;
        if (dense && T->sw[i] != 0) {
            const CE_REAL *t = (const CE_REAL *)p->t.data + ce_offset(&p->t, r, inner);
            T->ss[i] = CE_FN(ce_sum_dense)(x, t, w, n, m, ta, tb, &T->st[i]);
        } else if (y >= 0 && k.eps_n > 0) {
            T->ss[i] = CE_FN(ce_sum_shift)(x, w, n, m);
        }
        T->so[i] = CE_FN(ce_lane_exp)(x, g, n, m, y, T->xy[i], p->row_rank && y >= 0 ? &rank : NULL, next);
        if (p->row_rank && !dense)
            p->row_rank[r] = rank;   /* 0 for a masked row */
    }
}

/* the gradient rows from the exps in g: g = e * k1 - k2 * w (t'), then the
   target entry; a masked row of the fused mode is all zeros */
CE_INLINE void CE_FN(ce_rows_grad)(ce_problem *p, Py_ssize_t r0, Py_ssize_t nr, CE_FN(ce_cols) *T)
{
    const Py_ssize_t n = p->n_classes, inner = p->inner;
    const CE_REAL *w = (const CE_REAL *)p->class_weight;
    const int dense = p->target_kind == CE_TARGET_DENSE;
    const ce_consts k = ce_consts_of(p->smoothing, n, p->class_weight_sum, p->z_loss);
    const CE_REAL ta = (CE_REAL)k.one_eps, tb = (CE_REAL)k.eps_n;
    if (p->mode != CE_MODE_LOG_SOFTMAX)
        CE_FN(ce_cols_coefs)(p, nr, T);
    for (Py_ssize_t i = 0; i < nr; i++) {
        const Py_ssize_t r = r0 + i;
        CE_REAL *g = (CE_REAL *)p->g.data + ce_offset(&p->g, r, inner);
        if (p->mode == CE_MODE_LOG_SOFTMAX) {
            const CE_REAL *x = (const CE_REAL *)p->x.data + ce_offset(&p->x, r, inner);
            const CE_REAL l = (CE_REAL)T->lse[i];
#pragma omp simd
            for (Py_ssize_t c = 0; c < n; c++)
                g[c] = x[c] - l;
        } else if (p->mode == CE_MODE_FUSED && T->sw[i] == 0) {
            memset(g, 0, (size_t)n * sizeof(CE_REAL));   /* even against NaN logits */
        } else if (dense) {
            const CE_REAL *t = (const CE_REAL *)p->t.data + ce_offset(&p->t, r, inner);
            CE_FN(ce_scale_dense)(g, t, w, n, T->k1[i], T->k2[i], ta, tb);
        } else {
            CE_FN(ce_scale)(g, w, n, T->k1[i], T->k2[i]);
            if (p->mode == CE_MODE_FUSED && T->yf[i] >= 0)
                g[T->yi[i]] = (CE_REAL)T->gy[i];
        }
    }
}

/* rows [r0, r1) through the row-major kernel, CE_SMALL_ROWS at a time */
CE_INLINE double CE_FN(ce_block_rows)(ce_problem *p, Py_ssize_t r0, Py_ssize_t r1)
{
    const int store = p->mode == CE_MODE_FUSED || p->mode == CE_MODE_SOFTMAX;
    CE_FN(ce_cols) T;
    double total = 0.0;
    for (Py_ssize_t r = r0; r < r1; r += CE_SMALL_ROWS) {
        const Py_ssize_t nr = r1 - r < CE_SMALL_ROWS ? r1 - r : CE_SMALL_ROWS;
        CE_FN(ce_cols_setup)(p, r, nr, NULL, 0, &T);   /* the scan reads each target logit */
        CE_FN(ce_rows_scan)(p, r, nr, store, &T);
        total += CE_FN(ce_cols_finish)(p, nr, &T);
        if (p->row_loss)
            memcpy(p->row_loss + r, T.loss, (size_t)nr * sizeof(double));
        if (p->row_lse)
            memcpy(p->row_lse + r, T.lse, (size_t)nr * sizeof(double));
        if (p->g.data && p->mode != CE_MODE_FORWARD)
            CE_FN(ce_rows_grad)(p, r, nr, &T);
    }
    return total;
}

/* Rows [b * block_rows, ...) of the problem; adds their losses in row order
   into block_loss[b]. Scratch tiles are used only for strided rows, a strided
   gradient or the soft cap. Returns 0, or -1 when the scratch tile could not be
   allocated (the block wrote nothing then). */
CE_INLINE int CE_BODY(CE_FN(ce_block))(ce_problem *p, Py_ssize_t b)
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
    if (CE_FN(ce_rows_ok)(p)) {
        double acc = CE_FN(ce_block_rows)(p, r0, r1);
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
        /* contiguous rows: the next one is prefetched (a gathered row is in cache) */
        const CE_REAL *next = !tile_x && r + 1 < r1 ? (const CE_REAL *)p->x.data + ce_offset(&p->x, r + 1, inner)
                                                    : NULL;
        acc += CE_FN(ce_row)(p, r, x, t, g, next);
        if (tile_g) {
            CE_FN(ce_cap_grad)(p, g, x, n);
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
CE_LEVELS(int, CE_FN(ce_block), (ce_problem *p, Py_ssize_t b), (p, b))

/* ---- few wide rows: each row's classes cut into fixed segments ----
 * Pass 1 (scan) runs per (row, segment) item on any thread: the segment's
 * max and first argmax, its exp sum relative to its own max (the target left
 * out), its count of classes above the target, and (fused, softmax) the exps
 * stored into g. The merge adds the segments up in segment order, so no
 * result depends on which thread scanned what. Pass 2 (apply) scales each
 * segment of g by its own factor; the finish writes the target entries. */

CE_INLINE Py_ssize_t CE_FN(ce_seg_range)(const ce_problem *p, Py_ssize_t item, Py_ssize_t *r,
                                        Py_ssize_t *len)
{
    const Py_ssize_t nseg = ce_split_segments(p->n_classes);
    const Py_ssize_t c0 = (item % nseg) * CE_SPLIT_SEG;
    *r = item / nseg;
    *len = p->n_classes - c0 < CE_SPLIT_SEG ? p->n_classes - c0 : CE_SPLIT_SEG;
    return c0;
}

/* Serial, before the scan: each segment gets its row's target logit (read
   before any thread writes g, which may be x itself). */
static void CE_FN(ce_split_prepare)(const ce_problem *p, ce_seg *segs)
{
    const Py_ssize_t nseg = ce_split_segments(p->n_classes);
    for (Py_ssize_t r = 0; r < p->n_rows; r++) {
        const CE_FN(ce_row_info) in = CE_FN(ce_info)(p, r);
        const CE_REAL *xr = (const CE_REAL *)p->x.data + ce_offset(&p->x, r, 1);
        for (Py_ssize_t j = 0; j < nseg; j++)
            segs[r * nseg + j].xy = in.y >= 0 ? (double)xr[in.y] : 0.0;
    }
}

CE_INLINE int CE_BODY(CE_FN(ce_split_scan))(const ce_problem *p, ce_seg *segs, Py_ssize_t item)
{
    unsigned int csr;
    CE_FTZ_ON(csr);
    Py_ssize_t r, len;
    const Py_ssize_t c0 = CE_FN(ce_seg_range)(p, item, &r, &len);
    const CE_FN(ce_row_info) in = CE_FN(ce_info)(p, r);
    const CE_REAL *xr = (const CE_REAL *)p->x.data + ce_offset(&p->x, r, 1);
    const int store = p->mode == CE_MODE_FUSED || p->mode == CE_MODE_SOFTMAX;
    CE_REAL *g = store ? (CE_REAL *)p->g.data + ce_offset(&p->g, r, 1) + c0 : NULL;
    const CE_REAL xy = (CE_REAL)segs[item].xy;
    const Py_ssize_t yl = in.y >= c0 && in.y < c0 + len ? in.y - c0 : -1;
    int64_t am = 0, cnt = 0;
    CE_REAL m = CE_FN(ce_lane_max)(xr + c0, len, p->row_argmax ? &am : NULL);
    /* a segment of -inf (and NaN) only: exps taken against 0, so -inf gives 0
       and NaN stays NaN; the merge weighs the segment by 0 (or NaN) */
    CE_REAL shift = m == -INFINITY ? (CE_REAL)0 : m;
    double s = CE_FN(ce_lane_exp)(xr + c0, g, len, shift, yl, xy, p->row_rank && in.y >= 0 ? &cnt : NULL, NULL);
    ce_seg *sg = segs + item;
    sg->m = (double)m;
    sg->s = s;
    sg->cnt = cnt;
    sg->am = c0 + am;
    CE_FTZ_OFF(csr);
    return 0;
}
CE_LEVELS(int, CE_FN(ce_split_scan), (const ce_problem *p, ce_seg *segs, Py_ssize_t item),
          (p, segs, item))

/* Serial, after the scan: the row results in segment order; each segment's
   scale factors for the apply pass. Adds the row losses to block_loss. */
static void CE_FN(ce_split_merge)(ce_problem *p, ce_seg *segs)
{
    const Py_ssize_t n = p->n_classes, nseg = ce_split_segments(n);
    const ce_consts k = ce_consts_of(p->smoothing, n, p->class_weight_sum, p->z_loss);
    unsigned int csr;
    CE_FTZ_ON(csr);
    if (p->block_loss)
        for (Py_ssize_t b = 0; b * p->block_rows < p->n_rows; b++)
            p->block_loss[b] = 0.0;
    for (Py_ssize_t r = 0; r < p->n_rows; r++) {
        ce_seg *sg = segs + r * nseg;
        const CE_FN(ce_row_info) in = CE_FN(ce_info)(p, r);
        double M = -INFINITY, s = 0.0, cnt = 0.0;
        int64_t am = 0;
        for (Py_ssize_t j = 0; j < nseg; j++)
            if (sg[j].m > M) {   /* the first segment holding the max: its first argmax */
                M = sg[j].m;
                am = sg[j].am;
            }
        for (Py_ssize_t j = 0; j < nseg; j++) {
            /* exp(m_j - M): 0 for a segment of -inf only (NaN when the whole row is) */
            double f = sg[j].m == -INFINITY ? (M == -INFINITY ? NAN : 0.0) : ce_exp_neg_d(sg[j].m - M);
            sg[j].k1 = f;
            s += sg[j].s * f;
            cnt += sg[j].cnt;
        }
        if (p->row_argmax)
            p->row_argmax[r] = M == -INFINITY ? 0 : am;
        if (p->row_rank)
            p->row_rank[r] = in.y >= 0 ? (int64_t)cnt : 0;
        double lse, loss = 0.0, k1 = 1.0 / s, k2 = 0.0;
        if (in.y >= 0) {
            CE_FN(ce_index_stats) o = CE_FN(ce_index_finish)(k, in, (CE_REAL)M, (CE_REAL)sg[0].xy, s, 0.0);
            lse = o.lse;
            loss = o.loss;
            k1 = o.k1;
            k2 = in.gi * k.eps_n;
            sg[0].gy = o.gy;
        } else {
            lse = M + ce_log_d(s);
        }
        for (Py_ssize_t j = 0; j < nseg; j++) {
            sg[j].k1 = p->mode == CE_MODE_LOG_SOFTMAX ? lse : sg[j].k1 * k1;
            sg[j].k2 = k2;
        }
        if (p->row_lse)
            p->row_lse[r] = lse;
        if (p->row_loss)
            p->row_loss[r] = loss;
        if (p->block_loss)
            p->block_loss[r / p->block_rows] += loss;
    }
    CE_FTZ_OFF(csr);
}

/* Pass 2 on one (row, segment): g from the merged row (or, for CE_MODE_GRAD_LSE,
   from the given lse; the segment's other-class sum goes to segs[item].s). */
CE_INLINE int CE_BODY(CE_FN(ce_split_apply))(const ce_problem *p, ce_seg *segs, Py_ssize_t item)
{
    unsigned int csr;
    CE_FTZ_ON(csr);
    Py_ssize_t r, len;
    const Py_ssize_t c0 = CE_FN(ce_seg_range)(p, item, &r, &len);
    const CE_FN(ce_row_info) in = CE_FN(ce_info)(p, r);
    const CE_REAL *x = (const CE_REAL *)p->x.data + ce_offset(&p->x, r, 1) + c0;
    CE_REAL *g = (CE_REAL *)p->g.data + ce_offset(&p->g, r, 1) + c0;
    const CE_REAL *w = p->class_weight && p->mode != CE_MODE_SOFTMAX ? (const CE_REAL *)p->class_weight + c0 : NULL;
    ce_seg *sg = segs + item;
    if (in.masked && (p->mode == CE_MODE_FUSED || p->mode == CE_MODE_GRAD_LSE)) {
        memset(g, 0, (size_t)len * sizeof(CE_REAL));
    } else if (p->mode == CE_MODE_GRAD_LSE) {
        const ce_consts k = ce_consts_of(p->smoothing, p->n_classes, p->class_weight_sum, p->z_loss);
        const double lse = p->lse_in[r];
        const Py_ssize_t yl = in.y >= c0 && in.y < c0 + len ? in.y - c0 : -1;
        sg->s = CE_FN(ce_lane_exp)(x, g, len, (CE_REAL)lse, yl, 0, NULL, NULL);   /* g = softmax */
        CE_FN(ce_scale)(g, w, len, (CE_REAL)(in.gi * ce_coef_index(k, in.w_y, lse)), (CE_REAL)(in.gi * k.eps_n));
    } else if (p->mode == CE_MODE_LOG_SOFTMAX) {
        const CE_REAL l = (CE_REAL)sg->k1;
#pragma omp simd
        for (Py_ssize_t c = 0; c < len; c++)
            g[c] = x[c] - l;
    } else {
        CE_FN(ce_scale)(g, w, len, (CE_REAL)sg->k1, (CE_REAL)sg->k2);
    }
    CE_FTZ_OFF(csr);
    return 0;
}
CE_LEVELS(int, CE_FN(ce_split_apply), (const ce_problem *p, ce_seg *segs, Py_ssize_t item),
          (p, segs, item))

/* Serial, after the apply pass: the target entries of the gradient rows. */
static void CE_FN(ce_split_finish)(ce_problem *p, ce_seg *segs)
{
    const Py_ssize_t n = p->n_classes, nseg = ce_split_segments(n);
    const ce_consts k = ce_consts_of(p->smoothing, n, p->class_weight_sum, p->z_loss);
    if (p->mode != CE_MODE_FUSED && p->mode != CE_MODE_GRAD_LSE)
        return;
    for (Py_ssize_t r = 0; r < p->n_rows; r++) {
        const CE_FN(ce_row_info) in = CE_FN(ce_info)(p, r);
        const ce_seg *sg = segs + r * nseg;
        if (in.y < 0)
            continue;
        double gy = sg[0].gy;
        if (p->mode == CE_MODE_GRAD_LSE) {
            double other = 0.0, lse = p->lse_in[r];
            for (Py_ssize_t j = 0; j < nseg; j++)
                other += sg[j].s;
            gy = in.gi * ce_target_entry(k, ce_coef_index(k, in.w_y, lse), in.w_y, other, lse);
        }
        ((CE_REAL *)p->g.data + ce_offset(&p->g, r, 1))[in.y] = (CE_REAL)gy;
    }
}

#undef CE_FN
#undef CE_CAT
#undef CE_CAT2
