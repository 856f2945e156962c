/* ce: exact summation of float64 values (a fixed-point superaccumulator).
 *
 * Every finite double is an integer multiple of 2^-1074 below 2^1024, so the
 * exact sum of any number of them is an integer of at most ~2160 bits in units
 * of 2^-1074. It is kept as CE_EXACT_LIMBS signed 64-bit limbs, each holding
 * a 32-bit digit plus headroom for carries: limb i weighs 2^(32 i). A value
 * adds its 53-bit mantissa, shifted to its exponent, to three consecutive
 * limbs; no rounding ever happens, so the result does not depend on the order
 * or the grouping of the additions (any chunking, any thread count).
 *
 * Non-finite values are not added; they are recorded in a flag word
 * (CE_EXACT_POS_INF | CE_EXACT_NEG_INF | CE_EXACT_NAN), which is also
 * order-independent.
 */
#ifndef CE_EXACT_H
#define CE_EXACT_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <Python.h>   /* Py_ssize_t */

#define CE_EXACT_LIMBS 68           /* 68 * 32 = 2176 bits > 2098 + carries */
#define CE_EXACT_POS_INF 1
#define CE_EXACT_NEG_INF 2
#define CE_EXACT_NAN 4
/* each limb takes one digit (< 2^32) per value: 2^30 values never overflow */
#define CE_EXACT_BATCH ((Py_ssize_t)1 << 30)

typedef struct {
    int64_t limb[CE_EXACT_LIMBS];
    int special;
} ce_exact;

/* Propagate carries so that limbs 0 .. LIMBS-2 lie in [0, 2^32). The value is
   unchanged; the top limb keeps the sign. */
static void ce_exact_normalise(ce_exact *a)
{
    int64_t carry = 0;
    for (int i = 0; i < CE_EXACT_LIMBS - 1; i++) {
        int64_t v = a->limb[i] + carry;
        carry = v >> 32;                       /* arithmetic shift: floor division */
        a->limb[i] = v - (int64_t)((uint64_t)carry << 32);
    }
    a->limb[CE_EXACT_LIMBS - 1] += carry;
}

/* Add one double's digits into the limbs l (a separate accumulator per
   interleaved stream keeps the store-to-load chains short). */
static inline void ce_exact_put(int64_t *l, uint64_t u, int *special)
{
    uint64_t e = (u >> 52) & 0x7ff;
    if (e == 0x7ff) {
        if (u & 0x000fffffffffffffULL)
            *special |= CE_EXACT_NAN;
        else
            *special |= (u >> 63) ? CE_EXACT_NEG_INF : CE_EXACT_POS_INF;
        return;
    }
    uint64_t normal = e != 0;
    uint64_t m = (u & 0x000fffffffffffffULL) | (normal << 52);
    uint64_t pos = e - normal;                 /* value = m * 2^(pos - 1074) */
    unsigned __int128 x = (unsigned __int128)m << (pos & 31);
    int64_t neg = -(int64_t)(u >> 63);         /* 0 or -1 */
    int64_t d0 = (int64_t)(uint32_t)x;
    int64_t d1 = (int64_t)(uint32_t)(x >> 32);
    int64_t d2 = (int64_t)(x >> 64);
    int64_t *p = l + (pos >> 5);
    p[0] += (d0 ^ neg) - neg;
    p[1] += (d1 ^ neg) - neg;
    p[2] += (d2 ^ neg) - neg;
}

/* Add a signed integer s (|s| < 2^63) times 2^(pos - 1074) into the limbs. */
static inline void ce_exact_put_int(int64_t *l, int64_t s, uint64_t pos)
{
    int64_t neg = s < 0 ? -1 : 0;
    uint64_t mag = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
    unsigned __int128 x = (unsigned __int128)mag << (pos & 31);
    int64_t d[4] = {(int64_t)(uint32_t)x, (int64_t)(uint32_t)(x >> 32),
                    (int64_t)(uint32_t)(x >> 64), (int64_t)(x >> 96)};
    int64_t *p = l + (pos >> 5);
    for (int k = 0; k < 4; k++)
        p[k] += (d[k] ^ neg) - neg;
}

/* Same-binary dispatch as _ce_core.h: the fast path below vectorises. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) \
    && defined(__linux__) && !defined(CE_NO_DISPATCH)
#define CE_EXACT_DISPATCH __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CE_EXACT_DISPATCH
#endif

/* Fast path: values with 2^-75 <= |v| < 2^64 have all their bits between
   2^-127 and 2^63, so four fixed-grid digits of 48 bits (weights 2^16, 2^-32,
   2^-80, 2^-128) hold them exactly. A digit is peeled off with the
   round-to-grid trick: for |r| < 2^(51+g), (r + M) - M with M = 1.5 * 2^(52+g)
   is r rounded to a multiple of 2^g (exact additions in round-to-nearest), and
   the bit pattern of r + M minus that of M is that multiple over 2^g. Every
   operation is exact, so the digits' sums are the exact sum. Other values
   (tiny, huge, non-finite) take the scalar path. */
#define CE_EXACT_CHUNK 4096       /* digits < 2^48: 2^15 of them fit an int64 */
#define CE_EXACT_LEVELS 4
static const int ce_exact_grid[CE_EXACT_LEVELS] = {16, -32, -80, -128};

/* One chunk of the fast path: the four digit sums into s; returns the number
   of values left to the scalar path (no per-value flag is stored: a narrow
   store would cut the vector width). */
static inline __attribute__((always_inline)) int64_t
ce_exact_chunk(const double *restrict w, const uint8_t *restrict mk, Py_ssize_t len,
               int64_t *restrict s, const int has_mask)
{
    const double m0 = 0x1.8p68, m1 = 0x1.8p20, m2 = 0x1.8p-28, m3 = 0x1.8p-76;
    int64_t b0, b1, b2, b3;
    memcpy(&b0, &m0, 8); memcpy(&b1, &m1, 8); memcpy(&b2, &m2, 8); memcpy(&b3, &m3, 8);
    int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, n_slow = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, n_slow)
    for (Py_ssize_t i = 0; i < len; i++) {
        double x = w[i];
        double ax = fabs(x);
        int64_t keep = has_mask ? (int64_t)(mk[i] != 0) : 1;
        int64_t fast = (ax < 0x1p64) & (ax >= 0x1p-75);
        double r = (fast & keep) ? x : 0.0;
        n_slow += keep & (1 - fast) & (x != 0.0);
        double t, q;
        int64_t u;
        t = r + m0; memcpy(&u, &t, 8); s0 += u - b0; q = t - m0; r = r - q;
        t = r + m1; memcpy(&u, &t, 8); s1 += u - b1; q = t - m1; r = r - q;
        t = r + m2; memcpy(&u, &t, 8); s2 += u - b2; q = t - m2; r = r - q;
        t = r + m3; memcpy(&u, &t, 8); s3 += u - b3;
    }
    s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3;
    return n_slow;
}

CE_EXACT_DISPATCH
static void ce_exact_add_fast(ce_exact *acc, const double *v, Py_ssize_t n, const uint8_t *mask)
{
    int64_t sums[CE_EXACT_LEVELS];
    for (Py_ssize_t lo = 0; lo < n; lo += CE_EXACT_CHUNK) {
        Py_ssize_t len = n - lo < CE_EXACT_CHUNK ? n - lo : CE_EXACT_CHUNK;
        const double *w = v + lo;
        int64_t n_slow = mask ? ce_exact_chunk(w, mask + lo, len, sums, 1)
                              : ce_exact_chunk(w, NULL, len, sums, 0);
        for (int k = 0; k < CE_EXACT_LEVELS; k++)
            ce_exact_put_int(acc->limb, sums[k], (uint64_t)(ce_exact_grid[k] + 1074));
        if (n_slow)
            for (Py_ssize_t i = 0; i < len; i++)
                if (!mask || mask[lo + i]) {
                    double x = w[i], ax = fabs(x);
                    if (!((ax < 0x1p64) & (ax >= 0x1p-75)) && x != 0.0) {
                        uint64_t u;
                        memcpy(&u, &x, 8);
                        ce_exact_put(acc->limb, u, &acc->special);
                    }
                }
        if (((lo / CE_EXACT_CHUNK) & 0xffff) == 0xffff)   /* limbs far from overflow */
            ce_exact_normalise(acc);
    }
    ce_exact_normalise(acc);
}

/* acc += sum of v[i * stride] over i < n with mask[i] != 0 (mask may be NULL). */
static void ce_exact_add(ce_exact *acc, const double *v, Py_ssize_t n, Py_ssize_t stride,
                         const uint8_t *mask)
{
    if (stride == 1) {
        ce_exact_add_fast(acc, v, n, mask);
        return;
    }
    for (Py_ssize_t lo = 0; lo < n; lo += CE_EXACT_BATCH) {
        Py_ssize_t hi = n - lo > CE_EXACT_BATCH ? lo + CE_EXACT_BATCH : n;
        for (Py_ssize_t i = lo; i < hi; i++)
            if (!mask || mask[i]) {
                uint64_t u;
                memcpy(&u, v + i * stride, 8);
                ce_exact_put(acc->limb, u, &acc->special);
            }
        ce_exact_normalise(acc);
    }
}

#endif /* CE_EXACT_H */
