/* el_sequence.h: one request's life: its tokens, its block table, its text.
 *
 * A sequence's tokens are the prompt followed by what it generated. n_computed
 * counts the tokens whose keys and values are in the cache; the scheduler moves it
 * forward, a preemption sets it back to 0 (the tokens stay, so recomputing gives the
 * same output). Output text is kept per turn, with stop strings held back until it
 * is clear whether they complete.
 *
 * A request for n samples (vLLM's SamplingParams.n) is one sequence that prefills the
 * prompt, with n - 1 slots reserved beside it; at its first token it forks them: each
 * fork starts from a copy of its token list and shares its blocks by reference (the
 * partly filled last block is copied by whichever writes to it first, see the
 * scheduler), then samples its own tokens with seed + sample_index.
 */
#ifndef EL_SEQUENCE_H
#define EL_SEQUENCE_H

#include "el_logprobs.h"
#include "el_sampler.h"
#include "el_tokenizer.h"

#define EL_MAX_STOP_STRINGS 4
#define EL_MAX_STOP_LEN 32
#define EL_MAX_STOP_TOKENS 8
/* The widest beam search: its sequences keep 2 * width candidates each between steps. */
#define EL_MAX_BEAM_WIDTH 8

typedef struct {
    el_sampling sampling;
    int max_tokens;       /* output tokens at most (this turn) */
    int min_tokens;       /* EOS, stop tokens and stop strings are ignored before this many */
    int ignore_eos;
    int n_stop_token_ids;
    int32_t stop_token_ids[EL_MAX_STOP_TOKENS];
    int n_stop;
    char stop[EL_MAX_STOP_STRINGS][EL_MAX_STOP_LEN];
    int stop_len[EL_MAX_STOP_STRINGS];
    int n;                /* samples of this prompt (default 1): forks sharing the prompt's blocks */
    int logprobs;         /* -1: none; k >= 0: each token's logprob and rank, and the top k (<= EL_MAX_LOGPROBS) */
    int prompt_logprobs;  /* -1: none; k >= 0: the same for every prompt token after the first */
    int beam_width;       /* 0: sample; W >= 1: beam search of width W (el_beam.h), holding 2W sequences */
    float length_penalty; /* beam search: a hypothesis scores cum_logprob / length ** length_penalty */
    const uint8_t *constraint; /* structured output: a compiled DFA (el_constraint.h) the output must
                                * follow, owned by the caller until the request ends; NULL: none */
    int constraint_len;
} el_request;

/* EL_SEQ_RESERVED: a slot held for a fork of another sequence (its `parent`), not scheduled */
typedef enum { EL_SEQ_FREE = 0, EL_SEQ_WAITING, EL_SEQ_RUNNING, EL_SEQ_FINISHED, EL_SEQ_RESERVED } el_seq_state;
/* EL_FINISH_ERROR: the model's logits held NaN or Inf (EL_FINISH_ERROR_TEXT), so no
 * token could be drawn; nothing is appended in that step. */
typedef enum { EL_FINISH_NONE = 0, EL_FINISH_STOP, EL_FINISH_LENGTH, EL_FINISH_ABORT, EL_FINISH_ERROR } el_finish_reason;
#define EL_FINISH_ERROR_TEXT "the model's logits became NaN or infinite (its activations overflowed)"
/* EL_STOP_CONSTRAINT: no token of the vocabulary continues the request's constraint
 * (only where the vocabulary has no byte tokens to spell what it needs). */
typedef enum { EL_STOP_NONE = 0, EL_STOP_EOS, EL_STOP_TOKEN, EL_STOP_STRING, EL_STOP_CONSTRAINT } el_stop_kind;

typedef struct {
    int id;
    el_seq_state state;
    uint64_t arrival;          /* admission order; the newest is preempted first */
    el_request request;
    int32_t *tokens;
    int n_tokens, n_prompt, capacity;
    int n_computed;
    int32_t *block_table;
    int n_blocks, max_blocks;
    int n_cached_tokens;       /* prompt tokens already in the cache at admission (-1 before) */
    int n_preemptions;
    el_rng rng;
    el_finish_reason finish;
    el_stop_kind stop_kind;
    int stop_value;            /* the stop token id, or the index of the stop string */
    char *text;                /* this turn's output text */
    int text_len, text_emitted, text_capacity;
    el_utf8_stream utf8;
    int parent;                /* the sequence that prefilled the prompt (itself for the first sample) */
    int sample_index;          /* 0 .. n - 1 */
    int forks_pending;         /* reserved slots still to fork at the first token (the parent only) */
    int fork_fresh;            /* forked this step, its first token still to sample */
    int prompt_logprob_next;   /* the next prompt position whose logprob is still to report */
    uint64_t group;            /* the request it belongs to (unique while the engine runs) */
    float cum_logprob;         /* beam search: the sum of its generated tokens' logprobs */
    float beam_score;          /* beam search, a finished hypothesis: its score */
    int beam_order;            /* beam search, a live beam: its place among the beams kept last */
    int beam_ready;            /* beam search: its candidates for the next token are in */
    int constraint_state;      /* structured output: the DFA's state after this turn's text */
    int n_draft;               /* speculative drafts waiting in tokens[n_tokens..] (el_speculate.h) */
    int draft_limit;           /* the most drafts its next step proposes: one more than it last accepted */
    int n_candidates;
    int32_t candidate_ids[2 * EL_MAX_BEAM_WIDTH];
    float candidate_logprobs[2 * EL_MAX_BEAM_WIDTH];
} el_sequence;

void el_request_defaults(el_request *request);
el_status el_request_check(const el_request *request, el_error *err);

/* Scratch for el_sequence_add_text: a token's bytes and what the UTF-8 stream lets out
 * of them. Pieces can be as long as the vocabulary's longest, so the engine sizes it. */
size_t el_sequence_scratch_bytes(const el_tokenizer *tok);

/* Decode `token` (which follows `previous`) into the sequence's text and look for stop
 * strings; `scratch` holds el_sequence_scratch_bytes(tok) bytes. Returns 1 when a stop
 * string completed (the text is cut before it). */
int el_sequence_add_text(el_sequence *seq, const el_tokenizer *tok, int previous, int token, char *scratch);
/* At the end of a turn: bytes the UTF-8 stream still holds (a character cut short)
 * go into the text as they are, so nothing generated is lost. */
void el_sequence_flush_text(el_sequence *seq);
/* Bytes of text that can be shown now: everything but a tail that may still become a stop string. */
int el_sequence_ready_text(const el_sequence *seq);
int el_sequence_output_len(const el_sequence *seq);

#endif
