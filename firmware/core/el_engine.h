/* el_engine.h: requests in, tokens and text out.
 *
 * The caller adds requests (prompt tokens and el_request parameters) and calls
 * el_engine_step until el_engine_pending says nothing is left; each step schedules,
 * runs one batched forward pass, samples one token for every sequence whose prompt is
 * done, applies the stop rules, and reports what happened as events (a step that only
 * prefills part of a long prompt reports none). A finished sequence keeps its blocks
 * until released, so a chat can continue it without recomputing the history; when
 * other sequences need the pool, its blocks are taken back first (its full blocks
 * stay in the prefix cache, so a continuation still finds most of them).
 *
 * A sequence ends with "length" at max_tokens, at max_model_len, or when it holds
 * the whole KV pool (a pool smaller than max_model_len is allowed on small boards).
 * It ends with EL_FINISH_ERROR when its logits hold NaN or Inf: the check is one pass
 * of integer ORs over the row, before the sampler touches it.
 *
 * A request with n > 1 holds n sequence slots from el_engine_add on; its first token
 * forks the samples (el_sequence.h), each reporting events under its own seq_id with
 * the parent's id and its sample_index. Log-probabilities (el_logprobs.h) come with
 * the events that ask for them: one per sampled token, and for prompt_logprobs one
 * event per prompt position (prompt_pos > 0, no text), before the first token's.
 * A beam search (request.beam_width > 0, el_beam.h) reports only at its end: one
 * finished event per hypothesis it keeps, best first.
 */
#ifndef EL_ENGINE_H
#define EL_ENGINE_H

#include "el_draft.h"
#include "el_scheduler.h"

typedef struct {
    int max_model_len;      /* tokens per sequence, prompt and output; 0 = the model's context */
    int block_size;         /* tokens per KV block; 0 = 16 */
    long long kv_cache_bytes; /* the pool's size; 0 = enough for max_seqs full sequences */
    int max_seqs;           /* sequences at once; 0 = 8 */
    int max_batch_tokens;   /* rows per forward step; 0 = max(max_seqs, 32) */
    el_kv_dtype kv_dtype;
    int no_prefix_caching;  /* 1: never share blocks between sequences (0, the default, shares) */
    int threads;            /* the most workers a parallel hook may use (sizes per-worker scratch); 0 = 1 */
    int check_values;       /* 1: el_runtime_open scans every weight for NaN/Inf (one pass over the file);
                             * hosts set it, a bare-metal image verified by checksum may leave it 0 */
    int weights_writable;   /* 1: the model's bytes are writable and private to this runtime (a
                             * copy-on-write mapping), so the kernels may rearrange matrices in place
                             * at open (el_arrange_weights); 0 (flash, a shared buffer) keeps them */
    int speculative_tokens; /* drafts a sequence may verify per step (el_speculate.h): n-grams, or a
                             * draft model's (el_engine_set_draft); 0: none */
    int prompt_lookup_max;  /* the longest suffix looked up for drafts; 0 = 5 */
    int prompt_lookup_min;  /* the shortest; 0 = prompt_lookup_max */
} el_engine_options;

typedef struct {
    int seq_id;
    int parent_id;          /* the sequence that prefilled the prompt (seq_id itself for sample 0) */
    int sample_index;       /* which of the request's n samples */
    int prompt_pos;         /* > 0: a prompt logprob event for the prompt token at this position */
    const el_logprob_entry *logprobs; /* when asked for; valid until the next step */
    float cumulative_logprob; /* a beam search's hypothesis: the sum of its tokens' logprobs */
    int token;              /* the token sampled this step; -1 when none (abort, error) */
    const char *text;       /* text that became ready this step (not NUL-terminated) */
    int text_len;
    int finished;
    el_finish_reason finish;
    el_stop_kind stop_kind;
    int stop_value;
} el_event;

typedef struct {
    long long prompt_tokens_computed, tokens_generated, steps, rows;
    int blocks_total, blocks_used, blocks_cached, blocks_high_water;
    long long prefix_queries, prefix_hits, preemptions;
    size_t arena_used, arena_high_water, arena_size;
    long long blocks_copied;  /* copy-on-write copies of blocks shared with a fork */
    long long draft_tokens;   /* speculative drafts computed, and of them those accepted */
    long long draft_accepted;
    long long draft_rows;     /* forward rows the draft model ran (0 without one) */
} el_engine_stats;

typedef struct {
    const el_model *model;
    el_engine_options options;
    el_tokenizer tokenizer;
    el_kv_cache kv;
    el_forward_state forward;
    el_sampler_scratch sampler;
    el_scheduler scheduler;
    el_sequence *seqs;
    el_batch_row *rows;
    int32_t *row_seq;
    char *text_scratch;     /* el_sequence_scratch_bytes: one token's text on its way in */
    el_logprob_entry *logprob_entries; /* one per event a step can report */
    el_arena *arena;
    long long prompt_tokens_computed, tokens_generated, steps, rows_run, draft_tokens, draft_accepted;
    uint64_t next_group;
    void *beam_scratch;     /* el_beam.c: the candidates of one beam search's step */
    int max_beam_width;     /* the widest beam search the slots and the scratch allow */
    el_draft *draft;        /* speculative decoding's draft model (el_draft.h); NULL: n-gram proposals */
} el_engine;

el_status el_engine_init(el_engine *engine, const el_model *model, const el_engine_options *options, el_arena *arena,
                         el_error *err);

/* A new sequence; returns its id (>= 0) or -1 with err set (bad parameters, a prompt
 * that can never fit, or no free sequence slot). */
int el_engine_add(el_engine *engine, const int32_t *prompt, int n_prompt, const el_request *request, el_error *err);
/* Append tokens (the next chat turn) to a finished sequence, keeping its cached KV. */
el_status el_engine_continue(el_engine *engine, int seq_id, const int32_t *tokens, int n, const el_request *request,
                             el_error *err);
/* The most events one step reports: one per token a sequence samples (1 + its drafts)
 * plus one per fork. */
int el_engine_max_events(const el_engine *engine);
/* For el_beam.c, the engine's own steps: `to` (a reserved slot) becomes a copy of
 * `from` (tokens, text, sampler state; its blocks shared by reference when
 * share_blocks, else none); a sequence ends with `reason`. */
void el_engine_fork(el_engine *engine, const el_sequence *from, el_sequence *to, int share_blocks);
void el_engine_finish(el_sequence *seq, el_finish_reason reason);
void el_engine_event(el_event *event, el_sequence *seq, int token);
/* The most tokens a sequence can hold: max_model_len, or the whole KV pool if smaller. */
int el_engine_sequence_limit(const el_engine *engine);
/* Sequences a request holds: n, or 2 * beam_width for a beam search. */
int el_request_slots(const el_request *request);
/* One step; writes at most max_events events, returns how many (0: nothing to do).
 * Give it el_engine_max_events so that none is lost. */
int el_engine_step(el_engine *engine, el_event *events, int max_events);
void el_engine_abort(el_engine *engine, int seq_id);
/* Forget a sequence and give its blocks back (full ones stay in the prefix cache);
 * slots it still holds for forks it has not made are freed too. */
void el_engine_release(el_engine *engine, int seq_id);
int el_engine_pending(const el_engine *engine);
const el_sequence *el_engine_sequence(const el_engine *engine, int seq_id);
void el_engine_stats_get(const el_engine *engine, el_engine_stats *stats);
/* For tests and tools: whether the block manager's books balance. Every block's
 * reference count equals the number of block tables holding it, and the free list
 * holds exactly the blocks no table holds. EL_OK, or an error saying what is off. */
el_status el_engine_check_blocks(el_engine *engine, el_error *err);
/* Propose drafts with a draft model (el_draft.h) set up for this engine, instead of
 * n-grams: before the first request. The engine's speculative_tokens is k. */
el_status el_engine_set_draft(el_engine *engine, el_draft *draft, el_error *err);
/* Run the heavy loops through `run` over `pool` with n_workers threads (at most
 * options.threads); run = NULL goes back to the caller's thread alone. */
el_status el_engine_set_parallel(el_engine *engine, el_parallel_run_fn run, void *pool, int n_workers, el_error *err);

#endif
