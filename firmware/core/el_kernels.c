/* el_kernels.c: matmul for F32, F16, Q8_0 and Q4_0 weights; norms, RoPE, softmax. */
#include "el_kernels.h"

#include "el_math.h"

/* ------------------------------------------------------------ number formats */

/* Static, so the kernels inline it: an exported function in a shared library is
 * called through the PLT, once per 32-value block of every quantized row. */
static float fp16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v;
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0) {
        /* zero or subnormal: the value is mantissa * 2^-24, exact in float */
        v.f = (float)mantissa * (1.0f / 16777216.0f);
        v.u |= sign;
        return v.f;
    }
    if (exponent == 31) v.u = sign | 0x7f800000u | (mantissa << 13);
    else v.u = sign | ((exponent + 112) << 23) | (mantissa << 13);
    return v.f;
}

float el_fp16_to_f32(uint16_t h) { return fp16_to_f32(h); }

static uint16_t read_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static int round_to_int(float v) { return (int)(v + (v >= 0.0f ? 0.5f : -0.5f)); }

void el_quantize_int8(int8_t *q, float *scale, const float *x, int n)
{
    float amax = 0.0f, inverse;
    int i;
    for (i = 0; i < n; i++) {
        float a = x[i] < 0 ? -x[i] : x[i];
        if (a > amax) amax = a;
    }
    *scale = amax / 127.0f;
    inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (i = 0; i < n; i++) q[i] = (int8_t)round_to_int(x[i] * inverse);
}

/* Activations in blocks of 32, each with its own scale, as Q8_0 weights are stored. */
static void quantize_row(int8_t *q, float *scales, const float *x, int cols)
{
    int b;
    for (b = 0; b < cols / EL_QBLOCK; b++) el_quantize_int8(q + b * EL_QBLOCK, &scales[b], x + b * EL_QBLOCK, EL_QBLOCK);
}

/* ------------------------------------------------------------ dot products */

/* Eight running sums (lane i % 8), added pairwise at the end. A single running sum
 * waits on each addition before starting the next (latency bound); eight independent
 * ones keep the pipeline full and map onto 4- or 8-wide vector units as they are. The
 * order is fixed, so every target still gets the same bits. */
#define EL_LANES 8

static float combine_lanes(const float *lane)
{
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

static float dot_f32(const float *a, const float *b, int n)
{
    float lane[EL_LANES] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, sum;
    int i, k, whole = n - n % EL_LANES;
    for (i = 0; i < whole; i += EL_LANES)
        for (k = 0; k < EL_LANES; k++) lane[k] += a[i + k] * b[i + k];
    sum = combine_lanes(lane);
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

float el_dot(const float *a, const float *b, int n) { return dot_f32(a, b, n); }

float el_dot_int8(const float *a, const int8_t *b, int n)
{
    float lane[EL_LANES] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, sum;
    int i, k, whole = n - n % EL_LANES;
    for (i = 0; i < whole; i += EL_LANES)
        for (k = 0; k < EL_LANES; k++) lane[k] += a[i + k] * (float)b[i + k];
    sum = combine_lanes(lane);
    for (; i < n; i++) sum += a[i] * (float)b[i];
    return sum;
}

static float dot_f16(const uint8_t *w, const float *x, uint32_t n)
{
    float sum = 0.0f;
    uint32_t i;
    for (i = 0; i < n; i++) sum += fp16_to_f32(read_u16(w + 2 * i)) * x[i];
    return sum;
}

/* Q8_0 block: fp16 scale, then 32 int8 values. */
static float dot_q8_0(const uint8_t *w, const int8_t *q, const float *scales, uint32_t n)
{
    float sum = 0.0f;
    uint32_t b, i;
    for (b = 0; b < n / EL_QBLOCK; b++, w += 34) {
        const int8_t *wq = (const int8_t *)(w + 2);
        int32_t isum = 0;
        for (i = 0; i < EL_QBLOCK; i++) isum += (int32_t)wq[i] * q[b * EL_QBLOCK + i];
        sum += fp16_to_f32(read_u16(w)) * scales[b] * (float)isum;
    }
    return sum;
}

/* Q4_0 block: fp16 scale, then 16 bytes; element i < 16 is the low nibble of byte i,
 * element i + 16 the high nibble, each minus 8. */
static float dot_q4_0(const uint8_t *w, const int8_t *q, const float *scales, uint32_t n)
{
    float sum = 0.0f;
    uint32_t b, i;
    for (b = 0; b < n / EL_QBLOCK; b++, w += 18) {
        const int8_t *qb = q + b * EL_QBLOCK;
        int32_t isum = 0;
        for (i = 0; i < 16; i++) {
            isum += ((int32_t)(w[2 + i] & 0x0f) - 8) * qb[i];
            isum += ((int32_t)(w[2 + i] >> 4) - 8) * qb[i + 16];
        }
        sum += fp16_to_f32(read_u16(w)) * scales[b] * (float)isum;
    }
    return sum;
}

/* ------------------------------------------------------------ matmul */

void el_matmul(float *y, const el_matrix *w, const float *x, int batch, el_qactivations *q)
{
    const uint8_t *base = (const uint8_t *)w->data;
    size_t row_bytes = el_row_bytes(w->type, w->cols);
    uint32_t cols = w->cols, r;
    int b, quantized = w->type == EL_TYPE_Q8_0 || w->type == EL_TYPE_Q4_0;
    if (quantized)
        for (b = 0; b < batch; b++)
            quantize_row(q->values + (size_t)b * cols, q->scales + (size_t)b * (cols / EL_QBLOCK), x + (size_t)b * cols,
                         (int)cols);
    for (r = 0; r < w->rows; r++) {
        const uint8_t *row = base + (size_t)r * row_bytes;
        for (b = 0; b < batch; b++) {
            const float *xb = x + (size_t)b * cols;
            const int8_t *qb = quantized ? q->values + (size_t)b * cols : NULL;
            const float *sb = quantized ? q->scales + (size_t)b * (cols / EL_QBLOCK) : NULL;
            float v;
            if (w->type == EL_TYPE_F32) v = dot_f32((const float *)(const void *)row, xb, (int)cols);
            else if (w->type == EL_TYPE_F16) v = dot_f16(row, xb, cols);
            else if (w->type == EL_TYPE_Q8_0) v = dot_q8_0(row, qb, sb, cols);
            else v = dot_q4_0(row, qb, sb, cols);
            y[(size_t)b * w->rows + r] = v;
        }
    }
}

void el_matrix_row(float *out, const el_matrix *w, uint32_t row)
{
    const uint8_t *p = (const uint8_t *)w->data + (size_t)row * el_row_bytes(w->type, w->cols);
    uint32_t i, b;
    if (w->type == EL_TYPE_F32) {
        const float *f = (const float *)(const void *)p;
        for (i = 0; i < w->cols; i++) out[i] = f[i];
    } else if (w->type == EL_TYPE_F16) {
        for (i = 0; i < w->cols; i++) out[i] = fp16_to_f32(read_u16(p + 2 * i));
    } else if (w->type == EL_TYPE_Q8_0) {
        for (b = 0; b < w->cols / EL_QBLOCK; b++, p += 34)
            for (i = 0; i < EL_QBLOCK; i++) out[b * EL_QBLOCK + i] = fp16_to_f32(read_u16(p)) * (float)(int8_t)p[2 + i];
    } else {
        for (b = 0; b < w->cols / EL_QBLOCK; b++, p += 18) {
            float d = fp16_to_f32(read_u16(p));
            for (i = 0; i < 16; i++) {
                out[b * EL_QBLOCK + i] = d * (float)((int)(p[2 + i] & 0x0f) - 8);
                out[b * EL_QBLOCK + i + 16] = d * (float)((int)(p[2 + i] >> 4) - 8);
            }
        }
    }
}

/* ------------------------------------------------------------ the rest */

void el_rmsnorm(float *out, const float *x, const float *weight, int n, float eps)
{
    float ss = 0.0f, scale;
    int i;
    for (i = 0; i < n; i++) ss += x[i] * x[i];
    scale = 1.0f / el_sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) out[i] = x[i] * scale * weight[i];
}

void el_rope(float *x, int n_heads, int head_dim, int pos, const float *freqs)
{
    int h, i;
    for (i = 0; i < head_dim / 2; i++) {
        float s, c;
        el_sincosf((float)pos * freqs[i], &s, &c);
        for (h = 0; h < n_heads; h++) {
            float *pair = x + h * head_dim + 2 * i;
            float a = pair[0], b = pair[1];
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

void el_softmax(float *x, int n)
{
    float max = x[0], sum = 0.0f;
    int i;
    for (i = 1; i < n; i++)
        if (x[i] > max) max = x[i];
    for (i = 0; i < n; i++) {
        x[i] = el_expf(x[i] - max);
        sum += x[i];
    }
    for (i = 0; i < n; i++) x[i] /= sum;
}

void el_swiglu(float *gate, const float *up, int n)
{
    int i;
    for (i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + el_expf(-gate[i])) * up[i];
}
