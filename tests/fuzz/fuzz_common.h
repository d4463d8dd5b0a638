/* fuzz_common.h: what the harnesses share: one runtime opened on a real model (the
 * tokenizer and serve harnesses), read once from EL_FUZZ_MODEL, a path compiled in. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#include "el_runtime.h"

#define FUZZ_MEMORY_BYTES (96u << 20)

/* The whole file in a heap block of exactly its size (so a read past it is caught). */
static unsigned char *fuzz_read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *data;
    long n;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET) != 0) abort();
    data = (unsigned char *)malloc((size_t)n);
    if (data == NULL || fread(data, 1, (size_t)n, f) != (size_t)n) abort();
    fclose(f);
    *size = (size_t)n;
    return data;
}

static unsigned char *fuzz_model;
static size_t fuzz_model_bytes_read;

/* EL_FUZZ_MODEL's bytes, read once. */
static const unsigned char *fuzz_model_bytes(void)
{
    if (fuzz_model == NULL) fuzz_model = fuzz_read_file(EL_FUZZ_MODEL, &fuzz_model_bytes_read);
    return fuzz_model;
}

static size_t fuzz_model_size(void)
{
    (void)fuzz_model_bytes();
    return fuzz_model_bytes_read;
}

/* The runtime on EL_FUZZ_MODEL with a short context, so no input runs for long. */
static el_runtime *fuzz_open_runtime(void)
{
    static el_runtime *rt;
    el_engine_options options = {0};
    el_error err;
    size_t size;
    const unsigned char *model;
    if (rt != NULL) return rt;
    model = fuzz_model_bytes();
    size = fuzz_model_size();
    options.max_model_len = 64;
    options.max_seqs = 2;
    rt = el_runtime_open(malloc(FUZZ_MEMORY_BYTES), FUZZ_MEMORY_BYTES, model, size, &options, &err);
    if (rt == NULL) {
        fprintf(stderr, "fuzz: cannot open %s: %s\n", EL_FUZZ_MODEL, err.message);
        abort();
    }
    return rt;
}

#endif
