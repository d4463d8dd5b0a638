/* el_draft.c: the draft model's cache and passes; the rules are in el_draft.h. */
#include "el_draft.h"

/* ------------------------------------------------------------ setup */

static el_status same_vocabulary(const el_model *draft, const el_model *target, el_error *err)
{
    const el_vocab *a = &draft->vocab, *b = &target->vocab;
    int i;
    if (a->n_tokens != b->n_tokens) {
        el_fail(err, EL_ERR_ARGUMENT, "draft model: its vocabulary has ", "", "");
        el_error_num(err, a->n_tokens);
        el_error_append(err, " tokens, the model's ");
        el_error_num(err, b->n_tokens);
        return EL_ERR_ARGUMENT;
    }
    for (i = 0; i < a->n_tokens; i++)
        if (a->pieces[i].len != b->pieces[i].len ||
            el_memcmp(a->pieces[i].data, b->pieces[i].data, a->pieces[i].len) != 0) {
            el_fail(err, EL_ERR_ARGUMENT, "draft model: its vocabulary differs from the model's at token ", "", "");
            el_error_num(err, i);
            return EL_ERR_ARGUMENT;
        }
    if (a->bos_id != b->bos_id || a->eos_id != b->eos_id)
        return el_fail(err, EL_ERR_ARGUMENT, "draft model: its BOS or EOS id differs from the model's", "", "");
    return EL_OK;
}

el_status el_draft_init(el_draft *d, const el_model *model, const el_model *target, int max_seqs, int max_model_len,
                        int block_size, el_kv_dtype kv_dtype, int max_batch_tokens, int max_drafts, int threads,
                        el_arena *arena, el_error *err)
{
    const el_config *c = &model->config;
    el_status status;
    int i, b;
    el_memset(d, 0, sizeof *d);
    if ((status = same_vocabulary(model, target, err)) != EL_OK) return status;
    if (c->context_length < max_model_len) {
        el_fail(err, EL_ERR_ARGUMENT, "draft model: its context of ", "", "");
        el_error_num(err, c->context_length);
        el_error_append(err, " tokens is shorter than max_model_len ");
        el_error_num(err, max_model_len);
        return EL_ERR_ARGUMENT;
    }
    if (max_drafts < 1) return el_fail(err, EL_ERR_ARGUMENT, "draft model: speculative_tokens must be 1 or more", "", "");
    d->model = model;
    d->max_seqs = max_seqs;
    d->max_blocks = (max_model_len + block_size - 1) / block_size;
    d->max_drafts = max_drafts;
    d->max_model_len = max_model_len;
    d->vocab = c->vocab_size;
    d->max_rows = max_batch_tokens;
    if ((status = el_kv_init(&d->kv, c, block_size, max_seqs * d->max_blocks, kv_dtype, arena, err)) != EL_OK)
        return status;
    if ((status = el_forward_init(&d->forward, c, max_batch_tokens, max_seqs, max_model_len, threads, arena, err)) !=
        EL_OK)
        return status;
    d->block_tables = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)max_seqs * (size_t)d->max_blocks, 4);
    d->cached = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)max_seqs * (size_t)max_model_len, 4);
    d->n_cached = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)max_seqs, 4);
    d->weights = (uint32_t *)el_arena_alloc(
        arena, sizeof(uint32_t) * (size_t)max_seqs * (size_t)max_drafts * (size_t)d->vocab, 16);
    d->totals = (uint64_t *)el_arena_alloc(arena, sizeof(uint64_t) * (size_t)max_seqs * (size_t)max_drafts, 8);
    d->rows = (el_batch_row *)el_arena_alloc(arena, sizeof(el_batch_row) * (size_t)max_batch_tokens, 8);
    d->row_slot = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)max_batch_tokens, 4);
    d->batch = (el_sequence **)el_arena_alloc(arena, sizeof(el_sequence *) * (size_t)max_seqs, 8);
    d->batch_k = (int *)el_arena_alloc(arena, sizeof(int) * (size_t)max_seqs, 4);
    if (d->block_tables == NULL || d->cached == NULL || d->n_cached == NULL || d->weights == NULL ||
        d->totals == NULL || d->rows == NULL || d->row_slot == NULL || d->batch == NULL || d->batch_k == NULL)
        return el_fail(err, EL_ERR_NO_MEMORY, "draft model: the memory block is too small", "", "");
    for (i = 0; i < max_seqs; i++) {
        d->n_cached[i] = 0;
        for (b = 0; b < d->max_blocks; b++) d->block_tables[i * d->max_blocks + b] = i * d->max_blocks + b;
    }
    return EL_OK;
}

/* ------------------------------------------------------------ passes */

static int32_t *slot_cached(el_draft *d, int slot) { return d->cached + (size_t)slot * (size_t)d->max_model_len; }

/* A row of slot's for `token` at `pos`, remembered as computed for that token. */
static void add_row(el_draft *d, int *n_rows, int slot, int token, int pos, int want_logits)
{
    el_batch_row *row = &d->rows[*n_rows];
    row->token = token;
    row->pos = pos;
    row->block_table = d->block_tables + (size_t)slot * (size_t)d->max_blocks;
    row->want_logits = want_logits;
    d->row_slot[(*n_rows)++] = slot;
    slot_cached(d, slot)[pos] = token;
    if (pos + 1 > d->n_cached[slot]) d->n_cached[slot] = pos + 1;
}

/* One forward pass of the rows gathered: logits in d->forward.logits, a row per want_logits. */
static void run_rows(el_draft *d, int n_rows)
{
    el_forward(&d->forward, d->model, &d->kv, d->rows, n_rows);
    d->rows_run += n_rows;
}

/* Draft i of seq: drawn from (or the argmax of) the draft's logits, which the
 * sampler's steps change in place. */
static void draw_draft(el_draft *d, el_sequence *seq, int i, float *logits, el_sampler_scratch *scratch)
{
    const el_request *r = &seq->request;
    int n_output = seq->n_tokens - seq->n_prompt + i, token;
    uint64_t total = el_sampler_weights(&r->sampling, logits, seq->tokens, seq->n_prompt,
                                        seq->tokens + seq->n_prompt, n_output, scratch);
    uint32_t *kept = d->weights + ((size_t)seq->id * (size_t)d->max_drafts + (size_t)i) * (size_t)d->vocab;
    if (total == 0) { /* nothing left to draw from (NaN logits): no more drafts */
        seq->n_draft = i;
        return;
    }
    if (r->sampling.temperature >= EL_GREEDY_TEMPERATURE) {
        el_memcpy(kept, scratch->weights, sizeof(uint32_t) * (size_t)d->vocab);
        d->totals[(size_t)seq->id * (size_t)d->max_drafts + (size_t)i] = total;
        token = el_sampler_draw(kept, d->vocab, total, &seq->rng);
    } else {
        for (token = 0; scratch->weights[token] == 0; token++) continue; /* the one-hot argmax */
    }
    seq->tokens[seq->n_tokens + i] = token;
    seq->n_draft = i + 1;
}

/* The positions of slot that still hold what seq's tokens say, at most n_tokens - 1:
 * the last token's row is always run, for the first draft's logits. */
static void cut_to_agreement(el_draft *d, const el_sequence *seq)
{
    const int32_t *cached = slot_cached(d, seq->id);
    int n = d->n_cached[seq->id], i;
    if (n > seq->n_tokens - 1) n = seq->n_tokens - 1;
    for (i = 0; i < n && cached[i] == seq->tokens[i]; i++) continue;
    d->n_cached[seq->id] = i;
}

/* One pass of the rows gathered; each row that wants logits draws its sequence's
 * first draft (the sequences are in distinct slots). */
static void run_catch_up(el_draft *d, el_sequence *const *seqs, int n_rows, el_sampler_scratch *scratch)
{
    int r, s, logit = 0;
    run_rows(d, n_rows);
    for (r = 0; r < n_rows; r++) {
        if (!d->rows[r].want_logits) continue;
        for (s = 0; seqs[s]->id != d->row_slot[r]; s++) continue;
        draw_draft(d, seqs[s], 0, d->forward.logits + (size_t)logit++ * (size_t)d->vocab, scratch);
    }
}

/* The rows of the tokens the draft has not seen, in passes of at most max_rows rows;
 * each sequence's first draft is drawn from its last row's logits. */
static void catch_up(el_draft *d, el_sequence *const *seqs, int n, el_sampler_scratch *scratch)
{
    int s, pos, n_rows = 0;
    for (s = 0; s < n; s++) {
        el_sequence *seq = seqs[s];
        cut_to_agreement(d, seq);
        for (pos = d->n_cached[seq->id]; pos < seq->n_tokens; pos++) {
            if (n_rows == d->max_rows) {
                run_catch_up(d, seqs, n_rows, scratch);
                n_rows = 0;
            }
            add_row(d, &n_rows, seq->id, seq->tokens[pos], pos, pos == seq->n_tokens - 1);
        }
    }
    if (n_rows > 0) run_catch_up(d, seqs, n_rows, scratch);
}

void el_draft_propose(el_draft *d, int n, const el_parallel *parallel, el_sampler_scratch *scratch)
{
    el_sequence *const *seqs = d->batch;
    const int *k = d->batch_k;
    int i, s, n_rows, logit;
    d->forward.parallel = *parallel;
    for (s = 0; s < n; s++) seqs[s]->n_draft = 0;
    catch_up(d, seqs, n, scratch);
    for (i = 1;; i++) { /* draft i's row gives draft i + 1 */
        n_rows = 0;
        for (s = 0; s < n; s++)
            if (seqs[s]->n_draft == i && i < k[s])
                add_row(d, &n_rows, seqs[s]->id, seqs[s]->tokens[seqs[s]->n_tokens + i - 1],
                        seqs[s]->n_tokens + i - 1, 1);
        if (n_rows == 0) break;
        run_rows(d, n_rows);
        for (s = 0, logit = 0; s < n; s++)
            if (seqs[s]->n_draft == i && i < k[s])
                draw_draft(d, seqs[s], i, d->forward.logits + (size_t)logit++ * (size_t)d->vocab, scratch);
    }
}

const uint32_t *el_draft_weights(const el_draft *d, int slot, int i, uint64_t *total)
{
    size_t at = (size_t)slot * (size_t)d->max_drafts + (size_t)i;
    *total = d->totals[at];
    return d->weights + at * (size_t)d->vocab;
}
