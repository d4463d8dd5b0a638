/* el_kernel_ops.h: the per-target kernels behind el_kernels.h, and which one a build gets.
 *
 * Each target has one file beside the portable one, implementing every el_kernel_*
 * function below (calling el_portable_* for any it does not speed up):
 *
 *   el_kernels_portable.c   plain C99, every target; always compiled (the reference)
 *   el_kernels_avx2.c       x86-64 with AVX2 and F16C, and VNNI where the compiler has it
 *   el_kernels_neon.c       ARM NEON: aarch64 (with or without the dot-product extension) and armv7 with NEON
 *   el_kernels_rvv.c        RISC-V vector extension 1.0
 *   el_kernels_armv7m.c     Cortex-M4/M7/M33 DSP instructions (SMLAD)
 *
 * The choice is made at build time from the compiler's own target macros, which come
 * from the board file's flags (-mcpu=cortex-a76 turns on the dot product, cortex-a72
 * does not); defining EL_PORTABLE_KERNELS forces the portable path anywhere.
 *
 * The rule every implementation keeps: the same bits as the portable path. Float sums
 * run in the portable order (eight lanes i % 8 combined pairwise, or block by block in
 * block order); int8 dot products are exact integer sums, scaled in the portable order.
 */
#ifndef EL_KERNEL_OPS_H
#define EL_KERNEL_OPS_H

#include "el_model.h"

#if defined(EL_PORTABLE_KERNELS)
#define EL_KERNELS_PORTABLE 1
#define EL_KERNELS_NAME "portable"
#elif defined(__AVX2__) && defined(__F16C__) && (defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__)))
#define EL_KERNELS_AVX2 1
#define EL_KERNELS_AVX_VNNI 1 /* vpdpbusd on 256-bit registers: AVX-VNNI, or AVX-512 VNNI with VL */
#define EL_KERNELS_NAME "avx2-vnni"
#elif defined(__AVX2__) && defined(__F16C__)
#define EL_KERNELS_AVX2 1
#define EL_KERNELS_NAME "avx2"
#elif defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD) && defined(__aarch64__)
#define EL_KERNELS_NEON 1
#define EL_KERNELS_NAME "neon-dotprod"
#elif defined(__ARM_NEON)
#define EL_KERNELS_NEON 1
#define EL_KERNELS_NAME "neon"
#elif defined(__riscv_vector)
#define EL_KERNELS_RVV 1
#define EL_KERNELS_NAME "rvv"
#elif defined(__ARM_FEATURE_DSP) && !defined(__ARM_NEON) && defined(__thumb2__)
#define EL_KERNELS_ARMV7M 1
#define EL_KERNELS_NAME "cortex-m-dsp"
#else
#define EL_KERNELS_PORTABLE 1
#define EL_KERNELS_NAME "portable"
#endif

#define EL_QBLOCK 32

/* One matmul, y[b][r] = W[r] . x[b] for b < batch; a kernel computes rows [r0, r1). */
typedef struct {
    float *y;               /* batch x w->rows */
    const el_matrix *w;
    const float *x;         /* batch x w->cols floats (F32 and F16 weights) */
    const int8_t *xq;       /* batch x w->cols int8 (Q8_0 and Q4_0 weights) */
    const float *xs;        /* batch x w->cols / 32 block scales */
    int batch;
} el_matmul_task;

/* ---- implemented once per target ---- */

/* F32: per row, a . b in the eight-lane order (see el_portable_dot). */
void el_kernel_matmul_f32(const el_matmul_task *t, uint32_t r0, uint32_t r1);
/* F16: the same order, on the weights converted to float. */
void el_kernel_matmul_f16(const el_matmul_task *t, uint32_t r0, uint32_t r1);
/* Q8_0 and Q4_0: per block an exact int32 sum of int8 products; then, block by block,
 * sum += (weight scale * activation scale) * (float)block_sum. */
void el_kernel_matmul_q8_0(const el_matmul_task *t, uint32_t r0, uint32_t r1);
void el_kernel_matmul_q4_0(const el_matmul_task *t, uint32_t r0, uint32_t r1);
/* Rearrange a matrix's bytes in place into this target's faster layout, once, at load:
 * data is w->data's bytes, writable. Returns 1 and sets w->layout when it did, 0 when
 * the target keeps the file's layout (every target but AVX2, and AVX2 for all but Q8_0 and Q4_0). */
int el_kernel_arrange(el_matrix *w, uint8_t *data);
/* n_blocks blocks of 32 floats to int8, each with scale max|x| / 127 (el_quantize_int8). */
void el_kernel_quantize_blocks(int8_t *q, float *scales, const float *x, int n_blocks);
/* a . b in the eight-lane order. */
float el_kernel_dot(const float *a, const float *b, int n);
/* y[i] += a * x[i] (attention's weighted values). */
void el_kernel_axpy(float *y, float a, const float *x, int n);
/* Attention over the positions of one cache block, which lie `stride` floats apart:
 * out[j] = scale * (q . keys[j * stride ...]) for j < n_keys, each dot in the eight-lane
 * order; and out[i] += weights[j] * values[j * stride + i] for j = 0, 1, ... in order. */
void el_kernel_key_dots(float *out, const float *q, const float *keys, size_t stride, int n_keys, int n, float scale);
void el_kernel_value_sum(float *out, const float *weights, const float *values, size_t stride, int n_values, int n);
/* gate[i] = gate[i] / (1 + el_expf(-gate[i])) * up[i] */
void el_kernel_swiglu(float *gate, const float *up, int n);
/* w[i] = el_expf(x[i] - shift) (the sampler's weights; shift is finite) */
void el_kernel_exp_shifted(float *w, const float *x, float shift, int n);

/* For a target without its own attention kernels: loops over its el_kernel_dot and
 * el_kernel_axpy (el_kernels.c). */
void el_key_dots_by_dot(float *out, const float *q, const float *keys, size_t stride, int n_keys, int n, float scale);
void el_value_sum_by_axpy(float *out, const float *weights, const float *values, size_t stride, int n_values, int n);

/* ---- the portable implementations, always there (targets fall back to them) ---- */

void el_portable_matmul_f32(const el_matmul_task *t, uint32_t r0, uint32_t r1);
void el_portable_matmul_f16(const el_matmul_task *t, uint32_t r0, uint32_t r1);
void el_portable_matmul_q8_0(const el_matmul_task *t, uint32_t r0, uint32_t r1);
void el_portable_matmul_q4_0(const el_matmul_task *t, uint32_t r0, uint32_t r1);
void el_portable_quantize_blocks(int8_t *q, float *scales, const float *x, int n_blocks);
float el_portable_dot(const float *a, const float *b, int n);
void el_portable_axpy(float *y, float a, const float *x, int n);
void el_portable_key_dots(float *out, const float *q, const float *keys, size_t stride, int n_keys, int n,
                          float scale);
void el_portable_value_sum(float *out, const float *weights, const float *values, size_t stride, int n_values,
                           int n);
void el_portable_swiglu(float *gate, const float *up, int n);
void el_portable_exp_shifted(float *w, const float *x, float shift, int n);

/* Number formats the kernels share. */
float el_fp16_to_f32(uint16_t h);
/* n values to int8 with one scale, llama.cpp's Q8_0 rule: scale = max |x| / 127,
 * q = (int)(v + 0.5f) or (int)(v - 0.5f) for v = x * (127 / max |x|). */
void el_quantize_int8(int8_t *q, float *scale, const float *x, int n);
/* The largest finite float: a block whose 127 / amax exceeds it is all near-zero values,
 * and every kernel leaves it to el_quantize_int8 (zeros under its scale). */
#define EL_QUANT_INVERSE_MAX 3.4028235e38f

#endif
