/* el_sequence.c: request defaults and checks; output text with stop strings. */
#include "el_sequence.h"

void el_request_defaults(el_request *r)
{
    el_memset(r, 0, sizeof *r);
    el_sampling_defaults(&r->sampling);
    r->max_tokens = 16; /* vLLM's default */
    r->n = 1;
    r->logprobs = -1;
    r->prompt_logprobs = -1;
    r->length_penalty = 1.0f;
}

static el_status check_logprobs(const char *field, int k, el_error *err)
{
    if (k >= -1 && k <= EL_MAX_LOGPROBS) return EL_OK;
    el_fail(err, EL_ERR_ARGUMENT, field, " must be -1 (none) or in [0, ", "");
    el_error_num(err, EL_MAX_LOGPROBS);
    el_error_append(err, "], got ");
    el_error_num(err, k);
    return EL_ERR_ARGUMENT;
}

el_status el_request_check(const el_request *r, el_error *err)
{
    int i;
    if (r->max_tokens < 1) {
        el_fail(err, EL_ERR_ARGUMENT, "max_tokens must be at least 1, got ", "", "");
        el_error_num(err, r->max_tokens);
        return EL_ERR_ARGUMENT;
    }
    if (r->min_tokens < 0 || r->min_tokens > r->max_tokens) {
        el_fail(err, EL_ERR_ARGUMENT, "min_tokens must be in [0, max_tokens], got ", "", "");
        el_error_num(err, r->min_tokens);
        return EL_ERR_ARGUMENT;
    }
    if (r->n_stop < 0 || r->n_stop > EL_MAX_STOP_STRINGS || r->n_stop_token_ids < 0 ||
        r->n_stop_token_ids > EL_MAX_STOP_TOKENS)
        return el_fail(err, EL_ERR_ARGUMENT, "stop: too many stop strings or stop token ids", "", "");
    for (i = 0; i < r->n_stop; i++)
        if (r->stop_len[i] < 1 || r->stop_len[i] >= EL_MAX_STOP_LEN)
            return el_fail(err, EL_ERR_ARGUMENT, "stop: each stop string must have 1 to 31 bytes", "", "");
    if (r->n < 1) {
        el_fail(err, EL_ERR_ARGUMENT, "n must be at least 1, got ", "", "");
        el_error_num(err, r->n);
        return EL_ERR_ARGUMENT;
    }
    if (check_logprobs("logprobs", r->logprobs, err) != EL_OK) return EL_ERR_ARGUMENT;
    if (r->beam_width < 0 || r->beam_width > EL_MAX_BEAM_WIDTH) {
        el_fail(err, EL_ERR_ARGUMENT, "beam_width must be in [1, ", "", "");
        el_error_num(err, EL_MAX_BEAM_WIDTH);
        el_error_append(err, "] (0 samples instead), got ");
        el_error_num(err, r->beam_width);
        return EL_ERR_ARGUMENT;
    }
    if (r->beam_width > 0 && r->n != 1)
        return el_fail(err, EL_ERR_ARGUMENT, "n: a beam search returns its beam_width best sequences; n must be 1",
                       "", "");
    if (!(r->length_penalty >= -1e6f && r->length_penalty <= 1e6f)) /* NaN fails too */
        return el_fail(err, EL_ERR_ARGUMENT, "length_penalty must be a finite number", "", "");
    if (check_logprobs("prompt_logprobs", r->prompt_logprobs, err) != EL_OK) return EL_ERR_ARGUMENT;
    return el_sampling_check(&r->sampling, err);
}

int el_sequence_output_len(const el_sequence *seq) { return seq->n_tokens - seq->n_prompt; }

static int find(const char *haystack, int n, const char *needle, int m, int from)
{
    int i;
    for (i = from < 0 ? 0 : from; i + m <= n; i++)
        if (el_memcmp(haystack + i, needle, (size_t)m) == 0) return i;
    return -1;
}

/* The longest text one token decodes to: its piece (U+2581 only shrinks to a space),
 * or the unknown token's 5-byte surface. */
static size_t max_token_text(const el_tokenizer *tok) { return tok->max_piece_len > 5 ? tok->max_piece_len : 5; }

/* The piece, then room for the stream's output: the piece plus up to 3 held bytes. */
size_t el_sequence_scratch_bytes(const el_tokenizer *tok) { return 2 * max_token_text(tok) + 8; }

static void append_text(el_sequence *seq, const char *bytes, size_t n)
{
    size_t room = (size_t)(seq->text_capacity - seq->text_len);
    if (n > room) n = room; /* cannot happen with the engine's sizing; never write past the end */
    el_memcpy(seq->text + seq->text_len, bytes, n);
    seq->text_len += (int)n;
}

void el_sequence_flush_text(el_sequence *seq)
{
    char held[4];
    append_text(seq, held, el_utf8_stream_flush(&seq->utf8, held));
}

int el_sequence_add_text(el_sequence *seq, const el_tokenizer *tok, int previous, int token, char *scratch)
{
    size_t capacity = max_token_text(tok);
    char *piece = scratch, *out = scratch + capacity;
    size_t n = el_token_text(tok, previous, token, piece, capacity);
    int before = seq->text_len, i, best = -1, best_at = 0;
    append_text(seq, out, el_utf8_stream_feed(&seq->utf8, piece, n, out));
    if (el_sequence_output_len(seq) < seq->request.min_tokens) return 0;
    for (i = 0; i < seq->request.n_stop; i++) {
        int m = seq->request.stop_len[i];
        int at = find(seq->text, seq->text_len, seq->request.stop[i], m, before - m + 1);
        if (at >= 0 && (best < 0 || at < best_at)) {
            best = i;
            best_at = at;
        }
    }
    if (best < 0) return 0;
    seq->text_len = best_at;
    if (seq->text_emitted > seq->text_len) seq->text_emitted = seq->text_len;
    seq->stop_kind = EL_STOP_STRING;
    seq->stop_value = best;
    return 1;
}

int el_sequence_ready_text(const el_sequence *seq)
{
    /* Hold back the longest tail of the text that is the start of a stop string. */
    int held = 0, i, k;
    if (seq->finish != EL_FINISH_NONE) return seq->text_len;
    for (i = 0; i < seq->request.n_stop; i++) {
        int m = seq->request.stop_len[i];
        for (k = m - 1; k > held; k--)
            if (k <= seq->text_len && el_memcmp(seq->text + seq->text_len - k, seq->request.stop[i], (size_t)k) == 0) {
                held = k;
                break;
            }
    }
    return seq->text_len - held;
}
