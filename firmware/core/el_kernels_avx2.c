/* el_kernels_avx2.c: the kernels with AVX2 and F16C (x86-64), bit for bit the portable ones.
 *
 * How each keeps the portable order:
 * - F32/F16 dot: one 8-float register is the eight lanes; multiply, then add (never
 *   fused); the lanes are combined ((0+1)+(2+3))+((4+5)+(6+7)) by two hadds and one
 *   add; the tail is added one element at a time. Four rows run side by side.
 * - Q8_0/Q4_0: a block's 32 int8 products are summed exactly in integers (maddubs on
 *   |w| and x carrying w's sign, then madd); eight rows' block sums are reduced into
 *   one register, so lane j holds row j, and the float update
 *   sum += (weight scale * activation scale) * block_sum runs per lane in block order.
 *   With VNNI (AVX-VNNI, or AVX-512 VNNI with VL), the rows kept in groups of eight
 *   take vpdpbusd instead, on weights made unsigned: sum (w + c) * x - c * sum x, with
 *   c = 128 (Q8_0) or 8 (Q4_0's stored nibble is w + 8): the same exact integers.
 * - exp: el_expf's steps as vector operations, its branches as blends.
 * Rows are taken in groups; a group's weights stay in L1 while every activation row
 * of the batch passes over them, so a prompt reads each weight once.
 */
#include "el_kernel_ops.h"

#if EL_KERNELS_AVX2
#include <immintrin.h>
#include <string.h>

/* ------------------------------------------------------------ helpers */

static uint16_t read_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)) for four accumulators at once: lane j of the
 * result is accumulator j's combined sum. */
static __m128 combine4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d); /* pairs (0+1), (2+3) per half */
    __m256 abcd = _mm256_hadd_ps(ab, cd);                         /* (0+1)+(2+3) low, (4+5)+(6+7) high */
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

static float combine1(__m256 a) { return _mm_cvtss_f32(combine4(a, a, a, a)); }

/* ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)) for eight accumulators at once: lane j of the
 * result is accumulator j's combined sum. */
static __m256 combine8(__m256 a, __m256 b, __m256 c, __m256 d, __m256 e, __m256 f, __m256 g, __m256 h)
{
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    __m256 efgh = _mm256_hadd_ps(_mm256_hadd_ps(e, f), _mm256_hadd_ps(g, h));
    return _mm256_add_ps(_mm256_permute2f128_ps(abcd, efgh, 0x20), _mm256_permute2f128_ps(abcd, efgh, 0x31));
}

/* 32 int8 products of w and x summed into 8 int32: maddubs multiplies |w| (unsigned,
 * so a weight of -128 is 128) by x carrying w's sign (|x| <= 127, so negating it is
 * safe). Exact: a pair of products is at most 2 * 128 * 127, inside maddubs' int16. */
static __m256i block_products(__m256i w, __m256i x)
{
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

/* The fp16 scales at byte offset `at` of eight rows, as floats (F16C converts exactly). */
static __m256 gather_scales(const uint8_t *const *row, size_t at)
{
    __m128i h = _mm_setr_epi16((short)read_u16(row[0] + at), (short)read_u16(row[1] + at),
                               (short)read_u16(row[2] + at), (short)read_u16(row[3] + at),
                               (short)read_u16(row[4] + at), (short)read_u16(row[5] + at),
                               (short)read_u16(row[6] + at), (short)read_u16(row[7] + at));
    return _mm256_cvtph_ps(h);
}

/* Q4_0's 16 bytes as 32 int8: low nibbles first, then high nibbles, each minus 8. */
static __m256i unpack_q4(const uint8_t *p)
{
    __m128i bytes = _mm_loadu_si128((const __m128i *)(const void *)p), mask = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(bytes, mask), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    return _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
}

/* Ask for the weights from *next up to stop (not past end), a cache line at a time:
 * streaming from DRAM, the loads of a later row group overlap this one's work. */
static void prefetch_until(const uint8_t **next, const uint8_t *stop, const uint8_t *end)
{
    if (stop > end) stop = end;
    for (; *next < stop; *next += 64) _mm_prefetch((const char *)*next, _MM_HINT_T0);
}

/* How far ahead the weights are prefetched, in row groups. */
#define EL_PREFETCH_GROUPS 2

/* ------------------------------------------------------------ F32 and F16 */

static __m256 load8_f32(const void *row, size_t i) { return _mm256_loadu_ps((const float *)row + i); }

static __m256 load8_f16(const void *row, size_t i)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)row + i)));
}

static float weight_at(const void *row, size_t i, int f16)
{
    return f16 ? el_fp16_to_f32(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

/* Element i of each of eight (four) rows, row j in lane j: the tail after the last
 * whole eight, added element by element in order, as in the portable loop. */
static __m256 column8(const void *const *w, size_t i, int f16)
{
    return _mm256_setr_ps(weight_at(w[0], i, f16), weight_at(w[1], i, f16), weight_at(w[2], i, f16),
                          weight_at(w[3], i, f16), weight_at(w[4], i, f16), weight_at(w[5], i, f16),
                          weight_at(w[6], i, f16), weight_at(w[7], i, f16));
}

static __m128 column4(const void *const *w, size_t i, int f16)
{
    return _mm_setr_ps(weight_at(w[0], i, f16), weight_at(w[1], i, f16), weight_at(w[2], i, f16),
                       weight_at(w[3], i, f16));
}

static __m256 load8(const void *row, size_t i, int f16) { return f16 ? load8_f16(row, i) : load8_f32(row, i); }

/* acc + w[i..i+7] * x[i..i+7], multiply then add (never fused). */
static inline __attribute__((always_inline)) __m256 add_product(__m256 acc, const void *w, size_t i, __m256 xv, int f16)
{
    return _mm256_add_ps(acc, _mm256_mul_ps(load8(w, i, f16), xv));
}

/* Rows r0..r1 of an F32 or F16 matrix, eight at a time (eight chains of adds in flight)
 * unless the model streams from DRAM, then four, then the portable code. */
static inline __attribute__((always_inline)) void matmul_float(const el_matmul_task *t, uint32_t r0, uint32_t r1,
                                                                int f16)
{
    uint32_t cols = t->w->cols, whole = cols - cols % 8, r, i;
    size_t row_bytes = (size_t)cols * (f16 ? 2u : 4u), chunk = 4 * row_bytes / (whole / 8 + 1) + 1;
    const uint8_t *base = (const uint8_t *)t->w->data, *end = base + (size_t)r1 * row_bytes;
    int b, j;
    r = r0;
    /* From DRAM four rows keep up better (measured on the 15M shape: 0.93x with eight); from
     * a cache, eight chains of adds gain 1.25-1.3x (stories260K shape, default model), and
     * prefetching there only costs instructions. */
    for (; !t->w->streamed && r + 8 <= r1; r += 8) {
        const void *w[8];
        for (j = 0; j < 8; j++) w[j] = base + (size_t)(r + (uint32_t)j) * row_bytes;
        for (b = 0; b < t->batch; b++) {
            const float *x = t->x + (size_t)b * cols;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, sums;
            for (i = 0; i < whole; i += 8) {
                __m256 xv = _mm256_loadu_ps(x + i);
                a0 = add_product(a0, w[0], i, xv, f16);
                a1 = add_product(a1, w[1], i, xv, f16);
                a2 = add_product(a2, w[2], i, xv, f16);
                a3 = add_product(a3, w[3], i, xv, f16);
                a4 = add_product(a4, w[4], i, xv, f16);
                a5 = add_product(a5, w[5], i, xv, f16);
                a6 = add_product(a6, w[6], i, xv, f16);
                a7 = add_product(a7, w[7], i, xv, f16);
            }
            sums = combine8(a0, a1, a2, a3, a4, a5, a6, a7);
            for (i = whole; i < cols; i++) sums = _mm256_add_ps(sums, _mm256_mul_ps(column8(w, i, f16), _mm256_set1_ps(x[i])));
            _mm256_storeu_ps(t->y + (size_t)b * t->w->rows + r, sums);
        }
    }
    for (; r + 4 <= r1; r += 4) {
        const void *w[4];
        const uint8_t *ahead = base + (size_t)(r + 4 * EL_PREFETCH_GROUPS) * row_bytes, *next = ahead;
        for (j = 0; j < 4; j++) w[j] = base + (size_t)(r + (uint32_t)j) * row_bytes;
        for (b = 0; b < t->batch; b++) {
            const float *x = t->x + (size_t)b * cols;
            __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
            __m128 sums;
            for (i = 0; i < whole; i += 8) {
                if (b == 0) prefetch_until(&next, ahead + (i / 8 + 1) * chunk, end);
                __m256 xv = _mm256_loadu_ps(x + i);
                acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(f16 ? load8_f16(w[0], i) : load8_f32(w[0], i), xv));
                acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(f16 ? load8_f16(w[1], i) : load8_f32(w[1], i), xv));
                acc2 = _mm256_add_ps(acc2, _mm256_mul_ps(f16 ? load8_f16(w[2], i) : load8_f32(w[2], i), xv));
                acc3 = _mm256_add_ps(acc3, _mm256_mul_ps(f16 ? load8_f16(w[3], i) : load8_f32(w[3], i), xv));
            }
            sums = combine4(acc0, acc1, acc2, acc3);
            for (i = whole; i < cols; i++) sums = _mm_add_ps(sums, _mm_mul_ps(column4(w, i, f16), _mm_set1_ps(x[i])));
            _mm_storeu_ps(t->y + (size_t)b * t->w->rows + r, sums);
        }
    }
    if (r < r1) {
        if (f16) el_portable_matmul_f16(t, r, r1);
        else el_portable_matmul_f32(t, r, r1);
    }
}

void el_kernel_matmul_f32(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_float(t, r0, r1, 0); }
void el_kernel_matmul_f16(const el_matmul_task *t, uint32_t r0, uint32_t r1) { matmul_float(t, r0, r1, 1); }

/* ------------------------------------------------------------ Q8_0 and Q4_0 */

/* One block's 32 weights of a row as int8 (Q4_0 unpacked). */
static __m256i load_block(const uint8_t *block, int q4)
{
    return q4 ? unpack_q4(block + 2) : _mm256_loadu_si256((const __m256i *)(const void *)(block + 2));
}

/* The exact integer sums of one block of eight rows with x: lane j holds row j's. */
static __m256i block_sums8(const uint8_t *const *row, size_t at, __m256i x, int q4)
{
    __m256i t0 = _mm256_hadd_epi32(block_products(load_block(row[0] + at, q4), x),
                                   block_products(load_block(row[1] + at, q4), x));
    __m256i t1 = _mm256_hadd_epi32(block_products(load_block(row[2] + at, q4), x),
                                   block_products(load_block(row[3] + at, q4), x));
    __m256i u0 = _mm256_hadd_epi32(t0, t1), u1;
    t0 = _mm256_hadd_epi32(block_products(load_block(row[4] + at, q4), x),
                           block_products(load_block(row[5] + at, q4), x));
    t1 = _mm256_hadd_epi32(block_products(load_block(row[6] + at, q4), x),
                           block_products(load_block(row[7] + at, q4), x));
    u1 = _mm256_hadd_epi32(t0, t1);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

/* Activation rows taken together over one group of eight weight rows: the group's
 * blocks and scales are read once for all of them (a prompt or a batch of sequences). */
#define EL_BATCH_TILE 4

/* ---- several activation rows: the row group turned sideways once, then reused ----
 *
 * For a batch, a group of eight rows is first rewritten into a small stack buffer,
 * block by block, as eight "steps" of 32 bytes: step s holds bytes 4s..4s+3 of each
 * of the eight rows, row j in 32-bit lane j (an 8 x 8 transpose of 32-bit words),
 * beside the same with every byte's magnitude (|w|, for maddubs) and the eight scales
 * as floats. Then for every activation row, a block's exact integer sums build up in
 * the lanes of one register, row j in lane j, with no horizontal adds: per step, the
 * four activations of that step go to every lane (a broadcast), and maddubs + madd
 * add their four products to each row's lane. The float update is then the same as
 * the one-row kernel's: sum += (weight scale * activation scale) * block_sum, per lane,
 * in block order. The buffer's cost is shared by the batch, so it pays from two rows. */

/* Blocks of a row group turned sideways at a time: 16 x 544 bytes on the stack. */
#define EL_SIDEWAYS_BLOCKS 16
/* From this many activation rows on, the sideways kernel is faster (measured on a
 * Zen 3: the prompt's 64 rows 1.4x, eight sequences' 8 rows 1.1x; one row is slower). */
#define EL_SIDEWAYS_MIN_BATCH 2

typedef struct {
    __m256i w[8];       /* step s: bytes 4s..4s+3 of rows 0..7, row j in lane j */
    __m256i magnitude[8]; /* the same bytes' |w| (unsigned; -128 becomes 128) */
    __m256 scales;      /* the eight rows' scales */
} sideways_block;

/* Eight rows' blocks turned into eight steps: an 8 x 8 transpose of 32-bit words in
 * three rounds of unpacks (words, then pairs of words, then 128-bit halves), written
 * out so every value stays in a register. */
static inline __attribute__((always_inline)) void transpose_to_steps(__m256i *w, const uint8_t *const *row, size_t at,
                                                                     int q4)
{
    __m256i r0 = load_block(row[0] + at, q4), r1 = load_block(row[1] + at, q4);
    __m256i r2 = load_block(row[2] + at, q4), r3 = load_block(row[3] + at, q4);
    __m256i r4 = load_block(row[4] + at, q4), r5 = load_block(row[5] + at, q4);
    __m256i r6 = load_block(row[6] + at, q4), r7 = load_block(row[7] + at, q4);
    /* words: t01 = r0[0] r1[0] r0[1] r1[1] | r0[4] r1[4] r0[5] r1[5], and so on */
    __m256i t01 = _mm256_unpacklo_epi32(r0, r1), h01 = _mm256_unpackhi_epi32(r0, r1);
    __m256i t23 = _mm256_unpacklo_epi32(r2, r3), h23 = _mm256_unpackhi_epi32(r2, r3);
    __m256i t45 = _mm256_unpacklo_epi32(r4, r5), h45 = _mm256_unpackhi_epi32(r4, r5);
    __m256i t67 = _mm256_unpacklo_epi32(r6, r7), h67 = _mm256_unpackhi_epi32(r6, r7);
    /* pairs: s0 = word 0 of rows 0..3 | word 4 of rows 0..3, and so on */
    __m256i s0 = _mm256_unpacklo_epi64(t01, t23), s1 = _mm256_unpackhi_epi64(t01, t23);
    __m256i s2 = _mm256_unpacklo_epi64(h01, h23), s3 = _mm256_unpackhi_epi64(h01, h23);
    __m256i s4 = _mm256_unpacklo_epi64(t45, t67), s5 = _mm256_unpackhi_epi64(t45, t67);
    __m256i s6 = _mm256_unpacklo_epi64(h45, h67), s7 = _mm256_unpackhi_epi64(h45, h67);
    /* halves: step s = word s of rows 0..7 */
    w[0] = _mm256_permute2x128_si256(s0, s4, 0x20);
    w[4] = _mm256_permute2x128_si256(s0, s4, 0x31);
    w[1] = _mm256_permute2x128_si256(s1, s5, 0x20);
    w[5] = _mm256_permute2x128_si256(s1, s5, 0x31);
    w[2] = _mm256_permute2x128_si256(s2, s6, 0x20);
    w[6] = _mm256_permute2x128_si256(s2, s6, 0x31);
    w[3] = _mm256_permute2x128_si256(s3, s7, 0x20);
    w[7] = _mm256_permute2x128_si256(s3, s7, 0x31);
}

/* The steps, their magnitudes and the scales of one block of a row group. */
static inline __attribute__((always_inline)) void turn_sideways(sideways_block *out, const uint8_t *const *row, size_t at,
                                                                int q4)
{
    __m256i w[8];
    int s;
    transpose_to_steps(w, row, at, q4);
    for (s = 0; s < 8; s++) {
        _mm256_store_si256(&out->w[s], w[s]);
        _mm256_store_si256(&out->magnitude[s], _mm256_sign_epi8(w[s], w[s]));
    }
    out->scales = gather_scales(row, at);
}

/* acc + step s's four activations (xq[4s..4s+3], to every lane) times its bytes: row
 * j's four products land in lane j, exactly. */
static inline __attribute__((always_inline)) __m256i add_step(__m256i acc, __m256i w, __m256i magnitude,
                                                              const int8_t *xq, int s)
{
    int32_t four;
    memcpy(&four, xq + 4 * s, 4);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude,
                                                   _mm256_sign_epi8(_mm256_set1_epi32(four), w)),
                                                   _mm256_set1_epi16(1)));
}

/* sum += (weight scales * activation scale) * block sums, per lane (the portable order). */
static __m256 add_scaled(__m256 sum, __m256 scales, float x_scale, __m256i sums)
{
    return _mm256_add_ps(sum, _mm256_mul_ps(_mm256_mul_ps(scales, _mm256_set1_ps(x_scale)), _mm256_cvtepi32_ps(sums)));
}

/* One block of one activation row against a sideways block: lane j, row j's exact sum.
 * The eight steps are written out: as a loop, its counters cost as much as its work. */
static __m256i sideways_sums(const sideways_block *blk, const int8_t *xq)
{
    __m256i a = add_step(_mm256_setzero_si256(), blk->w[0], blk->magnitude[0], xq, 0);
    __m256i b = add_step(_mm256_setzero_si256(), blk->w[1], blk->magnitude[1], xq, 1);
    a = add_step(a, blk->w[2], blk->magnitude[2], xq, 2);
    b = add_step(b, blk->w[3], blk->magnitude[3], xq, 3);
    a = add_step(a, blk->w[4], blk->magnitude[4], xq, 4);
    b = add_step(b, blk->w[5], blk->magnitude[5], xq, 5);
    a = add_step(a, blk->w[6], blk->magnitude[6], xq, 6);
    b = add_step(b, blk->w[7], blk->magnitude[7], xq, 7);
    return _mm256_add_epi32(a, b);
}

/* Rows r0..r1 (a multiple of eight) for every activation row of the batch. */
static void matmul_quantized_batch(const el_matmul_task *t, uint32_t r0, uint32_t r1, int q4)
{
    uint32_t cols = t->w->cols, blocks = cols / EL_QBLOCK, block_bytes = q4 ? 18u : 34u, r, k0, k, n;
    size_t row_bytes = (size_t)blocks * block_bytes, chunk = 8 * row_bytes / blocks + 1;
    const uint8_t *base = (const uint8_t *)t->w->data, *end = base + (size_t)r1 * row_bytes;
    sideways_block side[EL_SIDEWAYS_BLOCKS];
    int b, j;
    for (r = r0; r + 8 <= r1; r += 8) {
        const uint8_t *row[8], *ahead, *next;
        for (j = 0; j < 8; j++) row[j] = base + (size_t)(r + (uint32_t)j) * row_bytes;
        ahead = next = row[0] + EL_PREFETCH_GROUPS * 8 * row_bytes;
        for (k0 = 0; k0 < blocks; k0 += n) {
            n = blocks - k0 < EL_SIDEWAYS_BLOCKS ? blocks - k0 : EL_SIDEWAYS_BLOCKS;
            for (k = 0; k < n; k++) {
                prefetch_until(&next, ahead + (k0 + k + 1) * chunk, end);
                if (q4) turn_sideways(&side[k], row, (size_t)(k0 + k) * block_bytes, 1);
                else turn_sideways(&side[k], row, (size_t)(k0 + k) * block_bytes, 0);
            }
            for (b = 0; b < t->batch; b++) {
                float *y = t->y + (size_t)b * t->w->rows + r;
                const int8_t *xq = t->xq + (size_t)b * cols + (size_t)k0 * EL_QBLOCK;
                const float *xs = t->xs + (size_t)b * blocks + k0;
                __m256 sum = k0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(y);
                for (k = 0; k < n; k++)
                    sum = add_scaled(sum, side[k].scales, xs[k], sideways_sums(&side[k], xq + (size_t)k * EL_QBLOCK));
                _mm256_storeu_ps(y, sum);
            }
        }
    }
}

/* Rows r0..r1, eight at a time: per block, the eight rows' exact integer sums land in
 * the lanes of one register and are scaled into eight float sums in block order. */
static void matmul_quantized(const el_matmul_task *t, uint32_t r0, uint32_t r1, int q4)
{
    uint32_t cols = t->w->cols, blocks = cols / EL_QBLOCK, block_bytes = q4 ? 18u : 34u, r, k;
    size_t row_bytes = (size_t)blocks * block_bytes, chunk = 8 * row_bytes / blocks + 1;
    const uint8_t *base = (const uint8_t *)t->w->data, *end = base + (size_t)r1 * row_bytes;
    int b0, b, nb, j;
    if (t->batch >= EL_SIDEWAYS_MIN_BATCH) {
        r = r0 + (r1 - r0) / 8 * 8;
        matmul_quantized_batch(t, r0, r, q4);
        r0 = r;
    }
    for (r = r0; r + 8 <= r1; r += 8) {
        const uint8_t *row[8];
        for (j = 0; j < 8; j++) row[j] = base + (size_t)(r + (uint32_t)j) * row_bytes;
        for (b0 = 0; b0 < t->batch; b0 += EL_BATCH_TILE) {
            const uint8_t *ahead = row[0] + EL_PREFETCH_GROUPS * 8 * row_bytes, *next = ahead;
            __m256 sum[EL_BATCH_TILE];
            nb = t->batch - b0 < EL_BATCH_TILE ? t->batch - b0 : EL_BATCH_TILE;
            for (b = 0; b < nb; b++) sum[b] = _mm256_setzero_ps();
            for (k = 0; k < blocks; k++) {
                size_t at = (size_t)k * block_bytes;
                __m256 weight_scales = gather_scales(row, at);
                if (b0 == 0) prefetch_until(&next, ahead + (k + 1) * chunk, end);
                for (b = 0; b < nb; b++) {
                    const int8_t *xq = t->xq + (size_t)(b0 + b) * cols + (size_t)k * EL_QBLOCK;
                    __m256i sums = block_sums8(row, at, _mm256_loadu_si256((const __m256i *)(const void *)xq), q4);
                    sum[b] = add_scaled(sum[b], weight_scales, t->xs[(size_t)(b0 + b) * blocks + k], sums);
                }
            }
            for (b = 0; b < nb; b++) {
                float out[8];
                _mm256_storeu_ps(out, sum[b]);
                for (j = 0; j < 8; j++) t->y[(size_t)(b0 + b) * t->w->rows + r + (uint32_t)j] = out[j];
            }
        }
    }
    if (r < r1) {
        if (q4) el_portable_matmul_q4_0(t, r, r1);
        else el_portable_matmul_q8_0(t, r, r1);
    }
}

/* ---- Q8_0 and Q4_0 kept in groups of eight rows (rearranged once, at load) ----
 *
 * Where the model's memory is writable (a host's copy-on-write mapping), each group of
 * eight rows is stored the way the sideways kernel above builds it for a batch, so one
 * row of activations gets the same speed without the transpose. Per block, 16 bytes of
 * the eight rows' fp16 scales, then:
 *   Q8_0: eight steps of 32 bytes; step s holds bytes 4s..4s+3 of rows 0..7, row j at 4j.
 *   Q4_0: four pairs of 32 bytes; pair p holds packed bytes 4p..4p+3 of rows 0..7, row j
 *         at 4j. A Q4_0 byte i carries value i in its low nibble and value i + 16 in its
 *         high one, so the low nibbles of pair p are step p and the high ones step p + 4.
 * The same size as the eight rows; the rows after the last whole group keep the file's
 * layout. el_matrix_row (el_kernels.c) reads a row back. */

static uint32_t group_block_bytes(int q4) { return q4 ? 8 * 18 : 8 * 34; }

/* Rearranging goes through a copy of one group on the stack: rows of at most this many
 * blocks (4096 values); a longer row keeps the file's layout. */
#define EL_GROUP_MAX_BLOCKS 128

/* One block of a group of eight Q8_0 rows, from `row` (the file's layout) to `out`. */
static void arrange_q8_0_block(uint8_t *out, const uint8_t *const *row, size_t at)
{
    __m256i steps[8];
    int j, s;
    for (j = 0; j < 8; j++) memcpy(out + 2 * j, row[j] + at, 2);
    transpose_to_steps(steps, row, at, 0);
    for (s = 0; s < 8; s++) _mm256_storeu_si256((__m256i *)(void *)(out + 16 + 32 * s), steps[s]);
}

static void arrange_q4_0_block(uint8_t *out, const uint8_t *const *row, size_t at)
{
    int j, p;
    for (j = 0; j < 8; j++) {
        memcpy(out + 2 * j, row[j] + at, 2);
        for (p = 0; p < 4; p++) memcpy(out + 16 + 32 * p + 4 * j, row[j] + at + 2 + 4 * p, 4);
    }
}

int el_kernel_arrange(el_matrix *w, uint8_t *data)
{
    uint8_t copy[8 * 34 * EL_GROUP_MAX_BLOCKS];
    int q4 = w->type == EL_TYPE_Q4_0;
    uint32_t blocks = w->cols / EL_QBLOCK, in_bytes = q4 ? 18u : 34u, r, j, k;
    size_t row_bytes = (size_t)blocks * in_bytes;
    const uint8_t *row[8];
    if ((w->type != EL_TYPE_Q8_0 && !q4) || blocks > EL_GROUP_MAX_BLOCKS || w->rows < 8) return 0;
    for (j = 0; j < 8; j++) row[j] = copy + j * row_bytes;
    for (r = 0; r + 8 <= w->rows; r += 8) {
        uint8_t *group = data + (size_t)r * row_bytes;
        memcpy(copy, group, 8 * row_bytes);
        for (k = 0; k < blocks; k++) {
            uint8_t *out = group + (size_t)k * group_block_bytes(q4);
            if (q4) arrange_q4_0_block(out, row, (size_t)k * in_bytes);
            else arrange_q8_0_block(out, row, (size_t)k * in_bytes);
        }
    }
    w->layout = EL_LAYOUT_GROUPS_OF_8;
    return 1;
}

static __m256 block_scales(const uint8_t *block)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)block));
}

/* Rows r..r+7 of the output of activation row b: all eight, or those inside r0..r1. */
static void store_group(const el_matmul_task *t, int b, uint32_t r, uint32_t r0, uint32_t r1, __m256 sum)
{
    float *y = t->y + (size_t)b * t->w->rows, out[8];
    uint32_t j;
    if (r >= r0 && r + 8 <= r1) {
        _mm256_storeu_ps(y + r, sum);
        return;
    }
    _mm256_storeu_ps(out, sum);
    for (j = 0; j < 8; j++)
        if (r + j >= r0 && r + j < r1) y[r + j] = out[j];
}

#if EL_KERNELS_AVX_VNNI
/* ---- the same groups with VNNI: one instruction per step and activation row ----
 *
 * vpdpbusd adds four products of unsigned by signed bytes to each 32-bit lane, exactly.
 * The weights are the unsigned side: Q8_0's w + 128 (w xor 0x80), Q4_0's nibble as
 * stored (w + 8); an activation block x is the signed side, broadcast four bytes a step
 * as before. So a lane gathers sum (w + c) * x, and starting it at -c * sum x leaves
 * sum w * x: the same integer as the sign trick's, so the same bits. Per step and
 * activation row that is one broadcast and one vpdpbusd, against the sign trick's
 * sign, maddubs, madd and add; the weights' |w| is not needed at all. */

/* acc + four products in each 32-bit lane: unsigned bytes of u times signed bytes of s. */
static inline __attribute__((always_inline)) __m256i dot_u8_s8(__m256i acc, __m256i u, __m256i s)
{
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_dpbusd_epi32(acc, u, s);
#endif
}

/* Step s of a stored block as 32 unsigned bytes: w + 128 (Q8_0), w + 8 (Q4_0). */
static inline __attribute__((always_inline)) __m256i unsigned_step_at(const uint8_t *block, int s, int q4)
{
    const uint8_t *steps = block + 16;
    __m256i v;
    if (!q4)
        return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(steps + 32 * s)),
                                _mm256_set1_epi8((char)0x80));
    v = _mm256_loadu_si256((const __m256i *)(const void *)(steps + 32 * (s % 4)));
    if (s >= 4) v = _mm256_srli_epi16(v, 4);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

static inline __attribute__((always_inline)) __m256i add_unsigned_step(__m256i acc, __m256i u, const int8_t *xq, int s)
{
    int32_t four;
    memcpy(&four, xq + 4 * s, 4);
    return dot_u8_s8(acc, u, _mm256_set1_epi32(four));
}

/* One step of a stored block for four activation rows `cols` apart: the step's
 * unsigned bytes are made once for the four. */
static inline __attribute__((always_inline)) void unsigned_step4(__m256i *a, const uint8_t *block, const int8_t *xq,
                                                                 size_t cols, int s, int q4)
{
    __m256i u = unsigned_step_at(block, s, q4);
    a[0] = add_unsigned_step(a[0], u, xq, s);
    a[1] = add_unsigned_step(a[1], u, xq + cols, s);
    a[2] = add_unsigned_step(a[2], u, xq + 2 * cols, s);
    a[3] = add_unsigned_step(a[3], u, xq + 3 * cols, s);
}

static inline __attribute__((always_inline)) void unsigned_step2(__m256i *a, const uint8_t *block, const int8_t *xq,
                                                                 size_t cols, int s, int q4)
{
    __m256i u = unsigned_step_at(block, s, q4);
    a[0] = add_unsigned_step(a[0], u, xq, s);
    a[1] = add_unsigned_step(a[1], u, xq + cols, s);
}

/* Four, two or one activation rows over one stored block: lane j of a[i] gathers
 * weight row j's sum with activation row i onto what a[i] held (-c * sum x). The
 * steps are written out: as loops, GCC -O2 keeps the sums in memory. One row runs
 * four chains of adds, so that they overlap (vpdpbusd's latency is several cycles). */
static inline __attribute__((always_inline)) void unsigned_sums4(__m256i *a, const uint8_t *block, const int8_t *xq,
                                                                 size_t cols, int q4)
{
    unsigned_step4(a, block, xq, cols, 0, q4);
    unsigned_step4(a, block, xq, cols, 1, q4);
    unsigned_step4(a, block, xq, cols, 2, q4);
    unsigned_step4(a, block, xq, cols, 3, q4);
    unsigned_step4(a, block, xq, cols, 4, q4);
    unsigned_step4(a, block, xq, cols, 5, q4);
    unsigned_step4(a, block, xq, cols, 6, q4);
    unsigned_step4(a, block, xq, cols, 7, q4);
}

static inline __attribute__((always_inline)) void unsigned_sums2(__m256i *a, const uint8_t *block, const int8_t *xq,
                                                                 size_t cols, int q4)
{
    unsigned_step2(a, block, xq, cols, 0, q4);
    unsigned_step2(a, block, xq, cols, 1, q4);
    unsigned_step2(a, block, xq, cols, 2, q4);
    unsigned_step2(a, block, xq, cols, 3, q4);
    unsigned_step2(a, block, xq, cols, 4, q4);
    unsigned_step2(a, block, xq, cols, 5, q4);
    unsigned_step2(a, block, xq, cols, 6, q4);
    unsigned_step2(a, block, xq, cols, 7, q4);
}

static inline __attribute__((always_inline)) __m256i unsigned_sums1(__m256i a, const uint8_t *block, const int8_t *xq,
                                                                    int q4)
{
    __m256i zero = _mm256_setzero_si256();
    __m256i b = add_unsigned_step(zero, unsigned_step_at(block, 1, q4), xq, 1);
    __m256i c = add_unsigned_step(zero, unsigned_step_at(block, 2, q4), xq, 2);
    __m256i d = add_unsigned_step(zero, unsigned_step_at(block, 3, q4), xq, 3);
    a = add_unsigned_step(a, unsigned_step_at(block, 0, q4), xq, 0);
    a = add_unsigned_step(a, unsigned_step_at(block, 4, q4), xq, 4);
    b = add_unsigned_step(b, unsigned_step_at(block, 5, q4), xq, 5);
    c = add_unsigned_step(c, unsigned_step_at(block, 6, q4), xq, 6);
    d = add_unsigned_step(d, unsigned_step_at(block, 7, q4), xq, 7);
    return _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d));
}

/* The offsets -c * sum x (one per activation row and block) held on the stack at once:
 * 8 KiB, a 64-token prompt at rows of up to 32 blocks; longer batches go in slices. */
#define EL_VNNI_START_MAX 2048

/* Where a row group's weights are prefetched from: the first activation rows to pass
 * over a group ask for those of a later group as they go (prefetch_until). */
typedef struct {
    const uint8_t *ahead, *next, *end;
} group_prefetch;

/* Four, two or one activation rows (xq, `cols` apart; scales xs and offsets start,
 * `blocks` apart) over one row group: out[i] lane j, weight row j's dot with
 * activation row i. Each is written out with its sums in named registers. */
static inline __attribute__((always_inline)) void vnni_rows4(__m256 *out, const uint8_t *group, uint32_t blocks,
                                                             const int8_t *xq, const float *xs, const int32_t *start,
                                                             size_t cols, group_prefetch *pf, int q4)
{
    __m256 sum0 = _mm256_setzero_ps(), sum1 = sum0, sum2 = sum0, sum3 = sum0;
    uint32_t block_bytes = group_block_bytes(q4), k;
    for (k = 0; k < blocks; k++) {
        const uint8_t *block = group + (size_t)k * block_bytes;
        __m256 scales = block_scales(block);
        __m256i a[4];
        if (pf) prefetch_until(&pf->next, pf->ahead + (k + 1) * block_bytes, pf->end);
        a[0] = _mm256_set1_epi32(start[k]);
        a[1] = _mm256_set1_epi32(start[blocks + k]);
        a[2] = _mm256_set1_epi32(start[2 * blocks + k]);
        a[3] = _mm256_set1_epi32(start[3 * blocks + k]);
        unsigned_sums4(a, block, xq + (size_t)k * EL_QBLOCK, cols, q4);
        sum0 = add_scaled(sum0, scales, xs[k], a[0]);
        sum1 = add_scaled(sum1, scales, xs[blocks + k], a[1]);
        sum2 = add_scaled(sum2, scales, xs[2 * blocks + k], a[2]);
        sum3 = add_scaled(sum3, scales, xs[3 * blocks + k], a[3]);
    }
    out[0] = sum0, out[1] = sum1, out[2] = sum2, out[3] = sum3;
}

static inline __attribute__((always_inline)) void vnni_rows2(__m256 *out, const uint8_t *group, uint32_t blocks,
                                                             const int8_t *xq, const float *xs, const int32_t *start,
                                                             size_t cols, group_prefetch *pf, int q4)
{
    __m256 sum0 = _mm256_setzero_ps(), sum1 = sum0;
    uint32_t block_bytes = group_block_bytes(q4), k;
    for (k = 0; k < blocks; k++) {
        const uint8_t *block = group + (size_t)k * block_bytes;
        __m256 scales = block_scales(block);
        __m256i a[2];
        if (pf) prefetch_until(&pf->next, pf->ahead + (k + 1) * block_bytes, pf->end);
        a[0] = _mm256_set1_epi32(start[k]);
        a[1] = _mm256_set1_epi32(start[blocks + k]);
        unsigned_sums2(a, block, xq + (size_t)k * EL_QBLOCK, cols, q4);
        sum0 = add_scaled(sum0, scales, xs[k], a[0]);
        sum1 = add_scaled(sum1, scales, xs[blocks + k], a[1]);
    }
    out[0] = sum0, out[1] = sum1;
}

static inline __attribute__((always_inline)) __m256 vnni_rows1(const uint8_t *group, uint32_t blocks, const int8_t *xq,
                                                               const float *xs, const int32_t *start,
                                                               group_prefetch *pf, int q4)
{
    __m256 sum = _mm256_setzero_ps();
    uint32_t block_bytes = group_block_bytes(q4), k;
    for (k = 0; k < blocks; k++) {
        const uint8_t *block = group + (size_t)k * block_bytes;
        if (pf) prefetch_until(&pf->next, pf->ahead + (k + 1) * block_bytes, pf->end);
        sum = add_scaled(sum, block_scales(block), xs[k],
                         unsigned_sums1(_mm256_set1_epi32(start[k]), block, xq + (size_t)k * EL_QBLOCK, q4));
    }
    return sum;
}

/* Rows r0..r1 (of a grouped matrix) for activation rows 0..t->batch, four at a time,
 * then two, then one, every one given start[b * blocks + k] = -c * sum of its block k. */
static void matmul_grouped_vnni_rows(const el_matmul_task *t, uint32_t r0, uint32_t r1, const int32_t *start, int q4)
{
    uint32_t cols = t->w->cols, blocks = cols / EL_QBLOCK, grouped = t->w->rows / 8 * 8, r;
    size_t row_bytes = (size_t)blocks * (q4 ? 18u : 34u);
    const uint8_t *base = (const uint8_t *)t->w->data;
    int b;
    for (r = r0 / 8 * 8; r < r1 && r < grouped; r += 8) {
        const uint8_t *group = base + (size_t)r * row_bytes;
        group_prefetch pf;
        __m256 sums[4];
        pf.ahead = pf.next = group + EL_PREFETCH_GROUPS * 8 * row_bytes;
        pf.end = base + (size_t)grouped * row_bytes;
        for (b = 0; b + 4 <= t->batch; b += 4) {
            vnni_rows4(sums, group, blocks, t->xq + (size_t)b * cols, t->xs + (size_t)b * blocks,
                       start + (size_t)b * blocks, cols, b == 0 ? &pf : NULL, q4);
            store_group(t, b, r, r0, r1, sums[0]);
            store_group(t, b + 1, r, r0, r1, sums[1]);
            store_group(t, b + 2, r, r0, r1, sums[2]);
            store_group(t, b + 3, r, r0, r1, sums[3]);
        }
        for (; b + 2 <= t->batch; b += 2) {
            vnni_rows2(sums, group, blocks, t->xq + (size_t)b * cols, t->xs + (size_t)b * blocks,
                       start + (size_t)b * blocks, cols, b == 0 ? &pf : NULL, q4);
            store_group(t, b, r, r0, r1, sums[0]);
            store_group(t, b + 1, r, r0, r1, sums[1]);
        }
        if (b < t->batch)
            store_group(t, b, r, r0, r1, vnni_rows1(group, blocks, t->xq + (size_t)b * cols, t->xs + (size_t)b * blocks,
                                                    start + (size_t)b * blocks, b == 0 ? &pf : NULL, q4));
    }
}

/* The grouped rows r0..r1 with VNNI: each activation block's -c * sum x first, for as
 * many activation rows as fit the stack at a time (all of a prompt's 64 at the 15M
 * shape; a group's weights are read again per slice of rows beyond that). */
static void matmul_grouped_vnni(const el_matmul_task *t, uint32_t r0, uint32_t r1, int q4)
{
    int32_t start[EL_VNNI_START_MAX];
    uint32_t blocks = t->w->cols / EL_QBLOCK, k;
    int slice = (int)(EL_VNNI_START_MAX / blocks), b0, b, i;
    int32_t c = q4 ? 8 : 128;
    for (b0 = 0; b0 < t->batch; b0 += slice) {
        el_matmul_task part = *t;
        part.batch = t->batch - b0 < slice ? t->batch - b0 : slice;
        part.xq = t->xq + (size_t)b0 * t->w->cols;
        part.xs = t->xs + (size_t)b0 * blocks;
        part.y = t->y + (size_t)b0 * t->w->rows;
        for (b = 0; b < part.batch; b++)
            for (k = 0; k < blocks; k++) {
                const int8_t *x = part.xq + (size_t)b * t->w->cols + (size_t)k * EL_QBLOCK;
                int32_t sum = 0;
                for (i = 0; i < EL_QBLOCK; i++) sum += x[i];
                start[(size_t)b * blocks + k] = -c * sum;
            }
        matmul_grouped_vnni_rows(&part, r0, r1, start, q4);
    }
}
/* Rows r0..r1 of a matrix kept in groups of eight: the grouped rows by VNNI (a grouped
 * row has at most EL_GROUP_MAX_BLOCKS blocks, so its offsets fit), the rest as stored. */
static void matmul_grouped(const el_matmul_task *t, uint32_t r0, uint32_t r1, int q4)
{
    uint32_t grouped = t->w->rows / 8 * 8;
    matmul_grouped_vnni(t, r0, r1, q4);
    if (r1 > grouped) matmul_quantized(t, r0 > grouped ? r0 : grouped, r1, q4);
}

#else

/* Step s of a stored block as 32 int8 (Q4_0 unpacked from its pair, minus 8). */
static inline __attribute__((always_inline)) __m256i step_at(const uint8_t *block, int s, int q4)
{
    const uint8_t *steps = block + 16;
    __m256i v;
    if (!q4) return _mm256_loadu_si256((const __m256i *)(const void *)(steps + 32 * s));
    v = _mm256_loadu_si256((const __m256i *)(const void *)(steps + 32 * (s % 4)));
    if (s >= 4) v = _mm256_srli_epi16(v, 4);
    return _mm256_sub_epi8(_mm256_and_si256(v, _mm256_set1_epi8(0x0f)), _mm256_set1_epi8(8));
}

static inline __attribute__((always_inline)) __m256i add_stored_step(__m256i acc, const uint8_t *block,
                                                                     const int8_t *xq, int s, int q4)
{
    __m256i w = step_at(block, s, q4);
    return add_step(acc, w, _mm256_sign_epi8(w, w), xq, s);
}

/* One stored block against one activation block: lane j, row j's exact sum. Written
 * out, two sums alternating so their chains of adds overlap. */
static inline __attribute__((always_inline)) __m256i grouped_sums(const uint8_t *block, const int8_t *xq, int q4)
{
    __m256i a = add_stored_step(_mm256_setzero_si256(), block, xq, 0, q4);
    __m256i b = add_stored_step(_mm256_setzero_si256(), block, xq, 1, q4);
    a = add_stored_step(a, block, xq, 2, q4);
    b = add_stored_step(b, block, xq, 3, q4);
    a = add_stored_step(a, block, xq, 4, q4);
    b = add_stored_step(b, block, xq, 5, q4);
    a = add_stored_step(a, block, xq, 6, q4);
    b = add_stored_step(b, block, xq, 7, q4);
    return _mm256_add_epi32(a, b);
}

/* One step for two activation blocks: the step's bytes and magnitudes are shared. */
static inline __attribute__((always_inline)) void add_stored_step2(__m256i *acc0, __m256i *acc1, const uint8_t *block,
                                                                   const int8_t *xq0, const int8_t *xq1, int s, int q4)
{
    __m256i w = step_at(block, s, q4), magnitude = _mm256_sign_epi8(w, w);
    *acc0 = add_step(*acc0, w, magnitude, xq0, s);
    *acc1 = add_step(*acc1, w, magnitude, xq1, s);
}

static inline __attribute__((always_inline)) void grouped_sums2(__m256i *sums0, __m256i *sums1, const uint8_t *block,
                                                                const int8_t *xq0, const int8_t *xq1, int q4)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0;
    add_stored_step2(&a0, &a1, block, xq0, xq1, 0, q4);
    add_stored_step2(&a0, &a1, block, xq0, xq1, 1, q4);
    add_stored_step2(&a0, &a1, block, xq0, xq1, 2, q4);
    add_stored_step2(&a0, &a1, block, xq0, xq1, 3, q4);
    add_stored_step2(&a0, &a1, block, xq0, xq1, 4, q4);
    add_stored_step2(&a0, &a1, block, xq0, xq1, 5, q4);
    add_stored_step2(&a0, &a1, block, xq0, xq1, 6, q4);
    add_stored_step2(&a0, &a1, block, xq0, xq1, 7, q4);
    *sums0 = a0;
    *sums1 = a1;
}

/* Four activation rows over one stored block: the steps' bytes and magnitudes are
 * loaded and made once for the four (the prompt's and a batch's usual case). */
static inline __attribute__((always_inline)) void grouped_sums4(__m256i *sums, const uint8_t *block, const int8_t *xq,
                                                                size_t cols, int q4)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int s;
    for (s = 0; s < 8; s++) {
        __m256i w = step_at(block, s, q4), magnitude = _mm256_sign_epi8(w, w);
        a0 = add_step(a0, w, magnitude, xq, s);
        a1 = add_step(a1, w, magnitude, xq + cols, s);
        a2 = add_step(a2, w, magnitude, xq + 2 * cols, s);
        a3 = add_step(a3, w, magnitude, xq + 3 * cols, s);
    }
    sums[0] = a0;
    sums[1] = a1;
    sums[2] = a2;
    sums[3] = a3;
}

/* Rows r0..r1 of a matrix in groups of eight, activation rows four at a time, then two,
 * then one (a group's weights stay in L1 while the batch passes). A range that starts or ends inside a group
 * (the tests split anywhere; the workers split at tiles of 16) computes the whole group
 * and keeps its rows of the range. */
static inline __attribute__((always_inline)) void matmul_grouped(const el_matmul_task *t, uint32_t r0, uint32_t r1,
                                                                 int q4)
{
    uint32_t cols = t->w->cols, blocks = cols / EL_QBLOCK, grouped = t->w->rows / 8 * 8, r, k;
    uint32_t block_bytes = group_block_bytes(q4);
    size_t row_bytes = (size_t)blocks * (q4 ? 18u : 34u);
    const uint8_t *base = (const uint8_t *)t->w->data, *end = base + (size_t)grouped * row_bytes;
    int b;
    for (r = r0 / 8 * 8; r < r1 && r < grouped; r += 8) {
        const uint8_t *group = base + (size_t)r * row_bytes;
        const uint8_t *ahead = group + EL_PREFETCH_GROUPS * 8 * row_bytes, *next = ahead;
        for (b = 0; b + 4 <= t->batch; b += 4) {
            const int8_t *xq = t->xq + (size_t)b * cols;
            const float *xs = t->xs + (size_t)b * blocks;
            __m256 sum0 = _mm256_setzero_ps(), sum1 = sum0, sum2 = sum0, sum3 = sum0;
            for (k = 0; k < blocks; k++) {
                const uint8_t *block = group + (size_t)k * block_bytes;
                __m256 scales = block_scales(block);
                __m256i sums[4];
                if (b == 0) prefetch_until(&next, ahead + (k + 1) * block_bytes, end);
                grouped_sums4(sums, block, xq + (size_t)k * EL_QBLOCK, cols, q4);
                sum0 = add_scaled(sum0, scales, xs[k], sums[0]);
                sum1 = add_scaled(sum1, scales, xs[blocks + k], sums[1]);
                sum2 = add_scaled(sum2, scales, xs[2 * blocks + k], sums[2]);
                sum3 = add_scaled(sum3, scales, xs[3 * blocks + k], sums[3]);
            }
            store_group(t, b, r, r0, r1, sum0);
            store_group(t, b + 1, r, r0, r1, sum1);
            store_group(t, b + 2, r, r0, r1, sum2);
            store_group(t, b + 3, r, r0, r1, sum3);
        }
        for (; b + 2 <= t->batch; b += 2) {
            const int8_t *xq0 = t->xq + (size_t)b * cols, *xq1 = xq0 + cols;
            const float *xs0 = t->xs + (size_t)b * blocks, *xs1 = xs0 + blocks;
            __m256 sum0 = _mm256_setzero_ps(), sum1 = sum0;
            for (k = 0; k < blocks; k++) {
                const uint8_t *block = group + (size_t)k * block_bytes;
                __m256i sums0, sums1;
                if (b == 0) prefetch_until(&next, ahead + (k + 1) * block_bytes, end);
                grouped_sums2(&sums0, &sums1, block, xq0 + (size_t)k * EL_QBLOCK, xq1 + (size_t)k * EL_QBLOCK, q4);
                sum0 = add_scaled(sum0, block_scales(block), xs0[k], sums0);
                sum1 = add_scaled(sum1, block_scales(block), xs1[k], sums1);
            }
            store_group(t, b, r, r0, r1, sum0);
            store_group(t, b + 1, r, r0, r1, sum1);
        }
        if (b < t->batch) { /* one row: alone, or the last of an odd batch */
            const int8_t *xq = t->xq + (size_t)b * cols;
            const float *xs = t->xs + (size_t)b * blocks;
            __m256 sum = _mm256_setzero_ps();
            for (k = 0; k < blocks; k++) {
                const uint8_t *block = group + (size_t)k * block_bytes;
                if (b == 0) prefetch_until(&next, ahead + (k + 1) * block_bytes, end);
                sum = add_scaled(sum, block_scales(block), xs[k], grouped_sums(block, xq + (size_t)k * EL_QBLOCK, q4));
            }
            store_group(t, b, r, r0, r1, sum);
        }
    }
    if (r1 > grouped) matmul_quantized(t, r0 > grouped ? r0 : grouped, r1, q4);
}

#endif

void el_kernel_matmul_q8_0(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    if (t->w->layout == EL_LAYOUT_GROUPS_OF_8) matmul_grouped(t, r0, r1, 0);
    else matmul_quantized(t, r0, r1, 0);
}

void el_kernel_matmul_q4_0(const el_matmul_task *t, uint32_t r0, uint32_t r1)
{
    if (t->w->layout == EL_LAYOUT_GROUPS_OF_8) matmul_grouped(t, r0, r1, 1);
    else matmul_quantized(t, r0, r1, 1);
}

/* ------------------------------------------------------------ activations to int8 */

/* The largest |x| of a block as float bits (sign cleared): for non-negative floats the
 * integer order is the float order, so this is the portable maximum's bits, except that
 * a NaN (bits above +Inf's) wins instead of being skipped: the caller sees it. */
static uint32_t block_amax_bits(const __m256 *v)
{
    const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
    __m256i m = _mm256_and_si256(_mm256_castps_si256(v[0]), magnitude);
    __m128i m4;
    int j;
    for (j = 1; j < 4; j++) m = _mm256_max_epi32(m, _mm256_and_si256(_mm256_castps_si256(v[j]), magnitude));
    m4 = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, 0x4e));
    m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, 0xb1));
    return (uint32_t)_mm_cvtsi128_si32(m4);
}

void el_kernel_quantize_blocks(int8_t *q, float *scales, const float *x, int n_blocks)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), zero = _mm256_setzero_ps();
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int blk, j;
    for (blk = 0; blk < n_blocks; blk++) {
        const float *xb = x + (size_t)blk * EL_QBLOCK;
        __m256 v[4];
        __m256i n[4], packed;
        uint32_t amax_bits;
        float amax, inverse;
        for (j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(xb + 8 * j);
        amax_bits = block_amax_bits(v);
        /* NaN or Inf (bits from +Inf's up): the portable code defines that block (zeros
         * under a NaN scale); the vector conversion would make finite garbage of it */
        if (amax_bits >= 0x7f800000u) {
            el_quantize_int8(q + (size_t)blk * EL_QBLOCK, &scales[blk], xb, EL_QBLOCK);
            continue;
        }
        amax = _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128((int)amax_bits)));
        scales[blk] = amax / 127.0f;
        inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
        if (inverse > EL_QUANT_INVERSE_MAX) { /* a block of near-zero values: the portable rule */
            el_quantize_int8(q + (size_t)blk * EL_QBLOCK, &scales[blk], xb, EL_QBLOCK);
            continue;
        }
        for (j = 0; j < 4; j++) {
            __m256 s = _mm256_mul_ps(v[j], _mm256_set1_ps(inverse));
            /* + 0.5 where s >= 0, else - 0.5, then truncate: the portable rounding */
            __m256 h = _mm256_blendv_ps(_mm256_or_ps(half, sign), half, _mm256_cmp_ps(s, zero, _CMP_GE_OQ));
            n[j] = _mm256_cvttps_epi32(_mm256_add_ps(s, h));
        }
        packed = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
        _mm256_storeu_si256((__m256i *)(void *)(q + (size_t)blk * EL_QBLOCK),
                            _mm256_permutevar8x32_epi32(packed, order));
    }
}

/* ------------------------------------------------------------ dot, axpy */

float el_kernel_dot(const float *a, const float *b, int n)
{
    __m256 acc = _mm256_setzero_ps();
    float sum;
    int i, whole = n - n % 8;
    for (i = 0; i < whole; i += 8)
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    sum = combine1(acc);
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

void el_kernel_axpy(float *y, float a, const float *x, int n)
{
    __m256 av = _mm256_set1_ps(a);
    int i, whole = n - n % 8;
    for (i = 0; i < whole; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(av, _mm256_loadu_ps(x + i))));
    for (; i < n; i++) y[i] += a * x[i];
}

static __m256 key_product(__m256 qv, const float *keys, size_t stride, int k, int i)
{
    return _mm256_mul_ps(qv, _mm256_loadu_ps(keys + (size_t)k * stride + (size_t)i));
}

/* Eight keys at a time, their eight-lane sums in eight registers, combined in one go.
 * Heads whose size is not a multiple of eight go key by key (a tail per key). */
void el_kernel_key_dots(float *out, const float *q, const float *keys, size_t stride, int n_keys, int n, float scale)
{
    int j = 0, i;
    if (n % 8 == 0)
        for (; j + 8 <= n_keys; j += 8) {
            const float *key = keys + (size_t)j * stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
            for (i = 0; i < n; i += 8) {
                __m256 qv = _mm256_loadu_ps(q + i);
                a0 = _mm256_add_ps(a0, key_product(qv, key, stride, 0, i));
                a1 = _mm256_add_ps(a1, key_product(qv, key, stride, 1, i));
                a2 = _mm256_add_ps(a2, key_product(qv, key, stride, 2, i));
                a3 = _mm256_add_ps(a3, key_product(qv, key, stride, 3, i));
                a4 = _mm256_add_ps(a4, key_product(qv, key, stride, 4, i));
                a5 = _mm256_add_ps(a5, key_product(qv, key, stride, 5, i));
                a6 = _mm256_add_ps(a6, key_product(qv, key, stride, 6, i));
                a7 = _mm256_add_ps(a7, key_product(qv, key, stride, 7, i));
            }
            _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_set1_ps(scale), combine8(a0, a1, a2, a3, a4, a5, a6, a7)));
        }
    for (; j < n_keys; j++) out[j] = scale * el_kernel_dot(q, keys + (size_t)j * stride, n);
}

/* acc + w * values[i..i+7] (multiply, then add) */
static inline __attribute__((always_inline)) __m256 add_weighted(__m256 acc, __m256 w, const float *v)
{
    return _mm256_add_ps(acc, _mm256_mul_ps(w, _mm256_loadu_ps(v)));
}

/* `regs` registers of outputs (8 * regs floats, regs <= 8) stay put while every value
 * adds its share, in value order; the registers are independent chains of adds, so they
 * overlap. regs is a constant where this is inlined: the tests on it fold away and the
 * accumulators stay in registers (an array of them went through the stack). */
static inline __attribute__((always_inline)) void value_sum_regs(float *out, const float *weights,
                                                                 const float *values, size_t stride, int n_values,
                                                                 int regs)
{
    __m256 a0 = _mm256_loadu_ps(out), zero = _mm256_setzero_ps();
    __m256 a1 = regs > 1 ? _mm256_loadu_ps(out + 8) : zero, a2 = regs > 2 ? _mm256_loadu_ps(out + 16) : zero;
    __m256 a3 = regs > 3 ? _mm256_loadu_ps(out + 24) : zero, a4 = regs > 4 ? _mm256_loadu_ps(out + 32) : zero;
    __m256 a5 = regs > 5 ? _mm256_loadu_ps(out + 40) : zero, a6 = regs > 6 ? _mm256_loadu_ps(out + 48) : zero;
    __m256 a7 = regs > 7 ? _mm256_loadu_ps(out + 56) : zero;
    int j;
    for (j = 0; j < n_values; j++) {
        const float *v = values + (size_t)j * stride;
        __m256 w = _mm256_set1_ps(weights[j]);
        a0 = add_weighted(a0, w, v);
        if (regs > 1) a1 = add_weighted(a1, w, v + 8);
        if (regs > 2) a2 = add_weighted(a2, w, v + 16);
        if (regs > 3) a3 = add_weighted(a3, w, v + 24);
        if (regs > 4) a4 = add_weighted(a4, w, v + 32);
        if (regs > 5) a5 = add_weighted(a5, w, v + 40);
        if (regs > 6) a6 = add_weighted(a6, w, v + 48);
        if (regs > 7) a7 = add_weighted(a7, w, v + 56);
    }
    _mm256_storeu_ps(out, a0);
    if (regs > 1) _mm256_storeu_ps(out + 8, a1);
    if (regs > 2) _mm256_storeu_ps(out + 16, a2);
    if (regs > 3) _mm256_storeu_ps(out + 24, a3);
    if (regs > 4) _mm256_storeu_ps(out + 32, a4);
    if (regs > 5) _mm256_storeu_ps(out + 40, a5);
    if (regs > 6) _mm256_storeu_ps(out + 48, a6);
    if (regs > 7) _mm256_storeu_ps(out + 56, a7);
}

/* A head of up to 64 floats in one pass over the values (48: six chains at once). */
void el_kernel_value_sum(float *out, const float *weights, const float *values, size_t stride, int n_values, int n)
{
    int i = 0, j, whole = n - n % 8;
    for (; i + 64 <= whole; i += 64) value_sum_regs(out + i, weights, values + i, stride, n_values, 8);
    switch ((whole - i) / 8) {
    case 7: value_sum_regs(out + i, weights, values + i, stride, n_values, 7); break;
    case 6: value_sum_regs(out + i, weights, values + i, stride, n_values, 6); break;
    case 5: value_sum_regs(out + i, weights, values + i, stride, n_values, 5); break;
    case 4: value_sum_regs(out + i, weights, values + i, stride, n_values, 4); break;
    case 3: value_sum_regs(out + i, weights, values + i, stride, n_values, 3); break;
    case 2: value_sum_regs(out + i, weights, values + i, stride, n_values, 2); break;
    case 1: value_sum_regs(out + i, weights, values + i, stride, n_values, 1); break;
    default: break;
    }
    for (i = whole; i < n; i++)
        for (j = 0; j < n_values; j++) out[i] += weights[j] * values[(size_t)j * stride + i];
}

/* ------------------------------------------------------------ exp */

/* el_expf (el_math.c) on eight lanes: the same operations in the same order. Inlined,
 * so two calls side by side overlap their long chains of dependent multiply-adds. */
static inline __attribute__((always_inline)) __m256 expf8(__m256 x)
{
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    const __m256 zero = _mm256_setzero_ps(), half = _mm256_set1_ps(0.5f), minus_half = _mm256_set1_ps(-0.5f);
    __m256 h = _mm256_blendv_ps(minus_half, half, _mm256_cmp_ps(x, zero, _CMP_GE_OQ));
    __m256i n = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), h));
    __m256 nf = _mm256_cvtepi32_ps(n), r, p, factor;
    __m256i low = _mm256_cmpgt_epi32(_mm256_set1_epi32(-126), n), high = _mm256_cmpgt_epi32(n, _mm256_set1_epi32(127));
    __m256i e, special = _mm256_or_si256(low, high);
    r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(nf, _mm256_set1_ps(ln2_hi))),
                      _mm256_mul_ps(nf, _mm256_set1_ps(ln2_lo)));
    p = _mm256_add_ps(_mm256_set1_ps(1.0f / 720), _mm256_mul_ps(r, _mm256_set1_ps(1.0f / 5040)));
    p = _mm256_add_ps(_mm256_set1_ps(1.0f / 120), _mm256_mul_ps(r, p));
    p = _mm256_add_ps(_mm256_set1_ps(1.0f / 24), _mm256_mul_ps(r, p));
    p = _mm256_add_ps(_mm256_set1_ps(1.0f / 6), _mm256_mul_ps(r, p));
    p = _mm256_add_ps(_mm256_set1_ps(0.5f), _mm256_mul_ps(r, p));
    p = _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(r, p));
    p = _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(r, p));
    /* Every lane with -126 <= n <= 127 (the usual case): p * 2^n is all there is, since
     * the rest below picks n itself and multiplies by 1. A NaN's n is INT_MIN (low), an x
     * past either early return has n past either end: they take the long way. */
    if (_mm256_testz_si256(special, special))
        return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23)));
    /* p * 2^n, or (p * 2^(n+100)) * 2^-100 below -126, or (p * 2^(n-1)) * 2 above 127 */
    e = _mm256_blendv_epi8(n, _mm256_add_epi32(n, _mm256_set1_epi32(100)), low);
    e = _mm256_blendv_epi8(e, _mm256_sub_epi32(n, _mm256_set1_epi32(1)), high);
    factor = _mm256_blendv_ps(_mm256_set1_ps(1.0f), _mm256_set1_ps(7.888609052210118e-31f) /* 2^-100 */,
                              _mm256_castsi256_ps(low));
    factor = _mm256_blendv_ps(factor, _mm256_set1_ps(2.0f), _mm256_castsi256_ps(high));
    e = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23); /* 2^e as float bits */
    p = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), factor);
    /* el_expf's early returns: inf above 88.72283, 0 below -103.97208, NaN as it came */
    p = _mm256_blendv_ps(p, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, _mm256_set1_ps(88.72283f), _CMP_GT_OQ));
    p = _mm256_blendv_ps(p, zero, _mm256_cmp_ps(x, _mm256_set1_ps(-103.97208f), _CMP_LT_OQ));
    return _mm256_blendv_ps(p, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

void el_kernel_exp_shifted(float *w, const float *x, float shift, int n)
{
    __m256 s = _mm256_set1_ps(shift);
    int i = 0, whole = n - n % 8;
    for (; i + 16 <= whole; i += 16) {
        __m256 a = expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        __m256 b = expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), s));
        _mm256_storeu_ps(w + i, a);
        _mm256_storeu_ps(w + i + 8, b);
    }
    for (; i < whole; i += 8) _mm256_storeu_ps(w + i, expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
    if (i < n) { /* the last few in lanes too (attention's rows end anywhere): el_expf's bits per lane */
        float in[8] = {0, 0, 0, 0, 0, 0, 0, 0}, out[8];
        memcpy(in, x + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(out, expf8(_mm256_sub_ps(_mm256_loadu_ps(in), s)));
        memcpy(w + i, out, sizeof(float) * (size_t)(n - i));
    }
}

void el_kernel_swiglu(float *gate, const float *up, int n)
{
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int i, whole = n - n % 8;
    for (i = 0; i < whole; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = expf8(_mm256_xor_ps(g, sign));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
    if (i < n) el_portable_swiglu(gate + i, up + i, n - i);
}

#else
typedef int el_kernels_avx2_unused;
#endif
