/* el_runtime.c: opening a model inside one memory block, and the flat API. */
#include "el_runtime.h"
#include "el_constraint.h"

const char *el_runtime_version(void) { return EL_RUNTIME_VERSION; }

el_runtime *el_runtime_open(void *memory, size_t memory_size, const uint8_t *model, size_t model_size,
                            const el_engine_options *options, el_error *err)
{
    el_arena arena;
    el_runtime *rt;
    el_arena_init(&arena, memory, memory_size);
    rt = (el_runtime *)el_arena_alloc(&arena, sizeof(el_runtime), 16);
    if (rt == NULL) {
        el_fail(err, EL_ERR_NO_MEMORY, "runtime: the memory block is too small", "", "");
        return NULL;
    }
    rt->arena = arena;
    if (el_model_load(&rt->model, model, model_size, &rt->arena, err) != EL_OK) return NULL;
    if (options != NULL && options->check_values && el_model_check_values(&rt->model, err) != EL_OK) return NULL;
    if (el_engine_init(&rt->engine, &rt->model, options, &rt->arena, err) != EL_OK) return NULL;
    /* Last, so an open that fails leaves the bytes as the file has them (a caller may
     * retry with more memory). The caller vouched that they are writable, so dropping
     * const is sound; opening them again needs the file's bytes again (a fresh mapping). */
    if (options != NULL && options->weights_writable) el_arrange_weights(&rt->model, (uint8_t *)(uintptr_t)model);
    rt->scratch_mark = el_arena_mark(&rt->arena);
    return rt;
}

el_status el_runtime_set_draft(el_runtime *rt, void *memory, size_t memory_size, const uint8_t *model,
                               size_t model_size, el_error *err)
{
    const el_engine_options *o = &rt->engine.options;
    el_arena arena;
    el_model *draft_model;
    el_draft *draft;
    el_status status;
    el_arena_init(&arena, memory, memory_size);
    draft_model = (el_model *)el_arena_alloc(&arena, sizeof(el_model), 16);
    draft = (el_draft *)el_arena_alloc(&arena, sizeof(el_draft), 16);
    if (draft_model == NULL || draft == NULL)
        return el_fail(err, EL_ERR_NO_MEMORY, "draft model: the memory block is too small", "", "");
    if ((status = el_model_load(draft_model, model, model_size, &arena, err)) != EL_OK) return status;
    if (o->check_values && (status = el_model_check_values(draft_model, err)) != EL_OK) return status;
    status = el_draft_init(draft, draft_model, &rt->model, o->max_seqs, o->max_model_len, o->block_size, o->kv_dtype,
                           o->max_batch_tokens, o->speculative_tokens, o->threads, &arena, err);
    if (status != EL_OK || (status = el_engine_set_draft(&rt->engine, draft, err)) != EL_OK) return status;
    if (o->weights_writable) el_arrange_weights(draft_model, (uint8_t *)(uintptr_t)model); /* as el_runtime_open */
    return EL_OK;
}

const el_config *el_runtime_config(const el_runtime *rt) { return &rt->model.config; }

int el_runtime_tokenize(el_runtime *rt, const char *text, int len, int add_bos, int32_t *out, int capacity,
                        el_error *err)
{
    /* the arena above the engine's share is free scratch */
    return el_tokenize(&rt->engine.tokenizer, text, (size_t)len, add_bos, out, capacity, &rt->arena, err);
}

int el_runtime_token_text(const el_runtime *rt, int previous, int token, char *out, int capacity)
{
    if (token < 0 || token >= rt->model.config.vocab_size || capacity < 0) return 0;
    return (int)el_token_text(&rt->engine.tokenizer, previous, token, out, (size_t)capacity);
}

int el_runtime_allowed_tokens(el_runtime *rt, const uint8_t *constraint, int len, int state, int previous,
                              uint8_t *allowed, el_error *err)
{
    el_engine *e = &rt->engine;
    el_constraint c;
    int n_vocab = rt->model.config.vocab_size, t, kept;
    float *logits = e->sampler.probs; /* scratch of n_vocab floats, free between steps */
    if (len < 0 || el_constraint_parse(&c, constraint, (size_t)len, err) != EL_OK) return -1;
    if (state < 0 || state >= c.n_states) {
        el_fail(err, EL_ERR_ARGUMENT, "constraint: no such state", "", "");
        return -1;
    }
    for (t = 0; t < n_vocab; t++) logits[t] = 0.0f;
    kept = el_constraint_mask(&c, state, &e->tokenizer, previous, logits, -1.0f, e->text_scratch,
                              el_sequence_scratch_bytes(&e->tokenizer));
    for (t = 0; t < n_vocab; t++) allowed[t] = logits[t] == 0.0f;
    return kept;
}

int el_runtime_add(el_runtime *rt, const int32_t *prompt, int n, const el_request *request, el_error *err)
{
    return el_engine_add(&rt->engine, prompt, n, request, err);
}

el_status el_runtime_continue(el_runtime *rt, int seq_id, const int32_t *tokens, int n, const el_request *request,
                              el_error *err)
{
    return el_engine_continue(&rt->engine, seq_id, tokens, n, request, err);
}

int el_runtime_step(el_runtime *rt, el_event *events, int max_events)
{
    return el_engine_step(&rt->engine, events, max_events);
}

el_status el_runtime_check_blocks(el_runtime *rt, el_error *err) { return el_engine_check_blocks(&rt->engine, err); }

int el_runtime_max_events(const el_runtime *rt) { return el_engine_max_events(&rt->engine); }

int el_runtime_pending(const el_runtime *rt) { return el_engine_pending(&rt->engine); }

int el_runtime_tokens(const el_runtime *rt, int seq_id, const int32_t **tokens, int *n_prompt, int *n_cached)
{
    const el_sequence *seq = el_engine_sequence(&rt->engine, seq_id);
    if (seq == NULL || seq->state == EL_SEQ_FREE) return -1;
    *tokens = seq->tokens;
    *n_prompt = seq->n_prompt;
    *n_cached = seq->n_cached_tokens < 0 ? 0 : seq->n_cached_tokens;
    return seq->n_tokens;
}

void el_runtime_abort(el_runtime *rt, int seq_id) { el_engine_abort(&rt->engine, seq_id); }
void el_runtime_release(el_runtime *rt, int seq_id) { el_engine_release(&rt->engine, seq_id); }
void el_runtime_stats(const el_runtime *rt, el_engine_stats *stats) { el_engine_stats_get(&rt->engine, stats); }

el_status el_runtime_set_parallel(el_runtime *rt, el_parallel_run_fn run, void *pool, int n_workers, el_error *err)
{
    return el_engine_set_parallel(&rt->engine, run, pool, n_workers, err);
}

el_status el_runtime_logits(el_runtime *rt, const int32_t *tokens, int n, float *out, el_error *err)
{
    el_engine *e = &rt->engine;
    int vocab = rt->model.config.vocab_size, bs = e->kv.block_size, n_blocks = (n + bs - 1) / bs, i, r;
    /* as many positions per forward pass as there is room for their logits */
    int chunk = e->forward.max_rows < e->forward.max_logits ? e->forward.max_rows : e->forward.max_logits;
    int32_t *table;
    el_status status = EL_OK;
    if (n < 1 || n > e->options.max_model_len) {
        el_fail(err, EL_ERR_ARGUMENT, "logits: need 1 to max_model_len (", "", "");
        el_error_num(err, e->options.max_model_len);
        el_error_append(err, ") tokens");
        return EL_ERR_ARGUMENT;
    }
    /* the block table lives in the arena above the engine's share, given back below */
    table = (int32_t *)el_arena_alloc(&rt->arena, sizeof(int32_t) * (size_t)n_blocks, 4);
    if (table == NULL) return el_fail(err, EL_ERR_NO_MEMORY, "logits: the arena is too small", "", "");
    for (i = 0; i < n_blocks; i++) {
        table[i] = el_kv_allocate(&e->kv);
        if (table[i] < 0) status = el_fail(err, EL_ERR_CAPACITY, "logits: the KV pool is too small", "", "");
    }
    for (i = 0; i < n && status == EL_OK; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab)
            status = el_fail(err, EL_ERR_ARGUMENT, "logits: token id outside the vocabulary", "", "");
    /* The engine's row buffer is free between steps. Rows of one sequence in position
     * order may share a pass, and each row's result does not depend on the batch. */
    for (i = 0; i < n && status == EL_OK; i += chunk) {
        int count = n - i < chunk ? n - i : chunk;
        for (r = 0; r < count; r++) {
            e->rows[r].token = tokens[i + r];
            e->rows[r].pos = i + r;
            e->rows[r].block_table = table;
            e->rows[r].want_logits = 1;
        }
        el_forward(&e->forward, &rt->model, &e->kv, e->rows, count);
        el_memcpy(out + (size_t)i * (size_t)vocab, e->forward.logits, sizeof(float) * (size_t)vocab * (size_t)count);
    }
    for (i = 0; i < n_blocks; i++) el_kv_release(&e->kv, table[i]);
    el_arena_reset(&rt->arena, rt->scratch_mark);
    return status;
}

/* ------------------------------------------------------------ chat */

#define EL_SPACE_PIECE "\xe2\x96\x81" /* U+2581, sentencepiece's space */

el_chat_template el_runtime_chat_template(const el_runtime *rt) { return el_chat_template_for(&rt->model); }

static int piece_id(const el_runtime *rt, const char *piece)
{
    return el_tokenizer_find(&rt->engine.tokenizer, piece, el_strlen(piece));
}

/* "<|im_end|>" as one token, or -1 when the vocabulary spells it out in pieces. */
static int im_end_token(const el_runtime *rt) { return piece_id(rt, "<|im_end|>"); }

static int has_stop_string(const el_request *r, const char *s, int n)
{
    int i;
    for (i = 0; i < r->n_stop; i++)
        if (r->stop_len[i] == n && el_memcmp(r->stop[i], s, (size_t)n) == 0) return 1;
    return 0;
}

static int has_stop_token(const el_request *r, int token)
{
    int i;
    for (i = 0; i < r->n_stop_token_ids; i++)
        if (r->stop_token_ids[i] == token) return 1;
    return 0;
}

el_status el_runtime_chat_request(const el_runtime *rt, int tmpl, el_request *r, el_error *err)
{
    const char *stop = el_chat_stop_string(tmpl);
    int n = (int)el_strlen(stop), token = tmpl == EL_CHAT_CHATML ? im_end_token(rt) : -1;
    if (el_chat_template_name(tmpl)[0] == '\0') return el_fail(err, EL_ERR_ARGUMENT, "chat: unknown template", "", "");
    if (n > 0 && !has_stop_string(r, stop, n)) {
        if (r->n_stop < 0 || r->n_stop >= EL_MAX_STOP_STRINGS)
            return el_fail(err, EL_ERR_ARGUMENT, "chat: no room for the template's stop string", "", "");
        el_memcpy(r->stop[r->n_stop], stop, (size_t)n + 1);
        r->stop_len[r->n_stop++] = n;
    }
    if (token >= 0 && !has_stop_token(r, token)) {
        if (r->n_stop_token_ids < 0 || r->n_stop_token_ids >= EL_MAX_STOP_TOKENS)
            return el_fail(err, EL_ERR_ARGUMENT, "chat: no room for the template's stop token", "", "");
        r->stop_token_ids[r->n_stop_token_ids++] = token;
    }
    return EL_OK;
}

/* Tokens of chat text being built: text waits in `text` until a special token (or
 * the end) flushes it through the tokenizer, so neighbouring parts are tokenized
 * together as they would be in one string. */
typedef struct {
    el_runtime *rt;
    int tmpl;
    char *text;
    int text_len, text_capacity;
    int32_t *out;
    int n, capacity;
    int mid;       /* text or a marker precedes what comes next (not the start, not BOS) */
    int failed;
    el_error *err;
} chat_tokens;

static void chat_fail(chat_tokens *b, el_status status, const char *message)
{
    if (!b->failed) el_fail(b->err, status, "chat: ", message, "");
    b->failed = 1;
}

static void emit_token(chat_tokens *b, int token)
{
    if (b->failed) return;
    if (token < 0) {
        chat_fail(b, EL_ERR_UNSUPPORTED, "the vocabulary lacks a token the template needs");
        return;
    }
    if (b->n >= b->capacity) {
        chat_fail(b, EL_ERR_ARGUMENT, "the token buffer is too small");
        return;
    }
    b->out[b->n++] = token;
    b->mid = token != b->rt->model.vocab.bos_id; /* after BOS, text starts as a sequence does */
}

/* The tokenizer puts a space in front of every string, as sentencepiece does. Inside
 * a sequence that space must come from the text: a leading space is handed over to
 * it, and where the text has none a lone space token is dropped. */
static void emit_segment(chat_tokens *b, const char *text, int len)
{
    int leading_space = len > 1 && text[0] == ' ', n, space = piece_id(b->rt, EL_SPACE_PIECE);
    if (b->failed || len <= 0) return;
    if (b->mid && leading_space) text++, len--;
    n = el_tokenize(&b->rt->engine.tokenizer, text, (size_t)len, 0, b->out + b->n, b->capacity - b->n,
                    &b->rt->arena, b->err);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if (b->mid && !leading_space && n > 1 && space >= 0 && b->out[b->n] == space) {
        el_memcpy(b->out + b->n, b->out + b->n + 1, sizeof(int32_t) * (size_t)(n - 1));
        n--;
    }
    b->n += n;
    b->mid = 1;
}

/* ChatML's markers, where the vocabulary has them as tokens, become those tokens. */
static int marker_at(const chat_tokens *b, int i, int *token)
{
    static const char *const markers[] = {"<|im_start|>", "<|im_end|>"};
    int k, m;
    if (b->tmpl != EL_CHAT_CHATML || b->text[i] != '<') return 0;
    for (k = 0; k < 2; k++) {
        m = (int)el_strlen(markers[k]);
        if (i + m > b->text_len || el_memcmp(b->text + i, markers[k], (size_t)m) != 0) continue;
        *token = piece_id(b->rt, markers[k]);
        if (*token >= 0) return m;
    }
    return 0;
}

static void flush(chat_tokens *b)
{
    int start = 0, i = 0, m, token;
    while (i < b->text_len) {
        if ((m = marker_at(b, i, &token)) == 0) {
            i++;
            continue;
        }
        emit_segment(b, b->text + start, i - start);
        emit_token(b, token);
        start = i = i + m;
    }
    emit_segment(b, b->text + start, b->text_len - start);
    b->text_len = 0;
}

static void add_text(chat_tokens *b, const char *text)
{
    int n = (int)el_strlen(text);
    if (b->failed) return;
    if (n > b->text_capacity - b->text_len) {
        chat_fail(b, EL_ERR_NO_MEMORY, "the text is too long");
        return;
    }
    el_memcpy(b->text + b->text_len, text, (size_t)n);
    b->text_len += n;
}

static void add_message(chat_tokens *b, int previous, int role, const char *content, int len)
{
    int specials = el_chat_message_specials(b->tmpl, previous, role), n;
    if (b->failed) return;
    if (specials & EL_CHAT_BOS_BEFORE) {
        flush(b);
        emit_token(b, b->rt->model.vocab.bos_id);
    }
    n = el_chat_message(b->tmpl, previous, role, content, len, b->text + b->text_len,
                        b->text_capacity - b->text_len);
    if (n < 0) {
        chat_fail(b, EL_ERR_ARGUMENT, "bad template or role, or the text is too long");
        return;
    }
    b->text_len += n;
    if (specials & EL_CHAT_EOS_AFTER) {
        flush(b);
        emit_token(b, b->rt->model.vocab.eos_id);
    }
}

/* Scratch for the text above the engine's share of the arena; given back by chat_end. */
static int chat_begin(chat_tokens *b, el_runtime *rt, int tmpl, int mid, long long text_bytes, int32_t *out,
                      int capacity, el_error *err)
{
    el_memset(b, 0, sizeof *b);
    b->rt = rt;
    b->tmpl = tmpl;
    b->mid = mid;
    b->out = out;
    b->capacity = capacity < 0 ? 0 : capacity;
    b->err = err;
    if (el_chat_template_name(tmpl)[0] == '\0') {
        el_fail(err, EL_ERR_ARGUMENT, "chat: unknown template", "", "");
        return 0;
    }
    if (text_bytes < 0 || text_bytes > 0x1FFFFFFF) {
        el_fail(err, EL_ERR_ARGUMENT, "chat: bad text length", "", "");
        return 0;
    }
    b->text_capacity = (int)text_bytes + 128; /* the template's own text is under 64 bytes a part */
    b->text = (char *)el_arena_alloc(&rt->arena, (size_t)b->text_capacity, 1);
    if (b->text == NULL) el_fail(err, EL_ERR_NO_MEMORY, "chat: the arena has no room for the text", "", "");
    return b->text != NULL;
}

static int chat_end(chat_tokens *b, size_t mark)
{
    flush(b);
    el_arena_reset(&b->rt->arena, mark);
    return b->failed ? -1 : b->n;
}

int el_runtime_chat_message(el_runtime *rt, int tmpl, int previous, int role, const char *content, int len,
                            int32_t *out, int capacity, el_error *err)
{
    size_t mark = el_arena_mark(&rt->arena);
    chat_tokens b;
    if (!chat_begin(&b, rt, tmpl, previous != EL_CHAT_NONE, len, out, capacity, err)) return -1;
    add_message(&b, previous, role, content, len);
    return chat_end(&b, mark);
}

/* Whether the finished reply stopped at the template's end marker, which then is in
 * its tokens already. */
static int reply_closed(const el_runtime *rt, int tmpl, const el_sequence *seq)
{
    const char *end = el_chat_stop_string(tmpl);
    int last = seq->tokens[seq->n_tokens - 1], v = seq->stop_value, n = (int)el_strlen(end);
    if (tmpl == EL_CHAT_LLAMA2) return last == rt->model.vocab.eos_id;
    if (tmpl == EL_CHAT_CHATML && last == im_end_token(rt) && last >= 0) return 1;
    return seq->finish == EL_FINISH_STOP && seq->stop_kind == EL_STOP_STRING && v >= 0 && v < seq->request.n_stop &&
           seq->request.stop_len[v] == n && el_memcmp(seq->request.stop[v], end, (size_t)n) == 0;
}

static void close_reply(chat_tokens *b)
{
    add_text(b, el_chat_reply_end(b->tmpl));
    if (el_chat_message_specials(b->tmpl, EL_CHAT_USER, EL_CHAT_ASSISTANT) & EL_CHAT_EOS_AFTER) {
        flush(b);
        emit_token(b, b->rt->model.vocab.eos_id);
    }
}

int el_runtime_chat_turn(el_runtime *rt, int tmpl, int seq_id, const char *system, int system_len, const char *user,
                         int user_len, int32_t *out, int capacity, el_error *err)
{
    size_t mark = el_arena_mark(&rt->arena);
    const el_sequence *seq = NULL;
    int previous = EL_CHAT_NONE;
    chat_tokens b;
    if (seq_id >= 0) {
        seq = el_engine_sequence(&rt->engine, seq_id);
        if (seq == NULL || seq->state != EL_SEQ_FINISHED || seq->n_tokens < 1) {
            el_fail(err, EL_ERR_ARGUMENT, "chat: no finished sequence with that id", "", "");
            return -1;
        }
        previous = EL_CHAT_ASSISTANT;
    }
    if (system_len < 0 || user_len < 0) {
        el_fail(err, EL_ERR_ARGUMENT, "chat: negative text length", "", "");
        return -1;
    }
    if (!chat_begin(&b, rt, tmpl, seq != NULL, (long long)system_len + user_len, out, capacity, err)) return -1;
    if (seq != NULL && !reply_closed(rt, tmpl, seq)) close_reply(&b);
    if (seq == NULL && system_len > 0) {
        add_message(&b, EL_CHAT_NONE, EL_CHAT_SYSTEM, system, system_len);
        previous = EL_CHAT_SYSTEM;
    }
    add_message(&b, previous, EL_CHAT_USER, user, user_len);
    add_text(&b, el_chat_generation_prompt(tmpl));
    return chat_end(&b, mark);
}

int el_runtime_chat_admit(el_runtime *rt, int tmpl, int seq_id, const char *system, int system_len, const char *user,
                          int user_len, int32_t *scratch, int capacity, const el_request *request, int *started_over,
                          el_error *err)
{
    int n = el_runtime_chat_turn(rt, tmpl, seq_id, system, system_len, user, user_len, scratch, capacity, err);
    if (started_over != NULL) *started_over = 0;
    if (n < 0) return -1;
    if (seq_id >= 0) {
        if (el_runtime_continue(rt, seq_id, scratch, n, request, err) == EL_OK) return seq_id;
        if (err->status != EL_ERR_CAPACITY) return -1; /* the conversation is kept; only this turn failed */
        /* full: its full blocks stay in the prefix cache, so a later turn sharing the
         * system text does not compute it again */
        el_runtime_release(rt, seq_id);
        if (started_over != NULL) *started_over = 1;
        n = el_runtime_chat_turn(rt, tmpl, -1, system, system_len, user, user_len, scratch, capacity, err);
        if (n < 0) return -1;
    }
    return el_runtime_add(rt, scratch, n, request, err);
}

int el_runtime_chat_prompt(el_runtime *rt, int tmpl, const int32_t *roles, const char *const *contents,
                           const int32_t *lens, int n, int32_t *out, int capacity, el_error *err)
{
    size_t mark = el_arena_mark(&rt->arena);
    long long text_bytes = 0;
    int i, previous = EL_CHAT_NONE;
    chat_tokens b;
    for (i = 0; i < n; i++) {
        if (lens[i] < 0 || roles[i] < EL_CHAT_SYSTEM || roles[i] > EL_CHAT_ASSISTANT) {
            el_fail(err, EL_ERR_ARGUMENT, "chat: a message has a bad role or length", "", "");
            return -1;
        }
        text_bytes += lens[i];
    }
    if (!chat_begin(&b, rt, tmpl, 0, text_bytes, out, capacity, err)) return -1;
    for (i = 0; i < n; i++) {
        add_message(&b, previous, roles[i], contents[i], lens[i]);
        previous = roles[i];
    }
    add_text(&b, el_chat_generation_prompt(tmpl));
    return chat_end(&b, mark);
}
