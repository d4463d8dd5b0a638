/* el_kernels_neon.c: the kernels with ARM NEON (aarch64, with or without the dot-product
 * extension, and 32-bit ARMv7 with NEON), bit for bit the portable ones.
 *
 * How each keeps the portable order:
 * - F32/F16 dot: two float32x4 accumulators are the eight lanes (0-3 and 4-7; on ARMv7,
 *   which loads with vld2, the even and the odd ones); multiply, then add (never fused:
 *   no vfmaq, no vmlaq_f32); the lanes are combined ((0+1)+(2+3))+((4+5)+(6+7)) by
 *   pairwise adds; the tail is added one element at a time. Eight rows (ARMv7: four)
 *   run side by side and share each load of x.
 * - Q8_0/Q4_0: a block's 32 int8 products are summed exactly in integers (vdotq_s32
 *   with the dot-product extension; else vmull_s8 + vmlal_s8, a pair of products fits
 *   int16, then vpaddlq/vpadalq_s16); four rows' block sums are reduced into one
 *   register, lane j holding row j, and sum += (weight scale * activation scale) *
 *   block_sum runs per lane in block order. Eight rows a group; their fp16 scales are
 *   converted once for the whole batch.
 * - quantize: max |x| as the integer maximum of the magnitudes' bits, the scale and its
 *   inverse by scalar division, v + copysign(0.5, v) truncated (the same integer as the
 *   portable rounding, -0 included).
 * - exp: el_expf's steps as vector operations, its branches as selects.
 * Rows are taken in groups; the group's weights stay in cache while every activation row
 * of the batch passes over them, so a prompt reads each weight once.
 *
 * NaNs: which NaN comes out of two NaN operands depends on their order, and compilers
 * order commutative operands as they like (in the portable code too), so a result that
 * is a NaN is recomputed by the portable code.
 *
 * ARMv7 (32-bit) NEON is not IEEE: it flushes subnormal inputs and results to zero and
 * returns the default NaN. The portable code runs on VFP, which is IEEE. So on ARMv7 a
 * float kernel takes the vector path only where no subnormal can occur and falls back to
 * the portable code (for that row, activation row or four values) otherwise:
 * - matmul F32/F16: every nonzero weight and activation is checked to be at least 2^-43
 *   and 2^-60 in magnitude (F16 weights are at least 2^-24, activations then need
 *   2^-79). Then every nonzero product is at least 2^-103, a multiple of 2^-126, and so
 *   is every partial sum: each is zero or normal, and flushing never happens. Weights
 *   are checked once per group for the whole batch, on their top bytes first.
 * - dot: every product must be at least 2^-102 (which excludes flushed inputs too).
 * - Q8_0/Q4_0: activation scales are checked the same way (weight scales from fp16 are
 *   at least 2^-24, block sums are integers).
 * - quantize: blocks with 0 < max|x| < 2^-100 (or NaN or Inf) go to el_quantize_int8; otherwise
 *   a flushed x * (127 / max|x|) is below 2^-19 either way and rounds to 0 as IEEE does.
 * - exp: four values with a lane whose result is below 2^-125 go to el_expf (the vector
 *   steps before the final scaling never meet a subnormal that could change a bit);
 *   divisions (no vector divide) and swiglu's last steps run on VFP.
 * - axpy runs on VFP (the portable code): checking y, x and a*x costs what it saves.
 * - float comparisons are done on the bits as integers: GCC compiles NEON float
 *   comparisons lane by lane on VFP there.
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

/* Rows per group (float, quantized): aarch64 has 32 vector registers, ARMv7 16, too few
 * for eight rows of float lanes. A group never straddles two workers' row tiles
 * (EL_ROW_TILE is 16). */
#define EL_GROUP_Q 8
#if defined(__aarch64__)
#define EL_GROUP_F 8
#else
#define EL_GROUP_F 4
#endif
#define EL_BATCH_CHUNK 32 /* activation rows whose checks are kept at once (ARMv7) */
#define EL_SCALE_CHUNK 64 /* blocks whose weight scales a group converts at once */

/* Smallest biased exponents that keep ARMv7 products away from subnormals (see above). */
#define EL_MIN_EXP_X 67u   /* activations: 2^-60 */
#define EL_MIN_EXP_W 84u   /* F32 weights: 2^-43 */
#define EL_MIN_EXP_X16 48u /* activations against F16 weights (>= 2^-24): 2^-79 */

/* The group loops below are written over arrays of registers indexed by row; fully
 * unrolled, the arrays live in registers. always_inline gives each caller its own copy,
 * specialized for its constant arguments (weight type). */
#if defined(__GNUC__) || defined(__clang__)
#define EL_INLINE static inline __attribute__((always_inline))
#define EL_NOINLINE static __attribute__((noinline))
#else
#define EL_INLINE static inline
#define EL_NOINLINE static
#endif
#if defined(__clang__)
#define EL_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define EL_UNROLL _Pragma("GCC unroll 8")
#else
#define EL_UNROLL
#endif

/* ------------------------------------------------------------ helpers */

static uint16_t read_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t max_lane(uint32x4_t m)
{
#if defined(__aarch64__)
    return vmaxvq_u32(m);
#else
    uint32x2_t t = vpmax_u32(vget_low_u32(m), vget_high_u32(m));
    return vget_lane_u32(vpmax_u32(t, t), 0);
#endif
}

/* Lanes holding a NaN. (On ARMv7 GCC does float vector comparisons lane by lane on VFP,
 * NEON's not being IEEE; the integer forms below stay vector.) */
EL_INLINE uint32x4_t nan_lanes(float32x4_t v)
{
#if defined(__aarch64__)
    return vmvnq_u32(vceqq_f32(v, v));
#else
    return vcgtq_u32(vandq_u32(vreinterpretq_u32_f32(v), vdupq_n_u32(0x7fffffffu)), vdupq_n_u32(0x7f800000u));
#endif
}

/* 0.5 with v's sign: the portable (v >= 0 ? 0.5f : -0.5f) but for v = -0 (and NaN),
 * where both roundings give 0: (int)(-0 - 0.5f) = (int)(-0 + 0.5f). */
EL_INLINE float32x4_t half_with_sign(float32x4_t v)
{
    return vbslq_f32(vdupq_n_u32(0x80000000u), v, vdupq_n_f32(0.5f));
}

#if !EL_NEON_IEEE
/* ---- ARMv7 only: the checks that keep NEON's flush-to-zero out of the results */

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
static uint32x4_t magnitude_key(float32x4_t v)
{
    return vmlaq_n_u32(vdupq_n_u32(0xffffffffu), vreinterpretq_u32_f32(v), 2u);
}

static uint32_t key_floor(uint32_t min_exp) { return (min_exp << 24) - 1u; }

/* Every x[i] zero or at least 2^(min_exp - 127) in magnitude. */
static int floats_clear_of_zero(const float *x, int n, uint32_t min_exp)
{
    uint32x4_t m = vdupq_n_u32(0xffffffffu);
    int i;
    for (i = 0; i + 4 <= n; i += 4) m = vminq_u32(m, magnitude_key(vld1q_f32(x + i)));
    for (; i < n; i++) m = vminq_u32(m, vdupq_n_u32(2u * el_float_bits(x[i]) - 1u));
    return min_lane(m) >= key_floor(min_exp);
}
#endif

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

/* ------------------------------------------------------------ combining lanes */

#if defined(__aarch64__)
/* ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)) of four rows (lo: lanes 0-3, hi: 4-7); lane j of
 * the result is row j's. */
EL_INLINE float32x4_t combine4(const float32x4_t *lo, const float32x4_t *hi)
{
    float32x4_t p0 = vpaddq_f32(lo[0], hi[0]), p1 = vpaddq_f32(lo[1], hi[1]); /* l0+l1, l2+l3, l4+l5, l6+l7 */
    float32x4_t p2 = vpaddq_f32(lo[2], hi[2]), p3 = vpaddq_f32(lo[3], hi[3]);
    return vpaddq_f32(vpaddq_f32(p0, p1), vpaddq_f32(p2, p3));
}
#else
/* The same from two rows whose lanes are split even/odd (ev: l0, l2, l4, l6; od: l1, l3,
 * l5, l7, as vld2 loads them): ev + od is (l0+l1, l2+l3, l4+l5, l6+l7). */
EL_INLINE float32x2_t combine2_eo(float32x4_t ev0, float32x4_t od0, float32x4_t ev1, float32x4_t od1)
{
    float32x4_t p0 = vaddq_f32(ev0, od0), p1 = vaddq_f32(ev1, od1);
    return vpadd_f32(vpadd_f32(vget_low_f32(p0), vget_high_f32(p0)), vpadd_f32(vget_low_f32(p1), vget_high_f32(p1)));
}
#endif

/* ------------------------------------------------------------ matmul: storing, falling back */

/* y[b][r] for one row and activation row, by the portable code. */
EL_NOINLINE void portable_one(const el_matmul_task *t, uint32_t r, int b)
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

/* Stores a group's results (n_rows of its `group`). A NaN is recomputed by the portable
 * code (see the top of the file); on ARMv7 so is every result whose checks failed
 * (ok == 0). */
EL_INLINE void store_group(const el_matmul_task *t, uint32_t r, uint32_t n_rows, int b, const float *out, int ok,
                           uint32_t group)
{
    float *y = t->y + (size_t)b * t->w->rows + r;
    uint32_t k;
    if (ok && n_rows == group) {
        uint32x4_t nan = vdupq_n_u32(0);
        EL_UNROLL for (k = 0; k < group; k += 4) nan = vorrq_u32(nan, nan_lanes(vld1q_f32(out + k)));
        if (max_lane(nan) == 0) {
            EL_UNROLL for (k = 0; k < group; k += 4) vst1q_f32(y + k, vld1q_f32(out + k));
            return;
        }
    }
    for (k = 0; k < n_rows; k++) {
        if (ok && out[k] == out[k]) y[k] = out[k];
        else portable_one(t, r + k, b);
    }
}

/* The group's row pointers: rows r.. (a short last group repeats its last row). */
EL_INLINE uint32_t group_rows(const el_matmul_task *t, uint32_t r, uint32_t r1, size_t row_bytes, const uint8_t **w,
                              uint32_t group)
{
    uint32_t k, n_rows = r1 - r < group ? r1 - r : group;
    EL_UNROLL for (k = 0; k < group; k++)
        w[k] = (const uint8_t *)t->w->data + (size_t)(r + (k < n_rows ? k : n_rows - 1)) * row_bytes;
    return n_rows;
}

/* ------------------------------------------------------------ F32 and F16 */

#define G EL_GROUP_F

static float weight_at(const uint8_t *row, int i, int f16)
{
    return f16 ? el_fp16_to_f32(read_u16(row + 2 * i)) : ((const float *)(const void *)row)[i];
}

/* out[k] = row k . x over n columns for the group's rows, the portable order. */
EL_INLINE void dot_group_float(const uint8_t *const *w, const float *x, int n, float *out, int f16)
{
    const uint8_t *p[G];
    const float *xp = x;
    int i = 0, k, whole = n - n % 8;
    EL_UNROLL for (k = 0; k < G; k++) p[k] = w[k];
#if defined(__aarch64__)
    {
        float32x4_t lo[G], hi[G];
        EL_UNROLL for (k = 0; k < G; k++) lo[k] = hi[k] = vdupq_n_f32(0.0f);
        for (; i + 16 <= whole; i += 16, xp += 16) {
            float32x4x4_t xv = vld1q_f32_x4(xp);
            EL_UNROLL for (k = 0; k < G; k++) {
                float32x4x4_t v;
                if (f16) {
                    uint8x16x2_t h = vld1q_u8_x2(p[k]);
                    v.val[0] = vcvt_f32_f16(vreinterpret_f16_u8(vget_low_u8(h.val[0])));
                    v.val[1] = vcvt_high_f32_f16(vreinterpretq_f16_u8(h.val[0]));
                    v.val[2] = vcvt_f32_f16(vreinterpret_f16_u8(vget_low_u8(h.val[1])));
                    v.val[3] = vcvt_high_f32_f16(vreinterpretq_f16_u8(h.val[1]));
                    p[k] += 32;
                } else {
                    v = vld1q_f32_x4((const float *)(const void *)p[k]);
                    p[k] += 64;
                }
                lo[k] = vaddq_f32(lo[k], vmulq_f32(v.val[0], xv.val[0]));
                hi[k] = vaddq_f32(hi[k], vmulq_f32(v.val[1], xv.val[1]));
                lo[k] = vaddq_f32(lo[k], vmulq_f32(v.val[2], xv.val[2]));
                hi[k] = vaddq_f32(hi[k], vmulq_f32(v.val[3], xv.val[3]));
            }
        }
        if (i < whole) { /* eight more */
            float32x4x2_t xv = vld1q_f32_x2(xp);
            EL_UNROLL for (k = 0; k < G; k++) {
                float32x4x2_t v;
                if (f16) {
                    uint8x16_t h = vld1q_u8(p[k]);
                    v.val[0] = vcvt_f32_f16(vreinterpret_f16_u8(vget_low_u8(h)));
                    v.val[1] = vcvt_high_f32_f16(vreinterpretq_f16_u8(h));
                } else {
                    v = vld1q_f32_x2((const float *)(const void *)p[k]);
                }
                lo[k] = vaddq_f32(lo[k], vmulq_f32(v.val[0], xv.val[0]));
                hi[k] = vaddq_f32(hi[k], vmulq_f32(v.val[1], xv.val[1]));
            }
            i += 8;
        }
        EL_UNROLL for (k = 0; k < G; k += 4) vst1q_f32(out + k, combine4(lo + k, hi + k));
    }
#else
    {
        float32x4_t ev[G], od[G];
        EL_UNROLL for (k = 0; k < G; k++) ev[k] = od[k] = vdupq_n_f32(0.0f);
        for (; i < whole; i += 8, xp += 8) {
            float32x4x2_t xv = vld2q_f32(xp); /* even and odd elements */
            EL_UNROLL for (k = 0; k < G; k++) {
                float32x4x2_t v;
                if (f16) {
                    uint16x4x2_t h = vld2_u16((const uint16_t *)(const void *)p[k]);
                    v.val[0] = fp16x4_to_f32(h.val[0]);
                    v.val[1] = fp16x4_to_f32(h.val[1]);
                    p[k] += 16;
                } else {
                    v = vld2q_f32((const float *)(const void *)p[k]);
                    p[k] += 32;
                }
                ev[k] = vaddq_f32(ev[k], vmulq_f32(v.val[0], xv.val[0]));
                od[k] = vaddq_f32(od[k], vmulq_f32(v.val[1], xv.val[1]));
            }
        }
        EL_UNROLL for (k = 0; k < G; k += 2) vst1_f32(out + k, combine2_eo(ev[k], od[k], ev[k + 1], od[k + 1]));
    }
#endif
    for (; i < n; i++) {
        float xi = x[i];
        EL_UNROLL for (k = 0; k < G; k++) out[k] += weight_at(w[k], i, f16) * xi;
    }
}

#if !EL_NEON_IEEE
/* ARMv7: every weight of the group's F32 rows zero or at least 2^-43 in magnitude (the
 * weights' side of the products' bound), checked once for the whole batch. First on the
 * top bytes alone (sign and exponent but its last bit: 16 weights a vld4), which passes
 * a row whose weights all have exponents of at least 84; a row with a zero (or a small
 * weight) is then checked exactly. The tail runs on VFP. */
static int f32_rows_clear_of_zero(const uint8_t *const *w, int n)
{
    int k, whole = n - n % 8;
    for (k = 0; k < G; k++) {
        const uint8_t *p = w[k], *end = p + 4 * (size_t)whole;
        uint8x16_t m = vdupq_n_u8(0xff);
        uint8x8_t t;
        for (; p + 64 <= end; p += 64) m = vminq_u8(m, vshlq_n_u8(vld4q_u8(p).val[3], 1));
        t = vpmin_u8(vget_low_u8(m), vget_high_u8(m));
        t = vpmin_u8(t, t);
        t = vpmin_u8(t, t);
        t = vpmin_u8(t, t);
        if ((p < end && !floats_clear_of_zero((const float *)(const void *)p, (int)(end - p) / 4, EL_MIN_EXP_W)) ||
            (vget_lane_u8(t, 0) < EL_MIN_EXP_W &&
             !floats_clear_of_zero((const float *)(const void *)w[k], whole, EL_MIN_EXP_W)))
            return 0;
    }
    return 1;
}
#endif

EL_INLINE void matmul_float(const el_matmul_task *t, uint32_t r0, uint32_t r1, int f16)
{
    uint32_t cols = t->w->cols, r;
    size_t row_bytes = (size_t)cols * (f16 ? 2u : 4u);
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
        for (r = r0; r < r1; r += G) {
            const uint8_t *w[G];
            uint32_t n_rows = group_rows(t, r, r1, row_bytes, w, G);
            int w_ok = 1;
#if !EL_NEON_IEEE
            if (!f16) w_ok = f32_rows_clear_of_zero(w, (int)cols);
#endif
            for (b = 0; b < nb; b++) {
                float out[G];
                int ok = w_ok;
#if !EL_NEON_IEEE
                ok = ok && x_ok[b];
                if (!ok) { /* the portable code for these rows */
                    store_group(t, r, n_rows, b0 + b, out, 0, G);
                    continue;
                }
#endif
                dot_group_float(w, t->x + (size_t)(b0 + b) * cols, (int)cols, out, f16);
                store_group(t, r, n_rows, b0 + b, out, ok, G);
            }
        }
    }
}

#undef G

void el_kernel_matmul_f32(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_float(t, r0, r1, 0); }
void el_kernel_matmul_f16(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_float(t, r0, r1, 1); }

/* ------------------------------------------------------------ Q8_0 and Q4_0 */

#define G EL_GROUP_Q

/* Row sums of four int32x4: lane j of the result is the sum of a[j]'s lanes (wrapping). */
EL_INLINE int32x4_t reduce4(const int32x4_t *a)
{
#if defined(__aarch64__)
    return vpaddq_s32(vpaddq_s32(a[0], a[1]), vpaddq_s32(a[2], a[3]));
#else
    int32x2_t s0 = vpadd_s32(vget_low_s32(a[0]), vget_high_s32(a[0]));
    int32x2_t s1 = vpadd_s32(vget_low_s32(a[1]), vget_high_s32(a[1]));
    int32x2_t s2 = vpadd_s32(vget_low_s32(a[2]), vget_high_s32(a[2]));
    int32x2_t s3 = vpadd_s32(vget_low_s32(a[3]), vget_high_s32(a[3]));
    return vcombine_s32(vpadd_s32(s0, s1), vpadd_s32(s2, s3));
#endif
}

/* A block's products summed into four int32 lanes, exactly. With the dot-product
 * extension they add to acc, a running sum over the blocks (wrapping int32, exact
 * modulo 2^32: a block's sums are the running sums minus those before it, and each fits
 * int32); without, each block starts from zero. */
#if EL_NEON_DOTPROD
#define EL_RUNNING 1
EL_INLINE int32x4_t block_dot(int32x4_t acc, int8x16_t w0, int8x16_t w1, int8x16_t x0, int8x16_t x1)
{
    return vdotq_s32(vdotq_s32(acc, w0, x0), w1, x1);
}

/* The same for a Q4_0 block's nibbles n (0..15; lo: elements 0-15, hi: 16-31). */
EL_INLINE int32x4_t nibble_dot(int32x4_t acc, int8x16_t lo, int8x16_t hi, int8x16_t x0, int8x16_t x1)
{
    return block_dot(acc, lo, hi, x0, x1);
}
#else
#define EL_RUNNING 0
/* Each int16 lane holds two products: |w| <= 128 and |x| <= 127 (the activations'
 * quantizer), so at most 32512. */
EL_INLINE int32x4_t block_dot(int32x4_t acc, int8x16_t w0, int8x16_t w1, int8x16_t x0, int8x16_t x1)
{
#if defined(__aarch64__)
    int16x8_t p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), w0, x0);
    int16x8_t p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), w1, x1);
#else
    int16x8_t p0 = vmlal_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), vget_high_s8(w0), vget_high_s8(x0));
    int16x8_t p1 = vmlal_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), vget_high_s8(w1), vget_high_s8(x1));
#endif
    (void)acc;
    return vpadalq_s16(vpaddlq_s16(p0), p1);
}

/* Q4_0's nibbles n (0..15) and x: four products per int16 lane, at most 4 * 15 * 127. */
EL_INLINE int32x4_t nibble_dot(int32x4_t acc, int8x16_t lo, int8x16_t hi, int8x16_t x0, int8x16_t x1)
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
    (void)acc;
    return vpaddlq_s16(p);
}
#endif

/* 8 * (the sum of a block's 32 activations), in every lane. */
EL_INLINE int32x4_t block_sum8(int8x16_t x0, int8x16_t x1)
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

#if !defined(__aarch64__)
static int8x16x2_t vld1q_s8_pair(const int8_t *p)
{
    int8x16x2_t v;
    v.val[0] = vld1q_s8(p);
    v.val[1] = vld1q_s8(p + 16);
    return v;
}
#endif

/* d[j * G + k] = the fp16 scale of block j of row k (rows at w[k]), for n_blocks blocks. */
static void group_scales(const uint8_t *const *w, size_t step, uint32_t n_blocks, float *d)
{
    const uint8_t *p[G];
    uint32_t j;
    int g, k;
#if !EL_NEON_IEEE
    /* ARMv7: normal halves only ((exponent + 112, mantissa) in place, the sign), the
     * smallest and largest exponent kept; a zero, subnormal, inf or NaN scale (rare) and
     * the chunk is converted again in full */
    uint32x4_t lowest = vdupq_n_u32(0xffffffffu), highest = vdupq_n_u32(0);
    float *d0 = d;
#endif
    EL_UNROLL for (k = 0; k < G; k++) p[k] = w[k];
    for (j = 0; j < n_blocks; j++, d += G) {
        EL_UNROLL for (g = 0; g < G; g += 4) {
            /* the scales are 2-byte aligned: blocks of 34 or 18 bytes, aligned tensor data */
            uint16x4_t h = vld1_dup_u16((const uint16_t *)(const void *)p[g]);
            h = vld1_lane_u16((const uint16_t *)(const void *)p[g + 1], h, 1);
            h = vld1_lane_u16((const uint16_t *)(const void *)p[g + 2], h, 2);
            h = vld1_lane_u16((const uint16_t *)(const void *)p[g + 3], h, 3);
#if EL_NEON_IEEE
            vst1q_f32(d + g, fp16x4_to_f32(h));
#else
            {
                uint32x4_t em = vandq_u32(vshll_n_u16(h, 13), vdupq_n_u32(0x0fffe000u));
                lowest = vminq_u32(lowest, em);
                highest = vmaxq_u32(highest, em);
                vst1q_f32(d + g, vreinterpretq_f32_u32(vbslq_u32(vdupq_n_u32(0x80000000u), vshll_n_u16(h, 16),
                                                                 vaddq_u32(em, vdupq_n_u32(112u << 23)))));
            }
#endif
        }
        EL_UNROLL for (k = 0; k < G; k++) p[k] += step;
    }
#if !EL_NEON_IEEE
    if (min_lane(lowest) < (1u << 23) || max_lane(highest) >= (31u << 23)) { /* exponent 0 or 31 */
        EL_UNROLL for (k = 0; k < G; k++) p[k] = w[k];
        for (d = d0, j = 0; j < n_blocks; j++, d += G) {
            EL_UNROLL for (g = 0; g < G; g += 4) {
                uint16x4_t h = vdup_n_u16(read_u16(p[g]));
                h = vset_lane_u16(read_u16(p[g + 1]), h, 1);
                h = vset_lane_u16(read_u16(p[g + 2]), h, 2);
                h = vset_lane_u16(read_u16(p[g + 3]), h, 3);
                vst1q_f32(d + g, fp16x4_to_f32(h));
            }
            EL_UNROLL for (k = 0; k < G; k++) p[k] += step;
        }
    }
#endif
}

/* out[k] += row k's block terms for the group's rows (blocks from w[k], scales d) of a
 * Q8_0 (q4 = 0) or Q4_0 (q4 = 1) matrix and one activation row, n_blocks blocks, the
 * portable order: per block sum += (weight scale * activation scale) * (float)isum. */
EL_INLINE void dot_group_quant(const uint8_t *const *w, const float *d, const int8_t *xq, const float *xs,
                               uint32_t n_blocks, float *out, int q4)
{
    const size_t step = q4 ? 18u : 34u;
    const uint8_t *p[G];
    float32x4_t sum[G / 4];
    int32x4_t acc[G];
#if EL_RUNNING
    int32x4_t done[G / 4];
#endif
    uint32_t j;
    int k, g;
    EL_UNROLL for (k = 0; k < G; k++) p[k] = w[k] + 2, acc[k] = vdupq_n_s32(0);
    EL_UNROLL for (g = 0; g < G / 4; g++) {
        sum[g] = vld1q_f32(out + 4 * g);
#if EL_RUNNING
        done[g] = vdupq_n_s32(0);
#endif
    }
    for (j = 0; j < n_blocks; j++, xq += EL_QBLOCK, d += G) {
#if defined(__aarch64__)
        int8x16_t x0 = vld1q_s8(xq), x1 = vld1q_s8(xq + 16);
        float32x4_t s = vdupq_n_f32(xs[j]);
#else
        /* Q8_0 on ARMv7 takes a block's bytes even/odd (one vld2 for 32 bytes), the same
         * for weights and activations: the same products, summed in another order, exactly */
        int8x16x2_t xv = q4 ? vld1q_s8_pair(xq) : vld2q_s8(xq);
        int8x16_t x0 = xv.val[0], x1 = xv.val[1];
        float32x4_t s = vld1q_dup_f32(xs + j);
#endif
        EL_UNROLL for (g = 0; g < G / 4; g++) {
            int32x4_t isum;
            if (q4) {
                const uint8x16_t low = vdupq_n_u8(0x0f);
                EL_UNROLL for (k = 4 * g; k < 4 * g + 4; k++) {
                    uint8x16_t v = vld1q_u8(p[k]);
                    p[k] += step;
                    acc[k] = nibble_dot(acc[k], vreinterpretq_s8_u8(vandq_u8(v, low)),
                                        vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), x0, x1);
                }
            } else {
                EL_UNROLL for (k = 4 * g; k < 4 * g + 4; k++) {
#if defined(__aarch64__)
                    int8x16x2_t v = vld1q_s8_x2((const int8_t *)p[k]);
#else
                    int8x16x2_t v = vld2q_s8((const int8_t *)p[k]);
#endif
                    p[k] += step;
                    acc[k] = block_dot(acc[k], v.val[0], v.val[1], x0, x1);
                }
            }
            isum = reduce4(acc + 4 * g);
#if EL_RUNNING
            {
                int32x4_t running = isum;
                isum = vsubq_s32(running, done[g]);
                done[g] = running;
            }
#endif
            /* sum of (n - 8) * x = sum of n * x - 8 * sum of x */
            if (q4) isum = vsubq_s32(isum, block_sum8(x0, x1));
            /* sum += (weight scale * activation scale) * (float)isum, per lane */
            sum[g] = vaddq_f32(sum[g], vmulq_f32(vmulq_f32(vld1q_f32(d + 4 * g), s), vcvtq_f32_s32(isum)));
        }
    }
    EL_UNROLL for (g = 0; g < G / 4; g++) vst1q_f32(out + 4 * g, sum[g]);
}

EL_INLINE void matmul_quant(const el_matmul_task *t, uint32_t r0, uint32_t r1, int q4)
{
    const size_t step = q4 ? 18u : 34u;
    uint32_t cols = t->w->cols, blocks = cols / EL_QBLOCK, r, c0, nc;
    size_t row_bytes = (size_t)blocks * step;
    int b0, b, nb, k;
    float d[EL_SCALE_CHUNK * G];
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
        for (r = r0; r < r1; r += G) {
            const uint8_t *w[G];
            uint32_t n_rows = group_rows(t, r, r1, row_bytes, w, G);
            /* the scales converted once for the whole batch (up to EL_SCALE_CHUNK blocks;
             * longer rows convert them chunk by chunk for each activation row) */
            if (blocks <= EL_SCALE_CHUNK) group_scales(w, step, blocks, d);
            for (b = 0; b < nb; b++) {
                const int8_t *xq = t->xq + (size_t)(b0 + b) * cols;
                const float *xs = t->xs + (size_t)(b0 + b) * blocks;
                float out[G];
                int ok = 1;
#if !EL_NEON_IEEE
                ok = x_ok[b];
                if (!ok) {
                    store_group(t, r, n_rows, b0 + b, out, 0, G);
                    continue;
                }
#endif
                EL_UNROLL for (k = 0; k < G; k++) out[k] = 0.0f;
                if (blocks <= EL_SCALE_CHUNK) {
                    dot_group_quant(w, d, xq, xs, blocks, out, q4);
                } else {
                    for (c0 = 0; c0 < blocks; c0 += nc) {
                        const uint8_t *wc[G];
                        nc = blocks - c0 < EL_SCALE_CHUNK ? blocks - c0 : EL_SCALE_CHUNK;
                        EL_UNROLL for (k = 0; k < G; k++) wc[k] = w[k] + (size_t)c0 * step;
                        group_scales(wc, step, nc, d);
                        dot_group_quant(wc, d, xq + (size_t)c0 * EL_QBLOCK, xs + c0, nc, out, q4);
                    }
                }
                store_group(t, r, n_rows, b0 + b, out, ok, G);
            }
        }
    }
}

#undef G

void el_kernel_matmul_q8_0(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_quant(t, r0, r1, 0); }
void el_kernel_matmul_q4_0(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_quant(t, r0, r1, 1); }

/* ------------------------------------------------------------ quantize */

static int32x4_t round_half_away(float32x4_t v)
{
    return vcvtq_s32_f32(vaddq_f32(v, half_with_sign(v)));
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
        /* NaN or Inf (bits from +Inf's up: the portable code makes zeros under a NaN
         * scale), or on ARMv7 a tiny maximum: the portable code */
        if (amax_bits >= 0x7f800000u || (!EL_NEON_IEEE && amax_bits != 0 && amax_bits < (27u << 23))) {
            el_quantize_int8(q, &scales[blk], x, EL_QBLOCK);
            continue;
        }
        amax = el_bits_float(amax_bits);
        scales[blk] = amax / 127.0f;
        inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
        if (inverse > EL_QUANT_INVERSE_MAX) { /* a block of near-zero values: the portable rule */
            el_quantize_int8(q, &scales[blk], x, EL_QBLOCK);
            continue;
        }
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
    float sum;
    int i, whole = n - n % 8;
#if defined(__aarch64__)
    float32x4_t lo = vdupq_n_f32(0.0f), hi = lo, p;
    for (i = 0; i < whole; i += 8) {
        lo = vaddq_f32(lo, vmulq_f32(vld1q_f32(a + i), vld1q_f32(b + i)));
        hi = vaddq_f32(hi, vmulq_f32(vld1q_f32(a + i + 4), vld1q_f32(b + i + 4)));
    }
    p = vpaddq_f32(lo, hi); /* l0+l1, l2+l3, l4+l5, l6+l7 */
    sum = vpadds_f32(vget_low_f32(vpaddq_f32(p, p)));
#else
    float32x4_t ev = vdupq_n_f32(0.0f), od = ev, p;
    float32x2_t q;
    uint32x4_t m = vdupq_n_u32(0xffffffffu);
    for (i = 0; i < whole; i += 8) {
        float32x4x2_t av = vld2q_f32(a + i), bv = vld2q_f32(b + i); /* even and odd elements */
        float32x4_t p0 = vmulq_f32(av.val[0], bv.val[0]), p1 = vmulq_f32(av.val[1], bv.val[1]);
        ev = vaddq_f32(ev, p0);
        od = vaddq_f32(od, p1);
        m = vminq_u32(m, vminq_u32(vshlq_n_u32(vreinterpretq_u32_f32(p0), 1), vshlq_n_u32(vreinterpretq_u32_f32(p1), 1)));
    }
    /* ARMv7: every product at least 2^-102 in magnitude (so no input was zero or
     * subnormal, and each partial sum is a multiple of 2^-125: no flushing), else the
     * portable code */
    if (whole > 0 && min_lane(m) < (25u << 24)) return el_portable_dot(a, b, n);
    p = vaddq_f32(ev, od); /* l0+l1, l2+l3, l4+l5, l6+l7 */
    q = vpadd_f32(vget_low_f32(p), vget_high_f32(p));
    sum = vget_lane_f32(q, 0) + vget_lane_f32(q, 1);
#endif
    for (; i < n; i++) sum += a[i] * b[i];
    return sum == sum ? sum : el_portable_dot(a, b, n); /* a NaN: see the top of the file */
}

void el_kernel_axpy(float *y, float a, const float *x, int n)
{
#if EL_NEON_IEEE
    float32x4_t av = vdupq_n_f32(a);
    int i;
    for (i = 0; i + 8 <= n; i += 8) {
        float32x4_t lo = vaddq_f32(vld1q_f32(y + i), vmulq_f32(av, vld1q_f32(x + i)));
        float32x4_t hi = vaddq_f32(vld1q_f32(y + i + 4), vmulq_f32(av, vld1q_f32(x + i + 4)));
        if (max_lane(vorrq_u32(nan_lanes(lo), nan_lanes(hi))) != 0) break; /* a NaN: see the top of the file */
        vst1q_f32(y + i, lo);
        vst1q_f32(y + i + 4, hi);
    }
    /* the rest (and the eight with a NaN) by the portable code */
    if (i < n) el_portable_axpy(y + i, a, x + i, n - i);
#else
    el_portable_axpy(y, a, x, n);
#endif
}

/* ------------------------------------------------------------ exp */

/* el_expf on four lanes, its steps in its order. On ARMv7, *hard gets the lanes whose
 * result would pass through the subnormal range (n <= -126, x in range). */
EL_INLINE float32x4_t expf4(float32x4_t x, uint32x4_t *hard)
{
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    uint32x4_t low, high, under, bits = vreinterpretq_u32_f32(x);
    float32x4_t t, nf, r, p, s1, s2, result;
    int32x4_t n, n1;
    t = vaddq_f32(vmulq_n_f32(x, 1.44269504f), half_with_sign(x));
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
    /* x > 88.72283f: inf; x < -103.97208f: 0, compared as integers (floats of one sign
     * order as their bits; NaN lanes, caught by either, are replaced last) */
    result = vbslq_f32(vcgtq_s32(vreinterpretq_s32_u32(bits), vdupq_n_s32((int32_t)el_float_bits(88.72283f))),
                       vreinterpretq_f32_u32(vdupq_n_u32(0x7f800000u)), result);
    under = vcgtq_u32(bits, vdupq_n_u32(el_float_bits(-103.97208f)));
    result = vbslq_f32(under, vdupq_n_f32(0.0f), result);
    result = vbslq_f32(nan_lanes(x), x, result); /* NaN: x itself */
#if EL_NEON_IEEE
    (void)hard;
#else
    *hard = vorrq_u32(*hard, vbicq_u32(vcleq_s32(n, vdupq_n_s32(-126)), under));
#endif
    return result;
}

/* This target keeps the file's layout. */
int el_kernel_arrange(el_matrix *w, uint8_t *data)
{
    (void)w, (void)data;
    return 0;
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
        if (vmaxvq_u32(nan_lanes(out)) != 0) break; /* a NaN: see the top of the file; the rest below */
        vst1q_f32(gate + i, out);
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
        if (nan) el_portable_swiglu(gate + i, up + i, 4); /* a NaN: see the top of the file */
        else for (k = 0; k < 4; k++) gate[i + k] = out[k];
#endif
    }
    if (i < n) el_portable_swiglu(gate + i, up + i, n - i);
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
        hard = vorrq_u32(hard, nan_lanes(v));
        if (any_set(hard)) {
            for (k = 0; k < 4; k++) w[i + k] = el_expf(x[i + k] - shift);
            continue;
        }
#endif
        (void)k;
        vst1q_f32(w + i, e);
    }
    if (i < n) el_portable_exp_shifted(w + i, x + i, shift, n - i);
}

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
typedef int el_kernels_neon_unused;
#endif
