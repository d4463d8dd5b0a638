/* el_draft.h: the draft model of speculative decoding (vLLM's draft_model method).
 *
 * A smaller model with the same vocabulary proposes the next k tokens of each sequence
 * that decodes; the target model checks them in one forward pass (el_speculate.h). The
 * draft keeps its own KV cache: each sequence slot owns a fixed run of blocks (no
 * sharing, no preemption: a draft model is small, and a host or Linux board has the
 * memory), and remembers which token every computed position was computed for. Before
 * proposing, a slot's computed positions are cut back to where they still agree with
 * the sequence's tokens, so whatever happened since (drafts rejected, a new request in
 * the slot, a fork, a chat turn) costs only the positions that changed.
 *
 * Proposing takes every drafting sequence together: one pass for the tokens the draft
 * has not seen yet (the prompt, the last step's tokens), then one pass per draft with a
 * row per sequence. A greedy sequence proposes the draft's argmax; a sampled one draws
 * from the draft's distribution under its own sampling parameters and random numbers,
 * and that distribution (integer weights, el_sampler_weights) is kept for the rejection
 * rule. The draft sees the sequence's penalties, not its constraint or min_tokens
 * masks: the rule keeps the output's distribution whatever the proposals are.
 */
#ifndef EL_DRAFT_H
#define EL_DRAFT_H

#include "el_forward.h"
#include "el_sampler.h"
#include "el_sequence.h"

typedef struct {
    const el_model *model;
    el_kv_cache kv;
    el_forward_state forward;
    int max_seqs, max_blocks, max_drafts, max_model_len, vocab;
    int32_t *block_tables;  /* [max_seqs][max_blocks]: slot s holds blocks s * max_blocks on */
    int32_t *cached;        /* [max_seqs][max_model_len]: the token each computed position was computed for */
    int32_t *n_cached;      /* [max_seqs]: positions computed */
    uint32_t *weights;      /* [max_seqs][max_drafts][vocab]: what each sampled draft was drawn from */
    uint64_t *totals;       /* [max_seqs][max_drafts] */
    el_batch_row *rows;     /* a pass's rows, and the slot of each */
    int32_t *row_slot;
    el_sequence **batch;    /* the sequences that draft this step, max_seqs at most (filled by the engine), */
    int *batch_k;           /* and the most drafts each may propose */
    int max_rows;
    long long rows_run;     /* the draft's forward rows, for the stats */
} el_draft;

/* Set up the draft for a target model and the target engine's options (max_seqs,
 * max_model_len, block_size, kv_dtype, max_batch_tokens, threads; speculative_tokens is
 * k). Fails, naming the difference, when the vocabularies are not the same piece for
 * piece or the draft's context is shorter than max_model_len. */
el_status el_draft_init(el_draft *draft, const el_model *model, const el_model *target, int max_seqs,
                        int max_model_len, int block_size, el_kv_dtype kv_dtype, int max_batch_tokens, int max_drafts,
                        int threads, el_arena *arena, el_error *err);

/* Drafts for the n sequences in batch[0..n): batch[i] (in sequence slot batch[i]->id)
 * gets up to batch_k[i] drafts written at its tokens + n_tokens, and n_draft set.
 * `parallel` is the target's thread hook; `scratch` the target engine's sampler scratch. */
void el_draft_propose(el_draft *draft, int n, const el_parallel *parallel, el_sampler_scratch *scratch);

/* The distribution sampled draft i of slot `slot` was drawn from, and its total. */
const uint32_t *el_draft_weights(const el_draft *draft, int slot, int i, uint64_t *total);

#endif
