/* el_speculate.h: speculative decoding with n-gram proposals (vLLM's "ngram" method,
 * prompt lookup decoding) or a draft model's (el_draft.h), verified in one forward pass.
 *
 * After a sequence samples a token, the engine looks for the longest suffix of its
 * tokens (prompt_lookup_max down to prompt_lookup_min tokens) that occurred earlier in
 * them, at its earliest occurrence, and proposes the tokens that followed it there as
 * drafts (or asks the draft model for its next tokens): at most speculative_tokens, and
 * at most one more than its last step had accepted (a draft that fails costs a row,
 * which a model bound by arithmetic pays for). They wait in the sequence's token array
 * past its end. The next step computes the last token and the drafts together, k + 1
 * rows of one forward pass, so each weight is read once for all of them.
 *
 * Verification of n-grams, and of a draft model's drafts for a greedy sequence, samples
 * row 0 exactly as plain decoding would. While the sampled token
 * equals the draft that the next row was computed for, that row's logits are the ones
 * plain decoding would have had at that position (batching never changes a bit), so the
 * next token is sampled from it, with the sequence's own random draws in order. The
 * first disagreement, or the row after the last draft, ends the step. Every token is
 * therefore the one plain decoding draws, greedy or sampled, seed for seed: only the
 * number of forward passes changes. (A proposal that is one token for sure is the case
 * of the rejection-sampling rule where accepting the draft with probability p(draft)
 * and drawing the next token from p are the same draw.) A draft model's drafts for a
 * sampled sequence were drawn at random, and go by the rule itself (el_speculate_accept).
 *
 * Rows of rejected drafts leave keys and values past the sequence's computed positions;
 * the next step overwrites them, and blocks past the sequence's end are given back.
 * Sequences that report logprobs, still have forks to make, or belong to a beam search
 * decode one token a step.
 */
#ifndef EL_SPECULATE_H
#define EL_SPECULATE_H

#include "el_sampler.h"
#include "el_sequence.h"

#define EL_MAX_SPECULATIVE_TOKENS 16

/* At most k drafts for the tokens[0..n): the tokens that followed the earliest
 * occurrence of the longest suffix of max_n down to min_n tokens (none when no suffix
 * of at least min_n recurs). Written to out (room for k). Returns how many. */
int el_speculate_ngram(const int32_t *tokens, int n, int k, int max_n, int min_n, int32_t *out);

/* A draft model's proposals are drawn at random, so a sampled sequence (not greedy) checks
 * them by the rejection rule of speculative sampling (Leviathan et al. 2023; Chen et al.
 * 2023): the draft, drawn from q, is kept with probability min(1, p(draft) / q(draft));
 * otherwise the token is drawn from the residual max(0, p - q), renormalized. Every
 * token is then distributed as plain decoding's (not drawn with the same random numbers:
 * the tokens differ seed for seed, the distribution does not). p and q are the sampler's
 * integer weights (el_sampler_weights) with their totals; the residual's weights are
 * (p - q) * 2^30 in doubles, truncated. `residual` is scratch for n weights. Returns the
 * draft when it is kept, else the token drawn in its place. A greedy sequence needs none
 * of this: its draft is kept when it is the argmax (el_engine.c, as for n-grams). */
int el_speculate_accept(const uint32_t *p, uint64_t p_total, const uint32_t *q, uint64_t q_total, int n, int draft,
                        el_rng *rng, uint32_t *residual);

#endif
