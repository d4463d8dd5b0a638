/* fuzz_serve.c: any bytes as the serial input of the device's serve loop (el_serve,
 * what the POSIX program's serve mode and the bare-metal main loop run) on a one-layer
 * model with the real vocabulary (harnesses.py: serve_model), so an input costs the
 * loop's work more than forward passes; the loop must answer and return when the input ends. The device has a model
 * store (el_updater.h), fresh for each input, so MODEL_* frames are fuzzed too: a write
 * outside the store aborts (a finding). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "el_protocol.h"
#include "fuzz_common.h"

typedef struct {
    const uint8_t *data;
    size_t size, at;
    uint64_t clock_us;
} fuzz_input;

static int read_byte(void *user, int wait_ms)
{
    fuzz_input *in = (fuzz_input *)user;
    (void)wait_ms;
    return in->at < in->size ? in->data[in->at++] : -2;
}

static void write_bytes(void *user, const uint8_t *data, int n) { (void)user, (void)data, (void)n; }

static uint64_t now_us(void *user) { return ((fuzz_input *)user)->clock_us += 100; }

#define STORE_BYTES (64u << 10)
static uint8_t *store;

static void store_write(size_t offset, const void *data, size_t n)
{
    if (offset > STORE_BYTES || n > STORE_BYTES - offset) abort(); /* the updater wrote outside its store */
    memcpy(store + offset, data, n);
}

/* A switched-to model: the fuzz runtime when it is the image's own, else a real open
 * attempt in scratch memory (an uploaded blob is rarely a model; the server then switches
 * back and asks for the image's own again). */
static el_runtime *reopen(void *user, const uint8_t *model, size_t size, const char **error)
{
    static el_error err;
    static void *scratch;
    el_engine_options options = {0};
    el_runtime *rt;
    (void)user;
    if (model == fuzz_model_bytes()) return fuzz_open_runtime();
    if (scratch == NULL) scratch = malloc(FUZZ_MEMORY_BYTES);
    options.max_model_len = 64;
    rt = el_runtime_open(scratch, FUZZ_MEMORY_BYTES, model, size, &options, &err);
    if (rt == NULL) *error = err.message;
    return rt;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    el_runtime *rt = fuzz_open_runtime();
    fuzz_input in = {0};
    el_serve_io io = {0};
    el_updater updater;
    el_store model_store = {0};
    size_t model_size;
    if (store == NULL) store = (uint8_t *)malloc(STORE_BYTES);
    memset(store, 0, STORE_BYTES);
    model_store.base = store, model_store.size = STORE_BYTES, model_store.write = store_write;
    el_updater_init(&updater, model_store, fuzz_model_bytes(), fuzz_model_size());
    (void)el_updater_model(&updater, &model_size);
    io.updater = &updater;
    io.reopen = reopen;
    in.data = data, in.size = size;
    io.user = &in;
    io.read = read_byte;
    io.write = write_bytes;
    io.now_us = now_us;
    el_serve(rt, &io);
    el_serve_release();
    return 0;
}
