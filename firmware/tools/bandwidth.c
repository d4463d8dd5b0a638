/* bandwidth.c: how fast one thread reads memory, for the bench suite's bounds.
 *
 *   bandwidth KIB [REPEATS]   prints {"kib": N, "gb_per_s": X}: the best of REPEATS
 *                             passes reading a buffer of KIB kibibytes
 *
 * Decoding reads every weight once a token, over and over, so the rate at which this
 * machine reads a buffer the size of the weights, again and again, bounds its tokens per
 * second: the bench suite measures at each model's own size. Where that size lands (a
 * cache level or DRAM) is this machine's business: on a VM the last-level cache a core
 * really gets can be far smaller than the one it reports.
 *
 * The reader must not be the bottleneck: with AVX2, 32-byte loads into four sums (a
 * scalar reader tops out near 17 GB/s on a Zen 3, a third of its L3's rate).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

#if defined(__AVX2__)
/* Four independent 32-byte sums; n a multiple of 16 words. */
static uint64_t read_all(const uint64_t *p, size_t n)
{
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    uint64_t lane[4];
    size_t i;
    for (i = 0; i + 16 <= n; i += 16) {
        a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(const void *)(p + i)));
        b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 4)));
        c = _mm256_add_epi64(c, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 8)));
        d = _mm256_add_epi64(d, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 12)));
    }
    _mm256_storeu_si256((__m256i *)(void *)lane, _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
    return lane[0] + lane[1] + lane[2] + lane[3];
}
#else
/* Eight independent sums, so the loads, not the additions, set the pace; the lines a
 * few hundred bytes ahead are requested early, as the runtime's kernels do. */
static uint64_t read_all(const uint64_t *p, size_t n)
{
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    size_t i;
    for (i = 0; i + 8 <= n; i += 8) {
#if defined(__GNUC__)
        __builtin_prefetch(p + i + 128);
#endif
        s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
        s4 += p[i + 4], s5 += p[i + 5], s6 += p[i + 6], s7 += p[i + 7];
    }
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
}
#endif

int main(int argc, char **argv)
{
    long kib = argc > 1 ? strtol(argv[1], NULL, 10) : 262144, repeats = argc > 2 ? strtol(argv[2], NULL, 10) : 5, r;
    size_t bytes, n;
    uint64_t *buffer, check = 0;
    double best = 0.0;
    if (kib < 1 || kib > 64L * 1024 * 1024 || repeats < 1) {
        fprintf(stderr, "error: usage: bandwidth KIB [REPEATS]\n");
        return 1;
    }
    bytes = (size_t)kib << 10;
    n = bytes / sizeof(uint64_t);
    buffer = (uint64_t *)malloc(bytes);
    if (buffer == NULL) {
        fprintf(stderr, "error: cannot allocate %ld KiB\n", kib);
        return 1;
    }
    memset(buffer, 1, bytes);
    for (r = 0; r < repeats; r++) {
        double start = now_s(), rate;
        check += read_all(buffer, n);
        rate = (double)bytes / (now_s() - start) / 1e9;
        if (rate > best) best = rate;
    }
    printf("{\"kib\": %ld, \"gb_per_s\": %.3f, \"check\": %llu}\n", kib, best, (unsigned long long)(check & 1u));
    free(buffer);
    return 0;
}
