/* el_model.c: a llama model as a checked view over a GGUF file.
 *
 * Loading goes: parse the GGUF, check the architecture, read the config from the
 * llama.* keys, read the vocabulary from tokenizer.ggml.*, then find every weight
 * with the shape the config implies. Weights are not copied; the vocabulary's
 * scores and types are, because arrays in the key/value section have no alignment
 * and the tokenizer wants plain float and int32 arrays.
 */
#include "el_model.h"

#include <float.h>
#include <limits.h>

#define STRUCT_ALIGN 8u        /* enough for the pointers in el_str and our structs */
#define TENSORS_PER_LAYER 9u   /* two norms and seven matrices */

size_t el_row_bytes(uint32_t type, uint32_t cols)
{
    switch (type) {
    case EL_TYPE_F32: return (size_t)cols * 4;
    case EL_TYPE_F16: return (size_t)cols * 2;
    case EL_TYPE_Q8_0: return (size_t)cols / 32 * 34;
    case EL_TYPE_Q4_0: return (size_t)cols / 32 * 18;
    default: return 0;
    }
}

/* ------------------------------------------------------------ architecture and config */

static el_status check_architecture(const el_gguf *gguf, el_error *err)
{
    el_str arch;
    el_status status = el_gguf_get_str(gguf, "general.architecture", &arch, err);
    if (status != EL_OK) return status;
    if (el_str_equals(arch, "llama")) return EL_OK;
    el_fail(err, EL_ERR_UNSUPPORTED, "unsupported architecture \"", NULL, NULL);
    el_error_append_str(err, arch);
    el_error_append(err, "\" (the runtime runs \"llama\" only)");
    return EL_ERR_UNSUPPORTED;
}

/* A count key: an integer from 1 to INT_MAX (the config holds ints). */
static el_status get_count(const el_gguf *gguf, const char *key, int *out, el_error *err)
{
    uint32_t value;
    el_status status = el_gguf_get_u32(gguf, key, &value, err);
    if (status != EL_OK) return status;
    if (value < 1 || value > INT_MAX) {
        el_fail(err, EL_ERR_FORMAT, "metadata key ", key, " is ");
        el_error_num(err, (long long)value);
        el_error_append(err, ", must be from 1 to ");
        el_error_num(err, INT_MAX);
        return EL_ERR_FORMAT;
    }
    *out = (int)value;
    return EL_OK;
}

static el_status get_optional_count(const el_gguf *gguf, const char *key, int fallback, int *out, el_error *err)
{
    if (el_gguf_find(gguf, key) != NULL) return get_count(gguf, key, out, err);
    *out = fallback;
    return EL_OK;
}

/* A positive, finite float (NaN fails the first comparison). */
static el_status get_positive_float(const el_gguf *gguf, const char *key, float *out, el_error *err)
{
    el_status status = el_gguf_get_f32(gguf, key, out, err);
    if (status != EL_OK) return status;
    if (!(*out > 0.0f) || *out > FLT_MAX)
        return el_fail(err, EL_ERR_FORMAT, "metadata key ", key, " must be a positive finite number");
    return EL_OK;
}

static el_status read_config(const el_gguf *gguf, el_config *cfg, el_error *err)
{
    el_status status = get_count(gguf, "llama.embedding_length", &cfg->dim, err);
    if (status == EL_OK) status = get_count(gguf, "llama.block_count", &cfg->n_layers, err);
    if (status == EL_OK) status = get_count(gguf, "llama.feed_forward_length", &cfg->hidden_dim, err);
    if (status == EL_OK) status = get_count(gguf, "llama.attention.head_count", &cfg->n_heads, err);
    if (status == EL_OK)
        status = get_optional_count(gguf, "llama.attention.head_count_kv", cfg->n_heads, &cfg->n_kv_heads, err);
    if (status == EL_OK) status = get_count(gguf, "llama.context_length", &cfg->context_length, err);
    if (status == EL_OK)
        status = get_positive_float(gguf, "llama.attention.layer_norm_rms_epsilon", &cfg->norm_eps, err);
    cfg->rope_theta = 10000.0f;
    if (status == EL_OK && el_gguf_find(gguf, "llama.rope.freq_base") != NULL)
        status = get_positive_float(gguf, "llama.rope.freq_base", &cfg->rope_theta, err);
    /* A base below 1 makes RoPE's frequencies grow past 1 and its angles past what
     * el_sincosf reduces (position x frequency stays below 2^31 from a base of 1 on) */
    if (status == EL_OK && cfg->rope_theta < 1.0f)
        status = el_fail(err, EL_ERR_FORMAT, "metadata key llama.rope.freq_base must be at least 1", "", "");
    return status;
}

static el_status config_error(el_error *err, el_status status, const char *what, long long a, const char *middle,
                              long long b)
{
    el_fail(err, status, what, NULL, NULL);
    el_error_num(err, a);
    el_error_append(err, middle);
    el_error_num(err, b);
    return status;
}

/* The head arithmetic the kernels rely on: whole heads, whole KV groups, and an even
 * head size because RoPE rotates pairs. */
static el_status check_heads(const el_gguf *gguf, el_config *cfg, el_error *err)
{
    int rope_dims;
    el_status status;
    if (cfg->dim % cfg->n_heads != 0)
        return config_error(err, EL_ERR_FORMAT, "llama.embedding_length ", cfg->dim,
                            " is not a multiple of llama.attention.head_count ", cfg->n_heads);
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return config_error(err, EL_ERR_FORMAT, "llama.attention.head_count ", cfg->n_heads,
                            " is not a multiple of llama.attention.head_count_kv ", cfg->n_kv_heads);
    cfg->head_dim = cfg->dim / cfg->n_heads;
    cfg->kv_dim = cfg->n_kv_heads * cfg->head_dim;
    if (cfg->head_dim % 2 != 0) {
        config_error(err, EL_ERR_FORMAT, "the head size (llama.embedding_length ", cfg->dim, " / head_count ",
                     cfg->n_heads);
        el_error_append(err, ") is odd; RoPE rotates pairs");
        return EL_ERR_FORMAT;
    }
    status = get_optional_count(gguf, "llama.rope.dimension_count", cfg->head_dim, &rope_dims, err);
    if (status == EL_OK && rope_dims != cfg->head_dim) {
        config_error(err, EL_ERR_UNSUPPORTED, "llama.rope.dimension_count ", rope_dims, " differs from the head size ",
                     cfg->head_dim);
        el_error_append(err, " (partial RoPE is not supported)");
        return EL_ERR_UNSUPPORTED;
    }
    return status;
}

/* ------------------------------------------------------------ vocabulary */

/* An array key whose elements are of `type`; its length goes to *len. */
static el_status get_array(const el_gguf *gguf, const char *key, uint32_t type, const char *type_name,
                           const el_gguf_kv **out, el_error *err)
{
    const el_gguf_kv *kv = el_gguf_find(gguf, key);
    if (kv == NULL) return el_fail(err, EL_ERR_FORMAT, "missing metadata key ", key, NULL);
    if (kv->type != EL_GGUF_ARRAY || kv->array_type != type) {
        el_fail(err, EL_ERR_FORMAT, "metadata key ", key, " must be an array of ");
        el_error_append(err, type_name);
        return EL_ERR_FORMAT;
    }
    *out = kv;
    return EL_OK;
}

/* The pieces as el_str pointing into the file. Parsing checked every string of the
 * array, so walking the length prefixes here stays inside the buffer. */
static el_status read_pieces(const el_gguf_kv *kv, el_vocab *vocab, el_arena *arena, el_error *err)
{
    el_str *pieces;
    const uint8_t *p = kv->value;
    int i;
    if (kv->array_len < 1 || kv->array_len > INT_MAX || kv->array_len > SIZE_MAX / sizeof(el_str))
        return el_fail(err, EL_ERR_FORMAT, "tokenizer.ggml.tokens must hold 1 to 2147483647 tokens", NULL, NULL);
    vocab->n_tokens = (int)kv->array_len;
    pieces = (el_str *)el_arena_alloc(arena, (size_t)vocab->n_tokens * sizeof(el_str), STRUCT_ALIGN);
    if (pieces == NULL) return el_fail(err, EL_ERR_NO_MEMORY, "the arena is too small for the vocabulary", NULL, NULL);
    for (i = 0; i < vocab->n_tokens; i++) {
        pieces[i].len = (uint32_t)el_read_u64(p);
        pieces[i].data = (const char *)p + 8;
        p += 8 + pieces[i].len;
    }
    vocab->pieces = pieces;
    return EL_OK;
}

static el_status check_vocab_length(const el_gguf_kv *kv, const char *key, int n_tokens, el_error *err)
{
    if (kv->array_len == (uint64_t)n_tokens) return EL_OK;
    el_fail(err, EL_ERR_FORMAT, key, " has ", NULL);
    el_error_num(err, (long long)kv->array_len); /* at most the file size */
    el_error_append(err, " entries but tokenizer.ggml.tokens has ");
    el_error_num(err, n_tokens);
    return EL_ERR_FORMAT;
}

/* Two's complement of a u32 without the implementation-defined conversion. */
static int32_t as_i32(uint32_t u)
{
    return u <= 0x7fffffffu ? (int32_t)u : -(int32_t)(~u) - 1;
}

/* Scores (float32) and token types (int32), copied into aligned arrays. */
static el_status read_scores_and_types(const el_gguf *gguf, el_vocab *vocab, el_arena *arena, el_error *err)
{
    const el_gguf_kv *scores, *types;
    float *score_out;
    int32_t *type_out;
    int i;
    el_status status = get_array(gguf, "tokenizer.ggml.scores", EL_GGUF_FLOAT32, "float32", &scores, err);
    if (status == EL_OK) status = check_vocab_length(scores, "tokenizer.ggml.scores", vocab->n_tokens, err);
    if (status == EL_OK)
        status = get_array(gguf, "tokenizer.ggml.token_type", EL_GGUF_INT32, "int32", &types, err);
    if (status == EL_OK) status = check_vocab_length(types, "tokenizer.ggml.token_type", vocab->n_tokens, err);
    if (status != EL_OK) return status;
    score_out = (float *)el_arena_alloc(arena, (size_t)vocab->n_tokens * sizeof(float), STRUCT_ALIGN);
    type_out = (int32_t *)el_arena_alloc(arena, (size_t)vocab->n_tokens * sizeof(int32_t), STRUCT_ALIGN);
    if (score_out == NULL || type_out == NULL)
        return el_fail(err, EL_ERR_NO_MEMORY, "the arena is too small for the vocabulary", NULL, NULL);
    for (i = 0; i < vocab->n_tokens; i++) {
        score_out[i] = el_read_f32(scores->value + (size_t)i * 4);
        type_out[i] = as_i32(el_read_u32(types->value + (size_t)i * 4));
    }
    vocab->scores = score_out;
    vocab->types = type_out;
    return EL_OK;
}

/* A special token id: optional with a default, and inside the vocabulary. */
static el_status get_token_id(const el_gguf *gguf, const char *key, int fallback, int n_tokens, int *out,
                              el_error *err)
{
    uint32_t id = (uint32_t)fallback;
    if (el_gguf_find(gguf, key) != NULL) {
        el_status status = el_gguf_get_u32(gguf, key, &id, err);
        if (status != EL_OK) return status;
    }
    if (id >= (uint32_t)n_tokens) {
        el_fail(err, EL_ERR_FORMAT, key, " ", NULL);
        el_error_num(err, (long long)id);
        el_error_append(err, " is outside the vocabulary of ");
        el_error_num(err, n_tokens);
        return EL_ERR_FORMAT;
    }
    *out = (int)id;
    return EL_OK;
}

static el_status read_vocab(const el_gguf *gguf, el_vocab *vocab, el_arena *arena, el_error *err)
{
    const el_gguf_kv *tokens;
    el_status status = get_array(gguf, "tokenizer.ggml.tokens", EL_GGUF_STRING, "strings", &tokens, err);
    if (status == EL_OK) status = read_pieces(tokens, vocab, arena, err);
    if (status == EL_OK) status = read_scores_and_types(gguf, vocab, arena, err);
    if (status == EL_OK)
        status = get_token_id(gguf, "tokenizer.ggml.bos_token_id", 1, vocab->n_tokens, &vocab->bos_id, err);
    if (status == EL_OK)
        status = get_token_id(gguf, "tokenizer.ggml.eos_token_id", 2, vocab->n_tokens, &vocab->eos_id, err);
    if (status == EL_OK)
        status = get_token_id(gguf, "tokenizer.ggml.unknown_token_id", 0, vocab->n_tokens, &vocab->unk_id, err);
    return status;
}

/* An optional string key; empty (not NULL) when absent. */
static el_status get_optional_str(const el_gguf *gguf, const char *key, el_str *out, el_error *err)
{
    out->data = "";
    out->len = 0;
    return el_gguf_find(gguf, key) != NULL ? el_gguf_get_str(gguf, key, out, err) : EL_OK;
}

/* ------------------------------------------------------------ weights */

static void append_shape(el_error *err, const uint64_t *ne, uint32_t n_dims)
{
    uint32_t i;
    el_error_append(err, "[");
    for (i = 0; i < n_dims; i++) {
        if (i > 0) el_error_append(err, ", ");
        el_error_num(err, (long long)ne[i]); /* parse keeps every ne below 2**62 */
    }
    el_error_append(err, "]");
}

/* A tensor the model needs, with ne = [ne0, ne1] (ne1 = 1 for a vector). */
static el_status find_shaped(const el_gguf *gguf, const char *name, int ne0, int ne1, const el_gguf_tensor **out,
                             el_error *err)
{
    const el_gguf_tensor *t = el_gguf_find_tensor(gguf, name);
    uint64_t want[2];
    if (t == NULL) return el_fail(err, EL_ERR_FORMAT, "missing tensor ", name, NULL);
    want[0] = (uint64_t)ne0;
    want[1] = (uint64_t)ne1;
    if (t->ne[0] != want[0] || t->ne[1] != want[1] || t->ne[2] != 1 || t->ne[3] != 1) {
        el_fail(err, EL_ERR_FORMAT, "tensor ", name, " has shape ");
        append_shape(err, t->ne, t->n_dims);
        el_error_append(err, ", expected ");
        append_shape(err, want, ne1 == 1 ? 1 : 2);
        return EL_ERR_FORMAT;
    }
    *out = t;
    return EL_OK;
}

/* Kernels read F32 data as float arrays (F16 and the quantized blocks byte by byte),
 * so F32 data must be 4-byte aligned. Offsets are aligned in a well-formed file, so
 * a misaligned address means either a file with a tiny general.alignment or a
 * buffer loaded at an odd address. */
static el_status check_data_alignment(const el_gguf *gguf, const el_gguf_tensor *t, const char *name, el_error *err)
{
    if (t->type != EL_TYPE_F32 || ((uintptr_t)t->data & 3u) == 0) return EL_OK;
    if ((size_t)(t->data - gguf->file) % 4 != 0)
        return el_fail(err, EL_ERR_FORMAT, "tensor ", name, "'s F32 data is not 4-byte aligned in the file");
    return el_fail(err, EL_ERR_ARGUMENT, "tensor ", name,
                   "'s F32 data is misaligned in memory: load the model at a 32-byte aligned address");
}

static el_status load_matrix(const el_gguf *gguf, const char *name, int cols, int rows, el_matrix *m, el_error *err)
{
    const el_gguf_tensor *t;
    el_status status = find_shaped(gguf, name, cols, rows, &t, err);
    if (status == EL_OK) status = check_data_alignment(gguf, t, name, err);
    if (status != EL_OK) return status;
    m->type = t->type;
    m->rows = (uint32_t)rows;
    m->cols = (uint32_t)cols;
    m->layout = EL_LAYOUT_ROWS;
    m->streamed = 0;
    m->data = t->data;
    return EL_OK;
}

/* Norm weights are read as floats directly, so only F32 will do. */
static el_status load_norm(const el_gguf *gguf, const char *name, int dim, const float **out, el_error *err)
{
    const el_gguf_tensor *t;
    el_status status = find_shaped(gguf, name, dim, 1, &t, err);
    if (status != EL_OK) return status;
    if (t->type != EL_TYPE_F32) {
        el_fail(err, EL_ERR_UNSUPPORTED, "tensor ", name, " is ");
        el_error_append(err, el_gguf_type_name(t->type));
        el_error_append(err, "; norm weights must be F32");
        return EL_ERR_UNSUPPORTED;
    }
    status = check_data_alignment(gguf, t, name, err);
    if (status == EL_OK) *out = (const float *)(const void *)t->data;
    return status;
}

/* "blk.<layer>.<part>.weight" in buf (64 bytes: parts are short, layers < 2**31). */
static const char *layer_tensor_name(char *buf, int layer, const char *part)
{
    char digits[12];
    int n = 0;
    size_t len = 4, part_len = el_strlen(part);
    el_memcpy(buf, "blk.", 4);
    do {
        digits[n++] = (char)('0' + layer % 10);
        layer /= 10;
    } while (layer > 0);
    while (n > 0) buf[len++] = digits[--n];
    buf[len++] = '.';
    el_memcpy(buf + len, part, part_len);
    el_memcpy(buf + len + part_len, ".weight", 8); /* with the NUL */
    return buf;
}

static el_status load_layer(const el_gguf *gguf, const el_config *c, int i, el_layer_weights *w, el_error *err)
{
    char name[64];
    el_status status = load_norm(gguf, layer_tensor_name(name, i, "attn_norm"), c->dim, &w->attn_norm, err);
    if (status == EL_OK) status = load_norm(gguf, layer_tensor_name(name, i, "ffn_norm"), c->dim, &w->ffn_norm, err);
    if (status == EL_OK)
        status = load_matrix(gguf, layer_tensor_name(name, i, "attn_q"), c->dim, c->dim, &w->attn_q, err);
    if (status == EL_OK)
        status = load_matrix(gguf, layer_tensor_name(name, i, "attn_k"), c->dim, c->kv_dim, &w->attn_k, err);
    if (status == EL_OK)
        status = load_matrix(gguf, layer_tensor_name(name, i, "attn_v"), c->dim, c->kv_dim, &w->attn_v, err);
    if (status == EL_OK)
        status = load_matrix(gguf, layer_tensor_name(name, i, "attn_output"), c->dim, c->dim, &w->attn_output, err);
    if (status == EL_OK)
        status = load_matrix(gguf, layer_tensor_name(name, i, "ffn_gate"), c->dim, c->hidden_dim, &w->ffn_gate, err);
    if (status == EL_OK)
        status = load_matrix(gguf, layer_tensor_name(name, i, "ffn_up"), c->dim, c->hidden_dim, &w->ffn_up, err);
    if (status == EL_OK)
        status = load_matrix(gguf, layer_tensor_name(name, i, "ffn_down"), c->hidden_dim, c->dim, &w->ffn_down, err);
    return status;
}

static el_status load_layers(el_model *model, el_arena *arena, el_error *err)
{
    const el_config *c = &model->config;
    int i;
    /* Each layer needs its tensors in the file, so a bogus block_count is refused
     * here before the arena is asked for its layer table. */
    if ((uint64_t)c->n_layers * TENSORS_PER_LAYER > model->gguf.n_tensors) {
        config_error(err, EL_ERR_FORMAT, "llama.block_count ", c->n_layers, " needs 9 tensors per layer; the file has ",
                     (long long)model->gguf.n_tensors);
        el_error_append(err, " tensors");
        return EL_ERR_FORMAT;
    }
    model->layers = (el_layer_weights *)el_arena_alloc(arena, (size_t)c->n_layers * sizeof(el_layer_weights),
                                                       STRUCT_ALIGN);
    if (model->layers == NULL)
        return el_fail(err, EL_ERR_NO_MEMORY, "the arena is too small for the layer table", NULL, NULL);
    for (i = 0; i < c->n_layers; i++) {
        el_status status = load_layer(&model->gguf, c, i, &model->layers[i], err);
        if (status != EL_OK) return status;
    }
    return EL_OK;
}

/* The embedding, the final norm and the classifier, which is the embedding again
 * when output.weight is absent (tied). */
static el_status load_ends(el_model *model, el_error *err)
{
    const el_gguf *gguf = &model->gguf;
    const el_config *c = &model->config;
    el_status status = load_matrix(gguf, "token_embd.weight", c->dim, c->vocab_size, &model->token_embd, err);
    if (status == EL_OK) status = load_norm(gguf, "output_norm.weight", c->dim, &model->output_norm, err);
    if (status != EL_OK) return status;
    if (el_gguf_find_tensor(gguf, "output.weight") == NULL) {
        model->output = model->token_embd;
        return EL_OK;
    }
    return load_matrix(gguf, "output.weight", c->dim, c->vocab_size, &model->output, err);
}

/* ------------------------------------------------------------ loading */

el_matrix *el_model_matrix(el_model *model, int index)
{
    el_layer_weights *w;
    if (index == 0) return &model->output;
    if (index < 1 || index > 7 * model->config.n_layers) return NULL;
    w = &model->layers[(index - 1) / 7];
    switch ((index - 1) % 7) {
    case 0: return &w->attn_q;
    case 1: return &w->attn_k;
    case 2: return &w->attn_v;
    case 3: return &w->attn_output;
    case 4: return &w->ffn_gate;
    case 5: return &w->ffn_up;
    default: return &w->ffn_down;
    }
}

/* Every matrix gets the model's verdict: all of them are read each token, so whether one
 * comes from a cache depends on their total, not on its own size. */
static void mark_streamed(el_model *model)
{
    size_t total = 0;
    uint32_t streamed;
    el_matrix *m;
    int i;
    for (i = 0; (m = el_model_matrix(model, i)) != NULL; i++) total += (size_t)m->rows * el_row_bytes(m->type, m->cols);
    streamed = total > EL_CACHED_WEIGHT_BYTES;
    for (i = 0; (m = el_model_matrix(model, i)) != NULL; i++) m->streamed = streamed;
    model->token_embd.streamed = streamed;
}

el_status el_model_load(el_model *model, const uint8_t *file, size_t size, el_arena *arena, el_error *err)
{
    size_t mark;
    el_status status;
    if (model == NULL || arena == NULL)
        return el_fail(err, EL_ERR_ARGUMENT, "el_model_load: NULL argument", NULL, NULL);
    el_memset(model, 0, sizeof *model);
    mark = el_arena_mark(arena);
    status = el_gguf_parse(&model->gguf, file, size, arena, err);
    if (status == EL_OK) status = check_architecture(&model->gguf, err);
    if (status == EL_OK) status = read_config(&model->gguf, &model->config, err);
    if (status == EL_OK) status = check_heads(&model->gguf, &model->config, err);
    if (status == EL_OK) status = read_vocab(&model->gguf, &model->vocab, arena, err);
    model->config.vocab_size = model->vocab.n_tokens;
    if (status == EL_OK) status = get_optional_str(&model->gguf, "general.name", &model->name, err);
    if (status == EL_OK) status = get_optional_str(&model->gguf, "tokenizer.chat_template", &model->chat_template, err);
    if (status == EL_OK) status = load_ends(model, err);
    if (status == EL_OK) status = load_layers(model, arena, err);
    if (status == EL_OK) mark_streamed(model);
    if (status != EL_OK) el_arena_reset(arena, mark); /* a failed load leaves the arena as it found it */
    return status;
}

/* ------------------------------------------------------------ non-finite weights */

/* A NaN or Inf weight turns every activation it touches into NaN, and the int8
 * activation quantizer has no value for NaN, so such a file must be refused, not run.
 * One pass reads each F32/F16 value's exponent bits and each quantized block's fp16
 * scale (the int8/int4 values are always finite). */
#define SCAN_CHUNK 4096u  /* values tested branch-free before one look at the result */

/* Adding one to an all-ones exponent carries into the sign bit: bit 31 of the OR says
 * whether any of the n floats is NaN or Inf, with no branch, so the loop vectorizes. */
static int f32_chunk_bad(const uint8_t *p, uint64_t n)
{
    uint32_t acc = 0;
    uint64_t i;
    for (i = 0; i < n; i++) acc |= (el_read_u32(p + i * 4) & 0x7fffffffu) + 0x00800000u;
    return (acc & 0x80000000u) != 0;
}

/* The same for n fp16 values `stride` bytes apart (2 for F16, a block for Q8_0 and
 * Q4_0, whose block starts with its fp16 scale): exponent 0x7c00, the carry in bit 15. */
static int f16_chunk_bad(const uint8_t *p, size_t stride, uint64_t n)
{
    uint32_t acc = 0;
    uint64_t i;
    for (i = 0; i < n; i++, p += stride) acc |= (((uint32_t)p[0] | (uint32_t)p[1] << 8) & 0x7fffu) + 0x0400u;
    return (acc & 0x8000u) != 0;
}

/* Bytes from one F32/F16 value, or one quantized block, to the next. */
static size_t value_stride(uint32_t type)
{
    return type == EL_TYPE_F32 ? 4 : type == EL_TYPE_F16 ? 2 : type == EL_TYPE_Q8_0 ? 34 : 18;
}

static int chunk_bad(const el_gguf_tensor *t, uint64_t at, uint64_t n)
{
    size_t stride = value_stride(t->type);
    const uint8_t *p = t->data + at * stride;
    return t->type == EL_TYPE_F32 ? f32_chunk_bad(p, n) : f16_chunk_bad(p, stride, n);
}

/* The index of the first non-finite value (an element, or a block's scale), or n when
 * there is none: chunks are tested branch-free, and only a bad one value by value. */
static uint64_t first_non_finite(const el_gguf_tensor *t, uint64_t n)
{
    uint64_t at, i, len;
    for (at = 0; at < n; at += len) {
        len = n - at < SCAN_CHUNK ? n - at : SCAN_CHUNK;
        if (!chunk_bad(t, at, len)) continue;
        for (i = at; i < at + len; i++)
            if (chunk_bad(t, i, 1)) return i;
    }
    return n;
}

/* Elements (F32, F16) or 32-value blocks (Q8_0, Q4_0) of a tensor. */
static uint64_t value_count(const el_gguf_tensor *t)
{
    return t->nbytes / value_stride(t->type);
}

el_status el_model_check_values(const el_model *model, el_error *err)
{
    uint64_t i;
    for (i = 0; i < model->gguf.n_tensors; i++) {
        const el_gguf_tensor *t = &model->gguf.tensors[i];
        uint64_t n = value_count(t), bad = first_non_finite(t, n);
        int quantized = t->type == EL_TYPE_Q8_0 || t->type == EL_TYPE_Q4_0;
        if (bad == n) continue;
        el_fail(err, EL_ERR_FORMAT, "corrupt model: tensor ", NULL, NULL);
        el_error_append_str(err, t->name);
        el_error_append(err, quantized ? " has a NaN or Inf scale in block " : " has a NaN or Inf value at element ");
        el_error_num(err, (long long)bad); /* below the file size */
        return EL_ERR_FORMAT;
    }
    return EL_OK;
}
