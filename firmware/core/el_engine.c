/* el_engine.c: setting up the pools, admitting requests, and the step loop. */
#include "el_engine.h"

#include "el_beam.h"
#include "el_constraint.h"
#include "el_speculate.h"

#define EL_MASKED_LOGIT (-3.0e38f)

/* ------------------------------------------------------------ setup */

static void apply_defaults(el_engine_options *o, const el_config *c)
{
    if (o->max_model_len <= 0) o->max_model_len = c->context_length;
    if (o->block_size <= 0) o->block_size = 16;
    if (o->max_seqs <= 0) o->max_seqs = 8;
    if (o->max_batch_tokens <= 0) o->max_batch_tokens = o->max_seqs > 32 ? o->max_seqs : 32;
    if (o->threads <= 0) o->threads = 1;
    if (o->prompt_lookup_max <= 0) o->prompt_lookup_max = 5;  /* vLLM's defaults */
    if (o->prompt_lookup_min <= 0) o->prompt_lookup_min = o->prompt_lookup_max;
}

/* Logits rows one step holds: a row per sequence, and one per draft it verifies. */
static int max_logits_rows(const el_engine_options *o) { return o->max_seqs * (1 + o->speculative_tokens); }

static int blocks_for(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

static el_status init_sequences(el_engine *e, el_error *err)
{
    el_engine_options *o = &e->options;
    /* each token adds at most its longest piece (or the 5-byte unknown mark) */
    long long text_capacity = (long long)o->max_model_len * ((long long)e->tokenizer.max_piece_len + 4) + 8;
    int i;
    if (text_capacity > 0x7fffffffLL)
        return el_fail(err, EL_ERR_UNSUPPORTED, "engine: the vocabulary's pieces are too long for max_model_len", "", "");
    e->seqs = (el_sequence *)el_arena_alloc(e->arena, sizeof(el_sequence) * (size_t)o->max_seqs, 8);
    if (e->seqs == NULL) return el_fail(err, EL_ERR_NO_MEMORY, "engine: the arena is too small for the sequences", "", "");
    for (i = 0; i < o->max_seqs; i++) {
        el_sequence *seq = &e->seqs[i];
        seq->id = i;
        seq->capacity = o->max_model_len;
        seq->max_blocks = blocks_for(o->max_model_len, o->block_size);
        seq->tokens = (int32_t *)el_arena_alloc(e->arena, sizeof(int32_t) * (size_t)seq->capacity, 4);
        seq->block_table = (int32_t *)el_arena_alloc(e->arena, sizeof(int32_t) * (size_t)seq->max_blocks, 4);
        seq->text_capacity = (int)text_capacity;
        seq->text = (char *)el_arena_alloc(e->arena, (size_t)text_capacity, 1);
        if (seq->tokens == NULL || seq->block_table == NULL || seq->text == NULL)
            return el_fail(err, EL_ERR_NO_MEMORY, "engine: the arena is too small for the sequences", "", "");
    }
    return EL_OK;
}

el_status el_engine_init(el_engine *e, const el_model *model, const el_engine_options *options, el_arena *arena,
                         el_error *err)
{
    const el_config *c = &model->config;
    el_engine_options *o = &e->options;
    long long n_blocks;
    el_status status;
    el_memset(e, 0, sizeof *e);
    e->model = model;
    e->arena = arena;
    *o = *options;
    apply_defaults(o, c);
    if (o->max_model_len > c->context_length) {
        el_fail(err, EL_ERR_ARGUMENT, "max_model_len ", "", "");
        el_error_num(err, o->max_model_len);
        el_error_append(err, " is longer than the model's context of ");
        el_error_num(err, c->context_length);
        return EL_ERR_ARGUMENT;
    }
    if (o->block_size > (1 << 20))
        return el_fail(err, EL_ERR_ARGUMENT, "block_size must be 1 to 1048576 tokens", "", "");
    if (o->max_batch_tokens < o->max_seqs)
        return el_fail(err, EL_ERR_ARGUMENT, "max_batch_tokens must be at least max_seqs", "", "");
    if (o->threads > 1024) return el_fail(err, EL_ERR_ARGUMENT, "threads must be 1 to 1024", "", "");
    if (o->speculative_tokens < 0 || o->speculative_tokens > EL_MAX_SPECULATIVE_TOKENS)
        return el_fail(err, EL_ERR_ARGUMENT, "speculative_tokens must be 0 to 16", "", "");
    if (o->prompt_lookup_min > o->prompt_lookup_max || o->prompt_lookup_max > 1024)
        return el_fail(err, EL_ERR_ARGUMENT, "prompt_lookup_min must be at most prompt_lookup_max (at most 1024)",
                       "", "");
    n_blocks = o->kv_cache_bytes > 0
                   ? o->kv_cache_bytes / (long long)el_kv_block_bytes(c, o->block_size, o->kv_dtype)
                   : (long long)o->max_seqs * blocks_for(o->max_model_len, o->block_size);
    if (n_blocks < 1) {
        el_fail(err, EL_ERR_CAPACITY, "kv_cache_bytes is smaller than one KV block of ", "", "");
        el_error_num(err, (long long)el_kv_block_bytes(c, o->block_size, o->kv_dtype));
        el_error_append(err, " bytes");
        return EL_ERR_CAPACITY;
    }
    /* block ids are int32 and positions int: a pool past that is a mistake, not a plan */
    if (n_blocks > 0x7fffffffLL / o->block_size)
        return el_fail(err, EL_ERR_ARGUMENT, "kv_cache_bytes is too large", "", "");
    if ((status = el_tokenizer_init(&e->tokenizer, &model->vocab, arena, err)) != EL_OK) return status;
    if ((status = el_kv_init(&e->kv, c, o->block_size, (int)n_blocks, o->kv_dtype, arena, err)) != EL_OK) return status;
    if ((status = el_forward_init(&e->forward, c, o->max_batch_tokens, max_logits_rows(o), o->max_model_len,
                                   o->threads, arena, err)) !=
        EL_OK)
        return status;
    if ((status = el_sampler_scratch_init(&e->sampler, c->vocab_size, arena, err)) != EL_OK) return status;
    if ((status = init_sequences(e, err)) != EL_OK) return status;
    e->rows = (el_batch_row *)el_arena_alloc(arena, sizeof(el_batch_row) * (size_t)o->max_batch_tokens, 8);
    e->row_seq = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)o->max_batch_tokens, 4);
    e->text_scratch = (char *)el_arena_alloc(arena, el_sequence_scratch_bytes(&e->tokenizer), 1);
    e->logprob_entries = (el_logprob_entry *)el_arena_alloc(
        arena, sizeof(el_logprob_entry) * (size_t)el_engine_max_events(e), 8);
    e->max_beam_width = o->max_seqs / 2 < EL_MAX_BEAM_WIDTH ? o->max_seqs / 2 : EL_MAX_BEAM_WIDTH;
    if (e->max_beam_width > 0)
        e->beam_scratch = el_arena_alloc(arena, el_beam_scratch_bytes(e->max_beam_width), 8);
    if (e->rows == NULL || e->row_seq == NULL || e->text_scratch == NULL ||
        e->logprob_entries == NULL || (e->max_beam_width > 0 && e->beam_scratch == NULL))
        return el_fail(err, EL_ERR_NO_MEMORY, "engine: the arena is too small for the batch", "", "");
    e->scheduler.seqs = e->seqs;
    e->scheduler.max_seqs = o->max_seqs;
    e->scheduler.kv = &e->kv;
    e->scheduler.max_rows = o->max_batch_tokens;
    e->scheduler.max_logits = max_logits_rows(o); /* el_forward_init's max_logits */
    e->scheduler.max_model_len = o->max_model_len;
    e->scheduler.next_arrival = 1;
    e->scheduler.prefix_caching = !o->no_prefix_caching;
    return EL_OK;
}

/* ------------------------------------------------------------ requests */

/* The most tokens one sequence can have: max_model_len, or fewer when the whole pool
 * holds fewer. A sequence that reaches it finishes with "length", as at the context's
 * end, instead of waiting for blocks that can never come. */
int el_engine_sequence_limit(const el_engine *e)
{
    long long pool = (long long)e->kv.n_blocks * e->options.block_size;
    return pool < e->options.max_model_len ? (int)pool : e->options.max_model_len;
}

static el_status check_tokens(const el_engine *e, const int32_t *tokens, int n, int already, el_error *err)
{
    int i, room = e->options.max_model_len;
    if (n < 1) return el_fail(err, EL_ERR_ARGUMENT, "prompt: no tokens", "", "");
    for (i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= e->model->config.vocab_size) {
            el_fail(err, EL_ERR_ARGUMENT, "prompt: token id ", "", "");
            el_error_num(err, tokens[i]);
            el_error_append(err, " is outside the vocabulary");
            return EL_ERR_ARGUMENT;
        }
    if (already + n + 1 > el_engine_sequence_limit(e)) {
        el_fail(err, EL_ERR_CAPACITY, "prompt of ", "", "");
        el_error_num(err, already + n);
        el_error_append(err, " tokens is too long: at most ");
        el_error_num(err, el_engine_sequence_limit(e) - 1);
        el_error_append(err, " fit, leaving room for one new token (max_model_len ");
        el_error_num(err, room);
        el_error_append(err, ", KV pool of ");
        el_error_num(err, (long long)e->kv.n_blocks * e->options.block_size);
        el_error_append(err, " tokens)");
        return EL_ERR_CAPACITY;
    }
    return EL_OK;
}

/* The request's own checks, and its stop token ids inside the vocabulary: below
 * min_tokens they index the logits to mask them. */
static el_status check_request(const el_engine *e, const el_request *request, el_error *err)
{
    int i;
    el_status status = el_request_check(request, err);
    if (status != EL_OK) return status;
    for (i = 0; i < request->n_stop_token_ids; i++)
        if (request->stop_token_ids[i] < 0 || request->stop_token_ids[i] >= e->model->config.vocab_size) {
            el_fail(err, EL_ERR_ARGUMENT, "stop_token_ids: token id ", "", "");
            el_error_num(err, request->stop_token_ids[i]);
            el_error_append(err, " is outside the vocabulary of ");
            el_error_num(err, e->model->config.vocab_size);
            return EL_ERR_ARGUMENT;
        }
    if (request->constraint != NULL) {
        el_constraint c;
        if (request->beam_width > 0)
            return el_fail(err, EL_ERR_ARGUMENT, "structured outputs: not with beam search", "", "");
        if (request->constraint_len < 0) return el_fail(err, EL_ERR_ARGUMENT, "constraint: negative length", "", "");
        return el_constraint_parse(&c, request->constraint, (size_t)request->constraint_len, err);
    }
    return EL_OK;
}

/* A turn's tokens start at first_new (0 for a new sequence; a continued turn reports
 * prompt logprobs from its first new token on, the very first token has none). */
static void start_turn(el_engine *e, el_sequence *seq, const el_request *request, int first_new)
{
    seq->prompt_logprob_next = first_new > 1 ? first_new : 1;
    seq->request = *request;
    seq->n_prompt = seq->n_tokens;
    seq->n_cached_tokens = -1;
    seq->finish = EL_FINISH_NONE;
    seq->stop_kind = EL_STOP_NONE;
    seq->stop_value = -1;
    seq->text_len = seq->text_emitted = 0;
    seq->cum_logprob = 0.0f;
    seq->beam_ready = 0;
    seq->constraint_state = 0;
    seq->n_draft = 0;
    seq->draft_limit = e->options.speculative_tokens;
    el_utf8_stream_init(&seq->utf8);
    el_rng_seed(&seq->rng, request->sampling.seed);
    seq->arrival = e->scheduler.next_arrival++;
    seq->state = EL_SEQ_WAITING;
}

static int free_slots(const el_engine *e)
{
    int i, n = 0;
    for (i = 0; i < e->options.max_seqs; i++) n += e->seqs[i].state == EL_SEQ_FREE;
    return n;
}

/* The slots of a request's samples: the first is the sequence that prefills, the
 * others are reserved for its forks. */
static el_sequence *take_slots(el_engine *e, int n, const el_request *request)
{
    el_sequence *first = NULL;
    uint64_t group = e->next_group++;
    int i, sample = 0;
    for (i = 0; i < e->options.max_seqs && sample < n; i++) {
        el_sequence *seq = &e->seqs[i];
        if (seq->state != EL_SEQ_FREE) continue;
        if (first == NULL) first = seq;
        seq->parent = first->id;
        seq->group = group;
        seq->request = *request; /* a reserved slot, too, says whose it is and what for */
        seq->sample_index = sample++;
        seq->forks_pending = seq->fork_fresh = 0;
        seq->n_computed = seq->n_blocks = seq->n_preemptions = 0;
        if (seq != first) seq->state = EL_SEQ_RESERVED;
    }
    first->forks_pending = n - 1; /* a beam search forks as it goes (el_beam.c), not all at once */
    return first;
}

/* Sequences a request holds: one per sample, or 2 per beam (live and finished ones). */
int el_request_slots(const el_request *request)
{
    return request->beam_width > 0 ? 2 * request->beam_width : request->n;
}

int el_engine_add(el_engine *e, const int32_t *prompt, int n_prompt, const el_request *request, el_error *err)
{
    el_sequence *seq;
    int slots = el_request_slots(request);
    if (check_request(e, request, err) != EL_OK || check_tokens(e, prompt, n_prompt, 0, err) != EL_OK) return -1;
    if (slots > e->options.max_seqs) {
        if (request->beam_width > 0) {
            el_fail(err, EL_ERR_ARGUMENT, "beam_width: a beam search of width ", "", "");
            el_error_num(err, request->beam_width);
            el_error_append(err, " holds twice as many sequences, and the engine holds max_seqs ");
        } else {
            el_fail(err, EL_ERR_ARGUMENT, "n: ", "", "");
            el_error_num(err, request->n);
            el_error_append(err, " samples need as many sequences, and the engine holds max_seqs ");
        }
        el_error_num(err, e->options.max_seqs);
        return -1;
    }
    if (free_slots(e) < slots) {
        el_fail(err, EL_ERR_CAPACITY, "engine: all sequence slots are busy", "", "");
        return -1;
    }
    seq = take_slots(e, slots, request);
    if (request->beam_width > 0) seq->forks_pending = 0;
    el_memcpy(seq->tokens, prompt, sizeof(int32_t) * (size_t)n_prompt);
    seq->n_tokens = n_prompt;
    start_turn(e, seq, request, 0);
    return seq->id;
}

el_status el_engine_continue(el_engine *e, int seq_id, const int32_t *tokens, int n, const el_request *request,
                             el_error *err)
{
    el_sequence *seq;
    el_status status;
    if (seq_id < 0 || seq_id >= e->options.max_seqs || e->seqs[seq_id].state != EL_SEQ_FINISHED)
        return el_fail(err, EL_ERR_ARGUMENT, "continue: no finished sequence with that id", "", "");
    seq = &e->seqs[seq_id];
    if ((status = check_request(e, request, err)) != EL_OK) return status;
    if (request->n != 1) return el_fail(err, EL_ERR_ARGUMENT, "n: a continued sequence takes one sample", "", "");
    if ((status = check_tokens(e, tokens, n, seq->n_tokens, err)) != EL_OK) return status;
    el_memcpy(seq->tokens + seq->n_tokens, tokens, sizeof(int32_t) * (size_t)n);
    seq->n_tokens += n;
    start_turn(e, seq, request, seq->n_tokens - n);
    return EL_OK;
}

/* ------------------------------------------------------------ sampling and stopping */

static int is_stop_token(const el_request *r, int token)
{
    int i;
    for (i = 0; i < r->n_stop_token_ids; i++)
        if (r->stop_token_ids[i] == token) return 1;
    return 0;
}

/* A constrained sequence's mask (el_constraint.h); how many tokens it leaves. */
static int mask_constrained(el_engine *e, const el_sequence *seq, float *logits)
{
    el_constraint c;
    el_constraint_view(&c, seq->request.constraint); /* checked when the request was added */
    return el_constraint_mask(&c, seq->constraint_state, &e->tokenizer, seq->tokens[seq->n_tokens - 1], logits,
                              EL_MASKED_LOGIT, e->text_scratch, el_sequence_scratch_bytes(&e->tokenizer));
}

/* The masks before a draw: the constraint's, and below min_tokens EOS and the stop
 * tokens. Returns 0 when the constraint leaves no token. Under a constraint, the
 * constraint alone says where the text may end (min_tokens does not hold EOS back). */
static int mask_for_sampling(el_engine *e, const el_sequence *seq, float *logits)
{
    const el_request *r = &seq->request;
    int i;
    if (r->constraint != NULL && mask_constrained(e, seq, logits) == 0) return 0;
    if (el_sequence_output_len(seq) < r->min_tokens) {
        if (!r->ignore_eos && r->constraint == NULL) {
            logits[e->model->vocab.eos_id] = EL_MASKED_LOGIT;
            logits[e->model->vocab.bos_id] = EL_MASKED_LOGIT;
        }
        for (i = 0; i < r->n_stop_token_ids; i++) logits[r->stop_token_ids[i]] = EL_MASKED_LOGIT;
    }
    return 1;
}

/* The next token, or -1 when a constraint leaves none. */
static int sample_next(el_engine *e, el_sequence *seq, float *logits)
{
    const el_request *r = &seq->request;
    if (!mask_for_sampling(e, seq, logits)) return -1;
    return el_sample(&r->sampling, logits, seq->tokens, seq->n_prompt, seq->tokens + seq->n_prompt,
                     el_sequence_output_len(seq), &seq->rng, &e->sampler);
}

/* The token at the draft model's sampled draft i (the next one, tokens[n_tokens]): the
 * draft itself or the one drawn in its place by the rejection rule (el_speculate.h);
 * -1 when a constraint leaves none. p is what sample_next would draw from. */
static int check_sampled_draft(el_engine *e, el_sequence *seq, float *logits, int i)
{
    const el_request *r = &seq->request;
    const uint32_t *q;
    uint64_t p_total, q_total;
    if (!mask_for_sampling(e, seq, logits)) return -1;
    p_total = el_sampler_weights(&r->sampling, logits, seq->tokens, seq->n_prompt, seq->tokens + seq->n_prompt,
                                 el_sequence_output_len(seq), &e->sampler);
    if (p_total == 0) return 0; /* nothing left to draw from: el_sample's answer */
    q = el_draft_weights(e->draft, seq->id, i, &q_total);
    /* the sampler's counts are free scratch once its weights are made */
    return el_speculate_accept(e->sampler.weights, p_total, q, q_total, e->model->config.vocab_size,
                               seq->tokens[seq->n_tokens], &seq->rng, (uint32_t *)(void *)e->sampler.counts);
}

void el_engine_finish(el_sequence *seq, el_finish_reason reason)
{
    /* A character cut short by the end of the turn is shown as its bytes, not dropped;
     * after a stop string the text is cut before the string, so nothing follows it. */
    if (seq->stop_kind != EL_STOP_STRING) el_sequence_flush_text(seq);
    seq->finish = reason;
    seq->state = EL_SEQ_FINISHED;
}

static void append_token(el_engine *e, el_sequence *seq, int token)
{
    const el_request *r = &seq->request;
    int previous = seq->tokens[seq->n_tokens - 1];
    int end_of_text = token == e->model->vocab.eos_id || token == e->model->vocab.bos_id;
    seq->tokens[seq->n_tokens++] = token;
    e->tokens_generated++;
    if (r->constraint != NULL && !end_of_text) {
        el_constraint c;
        size_t n = el_token_text(&e->tokenizer, previous, token, e->text_scratch,
                                 el_sequence_scratch_bytes(&e->tokenizer));
        el_constraint_view(&c, r->constraint);
        seq->constraint_state = el_constraint_walk(&c, seq->constraint_state, e->text_scratch, n);
    }
    /* A generated BOS ends a sequence like EOS: models trained on BOS-separated
     * documents (llama2.c's convention) end a text by starting the next one. Under a
     * constraint, EOS comes only where the text is whole, and ends it. */
    if (end_of_text && (!r->ignore_eos || r->constraint != NULL)) {
        seq->stop_kind = EL_STOP_EOS;
        el_engine_finish(seq, EL_FINISH_STOP);
    } else if (is_stop_token(r, token)) {
        seq->stop_kind = EL_STOP_TOKEN;
        seq->stop_value = token;
        el_engine_finish(seq, EL_FINISH_STOP);
    } else if (el_sequence_add_text(seq, &e->tokenizer, previous, token, e->text_scratch)) {
        el_engine_finish(seq, EL_FINISH_STOP);
    } else if (el_sequence_output_len(seq) >= r->max_tokens || seq->n_tokens >= el_engine_sequence_limit(e)) {
        el_engine_finish(seq, EL_FINISH_LENGTH);
    }
}

void el_engine_event(el_event *ev, el_sequence *seq, int token)
{
    int ready = el_sequence_ready_text(seq);
    ev->seq_id = seq->id;
    ev->parent_id = seq->parent;
    ev->sample_index = seq->sample_index;
    ev->prompt_pos = 0;
    ev->logprobs = NULL;
    ev->token = token;
    ev->text = seq->text + seq->text_emitted;
    ev->text_len = ready > seq->text_emitted ? ready - seq->text_emitted : 0;
    if (ready > seq->text_emitted) seq->text_emitted = ready;
    ev->finished = seq->state == EL_SEQ_FINISHED;
    ev->finish = seq->finish;
    ev->stop_kind = seq->stop_kind;
    ev->stop_value = seq->stop_value;
}

/* ------------------------------------------------------------ forks */

void el_engine_fork(el_engine *e, const el_sequence *from, el_sequence *to, int share_blocks)
{
    int id = to->id, sample_index = to->sample_index, i;
    int32_t *tokens = to->tokens, *block_table = to->block_table;
    char *text = to->text;
    *to = *from; /* the plain fields; the arrays are the slot's own, filled below */
    to->id = id;
    to->sample_index = sample_index;
    to->tokens = tokens;
    to->block_table = block_table;
    to->text = text;
    to->forks_pending = 0;
    to->n_preemptions = 0;
    to->arrival = e->scheduler.next_arrival++;
    el_memcpy(to->tokens, from->tokens, sizeof(int32_t) * (size_t)from->n_tokens);
    el_memcpy(to->text, from->text, (size_t)from->text_len);
    to->n_blocks = 0;
    if (share_blocks) {
        for (i = 0; i < from->n_blocks; i++) {
            to->block_table[i] = from->block_table[i];
            el_kv_share(&e->kv, from->block_table[i]);
        }
        to->n_blocks = from->n_blocks;
    } else {
        to->n_computed = 0;
    }
}

static void free_reserved(el_engine *e, const el_sequence *parent)
{
    int i;
    for (i = 0; i < e->options.max_seqs; i++)
        if (e->seqs[i].state == EL_SEQ_RESERVED && e->seqs[i].parent == parent->id) e->seqs[i].state = EL_SEQ_FREE;
}

/* ------------------------------------------------------------ the step */

int el_engine_max_events(const el_engine *e) { return e->options.max_seqs * (2 + e->options.speculative_tokens); }

/* Event n, or NULL past the caller's array (then the step reports no more; nothing
 * else changes). logprob_entries[n] goes with it: max_events is capped to their count. */
static el_event *event_at(el_event *events, int n, int max_events) { return n < max_events ? &events[n] : NULL; }

/* Sample seq's next token from its logits row (`raw`: the same row as the model gave
 * it, for the logprobs; `shift` its log-softmax shift) and report it in ev. draft >= 0:
 * the row checks the draft model's sampled draft of that index (check_sampled_draft). */
static int sample_row(el_engine *e, el_sequence *seq, float *logits, const float *raw, float shift, el_event *ev,
                      el_logprob_entry *entry, int draft)
{
    int vocab = e->model->config.vocab_size, token = -1;
    /* NaN or Inf logits (activations that overflowed, or NaN weights nothing scanned):
     * any token drawn from them would be garbage, so the sequence ends with an error */
    if (!el_logits_finite(logits, vocab)) {
        el_engine_finish(seq, EL_FINISH_ERROR);
    } else {
        token = draft >= 0 ? check_sampled_draft(e, seq, logits, draft) : sample_next(e, seq, logits);
        if (token < 0) { /* a constraint the vocabulary cannot continue */
            seq->stop_kind = EL_STOP_CONSTRAINT;
            el_engine_finish(seq, EL_FINISH_STOP);
        } else {
            if (ev != NULL && seq->request.logprobs >= 0)
                el_logprob_fill(entry, raw, vocab, shift, token, seq->request.logprobs);
            append_token(e, seq, token);
        }
    }
    if (ev != NULL) {
        el_engine_event(ev, seq, token);
        if (token >= 0 && seq->request.logprobs >= 0) ev->logprobs = entry;
    }
    return token;
}

/* A logits row of a prompt position: the logprob of the prompt token after it. */
static void report_prompt_logprob(el_engine *e, el_sequence *seq, int pos, const float *logits, el_event *ev,
                                  el_logprob_entry *entry)
{
    int vocab = e->model->config.vocab_size;
    seq->prompt_logprob_next = pos + 2;
    if (!el_logits_finite(logits, vocab)) {
        el_engine_finish(seq, EL_FINISH_ERROR);
        if (ev != NULL) el_engine_event(ev, seq, -1);
        return;
    }
    if (ev == NULL) return;
    el_logprob_fill(entry, logits, vocab, el_logprob_shift(logits, vocab), seq->tokens[pos + 1],
                    seq->request.prompt_logprobs);
    el_engine_event(ev, seq, seq->tokens[pos + 1]);
    ev->prompt_pos = pos + 1;
    ev->text_len = 0;
    ev->logprobs = entry;
}

/* The row that samples seq's next token, and at a request's first token its forks:
 * each samples from the same logits, reported after it. Returns the event count.
 * The sampler changes the row it is given, so forks and logprobs keep the model's row
 * in arena scratch for the step (the planner counts it): a plain decode step keeps
 * nothing and touches no more memory than before. */
static int sample_with_forks(el_engine *e, el_sequence *seq, float *logits, el_event *events, int n_events,
                             int max_events)
{
    int vocab = e->model->config.vocab_size, i, forked = 0;
    size_t mark = el_arena_mark(e->arena);
    float shift = 0.0f, *raw = NULL;
    if (seq->forks_pending > 0 || seq->request.logprobs >= 0) {
        raw = (float *)el_arena_alloc(e->arena, sizeof(float) * (size_t)vocab, 16);
        if (raw == NULL) { /* an arena made smaller than the plan: the request cannot go on */
            el_engine_finish(seq, EL_FINISH_ABORT);
            free_reserved(e, seq);
            seq->forks_pending = 0;
            if (n_events < max_events) el_engine_event(&events[n_events++], seq, -1);
            return n_events;
        }
        el_memcpy(raw, logits, sizeof(float) * (size_t)vocab);
        if (seq->request.logprobs >= 0) shift = el_logprob_shift(logits, vocab);
    }
    /* the forks first, while the parent holds just the prompt: each is a copy of it */
    for (i = 0; i < e->options.max_seqs && seq->forks_pending > 0; i++) {
        el_sequence *child = &e->seqs[i];
        if (child->state != EL_SEQ_RESERVED || child->parent != seq->id) continue;
        el_engine_fork(e, seq, child, 1);
        el_rng_seed(&child->rng, seq->request.sampling.seed + (uint64_t)child->sample_index);
        child->fork_fresh = 1;
        seq->forks_pending--;
        forked++;
    }
    sample_row(e, seq, logits, raw, shift, event_at(events, n_events, max_events),
               &e->logprob_entries[n_events], -1);
    n_events += n_events < max_events;
    for (i = 0; i < e->options.max_seqs && forked > 0; i++) { /* a decode step forks nothing */
        el_sequence *child = &e->seqs[i];
        if (!child->fork_fresh || child->parent != seq->id) continue;
        forked--;
        child->fork_fresh = 0;
        el_memcpy(logits, raw, sizeof(float) * (size_t)vocab);
        sample_row(e, child, logits, raw, shift, event_at(events, n_events, max_events),
                   &e->logprob_entries[n_events], -1);
        n_events += n_events < max_events;
    }
    el_arena_reset(e->arena, mark);
    return n_events;
}

/* A safety net: waiting sequences that cannot be admitted while nothing runs are
 * aborted rather than left to wait forever. The scheduler takes blocks back from
 * finished and waiting sequences and every admitted prompt fits the pool, so with
 * nothing running admission always succeeds; this should never fire. */
static int abort_stuck(el_engine *e, el_event *events, int max_events)
{
    int i, n = 0;
    for (i = 0; i < e->options.max_seqs && n < max_events; i++) {
        el_sequence *seq = &e->seqs[i];
        if (seq->state != EL_SEQ_WAITING) continue;
        el_engine_finish(seq, EL_FINISH_ABORT);
        el_engine_event(&events[n++], seq, -1);
    }
    return n;
}

/* Positions below n_computed now hold the right keys and values; the blocks that
 * became full are registered for prefix sharing. */
static void mark_computed(el_engine *e, el_sequence *seq, int n_computed)
{
    int before = seq->n_computed;
    seq->n_computed = n_computed;
    if (n_computed / e->kv.block_size > before / e->kv.block_size)
        el_scheduler_register_blocks(&e->scheduler, seq, before);
}

/* ------------------------------------------------------------ speculative decoding */

/* Whether seq may verify drafts: a plain decoding sample (el_speculate.h). */
static int may_speculate(const el_engine *e, const el_sequence *seq)
{
    return e->options.speculative_tokens > 0 && seq->state == EL_SEQ_RUNNING && seq->n_computed == seq->n_tokens - 1 &&
           seq->request.beam_width == 0 && seq->request.logprobs < 0 && seq->forks_pending == 0;
}

/* The most drafts seq may propose: its limit, and what it may still generate less the
 * token the last row gives. */
static int draft_room(const el_engine *e, const el_sequence *seq)
{
    int k = seq->draft_limit, room = seq->request.max_tokens - el_sequence_output_len(seq) - 1;
    int limit = el_engine_sequence_limit(e) - seq->n_tokens - 1;
    if (room > limit) room = limit;
    return k < room ? k : room;
}

/* After a step: drafts for every sequence that decodes next, n-grams or the draft
 * model's (all such sequences in its passes together). */
static void propose_drafts(el_engine *e)
{
    int i, k, n = 0;
    for (i = 0; i < e->options.max_seqs; i++) {
        el_sequence *seq = &e->seqs[i];
        seq->n_draft = 0;
        if (!may_speculate(e, seq) || (k = draft_room(e, seq)) <= 0) continue;
        if (e->draft == NULL) {
            seq->n_draft = el_speculate_ngram(seq->tokens, seq->n_tokens, k, e->options.prompt_lookup_max,
                                              e->options.prompt_lookup_min, seq->tokens + seq->n_tokens);
        } else {
            e->draft->batch[n] = seq;
            e->draft->batch_k[n++] = k;
        }
    }
    if (n > 0) el_draft_propose(e->draft, n, &e->forward.parallel, &e->sampler);
}

/* Row 0 of seq's k + 1 logits rows is its next token's; row i + 1 was computed for draft
 * i. Sample row by row while each sampled token is the draft the next row assumed; every
 * token sampled is reported. Keys and values of the accepted drafts become computed; the
 * blocks past the sequence's end (rejected drafts only) are given back. */
static int verify_drafts(el_engine *e, el_sequence *seq, float *logits, el_event *events, int n_events,
                         int max_events, int reserve)
{
    int vocab = e->model->config.vocab_size, n_draft = seq->n_draft, i, accepted = 0;
    /* a draft model's sampled drafts go by the rejection rule; greedy ones, and n-grams
     * (one token for sure), by sampling the row and comparing (el_speculate.h) */
    int by_rule = e->draft != NULL && seq->request.sampling.temperature >= EL_GREEDY_TEMPERATURE;
    seq->n_draft = 0;
    /* a draft is taken only while its token's event has room beside the `reserve`
     * events the step's other sequences may still report: taking fewer drafts never
     * changes a token, losing an event would lose text */
    for (i = 0; i <= n_draft && (i == 0 || n_events + reserve < max_events); i++) {
        int draft = i < n_draft ? seq->tokens[seq->n_tokens] : -1, token;
        token = sample_row(e, seq, logits + (size_t)i * (size_t)vocab, NULL, 0.0f,
                           event_at(events, n_events, max_events), &e->logprob_entries[n_events],
                           by_rule && draft >= 0 ? i : -1);
        n_events += n_events < max_events;
        if (token < 0 || token != draft || seq->state != EL_SEQ_RUNNING) break;
        e->draft_accepted++;
        accepted++;
        mark_computed(e, seq, seq->n_computed + 1); /* the draft's keys and values were the right ones */
    }
    el_scheduler_trim_blocks(&e->scheduler, seq);
    /* the next step proposes one draft more than this one got accepted: drafts that keep
     * failing cost a row each, and on a model bound by arithmetic rows are not free */
    seq->draft_limit = accepted + 1 < e->options.speculative_tokens ? accepted + 1 : e->options.speculative_tokens;
    return n_events;
}

/* ------------------------------------------------------------ the step */

int el_engine_step(el_engine *e, el_event *events, int max_events)
{
    int n_rows, r, n_logits, logit = 0, n_events = 0, vocab = e->model->config.vocab_size, samplers = 0;
    if (max_events > el_engine_max_events(e)) max_events = el_engine_max_events(e);
    n_rows = el_schedule(&e->scheduler, e->rows, e->row_seq);
    if (n_rows == 0) return el_engine_pending(e) ? abort_stuck(e, events, max_events) : 0;
    n_logits = el_forward(&e->forward, e->model, &e->kv, e->rows, n_rows);
    (void)n_logits;
    for (r = 0; r < n_rows; r++) {
        el_sequence *seq = &e->seqs[e->row_seq[r]];
        if (e->rows[r].pos >= seq->n_tokens) { /* a draft's row: computed once it is accepted */
            e->draft_tokens++;
            continue;
        }
        if (e->rows[r].pos < seq->n_prompt) e->prompt_tokens_computed++;
        mark_computed(e, seq, e->rows[r].pos + 1);
    }
    for (r = 0; r < n_rows; r++) /* the rows that sample: one event each, at least */
        samplers += e->rows[r].want_logits && e->rows[r].pos == e->seqs[e->row_seq[r]].n_tokens - 1;
    for (r = 0; r < n_rows; r++) {
        el_sequence *seq = &e->seqs[e->row_seq[r]];
        float *logits;
        if (!e->rows[r].want_logits) continue;
        logits = e->forward.logits + (size_t)logit++ * (size_t)vocab;
        samplers -= e->rows[r].pos == seq->n_tokens - 1;
        if (seq->state != EL_SEQ_RUNNING) continue; /* ended by an earlier row of this step */
        if (seq->n_draft > 0) { /* its draft rows follow this one: verified together */
            n_events = verify_drafts(e, seq, logits, events, n_events, max_events, samplers);
            while (r + 1 < n_rows && e->row_seq[r + 1] == e->row_seq[r]) logit += e->rows[++r].want_logits;
            continue;
        }
        if (e->rows[r].pos < seq->n_tokens - 1) {
            report_prompt_logprob(e, seq, e->rows[r].pos, logits, event_at(events, n_events, max_events),
                                  &e->logprob_entries[n_events]);
            n_events += n_events < max_events;
        } else if (seq->request.beam_width > 0) {
            el_beam_take_candidates(e, seq, logits);
        } else {
            n_events = sample_with_forks(e, seq, logits, events, n_events, max_events);
        }
    }
    n_events = el_beam_advance(e, events, n_events, max_events);
    propose_drafts(e);
    e->steps++;
    e->rows_run += n_rows;
    return n_events;
}

/* ------------------------------------------------------------ bookkeeping */

void el_engine_abort(el_engine *e, int seq_id)
{
    el_sequence *seq;
    if (seq_id < 0 || seq_id >= e->options.max_seqs) return;
    seq = &e->seqs[seq_id];
    if (el_beam_search_running(e, seq)) { /* the whole search ends: nothing it found is reported */
        el_beam_free_group(e, seq_id);
        return;
    }
    if (seq->state == EL_SEQ_WAITING || seq->state == EL_SEQ_RUNNING) el_engine_finish(seq, EL_FINISH_ABORT);
    if (seq->forks_pending > 0) { /* the samples it never forked end with it */
        free_reserved(e, seq);
        seq->forks_pending = 0;
    }
}

void el_engine_release(el_engine *e, int seq_id)
{
    el_sequence *seq;
    if (seq_id < 0 || seq_id >= e->options.max_seqs) return;
    seq = &e->seqs[seq_id];
    if (el_beam_search_running(e, seq)) {
        el_beam_free_group(e, seq_id);
        return;
    }
    if (seq->state == EL_SEQ_RESERVED) return; /* its parent's, not the caller's */
    el_scheduler_release_blocks(&e->scheduler, seq);
    free_reserved(e, seq);
    seq->forks_pending = 0;
    seq->state = EL_SEQ_FREE;
}

int el_engine_pending(const el_engine *e)
{
    int i, n = 0;
    for (i = 0; i < e->options.max_seqs; i++)
        n += e->seqs[i].state == EL_SEQ_WAITING || e->seqs[i].state == EL_SEQ_RUNNING;
    return n;
}

const el_sequence *el_engine_sequence(const el_engine *e, int seq_id)
{
    return seq_id >= 0 && seq_id < e->options.max_seqs ? &e->seqs[seq_id] : NULL;
}

void el_engine_stats_get(const el_engine *e, el_engine_stats *s)
{
    el_memset(s, 0, sizeof *s);
    s->prompt_tokens_computed = e->prompt_tokens_computed;
    s->tokens_generated = e->tokens_generated;
    s->steps = e->steps;
    s->rows = e->rows_run;
    s->blocks_total = e->kv.n_blocks;
    s->blocks_used = el_kv_blocks_used(&e->kv);
    s->blocks_cached = el_kv_blocks_cached(&e->kv);
    s->blocks_high_water = e->kv.used_high_water;
    s->prefix_queries = e->kv.prefix_queries;
    s->prefix_hits = e->kv.prefix_hits;
    s->preemptions = e->scheduler.preemptions;
    s->arena_used = e->arena->used;
    s->arena_high_water = e->arena->high_water;
    s->arena_size = e->arena->size;
    s->blocks_copied = e->kv.copies;
    s->draft_tokens = e->draft_tokens;
    s->draft_accepted = e->draft_accepted;
    s->draft_rows = e->draft != NULL ? e->draft->rows_run : 0;
}

static el_status block_books_off(el_error *err, const char *what, int block)
{
    el_fail(err, EL_ERR_FORMAT, "KV blocks: ", what, " at block ");
    el_error_num(err, block);
    return EL_ERR_FORMAT;
}

el_status el_engine_check_blocks(el_engine *e, el_error *err)
{
    const el_kv_cache *kv = &e->kv;
    size_t mark = el_arena_mark(e->arena);
    int32_t *held = (int32_t *)el_arena_alloc(e->arena, sizeof(int32_t) * (size_t)kv->n_blocks, 4);
    int i, b, on_free_list = 0, unheld = 0;
    el_status status = EL_OK;
    if (held == NULL) return el_fail(err, EL_ERR_NO_MEMORY, "KV blocks: no scratch to check them", "", "");
    for (b = 0; b < kv->n_blocks; b++) held[b] = 0;
    for (i = 0; i < e->options.max_seqs; i++)
        for (b = 0; b < e->seqs[i].n_blocks; b++) held[e->seqs[i].block_table[b]]++;
    for (b = kv->free_head; b >= 0 && status == EL_OK; b = kv->free_next[b]) {
        if (held[b] != 0 || kv->ref_count[b] != 0) status = block_books_off(err, "a free block is held", b);
        on_free_list++;
    }
    for (b = 0; b < kv->n_blocks && status == EL_OK; b++) {
        if (held[b] != kv->ref_count[b]) status = block_books_off(err, "a reference count differs from its holders", b);
        unheld += held[b] == 0;
    }
    if (status == EL_OK && (on_free_list != kv->n_free || unheld != on_free_list))
        status = block_books_off(err, "the free list is not the blocks nobody holds", on_free_list);
    el_arena_reset(e->arena, mark);
    return status;
}

el_status el_engine_set_draft(el_engine *e, el_draft *draft, el_error *err)
{
    if (e->options.speculative_tokens < 1)
        return el_fail(err, EL_ERR_ARGUMENT, "draft model: speculative_tokens must be 1 or more", "", "");
    if (draft->max_seqs != e->options.max_seqs || draft->max_model_len != e->options.max_model_len ||
        draft->max_drafts < e->options.speculative_tokens || draft->max_rows < 1)
        return el_fail(err, EL_ERR_ARGUMENT, "draft model: set up for other engine options", "", "");
    if (el_engine_pending(e) > 0)
        return el_fail(err, EL_ERR_ARGUMENT, "draft model: set it before the first request", "", "");
    e->draft = draft;
    return EL_OK;
}

el_status el_engine_set_parallel(el_engine *e, el_parallel_run_fn run, void *pool, int n_workers, el_error *err)
{
    if (run != NULL && (n_workers < 1 || n_workers > e->options.threads)) {
        el_fail(err, EL_ERR_ARGUMENT, "threads: the engine was set up for at most ", "", "");
        el_error_num(err, e->options.threads);
        el_error_append(err, " workers");
        return EL_ERR_ARGUMENT;
    }
    e->forward.parallel.run = run;
    e->forward.parallel.pool = pool;
    e->forward.parallel.n_workers = run != NULL ? n_workers : 1;
    return EL_OK;
}
