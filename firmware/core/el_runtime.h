/* el_runtime.h: the runtime behind one flat C API, for hosts that bind to C
 * (Python through ctypes, the POSIX program, the bare-metal main loop).
 *
 * The caller provides one block of memory; the runtime places its own state, the
 * model view, the KV pool and all scratch inside it. Nothing else is allocated.
 */
#ifndef EL_RUNTIME_H
#define EL_RUNTIME_H

#include "el_engine.h"

#define EL_RUNTIME_VERSION "0.1.0"

typedef struct {
    el_arena arena;
    el_model model;
    el_engine engine;
    size_t scratch_mark;
} el_runtime;

el_runtime *el_runtime_open(void *memory, size_t memory_size, const uint8_t *model, size_t model_size,
                            const el_engine_options *options, el_error *err);
/* Speculative decoding with a draft model (el_draft.h): a smaller model with the same
 * vocabulary, opened in a memory block of its own (its view, KV cache and scratch), then
 * proposes the options' speculative_tokens drafts a step. Before the first request.
 * Its bytes are rearranged in place when the options say weights_writable. */
el_status el_runtime_set_draft(el_runtime *rt, void *memory, size_t memory_size, const uint8_t *model,
                               size_t model_size, el_error *err);
const el_config *el_runtime_config(const el_runtime *rt);
const char *el_runtime_version(void);

/* Text to tokens (BOS first when add_bos); -1 with err set when out is too small. */
int el_runtime_tokenize(el_runtime *rt, const char *text, int len, int add_bos, int32_t *out, int capacity,
                        el_error *err);
int el_runtime_token_text(const el_runtime *rt, int previous, int token, char *out, int capacity);
/* Structured outputs: which tokens the constraint (el_constraint.h) lets follow
 * `previous` from DFA state `state`: allowed[t] = 1 or 0 for every token, as the
 * sampler masks them. Returns how many are allowed, or -1 with err set for bad bytes. */
int el_runtime_allowed_tokens(el_runtime *rt, const uint8_t *constraint, int len, int state, int previous,
                              uint8_t *allowed, el_error *err);

int el_runtime_add(el_runtime *rt, const int32_t *prompt, int n, const el_request *request, el_error *err);
el_status el_runtime_continue(el_runtime *rt, int seq_id, const int32_t *tokens, int n, const el_request *request,
                              el_error *err);
/* One step. A step may do work and report no event (a long prompt's prefill chunk):
 * el_runtime_pending tells whether more steps are needed. */
int el_runtime_step(el_runtime *rt, el_event *events, int max_events);
/* The most events one step can report (el_engine_max_events): size the array with it. */
int el_runtime_max_events(const el_runtime *rt);
/* Sequences waiting or running: 0 when stepping has nothing left to do. */
int el_runtime_pending(const el_runtime *rt);
/* A sequence's tokens (prompt and output); returns the count, or -1 for a bad id. */
int el_runtime_tokens(const el_runtime *rt, int seq_id, const int32_t **tokens, int *n_prompt, int *n_cached);
void el_runtime_abort(el_runtime *rt, int seq_id);
void el_runtime_release(el_runtime *rt, int seq_id);
void el_runtime_stats(const el_runtime *rt, el_engine_stats *stats);
/* The block manager's books (el_engine_check_blocks): for tests. */
el_status el_runtime_check_blocks(el_runtime *rt, el_error *err);
/* Spread matmuls and attention over a thread pool (el_parallel.h): at most the
 * options' `threads` workers. The kernels this build runs: el_kernels_name(). */
el_status el_runtime_set_parallel(el_runtime *rt, el_parallel_run_fn run, void *pool, int n_workers, el_error *err);

/* Logits at every position of `tokens` (n * vocab floats), computed one position at
 * a time through the paged cache: for checking the runtime against a reference. */
el_status el_runtime_logits(el_runtime *rt, const int32_t *tokens, int n, float *out, el_error *err);

/* ------------------------------------------------------------ chat (el_chat.h)
 *
 * Multi-turn chat keeps one sequence: the first turn is added with el_runtime_add,
 * each later one appended to the finished sequence with el_runtime_continue, so only
 * the new turn's tokens are computed. Text segments are tokenized as sentencepiece
 * tokenizes a string on its own (with its leading space); a segment that starts with
 * a space inside a sequence gives that space to the tokenizer's. ChatML's markers
 * become their tokens when the vocabulary has them. */
#include "el_chat.h"

/* The template the model's metadata names (plain when it names none). */
el_chat_template el_runtime_chat_template(const el_runtime *rt);
/* Add the template's stop to a request: its stop string, and the id of "<|im_end|>"
 * when the vocabulary has that token (a control token's text is empty, so only its id
 * can stop). Fails when the request has no room left. */
el_status el_runtime_chat_request(const el_runtime *rt, int tmpl, el_request *request, el_error *err);
/* The tokens of one message (el_chat_message), BOS/EOS included where the template
 * puts them. Returns the count, or -1 with err set. */
int el_runtime_chat_message(el_runtime *rt, int tmpl, int previous, int role, const char *content, int len,
                            int32_t *out, int capacity, el_error *err);
/* The tokens of one user turn, ending with the generation prompt. seq_id < 0 starts a
 * conversation (system text first when system_len > 0); otherwise seq_id is the
 * finished sequence the turn is appended to: its reply's end marker is written first
 * when the reply did not stop at it (cut by max_tokens, or another stop), and the
 * system text is ignored. Returns the count, or -1 with err set. */
int el_runtime_chat_turn(el_runtime *rt, int tmpl, int seq_id, const char *system, int system_len, const char *user,
                         int user_len, int32_t *out, int capacity, el_error *err);
/* Admit one user turn of the conversation kept as sequence seq_id (< 0: none yet):
 * the one rule every chat host follows. The turn is rendered into `scratch` (capacity
 * tokens) and appended with el_runtime_continue; when there is no conversation, it
 * starts one (system text first) with el_runtime_add. When the conversation has no
 * room left for the turn (EL_ERR_CAPACITY from continuing, and only then), seq_id is
 * released and the turn starts a new conversation, re-rendered as the first turn after
 * the system text; *started_over (may be NULL) is then 1, else 0.
 * Returns the conversation's sequence id (seq_id itself, or a new one), or -1 with err
 * set: a bad argument or request, a scratch too small, a turn that does not fit even
 * alone. On -1 seq_id is still the caller's unless *started_over is 1 (released). */
int el_runtime_chat_admit(el_runtime *rt, int tmpl, int seq_id, const char *system, int system_len, const char *user,
                          int user_len, int32_t *scratch, int capacity, const el_request *request, int *started_over,
                          el_error *err);
/* The tokens of a whole conversation (roles are el_chat_role values), ending with the
 * generation prompt: the prompt of a one-shot chat request. */
int el_runtime_chat_prompt(el_runtime *rt, int tmpl, const int32_t *roles, const char *const *contents,
                           const int32_t *lens, int n, int32_t *out, int capacity, el_error *err);

#endif
