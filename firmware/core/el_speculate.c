/* el_speculate.c: n-gram proposals (prompt lookup). The engine schedules and verifies
 * them (el_engine.c); the rules are in el_speculate.h. */
#include "el_speculate.h"

/* Whether tokens[a..a+len) equals tokens[b..b+len). */
static int same_run(const int32_t *tokens, int a, int b, int len)
{
    int i;
    for (i = 0; i < len; i++)
        if (tokens[a + i] != tokens[b + i]) return 0;
    return 1;
}

int el_speculate_ngram(const int32_t *tokens, int n, int k, int max_n, int min_n, int32_t *out)
{
    int len, start, i, count;
    if (min_n < 1) min_n = 1;
    for (len = max_n < n - 1 ? max_n : n - 1; len >= min_n; len--) {
        /* the suffix is tokens[n-len..n); an earlier occurrence starts before n-len, and
         * the earliest leaves the most tokens after it (vLLM takes the first match too) */
        for (start = 0; start < n - len; start++) {
            if (!same_run(tokens, start, n - len, len)) continue;
            count = 0;
            for (i = start + len; i < n && count < k; i++) out[count++] = tokens[i];
            return count;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ the rejection rule */

/* p and q as doubles: W / total, the same division on every IEEE-754 target. */
static double share(uint32_t w, uint64_t total) { return (double)w / (double)total; }

int el_speculate_accept(const uint32_t *p, uint64_t p_total, const uint32_t *q, uint64_t q_total, int n, int draft,
                        el_rng *rng, uint32_t *residual)
{
    double ratio = share(p[draft], p_total) / share(q[draft], q_total); /* q[draft] > 0: it was drawn */
    uint64_t total = 0;
    int i;
    if (ratio >= 1.0 || (double)el_rng_next(rng) < ratio * 4294967296.0) return draft;
    for (i = 0; i < n; i++) {
        double excess = share(p[i], p_total) - share(q[i], q_total);
        residual[i] = excess > 0.0 ? (uint32_t)(excess * 1073741824.0) : 0u; /* 2^30, as the sampler's */
        total += residual[i];
    }
    /* p(draft) < q(draft) leaves some p above q; a residual lost to truncation (p and q
     * a hair apart everywhere) falls back on p itself */
    return total > 0 ? el_sampler_draw(residual, n, total, rng) : el_sampler_draw(p, n, p_total, rng);
}
