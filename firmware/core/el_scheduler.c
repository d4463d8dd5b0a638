/* el_scheduler.c: admission with prefix-cache lookups, decode rows, preemption,
 * chunked prefill. */
#include "el_scheduler.h"

/* The sequence with the smallest arrival above `after` in `state`, or NULL. */
static el_sequence *next_by_arrival(el_scheduler *s, el_seq_state state, uint64_t after, int *found_any)
{
    el_sequence *best = NULL;
    int i;
    for (i = 0; i < s->max_seqs; i++) {
        el_sequence *seq = &s->seqs[i];
        if (seq->state != state || seq->arrival <= after) continue;
        if (best == NULL || seq->arrival < best->arrival) best = seq;
    }
    if (found_any != NULL) *found_any = best != NULL;
    return best;
}

static el_sequence *newest_running(el_scheduler *s)
{
    el_sequence *best = NULL;
    int i;
    for (i = 0; i < s->max_seqs; i++)
        if (s->seqs[i].state == EL_SEQ_RUNNING && (best == NULL || s->seqs[i].arrival > best->arrival))
            best = &s->seqs[i];
    return best;
}

void el_scheduler_release_blocks(el_scheduler *s, el_sequence *seq)
{
    int i;
    for (i = seq->n_blocks - 1; i >= 0; i--) el_kv_release(s->kv, seq->block_table[i]);
    seq->n_blocks = 0;
    seq->n_computed = 0;
    seq->n_draft = 0;
}

void el_scheduler_trim_blocks(el_scheduler *s, el_sequence *seq)
{
    int needed = (seq->n_tokens + s->kv->block_size - 1) / s->kv->block_size;
    while (seq->n_blocks > needed) el_kv_release(s->kv, seq->block_table[--seq->n_blocks]);
}

/* A beam whose candidates are in, waiting for the rest of its search: it computes
 * nothing until the search moves on (el_beam.h). */
static int parked_beam(const el_sequence *seq)
{
    return seq->request.beam_width > 0 && seq->beam_ready &&
           (seq->state == EL_SEQ_RUNNING || seq->state == EL_SEQ_WAITING);
}

/* How readily a sequence gives its blocks back (0: never): a finished one first, then
 * one waiting to continue a chat, then a parked beam (it recomputes them after its
 * search moves on). */
static int reclaim_class(const el_sequence *seq)
{
    if (seq->state == EL_SEQ_FINISHED) return 3;
    if (parked_beam(seq)) return 1;
    if (seq->state == EL_SEQ_WAITING) return 2;
    return 0;
}

/* Blocks held by a sequence that is not running, given back so that running and
 * admitted sequences can go on: first a finished one (oldest first; its full blocks
 * stay findable in the prefix cache, so a chat that continues it later recomputes
 * little), then one waiting to continue a chat (newest first), then a parked beam
 * (newest first), never `keep`. Without this, sequences the caller has not released
 * yet would hold the pool while the waiting ones starve, and the beams of a search
 * would wait for one another. Returns 0 when nothing is left to take. */
static int reclaim(el_scheduler *s, const el_sequence *keep)
{
    el_sequence *best = NULL;
    int i;
    for (i = 0; i < s->max_seqs; i++) {
        el_sequence *seq = &s->seqs[i];
        int c = reclaim_class(seq), b = best != NULL ? reclaim_class(best) : 0;
        if (seq->n_blocks == 0 || seq == keep || c == 0 || c < b) continue;
        if (best == NULL || c > b || (c == 3 ? seq->arrival < best->arrival : seq->arrival > best->arrival))
            best = seq;
    }
    if (best == NULL) return 0;
    el_scheduler_release_blocks(s, best);
    if (best->state == EL_SEQ_RUNNING) best->state = EL_SEQ_WAITING; /* a parked beam: admitted again later */
    return 1;
}

static void preempt(el_scheduler *s, el_sequence *seq)
{
    el_scheduler_release_blocks(s, seq);
    seq->state = EL_SEQ_WAITING;
    seq->n_preemptions++;
    s->preemptions++;
}

/* Whether the block position `pos` goes into is also held by another sequence (a fork). */
static int shared_block_at(const el_scheduler *s, const el_sequence *seq, int pos)
{
    int index = pos / s->kv->block_size;
    return index < seq->n_blocks && s->kv->ref_count[seq->block_table[index]] > 1;
}

/* Copy-on-write: the block position `pos` goes into, made the sequence's own (copied
 * when shared); 0 when the pool has no block for the copy. */
static int own_block_at(el_scheduler *s, el_sequence *seq, int pos)
{
    int index = pos / s->kv->block_size, copy;
    if (!shared_block_at(s, seq, pos)) return 1;
    copy = el_kv_allocate(s->kv);
    if (copy < 0) return 0;
    el_kv_copy(s->kv, copy, seq->block_table[index]);
    el_kv_release(s->kv, seq->block_table[index]);
    seq->block_table[index] = copy;
    return 1;
}

/* Blocks so that positions 0..n_positions-1 have a home, and the blocks of the
 * positions still to compute its own; 0 when the pool is short. */
static int grow_table(el_scheduler *s, el_sequence *seq, int n_positions)
{
    int needed = (n_positions + s->kv->block_size - 1) / s->kv->block_size, pos;
    while (seq->n_blocks < needed) {
        int block = el_kv_allocate(s->kv);
        if (block < 0) return 0;
        seq->block_table[seq->n_blocks++] = block;
    }
    for (pos = seq->n_computed; pos < n_positions; pos += s->kv->block_size - pos % s->kv->block_size)
        if (!own_block_at(s, seq, pos)) return 0;
    return own_block_at(s, seq, seq->n_computed);
}

static uint64_t block_hash_at(const el_scheduler *s, const el_sequence *seq, int index)
{
    uint64_t parent = index > 0 ? s->kv->hash[seq->block_table[index - 1]] : 0;
    return el_kv_hash(parent, seq->tokens + index * s->kv->block_size, s->kv->block_size);
}

void el_scheduler_register_blocks(el_scheduler *s, el_sequence *seq, int n_computed_before)
{
    int bs = s->kv->block_size, i;
    if (!s->prefix_caching) return;
    for (i = n_computed_before / bs; i < seq->n_computed / bs; i++)
        el_kv_register(s->kv, seq->block_table[i], block_hash_at(s, seq, i), seq->tokens + i * bs);
}

/* Whether prompt positions still need their logits (prompt_logprobs asked and not all reported). */
static int wants_prompt_logits(const el_sequence *seq)
{
    return seq->request.prompt_logprobs >= 0 && seq->prompt_logprob_next < seq->n_prompt;
}

/* Share the full blocks of the sequence's tokens already in the cache (the last token
 * is always computed, since its logits are needed). With take == 0 only count them,
 * and how many of them are free now: taking those leaves fewer for the rest. */
static int cached_prefix(el_scheduler *s, el_sequence *seq, int take, int *n_free_hits)
{
    int bs = s->kv->block_size, i, block;
    uint64_t parent = 0;
    if (!s->prefix_caching || wants_prompt_logits(seq)) return 0;
    for (i = 0; i < (seq->n_tokens - 1) / bs; i++) {
        uint64_t h = el_kv_hash(parent, seq->tokens + i * bs, bs);
        block = take ? el_kv_lookup(s->kv, h, seq->tokens + i * bs) : el_kv_find(s->kv, h, seq->tokens + i * bs);
        if (block < 0) break;
        if (take) seq->block_table[seq->n_blocks++] = block;
        else if (s->kv->ref_count[block] == 0) (*n_free_hits)++;
        parent = h;
    }
    return i;
}

/* Free blocks the sequence needs to be admitted with its whole prompt. */
static int blocks_to_admit(el_scheduler *s, el_sequence *seq)
{
    int bs = s->kv->block_size, needed = (seq->n_tokens + bs - 1) / bs, hits, free_hits = 0;
    if (seq->n_blocks > 0) /* a continued chat keeps its own blocks, plus a copy of one shared with a fork */
        return needed - seq->n_blocks + shared_block_at(s, seq, seq->n_computed);
    hits = cached_prefix(s, seq, 0, &free_hits);
    return needed - hits + free_hits;
}

/* Counted exactly first, so a prompt that does not fit takes nothing, evicts nothing
 * from the prefix cache and counts no prefix hits. */
static int admit(el_scheduler *s, el_sequence *seq)
{
    while (blocks_to_admit(s, seq) > s->kv->n_free)
        if (!reclaim(s, seq)) return 0;
    if (seq->n_blocks == 0) {
        cached_prefix(s, seq, 1, NULL);
        seq->n_computed = seq->n_blocks * s->kv->block_size;
    }
    if (seq->n_cached_tokens < 0) seq->n_cached_tokens = seq->n_computed;
    if (!grow_table(s, seq, seq->n_tokens)) { /* cannot happen after the count; stay safe */
        el_scheduler_release_blocks(s, seq);
        return 0;
    }
    seq->state = EL_SEQ_RUNNING;
    return 1;
}

/* Whether the logits of position pos are needed: to sample the next token (or one
 * after a draft), or for the logprob of the prompt token after it. */
static int wants_logits(const el_sequence *seq, int pos)
{
    return pos >= seq->n_tokens - 1 ||
           (wants_prompt_logits(seq) && pos + 1 >= seq->prompt_logprob_next && pos + 1 < seq->n_prompt);
}

/* Rows for up to `count` positions of seq from n_computed on; the chunk ends early
 * where a row would want logits and *logit_room is used up. Returns the new row count. */
static int add_rows(el_batch_row *rows, int32_t *row_seq, int n, el_sequence *seq, int index, int count,
                    int *logit_room)
{
    int i;
    for (i = 0; i < count; i++) {
        int pos = seq->n_computed + i, want = wants_logits(seq, pos);
        if (want && *logit_room == 0) break;
        *logit_room -= want;
        rows[n].token = seq->tokens[pos];
        rows[n].pos = pos;
        rows[n].block_table = seq->block_table;
        rows[n].want_logits = want;
        row_seq[n++] = index;
    }
    return n;
}

int el_schedule(el_scheduler *s, el_batch_row *rows, int32_t *row_seq)
{
    int n = 0, found = 1, logit_room = s->max_logits;
    uint64_t after = 0;
    el_sequence *seq;
    /* 1. decoding sequences: one row each and one per draft (el_speculate.h), oldest
     * first; preempt the newest on shortage. The drafts are cut to the rows left. */
    while (n < s->max_rows && (seq = next_by_arrival(s, EL_SEQ_RUNNING, after, &found)) != NULL) {
        int first = n;
        after = seq->arrival;
        if (seq->n_computed != seq->n_tokens - 1) { /* still prefilling: below */
            seq->n_draft = 0;
            continue;
        }
        if (seq->n_draft > s->max_rows - n - 1) seq->n_draft = s->max_rows - n - 1;
        if (seq->n_draft > logit_room - 1) seq->n_draft = logit_room > 0 ? logit_room - 1 : 0;
        while (!grow_table(s, seq, seq->n_tokens + seq->n_draft)) {
            el_sequence *victim;
            if (seq->n_draft > 0) { /* drafts are the first thing to give up */
                seq->n_draft = 0;
                el_scheduler_trim_blocks(s, seq);
                continue;
            }
            if (reclaim(s, NULL)) continue;
            victim = newest_running(s);
            preempt(s, victim);
            if (victim == seq) break;
        }
        if (seq->state != EL_SEQ_RUNNING) continue;
        n = add_rows(rows, row_seq, n, seq, (int)(seq - s->seqs), 1 + seq->n_draft, &logit_room);
        seq->n_draft = n - first - 1 > 0 ? n - first - 1 : 0;
    }
    /* 2. prefill: sequences part-way through their prompt, then new ones in arrival order */
    after = 0;
    while (n < s->max_rows && (seq = next_by_arrival(s, EL_SEQ_RUNNING, after, &found)) != NULL) {
        int chunk = seq->n_tokens - seq->n_computed;
        after = seq->arrival;
        if (seq->n_computed >= seq->n_tokens - 1) continue;
        if (chunk > s->max_rows - n) chunk = s->max_rows - n;
        n = add_rows(rows, row_seq, n, seq, (int)(seq - s->seqs), chunk, &logit_room);
    }
    after = 0;
    while (n < s->max_rows && (seq = next_by_arrival(s, EL_SEQ_WAITING, after, &found)) != NULL) {
        int chunk;
        after = seq->arrival;
        if (parked_beam(seq)) continue; /* nothing to compute until its search moves on */
        if (!admit(s, seq)) break; /* first come, first served: no overtaking */
        chunk = seq->n_tokens - seq->n_computed;
        if (chunk > s->max_rows - n) chunk = s->max_rows - n;
        n = add_rows(rows, row_seq, n, seq, (int)(seq - s->seqs), chunk, &logit_room);
    }
    return n;
}
