/* el_scheduler.h: which tokens go into the next forward step.
 *
 * vLLM's policy, small: sequences that are decoding get one row each (oldest first);
 * when one needs a block and none is free, blocks held by sequences that are not
 * running (finished and not yet released, or waiting to continue a chat) are taken
 * back first, then the newest running sequence is preempted (its blocks released,
 * to be recomputed later, with the same output). Then prompts are admitted in arrival
 * order while blocks for the whole prompt can be had (full blocks already in the
 * prefix cache are shared, not computed) and prefilled in chunks that fill the rest
 * of the step's row budget. The oldest running sequence always makes progress, so
 * there is no livelock: preemption only ever takes from newer ones.
 *
 * Forks share blocks: before a row is written into a block that another sequence also
 * holds (the prompt's partly filled last block after a fork), the block is copied for
 * the writer (copy-on-write; the last holder writes in place). A prompt whose
 * prompt_logprobs are asked for is computed in full, not taken from the prefix cache,
 * and no step asks the forward pass for more logits rows than it has room for.
 */
#ifndef EL_SCHEDULER_H
#define EL_SCHEDULER_H

#include "el_forward.h"
#include "el_sequence.h"

typedef struct {
    el_sequence *seqs;
    int max_seqs;
    el_kv_cache *kv;
    int max_rows;
    int max_logits;         /* logits rows one forward step holds */
    int max_model_len;
    uint64_t next_arrival;
    int prefix_caching;     /* 0: blocks are neither registered nor looked up */
    long long preemptions;
} el_scheduler;

/* Fill rows (and row_seq: the sequence index of each row) for the next step.
 * Returns the row count; 0 when nothing can run. */
int el_schedule(el_scheduler *sched, el_batch_row *rows, int32_t *row_seq);

/* Give a sequence's blocks back (finished, aborted or preempted). */
void el_scheduler_release_blocks(el_scheduler *sched, el_sequence *seq);

/* Give back the blocks past what the sequence's tokens need (those only rejected
 * speculative drafts were written to). */
void el_scheduler_trim_blocks(el_scheduler *sched, el_sequence *seq);

/* After a step: register the sequence's newly completed full blocks for prefix sharing. */
void el_scheduler_register_blocks(el_scheduler *sched, el_sequence *seq, int n_computed_before);

#endif
