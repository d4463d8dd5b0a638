/* sampler_probe.c: a test harness around el_sampler for tests/test_c_sampler.py.
 *
 * Holds one static arena and scratch (as an engine would), so Python only passes
 * plain arrays through ctypes. Also exposes el_expf over an array, so the Python
 * reference can compute bit-identical weights without a copy of el_math.c.
 */
#include "el_math.h"
#include "el_sampler.h"
#include "el_speculate.h"

static unsigned char arena_memory[1 << 20];
static el_arena arena;
static el_sampler_scratch scratch;

/* Fresh arena and scratch for a vocabulary of n_vocab; returns the status. */
int probe_init(int n_vocab, el_error *err)
{
    el_arena_init(&arena, arena_memory, sizeof arena_memory);
    return (int)el_sampler_scratch_init(&scratch, n_vocab, &arena, err);
}

int probe_sample(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
                 const int32_t *output, int n_output, el_rng *rng)
{
    return el_sample(params, logits, prompt, n_prompt, output, n_output, rng, &scratch);
}

/* The post-filter distribution, copied to probs (n_vocab floats); returns kept. */
int probe_distribution(const el_sampling *params, float *logits, const int32_t *prompt, int n_prompt,
                       const int32_t *output, int n_output, float *probs)
{
    int kept = el_sampler_distribution(params, logits, prompt, n_prompt, output, n_output, &scratch);
    el_memcpy(probs, scratch.probs, (size_t)scratch.n_vocab * sizeof(float));
    return kept;
}

/* A whole seeded generation: n_steps tokens, each appended to output (which must
 * hold n_steps ints). logits_table holds n_rows rows of n_vocab logits; step s uses
 * row (s + last token) % n_rows, so the logits depend on what was sampled. */
void probe_generate(const el_sampling *params, const float *logits_table, int n_rows, const int32_t *prompt,
                    int n_prompt, int32_t *output, int n_steps, float *work)
{
    el_rng rng;
    int s, n = scratch.n_vocab;
    el_rng_seed(&rng, params->seed);
    for (s = 0; s < n_steps; s++) {
        int last = s > 0 ? output[s - 1] : (n_prompt > 0 ? prompt[n_prompt - 1] : 0);
        el_memcpy(work, logits_table + (size_t)((s + last) % n_rows) * (size_t)n, (size_t)n * sizeof(float));
        output[s] = el_sample(params, work, prompt, n_prompt, output, s, &rng, &scratch);
    }
}

void probe_expf(const float *x, float *y, int n)
{
    int i;
    for (i = 0; i < n; i++) y[i] = el_expf(x[i]);
}

/* The rejection rule of speculative sampling (el_speculate_accept), `trials` times:
 * each draws a draft from q, then keeps it or draws in its place; counts[t] counts the
 * tokens that come out (n ints), and the return is how many drafts were kept. */
int probe_speculate(const uint32_t *p, uint64_t p_total, const uint32_t *q, uint64_t q_total, int n, int trials,
                    uint64_t seed, int32_t *counts, uint32_t *residual)
{
    el_rng rng;
    int i, kept = 0;
    el_rng_seed(&rng, seed);
    for (i = 0; i < trials; i++) {
        int draft = el_sampler_draw(q, n, q_total, &rng);
        int token = el_speculate_accept(p, p_total, q, q_total, n, draft, &rng, residual);
        counts[token]++;
        kept += token == draft;
    }
    return kept;
}
