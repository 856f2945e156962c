/* ce: softmax cross-entropy kernels in plain C.
 *
 * Everything numeric lives here as static inline, branch-free code that gcc can
 * vectorize (`#pragma omp simd` carries the float reductions that Cython loops
 * cannot). Cython only splits the rows into fixed blocks and runs ce_block_*
 * over them in a prange; a block's result never depends on the thread count.
 *
 * The per-dtype row code is in _ce_row.h, included twice (float, double).
 */
#ifndef CE_CORE_H
#define CE_CORE_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <Python.h>   /* Py_ssize_t */

#ifdef _OPENMP
#include <omp.h>
static inline int ce_max_threads(void) { return omp_get_max_threads(); }
static inline int ce_have_openmp(void) { return 1; }
#else
static inline int ce_max_threads(void) { return 1; }
static inline int ce_have_openmp(void) { return 0; }
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
/* Flush denormals to zero inside a block: subnormal exp() results are
   irrelevant next to the row maximum's 1.0, and they cost 5-10x in microcode. */
#define CE_FTZ_ON(saved) do { saved = _mm_getcsr(); _mm_setcsr(saved | 0x8040); } while (0)
#define CE_FTZ_OFF(saved) _mm_setcsr(saved)
#else
#define CE_FTZ_ON(saved) do { saved = 0; } while (0)
#define CE_FTZ_OFF(saved) do { (void)saved; } while (0)
#endif

/* One binary runs on any x86-64 and still uses AVX-512 / AVX2+FMA. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) \
    && defined(__linux__) && !defined(CE_NO_DISPATCH)
#define CE_HAVE_DISPATCH 1
/* gcc builds the function three times and an ifunc picks one at load time
   (fixed for the process: entry points that tests must run at every level use
   CE_LEVELS below instead) */
#define CE_DISPATCH __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CE_HAVE_DISPATCH 0
#define CE_DISPATCH
#endif

#if defined(__GNUC__)
#define CE_INLINE static inline __attribute__((always_inline))
#else
#define CE_INLINE static inline
#endif

/* ---- SIMD levels chosen at run time ----
 * An entry point (a block function: called once per block of rows, so a switch
 * costs nothing) is written as an always-inline body NAME_body, and
 * CE_LEVELS(ret, NAME, (params), (args)) defines NAME_avx512 / NAME_avx2 /
 * NAME_baseline, each with the body inlined and compiled for its level by a
 * target attribute (what target_clones does, but with names), and NAME, which
 * calls the active level's. The active level is the best the CPU has, unless
 * ce_simd_set chose another (CE_SIMD at import, tests: every level the CPU
 * has gets tested). Without dispatch there is one build, called "baseline". */
enum ce_simd { CE_SIMD_BASELINE = 0, CE_SIMD_AVX2 = 1, CE_SIMD_AVX512 = 2 };

static int ce_simd_supported(int level)
{
#if CE_HAVE_DISPATCH
    __builtin_cpu_init();
    if (level == CE_SIMD_AVX512)
        return __builtin_cpu_supports("x86-64-v4");
    if (level == CE_SIMD_AVX2)
        return __builtin_cpu_supports("x86-64-v3");
#endif
    return level == CE_SIMD_BASELINE;
}

static int ce_simd_active = -1;   /* -1: not chosen yet (the best, on first use) */
static int ce_simd_forced = 0;    /* chosen by ce_simd_set rather than by the CPU */

static int ce_simd_now(void)
{
    int level = ce_simd_active;
    if (level < 0) {
        level = ce_simd_supported(CE_SIMD_AVX512) ? CE_SIMD_AVX512
              : ce_simd_supported(CE_SIMD_AVX2) ? CE_SIMD_AVX2 : CE_SIMD_BASELINE;
        ce_simd_active = level;
    }
    return level;
}

/* Run the CE_LEVELS entry points at `level` from now on (-1: the best the CPU
   has). Returns 0, or -1 when the CPU or this build lacks it (nothing changed).
   Not for use while another thread is inside a ce call. */
static int ce_simd_set(int level)
{
    if (level >= 0 && !ce_simd_supported(level))
        return -1;
    ce_simd_active = level;
    ce_simd_forced = level >= 0;
    ce_simd_now();
    return 0;
}

#if CE_HAVE_DISPATCH
#define CE_LEVELS_(ret, name, params, args)                                          \
    __attribute__((target("arch=x86-64-v4"))) static ret name##_avx512 params        \
    { return name##_body args; }                                                     \
    __attribute__((target("arch=x86-64-v3"))) static ret name##_avx2 params          \
    { return name##_body args; }                                                     \
    static ret name##_baseline params { return name##_body args; }                   \
    ret name params                                                                  \
    {                                                                                \
        switch (ce_simd_now()) {                                                     \
        case CE_SIMD_AVX512: return name##_avx512 args;                              \
        case CE_SIMD_AVX2: return name##_avx2 args;                                  \
        default: return name##_baseline args;                                        \
        }                                                                            \
    }
#else
#define CE_LEVELS_(ret, name, params, args) ret name params { return name##_body args; }
#endif
#define CE_LEVELS(ret, name, params, args) CE_LEVELS_(ret, name, params, args)
#define CE_BODY_(name) name##_body
#define CE_BODY(name) CE_BODY_(name)   /* the body's name for a macro-made NAME */

#define CE_CHUNK 256       /* float lane sums are flushed to double every CE_CHUNK elements */
#define CE_SMALL_ROWS 256  /* most rows the class-major kernel takes at once (block_rows_for in _kernels.pyx caps blocks at it) */
/* Row-major rows of up to CE_TILE_MAX_C classes (float32, and float16 /
   bfloat16 through float32 tiles; CE_TILE_MAX_C_F64 for float64) are
   transposed into a class-major tile of at most CE_TILE elements (in registers:
   _ce_transpose.h) and vectorized across rows; longer rows run the row kernel,
   vectorized along the row in steps of up to four vectors, with each row's
   finish vectorized across rows. (Measured with the register transposes, one
   thread, min of 5 runs, tile vs row kernel in ns per logit. float32 forward:
   0.92 vs 1.18 at C = 32, 0.89 vs 1.01 at 48, even from 56 to 128, 0.70 vs 0.59
   at 160; with a gradient 1.26 vs 2.08 at 21, 1.32 vs 1.56 at 40, even at 44
   to 48, 1.26 vs 1.04 at 64. float64 forward: even from 12 to 24, 1.94 vs 1.61
   at 28, 1.90 vs 1.36 at 32; with a gradient 3.17 vs 3.49 at 12, 2.97 vs 2.44
   at 16, 3.03 vs 2.24 at 24. Once the tile's max pass stopped tracking an
   argmax nobody asked for, float32, one thread, medians of 25 interleaved
   rounds: the tile's forward 1.50x the row kernel's at C = 56 and 1.52x at 64,
   and its fused call 0.95x and 1.04x there; at 96 and 128 the fused call
   0.65-0.80x, so the limit is 64. float64 the same way: forward 1.57x at 13
   and 1.38x at 16, fused 1.21x and 1.08x; fused 0.94x at 20 and 0.77x at 24,
   so its limit is 16.) One limit serves every mode, so that the
   forward and the fused call run the same kernel and give the same loss bits. */
#ifndef CE_TILE_MAX_C
#define CE_TILE_MAX_C 64
#endif
#ifndef CE_TILE_MAX_C_F64
#define CE_TILE_MAX_C_F64 16
#endif
#define CE_TILE 4096
#define CE_LANES 16        /* lane count of the row kernel's sums (a 64-byte float vector) */
#define CE_ROW_VECTORS 4   /* 64-byte vectors per step of the row kernel on rows that long (independent chains) */

/* ---- bit casts (memcpy keeps them legal and vectorizable) ---- */
CE_INLINE uint32_t ce_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
CE_INLINE float ce_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
CE_INLINE uint64_t ce_d2u(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
CE_INLINE double ce_u2d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

/* exp(x) for x <= 0 (all a max-shifted softmax needs); exp(-inf) = 0,
   exp(NaN) = NaN; results below FLT_MIN are flushed to 0.
   n = round(x / ln2) via the 1.5*2^23 shifter, whose low mantissa bits then
   hold n, so 2^n is built with an integer add and shift. */
CE_INLINE float ce_exp_neg_f(float x)
{
    const float lo = -87.0f;
    const float shifter = 0x1.8p23f;
    float xc = x < lo ? lo : x;                  /* NaN passes through */
    float t = xc * 1.44269504088896341f + shifter;
    float n = t - shifter;
    float r = xc - n * 0.693359375f;             /* ln2 split in two (Cody-Waite) */
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;                  /* minimax on [-ln2/2, ln2/2] */
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r;                         /* exp(r) - 1 */
    float scale = ce_u2f((ce_f2u(t) + 127u) << 23);
    /* (1 + p) * 2^n as one FMA, one instruction fewer: the same rounding as
       adding 1 first, scale being a power of two. (Without an FMA, as in the
       SSE2 build, p * scale flushes to 0 at n = -126, x within 0.01 of lo:
       results near FLT_MIN there differ from the FMA builds'.) */
    float res = p * scale + scale;
    return x < lo ? 0.0f : res;
}

CE_INLINE double ce_exp_neg_d(double x)
{
    const double lo = -708.0;
    const double shifter = 0x1.8p52;
    double xc = x < lo ? lo : x;
    double t = xc * 1.4426950408889634 + shifter;
    double n = t - shifter;
    double r = xc - n * 6.93147180369123816490e-01;   /* ln2_hi: n*ln2_hi is exact */
    r = r - n * 1.90821492927058770002e-10;           /* ln2_lo */
    /* Taylor to degree 13: truncation < 1e-17 on |r| <= ln2/2 */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    double scale = ce_u2d((ce_d2u(t) + 1023u) << 52);
    double res = p * scale;
    return x < lo ? 0.0 : res;
}

/* tanh in double for the float32 soft cap, branch-free so that the gather loop
   vectorizes (libm's tanh is a call per element): (1 - e) / (1 + e) with
   e = exp(-2|u|) <= 1, relative error below 2e-14 for |u| >= 2^-8 (1 - e loses
   at most 8 bits there), and the odd Taylor series through u^7 below it.
   tanh(+-inf) = +-1, NaN stays NaN. */
CE_INLINE double ce_tanh_d(double u)
{
    double a = u < 0 ? -u : u;
    double e = ce_exp_neg_d(-2.0 * a);
    double t = (1.0 - e) / (1.0 + e);
    double u2 = u * u;
    double series = u * (1.0 + u2 * (-1.0 / 3.0 + u2 * (2.0 / 15.0 + u2 * (-17.0 / 315.0))));
    return a < 0x1p-8 ? series : u < 0 ? -t : t;
}

/* log(s) for s > 0 (a softmax denominator, so s >= 1 in practice);
   +inf and NaN pass through. Vectorizable: no libm call, no int->double
   conversion instruction (the exponent is turned into a double with a shifter).
   s = 2^k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)); log(1+f) = 2 atanh(f / (2 + f)). */
CE_INLINE double ce_log_d(double s)
{
    uint64_t u = ce_d2u(s) + (0x3ff0000000000000ULL - 0x3fe6a09e667f3bcdULL);
    double kd = ce_u2d((u >> 52) | 0x4330000000000000ULL) - (0x1.0p52 + 1023.0);
    double f = ce_u2d((u & 0x000fffffffffffffULL) + 0x3fe6a09e667f3bcdULL) - 1.0;
    double v = f / (2.0 + f);
    double z = v * v;
    double p = 2.0 / 23;
    p = p * z + 2.0 / 21;
    p = p * z + 2.0 / 19;
    p = p * z + 2.0 / 17;
    p = p * z + 2.0 / 15;
    p = p * z + 2.0 / 13;
    p = p * z + 2.0 / 11;
    p = p * z + 2.0 / 9;
    p = p * z + 2.0 / 7;
    p = p * z + 2.0 / 5;
    p = p * z + 2.0 / 3;
    double log1pf = 2.0 * v + v * z * p;
    double res = kd * 6.93147180369123816490e-01 + (log1pf + kd * 1.90821492927058770002e-10);
    return s < INFINITY ? res : s;
}

/* log(a + b) for a, b >= 0, with the rounding error of a + b folded back in
   (TwoSum), so that log(1 + 4e-14) is 4e-14 and not a multiple of 2^-52. */
CE_INLINE double ce_log_sum2(double a, double b)
{
    double u = a + b;
    double bb = u - a;
    double err = (a - (u - bb)) + (b - bb);
    return ce_log_d(u) + err / u;
}

/* ---- one formula per quantity, shared by the row and class-major kernels ----
 * Index target y with label smoothing eps over n classes, class weights w
 * (W = sum w), z-loss z; nll = lse - x_y, log_s = lse - max, shift = sum w (max - x). */
typedef struct {
    double one_eps;   /* 1 - eps: weight of the true class */
    double eps_n;     /* eps / n: weight of every class */
    double W;         /* sum of the class weights (n when none) */
    double z;         /* z-loss coefficient */
} ce_consts;

CE_INLINE ce_consts ce_consts_of(double smoothing, Py_ssize_t n, double W, double z)
{
    ce_consts k = {1.0 - smoothing, smoothing / (double)n, W, z};
    return k;
}

/* the loss of an index-target row (before its sample weight) */
CE_INLINE double ce_loss_index(ce_consts k, double w_y, double nll, double shift, double log_s, double lse)
{
    double smooth = k.eps_n > 0 ? k.eps_n * (shift + k.W * log_s) : 0.0;
    return k.one_eps * w_y * nll + smooth + k.z * w_y * lse * lse;
}

/* its gradient is A * softmax - (eps / n) w - target part; A: */
CE_INLINE double ce_coef_index(ce_consts k, double w_y, double lse)
{
    return k.one_eps * w_y + k.eps_n * k.W + 2.0 * k.z * w_y * lse;
}

/* the gradient's target-column entry; p_y - 1 = -other, other = (sum of the
   other classes' exp) / s, so there is no 1 - p_y cancellation */
CE_INLINE double ce_target_entry(ce_consts k, double A, double w_y, double other, double lse)
{
    return -A * other + k.eps_n * (k.W - w_y) + 2.0 * k.z * w_y * lse;
}

/* dense target t' (sum w t' = T, shifted = sum w t' (max - x)): loss and softmax coefficient */
CE_INLINE double ce_loss_dense(ce_consts k, double shifted, double T, double log_s, double lse)
{
    return shifted + T * log_s + k.z * lse * lse;
}

CE_INLINE double ce_coef_dense(ce_consts k, double T, double lse)
{
    return T + 2.0 * k.z * lse;
}

/* ---- the problem handed from Cython to a block function ---- */

enum ce_target_kind { CE_TARGET_NONE = 0, CE_TARGET_INDEX = 1, CE_TARGET_DENSE = 2 };

enum ce_mode {
    CE_MODE_FORWARD = 0,     /* loss / lse / argmax, nothing of size N x C written */
    CE_MODE_FUSED = 1,       /* forward plus the gradient into g */
    CE_MODE_GRAD_LSE = 2,    /* gradient only, from a given per-row lse */
    CE_MODE_SOFTMAX = 3,     /* g = softmax(x) */
    CE_MODE_LOG_SOFTMAX = 4  /* g = log_softmax(x) */
};

/* A strided (outer, C, inner) view of an N x C problem: row r is
   (r / inner, r % inner); strides are in elements. */
typedef struct {
    char *data;
    Py_ssize_t s_outer, s_class, s_inner;
} ce_view;

typedef struct {
    Py_ssize_t n_rows, n_classes, inner;
    Py_ssize_t block_rows;        /* rows per block: fixed by the shape only */
    int mode, target_kind, from_logits;
    int dtype;                    /* enum ce_dtype (_ce_half.h) of x, t and g */
    ce_view x;                    /* logits (read) */
    ce_view t;                    /* dense target (read), x's dtype (float32 for half x) */
    ce_view g;                    /* gradient / softmax output (written) */
    const int64_t *labels;        /* class indices, n_rows, contiguous */
    int64_t ignore_index;
    const void *class_weight;     /* n_classes of the logits dtype (float32 for half), or NULL */
    double class_weight_sum;      /* sum of class_weight (C when NULL) */
    const double *row_weight;     /* sample weights, n_rows, or NULL */
    const double *row_grad;       /* upstream gradient per row ("none"), or NULL */
    double grad_scale;            /* upstream gradient / mean denominator */
    double smoothing, z_loss, softcap;   /* softcap 0: off */
    double clip;                  /* from_logits=False: probabilities below clip count as clip; 0: the dtype's eps */
    const double *lse_in;         /* CE_MODE_GRAD_LSE: per-row lse */
    /* outputs, NULL when not wanted */
    double *row_loss, *row_lse;
    int64_t *row_argmax, *row_rank;
    double *block_loss;           /* one partial sum per block */
} ce_problem;

/* Few wide rows: in a problem of fewer than CE_SPLIT_MAX_ROWS rows of at
   least CE_SPLIT_MIN_C classes, each row is cut into segments of CE_SPLIT_SEG
   classes (their number depends on C alone) that any thread may scan; the
   segments' partials are merged in segment order (_ce_row.h). */
#define CE_SPLIT_SEG 16384
#define CE_SPLIT_MIN_C 32768
#define CE_SPLIT_MAX_ROWS 64

/* one segment's partial: max, first argmax, exp sum relative to m (target
   left out), classes above the target; then the apply pass's factors */
typedef struct {
    double xy, m, s, cnt, k1, k2, gy;
    int64_t am;
} ce_seg;

CE_INLINE Py_ssize_t ce_split_segments(Py_ssize_t n_classes)
{
    return (n_classes + CE_SPLIT_SEG - 1) / CE_SPLIT_SEG;
}

CE_INLINE Py_ssize_t ce_offset(const ce_view *v, Py_ssize_t row, Py_ssize_t inner)
{
    if (inner == 1)
        return row * v->s_outer;
    return (row / inner) * v->s_outer + (row % inner) * v->s_inner;
}

/* Row weight of the loss and of the mean's denominator; 0 masks the row. */
CE_INLINE double ce_row_weight(const ce_problem *p, Py_ssize_t r, double w_y)
{
    double w = p->row_weight ? p->row_weight[r] : 1.0;
    if (p->target_kind == CE_TARGET_INDEX) {
        int64_t y = p->labels[r];
        if (y == p->ignore_index)
            return 0.0;
        return w * w_y;
    }
    return w;
}

/* Check labels (all in [0, C) or ignore_index) and add up the mean's
   denominator sum(sample_weight * weight[y]) in row order. Returns the first
   bad position, or -1. Serial: O(N) and it must run before any output. */
CE_INLINE Py_ssize_t ce_check_labels_body(const int64_t *labels, Py_ssize_t n, Py_ssize_t n_classes,
                                          int64_t ignore_index, const double *class_weight,
                                          const double *row_weight, double *total, Py_ssize_t *count)
{
    double acc = 0.0;
    Py_ssize_t cnt = 0;
    if (!class_weight && !row_weight) {
        /* the common case, branch-free: count the kept labels, flag bad ones */
        int64_t kept = 0, bad = 0;
#pragma omp simd reduction(+ : kept, bad)
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t y = labels[i];
            int64_t skip = y == ignore_index;
            kept += 1 - skip;
            bad += (1 - skip) & ((y < 0) | (y >= n_classes));
        }
        if (!bad) {
            *total = (double)kept;
            *count = (Py_ssize_t)kept;
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t y = labels[i];
        if (y == ignore_index)
            continue;
        if (y < 0 || y >= n_classes)
            return i;
        double w = class_weight ? class_weight[y] : 1.0;
        if (row_weight)
            w *= row_weight[i];
        acc += w;
        cnt++;
    }
    *total = acc;
    *count = cnt;
    return -1;
}
/* Sum of n doubles in 8 independent lanes (a fixed order; a serial chain of
   adds costs 4 cycles per element): the class weights' sum when only whether
   it is finite matters (no label smoothing: it is multiplied by 0). */
CE_INLINE double ce_weight_sum_body(const double *w, Py_ssize_t n)
{
    /* 32 lanes: four independent vector chains (one chain of 8 lanes waited
       on its add latency: about 0.2 us at C = 1000) */
    double lane[32] = {0};
    Py_ssize_t n32 = n - n % 32;
    for (Py_ssize_t i = 0; i < n32; i += 32)
#pragma omp simd
        for (int j = 0; j < 32; j++)
            lane[j] += w[i + j];
    for (Py_ssize_t i = n32; i < n; i++)
        lane[i - n32] += w[i];
    for (int j = 0; j < 8; j++)   /* a fixed order: the four chains into the first, then a tree */
        lane[j] = (lane[j] + lane[j + 8]) + (lane[j + 16] + lane[j + 24]);
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}
CE_LEVELS(double, ce_weight_sum, (const double *w, Py_ssize_t n), (w, n))

CE_LEVELS(Py_ssize_t, ce_check_labels,
          (const int64_t *labels, Py_ssize_t n, Py_ssize_t n_classes, int64_t ignore_index,
           const double *class_weight, const double *row_weight, double *total, Py_ssize_t *count),
          (labels, n, n_classes, ignore_index, class_weight, row_weight, total, count))

#include "_ce_transpose.h"   /* the class-major tile's register transposes */

#define CE_REAL float
#define CE_SUFFIX f32
#define CE_EXP ce_exp_neg_f
#include "_ce_row.h"
#undef CE_REAL
#undef CE_SUFFIX
#undef CE_EXP

#define CE_REAL double
#define CE_SUFFIX f64
#define CE_EXP ce_exp_neg_d
#include "_ce_row.h"
#undef CE_REAL
#undef CE_SUFFIX
#undef CE_EXP

#include "_ce_half.h"   /* float16 / bfloat16 blocks, through float32 tiles */

/* Does p take the split path? A function of the shape and options only (never
   of the thread count). Index targets or none, logits, no smoothing or soft
   cap (their sums would need re-basing per segment), float32 / float64 rows
   with the classes contiguous; the rest runs whole rows. */
static int ce_split_ok(const ce_problem *p)
{
    const int index = p->target_kind == CE_TARGET_INDEX;
    const int free_mode = p->target_kind == CE_TARGET_NONE && p->mode != CE_MODE_FUSED
        && p->mode != CE_MODE_GRAD_LSE;
    return p->n_classes >= CE_SPLIT_MIN_C && p->n_rows < CE_SPLIT_MAX_ROWS && p->inner == 1
        && (p->dtype == CE_DTYPE_F32 || p->dtype == CE_DTYPE_F64) && p->from_logits
        && p->softcap == 0 && p->smoothing == 0 && (index || free_mode) && p->x.s_class == 1
        && (p->g.data == NULL || p->g.s_class == 1);
}

/* The split passes of the problem's dtype (f32 or f64). */
static void ce_split_prepare_any(const ce_problem *p, ce_seg *segs)
{
    if (p->dtype == CE_DTYPE_F64) ce_split_prepare_f64(p, segs); else ce_split_prepare_f32(p, segs);
}
CE_INLINE void ce_split_scan_any(const ce_problem *p, ce_seg *segs, Py_ssize_t item)
{
    if (p->dtype == CE_DTYPE_F64) ce_split_scan_f64(p, segs, item); else ce_split_scan_f32(p, segs, item);
}
static void ce_split_merge_any(ce_problem *p, ce_seg *segs)
{
    if (p->dtype == CE_DTYPE_F64) ce_split_merge_f64(p, segs); else ce_split_merge_f32(p, segs);
}
CE_INLINE void ce_split_apply_any(const ce_problem *p, ce_seg *segs, Py_ssize_t item)
{
    if (p->dtype == CE_DTYPE_F64) ce_split_apply_f64(p, segs, item); else ce_split_apply_f32(p, segs, item);
}
static void ce_split_finish_any(ce_problem *p, ce_seg *segs)
{
    if (p->dtype == CE_DTYPE_F64) ce_split_finish_f64(p, segs); else ce_split_finish_f32(p, segs);
}

/* ---- memory bandwidth probe, for the benchmark's percent-of-bandwidth ---- */

CE_INLINE double ce_probe_read_body(const double *a, Py_ssize_t n)
{
    /* four independent sums so that the add latency never limits the reads */
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    Py_ssize_t n4 = n - n % 4;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (Py_ssize_t i = 0; i < n4; i += 4) {
        s0 += a[i];
        s1 += a[i + 1];
        s2 += a[i + 2];
        s3 += a[i + 3];
    }
    for (Py_ssize_t i = n4; i < n; i++)
        s0 += a[i];
    return (s0 + s1) + (s2 + s3);
}
CE_LEVELS(double, ce_probe_read, (const double *a, Py_ssize_t n), (a, n))

CE_INLINE int ce_probe_write_body(double *a, Py_ssize_t n, double v)
{
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++)
        a[i] = v;
    return 0;
}
CE_LEVELS(int, ce_probe_write, (double *a, Py_ssize_t n, double v), (a, n, v))

/* the level the CE_LEVELS entry points run at, for show_config */
static const char *ce_simd_level(void)
{
#if CE_HAVE_DISPATCH
    switch (ce_simd_now()) {
    case CE_SIMD_AVX512: return "x86-64-v4 (AVX-512)";
    case CE_SIMD_AVX2: return "x86-64-v3 (AVX2+FMA)";
    default: return "x86-64 baseline (SSE2)";
    }
#else
    return "compiler default (no runtime dispatch)";
#endif
}

#endif /* CE_CORE_H */
