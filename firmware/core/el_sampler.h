/* el_sampler.h: vLLM's sampling parameters and order, with a portable seeded RNG.
 *
 * Order, as vLLM applies them: repetition penalty (tokens of prompt and output;
 * positive logits divided, negative multiplied), frequency and presence penalties
 * (output tokens only), temperature (below 1e-5 means greedy), min_p, top_k, top_p,
 * then one draw from the remaining distribution. Same seed, same tokens on every target.
 */
#ifndef EL_SAMPLER_H
#define EL_SAMPLER_H

#include "el_base.h"

#define EL_GREEDY_TEMPERATURE 1e-5f

typedef struct {
    float temperature;         /* default 1.0 */
    float top_p;               /* (0, 1], default 1.0 */
    int top_k;                 /* 0 or -1 = all, default 0 */
    float min_p;               /* [0, 1], default 0.0 */
    float repetition_penalty;  /* > 0, default 1.0 */
    float frequency_penalty;   /* [-2, 2], default 0.0 */
    float presence_penalty;    /* [-2, 2], default 0.0 */
    uint64_t seed;
} el_sampling;

void el_sampling_defaults(el_sampling *params);
/* EL_OK, or EL_ERR_ARGUMENT with a message naming the field. */
el_status el_sampling_check(const el_sampling *params, el_error *err);

/* PCG32 (O'Neill): 64-bit state, 32-bit output; integer-only, so portable. */
typedef struct {
    uint64_t state;
    uint64_t increment;
} el_rng;

void el_rng_seed(el_rng *rng, uint64_t seed);
uint32_t el_rng_next(el_rng *rng);
/* Uniform in [0, 1) with 24 random bits (exact in float). */
float el_rng_uniform(el_rng *rng);

/* The cut of top_k and top_p is found by a radix select on the integer weights, a
 * byte at a time: 256 buckets, and the first round's 65 (a weight is at most 2^30) in
 * four copies. */
#define EL_SAMPLER_BUCKETS 260

/* Scratch the sampler needs for a vocabulary of n: allocate once per engine. */
typedef struct {
    int n_vocab;
    float *probs;      /* n floats: weights, then the distribution */
    uint32_t *weights; /* n integer weights (w * 2^30); the penalties' seen-mask before that */
    int32_t *counts;   /* n ints: output counts, then the radix select's candidates */
    uint64_t *bucket_measure; /* EL_SAMPLER_BUCKETS */
} el_sampler_scratch;

el_status el_sampler_scratch_init(el_sampler_scratch *scratch, int n_vocab, el_arena *arena, el_error *err);

/* Whether all n logits are numbers (no NaN, no Inf). Check the model's own logits,
 * before any masking or penalty: a finite logit times a penalty may overflow legitimately. */
int el_logits_finite(const float *logits, int n);

/* Pick the next token. `logits` (n_vocab floats) is modified in place. `prompt` and
 * `output` are the sequence's tokens so far (for the penalties). */
int el_sample(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
              const int32_t *output, int n_output, el_rng *rng, el_sampler_scratch *scratch);

/* The distribution el_sample draws from, for tests and tools: the same steps without
 * the draw. Leaves the normalized probabilities in scratch->probs (0 for dropped
 * tokens, one-hot when greedy) and returns how many tokens are kept. On return of
 * either function, logits hold the penalized logits, divided by the temperature
 * unless greedy. */
/* The same steps as integer weights: scratch->weights holds W (w * 2^30, truncated; 0
 * for dropped tokens; greedy: 1 for the argmax, 0 elsewhere) and the return is their
 * total, 0 when no token is left. el_sample draws from exactly these (its nucleus draw
 * by rejection keeps the same distribution). For speculative decoding (el_speculate.h). */
uint64_t el_sampler_weights(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
                            const int32_t *output, int n_output, el_sampler_scratch *scratch);
/* One token drawn from n integer weights whose total is `total` (> 0): the first whose
 * running sum passes total * r / 2^32, r the RNG's next 32 bits (el_sample's draw). */
int el_sampler_draw(const uint32_t *weights, int n, uint64_t total, el_rng *rng);

int el_sampler_distribution(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
                            const int32_t *output, int n_output, el_sampler_scratch *scratch);

#endif
