/* el_speculate.h: speculative decoding with n-gram proposals (vLLM's "ngram" method,
 * prompt lookup decoding), verified in one forward pass.
 *
 * After a sequence samples a token, the engine looks for the longest suffix of its
 * tokens (prompt_lookup_max down to prompt_lookup_min tokens) that occurred earlier in
 * them, at its earliest occurrence, and proposes the tokens that followed it there as
 * drafts: at most speculative_tokens, and at most one more than its last step had
 * accepted (a draft that fails costs a row, which a model bound by arithmetic pays for). They wait in the sequence's token array past its
 * end. The next step computes the last token and the drafts together, k + 1 rows of one
 * forward pass, so each weight is read once for all of them.
 *
 * Verification samples row 0 exactly as plain decoding would. While the sampled token
 * equals the draft that the next row was computed for, that row's logits are the ones
 * plain decoding would have had at that position (batching never changes a bit), so the
 * next token is sampled from it, with the sequence's own random draws in order. The
 * first disagreement, or the row after the last draft, ends the step. Every token is
 * therefore the one plain decoding draws, greedy or sampled, seed for seed: only the
 * number of forward passes changes. (A proposal that is one token for sure is the case
 * of the rejection-sampling rule where accepting the draft with probability p(draft)
 * and drawing the next token from p are the same draw.)
 *
 * Rows of rejected drafts leave keys and values past the sequence's computed positions;
 * the next step overwrites them, and blocks past the sequence's end are given back.
 * Sequences that report logprobs, still have forks to make, or belong to a beam search
 * decode one token a step.
 */
#ifndef EL_SPECULATE_H
#define EL_SPECULATE_H

#include "el_sequence.h"

#define EL_MAX_SPECULATIVE_TOKENS 16

/* At most k drafts for the tokens[0..n): the tokens that followed the earliest
 * occurrence of the longest suffix of max_n down to min_n tokens (none when no suffix
 * of at least min_n recurs). Written to out (room for k). Returns how many. */
int el_speculate_ngram(const int32_t *tokens, int n, int k, int max_n, int min_n, int32_t *out);

#endif
