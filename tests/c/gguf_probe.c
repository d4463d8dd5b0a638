/* gguf_probe.c: a test harness around el_model_load.
 *
 * As a shared library (ctypes, tests/test_c_gguf.py): probe_load loads a model
 * from bytes the caller keeps alive, and the probe_* getters report what it found.
 *
 * Built with -DPROBE_MAIN it is a program for sanitizer runs, where each load gets
 * a heap copy of exactly the bytes it may read, so any read past them is caught:
 *   gguf_probe FILE...                  load each file: "status message" per line
 *   gguf_probe --truncate FILE          load every prefix: "length status" per line
 *   gguf_probe --mutate SEED COUNT FILE load COUNT seeded mutations: "index status"
 * It exits 2 if a failed load leaves no message or an unknown status.
 */
#include "el_model.h"

#define ARENA_BYTES (8u << 20)

static union {
    uint64_t align; /* the arena's base is 8-byte aligned, like any real arena */
    unsigned char bytes[ARENA_BYTES];
} arena_memory;

static el_arena arena;
static el_model model;
static int loaded;

static void copy_message(const el_error *err, char *message, size_t cap)
{
    size_t n = el_strlen(err->message);
    if (cap == 0) return;
    if (n >= cap) n = cap - 1;
    el_memcpy(message, err->message, n);
    message[n] = '\0';
}

/* config_out: dim, n_layers, n_heads, n_kv_heads, head_dim, kv_dim, hidden_dim,
 * vocab_size, context_length, tied (1 when output is token_embd);
 * floats_out: norm_eps, rope_theta. Either may be NULL. */
int probe_load(const unsigned char *file, size_t size, size_t arena_bytes, int *config_out, float *floats_out,
               char *message, size_t message_cap)
{
    el_error err;
    el_status status;
    const el_config *c = &model.config;
    err.status = EL_OK;
    err.message[0] = '\0';
    el_arena_init(&arena, arena_memory.bytes, arena_bytes < ARENA_BYTES ? arena_bytes : ARENA_BYTES);
    status = el_model_load(&model, file, size, &arena, &err);
    loaded = status == EL_OK;
    copy_message(&err, message, message_cap);
    if (loaded && config_out != NULL) {
        int values[10];
        int i;
        values[0] = c->dim, values[1] = c->n_layers, values[2] = c->n_heads, values[3] = c->n_kv_heads;
        values[4] = c->head_dim, values[5] = c->kv_dim, values[6] = c->hidden_dim, values[7] = c->vocab_size;
        values[8] = c->context_length, values[9] = model.output.data == model.token_embd.data;
        for (i = 0; i < 10; i++) config_out[i] = values[i];
    }
    if (loaded && floats_out != NULL) {
        floats_out[0] = c->norm_eps;
        floats_out[1] = c->rope_theta;
    }
    return (int)status;
}

size_t probe_arena_high_water(void) { return arena.high_water; }

static int copy_str(el_str s, char *out, size_t cap)
{
    if (!loaded || (size_t)s.len + 1 > cap) return -1;
    el_memcpy(out, s.data, s.len);
    out[s.len] = '\0';
    return (int)s.len;
}

/* The piece of token `id` (NUL-terminated), its length, or -1. */
int probe_piece(int id, char *out, size_t cap)
{
    if (!loaded || id < 0 || id >= model.vocab.n_tokens) return -1;
    return copy_str(model.vocab.pieces[id], out, cap);
}

float probe_score(int id) { return loaded ? model.vocab.scores[id] : 0.0f; }
int probe_token_type(int id) { return loaded ? model.vocab.types[id] : -1; }

/* bos, eos, unk. */
void probe_special(int *out)
{
    out[0] = model.vocab.bos_id;
    out[1] = model.vocab.eos_id;
    out[2] = model.vocab.unk_id;
}

/* which: 0 general.name, 1 tokenizer.chat_template. */
int probe_text(int which, char *out, size_t cap) { return copy_str(which ? model.chat_template : model.name, out, cap); }

static long long file_offset(const void *data)
{
    return data == NULL ? -1 : (long long)((const uint8_t *)data - model.gguf.file);
}

/* out: type, rows, cols, offset of the data in the file. layer < 0 picks kind 0
 * token_embd, 1 output, 2 output_norm; otherwise kind 0..6 are attn_q, attn_k,
 * attn_v, attn_output, ffn_gate, ffn_up, ffn_down and 7, 8 attn_norm, ffn_norm
 * (norms report only the offset). Returns 0, or -1 for a bad request. */
int probe_weight(int layer, int kind, long long *out)
{
    const el_matrix *m = NULL;
    const float *norm = NULL;
    if (!loaded || layer >= model.config.n_layers) return -1;
    if (layer < 0) {
        if (kind == 0) m = &model.token_embd;
        else if (kind == 1) m = &model.output;
        else norm = model.output_norm;
    } else {
        const el_layer_weights *w = &model.layers[layer];
        const el_matrix *matrices[7];
        matrices[0] = &w->attn_q, matrices[1] = &w->attn_k, matrices[2] = &w->attn_v;
        matrices[3] = &w->attn_output, matrices[4] = &w->ffn_gate, matrices[5] = &w->ffn_up;
        matrices[6] = &w->ffn_down;
        if (kind >= 0 && kind < 7) m = matrices[kind];
        else norm = kind == 7 ? w->attn_norm : w->ffn_norm;
    }
    out[0] = m != NULL ? (long long)m->type : 0;
    out[1] = m != NULL ? (long long)m->rows : 0;
    out[2] = m != NULL ? (long long)m->cols : 0;
    out[3] = m != NULL ? file_offset(m->data) : file_offset(norm);
    return 0;
}

#ifdef PROBE_MAIN
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Loads a heap copy of exactly n bytes, so reading past them is a sanitizer error. */
static int load_copy(const unsigned char *data, size_t n, char *message, size_t cap)
{
    unsigned char *copy = n > 0 ? (unsigned char *)malloc(n) : NULL;
    int status;
    if (n > 0 && copy == NULL) exit(3);
    if (n > 0) memcpy(copy, data, n);
    status = probe_load(copy, n, ARENA_BYTES, NULL, NULL, message, cap);
    free(copy);
    if (status < 0 || status > EL_ERR_CAPACITY || (status != 0 && message[0] == '\0')) {
        printf("BAD status %d with message \"%s\"\n", status, message);
        exit(2);
    }
    return status;
}

static unsigned char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *data;
    long n;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) exit(3);
    data = (unsigned char *)malloc((size_t)n + 1);
    if (data == NULL || fread(data, 1, (size_t)n, f) != (size_t)n) exit(3);
    fclose(f);
    *size = (size_t)n;
    return data;
}

static uint64_t rng_state;

/* xorshift64*: a fixed, seedable sequence on every platform. */
static uint64_t next_random(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

/* One to four changes: a random byte, an extreme byte, or a random 8-byte value;
 * half of them land in the header, where nearly all the checks are. */
static void mutate(unsigned char *data, size_t size, size_t header_size)
{
    int changes = 1 + (int)(next_random() % 4), i;
    static const unsigned char extremes[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
    for (i = 0; i < changes; i++) {
        size_t span = (next_random() % 2 && header_size > 0) ? header_size : size;
        size_t pos = (size_t)(next_random() % span);
        unsigned kind = (unsigned)(next_random() % 3);
        if (kind == 0) data[pos] = (unsigned char)next_random();
        else if (kind == 1) data[pos] = extremes[next_random() % 5];
        else {
            uint64_t v = next_random();
            size_t k;
            for (k = 0; k < 8 && pos + k < size; k++) data[pos + k] = (unsigned char)(v >> (8 * k));
        }
    }
}

int main(int argc, char **argv)
{
    char message[256];
    size_t size, n;
    unsigned char *data;
    int i;
    if (argc >= 3 && strcmp(argv[1], "--truncate") == 0) {
        data = read_file(argv[2], &size);
        for (n = 0; n < size; n++) printf("%lu %d\n", (unsigned long)n, load_copy(data, n, message, sizeof message));
        free(data);
        return 0;
    }
    if (argc >= 5 && strcmp(argv[1], "--mutate") == 0) {
        unsigned char *work;
        size_t header_size;
        int count = atoi(argv[3]);
        rng_state = strtoull(argv[2], NULL, 10) * 2 + 1; /* odd: never the stuck state 0 */
        data = read_file(argv[4], &size);
        work = (unsigned char *)malloc(size);
        if (work == NULL || load_copy(data, size, message, sizeof message) != 0) return 3;
        header_size = (size_t)model.gguf.data_offset; /* of the unmutated file */
        for (i = 0; i < count; i++) {
            memcpy(work, data, size);
            mutate(work, size, header_size);
            printf("%d %d\n", i, load_copy(work, size, message, sizeof message));
        }
        free(work);
        free(data);
        return 0;
    }
    for (i = 1; i < argc; i++) {
        int status;
        data = read_file(argv[i], &size);
        status = load_copy(data, size, message, sizeof message);
        printf("%d %s\n", status, message);
        free(data);
    }
    return 0;
}
#endif
