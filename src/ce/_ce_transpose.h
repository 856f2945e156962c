/* ce: the class-major tile's transposes, in registers.
 *
 * Rows of up to CE_TILE_MAX_C (float64: CE_TILE_MAX_C_F64) classes are
 * transposed into a class-major tile (and gradients back out of it) by the
 * class-major kernel. Element by element that copy was about 40% of a C = 16
 * forward. Here a group of L rows (L = the
 * lanes of one vector: 16 / 8 floats / doubles at AVX-512, 8 / 4 at AVX2) and
 * L classes is read with L masked row loads, transposed with shuffles, and
 * written as L-wide class vectors (and the reverse). Masked loads and stores
 * touch only the row's own elements, so nothing past the array is read or
 * written. Pure data movement: the results are the same bits as the scalar copy.
 *
 * Each function does the whole groups of L rows of a tile and returns how many
 * rows it did; the caller copies the rest (and everything when the classes are
 * strided, or below AVX2) one element at a time. They are called once per tile
 * at the active SIMD level, so forcing a level (tests) reaches the scalar copy.
 *
 * Included by _ce_core.h before the row code.
 */
#ifndef CE_TRANSPOSE_H
#define CE_TRANSPOSE_H

#if CE_HAVE_DISPATCH
#include <immintrin.h>

#define CE_V4 __attribute__((target("arch=x86-64-v4")))
#define CE_V3 __attribute__((target("arch=x86-64-v3")))

/* 128-bit blocks of four vectors: out[L] lane k = v[k] lane L (the last stage of
   the 16 x 16 float and 8 x 8 double transposes) */
CE_V4 static inline void ce_blocks4x4(__m512 v[4])
{
    const __m512 a = _mm512_shuffle_f32x4(v[0], v[1], 0x88), b = _mm512_shuffle_f32x4(v[0], v[1], 0xdd);
    const __m512 c = _mm512_shuffle_f32x4(v[2], v[3], 0x88), d = _mm512_shuffle_f32x4(v[2], v[3], 0xdd);
    v[0] = _mm512_shuffle_f32x4(a, c, 0x88);
    v[1] = _mm512_shuffle_f32x4(b, d, 0x88);
    v[2] = _mm512_shuffle_f32x4(a, c, 0xdd);
    v[3] = _mm512_shuffle_f32x4(b, d, 0xdd);
}

/* r[j] = row j of a 16 x 16 block; afterwards r[c] = column c */
CE_V4 static inline void ce_transpose16_f32(__m512 r[16])
{
    __m512 t[16];
    for (int k = 0; k < 16; k += 2) {   /* pairs of rows interleaved, per 128-bit block */
        t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
    }
    __m512 g[4][4];   /* g[q][j]: block L holds column 4L + j of rows 4q .. 4q + 3 */
    for (int q = 0; q < 4; q++) {
        g[q][0] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], _MM_SHUFFLE(1, 0, 1, 0));
        g[q][1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], _MM_SHUFFLE(3, 2, 3, 2));
        g[q][2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], _MM_SHUFFLE(1, 0, 1, 0));
        g[q][3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int j = 0; j < 4; j++) {
        __m512 v[4] = {g[0][j], g[1][j], g[2][j], g[3][j]};
        ce_blocks4x4(v);
        for (int L = 0; L < 4; L++)
            r[4 * L + j] = v[L];
    }
}

/* r[j] = row j of an 8 x 8 block of doubles; afterwards r[c] = column c */
CE_V4 static inline void ce_transpose8_f64(__m512d r[8])
{
    __m512 p[4][2];   /* p[q][j]: block L holds column 2L + j of rows 2q, 2q + 1 */
    for (int q = 0; q < 4; q++) {
        p[q][0] = _mm512_castpd_ps(_mm512_unpacklo_pd(r[2 * q], r[2 * q + 1]));
        p[q][1] = _mm512_castpd_ps(_mm512_unpackhi_pd(r[2 * q], r[2 * q + 1]));
    }
    for (int j = 0; j < 2; j++) {
        __m512 v[4] = {p[0][j], p[1][j], p[2][j], p[3][j]};
        ce_blocks4x4(v);
        for (int L = 0; L < 4; L++)
            r[2 * L + j] = _mm512_castps_pd(v[L]);
    }
}

/* r[j] = row j of an 8 x 8 block of floats (AVX2); afterwards r[c] = column c */
CE_V3 static inline void ce_transpose8_f32(__m256 r[8])
{
    __m256 t[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
    }
    __m256 g[2][4];   /* g[q][j]: 128-bit half L holds column 4L + j of rows 4q .. 4q + 3 */
    for (int q = 0; q < 2; q++) {
        g[q][0] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], _MM_SHUFFLE(1, 0, 1, 0));
        g[q][1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], _MM_SHUFFLE(3, 2, 3, 2));
        g[q][2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], _MM_SHUFFLE(1, 0, 1, 0));
        g[q][3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(g[0][j], g[1][j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(g[0][j], g[1][j], 0x31);
    }
}

/* r[j] = row j of a 4 x 4 block of doubles (AVX2); afterwards r[c] = column c */
CE_V3 static inline void ce_transpose4_f64(__m256d r[4])
{
    const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

/* AVX2 lane masks: the first w of 8 (float) or 4 (double) lanes */
CE_V3 static inline __m256i ce_mask8(int w)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(w), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
CE_V3 static inline __m256i ce_mask4(int w)
{
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(w), _mm256_setr_epi64x(0, 1, 2, 3));
}

/* One definition of the two loops per (vector type, lane count). IN: tile
   (class c of row i at tile[c * rs + i]) <- rows of n contiguous classes, row
   i at src + i * so. OUT: the reverse. LOADM(p, w) / STOREM(p, w, v) are the
   masked row accesses of the first w lanes. */
#define CE_TILE_IN_LOOP(V, L, LOADM, STOREU, TRANSPOSE)                               \
    Py_ssize_t i0 = 0;                                                                \
    for (; i0 + (L) <= nr; i0 += (L))                                                 \
        for (Py_ssize_t cb = 0; cb < n; cb += (L)) {                                  \
            const int w = n - cb < (L) ? (int)(n - cb) : (L);                         \
            V r[L];                                                                   \
            for (int j = 0; j < (L); j++)                                             \
                r[j] = LOADM(src + (i0 + j) * so + cb, w);                            \
            TRANSPOSE(r);                                                             \
            for (int k = 0; k < w; k++)                                               \
                STOREU(tile + (cb + k) * rs + i0, r[k]);                              \
        }                                                                             \
    return i0;

#define CE_TILE_OUT_LOOP(V, L, LOADU, ZERO, STOREM, TRANSPOSE)                        \
    Py_ssize_t i0 = 0;                                                                \
    for (; i0 + (L) <= nr; i0 += (L))                                                 \
        for (Py_ssize_t cb = 0; cb < n; cb += (L)) {                                  \
            const int w = n - cb < (L) ? (int)(n - cb) : (L);                         \
            V r[L];                                                                   \
            for (int k = 0; k < (L); k++)                                             \
                r[k] = k < w ? LOADU(tile + (cb + k) * rs + i0) : ZERO;               \
            TRANSPOSE(r);                                                             \
            for (int j = 0; j < (L); j++)                                             \
                STOREM(dst + (i0 + j) * so + cb, w, r[j]);                            \
        }                                                                             \
    return i0;

#define CE_M16(w) ((__mmask16)((1u << (w)) - 1u))
#define CE_M8(w) ((__mmask8)((1u << (w)) - 1u))
#define CE_LD16(p, w) _mm512_maskz_loadu_ps(CE_M16(w), p)
#define CE_ST16(p, w, v) _mm512_mask_storeu_ps(p, CE_M16(w), v)
#define CE_LD8D(p, w) _mm512_maskz_loadu_pd(CE_M8(w), p)
#define CE_ST8D(p, w, v) _mm512_mask_storeu_pd(p, CE_M8(w), v)
#define CE_LD8(p, w) _mm256_maskload_ps(p, ce_mask8(w))
#define CE_ST8(p, w, v) _mm256_maskstore_ps(p, ce_mask8(w), v)
#define CE_LD4D(p, w) _mm256_maskload_pd(p, ce_mask4(w))
#define CE_ST4D(p, w, v) _mm256_maskstore_pd(p, ce_mask4(w), v)

/* ce_tile_in_LEVEL_T and ce_tile_out_LEVEL_T for one SIMD level and dtype */
#define CE_TILE_FNS(ATTR, LEVEL_T, T, V, L, LOADM, STOREU, LOADU, ZERO, STOREM, TRANSPOSE)   \
    ATTR static Py_ssize_t ce_tile_in_##LEVEL_T(T *tile, Py_ssize_t rs, const T *src,      \
                                                Py_ssize_t so, Py_ssize_t nr, Py_ssize_t n) \
    { CE_TILE_IN_LOOP(V, L, LOADM, STOREU, TRANSPOSE) }                                   \
    ATTR static Py_ssize_t ce_tile_out_##LEVEL_T(T *dst, Py_ssize_t so, const T *tile,     \
                                                 Py_ssize_t rs, Py_ssize_t nr, Py_ssize_t n) \
    { CE_TILE_OUT_LOOP(V, L, LOADU, ZERO, STOREM, TRANSPOSE) }

CE_TILE_FNS(CE_V4, v4_f32, float, __m512, 16, CE_LD16, _mm512_storeu_ps, _mm512_loadu_ps,
            _mm512_setzero_ps(), CE_ST16, ce_transpose16_f32)
CE_TILE_FNS(CE_V4, v4_f64, double, __m512d, 8, CE_LD8D, _mm512_storeu_pd, _mm512_loadu_pd,
            _mm512_setzero_pd(), CE_ST8D, ce_transpose8_f64)
CE_TILE_FNS(CE_V3, v3_f32, float, __m256, 8, CE_LD8, _mm256_storeu_ps, _mm256_loadu_ps,
            _mm256_setzero_ps(), CE_ST8, ce_transpose8_f32)
CE_TILE_FNS(CE_V3, v3_f64, double, __m256d, 4, CE_LD4D, _mm256_storeu_pd, _mm256_loadu_pd,
            _mm256_setzero_pd(), CE_ST4D, ce_transpose4_f64)
#endif /* CE_HAVE_DISPATCH */

/* ce_tile_in_vec_T / ce_tile_out_vec_T, the row code's entry points (CE_FN
   names): the rows of a tile done in registers at the active level (0: none,
   the caller copies them all) */
#if CE_HAVE_DISPATCH
#define CE_TILE_PICK(v4, v3, args)                                                           \
    switch (ce_simd_now()) {                                                                 \
    case CE_SIMD_AVX512: return v4 args;                                                     \
    case CE_SIMD_AVX2: return v3 args;                                                       \
    default: return 0;                                                                       \
    }
#define CE_TILE_VEC(T, SUFFIX)                                                                \
    static Py_ssize_t ce_tile_in_vec_##SUFFIX(T *tile, Py_ssize_t rs, const T *src,           \
                                              Py_ssize_t so, Py_ssize_t nr, Py_ssize_t n)     \
    { CE_TILE_PICK(ce_tile_in_v4_##SUFFIX, ce_tile_in_v3_##SUFFIX, (tile, rs, src, so, nr, n)) } \
    static Py_ssize_t ce_tile_out_vec_##SUFFIX(T *dst, Py_ssize_t so, const T *tile,          \
                                               Py_ssize_t rs, Py_ssize_t nr, Py_ssize_t n)    \
    { CE_TILE_PICK(ce_tile_out_v4_##SUFFIX, ce_tile_out_v3_##SUFFIX, (dst, so, tile, rs, nr, n)) }
CE_TILE_VEC(float, f32)
CE_TILE_VEC(double, f64)
#else
#define ce_tile_in_vec_f32(...) ((Py_ssize_t)0)
#define ce_tile_out_vec_f32(...) ((Py_ssize_t)0)
#define ce_tile_in_vec_f64(...) ((Py_ssize_t)0)
#define ce_tile_out_vec_f64(...) ((Py_ssize_t)0)
#endif

#endif /* CE_TRANSPOSE_H */
