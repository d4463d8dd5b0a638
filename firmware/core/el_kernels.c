/* el_kernels.c: matmul split into row tiles over the workers; norms, RoPE, softmax. */
#include "el_kernels.h"

#include "el_math.h"

static uint16_t read_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

const char *el_kernels_name(void) { return EL_KERNELS_NAME; }

/* ------------------------------------------------------------ matmul */

/* Rows go to workers in tiles: a vector kernel's row groups never straddle two
 * workers, and a tile is enough work to be worth a hand-off. */
#define EL_ROW_TILE 16
/* Below this many multiply-adds a matmul runs on the caller's thread: waking the
 * other workers would cost more than it saves. */
#define EL_PARALLEL_MIN_WORK 32768L

/* Up to EL_MAX_MATMULS matmuls of one input as one task: tiles of the first matrix, then
 * of the next, so a worker's range may span two matrices. */
typedef struct {
    el_matmul_task task[EL_MAX_MATMULS];
    int first_tile[EL_MAX_MATMULS + 1];
    int n;
} matmul_group;

static void run_rows(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    switch (t->w->type) {
    case EL_TYPE_F32: el_kernel_matmul_f32(t, r0, r1); break;
    case EL_TYPE_F16: el_kernel_matmul_f16(t, r0, r1); break;
    case EL_TYPE_Q8_0: el_kernel_matmul_q8_0(t, r0, r1); break;
    default: el_kernel_matmul_q4_0(t, r0, r1); break;
    }
}

static void matmul_tiles(void *ctx, int begin, int end, int worker)
{
    const matmul_group *g = (const matmul_group *)ctx;
    int m;
    (void)worker;
    for (m = 0; m < g->n; m++) {
        const el_matmul_task *t = &g->task[m];
        int from = begin > g->first_tile[m] ? begin : g->first_tile[m];
        int to = end < g->first_tile[m + 1] ? end : g->first_tile[m + 1];
        uint32_t r0 = (uint32_t)(from - g->first_tile[m]) * EL_ROW_TILE;
        uint32_t r1 = (uint32_t)(to - g->first_tile[m]) * EL_ROW_TILE;
        if (from >= to) continue;
        run_rows(t, r0, r1 < t->w->rows ? r1 : t->w->rows);
    }
}

static int is_quantized(const el_matrix *w) { return w->type == EL_TYPE_Q8_0 || w->type == EL_TYPE_Q4_0; }

void el_matmuls(float *const *ys, const el_matrix *const *ws, int n, const float *x, int batch, el_qactivations *q,
                const el_parallel *parallel)
{
    matmul_group g;
    long work = 0;
    int m, quantize = 0;
    g.n = n;
    g.first_tile[0] = 0;
    for (m = 0; m < n; m++) {
        el_matmul_task *t = &g.task[m];
        t->y = ys[m];
        t->w = ws[m];
        t->x = x;
        t->xq = q->values;
        t->xs = q->scales;
        t->batch = batch;
        g.first_tile[m + 1] = g.first_tile[m] + (int)((ws[m]->rows + EL_ROW_TILE - 1) / EL_ROW_TILE);
        work += (long)ws[m]->rows * (long)ws[m]->cols * batch;
        quantize |= is_quantized(ws[m]);
    }
    if (quantize) el_kernel_quantize_blocks(q->values, q->scales, x, batch * (int)(ws[0]->cols / EL_QBLOCK));
    el_parallel_for(work < EL_PARALLEL_MIN_WORK ? NULL : parallel, matmul_tiles, &g, g.first_tile[n]);
}

void el_matmul(float *y, const el_matrix *w, const float *x, int batch, el_qactivations *q,
               const el_parallel *parallel)
{
    el_matmuls(&y, &w, 1, x, batch, q, parallel);
}

/* ------------------------------------------------------------ dot products */

float el_dot_int8(const float *a, const int8_t *b, int n)
{
    float lane[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, sum;
    int i, k, whole = n - n % 8;
    for (i = 0; i < whole; i += 8)
        for (k = 0; k < 8; k++) lane[k] += a[i + k] * (float)b[i + k];
    sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    for (; i < n; i++) sum += a[i] * (float)b[i];
    return sum;
}

void el_key_dots_by_dot(float *out, const float *q, const float *keys, size_t stride, int n_keys, int n, float scale)
{
    int j;
    for (j = 0; j < n_keys; j++) out[j] = scale * el_kernel_dot(q, keys + (size_t)j * stride, n);
}

void el_value_sum_by_axpy(float *out, const float *weights, const float *values, size_t stride, int n_values, int n)
{
    int j;
    for (j = 0; j < n_values; j++) el_kernel_axpy(out, weights[j], values + (size_t)j * stride, n);
}

/* ------------------------------------------------------------ the embedding row */

/* Row `row` of a Q8_0 or Q4_0 matrix in groups of eight (the layout is described in
 * el_kernels_avx2.c): in each block of its group, its scale is the j-th of eight and its
 * bytes 4s..4s+3 sit at 4j of step s (Q4_0: of pair s, low nibbles then high ones). */
static void grouped_row(float *out, const el_matrix *w, uint32_t row)
{
    uint32_t blocks = w->cols / EL_QBLOCK, j = row % 8, b, s, i;
    int q4 = w->type == EL_TYPE_Q4_0;
    const uint8_t *group = (const uint8_t *)w->data + (size_t)(row - j) * el_row_bytes(w->type, w->cols);
    for (b = 0; b < blocks; b++) {
        const uint8_t *block = group + (size_t)b * 8 * (q4 ? 18 : 34), *bytes = block + 16 + 4 * j;
        float d = el_fp16_to_f32(read_u16(block + 2 * j)), *o = out + b * EL_QBLOCK;
        for (s = 0; s < (q4 ? 4u : 8u); s++)
            for (i = 0; i < 4; i++) {
                uint8_t v = bytes[32 * s + i];
                if (q4) {
                    o[4 * s + i] = d * (float)((int)(v & 0x0f) - 8);
                    o[16 + 4 * s + i] = d * (float)((int)(v >> 4) - 8);
                } else {
                    o[4 * s + i] = d * (float)(int8_t)v;
                }
            }
    }
}

void el_matrix_row(float *out, const el_matrix *w, uint32_t row)
{
    const uint8_t *p = (const uint8_t *)w->data + (size_t)row * el_row_bytes(w->type, w->cols);
    uint32_t i, b;
    if (w->layout == EL_LAYOUT_GROUPS_OF_8 && row < w->rows / 8 * 8) {
        grouped_row(out, w, row);
    } else if (w->type == EL_TYPE_F32) {
        const float *f = (const float *)(const void *)p;
        for (i = 0; i < w->cols; i++) out[i] = f[i];
    } else if (w->type == EL_TYPE_F16) {
        for (i = 0; i < w->cols; i++) out[i] = el_fp16_to_f32(read_u16(p + 2 * i));
    } else if (w->type == EL_TYPE_Q8_0) {
        for (b = 0; b < w->cols / EL_QBLOCK; b++, p += 34)
            for (i = 0; i < EL_QBLOCK; i++)
                out[b * EL_QBLOCK + i] = el_fp16_to_f32(read_u16(p)) * (float)(int8_t)p[2 + i];
    } else {
        for (b = 0; b < w->cols / EL_QBLOCK; b++, p += 18) {
            float d = el_fp16_to_f32(read_u16(p));
            for (i = 0; i < 16; i++) {
                out[b * EL_QBLOCK + i] = d * (float)((int)(p[2 + i] & 0x0f) - 8);
                out[b * EL_QBLOCK + i + 16] = d * (float)((int)(p[2 + i] >> 4) - 8);
            }
        }
    }
}

/* ------------------------------------------------------------ rearranging at load */

void el_arrange_weights(el_model *model, uint8_t *writable_file)
{
    el_matrix *w;
    int i;
    for (i = 0; (w = el_model_matrix(model, i)) != NULL; i++)
        el_kernel_arrange(w, writable_file + ((const uint8_t *)w->data - model->gguf.file));
    /* tied: the embedding reads the same bytes, now in the classifier's layout */
    if (model->token_embd.data == model->output.data) model->token_embd.layout = model->output.layout;
}

/* ------------------------------------------------------------ the rest */

void el_rmsnorm(float *out, const float *x, const float *weight, int n, float eps)
{
    float ss = 0.0f, scale;
    int i;
    for (i = 0; i < n; i++) ss += x[i] * x[i];
    /* squares past the float range: 1/sqrt(Inf) would be 0 and hide the overflow as a row of
     * zeros; NaN carries it to the logits, where the engine ends the sequence with an error */
    scale = ss > 3.4028235e38f ? el_bits_float(0x7fc00000u) : 1.0f / el_sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) out[i] = x[i] * scale * weight[i];
}

void el_rope_angles(float *cos_sin, int head_dim, int pos, const float *freqs)
{
    int i;
    for (i = 0; i < head_dim / 2; i++) el_sincosf((float)pos * freqs[i], &cos_sin[2 * i + 1], &cos_sin[2 * i]);
}

void el_rope(float *x, int n_heads, int head_dim, const float *cos_sin)
{
    int h, i;
    for (i = 0; i < head_dim / 2; i++) {
        float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
        for (h = 0; h < n_heads; h++) {
            float *pair = x + h * head_dim + 2 * i;
            float a = pair[0], b = pair[1];
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

/* The largest of x[0..n) as the loop `max = x[0]; if (x[i] > max) max = x[i]` finds it
 * (NaNs skipped unless x[0] is one), in eight lanes that -O2 takes as one vector
 * register. Which of +0 and -0 wins a tie can differ from that loop; exp(x - max) cannot. */
static float max_of(const float *x, int n)
{
    float lane[8], max;
    int i, k, whole = n - n % 8;
    for (k = 0; k < 8; k++) lane[k] = x[0];
    for (i = 0; i < whole; i += 8)
        for (k = 0; k < 8; k++) lane[k] = x[i + k] > lane[k] ? x[i + k] : lane[k];
    max = lane[0];
    for (k = 1; k < 8; k++) max = lane[k] > max ? lane[k] : max;
    for (i = whole; i < n; i++) max = x[i] > max ? x[i] : max;
    return max;
}

/* The sum runs in index order (llama2.c's softmax, whose tokens the tests match); the
 * division is exact per element, so it goes eight at a time. */
void el_softmax(float *x, int n)
{
    float max = max_of(x, n), sum = 0.0f;
    int i, k, whole = n - n % 8;
    el_kernel_exp_shifted(x, x, max, n);
    for (i = 0; i < n; i++) sum += x[i];
    for (i = 0; i < whole; i += 8)
        for (k = 0; k < 8; k++) x[i + k] /= sum;
    for (; i < n; i++) x[i] /= sum;
}

void el_swiglu(float *gate, const float *up, int n) { el_kernel_swiglu(gate, up, n); }
