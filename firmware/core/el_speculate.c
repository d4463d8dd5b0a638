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
