/* bandwidth.c: how fast one thread reads memory, for the bench suite's bounds.
 *
 *   bandwidth MIB [REPEATS]   prints {"mib": N, "gb_per_s": X}: the best of REPEATS
 *                             passes reading a buffer of MIB mebibytes
 *
 * A buffer much larger than the last-level cache measures DRAM; one that fits it, the
 * cache. Decoding a model that does not fit the caches reads every weight once a
 * token, so bandwidth / bytes per token bounds its tokens per second.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Eight independent sums, so the loads, not the additions, set the pace; the lines a
 * few hundred bytes ahead are requested early, as the runtime's kernels do. */
static uint64_t read_all(const uint64_t *p, size_t n)
{
    uint64_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sum = 0;
    size_t i;
    int k;
    for (i = 0; i + 8 <= n; i += 8) {
#if defined(__GNUC__)
        __builtin_prefetch(p + i + 128);
#endif
        for (k = 0; k < 8; k++) lane[k] += p[i + k];
    }
    for (k = 0; k < 8; k++) sum += lane[k];
    return sum;
}

int main(int argc, char **argv)
{
    long mib = argc > 1 ? strtol(argv[1], NULL, 10) : 256, repeats = argc > 2 ? strtol(argv[2], NULL, 10) : 5, r;
    size_t bytes, n;
    uint64_t *buffer, check = 0;
    double best = 0.0;
    if (mib < 1 || mib > 65536 || repeats < 1) {
        fprintf(stderr, "error: usage: bandwidth MIB [REPEATS]\n");
        return 1;
    }
    bytes = (size_t)mib << 20;
    n = bytes / sizeof(uint64_t);
    buffer = (uint64_t *)malloc(bytes);
    if (buffer == NULL) {
        fprintf(stderr, "error: cannot allocate %ld MiB\n", mib);
        return 1;
    }
    memset(buffer, 1, bytes);
    for (r = 0; r < repeats; r++) {
        double start = now_s(), rate;
        check += read_all(buffer, n);
        rate = (double)bytes / (now_s() - start) / 1e9;
        if (rate > best) best = rate;
    }
    printf("{\"mib\": %ld, \"gb_per_s\": %.3f, \"check\": %llu}\n", mib, best, (unsigned long long)(check & 1u));
    free(buffer);
    return 0;
}
