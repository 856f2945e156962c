/* ce.score without per-row arrays: each block of rows runs through the block
 * kernel into row outputs on the stack (loss, argmax, rank), which are tallied
 * at once while they are in L1: an exact sum of the losses and integer hit
 * counts. Both are order-free, so one accumulator per thread gives the same
 * result for any thread count and any split of the rows.
 *
 * Unweighted index targets, class axis last (the rows of a block are then
 * rows r0 .. r1 - 1 of the views, reached by moving the data pointers).
 */
#ifndef CE_SCORE_H
#define CE_SCORE_H

#include "_ce_core.h"
#include "_ce_exact.h"

#define CE_SCORE_MAX_K 16

typedef struct {
    ce_exact loss;                   /* exact sum of the rows' losses */
    int64_t correct;                 /* counted rows whose label is the first argmax */
    int64_t hits[CE_SCORE_MAX_K];    /* counted rows with fewer than ks[j] classes above the label */
    int64_t failed;                  /* blocks whose scratch allocation failed */
} ce_score_acc;

static int ce_dtype_size(int dtype)
{
    return dtype == CE_DTYPE_F64 ? 8 : dtype == CE_DTYPE_F32 ? 4 : 2;
}

/* acc += the tally of block b of p (a row is counted when its label is not
   ignore_index and its loss is not NaN; rank is wanted when some k > 1) */
CE_DISPATCH void ce_score_block(const ce_problem *p, Py_ssize_t b, const int64_t *ks, int nk, int want_rank,
                           ce_score_acc *acc)
{
    double loss[CE_SMALL_ROWS], block_loss;
    int64_t am[CE_SMALL_ROWS], rank[CE_SMALL_ROWS];
    const Py_ssize_t r0 = b * p->block_rows;
    const Py_ssize_t nr = p->n_rows - r0 < p->block_rows ? p->n_rows - r0 : p->block_rows;
    ce_problem q = *p;
    q.n_rows = nr;
    q.x.data = p->x.data + r0 * p->x.s_outer * ce_dtype_size(p->dtype);
    q.labels = p->labels + r0;
    q.row_loss = loss;
    q.row_argmax = am;
    q.row_rank = want_rank ? rank : NULL;
    q.row_lse = NULL;
    q.block_loss = &block_loss;
    if (ce_block_any(&q, 0) != 0) {
        acc->failed++;
        return;
    }
    ce_exact_add(&acc->loss, loss, nr, 1, NULL);
    const int64_t *lab = q.labels, ignore = p->ignore_index;
    int64_t ok[CE_SMALL_ROWS], correct = 0;
#pragma omp simd reduction(+ : correct)
    for (Py_ssize_t i = 0; i < nr; i++) {
        ok[i] = (int64_t)(lab[i] != ignore) & (int64_t)(loss[i] == loss[i]);   /* not NaN */
        correct += ok[i] & (int64_t)(am[i] == lab[i]);
    }
    acc->correct += correct;
    for (int j = 0; j < nk && want_rank; j++) {
        const int64_t k = ks[j];
        int64_t h = 0;
#pragma omp simd reduction(+ : h)
        for (Py_ssize_t i = 0; i < nr; i++)
            h += ok[i] & (int64_t)(rank[i] < k);
        acc->hits[j] += h;
    }
}

/* a += b (both normalised), normalised again */
static void ce_score_merge(ce_score_acc *a, const ce_score_acc *b)
{
    for (int i = 0; i < CE_EXACT_LIMBS; i++)
        a->loss.limb[i] += b->loss.limb[i];
    a->loss.special |= b->loss.special;
    ce_exact_normalise(&a->loss);
    a->correct += b->correct;
    for (int j = 0; j < CE_SCORE_MAX_K; j++)
        a->hits[j] += b->hits[j];
    a->failed += b->failed;
}

#endif /* CE_SCORE_H */
