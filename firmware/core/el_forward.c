/* el_forward.c: RMSNorm, attention with RoPE and grouped-query heads over the paged
 * cache, SwiGLU feed-forward, and the classifier. */
#include "el_forward.h"

#include "el_math.h"

static int max_int(int a, int b) { return a > b ? a : b; }

size_t el_forward_bytes(const el_config *c, int max_rows, int max_logits, int max_context, int n_workers)
{
    size_t rows = (size_t)max_rows, widest = (size_t)max_int(c->dim, c->hidden_dim);
    size_t per_row = 4 * (size_t)c->dim + 2 * (size_t)c->kv_dim + 2 * (size_t)c->hidden_dim + (size_t)c->head_dim;
    size_t floats = rows * per_row
                    + (size_t)max_context * (size_t)max_int(n_workers, 1) * (size_t)(c->n_heads / c->n_kv_heads)
                    + (size_t)c->head_dim / 2
                    + (size_t)max_logits * (size_t)c->vocab_size + rows * widest / 32;
    return floats * sizeof(float) + rows * widest + 16 * 16;
}

el_status el_forward_init(el_forward_state *s, const el_config *c, int max_rows, int max_logits, int max_context,
                          int n_workers, el_arena *arena, el_error *err)
{
    size_t rows = (size_t)max_rows, widest = (size_t)max_int(c->dim, c->hidden_dim);
    int i;
    s->max_rows = max_rows;
    s->max_logits = max_logits;
    s->max_context = max_context;
    s->n_workers = max_int(n_workers, 1);
    s->parallel.run = NULL;
    s->parallel.pool = NULL;
    s->parallel.n_workers = 1;
    s->x = (float *)el_arena_alloc(arena, rows * (size_t)c->dim * sizeof(float), 16);
    s->xb = (float *)el_arena_alloc(arena, rows * (size_t)c->dim * sizeof(float), 16);
    s->q = (float *)el_arena_alloc(arena, rows * (size_t)c->dim * sizeof(float), 16);
    s->attention = (float *)el_arena_alloc(arena, rows * (size_t)c->dim * sizeof(float), 16);
    s->k = (float *)el_arena_alloc(arena, rows * (size_t)c->kv_dim * sizeof(float), 16);
    s->v = (float *)el_arena_alloc(arena, rows * (size_t)c->kv_dim * sizeof(float), 16);
    s->hb = (float *)el_arena_alloc(arena, rows * (size_t)c->hidden_dim * sizeof(float), 16);
    s->hb2 = (float *)el_arena_alloc(arena, rows * (size_t)c->hidden_dim * sizeof(float), 16);
    s->scores = (float *)el_arena_alloc(arena, (size_t)max_context * (size_t)s->n_workers *
                                                   (size_t)(c->n_heads / c->n_kv_heads) * sizeof(float), 16);
    s->rope_freqs = (float *)el_arena_alloc(arena, (size_t)(c->head_dim / 2) * sizeof(float), 16);
    s->rope_angles = (float *)el_arena_alloc(arena, rows * (size_t)c->head_dim * sizeof(float), 16);
    s->quantized.values = (int8_t *)el_arena_alloc(arena, rows * widest, 16);
    s->quantized.scales = (float *)el_arena_alloc(arena, rows * widest / 32 * sizeof(float) + sizeof(float), 16);
    s->logits = (float *)el_arena_alloc(arena, (size_t)max_logits * (size_t)c->vocab_size * sizeof(float), 16);
    if (s->x == NULL || s->xb == NULL || s->q == NULL || s->attention == NULL || s->k == NULL || s->v == NULL ||
        s->hb == NULL || s->hb2 == NULL || s->scores == NULL || s->rope_freqs == NULL || s->rope_angles == NULL ||
        s->quantized.values == NULL || s->quantized.scales == NULL || s->logits == NULL)
        return el_fail(err, EL_ERR_NO_MEMORY, "forward pass: the arena is too small for the activations", "", "");
    /* freq_i = theta^(-2i/head_dim), computed in double once so every target agrees */
    for (i = 0; i < c->head_dim / 2; i++)
        s->rope_freqs[i] = (float)(1.0 / el_pow((double)c->rope_theta, (double)(2 * i) / (double)c->head_dim));
    return EL_OK;
}

/* Slots of the block that starts at position t, up to position last. */
static int slots_from(const el_kv_cache *kv, int t, int last)
{
    return last - t + 1 < kv->block_size ? last - t + 1 : kv->block_size;
}

/* One row's attention for the query heads that share kv head `kv_head` (grouped-query
 * attention), over its sequence's cached positions 0..pos. Block by block, and within a
 * block every head of the group in turn, so a block's keys and values are read from
 * memory once for the group; each head's sums are the one-head loop's, in its order.
 * scores holds max_context floats per head of the group. */
static void attend_group(float *scores, int max_context, const el_config *c, const el_kv_cache *kv, int layer,
                         const el_batch_row *row, int kv_head, const float *q, float scale, float *out)
{
    int group = c->n_heads / c->n_kv_heads, t, g, i;
    const float *qh = q + kv_head * group * c->head_dim;
    float *oh = out + kv_head * group * c->head_dim;
    for (t = 0; t <= row->pos; t += kv->block_size)
        for (g = 0; g < group; g++)
            el_kv_key_dots(kv, row->block_table[t / kv->block_size], slots_from(kv, t, row->pos), layer, kv_head,
                           qh + g * c->head_dim, scale, scores + (size_t)g * (size_t)max_context + t);
    for (g = 0; g < group; g++) el_softmax(scores + (size_t)g * (size_t)max_context, row->pos + 1);
    for (i = 0; i < group * c->head_dim; i++) oh[i] = 0.0f;
    for (t = 0; t <= row->pos; t += kv->block_size)
        for (g = 0; g < group; g++)
            el_kv_value_adds(kv, row->block_table[t / kv->block_size], slots_from(kv, t, row->pos), layer, kv_head,
                             scores + (size_t)g * (size_t)max_context + t, oh + g * c->head_dim);
}

/* Attention as a task over (row, kv head) items, so the workers share a step's heads. */
typedef struct {
    el_forward_state *s;
    const el_config *c;
    const el_kv_cache *kv;
    int layer;
    const el_batch_row *rows;
    float scale; /* 1 / sqrt(head_dim), once per layer rather than per head */
} attention_task;

static void attend_items(void *ctx, int begin, int end, int worker)
{
    const attention_task *a = (const attention_task *)ctx;
    const el_config *c = a->c;
    int group = c->n_heads / c->n_kv_heads, item;
    float *scores = a->s->scores + (size_t)worker * (size_t)group * (size_t)a->s->max_context;
    for (item = begin; item < end; item++) {
        int r = item / c->n_kv_heads, kv_head = item % c->n_kv_heads;
        attend_group(scores, a->s->max_context, c, a->kv, a->layer, &a->rows[r], kv_head, a->s->q + r * c->dim,
                     a->scale, a->s->attention + r * c->dim);
    }
}

static void attention_block(el_forward_state *s, const el_model *m, el_kv_cache *kv, int layer,
                            const el_batch_row *rows, int n)
{
    const el_config *c = &m->config;
    const el_layer_weights *w = &m->layers[layer];
    attention_task task;
    int r, i;
    for (r = 0; r < n; r++) el_rmsnorm(s->xb + r * c->dim, s->x + r * c->dim, w->attn_norm, c->dim, c->norm_eps);
    {
        float *const outputs[3] = {s->q, s->k, s->v};
        const el_matrix *const weights[3] = {&w->attn_q, &w->attn_k, &w->attn_v};
        el_matmuls(outputs, weights, 3, s->xb, n, &s->quantized, &s->parallel);
    }
    for (r = 0; r < n; r++) {
        const el_batch_row *row = &rows[r];
        const float *angles = s->rope_angles + (size_t)r * (size_t)c->head_dim;
        el_rope(s->q + r * c->dim, c->n_heads, c->head_dim, angles);
        el_rope(s->k + r * c->kv_dim, c->n_kv_heads, c->head_dim, angles);
        el_kv_store(kv, row->block_table[row->pos / kv->block_size], row->pos % kv->block_size, layer,
                    s->k + r * c->kv_dim, s->v + r * c->kv_dim);
    }
    /* Only after every row is stored: a prefill row attends to earlier rows of its chunk. */
    task.s = s;
    task.c = c;
    task.kv = kv;
    task.layer = layer;
    task.rows = rows;
    task.scale = 1.0f / el_sqrtf((float)c->head_dim);
    el_parallel_for(&s->parallel, attend_items, &task, n * c->n_kv_heads);
    el_matmul(s->xb, &w->attn_output, s->attention, n, &s->quantized, &s->parallel);
    for (i = 0; i < n * c->dim; i++) s->x[i] += s->xb[i];
}

static void feed_forward_block(el_forward_state *s, const el_model *m, int layer, int n)
{
    const el_config *c = &m->config;
    const el_layer_weights *w = &m->layers[layer];
    int r, i;
    for (r = 0; r < n; r++) el_rmsnorm(s->xb + r * c->dim, s->x + r * c->dim, w->ffn_norm, c->dim, c->norm_eps);
    {
        float *const outputs[2] = {s->hb, s->hb2};
        const el_matrix *const weights[2] = {&w->ffn_gate, &w->ffn_up};
        el_matmuls(outputs, weights, 2, s->xb, n, &s->quantized, &s->parallel);
    }
    el_swiglu(s->hb, s->hb2, n * c->hidden_dim);
    el_matmul(s->xb, &w->ffn_down, s->hb, n, &s->quantized, &s->parallel);
    for (i = 0; i < n * c->dim; i++) s->x[i] += s->xb[i];
}

int el_forward(el_forward_state *s, const el_model *m, el_kv_cache *kv, const el_batch_row *rows, int n)
{
    const el_config *c = &m->config;
    int r, layer, n_logits = 0;
    for (r = 0; r < n; r++) {
        el_matrix_row(s->x + r * c->dim, &m->token_embd, (uint32_t)rows[r].token);
        el_rope_angles(s->rope_angles + (size_t)r * (size_t)c->head_dim, c->head_dim, rows[r].pos, s->rope_freqs);
    }
    for (layer = 0; layer < c->n_layers; layer++) {
        attention_block(s, m, kv, layer, rows, n);
        feed_forward_block(s, m, layer, n);
    }
    /* The classifier only for rows that want logits, packed together as one batch. */
    for (r = 0; r < n; r++)
        if (rows[r].want_logits)
            el_rmsnorm(s->xb + n_logits++ * c->dim, s->x + r * c->dim, m->output_norm, c->dim, c->norm_eps);
    if (n_logits > 0) el_matmul(s->logits, &m->output, s->xb, n_logits, &s->quantized, &s->parallel);
    return n_logits;
}
