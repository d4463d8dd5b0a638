/* el_forward.h: the llama forward pass over a batch of token rows.
 *
 * A row is one token at one position of one sequence. Prefill chunks and decode
 * steps of many sequences go through in one call, so each weight matrix is read
 * once per step for the whole batch. Each row's keys and values are written into
 * the paged cache through its sequence's block table, and attention reads them back
 * from there.
 */
#ifndef EL_FORWARD_H
#define EL_FORWARD_H

#include "el_kernels.h"
#include "el_kv_cache.h"

typedef struct {
    int32_t token;
    int32_t pos;
    const int32_t *block_table; /* of the row's sequence, covering positions 0..pos */
    int want_logits;
} el_batch_row;

typedef struct {
    int max_rows, max_logits, max_context, n_workers;
    float *x, *xb, *q, *k, *v, *attention, *hb, *hb2;  /* max_rows rows each */
    float *scores;                                     /* attention weights: max_context per query head of a
                                                          kv group (n_heads / n_kv_heads), per worker */
    float *rope_freqs;                                 /* head_dim / 2 */
    float *rope_angles;                                /* max_rows rows of head_dim: cos, sin pairs */
    el_qactivations quantized;
    float *logits;                                     /* max_logits * vocab */
    el_parallel parallel;                              /* how matmuls and attention use threads */
} el_forward_state;

/* Memory el_forward_init will take from the arena; n_workers is the most threads the
 * parallel hook will use (each has its own attention scratch). */
size_t el_forward_bytes(const el_config *config, int max_rows, int max_logits, int max_context, int n_workers);
el_status el_forward_init(el_forward_state *state, const el_config *config, int max_rows, int max_logits,
                          int max_context, int n_workers, el_arena *arena, el_error *err);

/* Rows of one sequence must come in position order, and every earlier position must
 * be in the cache already or earlier in this batch. Logits of the rows that want them
 * land in state->logits in row order; returns how many. */
int el_forward(el_forward_state *state, const el_model *model, el_kv_cache *kv, const el_batch_row *rows, int n);

#endif
