/* fuzz_serve.c: any bytes as the serial input of the device's serve loop (el_serve,
 * what the POSIX program's serve mode and the bare-metal main loop run) on a real
 * model; the loop must answer and return when the input ends. */
#include <stdint.h>
#include <stdlib.h>

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    el_runtime *rt = fuzz_open_runtime();
    fuzz_input in = {0};
    el_serve_io io = {0};
    in.data = data, in.size = size;
    io.user = &in;
    io.read = read_byte;
    io.write = write_bytes;
    io.now_us = now_us;
    el_serve(rt, &io);
    el_serve_release();
    return 0;
}
