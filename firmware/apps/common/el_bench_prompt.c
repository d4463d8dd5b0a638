/* el_bench_prompt.c: the bench prompt (see el_bench_prompt.h). C99, no libc, no malloc. */
#include "el_bench_prompt.h"

/* The same bytes as BENCH_TEXT in edgellama/devices/bench.py (tests compare them). */
const char el_bench_text[] =
    "once upon a time, there was a little girl named lily. she loved to play outside in the park with her "
    "friends. one day, she saw a big red ball under a tree. she ran to the ball and picked it up. ";

#define TEXT_BYTES ((int)sizeof el_bench_text - 1)

int el_bench_prompt_room(int n)
{
    /* el_tokenize never emits more tokens than normalized bytes: at most 3 + 3 per
     * byte (a space becomes U+2581, 3 bytes, which may fall back to byte tokens) */
    int text_room = 1 + 3 + 3 * TEXT_BYTES;
    return n > text_room ? n : text_room;
}

static void reverse(int32_t *t, int n)
{
    int i;
    for (i = 0; i < n / 2; i++) {
        int32_t x = t[i];
        t[i] = t[n - 1 - i];
        t[n - 1 - i] = x;
    }
}

/* Rotates t[0..n) left by k in place (three reversals), so no second buffer is needed. */
static void rotate_left(int32_t *t, int n, int k)
{
    if (k == 0) return;
    reverse(t, k);
    reverse(t + k, n - k);
    reverse(t, n);
}

int el_bench_prompt(el_runtime *rt, int n, uint32_t call, int32_t *out, int capacity, el_error *err)
{
    int n_text, i;
    if (n < 1 || capacity < el_bench_prompt_room(n)) {
        el_fail(err, EL_ERR_ARGUMENT, "bench prompt: fewer than 1 token asked, or no room for the text", NULL, NULL);
        return -1;
    }
    if (el_runtime_tokenize(rt, "", 0, 1, out, 1, err) != 1) return -1;
    /* the text's tokens go right after BOS, then are turned into place */
    n_text = el_runtime_tokenize(rt, el_bench_text, TEXT_BYTES, 0, out + 1, capacity - 1, err);
    if (n_text < 0) return -1;
    if (n_text == 0) {
        el_fail(err, EL_ERR_UNSUPPORTED, "bench prompt: the tokenizer gives no tokens for the bench text", NULL, NULL);
        return -1;
    }
    rotate_left(out + 1, n_text, (int)(call % (uint32_t)n_text));
    /* beyond one text: repeat it (forward copy, each token from one text earlier) */
    for (i = n_text; i < n - 1; i++) out[1 + i] = out[1 + i - n_text];
    return n;
}
