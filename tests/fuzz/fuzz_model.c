/* fuzz_model.c: a GGUF file from a stranger, opened as the runtime opens a model
 * (el_runtime_open: GGUF reader, model view, tokenizer, engine), and when it opens,
 * a two-token generation through the forward pass and the sampler. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "el_runtime.h"

#define MEMORY_BYTES (32u << 20)

static void generate_two(el_runtime *rt)
{
    el_request request;
    el_event events[4];
    el_error err;
    int32_t prompt[8];
    int n = el_runtime_tokenize(rt, "a b", 3, 1, prompt, 8, &err), steps;
    if (n < 0) return;
    el_request_defaults(&request);
    request.max_tokens = 2;
    if (el_runtime_add(rt, prompt, n, &request, &err) < 0) return;
    for (steps = 0; steps < 16 && el_runtime_pending(rt); steps++) el_runtime_step(rt, events, 4);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static void *memory;
    el_engine_options options;
    el_error err;
    el_runtime *rt;
    uint8_t *file = (uint8_t *)malloc(size ? size : 1); /* exactly the bytes it may read */
    if (memory == NULL) memory = malloc(MEMORY_BYTES);
    memcpy(file, data, size);
    memset(&options, 0, sizeof options);
    options.max_model_len = 16;
    options.max_seqs = 1;
    options.weights_writable = 1; /* `file` is this call's own copy: the kernels may rearrange it */
    rt = el_runtime_open(memory, MEMORY_BYTES, file, size, &options, &err);
    if (rt != NULL) generate_two(rt);
    else if (err.message[0] == '\0') abort(); /* a refusal always says why */
    free(file);
    return 0;
}
