/* el_kernels_armv7m.c: the kernels for Cortex-M4/M7/M33 (and any Thumb-2 core) with
 * the DSP extension, whose SIMD32 instructions work on the 32-bit core registers.
 *
 * Q8_0 and Q4_0: four int8 values are one 32-bit load; SXTB16 sign-extends bytes 0 and
 * 2 (or, rotated, 1 and 3) into two 16-bit lanes, and SMLAD adds both lane products to
 * a 32-bit sum in one instruction. The pairs come in a different order than the
 * portable loop's, but a block's sum of 32 int8 products is an exact integer either
 * way; the float part (sum += (weight scale * activation scale) * (float)block_sum,
 * block by block) is the portable one. With one activation row (decoding) the row is
 * unpacked into lanes once per matmul and two weight rows go through it together; with
 * more (a prompt), each unpacked weight block serves every activation row before the
 * next block is read.
 *
 * Q4_0 nibbles are masked straight into 16-bit lanes (AND with a shifted operand); the
 * "- 8" comes out of the block sum as 8 * (sum of the block's activations), computed
 * once per matmul.
 *
 * F32 and F16: the FPU is scalar, so the gain is in keeping the eight lanes in
 * registers and sharing each activation load between two rows; same lane order, a
 * separate multiply and add (-ffp-contract=off), the portable pairwise combine and
 * sequential tail. fp16 weights go through the FPU's own conversion, two per load.
 *
 * Weights may sit at any byte offset (34- and 18-byte blocks, a model anywhere in
 * flash): words are read byte by byte in C, which GCC turns into one LDR (unaligned LDR
 * is allowed on ARMv7-M and ARMv7-A; LDRD and LDM are not, and GCC does not pair
 * byte-assembled loads into them).
 *
 * Inline assembly, GCC and Clang only, for three single instructions ACLE lacks:
 * SXTB16 with its rotation, VCVTB and VCVTT (fp16 to float); plain C otherwise.
 */
#include "el_kernel_ops.h"

#if EL_KERNELS_ARMV7M

#include <arm_acle.h>

#include "el_math.h"

/* ------------------------------------------------------------ helpers */

static inline uint32_t load_u32(const void *p)
{
    const uint8_t *b = (const uint8_t *)p;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static inline uint32_t load_u16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

/* Bytes 0 and 2 of x as two int16 lanes. */
static inline int32_t lanes_even(uint32_t x) { return __sxtb16((int32_t)x); }

/* Bytes 1 and 3 of x as two int16 lanes: SXTB16 with its built-in rotation, which the
 * ACLE intrinsic does not expose (GCC does not fold a separate rotate into it). */
static inline int32_t lanes_odd(uint32_t x)
{
#if defined(__GNUC__)
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
#else
    return __sxtb16((int32_t)(x >> 8));
#endif
}

/* fp16 to float. Every fp16 value is exact in float, so the FPU's VCVTB (VCVTT: the top
 * half) gives the portable fp16_to_f32's bits (FPSCR.AHP = 0, the IEEE format, as at
 * reset; a signalling NaN comes out quieted, as any arithmetic on it would). M-profile
 * FPUs all have it; on A-profile __ARM_FP says so. */
#if defined(__GNUC__) && defined(__ARM_FP) && \
    ((__ARM_FP & 2) || (defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M'))
static inline float half_to_float(uint32_t h)
{
    union { uint32_t u; float f; } v;
    float r;
    v.u = h;
    __asm__("vcvtb.f32.f16 %0, %1" : "=t"(r) : "t"(v.f));
    return r;
}

static inline float high_half_to_float(uint32_t h)
{
    union { uint32_t u; float f; } v;
    float r;
    v.u = h;
    __asm__("vcvtt.f32.f16 %0, %1" : "=t"(r) : "t"(v.f));
    return r;
}
#else
/* Without the FPU's conversion: the portable one. */
static inline float half_to_float(uint32_t h) { return el_fp16_to_f32((uint16_t)h); }

static inline float high_half_to_float(uint32_t h) { return half_to_float(h >> 16); }
#endif

/* ------------------------------------------------------------ activations, unpacked */

/* One activation row (batch 1) is unpacked once per matmul into int16 lane pairs, a
 * part of the row at a time: lane[2k] has elements 4k and 4k+2, lane[2k+1] elements
 * 4k+1 and 4k+3, so a weight step reads its two with one LDRD; the block's scale and
 * (Q4_0) offset sit beside them, all under one pointer. A row longer than a part is
 * done part by part, its running sum kept in y between parts (a float stored and
 * reloaded is the same float). */
#define EL_PART_BLOCKS 8 /* 8 x 72 bytes of stack */

typedef struct {
    int32_t lane[16];
    int32_t offset;   /* Q4_0: -8 * the sum of the block's activations */
    float scale;      /* the activation block's scale */
} act_block;

static void unpack_activations(act_block *out, const int8_t *a, const float *scales, uint32_t blocks, int q4)
{
    uint32_t b, k;
    for (b = 0; b < blocks; b++, out++, a += EL_QBLOCK) {
        int32_t sum = 0;
        for (k = 0; k < 8; k++) {
            uint32_t v = load_u32(a + 4 * k);
            out->lane[2 * k] = lanes_even(v);
            out->lane[2 * k + 1] = lanes_odd(v);
        }
        if (q4)
            for (k = 0; k < 16; k++)
                sum += (out->lane[k] >> 16) + (int32_t)(int16_t)(uint16_t)((uint32_t)out->lane[k] & 0xffffu);
        out->offset = -8 * sum;
        out->scale = scales[b];
    }
}

/* ------------------------------------------------------------ Q8_0 */

/* Weights 4k..4k+3 of two rows against their activations. */
#define Q8_STEP(k)                                                                  \
    do {                                                                            \
        int32_t ae = act->lane[2 * (k)], ao = act->lane[2 * (k) + 1];               \
        uint32_t wa = load_u32(w0 + 2 + 4 * (k)), wb = load_u32(w1 + 2 + 4 * (k)); \
        i0 = __smlad(lanes_even(wa), ae, i0);                                       \
        i1 = __smlad(lanes_even(wb), ae, i1);                                       \
        i0 = __smlad(lanes_odd(wa), ao, i0);                                        \
        i1 = __smlad(lanes_odd(wb), ao, i1);                                        \
    } while (0)

/* Rows w0 and w1 (possibly the same, then y0 == y1), blocks [0, blocks) of a part; the
 * sums start from 0 (first part) or from y. */
static void q8_0_rows2(const uint8_t *w0, const uint8_t *w1, const act_block *act, uint32_t blocks, int first,
                       float *y0, float *y1)
{
    float s0 = first ? 0.0f : *y0, s1 = first ? 0.0f : *y1;
    uint32_t b;
    for (b = 0; b < blocks; b++, w0 += 34, w1 += 34, act++) {
        int32_t i0 = 0, i1 = 0;
        Q8_STEP(0);
        Q8_STEP(1);
        Q8_STEP(2);
        Q8_STEP(3);
        Q8_STEP(4);
        Q8_STEP(5);
        Q8_STEP(6);
        Q8_STEP(7);
        s0 += half_to_float(load_u16(w0)) * act->scale * (float)i0;
        s1 += half_to_float(load_u16(w1)) * act->scale * (float)i1;
    }
    *y0 = s0;
    *y1 = s1;
}

/* ------------------------------------------------------------ Q4_0 */

/* Weight bytes 4j..4j+3 of two rows: low nibbles against activations 4j..4j+3 (ae, ao),
 * high nibbles against 16+4j..16+4j+3 (he, ho); nibbles as they are, 0..15. */
#define Q4_STEP(j)                                                                  \
    do {                                                                            \
        int32_t ae = act->lane[2 * (j)], ao = act->lane[2 * (j) + 1];               \
        int32_t he = act->lane[8 + 2 * (j)], ho = act->lane[8 + 2 * (j) + 1];       \
        uint32_t wa = load_u32(w0 + 2 + 4 * (j)), wb = load_u32(w1 + 2 + 4 * (j)); \
        i0 = __smlad((int32_t)(mask & wa), ae, i0);                                 \
        i1 = __smlad((int32_t)(mask & wb), ae, i1);                                 \
        i0 = __smlad((int32_t)(mask & (wa >> 8)), ao, i0);                          \
        i1 = __smlad((int32_t)(mask & (wb >> 8)), ao, i1);                          \
        i0 = __smlad((int32_t)(mask & (wa >> 4)), he, i0);                          \
        i1 = __smlad((int32_t)(mask & (wb >> 4)), he, i1);                          \
        i0 = __smlad((int32_t)(mask & (wa >> 12)), ho, i0);                         \
        i1 = __smlad((int32_t)(mask & (wb >> 12)), ho, i1);                         \
    } while (0)

/* The sums start from the block's offset: the "- 8" of every nibble, once for all rows. */
static void q4_0_rows2(const uint8_t *w0, const uint8_t *w1, const act_block *act, uint32_t blocks, int first,
                       float *y0, float *y1)
{
    uint32_t mask = 0x000f000fu, b;
    float s0 = first ? 0.0f : *y0, s1 = first ? 0.0f : *y1;
#if defined(__GNUC__)
    /* keep the mask in a register: then each nibble pair is one AND with a shifted
     * operand (AND rd, mask, w, LSR #n) rather than a shift and an AND-immediate */
    __asm__("" : "+r"(mask));
#endif
    for (b = 0; b < blocks; b++, w0 += 18, w1 += 18, act++) {
        int32_t i0 = act->offset, i1 = act->offset;
        Q4_STEP(0);
        Q4_STEP(1);
        Q4_STEP(2);
        Q4_STEP(3);
        s0 += half_to_float(load_u16(w0)) * act->scale * (float)i0;
        s1 += half_to_float(load_u16(w1)) * act->scale * (float)i1;
    }
    *y0 = s0;
    *y1 = s1;
}

/* ------------------------------------------------------------ batch > 1 */

/* A weight block unpacked into int16 lane pairs, in the order of the activation lanes
 * above (Q4_0: nibble - 8, low nibbles as elements 0..15, high ones as 16..31). */
typedef struct {
    int32_t lane[16];
} unpacked_block;

/* The block's integer dot product with 32 activations. */
static inline int32_t unpacked_dot(const unpacked_block *u, const int8_t *a)
{
    int32_t s = 0;
    int k;
    for (k = 0; k < 8; k++) {
        uint32_t av = load_u32(a + 4 * k);
        s = __smlad(u->lane[2 * k], lanes_even(av), s);
        s = __smlad(u->lane[2 * k + 1], lanes_odd(av), s);
    }
    return s;
}

/* Every activation row against each weight block as it is unpacked: a prompt reads
 * each weight once. The running sums live in y. */
static void matmul_batch(const el_matmul_task *t, uint32_t r0, uint32_t r1, int q4)
{
    uint32_t r, blk, cols = t->w->cols, rows = t->w->rows, blocks = cols / EL_QBLOCK;
    uint32_t block_bytes = q4 ? 18u : 34u;
    int b, k;
    unpacked_block u;
    for (r = r0; r < r1; r++) {
        const uint8_t *w = (const uint8_t *)t->w->data + (size_t)r * blocks * block_bytes;
        for (b = 0; b < t->batch; b++) t->y[(size_t)b * rows + r] = 0.0f;
        for (blk = 0; blk < blocks; blk++, w += block_bytes) {
            float d = half_to_float(load_u16(w));
            if (q4) {
                for (k = 0; k < 4; k++) {
                    uint32_t v = load_u32(w + 2 + 4 * k), m = 0x000f000fu, eight = 0x00080008u;
                    u.lane[2 * k] = __ssub16((int32_t)(v & m), (int32_t)eight);
                    u.lane[2 * k + 1] = __ssub16((int32_t)((v >> 8) & m), (int32_t)eight);
                    u.lane[8 + 2 * k] = __ssub16((int32_t)((v >> 4) & m), (int32_t)eight);
                    u.lane[8 + 2 * k + 1] = __ssub16((int32_t)((v >> 12) & m), (int32_t)eight);
                }
            } else {
                for (k = 0; k < 8; k++) {
                    uint32_t v = load_u32(w + 2 + 4 * k);
                    u.lane[2 * k] = lanes_even(v);
                    u.lane[2 * k + 1] = lanes_odd(v);
                }
            }
            for (b = 0; b < t->batch; b++) {
                float *y = &t->y[(size_t)b * rows + r];
                int32_t isum = unpacked_dot(&u, t->xq + (size_t)b * cols + (size_t)blk * EL_QBLOCK);
                *y += d * t->xs[(size_t)b * blocks + blk] * (float)isum;
            }
        }
    }
}

/* ------------------------------------------------------------ Q8_0 and Q4_0 rows */

static void matmul_quantized(const el_matmul_task *t, uint32_t r0, uint32_t r1, int q4)
{
    uint32_t r, c, n, blocks = t->w->cols / EL_QBLOCK, block_bytes = q4 ? 18u : 34u;
    size_t row_bytes = (size_t)blocks * block_bytes;
    act_block act[EL_PART_BLOCKS];
    if (t->batch != 1) {
        matmul_batch(t, r0, r1, q4);
        return;
    }
    for (c = 0; c < blocks; c += n) {
        const uint8_t *part = (const uint8_t *)t->w->data + (size_t)c * block_bytes;
        n = blocks - c < EL_PART_BLOCKS ? blocks - c : EL_PART_BLOCKS;
        unpack_activations(act, t->xq + (size_t)c * EL_QBLOCK, t->xs + c, n, q4);
        for (r = r0; r < r1; r += 2) {
            uint32_t r_next = r + 1 < r1 ? r + 1 : r;
            if (q4)
                q4_0_rows2(part + r * row_bytes, part + r_next * row_bytes, act, n, c == 0, &t->y[r], &t->y[r_next]);
            else
                q8_0_rows2(part + r * row_bytes, part + r_next * row_bytes, act, n, c == 0, &t->y[r], &t->y[r_next]);
        }
    }
}

void el_kernel_matmul_q8_0(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_quantized(t, r0, r1, 0); }
void el_kernel_matmul_q4_0(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_quantized(t, r0, r1, 1); }

/* ------------------------------------------------------------ F32 */

/* Two rows against one vector, each in the portable eight-lane order. */
static void dot2_f32(const float *w0, const float *w1, const float *x, int n, float *y0, float *y1)
{
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, a4 = 0.0f, a5 = 0.0f, a6 = 0.0f, a7 = 0.0f;
    float b0 = 0.0f, b1 = 0.0f, b2 = 0.0f, b3 = 0.0f, b4 = 0.0f, b5 = 0.0f, b6 = 0.0f, b7 = 0.0f;
    float s0, s1;
    int i, whole = n - n % 8;
    for (i = 0; i < whole; i += 8, w0 += 8, w1 += 8, x += 8) {
        float x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3], x4 = x[4], x5 = x[5], x6 = x[6], x7 = x[7];
        a0 += w0[0] * x0;
        b0 += w1[0] * x0;
        a1 += w0[1] * x1;
        b1 += w1[1] * x1;
        a2 += w0[2] * x2;
        b2 += w1[2] * x2;
        a3 += w0[3] * x3;
        b3 += w1[3] * x3;
        a4 += w0[4] * x4;
        b4 += w1[4] * x4;
        a5 += w0[5] * x5;
        b5 += w1[5] * x5;
        a6 += w0[6] * x6;
        b6 += w1[6] * x6;
        a7 += w0[7] * x7;
        b7 += w1[7] * x7;
    }
    s0 = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    s1 = ((b0 + b1) + (b2 + b3)) + ((b4 + b5) + (b6 + b7));
    for (; i < n; i++, w0++, w1++, x++) {
        s0 += w0[0] * x[0];
        s1 += w1[0] * x[0];
    }
    *y0 = s0;
    *y1 = s1;
}

float el_kernel_dot(const float *a, const float *b, int n)
{
    float l0 = 0.0f, l1 = 0.0f, l2 = 0.0f, l3 = 0.0f, l4 = 0.0f, l5 = 0.0f, l6 = 0.0f, l7 = 0.0f, sum;
    int i, whole = n - n % 8;
    for (i = 0; i < whole; i += 8, a += 8, b += 8) {
        l0 += a[0] * b[0];
        l1 += a[1] * b[1];
        l2 += a[2] * b[2];
        l3 += a[3] * b[3];
        l4 += a[4] * b[4];
        l5 += a[5] * b[5];
        l6 += a[6] * b[6];
        l7 += a[7] * b[7];
    }
    sum = ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7));
    for (; i < n; i++, a++, b++) sum += a[0] * b[0];
    return sum;
}

void el_kernel_matmul_f32(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    uint32_t r, cols = t->w->cols, rows = t->w->rows;
    const float *data = (const float *)t->w->data;
    int b;
    for (r = r0; r + 1 < r1; r += 2)
        for (b = 0; b < t->batch; b++)
            dot2_f32(data + (size_t)r * cols, data + (size_t)(r + 1) * cols, t->x + (size_t)b * cols, (int)cols,
                     &t->y[(size_t)b * rows + r], &t->y[(size_t)b * rows + r + 1]);
    if (r < r1)
        for (b = 0; b < t->batch; b++)
            t->y[(size_t)b * rows + r] = el_kernel_dot(data + (size_t)r * cols, t->x + (size_t)b * cols, (int)cols);
}

/* ------------------------------------------------------------ F16 */

/* Two rows of fp16 weights (any byte offset) against one vector: the F32 order on the
 * converted weights, two of them per 32-bit load. */
static void dot2_f16(const uint8_t *w0, const uint8_t *w1, const float *x, int n, float *y0, float *y1)
{
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, a4 = 0.0f, a5 = 0.0f, a6 = 0.0f, a7 = 0.0f;
    float b0 = 0.0f, b1 = 0.0f, b2 = 0.0f, b3 = 0.0f, b4 = 0.0f, b5 = 0.0f, b6 = 0.0f, b7 = 0.0f;
    float s0, s1;
    int i, whole = n - n % 8;
    for (i = 0; i < whole; i += 8, w0 += 16, w1 += 16, x += 8) {
        uint32_t p, q;
        p = load_u32(w0), q = load_u32(w1);
        a0 += half_to_float(p) * x[0];
        b0 += half_to_float(q) * x[0];
        a1 += high_half_to_float(p) * x[1];
        b1 += high_half_to_float(q) * x[1];
        p = load_u32(w0 + 4), q = load_u32(w1 + 4);
        a2 += half_to_float(p) * x[2];
        b2 += half_to_float(q) * x[2];
        a3 += high_half_to_float(p) * x[3];
        b3 += high_half_to_float(q) * x[3];
        p = load_u32(w0 + 8), q = load_u32(w1 + 8);
        a4 += half_to_float(p) * x[4];
        b4 += half_to_float(q) * x[4];
        a5 += high_half_to_float(p) * x[5];
        b5 += high_half_to_float(q) * x[5];
        p = load_u32(w0 + 12), q = load_u32(w1 + 12);
        a6 += half_to_float(p) * x[6];
        b6 += half_to_float(q) * x[6];
        a7 += high_half_to_float(p) * x[7];
        b7 += high_half_to_float(q) * x[7];
    }
    s0 = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    s1 = ((b0 + b1) + (b2 + b3)) + ((b4 + b5) + (b6 + b7));
    for (; i < n; i++, w0 += 2, w1 += 2, x++) {
        s0 += half_to_float(load_u16(w0)) * x[0];
        s1 += half_to_float(load_u16(w1)) * x[0];
    }
    *y0 = s0;
    *y1 = s1;
}

void el_kernel_matmul_f16(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    uint32_t r, cols = t->w->cols, rows = t->w->rows;
    const uint8_t *data = (const uint8_t *)t->w->data;
    int b;
    for (r = r0; r < r1; r += 2) {
        uint32_t r_next = r + 1 < r1 ? r + 1 : r; /* an odd last row twice, into the same y */
        for (b = 0; b < t->batch; b++)
            dot2_f16(data + (size_t)r * 2 * cols, data + (size_t)r_next * 2 * cols, t->x + (size_t)b * cols, (int)cols,
                     &t->y[(size_t)b * rows + r], &t->y[(size_t)b * rows + r_next]);
    }
}

/* ------------------------------------------------------------ quantize, axpy */

static inline int8_t round_to_int8(float v) { return (int8_t)(int)(v + (v >= 0.0f ? 0.5f : -0.5f)); }

/* |x| as bits: the sign cleared. For non-negative floats the unsigned order of the bits
 * is the float order, and a NaN's bits lie above every number's and +Inf's. */
static inline uint32_t magnitude_bits(const float *x) { return el_float_bits(*x) & 0x7fffffffu; }

/* el_quantize_int8 per block: the maximum in four running maxima, taken on the bits as
 * integers (the portable maximum, in any order) so that a NaN wins instead of being
 * skipped; a NaN or Inf block then goes to the portable code, which defines it. */
void el_kernel_quantize_blocks(int8_t *q, float *scales, const float *x, int n_blocks)
{
    int b, i;
    for (b = 0; b < n_blocks; b++, x += EL_QBLOCK, q += EL_QBLOCK) {
        uint32_t m0 = 0, m1 = 0, m2 = 0, m3 = 0;
        float amax, inverse;
        for (i = 0; i < EL_QBLOCK; i += 4) {
            uint32_t a0 = magnitude_bits(x + i), a1 = magnitude_bits(x + i + 1);
            uint32_t a2 = magnitude_bits(x + i + 2), a3 = magnitude_bits(x + i + 3);
            if (a0 > m0) m0 = a0;
            if (a1 > m1) m1 = a1;
            if (a2 > m2) m2 = a2;
            if (a3 > m3) m3 = a3;
        }
        if (m1 > m0) m0 = m1;
        if (m3 > m2) m2 = m3;
        if (m2 > m0) m0 = m2;
        if (m0 >= 0x7f800000u) { /* NaN or Inf */
            el_quantize_int8(q, &scales[b], x, EL_QBLOCK);
            continue;
        }
        amax = el_bits_float(m0);
        scales[b] = amax / 127.0f;
        inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
        if (inverse > EL_QUANT_INVERSE_MAX) { /* a block of near-zero values: the portable rule */
            el_quantize_int8(q, &scales[b], x, EL_QBLOCK);
            continue;
        }
        for (i = 0; i < EL_QBLOCK; i += 4) {
            q[i] = round_to_int8(x[i] * inverse);
            q[i + 1] = round_to_int8(x[i + 1] * inverse);
            q[i + 2] = round_to_int8(x[i + 2] * inverse);
            q[i + 3] = round_to_int8(x[i + 3] * inverse);
        }
    }
}

void el_kernel_axpy(float *y, float a, const float *x, int n)
{
    int i, whole = n & ~3;
    for (i = 0; i < whole; i += 4) {
        y[i] += a * x[i];
        y[i + 1] += a * x[i + 1];
        y[i + 2] += a * x[i + 2];
        y[i + 3] += a * x[i + 3];
    }
    for (; i < n; i++) y[i] += a * x[i];
}

/* ------------------------------------------------------------ the rest: portable */

/* This target keeps the file's layout. */
int el_kernel_arrange(el_matrix *w, uint8_t *data)
{
    (void)w, (void)data;
    return 0;
}

void el_kernel_swiglu(float *gate, const float *up, int n) { el_portable_swiglu(gate, up, n); }
void el_kernel_exp_shifted(float *w, const float *x, float shift, int n) { el_portable_exp_shifted(w, x, shift, n); }

/* attention over a cache block: loops over this file's dot and axpy */
void el_kernel_key_dots(float *out, const float *q, const float *keys, size_t stride, int n_keys, int n, float scale)
{
    el_key_dots_by_dot(out, q, keys, stride, n_keys, n, scale);
}

void el_kernel_value_sum(float *out, const float *weights, const float *values, size_t stride, int n_values, int n)
{
    el_value_sum_by_axpy(out, weights, values, stride, n_values, n);
}

#else
typedef int el_kernels_armv7m_unused;
#endif
