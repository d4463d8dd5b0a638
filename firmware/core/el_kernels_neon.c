/* el_kernels_neon.c: the kernels with ARM NEON (aarch64, with or without the dot-product
 * extension, and 32-bit ARMv7 with NEON), bit for bit the portable ones.
 *
 * How each keeps the portable order:
 * - F32/F16 dot: two float32x4 accumulators are the eight lanes (0-3 and 4-7); multiply,
 *   then add (never fused: no vfmaq, no vmlaq_f32); the lanes are combined
 *   ((0+1)+(2+3))+((4+5)+(6+7)) by pairwise adds; the tail is added one element at a
 *   time. Four rows run side by side and share each load of x.
 * - Q8_0/Q4_0: a block's 32 int8 products are summed exactly in integers (vdotq_s32
 *   with the dot-product extension; else vmull_s8 + vmlal_s8, a pair of products fits
 *   int16, then vpadalq_s16); four rows' block sums are reduced into one register, lane
 *   j holding row j, and sum += (weight scale * activation scale) * block_sum runs per
 *   lane in block order.
 * - exp: el_expf's steps as vector operations, its branches as selects.
 * Rows are taken in groups of four; the group's weights stay in cache while every
 * activation row of the batch passes over them, so a prompt reads each weight once.
 *
 * ARMv7 (32-bit) NEON is not IEEE: it flushes subnormal inputs and results to zero and
 * returns the default NaN. The portable code runs on VFP, which is IEEE. So on ARMv7 a
 * float kernel takes the vector path only where no subnormal can occur and falls back to
 * the portable code (for that row, activation row or four values) otherwise:
 * - dots: every nonzero weight and activation is checked to be at least 2^-43 and 2^-60
 *   in magnitude (F16 weights are at least 2^-24). Then every nonzero product is at
 *   least 2^-103, a multiple of 2^-126, and so is every partial sum: each is zero or
 *   normal, and flushing never happens. A NaN result (where payloads could differ) is
 *   recomputed by the portable code.
 * - Q8_0/Q4_0: activation scales are checked the same way (weight scales from fp16 are
 *   at least 2^-24, block sums are integers).
 * - quantize: blocks with 0 < max|x| < 2^-100 (or NaN) go to el_quantize_int8; otherwise
 *   a flushed x * (127 / max|x|) is below 2^-19 either way and rounds to 0 as IEEE does.
 * - exp: four values with a lane whose result is below 2^-125 go to el_expf (the vector
 *   steps before the final scaling never meet a subnormal that could change a bit);
 *   divisions (no vector divide) and swiglu's last steps run on VFP.
 * - axpy runs on VFP (the portable code).
 * fp16 conversion on ARMv7 is integer bit manipulation (exact, subnormals included);
 * on aarch64 vcvt_f32_f16 is exact.
 */
#include "el_kernel_ops.h"

#if EL_KERNELS_NEON

#include <arm_neon.h>
#include <stddef.h>

#include "el_math.h"

#if defined(__aarch64__)
#define EL_NEON_IEEE 1 /* aarch64 Advanced SIMD: IEEE arithmetic (FPCR.FZ and DN are off) */
#else
#define EL_NEON_IEEE 0 /* ARMv7 Advanced SIMD: flush-to-zero and default NaN, always */
#endif

#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#define EL_NEON_DOTPROD 1
#else
#define EL_NEON_DOTPROD 0
#endif

#define EL_GROUP 4        /* rows per group */
#define EL_BATCH_CHUNK 32 /* activation rows whose checks are kept at once (ARMv7) */

/* Smallest biased exponents that keep ARMv7 products away from subnormals (see above). */
#define EL_MIN_EXP_X 67u   /* activations: 2^-60 */
#define EL_MIN_EXP_W 84u   /* F32 weights: 2^-43 */
#define EL_MIN_EXP_X16 48u /* activations against F16 weights (>= 2^-24): 2^-79 */

/* ------------------------------------------------------------ helpers */

static uint16_t read_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static float bits_float(uint32_t u)
{
    union { uint32_t u; float f; } v;
    v.u = u;
    return v.f;
}

static uint32_t max_lane(uint32x4_t m)
{
#if defined(__aarch64__)
    return vmaxvq_u32(m);
#else
    uint32x2_t t = vpmax_u32(vget_low_u32(m), vget_high_u32(m));
    return vget_lane_u32(vpmax_u32(t, t), 0);
#endif
}

#if !EL_NEON_IEEE
/* ---- ARMv7 only: the checks that keep NEON's flush-to-zero out of the results */

static uint32_t float_bits(float f)
{
    union { uint32_t u; float f; } v;
    v.f = f;
    return v.u;
}

static int any_set(uint32x4_t m)
{
    uint32x2_t t = vorr_u32(vget_low_u32(m), vget_high_u32(m));
    return vget_lane_u32(vpmax_u32(t, t), 0) != 0;
}

static uint32_t min_lane(uint32x4_t m)
{
    uint32x2_t t = vpmin_u32(vget_low_u32(m), vget_high_u32(m));
    return vget_lane_u32(vpmin_u32(t, t), 0);
}

/* 2 * bits - 1 (wrapping): zero (either sign) becomes the largest value, a nonzero
 * magnitude keeps its order. The minimum over values is at least (e << 24) - 1 exactly
 * when each value is zero or at least 2^(e - 127) in magnitude. */
static uint32x4_t magnitude_key(uint32x4_t bits) { return vmlaq_n_u32(vdupq_n_u32(0xffffffffu), bits, 2u); }

static uint32_t key_floor(uint32_t min_exp) { return (min_exp << 24) - 1u; }

/* Every x[i] zero or at least 2^(min_exp - 127) in magnitude (ARMv7 checks). */
static int floats_clear_of_zero(const float *x, int n, uint32_t min_exp)
{
    uint32x4_t m = vdupq_n_u32(0xffffffffu);
    int i;
    for (i = 0; i + 4 <= n; i += 4) m = vminq_u32(m, magnitude_key(vreinterpretq_u32_f32(vld1q_f32(x + i))));
    for (; i < n; i++) m = vminq_u32(m, vdupq_n_u32(2u * float_bits(x[i]) - 1u));
    return min_lane(m) >= key_floor(min_exp);
}
#endif

/* ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)) of four rows' lanes (lo: 0-3, hi: 4-7); lane j
 * of the result is row j's. */
static float32x4_t combine4(float32x4_t lo0, float32x4_t hi0, float32x4_t lo1, float32x4_t hi1,
                            float32x4_t lo2, float32x4_t hi2, float32x4_t lo3, float32x4_t hi3)
{
#if defined(__aarch64__)
    float32x4_t p0 = vpaddq_f32(lo0, hi0), p1 = vpaddq_f32(lo1, hi1); /* l0+l1, l2+l3, l4+l5, l6+l7 */
    float32x4_t p2 = vpaddq_f32(lo2, hi2), p3 = vpaddq_f32(lo3, hi3);
    return vpaddq_f32(vpaddq_f32(p0, p1), vpaddq_f32(p2, p3));
#else
    float32x2_t a0 = vpadd_f32(vpadd_f32(vget_low_f32(lo0), vget_high_f32(lo0)),
                               vpadd_f32(vget_low_f32(hi0), vget_high_f32(hi0)));
    float32x2_t a1 = vpadd_f32(vpadd_f32(vget_low_f32(lo1), vget_high_f32(lo1)),
                               vpadd_f32(vget_low_f32(hi1), vget_high_f32(hi1)));
    float32x2_t a2 = vpadd_f32(vpadd_f32(vget_low_f32(lo2), vget_high_f32(lo2)),
                               vpadd_f32(vget_low_f32(hi2), vget_high_f32(hi2)));
    float32x2_t a3 = vpadd_f32(vpadd_f32(vget_low_f32(lo3), vget_high_f32(lo3)),
                               vpadd_f32(vget_low_f32(hi3), vget_high_f32(hi3)));
    return vcombine_f32(vpadd_f32(a0, a1), vpadd_f32(a2, a3));
#endif
}

/* Four fp16 values as floats, exactly as el_fp16_to_f32. */
static float32x4_t fp16x4_to_f32(uint16x4_t h)
{
#if defined(__aarch64__)
    return vcvt_f32_f16(vreinterpret_f16_u16(h));
#else
    uint32x4_t em = vandq_u32(vshll_n_u16(h, 13), vdupq_n_u32(0x0fffe000u)); /* exponent, mantissa in place */
    uint32x4_t bias = vdupq_n_u32(112u << 23);
    uint32x4_t normal = vaddq_u32(em, vaddq_u32(bias, vandq_u32(vcgeq_u32(em, vdupq_n_u32(31u << 23)), bias)));
    /* subnormal (and zero): 2^-14 * (1 + m / 1024) - 2^-14 = m * 2^-24, exact and normal */
    float32x4_t sub = vsubq_f32(vreinterpretq_f32_u32(vorrq_u32(em, vdupq_n_u32(113u << 23))),
                                vdupq_n_f32(1.0f / 16384.0f));
    uint32x4_t mag = vbslq_u32(vcltq_u32(em, vdupq_n_u32(1u << 23)), vreinterpretq_u32_f32(sub), normal);
    return vreinterpretq_f32_u32(vbslq_u32(vdupq_n_u32(0x80000000u), vshll_n_u16(h, 16), mag));
#endif
}

static float32x4_t load4_f16(const uint8_t *p) { return fp16x4_to_f32(vreinterpret_u16_u8(vld1_u8(p))); }

/* The fp16 scales at p0..p3 as four floats. */
static float32x4_t scales4(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3)
{
    uint16x4_t h = vdup_n_u16(read_u16(p0));
    h = vset_lane_u16(read_u16(p1), h, 1);
    h = vset_lane_u16(read_u16(p2), h, 2);
    h = vset_lane_u16(read_u16(p3), h, 3);
    return fp16x4_to_f32(h);
}

/* ------------------------------------------------------------ F32 and F16 */

/* Four rows . x over n columns into out[0..3], the portable order. For F32 on ARMv7,
 * returns 0 when a nonzero weight is below 2^-43 in magnitude (the caller falls back). */
static int dot4_f32(const float *w0, const float *w1, const float *w2, const float *w3, const float *x, int n,
                    float *out)
{
    float32x4_t lo0 = vdupq_n_f32(0.0f), hi0 = lo0, lo1 = lo0, hi1 = lo0, lo2 = lo0, hi2 = lo0, lo3 = lo0, hi3 = lo0;
    int i, whole = n - n % 8, ok = 1;
#if !EL_NEON_IEEE
    uint32x4_t key = vdupq_n_u32(0xffffffffu);
#define EL_WCHECK(v) key = vminq_u32(key, magnitude_key(vreinterpretq_u32_f32(v)))
#else
#define EL_WCHECK(v) (void)0
#endif
    for (i = 0; i < whole; i += 8) {
        float32x4_t xl = vld1q_f32(x + i), xh = vld1q_f32(x + i + 4), a, b;
        a = vld1q_f32(w0 + i), b = vld1q_f32(w0 + i + 4);
        lo0 = vaddq_f32(lo0, vmulq_f32(a, xl)), hi0 = vaddq_f32(hi0, vmulq_f32(b, xh));
        EL_WCHECK(a); EL_WCHECK(b);
        a = vld1q_f32(w1 + i), b = vld1q_f32(w1 + i + 4);
        lo1 = vaddq_f32(lo1, vmulq_f32(a, xl)), hi1 = vaddq_f32(hi1, vmulq_f32(b, xh));
        EL_WCHECK(a); EL_WCHECK(b);
        a = vld1q_f32(w2 + i), b = vld1q_f32(w2 + i + 4);
        lo2 = vaddq_f32(lo2, vmulq_f32(a, xl)), hi2 = vaddq_f32(hi2, vmulq_f32(b, xh));
        EL_WCHECK(a); EL_WCHECK(b);
        a = vld1q_f32(w3 + i), b = vld1q_f32(w3 + i + 4);
        lo3 = vaddq_f32(lo3, vmulq_f32(a, xl)), hi3 = vaddq_f32(hi3, vmulq_f32(b, xh));
        EL_WCHECK(a); EL_WCHECK(b);
    }
#undef EL_WCHECK
#if !EL_NEON_IEEE
    ok = min_lane(key) >= key_floor(EL_MIN_EXP_W);
#endif
    vst1q_f32(out, combine4(lo0, hi0, lo1, hi1, lo2, hi2, lo3, hi3));
    for (i = whole; i < n; i++) {
        out[0] += w0[i] * x[i];
        out[1] += w1[i] * x[i];
        out[2] += w2[i] * x[i];
        out[3] += w3[i] * x[i];
    }
    return ok;
}

/* The same with fp16 weights (rows of 2n bytes). */
static void dot4_f16(const uint8_t *w0, const uint8_t *w1, const uint8_t *w2, const uint8_t *w3, const float *x,
                     int n, float *out)
{
    float32x4_t lo0 = vdupq_n_f32(0.0f), hi0 = lo0, lo1 = lo0, hi1 = lo0, lo2 = lo0, hi2 = lo0, lo3 = lo0, hi3 = lo0;
    int i, whole = n - n % 8;
    for (i = 0; i < whole; i += 8) {
        float32x4_t xl = vld1q_f32(x + i), xh = vld1q_f32(x + i + 4);
        lo0 = vaddq_f32(lo0, vmulq_f32(load4_f16(w0 + 2 * i), xl));
        hi0 = vaddq_f32(hi0, vmulq_f32(load4_f16(w0 + 2 * i + 8), xh));
        lo1 = vaddq_f32(lo1, vmulq_f32(load4_f16(w1 + 2 * i), xl));
        hi1 = vaddq_f32(hi1, vmulq_f32(load4_f16(w1 + 2 * i + 8), xh));
        lo2 = vaddq_f32(lo2, vmulq_f32(load4_f16(w2 + 2 * i), xl));
        hi2 = vaddq_f32(hi2, vmulq_f32(load4_f16(w2 + 2 * i + 8), xh));
        lo3 = vaddq_f32(lo3, vmulq_f32(load4_f16(w3 + 2 * i), xl));
        hi3 = vaddq_f32(hi3, vmulq_f32(load4_f16(w3 + 2 * i + 8), xh));
    }
    vst1q_f32(out, combine4(lo0, hi0, lo1, hi1, lo2, hi2, lo3, hi3));
    for (i = whole; i < n; i++) {
        float xi = x[i];
        out[0] += el_fp16_to_f32(read_u16(w0 + 2 * i)) * xi;
        out[1] += el_fp16_to_f32(read_u16(w1 + 2 * i)) * xi;
        out[2] += el_fp16_to_f32(read_u16(w2 + 2 * i)) * xi;
        out[3] += el_fp16_to_f32(read_u16(w3 + 2 * i)) * xi;
    }
}

/* y[b][r] for one row and activation row, by the portable code. */
static void portable_one(const el_matmul_task *t, uint32_t r, int b)
{
    el_matmul_task one = *t;
    uint32_t cols = t->w->cols, blocks = cols / EL_QBLOCK;
    one.y = t->y + (size_t)b * t->w->rows;
    if (t->x) one.x = t->x + (size_t)b * cols;
    if (t->xq) one.xq = t->xq + (size_t)b * cols;
    if (t->xs) one.xs = t->xs + (size_t)b * blocks;
    one.batch = 1;
    switch (t->w->type) {
    case EL_TYPE_F32: el_portable_matmul_f32(&one, r, r + 1); break;
    case EL_TYPE_F16: el_portable_matmul_f16(&one, r, r + 1); break;
    case EL_TYPE_Q8_0: el_portable_matmul_q8_0(&one, r, r + 1); break;
    default: el_portable_matmul_q4_0(&one, r, r + 1); break;
    }
}

/* Stores a group's results (n_rows of them). A NaN is recomputed by the portable code:
 * which NaN comes out of two NaN operands depends on their order, and the compiler
 * orders commutative operands as it likes, in either code. On ARMv7 so is every result
 * whose checks failed (ok == 0). */
static void store_group(const el_matmul_task *t, uint32_t r, uint32_t n_rows, int b, const float *out, int ok)
{
    float *y = t->y + (size_t)b * t->w->rows + r;
    uint32_t k;
    for (k = 0; k < n_rows; k++) {
        if (ok && out[k] == out[k]) y[k] = out[k];
        else portable_one(t, r + k, b);
    }
}

/* Rows r0..r1 of an F32 or F16 matrix, four at a time (a short last group repeats its
 * last row and keeps only the rows it has). */
static void matmul_float(const el_matmul_task *t, uint32_t r0, uint32_t r1, int f16)
{
    uint32_t cols = t->w->cols, r, k;
    size_t row_bytes = (size_t)cols * (f16 ? 2u : 4u);
    const uint8_t *base = (const uint8_t *)t->w->data;
    int b0, b, nb;
#if !EL_NEON_IEEE
    unsigned char x_ok[EL_BATCH_CHUNK];
#endif
    for (b0 = 0; b0 < t->batch; b0 += EL_BATCH_CHUNK) {
        nb = t->batch - b0 < EL_BATCH_CHUNK ? t->batch - b0 : EL_BATCH_CHUNK;
#if !EL_NEON_IEEE
        for (b = 0; b < nb; b++)
            x_ok[b] = (unsigned char)floats_clear_of_zero(t->x + (size_t)(b0 + b) * cols, (int)cols,
                                                          f16 ? EL_MIN_EXP_X16 : EL_MIN_EXP_X);
#endif
        for (r = r0; r < r1; r += EL_GROUP) {
            uint32_t n_rows = r1 - r < EL_GROUP ? r1 - r : EL_GROUP;
            const uint8_t *w[EL_GROUP];
            for (k = 0; k < EL_GROUP; k++) w[k] = base + (size_t)(r + (k < n_rows ? k : n_rows - 1)) * row_bytes;
            for (b = 0; b < nb; b++) {
                const float *x = t->x + (size_t)(b0 + b) * cols;
                float out[EL_GROUP];
                int ok = 1;
                if (f16)
                    dot4_f16(w[0], w[1], w[2], w[3], x, (int)cols, out);
                else
                    ok = dot4_f32((const float *)(const void *)w[0], (const float *)(const void *)w[1],
                                  (const float *)(const void *)w[2], (const float *)(const void *)w[3], x, (int)cols,
                                  out);
#if !EL_NEON_IEEE
                ok = ok && x_ok[b];
#endif
                store_group(t, r, n_rows, b0 + b, out, ok);
            }
        }
    }
}

void el_kernel_matmul_f32(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_float(t, r0, r1, 0); }
void el_kernel_matmul_f16(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_float(t, r0, r1, 1); }

/* ------------------------------------------------------------ Q8_0 and Q4_0 */

/* Row sums of four int32x4: lane j of the result is the sum of a_j's lanes (wrapping). */
static int32x4_t reduce4(int32x4_t a0, int32x4_t a1, int32x4_t a2, int32x4_t a3)
{
#if defined(__aarch64__)
    return vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3));
#else
    int32x2_t s0 = vpadd_s32(vget_low_s32(a0), vget_high_s32(a0)), s1 = vpadd_s32(vget_low_s32(a1), vget_high_s32(a1));
    int32x2_t s2 = vpadd_s32(vget_low_s32(a2), vget_high_s32(a2)), s3 = vpadd_s32(vget_low_s32(a3), vget_high_s32(a3));
    return vcombine_s32(vpadd_s32(s0, s1), vpadd_s32(s2, s3));
#endif
}

#if EL_NEON_DOTPROD
/* acc + the 32 products of one block (w0 . x0 + w1 . x1, four lanes, exact). */
static int32x4_t block_dot(int32x4_t acc, int8x16_t w0, int8x16_t w1, int8x16_t x0, int8x16_t x1)
{
    return vdotq_s32(vdotq_s32(acc, w0, x0), w1, x1);
}
#else
/* acc + the 32 products of one block, four lanes. Each int16 lane holds two products:
 * |w| <= 128 and |x| <= 127 (the activations' quantizer), so at most 32512. */
static int32x4_t block_dot(int32x4_t acc, int8x16_t w0, int8x16_t w1, int8x16_t x0, int8x16_t x1)
{
#if defined(__aarch64__)
    int16x8_t p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), w0, x0);
    int16x8_t p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), w1, x1);
#else
    int16x8_t p0 = vmlal_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), vget_high_s8(w0), vget_high_s8(x0));
    int16x8_t p1 = vmlal_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), vget_high_s8(w1), vget_high_s8(x1));
#endif
    return vpadalq_s16(vpadalq_s16(acc, p0), p1);
}

/* acc + the 32 products of a Q4_0 block's nibbles n (0..15, low then high) and x:
 * four products per int16 lane, at most 4 * 15 * 127. */
static int32x4_t nibble_dot(int32x4_t acc, int8x16_t lo, int8x16_t hi, int8x16_t x0, int8x16_t x1)
{
#if defined(__aarch64__)
    int16x8_t p = vmlal_high_s8(vmull_s8(vget_low_s8(lo), vget_low_s8(x0)), lo, x0);
    p = vmlal_s8(p, vget_low_s8(hi), vget_low_s8(x1));
    p = vmlal_high_s8(p, hi, x1);
#else
    int16x8_t p = vmlal_s8(vmull_s8(vget_low_s8(lo), vget_low_s8(x0)), vget_high_s8(lo), vget_high_s8(x0));
    p = vmlal_s8(p, vget_low_s8(hi), vget_low_s8(x1));
    p = vmlal_s8(p, vget_high_s8(hi), vget_high_s8(x1));
#endif
    return vpadalq_s16(acc, p);
}
#endif

/* 8 * (the sum of a block's 32 activations), in every lane. */
static int32x4_t block_sum8(int8x16_t x0, int8x16_t x1)
{
    int32x4_t s = vpaddlq_s16(vpadalq_s8(vpaddlq_s8(x0), x1));
#if defined(__aarch64__)
    return vdupq_n_s32(8 * vaddvq_s32(s));
#else
    int32x2_t t = vpadd_s32(vget_low_s32(s), vget_high_s32(s));
    t = vpadd_s32(t, t);
    return vshlq_n_s32(vcombine_s32(t, t), 3);
#endif
}

/* Four rows of a Q8_0 (q4 = 0) or Q4_0 (q4 = 1) matrix . one activation row: lane j of
 * the result is row j's sum over the blocks, the portable order. */
static float32x4_t dot4_quant(const uint8_t *w0, const uint8_t *w1, const uint8_t *w2, const uint8_t *w3,
                              const int8_t *xq, const float *xs, uint32_t blocks, int q4)
{
    const size_t step = q4 ? 18u : 34u;
    float32x4_t sum = vdupq_n_f32(0.0f);
    int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0, done = a0;
    uint32_t j;
    /* a0..a3 run over all blocks (wrapping int32, exact modulo 2^32); a block's sums
     * are the running sums minus those before it, exact as each fits int32 */
    for (j = 0; j < blocks; j++, xq += EL_QBLOCK, w0 += step, w1 += step, w2 += step, w3 += step) {
        int8x16_t x0 = vld1q_s8(xq), x1 = vld1q_s8(xq + 16);
        int32x4_t running, isum;
        float32x4_t d = scales4(w0, w1, w2, w3);
        if (q4) {
            const uint8x16_t low = vdupq_n_u8(0x0f);
            uint8x16_t v0 = vld1q_u8(w0 + 2), v1 = vld1q_u8(w1 + 2), v2 = vld1q_u8(w2 + 2), v3 = vld1q_u8(w3 + 2);
#if EL_NEON_DOTPROD
#define EL_NIBBLES(a, v) a = block_dot(a, vreinterpretq_s8_u8(vandq_u8(v, low)), \
                                       vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), x0, x1)
#else
#define EL_NIBBLES(a, v) a = nibble_dot(a, vreinterpretq_s8_u8(vandq_u8(v, low)), \
                                        vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), x0, x1)
#endif
            EL_NIBBLES(a0, v0);
            EL_NIBBLES(a1, v1);
            EL_NIBBLES(a2, v2);
            EL_NIBBLES(a3, v3);
#undef EL_NIBBLES
            running = reduce4(a0, a1, a2, a3);
            /* sum of (n - 8) * x = sum of n * x - 8 * sum of x */
            isum = vsubq_s32(vsubq_s32(running, done), block_sum8(x0, x1));
        } else {
            a0 = block_dot(a0, vld1q_s8((const int8_t *)(w0 + 2)), vld1q_s8((const int8_t *)(w0 + 18)), x0, x1);
            a1 = block_dot(a1, vld1q_s8((const int8_t *)(w1 + 2)), vld1q_s8((const int8_t *)(w1 + 18)), x0, x1);
            a2 = block_dot(a2, vld1q_s8((const int8_t *)(w2 + 2)), vld1q_s8((const int8_t *)(w2 + 18)), x0, x1);
            a3 = block_dot(a3, vld1q_s8((const int8_t *)(w3 + 2)), vld1q_s8((const int8_t *)(w3 + 18)), x0, x1);
            running = reduce4(a0, a1, a2, a3);
            isum = vsubq_s32(running, done);
        }
        done = running;
        /* sum += (weight scale * activation scale) * (float)isum, per lane */
        sum = vaddq_f32(sum, vmulq_f32(vmulq_n_f32(d, xs[j]), vcvtq_f32_s32(isum)));
    }
    return sum;
}

static void matmul_quant(const el_matmul_task *t, uint32_t r0, uint32_t r1, int q4)
{
    uint32_t cols = t->w->cols, blocks = cols / EL_QBLOCK, r, k;
    size_t row_bytes = (size_t)blocks * (q4 ? 18u : 34u);
    const uint8_t *base = (const uint8_t *)t->w->data;
    int b0, b, nb;
#if !EL_NEON_IEEE
    unsigned char x_ok[EL_BATCH_CHUNK];
#endif
    for (b0 = 0; b0 < t->batch; b0 += EL_BATCH_CHUNK) {
        nb = t->batch - b0 < EL_BATCH_CHUNK ? t->batch - b0 : EL_BATCH_CHUNK;
#if !EL_NEON_IEEE
        for (b = 0; b < nb; b++)
            x_ok[b] = (unsigned char)floats_clear_of_zero(t->xs + (size_t)(b0 + b) * blocks, (int)blocks,
                                                          EL_MIN_EXP_X);
#endif
        for (r = r0; r < r1; r += EL_GROUP) {
            uint32_t n_rows = r1 - r < EL_GROUP ? r1 - r : EL_GROUP;
            const uint8_t *w[EL_GROUP];
            for (k = 0; k < EL_GROUP; k++) w[k] = base + (size_t)(r + (k < n_rows ? k : n_rows - 1)) * row_bytes;
            for (b = 0; b < nb; b++) {
                float out[EL_GROUP];
                int ok = 1;
                vst1q_f32(out, dot4_quant(w[0], w[1], w[2], w[3], t->xq + (size_t)(b0 + b) * cols,
                                          t->xs + (size_t)(b0 + b) * blocks, blocks, q4));
#if !EL_NEON_IEEE
                ok = x_ok[b];
#endif
                store_group(t, r, n_rows, b0 + b, out, ok);
            }
        }
    }
}

void el_kernel_matmul_q8_0(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_quant(t, r0, r1, 0); }
void el_kernel_matmul_q4_0(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_quant(t, r0, r1, 1); }

/* ------------------------------------------------------------ quantize */

static int32x4_t round_half_away(float32x4_t v)
{
    uint32x4_t nonneg = vcgeq_f32(v, vdupq_n_f32(0.0f));
    return vcvtq_s32_f32(vaddq_f32(v, vbslq_f32(nonneg, vdupq_n_f32(0.5f), vdupq_n_f32(-0.5f))));
}

static int8x8_t narrow8(int32x4_t a, int32x4_t b) { return vmovn_s16(vcombine_s16(vmovn_s32(a), vmovn_s32(b))); }

void el_kernel_quantize_blocks(int8_t *q, float *scales, const float *x, int n_blocks)
{
    const uint32x4_t magnitude = vdupq_n_u32(0x7fffffffu);
    int blk, k;
    for (blk = 0; blk < n_blocks; blk++, x += EL_QBLOCK, q += EL_QBLOCK) {
        float32x4_t v[8];
        uint32x4_t m = vdupq_n_u32(0);
        uint32_t amax_bits;
        float amax, inverse;
        for (k = 0; k < 8; k++) {
            v[k] = vld1q_f32(x + 4 * k);
            m = vmaxq_u32(m, vandq_u32(vreinterpretq_u32_f32(v[k]), magnitude)); /* |x| ordered as integers */
        }
        amax_bits = max_lane(m);
        /* a NaN (the portable loop skips it), or on ARMv7 a tiny maximum: the portable code */
        if (amax_bits > 0x7f800000u || (!EL_NEON_IEEE && amax_bits != 0 && amax_bits < (27u << 23))) {
            el_quantize_int8(q, &scales[blk], x, EL_QBLOCK);
            continue;
        }
        amax = bits_float(amax_bits);
        scales[blk] = amax / 127.0f;
        inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (k = 0; k < 8; k += 4) {
            int8x8_t lo = narrow8(round_half_away(vmulq_n_f32(v[k], inverse)),
                                  round_half_away(vmulq_n_f32(v[k + 1], inverse)));
            int8x8_t hi = narrow8(round_half_away(vmulq_n_f32(v[k + 2], inverse)),
                                  round_half_away(vmulq_n_f32(v[k + 3], inverse)));
            vst1q_s8(q + 4 * k, vcombine_s8(lo, hi));
        }
    }
}

/* ------------------------------------------------------------ dot, axpy */

float el_kernel_dot(const float *a, const float *b, int n)
{
    float32x4_t lo = vdupq_n_f32(0.0f), hi = lo;
    float out[4];
    int i, whole = n - n % 8;
#if !EL_NEON_IEEE
    uint32x4_t ka = vdupq_n_u32(0xffffffffu), kb = ka;
#endif
    for (i = 0; i < whole; i += 8) {
        float32x4_t al = vld1q_f32(a + i), ah = vld1q_f32(a + i + 4), bl = vld1q_f32(b + i), bh = vld1q_f32(b + i + 4);
        lo = vaddq_f32(lo, vmulq_f32(al, bl));
        hi = vaddq_f32(hi, vmulq_f32(ah, bh));
#if !EL_NEON_IEEE
        ka = vminq_u32(vminq_u32(ka, magnitude_key(vreinterpretq_u32_f32(al))), magnitude_key(vreinterpretq_u32_f32(ah)));
        kb = vminq_u32(vminq_u32(kb, magnitude_key(vreinterpretq_u32_f32(bl))), magnitude_key(vreinterpretq_u32_f32(bh)));
#endif
    }
    vst1q_f32(out, combine4(lo, hi, lo, hi, lo, hi, lo, hi));
    for (; i < n; i++) out[0] += a[i] * b[i];
#if !EL_NEON_IEEE
    /* either side may hold the activations: both at least 2^-51 (products >= 2^-102) */
    if (min_lane(ka) < key_floor(76u) || min_lane(kb) < key_floor(76u)) return el_portable_dot(a, b, n);
#endif
    return out[0] == out[0] ? out[0] : el_portable_dot(a, b, n); /* a NaN: see store_group */
}

void el_kernel_axpy(float *y, float a, const float *x, int n)
{
#if EL_NEON_IEEE
    float32x4_t av = vdupq_n_f32(a);
    int i;
    for (i = 0; i + 8 <= n; i += 8) {
        float32x4_t lo = vaddq_f32(vld1q_f32(y + i), vmulq_f32(av, vld1q_f32(x + i)));
        float32x4_t hi = vaddq_f32(vld1q_f32(y + i + 4), vmulq_f32(av, vld1q_f32(x + i + 4)));
        if (vminvq_u32(vandq_u32(vceqq_f32(lo, lo), vceqq_f32(hi, hi))) == 0) {
            el_portable_axpy(y + i, a, x + i, 8); /* a NaN: see store_group */
            continue;
        }
        vst1q_f32(y + i, lo);
        vst1q_f32(y + i + 4, hi);
    }
    el_portable_axpy(y + i, a, x + i, n - i);
#else
    el_portable_axpy(y, a, x, n);
#endif
}

/* ------------------------------------------------------------ exp */

/* el_expf on four lanes, its steps in its order. On ARMv7, *hard gets the lanes whose
 * result would pass through the subnormal range (n <= -126, x in range). */
static float32x4_t expf4(float32x4_t x, uint32x4_t *hard)
{
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    uint32x4_t nonneg = vcgeq_f32(x, vdupq_n_f32(0.0f)), low, high, under;
    float32x4_t t, nf, r, p, s1, s2, result;
    int32x4_t n, n1;
    t = vaddq_f32(vmulq_n_f32(x, 1.44269504f), vbslq_f32(nonneg, vdupq_n_f32(0.5f), vdupq_n_f32(-0.5f)));
    n = vcvtq_s32_f32(t);
    nf = vcvtq_f32_s32(n);
    r = vsubq_f32(vsubq_f32(x, vmulq_n_f32(nf, ln2_hi)), vmulq_n_f32(nf, ln2_lo));
    p = vmulq_n_f32(r, 1.0f / 5040);
    p = vmulq_f32(r, vaddq_f32(vdupq_n_f32(1.0f / 720), p));
    p = vmulq_f32(r, vaddq_f32(vdupq_n_f32(1.0f / 120), p));
    p = vmulq_f32(r, vaddq_f32(vdupq_n_f32(1.0f / 24), p));
    p = vmulq_f32(r, vaddq_f32(vdupq_n_f32(1.0f / 6), p));
    p = vmulq_f32(r, vaddq_f32(vdupq_n_f32(0.5f), p));
    p = vmulq_f32(r, vaddq_f32(vdupq_n_f32(1.0f), p));
    p = vaddq_f32(vdupq_n_f32(1.0f), p);
    /* n < -126: p * 2^(n+100) * 2^-100; n > 127: p * 2^(n-1) * 2; else p * 2^n (* 1, exact) */
    low = vcltq_s32(n, vdupq_n_s32(-126));
    high = vcgtq_s32(n, vdupq_n_s32(127));
    n1 = vbslq_s32(low, vaddq_s32(n, vdupq_n_s32(100)), vbslq_s32(high, vsubq_s32(n, vdupq_n_s32(1)), n));
    s1 = vreinterpretq_f32_u32(vshlq_n_u32(vreinterpretq_u32_s32(vaddq_s32(n1, vdupq_n_s32(127))), 23));
    s2 = vbslq_f32(low, vdupq_n_f32(0x1p-100f), vbslq_f32(high, vdupq_n_f32(2.0f), vdupq_n_f32(1.0f)));
    result = vmulq_f32(vmulq_f32(p, s1), s2);
    result = vbslq_f32(vcgtq_f32(x, vdupq_n_f32(88.72283f)), vreinterpretq_f32_u32(vdupq_n_u32(0x7f800000u)), result);
    under = vcltq_f32(x, vdupq_n_f32(-103.97208f));
    result = vbslq_f32(under, vdupq_n_f32(0.0f), result);
    result = vbslq_f32(vceqq_f32(x, x), result, x); /* NaN: x itself */
#if EL_NEON_IEEE
    (void)hard;
#else
    *hard = vorrq_u32(*hard, vbicq_u32(vcleq_s32(n, vdupq_n_s32(-126)), under));
#endif
    return result;
}

void el_kernel_swiglu(float *gate, const float *up, int n)
{
    const uint32x4_t sign = vdupq_n_u32(0x80000000u);
    int i, k;
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t g = vld1q_f32(gate + i);
        uint32x4_t hard = vdupq_n_u32(0);
        float32x4_t e = expf4(vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(g), sign)), &hard);
#if EL_NEON_IEEE
        float32x4_t out = vmulq_f32(vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0f), e)), vld1q_f32(up + i));
        (void)k;
        if (vminvq_u32(vceqq_f32(out, out)) == 0) el_portable_swiglu(gate + i, up + i, 4); /* a NaN: see store_group */
        else vst1q_f32(gate + i, out);
#else
        float ev[4], out[4];
        int nan = 0;
        vst1q_f32(ev, e);
        if (any_set(hard)) {
            el_portable_swiglu(gate + i, up + i, 4);
            continue;
        }
        for (k = 0; k < 4; k++) {
            out[k] = gate[i + k] / (1.0f + ev[k]) * up[i + k];
            nan |= out[k] != out[k];
        }
        if (nan) el_portable_swiglu(gate + i, up + i, 4); /* a NaN: see store_group */
        else for (k = 0; k < 4; k++) gate[i + k] = out[k];
#endif
    }
    el_portable_swiglu(gate + i, up + i, n - i);
}

void el_kernel_exp_shifted(float *w, const float *x, float shift, int n)
{
    const float32x4_t s = vdupq_n_f32(shift);
    int i, k;
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t v = vsubq_f32(vld1q_f32(x + i), s);
        uint32x4_t hard = vdupq_n_u32(0);
        float32x4_t e = expf4(v, &hard);
#if !EL_NEON_IEEE
        /* a NaN input: NEON's default NaN is not VFP's propagated one */
        hard = vorrq_u32(hard, vmvnq_u32(vceqq_f32(v, v)));
        if (any_set(hard)) {
            for (k = 0; k < 4; k++) w[i + k] = el_expf(x[i + k] - shift);
            continue;
        }
#endif
        (void)k;
        vst1q_f32(w + i, e);
    }
    el_portable_exp_shifted(w + i, x + i, shift, n - i);
}

#else
typedef int el_kernels_neon_unused;
#endif
