/* el_base.c: error messages, the arena, and the few byte helpers the core needs
 * (the core links against nothing, so it cannot call memcpy from libc). */
#include "el_base.h"

void el_error_append(el_error *err, const char *text)
{
    size_t n;
    if (err == NULL || text == NULL) return;
    n = el_strlen(err->message);
    while (*text != '\0' && n + 1 < sizeof err->message) err->message[n++] = *text++;
    err->message[n] = '\0';
}

el_status el_fail(el_error *err, el_status status, const char *part1, const char *part2, const char *part3)
{
    if (err == NULL) return status;
    err->status = status;
    err->message[0] = '\0';
    el_error_append(err, part1);
    el_error_append(err, part2);
    el_error_append(err, part3);
    return status;
}

void el_error_num(el_error *err, long long value)
{
    char digits[24];
    int n = 0, i;
    char text[26];
    unsigned long long magnitude = value < 0 ? 0ull - (unsigned long long)value : (unsigned long long)value;
    do {
        digits[n++] = (char)('0' + (int)(magnitude % 10));
        magnitude /= 10;
    } while (magnitude > 0);
    i = 0;
    if (value < 0) text[i++] = '-';
    while (n > 0) text[i++] = digits[--n];
    text[i] = '\0';
    el_error_append(err, text);
}

void el_arena_init(el_arena *arena, void *memory, size_t size)
{
    arena->base = (unsigned char *)memory;
    arena->size = size;
    arena->used = 0;
    arena->high_water = 0;
}

void *el_arena_alloc(el_arena *arena, size_t bytes, size_t align)
{
    size_t start = (arena->used + (align - 1)) & ~(align - 1);
    void *p;
    if (start < arena->used || start > arena->size || bytes > arena->size - start) return NULL;
    p = arena->base + start;
    arena->used = start + bytes;
    if (arena->used > arena->high_water) arena->high_water = arena->used;
    el_memset(p, 0, bytes);
    return p;
}

size_t el_arena_mark(const el_arena *arena) { return arena->used; }

void el_arena_reset(el_arena *arena, size_t mark)
{
    if (mark <= arena->used) arena->used = mark;
}

void el_memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    while (n--) *d++ = *s++;
}

void el_memset(void *dst, int value, size_t n)
{
    unsigned char *d = (unsigned char *)dst;
    while (n--) *d++ = (unsigned char)value;
}

int el_memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    for (; n > 0; n--, x++, y++)
        if (*x != *y) return *x < *y ? -1 : 1;
    return 0;
}

size_t el_strlen(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0') n++;
    return n;
}
