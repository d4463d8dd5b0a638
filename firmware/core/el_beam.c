/* el_beam.c: beam search (el_beam.h): candidates per beam, one step of a search,
 * its end. */
#include "el_beam.h"

#include "el_math.h"

typedef struct {
    float score, cum_logprob;
    int32_t token;
    int slot;                  /* the beam it extends; then the slot that takes it */
} beam_candidate;

size_t el_beam_scratch_bytes(int max_width) { return sizeof(beam_candidate) * (size_t)(2 * max_width * max_width); }

/* ------------------------------------------------------------ the sequences of a search */

static int is_beam_of(const el_sequence *seq, uint64_t group)
{
    return seq->request.beam_width > 0 && seq->group == group && seq->state != EL_SEQ_FREE;
}

static int is_live(const el_sequence *seq) { return seq->state == EL_SEQ_RUNNING || seq->state == EL_SEQ_WAITING; }

int el_beam_search_running(const el_engine *e, const el_sequence *seq)
{
    int i;
    if (!is_beam_of(seq, seq->group)) return 0;
    for (i = 0; i < e->options.max_seqs; i++)
        if (is_beam_of(&e->seqs[i], seq->group) && (is_live(&e->seqs[i]) || e->seqs[i].state == EL_SEQ_RESERVED))
            return 1;
    return 0;
}

static el_sequence *reserved_slot(el_engine *e, uint64_t group)
{
    int i;
    for (i = 0; i < e->options.max_seqs; i++)
        if (is_beam_of(&e->seqs[i], group) && e->seqs[i].state == EL_SEQ_RESERVED) return &e->seqs[i];
    return NULL; /* cannot happen: 2W slots hold at most W live beams and W finished ones */
}

/* The live beams of a search in the order they were kept (beam_order). */
static int live_beams(el_engine *e, uint64_t group, el_sequence **out)
{
    int i, j, n = 0;
    for (i = 0; i < e->options.max_seqs; i++) {
        el_sequence *seq = &e->seqs[i];
        if (!is_beam_of(seq, group) || !is_live(seq)) continue;
        for (j = n++; j > 0 && out[j - 1]->beam_order > seq->beam_order; j--) out[j] = out[j - 1];
        out[j] = seq;
    }
    return n;
}

static void free_slot(el_engine *e, el_sequence *seq)
{
    el_scheduler_release_blocks(&e->scheduler, seq);
    seq->state = EL_SEQ_FREE;
}

void el_beam_free_group(el_engine *e, int group_slot)
{
    uint64_t group = e->seqs[group_slot].group;
    int i;
    for (i = 0; i < e->options.max_seqs; i++)
        if (is_beam_of(&e->seqs[i], group)) free_slot(e, &e->seqs[i]);
}

/* ------------------------------------------------------------ candidates */

static int ends_text(const el_engine *e, const el_sequence *seq, int token)
{
    /* BOS ends a text like EOS, as it does when sampling (el_engine.c) */
    return !seq->request.ignore_eos && (token == e->model->vocab.eos_id || token == e->model->vocab.bos_id);
}

/* cum_logprob / length ** length_penalty, with the common penalties exact. */
static float beam_score(float cum_logprob, int length, float length_penalty)
{
    if (length_penalty == 0.0f) return cum_logprob;
    if (length_penalty == 1.0f) return cum_logprob / (float)length;
    return cum_logprob / (float)el_pow((double)length, (double)length_penalty);
}

void el_beam_take_candidates(el_engine *e, el_sequence *beam, float *logits)
{
    int vocab = e->model->config.vocab_size, i;
    float temperature = beam->request.sampling.temperature, shift;
    beam->beam_ready = 1;
    if (!el_logits_finite(logits, vocab)) {
        beam->n_candidates = -1; /* the search ends with an error */
        return;
    }
    if (temperature >= EL_GREEDY_TEMPERATURE && temperature != 1.0f)
        for (i = 0; i < vocab; i++) logits[i] /= temperature;
    shift = el_logprob_shift(logits, vocab);
    beam->n_candidates = el_top_tokens(logits, vocab, 2 * beam->request.beam_width, beam->candidate_ids);
    for (i = 0; i < beam->n_candidates; i++) beam->candidate_logprobs[i] = logits[beam->candidate_ids[i]] - shift;
}

/* Stable: equal scores keep their order. */
static void sort_by_score(beam_candidate *c, int n)
{
    int i, j;
    for (i = 1; i < n; i++) {
        beam_candidate x = c[i];
        for (j = i; j > 0 && c[j - 1].score < x.score; j--) c[j] = c[j - 1];
        c[j] = x;
    }
}

/* ------------------------------------------------------------ finished hypotheses */

/* A beam that ends with `token`: kept as a finished hypothesis when fewer than W are
 * kept or it beats the worst of them (which it replaces; an equal score does not). */
static void add_finished(el_engine *e, el_sequence *beam, int token, float cum_logprob, float score)
{
    el_sequence *slot = NULL;
    int i;
    int kept = 0;
    for (i = 0; i < e->options.max_seqs; i++) {
        el_sequence *seq = &e->seqs[i];
        if (!is_beam_of(seq, beam->group) || seq->state != EL_SEQ_FINISHED) continue;
        kept++;
        if (slot == NULL || seq->beam_score < slot->beam_score ||
            (seq->beam_score == slot->beam_score && seq->arrival > slot->arrival))
            slot = seq; /* the worst, the latest of equals */
    }
    if (kept < beam->request.beam_width) slot = reserved_slot(e, beam->group);
    else if (!(score > slot->beam_score)) return;
    if (slot == NULL) return;
    el_scheduler_release_blocks(&e->scheduler, slot);
    el_engine_fork(e, beam, slot, 0);
    slot->tokens[slot->n_tokens++] = token;
    slot->cum_logprob = cum_logprob;
    slot->beam_score = score;
    slot->stop_kind = EL_STOP_EOS;
    el_engine_finish(slot, EL_FINISH_STOP);
}

/* ------------------------------------------------------------ one step of a search */

static void append(el_engine *e, el_sequence *beam, const beam_candidate *c, int order)
{
    int previous = beam->tokens[beam->n_tokens - 1];
    beam->tokens[beam->n_tokens++] = c->token;
    beam->cum_logprob = c->cum_logprob;
    beam->beam_order = order;
    beam->beam_ready = 0;
    e->tokens_generated++;
    el_sequence_add_text(beam, &e->tokenizer, previous, c->token, e->text_scratch);
}

/* The end: the W best of the finished hypotheses (in the order they finished) and the
 * live beams (in their order), best first; the rest freed. */
static int report(el_engine *e, uint64_t group, el_finish_reason live_reason, el_event *events, int n_events,
                  int max_events)
{
    beam_candidate *all = (beam_candidate *)e->beam_scratch;
    el_sequence *live[2 * EL_MAX_BEAM_WIDTH];
    int n = 0, n_live, width = 0, i, j;
    for (i = 0; i < e->options.max_seqs; i++) { /* finished ones, oldest first */
        el_sequence *seq = &e->seqs[i];
        if (!is_beam_of(seq, group) || seq->state != EL_SEQ_FINISHED) continue;
        width = seq->request.beam_width;
        for (j = n++; j > 0 && e->seqs[all[j - 1].slot].arrival > seq->arrival; j--) all[j] = all[j - 1];
        all[j].slot = i;
        all[j].score = seq->beam_score;
    }
    n_live = live_beams(e, group, live);
    for (i = 0; i < n_live; i++) {
        width = live[i]->request.beam_width;
        all[n].slot = live[i]->id;
        all[n++].score = beam_score(live[i]->cum_logprob, live[i]->n_tokens, live[i]->request.length_penalty);
    }
    sort_by_score(all, n);
    for (i = 0; i < n; i++) {
        el_sequence *seq = &e->seqs[all[i].slot];
        if (i >= width) {
            free_slot(e, seq);
            continue;
        }
        if (is_live(seq)) {
            seq->stop_kind = EL_STOP_NONE;
            el_engine_finish(seq, live_reason);
        }
        seq->sample_index = i;
        if (n_events < max_events) {
            el_engine_event(&events[n_events], seq, seq->n_tokens > seq->n_prompt ? seq->tokens[seq->n_tokens - 1] : -1);
            events[n_events++].cumulative_logprob = seq->cum_logprob;
        }
    }
    for (i = 0; i < e->options.max_seqs; i++)
        if (is_beam_of(&e->seqs[i], group) && e->seqs[i].state == EL_SEQ_RESERVED) e->seqs[i].state = EL_SEQ_FREE;
    return n_events;
}

/* Gather every live beam's candidates, in beam order then candidate order; endings go
 * to the finished hypotheses. Returns how many others there are (-1: a beam's logits
 * were not finite). */
static int gather(el_engine *e, el_sequence **live, int n_live, beam_candidate *out)
{
    int n = 0, b, j;
    for (b = 0; b < n_live; b++) {
        el_sequence *beam = live[b];
        if (beam->n_candidates < 0) return -1;
        for (j = 0; j < beam->n_candidates; j++) {
            int token = beam->candidate_ids[j], length = beam->n_tokens + 1;
            float cum = beam->cum_logprob + beam->candidate_logprobs[j];
            if (ends_text(e, beam, token)) {
                add_finished(e, beam, token, cum, beam_score(cum, length - 1, beam->request.length_penalty));
                continue;
            }
            out[n].token = token;
            out[n].cum_logprob = cum;
            out[n].score = beam_score(cum, length, beam->request.length_penalty);
            out[n++].slot = beam->id;
        }
    }
    return n;
}

/* One token on for every kept candidate; returns 1 when the search is over. */
static int step_group(el_engine *e, el_sequence **live, int n_live, beam_candidate *kept, int n_kept)
{
    int i, j, b, over = n_kept == 0;
    for (b = 0; b < n_live; b++) { /* pruned: its blocks go back now */
        for (i = 0; i < n_kept && kept[i].slot != live[b]->id; i++) continue;
        if (i == n_kept) {
            el_scheduler_release_blocks(&e->scheduler, live[b]);
            live[b]->state = EL_SEQ_RESERVED;
        }
    }
    for (i = 0; i < n_kept; i++) { /* chosen again: forked before any beam takes its token */
        for (j = 0; j < i && kept[j].slot != kept[i].slot; j++) continue;
        if (j < i) {
            el_sequence *fork = reserved_slot(e, e->seqs[kept[i].slot].group);
            el_engine_fork(e, &e->seqs[kept[i].slot], fork, 1);
            kept[i].slot = fork->id;
        }
    }
    for (i = 0; i < n_kept; i++) {
        el_sequence *beam = &e->seqs[kept[i].slot];
        append(e, beam, &kept[i], i);
        if (el_sequence_output_len(beam) >= beam->request.max_tokens || beam->n_tokens >= el_engine_sequence_limit(e))
            over = 1;
    }
    return over;
}

int el_beam_advance(el_engine *e, el_event *events, int n_events, int max_events)
{
    el_sequence *live[2 * EL_MAX_BEAM_WIDTH];
    beam_candidate *candidates = (beam_candidate *)e->beam_scratch;
    int i, b, n_live, n, width;
    for (i = 0; i < e->options.max_seqs; i++) {
        el_sequence *seq = &e->seqs[i];
        if (seq->request.beam_width <= 0 || !is_live(seq)) continue;
        n_live = live_beams(e, seq->group, live);
        if (live[0] != seq) continue; /* each search once: at its first live beam */
        for (b = 0; b < n_live && live[b]->beam_ready; b++) continue;
        if (b < n_live) continue; /* a beam still computing (or preempted) */
        width = seq->request.beam_width;
        n = gather(e, live, n_live, candidates);
        if (n < 0) { /* NaN or Inf logits: the search ends with an error, reported on its first beam */
            el_engine_finish(seq, EL_FINISH_ERROR);
            seq->sample_index = 0;
            for (b = 0; b < e->options.max_seqs; b++)
                if (&e->seqs[b] != seq && is_beam_of(&e->seqs[b], seq->group)) free_slot(e, &e->seqs[b]);
            if (n_events < max_events) el_engine_event(&events[n_events++], seq, -1);
            continue;
        }
        sort_by_score(candidates, n);
        if (step_group(e, live, n_live, candidates, n < width ? n : width))
            n_events = report(e, seq->group, EL_FINISH_LENGTH, events, n_events, max_events);
    }
    return n_events;
}
