/* kernels_probe.c: every el_kernel_* of this build against el_portable_*, bit for bit.
 *
 * Built for a target (host, or cross-compiled and run under QEMU), it runs each
 * kernel of the build's choice (el_kernel_ops.h) and the portable one on the same
 * pseudo-random inputs: matrices of many shapes in every weight type (rows not a
 * multiple of the vector width, odd batches, extreme int8 and fp16 values, row ranges
 * split anywhere), activations with rounding ties, NaN, infinities and values up to
 * FLT_MAX for the quantizer, dot products and exps over the whole float range. It
 * prints "kernels NAME", one line per failure, and "mismatches N"; the exit status
 * is 1 when any output differs in any bit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "el_kernels.h"

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint32_t next_u32(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 32);
}

/* Mostly ordinary values, sometimes ties for rounding, zeros, tiny and huge ones. */
static float next_float(float scale)
{
    uint32_t kind = next_u32() % 16;
    float u = (float)(next_u32() >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
    if (kind == 0) return 0.0f;
    if (kind == 1) return (float)((int)(next_u32() % 255) - 127) * 0.5f * scale; /* x.5 ties after scaling */
    if (kind == 2) return u * 1e-30f;
    if (kind == 3) return u * 1e4f * scale;
    return u * scale;
}

static int mismatches;

static void compare(const char *what, int shape_a, int shape_b, const void *got, const void *want, size_t bytes)
{
    if (memcmp(got, want, bytes) != 0) {
        mismatches++;
        if (mismatches <= 20) printf("MISMATCH %s (%d, %d)\n", what, shape_a, shape_b);
    }
}

/* A row of fp16 values from a plausible range, with some subnormals, infinities avoided. */
static uint16_t next_fp16(void)
{
    uint32_t kind = next_u32() % 32;
    if (kind == 0) return (uint16_t)(next_u32() & 0x83ffu); /* subnormal or zero */
    return (uint16_t)((next_u32() & 0x8000u) | ((5u + next_u32() % 20u) << 10) | (next_u32() & 0x3ffu));
}

static void fill_weights(uint8_t *data, uint32_t type, uint32_t rows, uint32_t cols)
{
    size_t i, n;
    if (type == EL_TYPE_F32) {
        float *f = (float *)(void *)data;
        for (i = 0; i < (size_t)rows * cols; i++) f[i] = next_float(0.1f);
        return;
    }
    if (type == EL_TYPE_F16) {
        for (i = 0; i < (size_t)rows * cols; i++) {
            uint16_t h = next_fp16();
            data[2 * i] = (uint8_t)h;
            data[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return;
    }
    n = (size_t)rows * (cols / EL_QBLOCK);
    for (i = 0; i < n; i++) {
        size_t bytes = type == EL_TYPE_Q8_0 ? 34 : 18, k;
        uint8_t *block = data + i * bytes;
        uint16_t h = next_fp16();
        block[0] = (uint8_t)h;
        block[1] = (uint8_t)(h >> 8);
        for (k = 2; k < bytes; k++) block[k] = (uint8_t)next_u32(); /* int8 -128 included */
    }
}

static size_t row_bytes(uint32_t type, uint32_t cols)
{
    if (type == EL_TYPE_F32) return 4u * cols;
    if (type == EL_TYPE_F16) return 2u * cols;
    return (type == EL_TYPE_Q8_0 ? 34u : 18u) * (cols / EL_QBLOCK);
}

typedef void (*matmul_fn)(const el_matmul_task *, uint32_t, uint32_t);

/* Where the target rearranges this matrix at load (el_kernel_arrange), the kernel on the
 * rearranged bytes gives `want` too, whole and split, and every row reads back (el_matrix_row)
 * as from the file's layout. w and data are rearranged in place. */
static void check_arranged(el_matmul_task *t, el_matrix *w, uint8_t *data, matmul_fn kernel, const char *name,
                           float *got, const float *want)
{
    size_t bytes = sizeof(float) * w->rows * (size_t)t->batch;
    float *row_want = (float *)malloc(sizeof(float) * w->cols * w->rows), *row_got = (float *)malloc(sizeof(float) * w->cols);
    uint32_t r, split;
    for (r = 0; r < w->rows; r++) el_matrix_row(row_want + (size_t)r * w->cols, w, r);
    if (el_kernel_arrange(w, data)) {
        memset(got, 0xff, bytes);
        kernel(t, 0, w->rows);
        compare(name, (int)w->rows, (int)w->cols * 1000 + t->batch, got, want, bytes);
        split = w->rows > 1 ? 1 + next_u32() % (w->rows - 1) : 0;
        memset(got, 0xff, bytes);
        kernel(t, 0, split);
        kernel(t, split, w->rows);
        compare(name, (int)w->rows, -1000 - (int)split, got, want, bytes);
        for (r = 0; r < w->rows; r++) {
            el_matrix_row(row_got, w, r);
            compare("matrix_row (rearranged)", (int)r, (int)w->cols, row_got, row_want + (size_t)r * w->cols,
                    sizeof(float) * w->cols);
        }
    }
    free(row_want), free(row_got);
}

static void check_matmul(uint32_t type, uint32_t rows, uint32_t cols, int batch)
{
    static const char *names[] = {"matmul_f32", "matmul_f16", "", "", "", "", "", "", "matmul_q8_0", "", "matmul_q4_0"};
    matmul_fn kernel, portable;
    el_matrix w;
    el_matmul_task t;
    uint8_t *data = (uint8_t *)malloc(row_bytes(type, cols) * rows + 64);
    float *x = (float *)malloc(sizeof(float) * (size_t)cols * (size_t)batch);
    int8_t *xq = (int8_t *)malloc((size_t)cols * (size_t)batch);
    float *xs = (float *)malloc(sizeof(float) * (size_t)(cols / EL_QBLOCK + 1) * (size_t)batch);
    float *got = (float *)malloc(sizeof(float) * rows * (size_t)batch);
    float *want = (float *)malloc(sizeof(float) * rows * (size_t)batch);
    size_t i;
    uint32_t split;
    if (type == EL_TYPE_F32) kernel = el_kernel_matmul_f32, portable = el_portable_matmul_f32;
    else if (type == EL_TYPE_F16) kernel = el_kernel_matmul_f16, portable = el_portable_matmul_f16;
    else if (type == EL_TYPE_Q8_0) kernel = el_kernel_matmul_q8_0, portable = el_portable_matmul_q8_0;
    else kernel = el_kernel_matmul_q4_0, portable = el_portable_matmul_q4_0;
    fill_weights(data, type, rows, cols);
    for (i = 0; i < (size_t)cols * (size_t)batch; i++) x[i] = next_float(1.0f);
    if (type == EL_TYPE_Q8_0 || type == EL_TYPE_Q4_0)
        el_portable_quantize_blocks(xq, xs, x, (int)(cols / EL_QBLOCK) * batch);
    w.type = type;
    w.rows = rows;
    w.cols = cols;
    w.layout = EL_LAYOUT_ROWS;
    w.streamed = 0;
    w.data = data;
    t.w = &w;
    t.x = x;
    t.xq = xq;
    t.xs = xs;
    t.batch = batch;
    t.y = want;
    portable(&t, 0, rows);
    /* the whole range, then split at an arbitrary row (what threads do) */
    t.y = got;
    memset(got, 0xff, sizeof(float) * rows * (size_t)batch);
    kernel(&t, 0, rows);
    compare(names[type], (int)rows, (int)cols * 100 + batch, got, want, sizeof(float) * rows * (size_t)batch);
    split = rows > 1 ? 1 + next_u32() % (rows - 1) : 0;
    memset(got, 0xff, sizeof(float) * rows * (size_t)batch);
    kernel(&t, 0, split);
    kernel(&t, split, rows);
    compare(names[type], (int)rows, -(int)split, got, want, sizeof(float) * rows * (size_t)batch);
    /* a model too large for the caches: the kernels may take another loop, same bits */
    w.streamed = 1;
    memset(got, 0xff, sizeof(float) * rows * (size_t)batch);
    kernel(&t, 0, rows);
    compare(names[type], (int)rows, -100000 - (int)cols, got, want, sizeof(float) * rows * (size_t)batch);
    w.streamed = 0;
    check_arranged(&t, &w, data, kernel, names[type], got, want);
    free(data), free(x), free(xq), free(xs), free(got), free(want);
}

/* A quiet NaN, a NaN with payload and sign, or an infinity, by its bits. */
static float float_of_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Values a block must survive: NaN, +Inf, -Inf (alone or together, anywhere in the
 * block, also in lane 0 and lane 31), huge finite ones up to FLT_MAX, which must
 * quantize as any others, and tiny ones whose 127 / max overflows. */
static void place_special(float *block, int kind)
{
    static const uint32_t specials[] = {0x7fc00000u, 0xffc00001u, 0x7f800000u, 0xff800000u};
    int at = (int)(next_u32() % EL_QBLOCK), k;
    if (kind < 4) block[at] = float_of_bits(specials[kind]);
    else if (kind == 4) { /* NaN and both infinities, at the ends */
        block[0] = float_of_bits(specials[2]);
        block[EL_QBLOCK - 1] = float_of_bits(specials[0]);
        block[at] = float_of_bits(specials[3]);
    } else if (kind == 5) { /* FLT_MAX and its negative with large neighbours */
        block[at] = float_of_bits(0x7f7fffffu);
        block[(at + 7) % EL_QBLOCK] = -float_of_bits(0x7f7fffffu);
        for (k = 0; k < 4; k++) block[(at + 1 + k) % EL_QBLOCK] = (float)(k + 1) * 1e37f;
    } else if (kind == 6) { /* every value huge */
        for (k = 0; k < EL_QBLOCK; k++) block[k] = (float)((int)(next_u32() % 255u) - 127) * 2e36f;
    } else { /* every value tiny: 127 / max overflows (subnormals, or just under 3.7e-37) */
        float unit = kind == 7 ? float_of_bits(0x00000001u + (next_u32() % 0x7fffffu)) : 3.0e-37f;
        for (k = 0; k < EL_QBLOCK; k++) block[k] = (float)((int)(next_u32() % 7u) - 3) * unit;
    }
}

static void check_quantize(int n_blocks)
{
    int n = n_blocks * EL_QBLOCK, i;
    float *x = (float *)malloc(sizeof(float) * (size_t)n), s1[64], s2[64];
    int8_t *q1 = (int8_t *)malloc((size_t)n), *q2 = (int8_t *)malloc((size_t)n);
    float scale = (float)(1u << (next_u32() % 8)) / 8.0f;
    for (i = 0; i < n; i++) x[i] = next_float(scale);
    if (n_blocks > 1) for (i = 0; i < EL_QBLOCK; i++) x[i] = 0.0f; /* an all-zero block */
    if (n_blocks > 2) place_special(x + EL_QBLOCK, (int)(next_u32() % 9u));
    if (n_blocks > 3) place_special(x + 2 * EL_QBLOCK, (int)(next_u32() % 9u));
    el_kernel_quantize_blocks(q1, s1, x, n_blocks);
    el_portable_quantize_blocks(q2, s2, x, n_blocks);
    compare("quantize_blocks values", n_blocks, 0, q1, q2, (size_t)n);
    compare("quantize_blocks scales", n_blocks, 0, s1, s2, sizeof(float) * (size_t)n_blocks);
    free(x), free(q1), free(q2);
}

/* Keys and values of a cache block: n_keys rows `stride` floats apart (stride >= n). */
static void check_attention(int n)
{
    int n_keys = 1 + (int)(next_u32() % 17), stride = n + (int)(next_u32() % 3) * 8, i;
    size_t total = (size_t)n_keys * (size_t)stride + 1;
    float *q = (float *)malloc(sizeof(float) * (size_t)(n + 1)), *rows = (float *)malloc(sizeof(float) * total);
    float *w = (float *)malloc(sizeof(float) * (size_t)n_keys);
    float *o1 = (float *)malloc(sizeof(float) * (size_t)(n + 17));
    float *o2 = (float *)malloc(sizeof(float) * (size_t)(n + 17));
    float scale = next_float(1.0f);
    for (i = 0; i < n; i++) q[i] = next_float(1.0f);
    for (i = 0; i < (int)total; i++) rows[i] = next_float(1.0f);
    for (i = 0; i < n_keys; i++) w[i] = next_float(1.0f);
    el_kernel_key_dots(o1, q, rows, (size_t)stride, n_keys, n, scale);
    el_portable_key_dots(o2, q, rows, (size_t)stride, n_keys, n, scale);
    compare("key_dots", n, n_keys, o1, o2, sizeof(float) * (size_t)n_keys);
    for (i = 0; i < n; i++) o1[i] = o2[i] = next_float(1.0f);
    el_kernel_value_sum(o1, w, rows, (size_t)stride, n_keys, n);
    el_portable_value_sum(o2, w, rows, (size_t)stride, n_keys, n);
    compare("value_sum", n, n_keys, o1, o2, sizeof(float) * (size_t)n);
    free(q), free(rows), free(w), free(o1), free(o2);
}

static void check_vectors(int n)
{
    float *a = (float *)malloc(sizeof(float) * (size_t)(n + 1)), *b = (float *)malloc(sizeof(float) * (size_t)(n + 1));
    float *y1 = (float *)malloc(sizeof(float) * (size_t)(n + 1));
    float *y2 = (float *)malloc(sizeof(float) * (size_t)(n + 1));
    float d1, d2, alpha = next_float(1.0f), shift;
    int i;
    for (i = 0; i < n; i++) a[i] = next_float(1.0f), b[i] = next_float(1.0f);
    d1 = el_kernel_dot(a, b, n);
    d2 = el_portable_dot(a, b, n);
    compare("dot", n, 0, &d1, &d2, sizeof d1);
    memcpy(y1, b, sizeof(float) * (size_t)n);
    memcpy(y2, b, sizeof(float) * (size_t)n);
    el_kernel_axpy(y1, alpha, a, n);
    el_portable_axpy(y2, alpha, a, n);
    compare("axpy", n, 0, y1, y2, sizeof(float) * (size_t)n);
    /* swiglu over the whole range of gates, exp past both ends of float */
    for (i = 0; i < n; i++) a[i] = next_float(30.0f), b[i] = next_float(2.0f);
    memcpy(y1, a, sizeof(float) * (size_t)n);
    memcpy(y2, a, sizeof(float) * (size_t)n);
    el_kernel_swiglu(y1, b, n);
    el_portable_swiglu(y2, b, n);
    compare("swiglu", n, 0, y1, y2, sizeof(float) * (size_t)n);
    check_attention(n);
    for (i = 0; i < n; i++) a[i] = next_float(120.0f);
    shift = next_float(20.0f);
    el_kernel_exp_shifted(y1, a, shift, n);
    el_portable_exp_shifted(y2, a, shift, n);
    compare("exp_shifted", n, 0, y1, y2, sizeof(float) * (size_t)n);
    free(a), free(b), free(y1), free(y2);
}

int main(void)
{
    static const uint32_t types[] = {EL_TYPE_F32, EL_TYPE_F16, EL_TYPE_Q8_0, EL_TYPE_Q4_0};
    static const uint32_t row_counts[] = {1, 3, 8, 13, 16, 17, 33, 64, 100};
    static const uint32_t col_counts[] = {32, 64, 96, 128, 160, 288, 384, 768, 1056};
    static const int batches[] = {1, 2, 3, 4, 5, 8, 9};
    size_t t, r, c, b;
    int n;
    printf("kernels %s\n", EL_KERNELS_NAME);
    for (t = 0; t < 4; t++)
        for (r = 0; r < sizeof row_counts / sizeof *row_counts; r++)
            for (c = 0; c < sizeof col_counts / sizeof *col_counts; c++)
                for (b = 0; b < sizeof batches / sizeof *batches; b++)
                    check_matmul(types[t], row_counts[r], col_counts[c], batches[b]);
    /* F32 and F16 rows of any length: the eight-lane order with a tail (stories260K's 172),
     * through the eight-row, four-row and one-row loops (13 = 8 + 4 + 1) */
    for (n = 1; n <= 40; n++) {
        check_matmul(EL_TYPE_F32, 13, (uint32_t)n, 2);
        check_matmul(EL_TYPE_F16, 13, (uint32_t)n, 2);
    }
    check_matmul(EL_TYPE_F32, 11, 172, 3);
    check_matmul(EL_TYPE_F16, 11, 172, 3);
    /* the longest rows kept in groups (128 blocks) with more activation rows than the
     * VNNI kernel takes at once (16 at that length): it goes over them in slices */
    check_matmul(EL_TYPE_Q8_0, 19, 4096, 37);
    check_matmul(EL_TYPE_Q4_0, 19, 4096, 37);
    for (n = 1; n <= 40; n++) check_quantize(n);
    for (n = 0; n <= 200; n++) check_vectors(n);
    check_vectors(4099);
    printf("mismatches %d\n", mismatches);
    return mismatches != 0;
}
