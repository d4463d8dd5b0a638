/* el_base.h: what every part of the runtime core shares.
 *
 * The core uses no malloc, no stdio and no OS calls. The caller hands it one arena
 * (a byte buffer) and every allocation is carved from it; errors are a status code
 * plus a readable message, written into an el_error the caller owns.
 */
#ifndef EL_BASE_H
#define EL_BASE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    EL_OK = 0,
    EL_ERR_ARGUMENT,     /* a bad value from the caller */
    EL_ERR_FORMAT,       /* a malformed model file */
    EL_ERR_UNSUPPORTED,  /* a well-formed file the runtime cannot run */
    EL_ERR_NO_MEMORY,    /* the arena is too small */
    EL_ERR_CAPACITY      /* a request that can never fit (context, KV pool) */
} el_status;

typedef struct {
    el_status status;
    char message[200];
} el_error;

/* Set err (if not NULL) to status and the concatenation of the given parts.
 * Parts are strings; el_error_num appends a decimal number. Returns status. */
el_status el_fail(el_error *err, el_status status, const char *part1, const char *part2, const char *part3);
void el_error_num(el_error *err, long long value);
void el_error_append(el_error *err, const char *text);

typedef struct {
    unsigned char *base;
    size_t size;
    size_t used;
    size_t high_water; /* the most ever used: what a board must provide */
} el_arena;

void el_arena_init(el_arena *arena, void *memory, size_t size);
/* Zeroed memory aligned to `align` (a power of two), or NULL when the arena is full. */
void *el_arena_alloc(el_arena *arena, size_t bytes, size_t align);
size_t el_arena_mark(const el_arena *arena);
void el_arena_reset(el_arena *arena, size_t mark);

void el_memcpy(void *dst, const void *src, size_t n);
void el_memset(void *dst, int value, size_t n);
int el_memcmp(const void *a, const void *b, size_t n);
size_t el_strlen(const char *s);

#endif
