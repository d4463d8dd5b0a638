/* el_beam.h: beam search in the engine, the algorithm of vLLM's LLM.beam_search.
 *
 * A request with beam_width W holds 2W sequence slots: at most W live beams and W
 * finished hypotheses. The first prefills the prompt. Each step, every live beam's
 * logits give its 2W most likely next tokens (log-softmax of the logits, divided by
 * the temperature when that is above 0). Once every live beam of the request has its
 * candidates, each candidate is scored
 *     score = (cum_logprob + logprob) / length ** length_penalty
 * (length: prompt and generated tokens, an ending EOS not counted). Candidates that
 * are EOS (unless ignore_eos) become finished hypotheses, the W best kept; the W best
 * of the others become the next beams. A beam chosen once takes its token, one chosen
 * again is forked (its blocks shared by reference), one not chosen is pruned and its
 * blocks freed at once. Ties keep the order of beams, then of candidates (a stable
 * sort). After max_tokens tokens, or when no live beam is left, the W best of the
 * finished and live hypotheses are reported, best first (sample_index 0), each with
 * its cum_logprob; the others are freed.
 */
#ifndef EL_BEAM_H
#define EL_BEAM_H

#include "el_engine.h"

/* A live beam's logits row (modified): its candidates, kept in the sequence. */
void el_beam_take_candidates(el_engine *engine, el_sequence *beam, float *logits);

/* Every beam search whose live beams all have candidates moves one token on (or ends
 * and reports). Returns the new event count. */
int el_beam_advance(el_engine *engine, el_event *events, int n_events, int max_events);

/* Scratch bytes the engine gives the searches (one search's candidates at a time). */
size_t el_beam_scratch_bytes(int max_width);

/* Whether seq belongs to a beam search still going (a live beam or a reserved slot of it). */
int el_beam_search_running(const el_engine *engine, const el_sequence *seq);

/* Free every slot of the beam search that sequence `group_slot` belongs to. */
void el_beam_free_group(el_engine *engine, int group_slot);

#endif
