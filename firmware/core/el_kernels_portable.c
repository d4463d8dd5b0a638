/* el_kernels_portable.c: the kernels in plain C99, for every target.
 *
 * This is the reference the per-target files must match bit for bit; when no target
 * file is chosen (el_kernel_ops.h) it is also what runs.
 */
#include "el_kernel_ops.h"

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

/* A quiet NaN without 0.0f / 0.0f, which some compilers fold with a warning. */
static float quiet_nan(void)
{
    union { uint32_t u; float f; } v;
    v.u = 0x7fc00000u;
    return v.f;
}

void el_quantize_int8(int8_t *q, float *scale, const float *x, int n)
{
    float amax = 0.0f, inverse;
    int i, finite = 1;
    for (i = 0; i < n; i++) {
        float a = x[i] < 0 ? -x[i] : x[i];
        if (a > amax) amax = a;
        else if (a != a) finite = 0;
    }
    /* NaN or Inf has no int8 value (converting it to int is undefined behaviour in C).
     * The block becomes zeros under a NaN scale, so the NaN reaches the matmul's
     * output, where the runtime can see it, instead of vanishing into finite garbage. */
    if (!finite || amax > 3.4028235e38f) {
        for (i = 0; i < n; i++) q[i] = 0;
        *scale = quiet_nan();
        return;
    }
    *scale = amax / 127.0f;
    inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
    /* A block so small that 127 / amax overflows (amax under about 3.7e-37) would turn
     * x * inverse into Inf or NaN, which has no int8 value either: zeros under its scale.
     * Every kernel sends such a block here (EL_QUANT_INVERSE_MAX). */
    if (inverse > EL_QUANT_INVERSE_MAX) {
        for (i = 0; i < n; i++) q[i] = 0;
        return;
    }
    for (i = 0; i < n; i++) q[i] = (int8_t)round_to_int(x[i] * inverse);
}

void el_portable_quantize_blocks(int8_t *q, float *scales, const float *x, int n_blocks)
{
    int b;
    for (b = 0; b < n_blocks; b++) el_quantize_int8(q + b * EL_QBLOCK, &scales[b], x + b * EL_QBLOCK, EL_QBLOCK);
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

float el_portable_dot(const float *a, const float *b, int n)
{
    float lane[EL_LANES] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, sum;
    int i, k, whole = n - n % EL_LANES;
    for (i = 0; i < whole; i += EL_LANES)
        for (k = 0; k < EL_LANES; k++) lane[k] += a[i + k] * b[i + k];
    sum = combine_lanes(lane);
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* The same order with fp16 weights, converted one by one. */
static float dot_f16(const uint8_t *w, const float *x, int n)
{
    float lane[EL_LANES] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, sum;
    int i, k, whole = n - n % EL_LANES;
    for (i = 0; i < whole; i += EL_LANES)
        for (k = 0; k < EL_LANES; k++) lane[k] += fp16_to_f32(read_u16(w + 2 * (i + k))) * x[i + k];
    sum = combine_lanes(lane);
    for (; i < n; i++) sum += fp16_to_f32(read_u16(w + 2 * i)) * x[i];
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

/* ------------------------------------------------------------ matmul rows */

/* Row-outer, batch-inner: a row is read once for the whole batch. */
void el_portable_matmul_f32(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    uint32_t r, cols = t->w->cols;
    int b;
    for (r = r0; r < r1; r++) {
        const float *row = (const float *)t->w->data + (size_t)r * cols;
        for (b = 0; b < t->batch; b++)
            t->y[(size_t)b * t->w->rows + r] = el_portable_dot(row, t->x + (size_t)b * cols, (int)cols);
    }
}

void el_portable_matmul_f16(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    uint32_t r, cols = t->w->cols;
    int b;
    for (r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)t->w->data + (size_t)r * 2 * cols;
        for (b = 0; b < t->batch; b++)
            t->y[(size_t)b * t->w->rows + r] = dot_f16(row, t->x + (size_t)b * cols, (int)cols);
    }
}

void el_portable_matmul_q8_0(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    uint32_t r, cols = t->w->cols, blocks = cols / EL_QBLOCK;
    int b;
    for (r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)t->w->data + (size_t)r * blocks * 34;
        for (b = 0; b < t->batch; b++)
            t->y[(size_t)b * t->w->rows + r] =
                dot_q8_0(row, t->xq + (size_t)b * cols, t->xs + (size_t)b * blocks, cols);
    }
}

void el_portable_matmul_q4_0(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    uint32_t r, cols = t->w->cols, blocks = cols / EL_QBLOCK;
    int b;
    for (r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)t->w->data + (size_t)r * blocks * 18;
        for (b = 0; b < t->batch; b++)
            t->y[(size_t)b * t->w->rows + r] =
                dot_q4_0(row, t->xq + (size_t)b * cols, t->xs + (size_t)b * blocks, cols);
    }
}

/* ------------------------------------------------------------ elementwise */

void el_portable_axpy(float *y, float a, const float *x, int n)
{
    int i;
    for (i = 0; i < n; i++) y[i] += a * x[i];
}

void el_portable_key_dots(float *out, const float *q, const float *keys, size_t stride, int n_keys, int n,
                          float scale)
{
    int j;
    for (j = 0; j < n_keys; j++) out[j] = scale * el_portable_dot(q, keys + (size_t)j * stride, n);
}

void el_portable_value_sum(float *out, const float *weights, const float *values, size_t stride, int n_values, int n)
{
    int j;
    for (j = 0; j < n_values; j++) el_portable_axpy(out, weights[j], values + (size_t)j * stride, n);
}

void el_portable_swiglu(float *gate, const float *up, int n)
{
    int i;
    for (i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + el_expf(-gate[i])) * up[i];
}

void el_portable_exp_shifted(float *w, const float *x, float shift, int n)
{
    int i;
    for (i = 0; i < n; i++) w[i] = el_expf(x[i] - shift);
}

/* ------------------------------------------------------------ the build's kernels when no target file is chosen */

#if EL_KERNELS_PORTABLE
void el_kernel_matmul_f32(const el_matmul_task *t, uint32_t r0, uint32_t r1) { el_portable_matmul_f32(t, r0, r1); }
void el_kernel_matmul_f16(const el_matmul_task *t, uint32_t r0, uint32_t r1) { el_portable_matmul_f16(t, r0, r1); }
void el_kernel_matmul_q8_0(const el_matmul_task *t, uint32_t r0, uint32_t r1) { el_portable_matmul_q8_0(t, r0, r1); }
void el_kernel_matmul_q4_0(const el_matmul_task *t, uint32_t r0, uint32_t r1) { el_portable_matmul_q4_0(t, r0, r1); }
void el_kernel_quantize_blocks(int8_t *q, float *scales, const float *x, int n_blocks)
{
    el_portable_quantize_blocks(q, scales, x, n_blocks);
}
float el_kernel_dot(const float *a, const float *b, int n) { return el_portable_dot(a, b, n); }
void el_kernel_axpy(float *y, float a, const float *x, int n) { el_portable_axpy(y, a, x, n); }
void el_kernel_key_dots(float *out, const float *q, const float *keys, size_t stride, int n_keys, int n, float scale)
{
    el_portable_key_dots(out, q, keys, stride, n_keys, n, scale);
}
void el_kernel_value_sum(float *out, const float *weights, const float *values, size_t stride, int n_values, int n)
{
    el_portable_value_sum(out, weights, values, stride, n_values, n);
}
/* This target keeps the file's layout. */
int el_kernel_arrange(el_matrix *w, uint8_t *data)
{
    (void)w, (void)data;
    return 0;
}

void el_kernel_swiglu(float *gate, const float *up, int n) { el_portable_swiglu(gate, up, n); }
void el_kernel_exp_shifted(float *w, const float *x, float shift, int n) { el_portable_exp_shifted(w, x, shift, n); }
#endif
