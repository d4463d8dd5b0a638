/* el_kernels_rvv.c: the kernels with the RISC-V vector extension 1.0 (RVV intrinsics,
 * the __riscv_-prefixed API of clang 17 and later), bit for bit the portable ones.
 *
 * Correct for any VLEN: every vector length comes from vsetvl. The fixed shapes the
 * portable order needs (eight float lanes, 32-value int8 blocks) fit the smallest
 * vector unit the V extension allows (VLEN 128); a unit that cannot hold them
 * (Zve32 with VLEN 32 or 64) falls back to the portable kernels.
 *
 *   F32/F16 dot    one 8-element accumulator (vl = 8) per row: element k is the
 *                  portable lane k; multiply, then add (never fused); the lanes are
 *                  combined pairwise with slides, ((0+1)+(2+3))+((4+5)+(6+7)), and the
 *                  n % 8 tail is added in order in scalar code. F32: four rows by one
 *                  or two activation rows at a time (each load of a weight chunk serves
 *                  both activations, each activation chunk the four rows); F16: one
 *                  row by up to four activation rows (each chunk converted once).
 *   Q8_0/Q4_0      per 32-value block an exact int32 sum: int8 products widened to
 *                  int16 (vwmul), summed to int32 (vwredsum); four rows by up to four
 *                  activation rows, each weight block loaded (and unpacked) once. The
 *                  block terms (fp16 scale * activation scale) * (float)sum are then
 *                  formed as vectors over the blocks of a row and added in block order
 *                  with the ordered reduction vfredosum (sequential by definition).
 *   quantize       max |x| by an unsigned max of the bits (exact in any order; a
 *                  NaN or Inf block goes to the portable code), v = x * inverse,
 *                  q = truncate(v + copysign(0.5, v)) as el_quantize_int8.
 *   exp, swiglu    el_expf (el_math.c) step by step on vectors, the same operations
 *                  in the same order, with its special cases merged in at the end.
 *
 * Scalar float code here is C under -ffp-contract=off, like the portable file.
 */
#include "el_kernel_ops.h"

#if EL_KERNELS_RVV

#include <riscv_vector.h>

#include "el_math.h"

#define EL_LANES 8
/* Blocks whose int32 sums are gathered before their scaled terms are added. */
#define EL_QCHUNK 32

/* ------------------------------------------------------------ shapes the vector unit must hold */

/* 8 floats (e32, LMUL 2), 32 int8 (e8, LMUL 2) and 32 floats (e32, LMUL 8) at once:
 * any VLEN of 128 or more, which the V extension guarantees (the compiler says so with
 * __riscv_v_min_vlen; Zve32/Zve64 units may be smaller and are checked at run time). */
#if defined(__riscv_v_min_vlen) && __riscv_v_min_vlen >= 128
#define vector_unit_fits() 1
#else
static int vector_unit_fits(void)
{
    return __riscv_vsetvl_e32m2(EL_LANES) == EL_LANES && __riscv_vsetvl_e8m2(EL_QBLOCK) == EL_QBLOCK &&
           __riscv_vsetvl_e8m1(16) == 16 && __riscv_vsetvl_e32m8(EL_QBLOCK) == EL_QBLOCK;
}
#endif

/* ------------------------------------------------------------ fp16 */

/* fp16 bits (zero-extended to 32) to float, exactly as the portable fp16_to_f32: the
 * exponent and mantissa shifted into float position are the value times 2^-112 (also for
 * subnormals, which become float subnormals), so one exact multiply by 2^112 rescales
 * them; infinities and NaNs (exponent 31) are rebuilt from the bits; then the sign. */
static vfloat32m2_t fp16_bits_to_f32_m2(vuint32m2_t u, size_t vl)
{
    vuint32m2_t em = __riscv_vsll_vx_u32m2(__riscv_vand_vx_u32m2(u, 0x7fffu, vl), 13, vl);
    vfloat32m2_t f = __riscv_vfmul_vf_f32m2(__riscv_vreinterpret_v_u32m2_f32m2(em), 0x1p112f, vl);
    vbool16_t special = __riscv_vmsgeu_vx_u32m2_b16(em, 0x0f800000u, vl);
    vuint32m2_t bits = __riscv_vmerge_vvm_u32m2(__riscv_vreinterpret_v_f32m2_u32m2(f),
                                                __riscv_vor_vx_u32m2(em, 0x7f800000u, vl), special, vl);
    vuint32m2_t sign = __riscv_vsll_vx_u32m2(__riscv_vand_vx_u32m2(u, 0x8000u, vl), 16, vl);
    return __riscv_vreinterpret_v_u32m2_f32m2(__riscv_vor_vv_u32m2(bits, sign, vl));
}

static vfloat32m4_t fp16_bits_to_f32_m4(vuint32m4_t u, size_t vl)
{
    vuint32m4_t em = __riscv_vsll_vx_u32m4(__riscv_vand_vx_u32m4(u, 0x7fffu, vl), 13, vl);
    vfloat32m4_t f = __riscv_vfmul_vf_f32m4(__riscv_vreinterpret_v_u32m4_f32m4(em), 0x1p112f, vl);
    vbool8_t special = __riscv_vmsgeu_vx_u32m4_b8(em, 0x0f800000u, vl);
    vuint32m4_t bits = __riscv_vmerge_vvm_u32m4(__riscv_vreinterpret_v_f32m4_u32m4(f),
                                                __riscv_vor_vx_u32m4(em, 0x7f800000u, vl), special, vl);
    vuint32m4_t sign = __riscv_vsll_vx_u32m4(__riscv_vand_vx_u32m4(u, 0x8000u, vl), 16, vl);
    return __riscv_vreinterpret_v_u32m4_f32m4(__riscv_vor_vv_u32m4(bits, sign, vl));
}

/* 8 fp16 weights (little-endian, 2-byte aligned) as floats. */
static vfloat32m2_t load_f16x8(const uint8_t *p, size_t vl8)
{
    vuint16m1_t h = __riscv_vle16_v_u16m1((const uint16_t *)(const void *)p, vl8);
    return fp16_bits_to_f32_m2(__riscv_vzext_vf2_u32m2(h, vl8), vl8);
}

/* ------------------------------------------------------------ eight-lane dot products */

/* ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)): after each slide-and-add, element
 * 2j (then 4j, then 0) holds the next pairwise sum; the elements it reads are < 8. */
static float combine_lanes(vfloat32m2_t v, size_t vl8)
{
    v = __riscv_vfadd_vv_f32m2(v, __riscv_vslidedown_vx_f32m2(v, 1, vl8), vl8);
    v = __riscv_vfadd_vv_f32m2(v, __riscv_vslidedown_vx_f32m2(v, 2, vl8), vl8);
    v = __riscv_vfadd_vv_f32m2(v, __riscv_vslidedown_vx_f32m2(v, 4, vl8), vl8);
    return __riscv_vfmv_f_s_f32m2_f32(v);
}

static float dot1_f32(const float *w, const float *x, int n, size_t vl8)
{
    vfloat32m2_t acc = __riscv_vfmv_v_f_f32m2(0.0f, vl8);
    float sum;
    int i, whole = n - n % EL_LANES;
    for (i = 0; i < whole; i += EL_LANES)
        acc = __riscv_vfadd_vv_f32m2(
            acc, __riscv_vfmul_vv_f32m2(__riscv_vle32_v_f32m2(w + i, vl8), __riscv_vle32_v_f32m2(x + i, vl8), vl8),
            vl8);
    sum = combine_lanes(acc, vl8);
    for (; i < n; i++) sum += w[i] * x[i];
    return sum;
}

/* The four rows of a quantized weight group: a group with fewer rows repeats its last
 * one (the repeated sums are computed and dropped), so the kernels always see four. */
static void row_group(const uint8_t *w[4], const uint8_t *first, size_t row_bytes, uint32_t nr)
{
    w[0] = first;
    w[1] = nr > 1 ? first + row_bytes : w[0];
    w[2] = nr > 2 ? first + 2 * row_bytes : w[1];
    w[3] = nr > 3 ? first + 3 * row_bytes : w[2];
}

/* y[k] = s_k for k < nr (written out: a loop over an array becomes a call to memcpy). */
static void store_rows(float *y, uint32_t nr, float s0, float s1, float s2, float s3)
{
    y[0] = s0;
    if (nr > 1) y[1] = s1;
    if (nr > 2) y[2] = s2;
    if (nr > 3) y[3] = s3;
}

#define EL_MULADD(acc, wv, xv) acc = __riscv_vfadd_vv_f32m2(acc, __riscv_vfmul_vv_f32m2(wv, xv, vl8), vl8)

/* The n % 8 tail of a dot product, in order, after the lanes (as el_portable_dot).
 * Not inlined: its setup would otherwise run for every row group, tail or not. */
__attribute__((noinline)) static float dot_tail(float sum, const float *w, const float *x, int i, int n)
{
    for (; i < n; i++) sum += w[i] * x[i];
    return sum;
}

/* Four rows against one activation row: each 8-float chunk of x is loaded once for the
 * four rows. y[k] = w[k] . x for k < nr. */
static void dot4x1_f32(float *y, uint32_t nr, const float *const w[4], const float *x, int n, size_t vl8)
{
    vfloat32m2_t a0 = __riscv_vfmv_v_f_f32m2(0.0f, vl8), a1 = a0, a2 = a0, a3 = a0;
    float s0, s1, s2, s3;
    int i, whole = n - n % EL_LANES;
    for (i = 0; i < whole; i += EL_LANES) {
        vfloat32m2_t xv = __riscv_vle32_v_f32m2(x + i, vl8);
        EL_MULADD(a0, __riscv_vle32_v_f32m2(w[0] + i, vl8), xv);
        EL_MULADD(a1, __riscv_vle32_v_f32m2(w[1] + i, vl8), xv);
        EL_MULADD(a2, __riscv_vle32_v_f32m2(w[2] + i, vl8), xv);
        EL_MULADD(a3, __riscv_vle32_v_f32m2(w[3] + i, vl8), xv);
    }
    s0 = combine_lanes(a0, vl8);
    s1 = combine_lanes(a1, vl8);
    s2 = combine_lanes(a2, vl8);
    s3 = combine_lanes(a3, vl8);
    if (whole < n) {
        s0 = dot_tail(s0, w[0], x, whole, n);
        s1 = dot_tail(s1, w[1], x, whole, n);
        s2 = dot_tail(s2, w[2], x, whole, n);
        s3 = dot_tail(s3, w[3], x, whole, n);
    }
    store_rows(y, nr, s0, s1, s2, s3);
}

/* Four rows against two activation rows (y0 for x0, y1 for x1): each chunk of a weight
 * row is loaded once for both. */
static void dot4x2_f32(float *y0, float *y1, uint32_t nr, const float *const w[4], const float *x0, const float *x1,
                       int n, size_t vl8)
{
    vfloat32m2_t a0 = __riscv_vfmv_v_f_f32m2(0.0f, vl8), a1 = a0, a2 = a0, a3 = a0;
    vfloat32m2_t c0 = a0, c1 = a0, c2 = a0, c3 = a0;
    float s0, s1, s2, s3, t0, t1, t2, t3;
    int i, whole = n - n % EL_LANES;
    for (i = 0; i < whole; i += EL_LANES) {
        vfloat32m2_t xv = __riscv_vle32_v_f32m2(x0 + i, vl8), yv = __riscv_vle32_v_f32m2(x1 + i, vl8);
        vfloat32m2_t w0 = __riscv_vle32_v_f32m2(w[0] + i, vl8), w1 = __riscv_vle32_v_f32m2(w[1] + i, vl8);
        vfloat32m2_t w2 = __riscv_vle32_v_f32m2(w[2] + i, vl8), w3 = __riscv_vle32_v_f32m2(w[3] + i, vl8);
        EL_MULADD(a0, w0, xv);
        EL_MULADD(a1, w1, xv);
        EL_MULADD(a2, w2, xv);
        EL_MULADD(a3, w3, xv);
        EL_MULADD(c0, w0, yv);
        EL_MULADD(c1, w1, yv);
        EL_MULADD(c2, w2, yv);
        EL_MULADD(c3, w3, yv);
    }
    s0 = combine_lanes(a0, vl8);
    s1 = combine_lanes(a1, vl8);
    s2 = combine_lanes(a2, vl8);
    s3 = combine_lanes(a3, vl8);
    t0 = combine_lanes(c0, vl8);
    t1 = combine_lanes(c1, vl8);
    t2 = combine_lanes(c2, vl8);
    t3 = combine_lanes(c3, vl8);
    if (whole < n) {
        s0 = dot_tail(s0, w[0], x0, whole, n);
        s1 = dot_tail(s1, w[1], x0, whole, n);
        s2 = dot_tail(s2, w[2], x0, whole, n);
        s3 = dot_tail(s3, w[3], x0, whole, n);
        t0 = dot_tail(t0, w[0], x1, whole, n);
        t1 = dot_tail(t1, w[1], x1, whole, n);
        t2 = dot_tail(t2, w[2], x1, whole, n);
        t3 = dot_tail(t3, w[3], x1, whole, n);
    }
    store_rows(y0, nr, s0, s1, s2, s3);
    store_rows(y1, nr, t0, t1, t2, t3);
}

void el_kernel_matmul_f32(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    uint32_t r, rows = t->w->rows, cols = t->w->cols;
    size_t vl8 = __riscv_vsetvl_e32m2(EL_LANES);
    int b;
    if (!vector_unit_fits()) {
        el_portable_matmul_f32(t, r0, r1);
        return;
    }
    /* rows outer, batch inner: a group of four rows is read once for the whole batch,
     * two activation rows at a time */
    for (r = r0; r < r1; r += 4) {
        uint32_t nr = r1 - r < 4 ? r1 - r : 4;
        const float *w[4];
        w[0] = (const float *)t->w->data + (size_t)r * cols;
        w[1] = nr > 1 ? w[0] + cols : w[0];
        w[2] = nr > 2 ? w[0] + 2 * (size_t)cols : w[1];
        w[3] = nr > 3 ? w[0] + 3 * (size_t)cols : w[2];
        for (b = 0; b + 2 <= t->batch; b += 2)
            dot4x2_f32(t->y + (size_t)b * rows + r, t->y + (size_t)(b + 1) * rows + r, nr, w,
                       t->x + (size_t)b * cols, t->x + (size_t)(b + 1) * cols, (int)cols, vl8);
        if (b < t->batch) dot4x1_f32(t->y + (size_t)b * rows + r, nr, w, t->x + (size_t)b * cols, (int)cols, vl8);
    }
}

float el_kernel_dot(const float *a, const float *b, int n)
{
    if (!vector_unit_fits()) return el_portable_dot(a, b, n);
    return dot1_f32(a, b, n, __riscv_vsetvl_e32m2(EL_LANES));
}

/* ------------------------------------------------------------ F16 */

static float f16_at(const uint8_t *w, int i) { return el_fp16_to_f32((uint16_t)(w[2 * i] | (w[2 * i + 1] << 8))); }

/* One fp16 row against up to four activation rows: each 8-weight chunk is converted once
 * and used for all of them. */
static void dot_f16_batch(float *out, size_t out_stride, const uint8_t *w, const float *x, size_t x_stride,
                          int nx, int n, size_t vl8)
{
    const float *x0 = x, *x1 = x + x_stride, *x2 = x + 2 * x_stride, *x3 = x + 3 * x_stride;
    vfloat32m2_t a0 = __riscv_vfmv_v_f_f32m2(0.0f, vl8), a1 = a0, a2 = a0, a3 = a0;
    float s[4];
    int i, k, whole = n - n % EL_LANES;
    for (i = 0; i < whole; i += EL_LANES) {
        vfloat32m2_t wv = load_f16x8(w + 2 * i, vl8);
        a0 = __riscv_vfadd_vv_f32m2(a0, __riscv_vfmul_vv_f32m2(wv, __riscv_vle32_v_f32m2(x0 + i, vl8), vl8), vl8);
        if (nx > 1)
            a1 = __riscv_vfadd_vv_f32m2(a1, __riscv_vfmul_vv_f32m2(wv, __riscv_vle32_v_f32m2(x1 + i, vl8), vl8), vl8);
        if (nx > 2)
            a2 = __riscv_vfadd_vv_f32m2(a2, __riscv_vfmul_vv_f32m2(wv, __riscv_vle32_v_f32m2(x2 + i, vl8), vl8), vl8);
        if (nx > 3)
            a3 = __riscv_vfadd_vv_f32m2(a3, __riscv_vfmul_vv_f32m2(wv, __riscv_vle32_v_f32m2(x3 + i, vl8), vl8), vl8);
    }
    s[0] = combine_lanes(a0, vl8);
    s[1] = combine_lanes(a1, vl8);
    s[2] = combine_lanes(a2, vl8);
    s[3] = combine_lanes(a3, vl8);
    for (; i < n; i++) {
        float wi = f16_at(w, i);
        for (k = 0; k < nx; k++) s[k] += wi * x[(size_t)k * x_stride + i];
    }
    for (k = 0; k < nx; k++) out[(size_t)k * out_stride] = s[k];
}

void el_kernel_matmul_f16(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    uint32_t r, rows = t->w->rows, cols = t->w->cols;
    const uint8_t *data = (const uint8_t *)t->w->data;
    size_t vl8 = __riscv_vsetvl_e32m2(EL_LANES);
    int b;
    if (!vector_unit_fits() || ((uintptr_t)data & 1u) != 0) {
        el_portable_matmul_f16(t, r0, r1);
        return;
    }
    for (r = r0; r < r1; r++)
        for (b = 0; b < t->batch; b += 4) {
            int nx = t->batch - b < 4 ? t->batch - b : 4;
            dot_f16_batch(t->y + (size_t)b * rows + r, rows, data + (size_t)r * 2 * cols, t->x + (size_t)b * cols,
                          cols, nx, (int)cols, vl8);
        }
}

/* ------------------------------------------------------------ Q8_0 and Q4_0 */

/* One row's total over its blocks: sum += (fp16 scale * activation scale) * (float)isum,
 * block by block. The terms are formed as vectors over the blocks (their products are
 * elementwise, the same roundings as scalar code) and added by vfredosum, which adds in
 * element order starting from the running sum. scale_bits points at the first block's
 * fp16 scale; blocks are block_bytes apart. */
static float add_block_terms(float sum, const uint8_t *scale_bits, size_t block_bytes, const float *xs,
                             const int32_t *isum, int n)
{
    int j = 0;
    while (j < n) {
        size_t vl = __riscv_vsetvl_e32m4((size_t)(n - j));
        vuint16m2_t h = __riscv_vlse16_v_u16m2((const uint16_t *)(const void *)(scale_bits + (size_t)j * block_bytes),
                                                (ptrdiff_t)block_bytes, vl);
        vfloat32m4_t ws = fp16_bits_to_f32_m4(__riscv_vzext_vf2_u32m4(h, vl), vl);
        vfloat32m4_t terms = __riscv_vfmul_vv_f32m4(ws, __riscv_vle32_v_f32m4(xs + j, vl), vl);
        terms = __riscv_vfmul_vv_f32m4(terms, __riscv_vfcvt_f_x_v_f32m4(__riscv_vle32_v_i32m4(isum + j, vl), vl), vl);
        sum = __riscv_vfmv_f_s_f32m1_f32(
            __riscv_vfredosum_vs_f32m4_f32m1(terms, __riscv_vfmv_s_f_f32m1(sum, 1), vl));
        j += (int)vl;
    }
    return sum;
}

/* Exact int32 sums of 32 int8 products, four weight blocks against one activation
 * block: widened to int16 (|product| <= 128 * 127), summed to int32. The operations are
 * grouped by element width so the vector unit changes its type three times, not twelve. */
static void block_sums_q8(int32_t *sums, size_t stride, vint8m2_t w0, vint8m2_t w1, vint8m2_t w2, vint8m2_t w3,
                          const int8_t *x, vint32m1_t zero)
{
    vint8m2_t xv = __riscv_vle8_v_i8m2(x, EL_QBLOCK);
    vint16m4_t p0 = __riscv_vwmul_vv_i16m4(w0, xv, EL_QBLOCK), p1 = __riscv_vwmul_vv_i16m4(w1, xv, EL_QBLOCK);
    vint16m4_t p2 = __riscv_vwmul_vv_i16m4(w2, xv, EL_QBLOCK), p3 = __riscv_vwmul_vv_i16m4(w3, xv, EL_QBLOCK);
    vint32m1_t s0 = __riscv_vwredsum_vs_i16m4_i32m1(p0, zero, EL_QBLOCK);
    vint32m1_t s1 = __riscv_vwredsum_vs_i16m4_i32m1(p1, zero, EL_QBLOCK);
    vint32m1_t s2 = __riscv_vwredsum_vs_i16m4_i32m1(p2, zero, EL_QBLOCK);
    vint32m1_t s3 = __riscv_vwredsum_vs_i16m4_i32m1(p3, zero, EL_QBLOCK);
    __riscv_vse32_v_i32m1(sums, s0, 1);
    __riscv_vse32_v_i32m1(sums + stride, s1, 1);
    __riscv_vse32_v_i32m1(sums + 2 * stride, s2, 1);
    __riscv_vse32_v_i32m1(sums + 3 * stride, s3, 1);
}

/* Q4_0, the same four at a time, as the two halves: element i < 16 is (byte i & 15) - 8
 * against x[i], element i + 16 is (byte i >> 4) - 8 against x[i + 16]; the products are
 * summed (integer multiply-add, exact) and widened to int32. */
static void block_sums_q4(int32_t *sums, size_t stride, vint8m1_t l0, vint8m1_t h0, vint8m1_t l1, vint8m1_t h1,
                          vint8m1_t l2, vint8m1_t h2, vint8m1_t l3, vint8m1_t h3, const int8_t *x, vint32m1_t zero)
{
    vint8m1_t xl = __riscv_vle8_v_i8m1(x, 16), xh = __riscv_vle8_v_i8m1(x + 16, 16);
    vint16m2_t p0 = __riscv_vwmacc_vv_i16m2(__riscv_vwmul_vv_i16m2(l0, xl, 16), h0, xh, 16);
    vint16m2_t p1 = __riscv_vwmacc_vv_i16m2(__riscv_vwmul_vv_i16m2(l1, xl, 16), h1, xh, 16);
    vint16m2_t p2 = __riscv_vwmacc_vv_i16m2(__riscv_vwmul_vv_i16m2(l2, xl, 16), h2, xh, 16);
    vint16m2_t p3 = __riscv_vwmacc_vv_i16m2(__riscv_vwmul_vv_i16m2(l3, xl, 16), h3, xh, 16);
    vint32m1_t s0 = __riscv_vwredsum_vs_i16m2_i32m1(p0, zero, 16);
    vint32m1_t s1 = __riscv_vwredsum_vs_i16m2_i32m1(p1, zero, 16);
    vint32m1_t s2 = __riscv_vwredsum_vs_i16m2_i32m1(p2, zero, 16);
    vint32m1_t s3 = __riscv_vwredsum_vs_i16m2_i32m1(p3, zero, 16);
    __riscv_vse32_v_i32m1(sums, s0, 1);
    __riscv_vse32_v_i32m1(sums + stride, s1, 1);
    __riscv_vse32_v_i32m1(sums + 2 * stride, s2, 1);
    __riscv_vse32_v_i32m1(sums + 3 * stride, s3, 1);
}

static vint8m1_t q4_low(vuint8m1_t v)
{
    return __riscv_vsub_vx_i8m1(__riscv_vreinterpret_v_u8m1_i8m1(__riscv_vand_vx_u8m1(v, 0x0f, 16)), 8, 16);
}

static vint8m1_t q4_high(vuint8m1_t v)
{
    return __riscv_vsub_vx_i8m1(__riscv_vreinterpret_v_u8m1_i8m1(__riscv_vsrl_vx_u8m1(v, 4, 16)), 8, 16);
}

/* Activation rows that share each loaded (and, for Q4_0, unpacked) weight block. */
#define EL_QBATCH 4

/* Rows [r0, r1) of a Q8_0 (block_bytes 34) or Q4_0 (18) matrix. Four rows by up to
 * four activation rows at a time: each weight block is loaded once for all of them,
 * the int32 block sums are gathered for a chunk of blocks, and each (row, activation)
 * pair then adds its terms in block order. */
static void matmul_quant(const el_matmul_task *t, uint32_t r0, uint32_t r1, size_t block_bytes, int q4)
{
    uint32_t rows = t->w->rows, cols = t->w->cols, nb = cols / EL_QBLOCK, r;
    size_t row_bytes = (size_t)nb * block_bytes;
    vint32m1_t zero = __riscv_vmv_v_x_i32m1(0, 1);
    int32_t isum[EL_QBATCH][4][EL_QCHUNK];
    int b;
    for (r = r0; r < r1; r += 4) {
        uint32_t nr = r1 - r < 4 ? r1 - r : 4, k;
        const uint8_t *w[4];
        row_group(w, (const uint8_t *)t->w->data + (size_t)r * row_bytes, row_bytes, nr);
        for (b = 0; b < t->batch; b += EL_QBATCH) {
            int nx = t->batch - b < EL_QBATCH ? t->batch - b : EL_QBATCH, j;
            float sum[EL_QBATCH][4] = {{0.0f}};
            uint32_t j0, i;
            for (j0 = 0; j0 < nb; j0 += EL_QCHUNK) {
                uint32_t n = nb - j0 < EL_QCHUNK ? nb - j0 : EL_QCHUNK;
                for (i = 0; i < n; i++) {
                    size_t at = (size_t)(j0 + i) * block_bytes + 2;
                    const int8_t *x = t->xq + (size_t)b * cols + (size_t)(j0 + i) * EL_QBLOCK;
                    if (q4) {
                        vuint8m1_t v0 = __riscv_vle8_v_u8m1(w[0] + at, 16), v1 = __riscv_vle8_v_u8m1(w[1] + at, 16);
                        vuint8m1_t v2 = __riscv_vle8_v_u8m1(w[2] + at, 16), v3 = __riscv_vle8_v_u8m1(w[3] + at, 16);
                        vint8m1_t l0 = q4_low(v0), l1 = q4_low(v1), l2 = q4_low(v2), l3 = q4_low(v3);
                        vint8m1_t h0 = q4_high(v0), h1 = q4_high(v1), h2 = q4_high(v2), h3 = q4_high(v3);
                        for (j = 0; j < nx; j++, x += cols)
                            block_sums_q4(&isum[j][0][i], EL_QCHUNK, l0, h0, l1, h1, l2, h2, l3, h3, x, zero);
                    } else {
                        vint8m2_t v0 = __riscv_vle8_v_i8m2((const int8_t *)(w[0] + at), EL_QBLOCK);
                        vint8m2_t v1 = __riscv_vle8_v_i8m2((const int8_t *)(w[1] + at), EL_QBLOCK);
                        vint8m2_t v2 = __riscv_vle8_v_i8m2((const int8_t *)(w[2] + at), EL_QBLOCK);
                        vint8m2_t v3 = __riscv_vle8_v_i8m2((const int8_t *)(w[3] + at), EL_QBLOCK);
                        for (j = 0; j < nx; j++, x += cols)
                            block_sums_q8(&isum[j][0][i], EL_QCHUNK, v0, v1, v2, v3, x, zero);
                    }
                }
                for (j = 0; j < nx; j++)
                    for (k = 0; k < nr; k++)
                        sum[j][k] = add_block_terms(sum[j][k], w[k] + (size_t)j0 * block_bytes, block_bytes,
                                                    t->xs + (size_t)(b + j) * nb + j0, isum[j][k], (int)n);
            }
            for (j = 0; j < nx; j++)
                store_rows(t->y + (size_t)(b + j) * rows + r, nr, sum[j][0], sum[j][1], sum[j][2], sum[j][3]);
        }
    }
}

void el_kernel_matmul_q8_0(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    if (!vector_unit_fits() || ((uintptr_t)t->w->data & 1u) != 0) {
        el_portable_matmul_q8_0(t, r0, r1);
        return;
    }
    matmul_quant(t, r0, r1, 34, 0);
}

void el_kernel_matmul_q4_0(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    if (!vector_unit_fits() || ((uintptr_t)t->w->data & 1u) != 0) {
        el_portable_matmul_q4_0(t, r0, r1);
        return;
    }
    matmul_quant(t, r0, r1, 18, 1);
}

/* ------------------------------------------------------------ quantize */

void el_kernel_quantize_blocks(int8_t *q, float *scales, const float *x, int n_blocks)
{
    size_t vl = EL_QBLOCK;
    vfloat32m8_t half;
    vuint32m1_t zero;
    int b;
    if (!vector_unit_fits()) {
        el_portable_quantize_blocks(q, scales, x, n_blocks);
        return;
    }
    half = __riscv_vfmv_v_f_f32m8(0.5f, vl);
    zero = __riscv_vmv_v_x_u32m1(0u, 1);
    for (b = 0; b < n_blocks; b++) {
        vfloat32m8_t v = __riscv_vle32_v_f32m8(x + (size_t)b * EL_QBLOCK, vl);
        /* max |x| on the bits (sign cleared) as unsigned integers: the float order for
         * non-negative floats, so the portable maximum, but a NaN wins instead of being
         * skipped (vfredmax would skip it) */
        vuint32m8_t bits = __riscv_vand_vx_u32m8(__riscv_vreinterpret_v_f32m8_u32m8(v), 0x7fffffffu, vl);
        uint32_t amax_bits = __riscv_vmv_x_s_u32m1_u32(__riscv_vredmaxu_vs_u32m8_u32m1(bits, zero, vl));
        float amax, inverse;
        vint32m8_t n;
        /* NaN or Inf: the portable code defines that block (zeros under a NaN scale) */
        if (amax_bits >= 0x7f800000u) {
            el_quantize_int8(q + (size_t)b * EL_QBLOCK, &scales[b], x + (size_t)b * EL_QBLOCK, EL_QBLOCK);
            continue;
        }
        amax = el_bits_float(amax_bits);
        inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
        if (inverse > EL_QUANT_INVERSE_MAX) { /* a block of near-zero values: the portable rule */
            el_quantize_int8(q + (size_t)b * EL_QBLOCK, &scales[b], x + (size_t)b * EL_QBLOCK, EL_QBLOCK);
            continue;
        }
        scales[b] = amax / 127.0f;
        v = __riscv_vfmul_vf_f32m8(v, inverse, vl);
        /* v + (v >= 0 ? 0.5 : -0.5) truncated; copysign differs only at v == -0 (gives 0
         * either way) */
        v = __riscv_vfadd_vv_f32m8(v, __riscv_vfsgnj_vv_f32m8(half, v, vl), vl);
        n = __riscv_vfcvt_rtz_x_f_v_i32m8(v, vl);
        __riscv_vse8_v_i8m2(q + (size_t)b * EL_QBLOCK,
                            __riscv_vncvt_x_x_w_i8m2(__riscv_vncvt_x_x_w_i16m4(n, vl), vl), vl);
    }
}

/* ------------------------------------------------------------ elementwise */

void el_kernel_axpy(float *y, float a, const float *x, int n)
{
    size_t i = 0, vl;
    while (i < (size_t)(n > 0 ? n : 0)) {
        vfloat32m8_t ax;
        vl = __riscv_vsetvl_e32m8((size_t)n - i);
        ax = __riscv_vfmul_vf_f32m8(__riscv_vle32_v_f32m8(x + i, vl), a, vl);
        __riscv_vse32_v_f32m8(y + i, __riscv_vfadd_vv_f32m8(__riscv_vle32_v_f32m8(y + i, vl), ax, vl), vl);
        i += vl;
    }
}

/* el_expf on a vector: the same operations in the same order (el_math.c), no fusing.
 * The three scalings of 2^n become one form, (p * 2^n1) * f with (n1, f) = (n, 1),
 * (n + 100, 2^-100) or (n - 1, 2): multiplying by 1 is exact. Out-of-range and NaN
 * inputs are merged in at the end (their lanes compute garbage that is dropped). */
static vfloat32m4_t exp_v(vfloat32m4_t x, size_t vl)
{
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    vbool8_t nan = __riscv_vmfne_vv_f32m4_b8(x, x, vl);
    vbool8_t over = __riscv_vmfgt_vf_f32m4_b8(x, 88.72283f, vl);
    vbool8_t under = __riscv_vmflt_vf_f32m4_b8(x, -103.97208f, vl);
    vfloat32m4_t half = __riscv_vfsgnj_vv_f32m4(__riscv_vfmv_v_f_f32m4(0.5f, vl), x, vl);
    vint32m4_t n = __riscv_vfcvt_rtz_x_f_v_i32m4(
        __riscv_vfadd_vv_f32m4(__riscv_vfmul_vf_f32m4(x, 1.44269504f, vl), half, vl), vl);
    vfloat32m4_t fn = __riscv_vfcvt_f_x_v_f32m4(n, vl), r, p;
    vbool8_t low, high;
    vint32m4_t n1;
    vfloat32m4_t f;
    r = __riscv_vfsub_vv_f32m4(__riscv_vfsub_vv_f32m4(x, __riscv_vfmul_vf_f32m4(fn, ln2_hi, vl), vl),
                               __riscv_vfmul_vf_f32m4(fn, ln2_lo, vl), vl);
    p = __riscv_vfmul_vf_f32m4(r, 1.0f / 5040, vl);
    p = __riscv_vfmul_vv_f32m4(r, __riscv_vfadd_vf_f32m4(p, 1.0f / 720, vl), vl);
    p = __riscv_vfmul_vv_f32m4(r, __riscv_vfadd_vf_f32m4(p, 1.0f / 120, vl), vl);
    p = __riscv_vfmul_vv_f32m4(r, __riscv_vfadd_vf_f32m4(p, 1.0f / 24, vl), vl);
    p = __riscv_vfmul_vv_f32m4(r, __riscv_vfadd_vf_f32m4(p, 1.0f / 6, vl), vl);
    p = __riscv_vfmul_vv_f32m4(r, __riscv_vfadd_vf_f32m4(p, 0.5f, vl), vl);
    p = __riscv_vfmul_vv_f32m4(r, __riscv_vfadd_vf_f32m4(p, 1.0f, vl), vl);
    p = __riscv_vfadd_vf_f32m4(p, 1.0f, vl);
    low = __riscv_vmslt_vx_i32m4_b8(n, -126, vl);
    high = __riscv_vmsgt_vx_i32m4_b8(n, 127, vl);
    n1 = __riscv_vadd_vx_i32m4_mu(low, n, n, 100, vl);
    n1 = __riscv_vsub_vx_i32m4_mu(high, n1, n, 1, vl);
    f = __riscv_vfmv_v_f_f32m4(1.0f, vl);
    f = __riscv_vfmerge_vfm_f32m4(f, 0x1p-100f, low, vl);
    f = __riscv_vfmerge_vfm_f32m4(f, 2.0f, high, vl);
    p = __riscv_vfmul_vv_f32m4(
        p, __riscv_vreinterpret_v_i32m4_f32m4(__riscv_vsll_vx_i32m4(__riscv_vadd_vx_i32m4(n1, 127, vl), 23, vl)), vl);
    p = __riscv_vfmul_vv_f32m4(p, f, vl);
    p = __riscv_vfmerge_vfm_f32m4(p, 0.0f, under, vl);
    p = __riscv_vfmerge_vfm_f32m4(p, __builtin_inff(), over, vl);
    return __riscv_vmerge_vvm_f32m4(p, x, nan, vl);
}

/* This target keeps the file's layout. */
int el_kernel_arrange(el_matrix *w, uint8_t *data)
{
    (void)w, (void)data;
    return 0;
}

void el_kernel_swiglu(float *gate, const float *up, int n)
{
    size_t i = 0, vl;
    if (!vector_unit_fits()) {
        el_portable_swiglu(gate, up, n);
        return;
    }
    while (i < (size_t)(n > 0 ? n : 0)) {
        vfloat32m4_t g, e;
        vl = __riscv_vsetvl_e32m4((size_t)n - i);
        g = __riscv_vle32_v_f32m4(gate + i, vl);
        e = exp_v(__riscv_vfneg_v_f32m4(g, vl), vl);
        g = __riscv_vfdiv_vv_f32m4(g, __riscv_vfadd_vf_f32m4(e, 1.0f, vl), vl);
        __riscv_vse32_v_f32m4(gate + i, __riscv_vfmul_vv_f32m4(g, __riscv_vle32_v_f32m4(up + i, vl), vl), vl);
        i += vl;
    }
}

void el_kernel_exp_shifted(float *w, const float *x, float shift, int n)
{
    size_t i = 0, vl;
    if (!vector_unit_fits()) {
        el_portable_exp_shifted(w, x, shift, n);
        return;
    }
    while (i < (size_t)(n > 0 ? n : 0)) {
        vfloat32m4_t d;
        vl = __riscv_vsetvl_e32m4((size_t)n - i);
        d = __riscv_vfsub_vf_f32m4(__riscv_vle32_v_f32m4(x + i, vl), shift, vl);
        __riscv_vse32_v_f32m4(w + i, exp_v(d, vl), vl);
        i += vl;
    }
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
typedef int el_kernels_rvv_unused;
#endif
