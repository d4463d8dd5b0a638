/* el_kernels.h: the arithmetic of the forward pass.
 *
 * Every output is computed in one fixed order that does not depend on the batch, the
 * thread count or the target's vector unit, so a token gets the same bits alone or in
 * a batch of eight, on one thread or four, and on every target. The per-target
 * implementations sit behind el_kernel_ops.h.
 */
#ifndef EL_KERNELS_H
#define EL_KERNELS_H

#include "el_kernel_ops.h"
#include "el_parallel.h"

/* Activations quantized to int8 in blocks of 32 (one float scale per block), so dot
 * products with Q8_0/Q4_0 weights are exact integer sums per block. */
typedef struct {
    int8_t *values;  /* batch * cols */
    float *scales;   /* batch * cols / 32 */
} el_qactivations;

/* The kernels this build runs ("avx2", "neon", "portable", ...). */
const char *el_kernels_name(void);

/* y[b][r] = W[r] . x[b] for b < batch, rows split over the workers of `parallel`
 * (NULL: this thread). `q` is scratch for the quantized x (Q8_0 and Q4_0 weights). */
void el_matmul(float *y, const el_matrix *w, const float *x, int batch, el_qactivations *q,
               const el_parallel *parallel);

/* The same for n <= EL_MAX_MATMULS matrices of one row length that read the same x (q, k
 * and v; gate and up): x is quantized once, and all their rows are one task for the
 * workers, one hand-off instead of n. */
#define EL_MAX_MATMULS 3
void el_matmuls(float *const *ys, const el_matrix *const *ws, int n, const float *x, int batch, el_qactivations *q,
                const el_parallel *parallel);

/* a . b in the runtime's one summation order (el_kernel_dot's) with int8 b (an int8 KV
 * cache's keys, before their scale). */
float el_dot_int8(const float *a, const int8_t *b, int n);

/* One row of a matrix as floats (the embedding lookup), in either layout. */
void el_matrix_row(float *out, const el_matrix *w, uint32_t row);

/* Let the kernels rearrange every weight matrix in place for their own layout, once, at
 * load (el_kernel_arrange): writable_file is the bytes the model was loaded from,
 * writable and private to it (a copy-on-write mapping). A matrix shared by two names
 * (a tied classifier) is rearranged once and both names see the new layout. */
void el_arrange_weights(el_model *model, uint8_t *writable_file);

void el_rmsnorm(float *out, const float *x, const float *weight, int n, float eps);
/* The rotation of position pos: cos and sin of pos * freqs[i] for i < head_dim / 2
 * (sincos costs far more than the rotation: computed once per row, used by every
 * layer's q and k). */
void el_rope_angles(float *cos_sin, int head_dim, int pos, const float *freqs);
/* Rotate adjacent pairs (x[2i], x[2i+1]) of each head by the angles (cos, sin pairs). */
void el_rope(float *x, int n_heads, int head_dim, const float *cos_sin);
void el_softmax(float *x, int n);
/* gate[i] = silu(gate[i]) * up[i] */
void el_swiglu(float *gate, const float *up, int n);

#endif
