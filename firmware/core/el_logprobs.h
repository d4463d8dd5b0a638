/* el_logprobs.h: log-probabilities of tokens, as vLLM reports them.
 *
 * They describe the model's own distribution: log-softmax of the raw logits, before
 * penalties, temperature, top-k/top-p or min_tokens masking (vLLM's default,
 * "raw_logprobs"). A token's rank is 1 + the number of tokens with a larger logit;
 * the top list is ordered by logit, ties by lower token id. Everything is computed
 * here in portable float arithmetic with the runtime's own exp and log, so every
 * target reports the same bits for the same logits.
 */
#ifndef EL_LOGPROBS_H
#define EL_LOGPROBS_H

#include "el_base.h"

/* The most top tokens one position reports (vLLM's default max_logprobs). */
#define EL_MAX_LOGPROBS 20

/* One position: the chosen token's figures and the top `n_top` tokens. */
typedef struct {
    int32_t token;
    float logprob;
    int rank;
    int n_top;
    int32_t top_ids[EL_MAX_LOGPROBS];
    float top_logprobs[EL_MAX_LOGPROBS];
} el_logprob_entry;

/* What turns a logit into a log-probability for one row: logprob = logit - shift,
 * shift = max + log(sum(exp(logit - max))). NaN when the row is not finite. */
float el_logprob_shift(const float *logits, int n);

/* Fill `entry` for `token` (its logprob and rank) and the top k (0..EL_MAX_LOGPROBS)
 * of the row; `shift` from el_logprob_shift of the same row. */
void el_logprob_fill(el_logprob_entry *entry, const float *logits, int n, float shift, int token, int k);

/* The k largest logits' ids, largest first, ties by lower id: one pass, k compares at
 * most per token (k is small). Returns how many (min(k, n)). */
int el_top_tokens(const float *logits, int n, int k, int32_t *ids);

#endif
