/* el_gguf.h: a GGUF reader over a byte buffer that checks everything before use.
 *
 * The buffer is the whole model file (mmap on Linux, const data in flash on an MCU);
 * nothing is copied. Parsing validates the magic, version, counts, every string
 * length, every key/value type, and every tensor's type, shape, offset and size
 * against the buffer, so no later access can read outside it.
 */
#ifndef EL_GGUF_H
#define EL_GGUF_H

#include "el_base.h"

/* GGUF value types. */
enum {
    EL_GGUF_UINT8 = 0, EL_GGUF_INT8 = 1, EL_GGUF_UINT16 = 2, EL_GGUF_INT16 = 3, EL_GGUF_UINT32 = 4,
    EL_GGUF_INT32 = 5, EL_GGUF_FLOAT32 = 6, EL_GGUF_BOOL = 7, EL_GGUF_STRING = 8, EL_GGUF_ARRAY = 9,
    EL_GGUF_UINT64 = 10, EL_GGUF_INT64 = 11, EL_GGUF_FLOAT64 = 12
};

/* ggml tensor types the runtime runs. */
enum { EL_TYPE_F32 = 0, EL_TYPE_F16 = 1, EL_TYPE_Q4_0 = 2, EL_TYPE_Q8_0 = 8 };

/* A string inside the file: not NUL-terminated. */
typedef struct {
    const char *data;
    uint32_t len;
} el_str;

typedef struct {
    el_str key;
    uint32_t type;        /* EL_GGUF_* */
    uint32_t array_type;  /* for arrays: the element type */
    uint64_t array_len;   /* for arrays: the element count */
    const uint8_t *value; /* first byte of the value (of the first element for arrays) */
} el_gguf_kv;

typedef struct {
    el_str name;
    uint32_t n_dims;
    uint64_t ne[4];       /* ne[0] is the row length, as in ggml */
    uint32_t type;        /* EL_TYPE_* */
    uint64_t nbytes;
    const uint8_t *data;  /* inside the buffer, aligned to the file's alignment */
    uint64_t offset;      /* of the data, from the start of the data section */
} el_gguf_tensor;

typedef struct {
    const uint8_t *file;
    size_t size;
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv;
    uint64_t n_tensors;
    el_gguf_kv *kv;          /* n_kv entries, in the arena */
    el_gguf_tensor *tensors; /* n_tensors entries, in the arena */
    uint64_t data_offset;    /* where the data section starts in the file */
} el_gguf;

el_status el_gguf_parse(el_gguf *gguf, const uint8_t *file, size_t size, el_arena *arena, el_error *err);

/* Lookups return NULL when absent. */
const el_gguf_kv *el_gguf_find(const el_gguf *gguf, const char *key);
const el_gguf_tensor *el_gguf_find_tensor(const el_gguf *gguf, const char *name);
int el_str_equals(el_str s, const char *text);

/* Appends a string from the file to an error message: at most 64 bytes, anything
 * but printable ASCII shown as '?', so a corrupt name cannot garble a terminal. */
void el_error_append_str(el_error *err, el_str s);

/* "F32", "Q5_0", ... for a ggml tensor type number, "unknown" past the known ones. */
const char *el_gguf_type_name(uint32_t type);

/* Typed getters: EL_OK, or an error naming the key when it is absent or of a wrong type.
 * Integer getters accept any integer type whose value fits. */
el_status el_gguf_get_u32(const el_gguf *gguf, const char *key, uint32_t *out, el_error *err);
el_status el_gguf_get_f32(const el_gguf *gguf, const char *key, float *out, el_error *err);
el_status el_gguf_get_str(const el_gguf *gguf, const char *key, el_str *out, el_error *err);

/* Little-endian reads from any address (files are little-endian; targets may not be aligned). */
uint32_t el_read_u32(const uint8_t *p);
uint64_t el_read_u64(const uint8_t *p);
float el_read_f32(const uint8_t *p);

#endif
