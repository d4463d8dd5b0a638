/* tokenizer_probe.c: a test harness around el_tokenizer for tests/test_c_tokenizer.py.
 *
 * Holds one static arena for the vocabulary and tokenizer and one static scratch
 * arena (as an engine would), so Python only passes plain arrays through ctypes.
 * The vocabulary is copied in, so Python's buffers may go away after init.
 */
#include "el_tokenizer.h"

static unsigned char arena_memory[8 << 20];
static unsigned char scratch_memory[32 << 20];
static el_arena arena, scratch;
static el_tokenizer tok;
static el_error last_error;
static el_utf8_stream stream;

/* A vocabulary of n pieces (UTF-8 bytes, lens[i] each); returns the el_status. */
int tok_probe_init(int n, const char *const *pieces, const unsigned *lens, const float *scores, const int *types,
                   int bos, int eos, int unk)
{
    el_vocab vocab;
    el_str *strs;
    float *sc;
    int32_t *ty;
    int i;
    el_arena_init(&arena, arena_memory, sizeof arena_memory);
    el_arena_init(&scratch, scratch_memory, sizeof scratch_memory);
    strs = (el_str *)el_arena_alloc(&arena, (size_t)n * sizeof(el_str), sizeof(void *));
    sc = (float *)el_arena_alloc(&arena, (size_t)n * sizeof(float), sizeof(float));
    ty = (int32_t *)el_arena_alloc(&arena, (size_t)n * sizeof(int32_t), sizeof(int32_t));
    if (strs == NULL || sc == NULL || ty == NULL) return (int)EL_ERR_NO_MEMORY;
    for (i = 0; i < n; i++) {
        char *text = (char *)el_arena_alloc(&arena, lens[i] + 1, 1);
        if (text == NULL) return (int)EL_ERR_NO_MEMORY;
        el_memcpy(text, pieces[i], lens[i]);
        strs[i].data = text;
        strs[i].len = lens[i];
        sc[i] = scores[i];
        ty[i] = types[i];
    }
    vocab.n_tokens = n;
    vocab.pieces = strs;
    vocab.scores = sc;
    vocab.types = ty;
    vocab.bos_id = bos;
    vocab.eos_id = eos;
    vocab.unk_id = unk;
    return (int)el_tokenizer_init(&tok, &vocab, &arena, &last_error);
}

/* Limits the scratch arena to `bytes` (0: all of it), to test running out. */
void tok_probe_scratch_limit(size_t bytes)
{
    el_arena_init(&scratch, scratch_memory, bytes > 0 && bytes < sizeof scratch_memory ? bytes : sizeof scratch_memory);
}

size_t tok_probe_scratch_used(void) { return scratch.used; }
size_t tok_probe_scratch_high_water(void) { return scratch.high_water; }

/* The status and message of the last failure. */
int tok_probe_error(char *message, size_t cap)
{
    size_t i;
    for (i = 0; i + 1 < cap && last_error.message[i] != '\0'; i++) message[i] = last_error.message[i];
    if (cap > 0) message[i] = '\0';
    return (int)last_error.status;
}

int tok_probe_find(const char *piece, size_t len) { return el_tokenizer_find(&tok, piece, len); }

int tok_probe_encode(const char *text, size_t len, int add_bos, int *out, int cap)
{
    return el_tokenize(&tok, text, len, add_bos, (int32_t *)out, cap, &scratch, &last_error);
}

/* Encodes each '\n'-separated line of text (without the '\n'); counts[i] gets line i's
 * token count and out all the tokens one after another. Returns the total, or -1. */
long tok_probe_encode_lines(const char *text, size_t len, int *out, long cap, int *counts, long max_lines)
{
    size_t start = 0, end;
    long total = 0, line = 0;
    while (start <= len && line < max_lines) {
        int n;
        for (end = start; end < len && text[end] != '\n'; end++) continue;
        n = el_tokenize(&tok, text + start, end - start, 0, (int32_t *)out + total,
                        cap - total > 0x7fffffff ? 0x7fffffff : (int)(cap - total), &scratch, &last_error);
        if (n < 0) return -1;
        counts[line++] = n;
        total += n;
        start = end + 1;
    }
    return total;
}

size_t tok_probe_text(int prev, int token, char *out, size_t cap) { return el_token_text(&tok, prev, token, out, cap); }

/* Concatenates el_token_text over n tokens, the first one following `prev`. */
size_t tok_probe_decode(int prev, const int *tokens, int n, char *out, size_t cap)
{
    size_t w = 0;
    int i;
    for (i = 0; i < n; i++) {
        w += el_token_text(&tok, prev, tokens[i], out + w, cap - w);
        prev = tokens[i];
    }
    return w;
}

void tok_probe_stream_init(void) { el_utf8_stream_init(&stream); }

size_t tok_probe_stream_feed(const char *bytes, size_t n, char *out) { return el_utf8_stream_feed(&stream, bytes, n, out); }

size_t tok_probe_stream_flush(char *out) { return el_utf8_stream_flush(&stream, out); }
