/* fuzz_tokenizer.c: any bytes as text through the real model's tokenizer, then every
 * token back to text; ids stay inside the vocabulary and the text pieces in bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    el_runtime *rt = fuzz_open_runtime();
    int vocab = el_runtime_config(rt)->vocab_size, capacity = (int)el_tokenize_bound(size), n, i, previous = -1;
    int32_t *tokens;
    char *text = (char *)malloc(size ? size : 1), piece[256];
    el_error err;
    if (size > 4096) {
        free(text);
        return 0;
    }
    memcpy(text, data, size);
    tokens = (int32_t *)malloc(sizeof(int32_t) * (size_t)capacity);
    n = el_runtime_tokenize(rt, text, (int)size, 1, tokens, capacity, &err);
    if (n < 0 && err.message[0] == '\0') abort();
    for (i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= vocab) abort();
        if (el_runtime_token_text(rt, previous, tokens[i], piece, (int)sizeof piece) > (int)sizeof piece) abort();
        previous = tokens[i];
    }
    free(tokens);
    free(text);
    return 0;
}
