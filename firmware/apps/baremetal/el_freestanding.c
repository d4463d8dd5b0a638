/* el_freestanding.c: the five C library functions a freestanding image still needs.
 *
 * GCC emits calls to memcpy, memmove, memset and memcmp even with -ffreestanding
 * (struct copies, and at -O2 byte loops it recognises), and strlen for the same kind
 * of loop; nothing else from a C library is used. The Makefile builds every file with
 * -fno-tree-loop-distribute-patterns, so the loops below are not turned back into
 * calls to themselves.
 */
#include <stddef.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int value, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    /* word at a time when both are aligned alike: the engine copies whole rows */
    if ((((size_t)d | (size_t)s) & (sizeof(size_t) - 1)) == 0) {
        for (; n >= sizeof(size_t); n -= sizeof(size_t), d += sizeof(size_t), s += sizeof(size_t))
            *(size_t *)(void *)d = *(const size_t *)(const void *)s;
    }
    while (n-- > 0) *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    if (d == s || n == 0) return dst;
    if (d < s || d >= s + n) return memcpy(dst, src, n);
    while (n-- > 0) d[n] = s[n]; /* overlapping with dst above src: copy from the end */
    return dst;
}

void *memset(void *dst, int value, size_t n)
{
    unsigned char *d = (unsigned char *)dst;
    unsigned char b = (unsigned char)value;
    if (((size_t)d & (sizeof(size_t) - 1)) == 0 && n >= sizeof(size_t)) {
        size_t word = b;
        size_t i;
        for (i = 1; i < sizeof(size_t); i++) word = (word << 8) | b;
        for (; n >= sizeof(size_t); n -= sizeof(size_t), d += sizeof(size_t)) *(size_t *)(void *)d = word;
    }
    while (n-- > 0) *d++ = b;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    for (; n > 0; n--, x++, y++)
        if (*x != *y) return *x < *y ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    const char *p = s;
    while (*p) p++;
    return (size_t)(p - s);
}
