/* bench_prompt_probe.c: el_bench_prompt (firmware/apps/common/el_bench_prompt.c) behind
 * flat calls, for tests/test_rough_edges.py to compare with Python's bench_prompt.
 *
 * The runtime is opened in memory Python owns (and must keep alive), with the engine's
 * defaults: the bench prompt only needs the tokenizer.
 */
#include "el_bench_prompt.h"

static el_runtime *rt;
static el_error last_error;

/* Returns the el_status of opening the model. */
int bench_probe_open(void *memory, size_t memory_size, const uint8_t *model, size_t model_size)
{
    el_engine_options options;
    el_memset(&options, 0, sizeof options);
    rt = el_runtime_open(memory, memory_size, model, model_size, &options, &last_error);
    return rt != NULL ? (int)EL_OK : (int)last_error.status;
}

int bench_probe_prompt(int n, uint32_t call, int32_t *out, int capacity)
{
    return el_bench_prompt(rt, n, call, out, capacity, &last_error);
}

int bench_probe_room(int n) { return el_bench_prompt_room(n); }

const char *bench_probe_text(void) { return el_bench_text; }

const char *bench_probe_error(void) { return last_error.message; }
