/* el_logprobs.c: log-softmax of one logits row, the top tokens, a token's rank. */
#include "el_logprobs.h"

#include "el_math.h"

float el_logprob_shift(const float *logits, int n)
{
    float max = logits[0], sum = 0.0f;
    int i;
    for (i = 1; i < n; i++)
        if (logits[i] > max) max = logits[i];
    /* in index order, one float sum: the same bits on every target */
    for (i = 0; i < n; i++) sum += el_expf(logits[i] - max);
    return max + el_logf(sum);
}

/* Whether the logit of a ranks before that of b: larger first, then lower id. */
static int ranks_before(const float *logits, int32_t a, int32_t b)
{
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
}

int el_top_tokens(const float *logits, int n, int k, int32_t *ids)
{
    int i, j, count = 0;
    if (k > n) k = n;
    for (i = 0; i < n && k > 0; i++) {
        if (count == k && !ranks_before(logits, i, ids[k - 1])) continue;
        j = count < k ? count++ : k - 1; /* the last place is free, or taken by the one that drops out */
        while (j > 0 && ranks_before(logits, i, ids[j - 1])) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = i;
    }
    return count;
}

void el_logprob_fill(el_logprob_entry *entry, const float *logits, int n, float shift, int token, int k)
{
    int i, larger = 0;
    for (i = 0; i < n; i++) larger += logits[i] > logits[token];
    entry->token = token;
    entry->logprob = logits[token] - shift;
    entry->rank = 1 + larger;
    entry->n_top = el_top_tokens(logits, n, k, entry->top_ids);
    for (i = 0; i < entry->n_top; i++) entry->top_logprobs[i] = logits[entry->top_ids[i]] - shift;
}
