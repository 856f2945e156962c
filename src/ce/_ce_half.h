/* ce: float16 and bfloat16 logits, read and written by the kernels directly.
 *
 * A few half-precision rows at a time (and their dense targets) are converted
 * into a float32 tile that stays in L1, the float32 block code runs on a
 * sub-problem that points at the tile (writing gradient / softmax results
 * over it in place), and those are converted back, rounded to nearest even. So half
 * precision is read at 2 bytes a logit and computed exactly as float32 is
 * (float32 lanes, float64 row and cross-row sums); per-row outputs (loss,
 * lse, argmax) are the float32 kernel's.
 *
 * Conversions: float16 uses F16C (8 lanes an instruction) where the CPU has
 * it, checked at run time, and portable integer code elsewhere; bfloat16 is
 * integer bit work that gcc vectorises in every target clone, and its
 * rounding back uses AVX512_BF16 where the CPU has it (run time again). The tile code
 * runs with FTZ/DAZ off, so half subnormals convert exactly both ways.
 * bfloat16 results below FLT_MIN are 0: the float32 kernel flushes them.
 *
 * Included by _ce_core.h after the float32 row code.
 */
#ifndef CE_HALF_H
#define CE_HALF_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define CE_HAVE_F16C_PATH 1
#else
#define CE_HAVE_F16C_PATH 0
#endif

enum ce_dtype { CE_DTYPE_F32 = 0, CE_DTYPE_F64 = 1, CE_DTYPE_F16 = 2, CE_DTYPE_BF16 = 3 };

/* set by tests to exercise the portable float16 code on an F16C machine */
static int ce_half_portable = 0;

/* ---- portable conversions (exact, round to nearest even) ---- */

CE_INLINE float ce_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    uint32_t normal = (em << 13) + ((127u - 15u) << 23);
    uint32_t special = (em << 13) | 0x7f800000u;            /* inf, NaN (payload kept) */
    float sub = (float)(int32_t)em * 0x1p-24f;               /* zero and subnormals: exact */
    uint32_t u = em >= 0x7c00u ? special : normal;
    uint32_t bits = (em < 0x0400u ? ce_f2u(sub) : u) | sign;
    return ce_u2f(bits);
}

/* float -> float16, nearest even; overflow to inf, NaN stays NaN (quiet). */
CE_INLINE uint16_t ce_f32_to_f16(float f)
{
    uint32_t u = ce_f2u(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    /* normal halves: rebias, add the rounding bias (ties to even), drop 13 bits */
    uint32_t odd = (a >> 13) & 1u;
    uint32_t normal = (a + ((uint32_t)(15 - 127) << 23) + 0xfffu + odd) >> 13;
    /* subnormal halves: the float addition rounds the value to a multiple of
       2^-24 (nearest even), whose bits are then the half's */
    float sub = ce_u2f(a) + 0.5f;
    uint32_t subnormal = ce_f2u(sub) - ce_f2u(0.5f);
    uint32_t r = a < 0x38800000u ? subnormal : normal;
    r = a >= 0x47800000u ? 0x7c00u : r;                      /* >= 65536: inf */
    r = a > 0x7f800000u ? (0x7e00u | ((a >> 13) & 0x3ffu)) : r;
    return (uint16_t)(r | sign);
}

CE_INLINE float ce_bf16_to_f32(uint16_t h) { return ce_u2f((uint32_t)h << 16); }

CE_INLINE uint16_t ce_f32_to_bf16(float f)
{
    uint32_t u = ce_f2u(f);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

/* ---- row conversions ---- */

#if CE_HAVE_F16C_PATH
__attribute__((target("avx2,f16c")))
static void ce_f16_load_f16c(float *dst, const uint16_t *src, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++)
        dst[i] = _cvtsh_ss(src[i]);
}

__attribute__((target("avx2,f16c")))
static void ce_f16_store_f16c(uint16_t *dst, const float *src, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

/* float32 -> bfloat16 with AVX512_BF16 (16 lanes an instruction): nearest
   even, NaN kept quiet with its payload's top bits, as ce_f32_to_bf16; it
   reads float32 subnormals as 0, which the float32 kernel never writes (it
   runs with FTZ). */
__attribute__((target("avx512f,avx512bf16")))
static void ce_bf16_store_avx512(uint16_t *dst, const float *src, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)h);
    }
    for (; i < n; i++)
        dst[i] = ce_f32_to_bf16(src[i]);
}

static int ce_have_avx512bf16(void)
{
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx512bf16");
    }
    return have && !ce_half_portable && ce_simd_now() >= CE_SIMD_AVX512;
}

static int ce_have_f16c(void)
{
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    return have && !ce_half_portable && ce_simd_now() >= CE_SIMD_AVX2;   /* not at the forced baseline */
}
#endif

/* dst[c] = src[c * stride] as float32, for c < n */
CE_INLINE void ce_half_load(float *dst, const uint16_t *src, Py_ssize_t n, Py_ssize_t stride,
                            const int bf)
{
    if (stride == 1) {
        if (bf) {
#pragma omp simd
            for (Py_ssize_t c = 0; c < n; c++)
                dst[c] = ce_bf16_to_f32(src[c]);
            return;
        }
#if CE_HAVE_F16C_PATH
        if (ce_have_f16c()) {
            ce_f16_load_f16c(dst, src, n);
            return;
        }
#endif
#pragma omp simd
        for (Py_ssize_t c = 0; c < n; c++)
            dst[c] = ce_f16_to_f32(src[c]);
        return;
    }
    for (Py_ssize_t c = 0; c < n; c++)
        dst[c] = bf ? ce_bf16_to_f32(src[c * stride]) : ce_f16_to_f32(src[c * stride]);
}

/* dst[c * stride] = src[c] rounded to the half dtype, for c < n */
CE_INLINE void ce_half_store(uint16_t *dst, Py_ssize_t stride, const float *src, Py_ssize_t n,
                             const int bf)
{
    if (stride == 1) {
        if (bf) {
#if CE_HAVE_F16C_PATH
            if (ce_have_avx512bf16()) {
                ce_bf16_store_avx512(dst, src, n);
                return;
            }
#endif
#pragma omp simd
            for (Py_ssize_t c = 0; c < n; c++)
                dst[c] = ce_f32_to_bf16(src[c]);
            return;
        }
#if CE_HAVE_F16C_PATH
        if (ce_have_f16c()) {
            ce_f16_store_f16c(dst, src, n);
            return;
        }
#endif
#pragma omp simd
        for (Py_ssize_t c = 0; c < n; c++)
            dst[c] = ce_f32_to_f16(src[c]);
        return;
    }
    for (Py_ssize_t c = 0; c < n; c++)
        dst[c * stride] = bf ? ce_f32_to_bf16(src[c]) : ce_f32_to_f16(src[c]);
}

/* MXCSR with FTZ and DAZ cleared, for exact conversions (restored after) */
#if defined(__x86_64__) || defined(_M_X64)
#define CE_EXACT_FP_ON(saved) do { saved = _mm_getcsr(); _mm_setcsr(saved & ~0x8040u); } while (0)
#else
#define CE_EXACT_FP_ON(saved) do { saved = 0; } while (0)
#endif

/* Rows per float32 tile: about CE_HALF_TILE logits, so that the tile (which
   also receives the gradient, in place) stays in L1 while the float32 code
   makes its passes over it. */
#ifndef CE_HALF_TILE
#define CE_HALF_TILE 8192
#endif

/* rows [r0, r1) of view v are one contiguous run of (r1 - r0) * n elements */
CE_INLINE int ce_half_packed(const ce_view *v, Py_ssize_t n, Py_ssize_t inner)
{
    return inner == 1 && v->s_class == 1 && v->s_outer == n;
}

/* tile (rows r0 .. r1 - 1, row-major) = half rows of v, as float32 */
CE_INLINE void ce_half_rows_load(float *tile, const ce_view *v, Py_ssize_t r0, Py_ssize_t r1,
                                 Py_ssize_t n, Py_ssize_t inner, const int bf)
{
    const uint16_t *base = (const uint16_t *)v->data;
    if (ce_half_packed(v, n, inner)) {
        ce_half_load(tile, base + r0 * n, (r1 - r0) * n, 1, bf);
        return;
    }
    for (Py_ssize_t r = r0; r < r1; r++)
        ce_half_load(tile + (r - r0) * n, base + ce_offset(v, r, inner), n, v->s_class, bf);
}

/* tile (rows r0 .. r1 - 1, row-major) = float32 rows of v (dense targets of half logits are
   float32: a probability or weight above 65504, or below float16's range, must survive) */
CE_INLINE void ce_f32_rows_load(float *tile, const ce_view *v, Py_ssize_t r0, Py_ssize_t r1,
                                Py_ssize_t n, Py_ssize_t inner)
{
    const float *base = (const float *)v->data;
    for (Py_ssize_t r = r0; r < r1; r++) {
        const float *row = base + ce_offset(v, r, inner);
        for (Py_ssize_t c = 0; c < n; c++)
            tile[(r - r0) * n + c] = row[c * v->s_class];
    }
}

/* half rows r0 .. r1 - 1 of v = tile, rounded to nearest even */
CE_INLINE void ce_half_rows_store(const ce_view *v, const float *tile, Py_ssize_t r0, Py_ssize_t r1,
                                  Py_ssize_t n, Py_ssize_t inner, const int bf)
{
    uint16_t *base = (uint16_t *)v->data;
    if (ce_half_packed(v, n, inner)) {
        ce_half_store(base + r0 * n, 1, tile, (r1 - r0) * n, bf);
        return;
    }
    for (Py_ssize_t r = r0; r < r1; r++)
        ce_half_store(base + ce_offset(v, r, inner), v->s_class, tile + (r - r0) * n, n, bf);
}

/* Ask for the next tile's half rows (n elements from src) into L2 while the
   float32 code computes on this tile: the conversion loop would otherwise wait
   on memory with nothing to overlap (the float32 kernel's own prefetch of the
   next row points into the tile). */
CE_INLINE void ce_half_prefetch(const uint16_t *src, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i += 32)   /* one 64-byte line */
        __builtin_prefetch(src + i, 0, 2);
}

/* The float32 problem of rows [r0, r1) of p, held in tiles xt (logits, and the
   gradient written over them in place) and tt (dense targets). */
CE_INLINE ce_problem ce_half_sub(const ce_problem *p, Py_ssize_t r0, Py_ssize_t r1, float *xt,
                                 float *tt, double *loss)
{
    ce_problem q = *p;
    q.n_rows = r1 - r0;
    q.inner = 1;
    q.block_rows = r1 - r0;
    q.dtype = CE_DTYPE_F32;
    q.x.data = (char *)xt;
    q.x.s_outer = p->n_classes;
    q.x.s_class = 1;
    q.x.s_inner = 0;
    q.t = q.x;
    q.t.data = p->target_kind == CE_TARGET_DENSE ? (char *)tt : NULL;
    q.g = q.x;
    q.g.data = p->g.data ? (char *)xt : NULL;
#define CE_SHIFT(field) q.field = p->field ? p->field + r0 : NULL
    CE_SHIFT(labels);
    CE_SHIFT(row_weight);
    CE_SHIFT(row_grad);
    CE_SHIFT(lse_in);
    CE_SHIFT(row_loss);
    CE_SHIFT(row_lse);
    CE_SHIFT(row_argmax);
    CE_SHIFT(row_rank);
#undef CE_SHIFT
    *loss = 0.0;
    q.block_loss = loss;
    return q;
}

/* One block of a half-precision problem: rows [b * block_rows, ...), a few at
   a time, through a float32 tile and ce_block_f32. p->class_weight is float32
   here. The block's loss is the sum of the tiles' in row order. Returns 0, or
   -1 when a tile could not be allocated. */
CE_INLINE int ce_block_half(ce_problem *p, Py_ssize_t b, const int bf)
{
    const Py_ssize_t n = p->n_classes, inner = p->inner;
    const Py_ssize_t r0 = b * p->block_rows;
    const Py_ssize_t r1 = r0 + p->block_rows < p->n_rows ? r0 + p->block_rows : p->n_rows;
    const int has_t = p->target_kind == CE_TARGET_DENSE, has_g = p->g.data != NULL;
    Py_ssize_t sub = CE_HALF_TILE / n;
    sub = sub < 1 ? 1 : (sub > r1 - r0 ? r1 - r0 : sub);
    const size_t tile = (size_t)sub * (size_t)n;
    float *xt = (float *)malloc(tile * (size_t)(1 + has_t) * sizeof(float));
    if (!xt)
        return -1;
    float *tt = xt + tile;
    unsigned int csr;
    CE_EXACT_FP_ON(csr);
    double acc = 0.0, loss;
    int status = 0;
    for (Py_ssize_t s0 = r0; s0 < r1; s0 += sub) {
        const Py_ssize_t s1 = s0 + sub < r1 ? s0 + sub : r1;
        ce_half_rows_load(xt, &p->x, s0, s1, n, inner, bf);
        if (has_t)
            ce_f32_rows_load(tt, &p->t, s0, s1, n, inner);
        ce_problem q = ce_half_sub(p, s0, s1, xt, tt, &loss);
        if (s1 < r1 && ce_half_packed(&p->x, n, inner))
            ce_half_prefetch((const uint16_t *)p->x.data + s1 * n,
                             (s1 + sub < r1 ? sub : r1 - s1) * n);
        status = ce_block_f32(&q, 0);
        if (status != 0)
            break;
        if (has_g)
            ce_half_rows_store(&p->g, xt, s0, s1, n, inner, bf);
        acc += loss;
    }
    if (p->block_loss)
        p->block_loss[b] = acc;
    CE_FTZ_OFF(csr);
    free(xt);
    return status;
}

CE_INLINE int ce_block_f16_body(ce_problem *p, Py_ssize_t b) { return ce_block_half(p, b, 0); }
CE_INLINE int ce_block_bf16_body(ce_problem *p, Py_ssize_t b) { return ce_block_half(p, b, 1); }
CE_LEVELS(int, ce_block_f16, (ce_problem *p, Py_ssize_t b), (p, b))
CE_LEVELS(int, ce_block_bf16, (ce_problem *p, Py_ssize_t b), (p, b))

/* The block function of the problem's dtype; returns its status. */
CE_INLINE int ce_block_any(ce_problem *p, Py_ssize_t b)
{
    switch (p->dtype) {
    case CE_DTYPE_F64: return ce_block_f64(p, b);
    case CE_DTYPE_F16: return ce_block_f16(p, b);
    case CE_DTYPE_BF16: return ce_block_bf16(p, b);
    default: return ce_block_f32(p, b);
    }
}

#endif /* CE_HALF_H */
