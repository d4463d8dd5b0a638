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
 *   integers   W = (uint32)(w * 2^30), truncated: from here on every sum is an exact
 *              integer, the same in any order (tokens with w < 2^-30 get W = 0)
 *   ranking    tokens with W > 0, by W descending, then index ascending
 *   top_k      keep the first k of the ranking: exactly k, whatever ties follow, so
 *              top_k = 1 is greedy (vLLM keeps every token tied with the k-th)
 *   top_p      T = sum of kept W; keep ranks while the sum of the ranks before is
 *              < top_p * T, compared in double (so at least one)
 *   draw       T = sum of kept W; target = (T * r) >> 32 for r = el_rng_next (32 bits);
 *              walk the kept tokens in index order summing W, pick the first whose
 *              running sum > target
 *   top_p draw with top_p < 1 (and more than one token kept by min_p and top_k), up to
 *              four tries first: draw from all kept tokens as above, and take the token
 *              if it is inside the nucleus (the weight of the ranks before it < top_p *
 *              T); after four misses, cut the nucleus as above and draw from it
 *
 * Exact integer sums are what let top_k and top_p find their cut by a radix select
 * and the draw walk in index order: no sort of the vocabulary, yet one answer on
 * every target. A draw from everything that lands in the nucleus is a draw from the
 * nucleus, and with top_p = 0.9 nine in ten land there on the first try: then the
 * nucleus costs one pass over the weights, not a selection. The weights are also
 * summed in runs of tokens, their totals kept in the scratch's bucket_measure (free
 * outside a selection): a draw skips whole runs, and the nucleus check stops as soon
 * as the runs summed so far decide it.
 */
#include "el_sampler.h"

#include "el_kernel_ops.h"
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
    scratch->weights = (uint32_t *)el_arena_alloc(arena, n * sizeof(uint32_t), sizeof(uint32_t));
    scratch->counts = (int32_t *)el_arena_alloc(arena, n * sizeof(int32_t), sizeof(int32_t));
    scratch->bucket_measure = (uint64_t *)el_arena_alloc(arena, EL_SAMPLER_BUCKETS * sizeof(uint64_t), 8);
    if (scratch->probs == NULL || scratch->weights == NULL || scratch->counts == NULL ||
        scratch->bucket_measure == NULL) {
        el_fail(err, EL_ERR_NO_MEMORY, "sampler: the arena is too small for a vocabulary of ", "", "");
        el_error_num(err, n_vocab);
        el_error_append(err, " tokens (needs 12 bytes per token and 2 KiB)");
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
    int32_t *seen = (int32_t *)scratch->weights; /* free until the weights: borrowed as a seen-mask */
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

/* The largest logit; NaN never wins (-inf when all are NaN). Eight running maxima (a
 * vector unit takes them as lanes; x > m ? x : m skips NaN like a max instruction). */
static float max_logit(const float *x, int n)
{
    float lane[8], top;
    int i, k, whole = n - n % 8;
    for (k = 0; k < 8; k++) lane[k] = el_bits_float(0xff800000u); /* -inf */
    for (i = 0; i < whole; i += 8)
        for (k = 0; k < 8; k++) lane[k] = x[i + k] > lane[k] ? x[i + k] : lane[k];
    top = lane[0];
    for (k = 1; k < 8; k++) top = lane[k] > top ? lane[k] : top;
    for (i = whole; i < n; i++) top = x[i] > top ? x[i] : top;
    return top;
}

/* The largest logit, lowest index on ties; NaN never wins. 0 when all are NaN.
 * The first index holding the largest: eight at a time, then within the eight. */
static int argmax(const float *x, int n)
{
    float top = max_logit(x, n);
    int i, k, whole = n - n % 8, found = 0;
    for (i = 0; i < whole; i += 8) {
        for (k = 0; k < 8; k++) found |= x[i + k] == top;
        if (found) break;
    }
    for (found = 0; i < n && !found; i++) found = x[i] == top;
    return found ? i - 1 : 0;
}

/* ---- weights ---- */

/* w = el_expf(x - top) for n logits already divided by the temperature. Where x - top
 * is NaN (top is +inf, or every logit is -inf) the tokens equal to top get 1. */
static void exp_weights(const float *x, float top, float *w, int n)
{
    int i;
    if (top - top == 0.0f) { /* finite: the vector kernel (NaN logits give NaN, dropped below) */
        el_kernel_exp_shifted(w, x, top, n);
        return;
    }
    for (i = 0; i < n; i++) {
        float d = x[i] - top;
        w[i] = d == d ? el_expf(d) : (x[i] == top ? 1.0f : 0.0f);
    }
}

#define EL_WEIGHT_ONE 1073741824.0f /* 2^30: w * 2^30 is exact in float, then truncated */

#define EL_BITS_OF_ONE 0x3f800000u

/* W for one weight, kept when lowest_bits <= its bits <= 1.0's. Compared as bits (for
 * floats in [0, 1] the order of the bits is the order of the values; NaN and negatives
 * lie above 1.0's), both ends in one unsigned compare: bits - lowest_bits < span, with
 * span = 1.0's + 1 - lowest_bits (bits below lowest_bits wrap around above it). No
 * float compare, so the compiler takes eight lanes at once; W <= 2^30 fits the int32
 * conversion. */
static uint32_t integer_weight(float w, uint32_t lowest_bits, uint32_t span)
{
    uint32_t bits = el_float_bits(w), keep = 0u - (uint32_t)(bits - lowest_bits < span);
    return (uint32_t)(int32_t)(el_bits_float(bits & keep) * EL_WEIGHT_ONE);
}

/* W = (uint32)(w * 2^30) for the kept w (w > 0, and w >= min_p, as bits: floor);
 * returns their total and raises *heaviest to the largest W. Sixteen at a time: two W
 * add up below 2^32, so each of eight lanes takes a pair in 32 bits, then into its own
 * 64-bit total (integers: any order gives the same sum), kept in a vector register. */
static uint64_t integer_weights(uint32_t floor, const float *w, uint32_t *weights, int n, uint32_t *heaviest)
{
    uint64_t lane_total[8] = {0, 0, 0, 0, 0, 0, 0, 0}, total = 0;
    uint32_t lane_max[8] = {0, 0, 0, 0, 0, 0, 0, 0}, top = *heaviest;
    /* a min_p above 1 keeps nothing: span 0 */
    uint32_t lowest = floor <= EL_BITS_OF_ONE ? floor : EL_BITS_OF_ONE + 1u, span = EL_BITS_OF_ONE + 1u - lowest;
    int i, k, whole = n - n % 16;
    for (i = 0; i < whole; i += 16)
        for (k = 0; k < 8; k++) {
            uint32_t a = integer_weight(w[i + k], lowest, span), b = integer_weight(w[i + 8 + k], lowest, span);
            weights[i + k] = a;
            weights[i + 8 + k] = b;
            lane_total[k] += a + b;
            lane_max[k] = a > lane_max[k] ? a : lane_max[k];
            lane_max[k] = b > lane_max[k] ? b : lane_max[k];
        }
    for (k = 0; k < 8; k++) {
        total += lane_total[k];
        top = lane_max[k] > top ? lane_max[k] : top;
    }
    for (; i < n; i++) {
        weights[i] = integer_weight(w[i], lowest, span);
        total += weights[i];
        top = weights[i] > top ? weights[i] : top;
    }
    *heaviest = top;
    return total;
}

/* The weights are summed in runs of this many tokens, each run's total kept in
 * scratch->bucket_measure: 512, or the first power-of-two multiple of it that makes at
 * most EL_SAMPLER_BUCKETS runs. */
static int run_length(int n)
{
    int length = 512;
    while ((n - 1) / length >= EL_SAMPLER_BUCKETS) length *= 2;
    return length;
}

static int run_end(int start, int length, int n) { return n - start < length ? n : start + length; }

/* Logits to integer weights: x /= temperature (in place), w = el_expf(x - max x) in
 * scratch->probs, then W in scratch->weights with each run's total. Returns the total
 * and sets *heaviest to the largest W. */
static uint64_t weigh(const el_sampling *params, float *logits, el_sampler_scratch *scratch, uint32_t *heaviest)
{
    const float t = params->temperature;
    /* dividing by t > 0 keeps the order, so the max of x / t is the max's x / t (where
     * the max is 0, a -0 for a +0 changes no weight: el_expf(-0) == el_expf(+0)) */
    float top = max_logit(logits, scratch->n_vocab) / t;
    uint32_t floor = params->min_p > 0.0f ? el_float_bits(params->min_p) : 1u; /* w >= min_p, or w > 0 */
    uint64_t total = 0;
    int n = scratch->n_vocab, length = run_length(n), i, k, r, whole = n - n % 8;
    if (t != 1.0f) { /* x / 1 is x, bit for bit (NaN, Inf and -0 included) */
        for (i = 0; i < whole; i += 8)
            for (k = 0; k < 8; k++) logits[i + k] /= t;
        for (; i < n; i++) logits[i] /= t;
    }
    exp_weights(logits, top, scratch->probs, n);
    *heaviest = 0;
    for (r = 0, i = 0; i < n; r++, i += length) {
        scratch->bucket_measure[r] = integer_weights(floor, scratch->probs + i, scratch->weights + i,
                                                     run_end(i, length, n) - i, heaviest);
        total += scratch->bucket_measure[r];
    }
    return total;
}

/* How many weights are not 0, for top_k. Eight lanes. */
static int count_kept(const uint32_t *weights, int n)
{
    uint32_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i, k, whole = n - n % 8, count = 0;
    for (i = 0; i < whole; i += 8)
        for (k = 0; k < 8; k++) lane[k] += weights[i + k] != 0;
    for (k = 0; k < 8; k++) count += (int)lane[k];
    for (; i < n; i++) count += weights[i] != 0;
    return count;
}

/* ---- the cut of top_k and top_p: a radix select on the integer weights ---- */

/* The kept ranks are the tokens with W > value and, of those with W == value, the
 * first `ties` in index order. */
typedef struct {
    uint32_t value;
    int ties;
    const int32_t *tied; /* every token with W == value, in index order */
    int n_tied;
} cut;

/* Byte-wide digits of a weight, most significant first (W <= 2^30: 31 bits). */
static const int digit_shift[4] = {24, 16, 8, 0};

/* The tokens whose weight is not 0 and matches prefix under mask, in index order.
 * Eight tokens are tested at once (lanes of a vector unit); only groups with a match
 * are walked, appending without a branch. */
static int collect(const uint32_t *weights, int n, uint32_t mask, uint32_t prefix, int32_t *list)
{
    int i, k, n_list = 0, whole = n - n % 8;
    for (i = 0; i < whole; i += 8) {
        unsigned match[8], any = 0;
        for (k = 0; k < 8; k++) match[k] = (weights[i + k] != 0) & ((weights[i + k] & mask) == prefix);
        for (k = 0; k < 8; k++) any |= match[k];
        if (!any) continue;
        for (k = 0; k < 8; k++) {
            list[n_list] = i + k;
            n_list += (int)match[k];
        }
    }
    for (; i < n; i++) {
        list[n_list] = i;
        n_list += (weights[i] != 0) & ((weights[i] & mask) == prefix);
    }
    return n_list;
}

/* Round one of the radix select: the measure of each top digit (W >> 24, 0 to 64), in
 * four copies that tokens take in turn, so a run of tokens in one bucket does not wait
 * on its own previous addition; then the copies are added up into measure[0..64]. */
#define EL_TOP_DIGITS 65

static void top_digit_histogram(const uint32_t *weights, int n, int by_weight, uint64_t *measure)
{
    int i, k, b;
    el_memset(measure, 0, EL_SAMPLER_BUCKETS * sizeof *measure);
    for (i = 0; i + 4 <= n; i += 4)
        for (k = 0; k < 4; k++)
            measure[k * EL_TOP_DIGITS + (int)(weights[i + k] >> 24)] +=
                by_weight ? weights[i + k] : weights[i + k] != 0;
    for (; i < n; i++) measure[weights[i] >> 24] += by_weight ? weights[i] : weights[i] != 0;
    for (b = 0; b < EL_TOP_DIGITS; b++) {
        for (k = 1; k < 4; k++) measure[b] += measure[k * EL_TOP_DIGITS + b];
    }
    el_memset(measure + EL_TOP_DIGITS, 0, (EL_SAMPLER_BUCKETS - EL_TOP_DIGITS) * sizeof *measure);
}

/* The shortest prefix of the ranking whose measure reaches `need`: each token counts
 * 1 (by_weight = 0, top_k) or its weight (by_weight = 1, top_p). The caller knows the
 * whole ranking's measure reaches it. Candidates of each round are kept in index order
 * in `list`, so the last round's tied tokens come out lowest index first. */
static cut select_cut(const uint32_t *weights, int n, double need, int by_weight, el_sampler_scratch *scratch)
{
    uint64_t *measure = scratch->bucket_measure;
    int32_t *list = scratch->counts;
    uint64_t before = 0; /* measure of the ranks above the current candidates */
    uint32_t prefix = 0, high_mask = 0;
    int round, i, b, n_list = 0;
    cut c;
    for (round = 0; round < 4; round++) {
        int shift = digit_shift[round];
        if (round == 0) {
            top_digit_histogram(weights, n, by_weight, measure);
        } else {
            el_memset(measure, 0, EL_SAMPLER_BUCKETS * sizeof *measure);
            for (i = 0; i < n_list; i++)
                measure[(weights[list[i]] >> shift) & 0xffu] += by_weight ? weights[list[i]] : 1u;
        }
        for (b = 255; b > 0; b--) {
            if ((double)(before + measure[b]) >= need) break;
            before += measure[b];
        }
        /* the candidates of the bucket the prefix ends in, in index order */
        prefix |= (uint32_t)b << shift;
        high_mask |= 0xffu << shift;
        /* appended without a branch: which tokens match is unpredictable */
        if (round == 0) {
            n_list = collect(weights, n, high_mask, prefix, list);
        } else {
            int kept = 0;
            for (i = 0; i < n_list; i++) {
                list[kept] = list[i];
                kept += (weights[list[i]] & high_mask) == prefix;
            }
            n_list = kept;
        }
    }
    /* every candidate now has W == prefix: take them lowest index first */
    c.value = prefix;
    c.ties = 0;
    c.tied = list;
    c.n_tied = n_list;
    for (i = 0; i < n_list; i++) {
        c.ties++;
        before += by_weight ? prefix : 1u;
        if ((double)before >= need) break;
    }
    return c;
}

/* Zero the weights below value in one run (eight lanes at a time); returns the kept
 * total and adds the kept count to *kept. */
static uint64_t cut_run(uint32_t *weights, int n, uint32_t value, int *kept)
{
    uint64_t total = 0;
    int i, k, whole = n - n % 8, count = 0;
    for (i = 0; i < whole; i += 8) {
        for (k = 0; k < 8; k++) weights[i + k] = weights[i + k] >= value ? weights[i + k] : 0u;
        for (k = 0; k < 8; k++) {
            total += weights[i + k];
            count += weights[i + k] != 0;
        }
    }
    for (; i < n; i++) {
        weights[i] = weights[i] >= value ? weights[i] : 0u;
        total += weights[i];
        count += weights[i] != 0;
    }
    *kept += count;
    return total;
}

/* Zero the weights of the dropped ranks: those below the cut's value, then the ties
 * past the first c.ties. Returns the kept total and count, and keeps each run's total
 * (the selection is done with bucket_measure). */
static uint64_t apply_cut(uint32_t *weights, int n, cut c, uint64_t *run_total, int *kept)
{
    uint64_t total = 0;
    int length = run_length(n), i, r;
    *kept = 0;
    for (r = 0, i = 0; i < n; r++, i += length) {
        run_total[r] = cut_run(weights + i, run_end(i, length, n) - i, c.value, kept);
        total += run_total[r];
    }
    for (i = c.ties; i < c.n_tied; i++) {
        weights[c.tied[i]] = 0;
        run_total[c.tied[i] / length] -= c.value;
        total -= c.value;
        *kept -= 1;
    }
    return total;
}

/* min_p, top_k and top_p applied to the weights; returns how many tokens are kept (0
 * only when no token has weight, e.g. all logits NaN), or 2 for "more than one" where
 * no cut needs the count, and sets their total. */
static int filter_min_p_top_k(const el_sampling *params, float *logits, uint32_t *weights, int n,
                              el_sampler_scratch *scratch, uint64_t *total)
{
    uint32_t heaviest;
    int kept;
    *total = weigh(params, logits, scratch, &heaviest);
    /* one weight not 0 is the heaviest and the total; two or more weigh more */
    kept = *total == 0 ? 0 : *total == heaviest ? 1 : 2;
    if (params->top_k > 0 && kept > 1 && params->top_k < (kept = count_kept(weights, n)))
        *total = apply_cut(weights, n, select_cut(weights, n, (double)params->top_k, 0, scratch),
                           scratch->bucket_measure, &kept);
    return kept;
}

static int top_p_applies(const el_sampling *params, int kept) { return params->top_p < 1.0f && kept > 1; }

static double top_p_need(const el_sampling *params, uint64_t total) { return (double)params->top_p * (double)total; }

static int filter(const el_sampling *params, float *logits, uint32_t *weights, int n, el_sampler_scratch *scratch,
                  uint64_t *total)
{
    int kept = filter_min_p_top_k(params, logits, weights, n, scratch, total);
    if (top_p_applies(params, kept))
        *total = apply_cut(weights, n, select_cut(weights, n, top_p_need(params, *total), 1, scratch),
                           scratch->bucket_measure, &kept);
    return kept;
}

/* The sum of the weights above w. A weight is at most 2^30: as int32 two compare in
 * one signed vector instruction, and two add up in 32 bits; eight lanes, each with its
 * own 64-bit sum, take sixteen weights a step. */
static uint64_t weight_above(const uint32_t *weights, int n, int32_t w)
{
    uint64_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sum = 0;
    int i, k, whole = n - n % 16;
    for (i = 0; i < whole; i += 16)
        for (k = 0; k < 8; k++) {
            uint32_t a = weights[i + k], b = weights[i + 8 + k];
            lane[k] += (a & (0u - (uint32_t)((int32_t)a > w))) + (b & (0u - (uint32_t)((int32_t)b > w)));
        }
    for (k = 0; k < 8; k++) sum += lane[k];
    for (; i < n; i++) sum += (int32_t)weights[i] > w ? weights[i] : 0u;
    return sum;
}

/* Whether token t is inside the nucleus: the weight of the ranks before it (the tokens
 * weighing more, and those weighing the same with a lower index: before t, W >= w;
 * after it, W > w) is below need. Summed a run at a time, and known as soon as the sum
 * so far reaches need, or stays below it with every run still to come added whole. */
static int in_nucleus(const uint32_t *weights, int n, const uint64_t *run_total, uint64_t total, int t, double need)
{
    int32_t w = (int32_t)weights[t];
    uint64_t before = 0, ahead = total; /* the sum so far; the total of the runs still to come */
    int length = run_length(n), i, r;
    for (r = 0, i = 0; i < n; r++, i += length) {
        int end = run_end(i, length, n), mid = t < i ? i : t < end ? t : end; /* [i, mid) lie before t */
        int after = t >= i && t < end ? t + 1 : mid;                          /* [after, end) after it */
        before += weight_above(weights + i, mid - i, w - 1) + weight_above(weights + after, end - after, w);
        ahead -= run_total[r];
        if ((double)before >= need) return 0;
        if ((double)(before + ahead) < need) return 1;
    }
    return 0; /* not reached: with no run to come, one of the two holds */
}

/* Draws from all kept tokens until one is inside the nucleus, at most this often. */
#define EL_NUCLEUS_TRIES 4

/* The first token, in index order, whose running sum of weights passes target: whole
 * runs of 64 weights are summed at once (eight lanes) and skipped while they can be. */
static int draw(const uint32_t *weights, int n, uint64_t target)
{
    uint64_t cum = 0;
    int i = 0, k;
    for (; i + 64 <= n; i += 64) {
        uint64_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, run = 0;
        int j;
        for (j = 0; j < 64; j += 8)
            for (k = 0; k < 8; k++) lane[k] += weights[i + j + k];
        for (k = 0; k < 8; k++) run += lane[k];
        if (cum + run > target) break;
        cum += run;
    }
    for (; i < n; i++)
        if ((cum += weights[i]) > target) return i;
    return n - 1; /* not reached: target < total */
}

/* draw() over weights whose runs' totals are known: whole runs are skipped first. */
static int draw_by_runs(const uint32_t *weights, int n, const uint64_t *run_total, uint64_t target)
{
    uint64_t cum = 0;
    int length = run_length(n), i, r;
    for (r = 0, i = 0; i < n; r++, i += length) {
        if (cum + run_total[r] > target) return i + draw(weights + i, run_end(i, length, n) - i, target - cum);
        cum += run_total[r];
    }
    return n - 1; /* not reached: target < total */
}

/* floor(total * r / 2^32), exact for any 64-bit total: two 32 x 32-bit products. */
static uint64_t scale_by(uint64_t total, uint32_t r)
{
    uint64_t low = (total & 0xffffffffu) * r, high = (total >> 32) * r;
    return high + (low >> 32);
}

/* ---- sampling ---- */

/* On the bits: |x| >= +Inf's bits (an exponent of all ones: Inf or NaN) exactly when
 * adding 2^23 carries into the sign bit. Adds and ORs only, so the compiler runs the
 * loop in vector lanes on every target (a float compare would stop at NaN's rules). */
static uint32_t nonfinite_mark(float x) { return (el_float_bits(x) & 0x7fffffffu) + 0x00800000u; }

/* Eight lanes written out, as in argmax: -O2 takes them as one vector register. */
int el_logits_finite(const float *logits, int n)
{
    uint32_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, any = 0;
    int i, k, whole = n - n % 8;
    for (i = 0; i < whole; i += 8)
        for (k = 0; k < 8; k++) lane[k] |= nonfinite_mark(logits[i + k]);
    for (k = 0; k < 8; k++) any |= lane[k];
    for (; i < n; i++) any |= nonfinite_mark(logits[i]);
    return (any & 0x80000000u) == 0;
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
    uint64_t total;
    int n = scratch->n_vocab;
    uint32_t *weights = scratch->weights;
    int kept, try, token;
    penalize(params, logits, prompt, n_prompt, output, n_output, scratch);
    if (is_greedy(params)) return argmax(logits, n); /* the RNG is not touched */
    if ((kept = filter_min_p_top_k(params, logits, weights, n, scratch, &total)) == 0) return 0;
    if (top_p_applies(params, kept)) {
        double need = top_p_need(params, total);
        for (try = 0; try < EL_NUCLEUS_TRIES; try++) {
            token = draw_by_runs(weights, n, scratch->bucket_measure, scale_by(total, el_rng_next(rng)));
            if (in_nucleus(weights, n, scratch->bucket_measure, total, token, need)) return token;
        }
        total = apply_cut(weights, n, select_cut(weights, n, need, 1, scratch), scratch->bucket_measure, &kept);
    }
    return draw_by_runs(weights, n, scratch->bucket_measure, scale_by(total, el_rng_next(rng)));
}

uint64_t el_sampler_weights(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
                            const int32_t *output, int n_output, el_sampler_scratch *scratch)
{
    uint64_t total;
    int kept, n = scratch->n_vocab;
    penalize(params, logits, prompt, n_prompt, output, n_output, scratch);
    if (is_greedy(params)) {
        el_memset(scratch->weights, 0, (size_t)n * sizeof(uint32_t));
        scratch->weights[argmax(logits, n)] = 1;
        return 1;
    }
    kept = filter(params, logits, scratch->weights, n, scratch, &total);
    return kept > 0 ? total : 0;
}

int el_sampler_draw(const uint32_t *weights, int n, uint64_t total, el_rng *rng)
{
    return draw(weights, n, scale_by(total, el_rng_next(rng)));
}

int el_sampler_distribution(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
                            const int32_t *output, int n_output, el_sampler_scratch *scratch)
{
    uint64_t total = el_sampler_weights(params, logits, prompt, n_prompt, output, n_output, scratch);
    int kept = 0, i, n = scratch->n_vocab;
    for (i = 0; i < n; i++) {
        scratch->probs[i] = total > 0 ? (float)((double)scratch->weights[i] / (double)total) : 0.0f;
        kept += scratch->weights[i] != 0;
    }
    return kept;
}
