/* el_math.c: exp, log, sqrt, sin/cos and pow without libm. */
#include "el_math.h"

#include <stdint.h>

static double bits_to_double(uint64_t bits)
{
    union { uint64_t u; double d; } v;
    v.u = bits;
    return v.d;
}

static uint64_t double_to_bits(double d)
{
    union { uint64_t u; double d; } v;
    v.d = d;
    return v.u;
}

/* 2**n for -126 <= n <= 127. */
static float pow2i(int n) { return el_bits_float((uint32_t)(n + 127) << 23); }

float el_expf(float x)
{
    /* exp(x) = 2**n * exp(r), r = x - n*ln2 in [-ln2/2, ln2/2]; degree-7 Taylor there
     * is accurate to about one ulp. ln2 is split in two so n*ln2_hi is exact. */
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    float r, p;
    int n;
    if (x != x) return x;
    if (x > 88.72283f) return el_bits_float(0x7f800000u);
    if (x < -103.97208f) return 0.0f;
    n = (int)(x * 1.44269504f + (x >= 0.0f ? 0.5f : -0.5f));
    r = (x - (float)n * ln2_hi) - (float)n * ln2_lo;
    p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120
        + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    if (n < -126) return p * pow2i(n + 100) * pow2i(-100);
    if (n > 127) return p * pow2i(n - 1) * 2.0f;
    return p * pow2i(n);
}

float el_logf(float x)
{
    double m, s, s2;
    int e;
    uint32_t bits = el_float_bits(x);
    if (x != x || x < 0.0f) return el_bits_float(0x7fc00000u);
    if (x == 0.0f) return el_bits_float(0xff800000u);
    if (bits >= 0x7f800000u) return x;
    if (bits < 0x00800000u) return el_logf(x * 16777216.0f) - 16.635532333438686f; /* subnormal: x * 2**24 */
    e = (int)(bits >> 23) - 127;
    m = (double)el_bits_float((bits & 0x007fffffu) | 0x3f800000u); /* in [1, 2) */
    if (m > 1.4142135623730951) {
        m *= 0.5;
        e += 1;
    }
    /* log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.172: the series converges fast. */
    s = (m - 1.0) / (m + 1.0);
    s2 = s * s;
    return (float)(e * 0.6931471805599453 + 2.0 * s * (1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7
        + s2 * (1.0 / 9 + s2 * (1.0 / 11)))))));
}

float el_sqrtf(float x)
{
    /* Newton's method in double from a bit-level guess; three steps reach double
     * precision, and rounding to float then gives the correctly rounded root. */
    double d = x, y;
    int i, exponent;
    if (x != x || x < 0.0f) return el_bits_float(0x7fc00000u);
    if (x == 0.0f || el_float_bits(x) >= 0x7f800000u) return x;
    exponent = (int)((double_to_bits(d) >> 52) & 0x7ff) - 1023; /* floats are never subnormal doubles */
    y = bits_to_double((uint64_t)(exponent / 2 + 1023) << 52);   /* within a factor 2 of the root */
    for (i = 0; i < 6; i++) y = 0.5 * (y + d / y);
    return (float)y;
}

void el_sincosf(float angle, float *sine, float *cosine)
{
    /* Reduce to r in [-pi/4, pi/4] with quadrant q (pi/2 split in three parts so the
     * reduction stays exact for the angles RoPE uses), then Taylor series in double. */
    const double pio2_1 = 1.57079632673412561417e+00, pio2_2 = 6.07710050650619224932e-11,
                 pio2_3 = 2.02226624879595063154e-21;
    double x = angle, r, r2, s, c;
    long k;
    int quadrant;
    /* RoPE's angles are positions times frequencies of at most 1 (el_model.c refuses a
     * base below 1), so |x| < 2^31 and k fits a 32-bit long; anything else is not an
     * angle this runtime makes, and gets a defined answer instead of an overflow */
    if (!(x > -2147483647.0 && x < 2147483647.0)) {
        *sine = 0.0f;
        *cosine = 1.0f;
        return;
    }
    k = (long)(x * 0.63661977236758134308 + (x >= 0 ? 0.5 : -0.5));
    r = ((x - (double)k * pio2_1) - (double)k * pio2_2) - (double)k * pio2_3;
    r2 = r * r;
    s = r * (1.0 - r2 / 6 * (1.0 - r2 / 20 * (1.0 - r2 / 42 * (1.0 - r2 / 72 * (1.0 - r2 / 110 * (1.0 - r2 / 156))))));
    c = 1.0 - r2 / 2 * (1.0 - r2 / 12 * (1.0 - r2 / 30 * (1.0 - r2 / 56 * (1.0 - r2 / 90 * (1.0 - r2 / 132)))));
    quadrant = (int)(k & 3);
    if (quadrant == 0) { *sine = (float)s;  *cosine = (float)c; }
    else if (quadrant == 1) { *sine = (float)c;  *cosine = (float)-s; }
    else if (quadrant == 2) { *sine = (float)-s; *cosine = (float)-c; }
    else { *sine = (float)-c; *cosine = (float)s; }
}

static double exp_double(double x)
{
    /* Only for tables: exp by halving until small, Taylor, then squaring back. */
    double term = 1.0, sum = 1.0;
    int halvings = 0, i;
    while (x > 0.5 || x < -0.5) {
        x *= 0.5;
        halvings++;
    }
    for (i = 1; i < 20; i++) {
        term *= x / i;
        sum += term;
    }
    while (halvings-- > 0) sum *= sum;
    return sum;
}

static double log_double(double x)
{
    uint64_t bits = double_to_bits(x);
    int e = (int)((bits >> 52) & 0x7ff) - 1023;
    double m = bits_to_double((bits & 0x000fffffffffffffull) | (1023ull << 52)), s, s2, term, sum;
    int i;
    if (m > 1.4142135623730951) {
        m *= 0.5;
        e += 1;
    }
    s = (m - 1.0) / (m + 1.0);
    s2 = s * s;
    term = s;
    sum = 0.0;
    for (i = 1; i < 40; i += 2) {
        sum += term / i;
        term *= s2;
    }
    return e * 0.69314718055994530942 + 2.0 * sum;
}

double el_pow(double base, double exponent)
{
    if (base <= 0.0) return 0.0;
    return exp_double(exponent * log_double(base));
}
