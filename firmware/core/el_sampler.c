/* el_sampler.c: vLLM's sampling steps with a portable seeded RNG.
 *
 * Everything is float arithmetic in a fixed order (sums always run in the same
 * sequence), with the runtime's own el_expf, so one seed gives the same token on
 * every target. The exact rules, which tests/test_c_sampler.py mirrors:
 *
 *   penalties  repetition (prompt or output token: x > 0 ? x / r : x * r), then
 *              x -= frequency * count, then x -= presence if count > 0 (output only)
 *   greedy     temperature < 1e-5: the largest logit, lowest index on ties
 *   weights    x /= temperature; w = el_expf(x - max x), so the top token has w == 1
 *              (+inf or all -inf logits: w = 1 for the tokens equal to the max)
 *   min_p      drop w < min_p (w is relative to the top token, as min_p * max prob)
 *   ranking    tokens with w > 0, by w descending, then index ascending
 *   top_k      keep the first k of the ranking: exactly k, whatever ties follow, so
 *              top_k = 1 is greedy (vLLM keeps every token tied with the k-th)
 *   top_p      total = sum of kept w in index order; keep ranks while the sum of the
 *              ranks before is < top_p * total (so at least one)
 *   draw       total = sum of kept w in index order again; target = u * total with
 *              u = el_rng_uniform; walk the ranking summing w, pick the first token
 *              whose running sum > target (the last kept one if rounding runs out)
 */
#include "el_sampler.h"

#include "el_math.h"

/* ---- parameters ---- */

void el_sampling_defaults(el_sampling *params)
{
    params->temperature = 1.0f;
    params->top_p = 1.0f;
    params->top_k = 0;
    params->min_p = 0.0f;
    params->repetition_penalty = 1.0f;
    params->frequency_penalty = 0.0f;
    params->presence_penalty = 0.0f;
    params->seed = 0;
}

/* Append the last `count` decimal digits of `value`, leading zeros kept. */
static void append_digits(el_error *err, unsigned long value, int count)
{
    char text[12];
    int i;
    if (count > 11) count = 11;
    for (i = count - 1; i >= 0; i--) {
        text[i] = (char)('0' + (int)(value % 10));
        value /= 10;
    }
    text[count] = '\0';
    el_error_append(err, text);
}

/* A non-negative value below 1e9 with up to six decimals, trailing zeros trimmed
 * down to `min_decimals` ("3.0" with 1, "3" with 0). */
static void append_fixed(el_error *err, double v, int min_decimals)
{
    unsigned long whole = (unsigned long)v;
    unsigned long fraction = (unsigned long)((v - (double)whole) * 1e6 + 0.5);
    int decimals = 6;
    if (fraction >= 1000000ul) { whole++; fraction -= 1000000ul; }
    while (decimals > min_decimals && fraction % 10 == 0) { fraction /= 10; decimals--; }
    el_error_num(err, (long long)whole);
    if (decimals == 0) return;
    el_error_append(err, ".");
    append_digits(err, fraction, decimals);
}

/* "1.5", "-0.25", "3.0", "1e-07", "2.5e+10", "nan": Python's repr for such values, at
 * most six decimals (there is no printf in the core; messages only have to be readable). */
static void append_float(el_error *err, float value)
{
    double v = (double)value;
    int exponent = 0;
    if (v != v) { el_error_append(err, "nan"); return; }
    if (v < 0) { el_error_append(err, "-"); v = -v; }
    if (v > 3.5e38) { el_error_append(err, "inf"); return; }
    if (v == 0 || (v >= 1e-4 && v < 1e9)) { append_fixed(err, v, 1); return; }
    while (v >= 10.0) { v /= 10.0; exponent++; }
    while (v < 1.0) { v *= 10.0; exponent--; }
    if (v >= 9.9999995) { v /= 10.0; exponent++; } /* would round up to "10" */
    append_fixed(err, v, 0);
    el_error_append(err, exponent < 0 ? "e-" : "e+");
    append_digits(err, (unsigned long)(exponent < 0 ? -exponent : exponent), 2);
}

/* The message vLLM's SamplingParams gives: "<field> must be <rule>, got <value>." */
static el_status bad_field(el_error *err, const char *field, const char *rule, float value)
{
    el_fail(err, EL_ERR_ARGUMENT, field, " must be ", rule);
    el_error_append(err, ", got ");
    append_float(err, value);
    el_error_append(err, ".");
    return EL_ERR_ARGUMENT;
}

el_status el_sampling_check(const el_sampling *params, el_error *err)
{
    /* Written as !(in range) so that NaN is rejected too. */
    if (!(params->temperature >= 0.0f)) return bad_field(err, "temperature", "non-negative", params->temperature);
    if (!(params->top_p > 0.0f && params->top_p <= 1.0f)) return bad_field(err, "top_p", "in (0, 1]", params->top_p);
    if (params->top_k < -1) {
        el_fail(err, EL_ERR_ARGUMENT, "top_k must be 0 or -1 (disable), or at least 1, got ", "", "");
        el_error_num(err, params->top_k);
        el_error_append(err, ".");
        return EL_ERR_ARGUMENT;
    }
    if (!(params->min_p >= 0.0f && params->min_p <= 1.0f)) return bad_field(err, "min_p", "in [0, 1]", params->min_p);
    if (!(params->repetition_penalty > 0.0f))
        return bad_field(err, "repetition_penalty", "greater than zero", params->repetition_penalty);
    if (!(params->frequency_penalty >= -2.0f && params->frequency_penalty <= 2.0f))
        return bad_field(err, "frequency_penalty", "in [-2, 2]", params->frequency_penalty);
    if (!(params->presence_penalty >= -2.0f && params->presence_penalty <= 2.0f))
        return bad_field(err, "presence_penalty", "in [-2, 2]", params->presence_penalty);
    return el_fail(err, EL_OK, "", "", ""); /* clears a message left from before */
}

/* ---- PCG32 (pcg32_srandom_r / pcg32_random_r of O'Neill's pcg-c-basic) ---- */

#define PCG_MULTIPLIER 6364136223846793005ull
/* One fixed stream, the one of PCG's own demo: seed 42 then gives its published
 * sequence 0xa15c02b7 0x7b47f409 ..., a check that the generator is the real one. */
#define PCG_STREAM 54u

uint32_t el_rng_next(el_rng *rng)
{
    uint64_t old = rng->state;
    uint32_t xorshifted = (uint32_t)(((old >> 18) ^ old) >> 27);
    uint32_t rot = (uint32_t)(old >> 59);
    rng->state = old * PCG_MULTIPLIER + rng->increment;
    return (xorshifted >> rot) | (xorshifted << ((0u - rot) & 31u));
}

void el_rng_seed(el_rng *rng, uint64_t seed)
{
    rng->state = 0;
    rng->increment = ((uint64_t)PCG_STREAM << 1) | 1u;
    el_rng_next(rng);
    rng->state += seed;
    el_rng_next(rng);
}

float el_rng_uniform(el_rng *rng)
{
    /* The top 24 bits: every value k * 2**-24 is exact in float and below 1. */
    return (float)(el_rng_next(rng) >> 8) * (1.0f / 16777216.0f);
}

/* ---- scratch ---- */

el_status el_sampler_scratch_init(el_sampler_scratch *scratch, int n_vocab, el_arena *arena, el_error *err)
{
    size_t n;
    el_memset(scratch, 0, sizeof *scratch);
    if (n_vocab <= 0 || (size_t)n_vocab > SIZE_MAX / sizeof(float)) {
        el_fail(err, EL_ERR_ARGUMENT, "sampler: the vocabulary size must be positive, got ", "", "");
        el_error_num(err, n_vocab);
        return EL_ERR_ARGUMENT;
    }
    n = (size_t)n_vocab;
    scratch->probs = (float *)el_arena_alloc(arena, n * sizeof(float), sizeof(float));
    scratch->order = (int32_t *)el_arena_alloc(arena, n * sizeof(int32_t), sizeof(int32_t));
    scratch->counts = (int32_t *)el_arena_alloc(arena, n * sizeof(int32_t), sizeof(int32_t));
    if (scratch->probs == NULL || scratch->order == NULL || scratch->counts == NULL) {
        el_fail(err, EL_ERR_NO_MEMORY, "sampler: the arena is too small for a vocabulary of ", "", "");
        el_error_num(err, n_vocab);
        el_error_append(err, " tokens (needs 12 bytes per token)");
        return EL_ERR_NO_MEMORY;
    }
    scratch->n_vocab = n_vocab;
    return EL_OK;
}

/* ---- penalties ---- */

static int penalties_active(const el_sampling *params)
{
    return params->repetition_penalty != 1.0f || params->frequency_penalty != 0.0f || params->presence_penalty != 0.0f;
}

/* Mark tokens (out-of-range ids are ignored: they cannot index the logits). */
static void mark_tokens(int32_t *marks, int n_vocab, const int32_t *tokens, int n_tokens, int counting)
{
    int i;
    if (tokens == NULL) return;
    for (i = 0; i < n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab) continue;
        if (counting) marks[tokens[i]] += 1;
        else marks[tokens[i]] = 1;
    }
}

static void apply_penalties(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
                            const int32_t *output, int n_output, el_sampler_scratch *scratch)
{
    int n = scratch->n_vocab, i;
    int32_t *seen = scratch->order; /* free until the ranking: borrowed as a seen-mask */
    int32_t *counts = scratch->counts;
    const float r = params->repetition_penalty, f = params->frequency_penalty, p = params->presence_penalty;
    el_memset(seen, 0, (size_t)n * sizeof *seen);
    el_memset(counts, 0, (size_t)n * sizeof *counts);
    mark_tokens(seen, n, prompt, n_prompt, 0);
    mark_tokens(seen, n, output, n_output, 0);
    mark_tokens(counts, n, output, n_output, 1);
    for (i = 0; i < n; i++) {
        /* vLLM's order and its exact operations: divide or multiply, then subtract. */
        if (seen[i] && r != 1.0f) logits[i] = logits[i] > 0.0f ? logits[i] / r : logits[i] * r;
        if (counts[i] > 0) {
            logits[i] -= f * (float)counts[i];
            logits[i] -= p;
        }
    }
}

/* The largest logit, lowest index on ties; NaN never wins. 0 when all are NaN. */
static int argmax(const float *x, int n)
{
    int best = -1, i;
    for (i = 0; i < n; i++)
        if (x[i] == x[i] && (best < 0 || x[i] > x[best])) best = i;
    return best < 0 ? 0 : best;
}

/* ---- weights and the ranking ---- */

/* Divide by the temperature (in place) and set w = el_expf(x - max). Where x - max is
 * NaN (the max is +inf, or every logit is -inf) the tokens equal to the max get 1. */
static void weights(const el_sampling *params, float *logits, float *w, int n)
{
    float top;
    int i;
    for (i = 0; i < n; i++) logits[i] /= params->temperature;
    top = logits[argmax(logits, n)];
    for (i = 0; i < n; i++) {
        float d = logits[i] - top;
        w[i] = d == d ? el_expf(d) : (logits[i] == top ? 1.0f : 0.0f);
    }
}

/* Token a ranks before token b: higher weight, then lower index. A strict order, so
 * the ranking is unique and the heap needs no stability. */
static int ranks_before(const float *w, int32_t a, int32_t b)
{
    return w[a] > w[b] || (w[a] == w[b] && a < b);
}

/* The ranking, produced lazily by a heap sort: a[0..heap_n) is a heap with the best
 * token on top; ranks already popped sit at the end, rank j at a[size - 1 - j]. Only
 * the ranks a step asks for get sorted: top_k pops k, the draw stops early. */
typedef struct {
    const float *w;
    int32_t *a;
    int size;
    int heap_n;
} ranking;

static void sift_down(ranking *r, int i)
{
    for (;;) {
        int child = 2 * i + 1, best = i;
        int32_t tmp;
        if (child < r->heap_n && ranks_before(r->w, r->a[child], r->a[best])) best = child;
        if (child + 1 < r->heap_n && ranks_before(r->w, r->a[child + 1], r->a[best])) best = child + 1;
        if (best == i) return;
        tmp = r->a[i];
        r->a[i] = r->a[best];
        r->a[best] = tmp;
        i = best;
    }
}

/* Heap of the tokens with w > 0 (the others can never be drawn). */
static void ranking_init(ranking *r, const float *w, int32_t *a, int n)
{
    int i;
    r->w = w;
    r->a = a;
    r->size = 0;
    for (i = 0; i < n; i++)
        if (w[i] > 0.0f) a[r->size++] = i;
    r->heap_n = r->size;
    for (i = r->size / 2 - 1; i >= 0; i--) sift_down(r, i);
}

/* The token of rank j (0 = best), j < size. */
static int32_t ranking_at(ranking *r, int j)
{
    while (r->size - r->heap_n <= j) {
        int32_t top = r->a[0];
        r->heap_n--;
        r->a[0] = r->a[r->heap_n];
        r->a[r->heap_n] = top;
        sift_down(r, 0);
    }
    return r->a[r->size - 1 - j];
}

/* Zero the weights of the ranks from `kept` on (dropped by top_k or top_p). */
static void drop_ranks_from(ranking *r, float *w, int kept)
{
    int j;
    for (j = 0; j < r->heap_n; j++) w[r->a[j]] = 0.0f;
    for (j = kept; j < r->size - r->heap_n; j++) w[r->a[r->size - 1 - j]] = 0.0f;
}

/* Sum in index order: one fixed order, the same on every target and in the tests. */
static float index_sum(const float *w, int n)
{
    float total = 0.0f;
    int i;
    for (i = 0; i < n; i++) total += w[i];
    return total;
}

/* min_p, top_k and top_p over w; returns how many ranks are kept (0 only when no
 * token has weight, e.g. all logits NaN) and their index-order total. */
static int filter(const el_sampling *params, float *w, int n, ranking *r, int32_t *order, float *total)
{
    int kept, i;
    if (params->min_p > 0.0f)
        for (i = 0; i < n; i++)
            if (w[i] < params->min_p) w[i] = 0.0f;
    ranking_init(r, w, order, n);
    kept = r->size;
    if (params->top_k > 0 && params->top_k < kept) {
        ranking_at(r, params->top_k - 1);
        kept = params->top_k;
        drop_ranks_from(r, w, kept);
    }
    *total = index_sum(w, n);
    if (params->top_p < 1.0f && kept > 1) {
        const float threshold = params->top_p * *total;
        float cum = w[ranking_at(r, 0)];
        int j = 1;
        while (j < kept && cum < threshold) cum += w[ranking_at(r, j++)];
        if (j < kept) {
            kept = j;
            drop_ranks_from(r, w, kept);
            *total = index_sum(w, n);
        }
    }
    return kept;
}

static void penalize(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
                     const int32_t *output, int n_output, el_sampler_scratch *scratch)
{
    if (penalties_active(params)) apply_penalties(params, logits, prompt, n_prompt, output, n_output, scratch);
}

/* Written so that a NaN temperature also means greedy rather than NaN weights. */
static int is_greedy(const el_sampling *params) { return !(params->temperature >= EL_GREEDY_TEMPERATURE); }

int el_sample(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
              const int32_t *output, int n_output, el_rng *rng, el_sampler_scratch *scratch)
{
    ranking r;
    float total, target, cum = 0.0f;
    int kept, j, n = scratch->n_vocab;
    penalize(params, logits, prompt, n_prompt, output, n_output, scratch);
    if (is_greedy(params)) return argmax(logits, n); /* the RNG is not touched */
    weights(params, logits, scratch->probs, n);
    kept = filter(params, scratch->probs, n, &r, scratch->order, &total);
    if (kept == 0) return 0;
    target = el_rng_uniform(rng) * total;
    for (j = 0; j < kept; j++) {
        int32_t token = ranking_at(&r, j);
        cum += scratch->probs[token];
        if (cum > target) return token;
    }
    return ranking_at(&r, kept - 1);
}

int el_sampler_distribution(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
                            const int32_t *output, int n_output, el_sampler_scratch *scratch)
{
    ranking r;
    float total;
    int kept, i, n = scratch->n_vocab;
    penalize(params, logits, prompt, n_prompt, output, n_output, scratch);
    if (is_greedy(params)) {
        el_memset(scratch->probs, 0, (size_t)n * sizeof(float));
        scratch->probs[argmax(logits, n)] = 1.0f;
        return 1;
    }
    weights(params, logits, scratch->probs, n);
    kept = filter(params, scratch->probs, n, &r, scratch->order, &total);
    if (kept > 0)
        for (i = 0; i < n; i++) scratch->probs[i] /= total;
    return kept;
}
