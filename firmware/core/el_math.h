/* el_math.h: the runtime's own elementary functions.
 *
 * libm differs between targets (newlib's expf, sinf, cosf give different bits on
 * Cortex-M3/M4/M7), so the core never calls it. These are plain float/double
 * arithmetic, which is IEEE-exact on every target when built with -std=c99 (no FMA
 * contraction), so the same input gives the same bits everywhere.
 */
#ifndef EL_MATH_H
#define EL_MATH_H

#include <stdint.h>

/* A float's bits and back, through a union (C99 allows it). Inline, so a compiler that
 * vectorizes a loop sees through them. */
static inline uint32_t el_float_bits(float f)
{
    union { uint32_t u; float f; } v;
    v.f = f;
    return v.u;
}

static inline float el_bits_float(uint32_t u)
{
    union { uint32_t u; float f; } v;
    v.u = u;
    return v.f;
}

float el_expf(float x);
float el_logf(float x);
float el_sqrtf(float x);
/* Both of one angle at once, as RoPE needs; evaluated in double. */
void el_sincosf(float angle, float *sine, float *cosine);
/* base ** exponent for base > 0, in double (used for tables computed once). */
double el_pow(double base, double exponent);

#endif
