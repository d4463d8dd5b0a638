/* el_bench_prompt.h: the one bench prompt, built the same way by the POSIX program's
 * `bench` mode and the protocol's BENCH handler (and, in Python, by
 * edgellama/devices/bench.py's bench_prompt, its mirror). C99, no libc, no malloc.
 *
 * Bench call number `call` (1, 2, ...) prefills BOS, then the bench text's tokens from
 * offset `call` (modulo the text's token count), wrapping around the text and
 * repeating it as often as n needs:
 *
 *     out[0] = BOS,  out[1 + i] = text[(i + call) % n_text]  for i = 0 .. n - 2
 *
 * The offset moves by one per call so no call shares a prefix with the one before: the
 * KV cache's prefix reuse would otherwise flatter prefill.
 */
#ifndef EL_BENCH_PROMPT_H
#define EL_BENCH_PROMPT_H

#include "el_runtime.h"

/* The text every bench prompt is cut from (NUL-terminated). */
extern const char el_bench_text[];

/* The tokens `out` must hold for a prompt of n: `out` is also where the text is
 * tokenized, so it needs room for BOS and the whole text even when n is shorter. */
int el_bench_prompt_room(int n);

/* Writes call number `call`'s prompt of n tokens (n >= 1) into out. Needs no memory
 * beyond `out` (capacity tokens, at least el_bench_prompt_room(n)) and the runtime's
 * tokenizer scratch. Returns n, or -1 with err set. */
int el_bench_prompt(el_runtime *rt, int n, uint32_t call, int32_t *out, int capacity, el_error *err);

#endif
