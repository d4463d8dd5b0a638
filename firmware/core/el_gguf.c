/* el_gguf.c: a GGUF reader that checks every count, length, type and offset.
 *
 * The layout (little-endian throughout, versions 2 and 3 alike):
 *   "GGUF", version u32, n_tensors u64, n_kv u64,
 *   n_kv x (key string, value type u32, value),
 *   n_tensors x (name string, n_dims u32, ne u64[n_dims], type u32, offset u64),
 *   padding to general.alignment, then the data section; a tensor's data starts
 *   `offset` bytes into it.
 * A string is a u64 byte count and the bytes; an array is an element type u32, a u64
 * element count and the elements.
 *
 * The file is walked once, front to back, by a cursor that refuses to move past the
 * end, so a truncated or corrupt file ends in a message rather than a read outside
 * the buffer. Counts are checked against the bytes left before anything is allocated
 * for them, so a bogus count cannot ask the arena for gigabytes.
 */
#include "el_gguf.h"

#include <float.h>

#define GGUF_DEFAULT_ALIGNMENT 32u
#define STRUCT_ALIGN 8u       /* enough for the pointers and uint64_t in our structs */
#define MAX_SHOWN_NAME 64u    /* bytes of a file's name shown in an error message */
#define QUANT_BLOCK 32u       /* values per Q4_0 / Q8_0 block */

/* The fewest bytes an entry can take: a key/value is an empty key (8), a type (4) and
 * a one-byte value; a tensor info is an empty name (8), n_dims (4), one ne (8), the
 * type (4) and the offset (8). */
#define MIN_KV_BYTES 13u
#define MIN_TENSOR_INFO_BYTES 32u

/* ------------------------------------------------------------ little-endian reads */

uint32_t el_read_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t el_read_u64(const uint8_t *p)
{
    return (uint64_t)el_read_u32(p) | (uint64_t)el_read_u32(p + 4) << 32;
}

float el_read_f32(const uint8_t *p)
{
    union { uint32_t u; float f; } v;
    v.u = el_read_u32(p);
    return v.f;
}

static uint32_t read_u16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

static double read_f64(const uint8_t *p)
{
    union { uint64_t u; double d; } v;
    v.u = el_read_u64(p);
    return v.d;
}

/* ------------------------------------------------------------ names and messages */

int el_str_equals(el_str s, const char *text)
{
    size_t n = el_strlen(text);
    return s.len == n && el_memcmp(s.data, text, n) == 0;
}

void el_error_append_str(el_error *err, el_str s)
{
    char text[MAX_SHOWN_NAME + 4];
    uint32_t n = s.len < MAX_SHOWN_NAME ? s.len : MAX_SHOWN_NAME, i;
    for (i = 0; i < n; i++) {
        char c = s.data[i];
        text[i] = (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    text[n] = '\0';
    if (s.len > n) el_memcpy(text + n, "...", 4); /* with the NUL */
    el_error_append(err, text);
}

const char *el_gguf_type_name(uint32_t type)
{
    static const char *const names[] = {
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16"};
    return type < sizeof names / sizeof names[0] ? names[type] : "unknown";
}

static const char *value_type_name(uint32_t type)
{
    static const char *const names[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                        "bool", "string", "array", "uint64", "int64", "float64"};
    return type < sizeof names / sizeof names[0] ? names[type] : "unknown";
}

/* "<before><name><after>": most messages name a key or a tensor from the file. */
static el_status fail_named(el_error *err, el_status status, const char *before, el_str name, const char *after)
{
    el_fail(err, status, before, NULL, NULL);
    el_error_append_str(err, name);
    el_error_append(err, after);
    return status;
}

static const el_str no_name = {"", 0};

/* el_error_num takes a signed value; a u64 from a corrupt file may not fit one. */
static void append_u64(el_error *err, uint64_t value)
{
    if (value > 0x7fffffffffffffffull) {
        el_error_num(err, (long long)(value / 10));
        el_error_num(err, (long long)(value % 10));
    } else {
        el_error_num(err, (long long)value);
    }
}

/* "truncated GGUF file: <what><name> runs past the end of the file (N bytes)". */
static el_status truncated(el_error *err, const char *what, el_str name, size_t file_size)
{
    el_fail(err, EL_ERR_FORMAT, "truncated GGUF file: ", what, NULL);
    el_error_append_str(err, name);
    el_error_append(err, " runs past the end of the file (");
    append_u64(err, file_size);
    el_error_append(err, " bytes)");
    return EL_ERR_FORMAT;
}

/* ------------------------------------------------------------ the cursor */

typedef struct {
    const uint8_t *file;
    size_t size;
    size_t pos;   /* never more than size */
} cursor;

static uint64_t bytes_left(const cursor *c) { return (uint64_t)(c->size - c->pos); }

/* The next n bytes, or NULL (and the cursor unmoved) when fewer are left. */
static const uint8_t *take(cursor *c, uint64_t n)
{
    const uint8_t *p = c->file + c->pos;
    if (n > bytes_left(c)) return NULL;
    c->pos += (size_t)n;
    return p;
}

static int take_u32(cursor *c, uint32_t *out)
{
    const uint8_t *p = take(c, 4);
    if (p != NULL) *out = el_read_u32(p);
    return p != NULL;
}

static int take_u64(cursor *c, uint64_t *out)
{
    const uint8_t *p = take(c, 8);
    if (p != NULL) *out = el_read_u64(p);
    return p != NULL;
}

/* A string. Lengths past 4 GiB (el_str's u32) count as corrupt: no model has them. */
static int take_str(cursor *c, el_str *out)
{
    uint64_t len;
    const uint8_t *bytes;
    if (!take_u64(c, &len)) return 0;
    if (len > UINT32_MAX || (bytes = take(c, len)) == NULL) return 0;
    out->data = (const char *)bytes;
    out->len = (uint32_t)len;
    return 1;
}

/* ------------------------------------------------------------ header */

static el_status parse_header(cursor *c, el_gguf *gguf, el_error *err)
{
    const uint8_t *p;
    if (c->size < 4 || el_memcmp(c->file, "GGUF", 4) != 0)
        return el_fail(err, EL_ERR_FORMAT, "not a GGUF file (it does not start with \"GGUF\")", NULL, NULL);
    p = take(c, 24);
    if (p == NULL) return truncated(err, "the 24-byte header", no_name, c->size);
    gguf->version = el_read_u32(p + 4);
    gguf->n_tensors = el_read_u64(p + 8);
    gguf->n_kv = el_read_u64(p + 16);
    /* A big-endian file reads as version 2 or 3 shifted into the top byte. */
    if (gguf->version == 0x02000000u || gguf->version == 0x03000000u)
        return el_fail(err, EL_ERR_UNSUPPORTED, "big-endian GGUF files are not supported", NULL, NULL);
    if (gguf->version != 2 && gguf->version != 3) {
        el_fail(err, EL_ERR_UNSUPPORTED, "GGUF version ", NULL, NULL);
        el_error_num(err, (long long)gguf->version);
        el_error_append(err, " is not supported (only versions 2 and 3)");
        return EL_ERR_UNSUPPORTED;
    }
    /* Each count alone is at most what the rest of the file could hold, so the sum
     * below cannot overflow. */
    if (gguf->n_kv > bytes_left(c) / MIN_KV_BYTES || gguf->n_tensors > bytes_left(c) / MIN_TENSOR_INFO_BYTES
        || gguf->n_kv * MIN_KV_BYTES + gguf->n_tensors * MIN_TENSOR_INFO_BYTES > bytes_left(c)) {
        el_fail(err, EL_ERR_FORMAT, "corrupt GGUF header: ", NULL, NULL);
        append_u64(err, gguf->n_kv);
        el_error_append(err, " keys and ");
        append_u64(err, gguf->n_tensors);
        el_error_append(err, " tensors cannot fit in a file of ");
        append_u64(err, c->size);
        el_error_append(err, " bytes");
        return EL_ERR_FORMAT;
    }
    return EL_OK;
}

/* n entries of `each` bytes from the arena; the count is already known to be sane. */
static void *alloc_entries(el_arena *arena, uint64_t n, size_t each, const char *what, el_error *err)
{
    void *p = NULL;
    if (n <= SIZE_MAX / each) p = el_arena_alloc(arena, (size_t)n * each, STRUCT_ALIGN);
    if (p == NULL && n > 0) {
        el_fail(err, EL_ERR_NO_MEMORY, "the arena is too small for the ", what, " of this model (");
        append_u64(err, n);
        el_error_append(err, " entries)");
    }
    return p;
}

/* ------------------------------------------------------------ key/value pairs */

/* Bytes of one scalar value; 0 for strings, arrays and unknown types. */
static uint64_t scalar_size(uint32_t type)
{
    switch (type) {
    case EL_GGUF_UINT8: case EL_GGUF_INT8: case EL_GGUF_BOOL: return 1;
    case EL_GGUF_UINT16: case EL_GGUF_INT16: return 2;
    case EL_GGUF_UINT32: case EL_GGUF_INT32: case EL_GGUF_FLOAT32: return 4;
    case EL_GGUF_UINT64: case EL_GGUF_INT64: case EL_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* The fewest bytes a value can take (0: unknown type), to check element counts. */
static uint64_t min_value_size(uint32_t type)
{
    if (type == EL_GGUF_STRING) return 8;
    if (type == EL_GGUF_ARRAY) return 12;
    return scalar_size(type);
}

static el_status unknown_type(el_error *err, el_str key, uint32_t type)
{
    fail_named(err, EL_ERR_FORMAT, "corrupt GGUF file: key ", key, " has unknown value type ");
    el_error_num(err, (long long)type);
    return EL_ERR_FORMAT;
}

/* An array's element type and count. `depth` counts the arrays around this one:
 * an array of arrays is allowed (some tools write them), one level deeper is not. */
static el_status take_array_header(cursor *c, int depth, el_str key, uint32_t *type, uint64_t *len, el_error *err)
{
    uint64_t least;
    if (!take_u32(c, type) || !take_u64(c, len)) return truncated(err, "the value of key ", key, c->size);
    if (*type == EL_GGUF_ARRAY && depth > 0)
        return fail_named(err, EL_ERR_UNSUPPORTED, "key ", key, " nests arrays more than two deep");
    least = min_value_size(*type);
    if (least == 0) return unknown_type(err, key, *type);
    if (*len > bytes_left(c) / least) return truncated(err, "the array of key ", key, c->size);
    return EL_OK;
}

static el_status skip_value(cursor *c, uint32_t type, int depth, el_str key, el_error *err);

/* Moves over `len` elements; scalars in one step (the count was checked against
 * the bytes left, so len * size cannot overflow). */
static el_status skip_elements(cursor *c, uint32_t type, uint64_t len, int depth, el_str key, el_error *err)
{
    uint64_t i;
    if (scalar_size(type) > 0)
        return take(c, len * scalar_size(type)) != NULL ? EL_OK : truncated(err, "the value of key ", key, c->size);
    for (i = 0; i < len; i++) {
        el_status status = skip_value(c, type, depth, key, err);
        if (status != EL_OK) return status;
    }
    return EL_OK;
}

static el_status skip_value(cursor *c, uint32_t type, int depth, el_str key, el_error *err)
{
    el_str s;
    uint32_t elem_type;
    uint64_t len;
    el_status status;
    if (type == EL_GGUF_STRING)
        return take_str(c, &s) ? EL_OK : truncated(err, "a string in key ", key, c->size);
    if (type == EL_GGUF_ARRAY) {
        status = take_array_header(c, depth, key, &elem_type, &len, err);
        return status != EL_OK ? status : skip_elements(c, elem_type, len, depth + 1, key, err);
    }
    if (scalar_size(type) == 0) return unknown_type(err, key, type);
    return take(c, scalar_size(type)) != NULL ? EL_OK : truncated(err, "the value of key ", key, c->size);
}

/* One key/value pair; kv->value points at the value (at the first element for arrays). */
static el_status parse_kv(cursor *c, el_gguf_kv *kv, el_error *err)
{
    el_status status;
    if (!take_str(c, &kv->key)) return truncated(err, "a key name", no_name, c->size);
    if (!take_u32(c, &kv->type)) return truncated(err, "the type of key ", kv->key, c->size);
    if (kv->type != EL_GGUF_ARRAY) {
        kv->value = c->file + c->pos;
        return skip_value(c, kv->type, 0, kv->key, err);
    }
    status = take_array_header(c, 0, kv->key, &kv->array_type, &kv->array_len, err);
    kv->value = c->file + c->pos;
    return status != EL_OK ? status : skip_elements(c, kv->array_type, kv->array_len, 1, kv->key, err);
}

/* Two entries of one name would make lookups depend on order. Quadratic, but models
 * have tens of keys and hundreds of tensors, and each entry took real bytes. */
static int same_name_earlier(el_str name, const el_str *first, size_t stride, uint64_t index)
{
    uint64_t j;
    for (j = 0; j < index; j++) {
        const el_str *other = (const el_str *)(const void *)((const char *)first + (size_t)j * stride);
        if (other->len == name.len && el_memcmp(other->data, name.data, name.len) == 0) return 1;
    }
    return 0;
}

static el_status parse_kvs(cursor *c, el_gguf *gguf, el_arena *arena, el_error *err)
{
    uint64_t i;
    gguf->kv = (el_gguf_kv *)alloc_entries(arena, gguf->n_kv, sizeof(el_gguf_kv), "metadata", err);
    if (gguf->kv == NULL && gguf->n_kv > 0) return EL_ERR_NO_MEMORY;
    for (i = 0; i < gguf->n_kv; i++) {
        el_status status = parse_kv(c, &gguf->kv[i], err);
        if (status != EL_OK) return status;
        if (same_name_earlier(gguf->kv[i].key, &gguf->kv[0].key, sizeof(el_gguf_kv), i))
            return fail_named(err, EL_ERR_FORMAT, "corrupt GGUF file: key ", gguf->kv[i].key, " appears twice");
    }
    return EL_OK;
}

/* general.alignment: a power of two, 32 when absent. The data section and every
 * tensor offset are multiples of it. */
static el_status read_alignment(el_gguf *gguf, el_error *err)
{
    const el_gguf_kv *kv = el_gguf_find(gguf, "general.alignment");
    gguf->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (kv == NULL) return EL_OK;
    if (kv->type != EL_GGUF_UINT32)
        return el_fail(err, EL_ERR_FORMAT, "general.alignment must be a uint32, not ", value_type_name(kv->type),
                       NULL);
    gguf->alignment = el_read_u32(kv->value);
    if (gguf->alignment == 0 || (gguf->alignment & (gguf->alignment - 1)) != 0) {
        el_fail(err, EL_ERR_FORMAT, "general.alignment ", NULL, NULL);
        el_error_num(err, (long long)gguf->alignment);
        el_error_append(err, " is not a power of two");
        return EL_ERR_FORMAT;
    }
    return EL_OK;
}

/* ------------------------------------------------------------ tensor infos */

static el_status unsupported_tensor_type(el_error *err, const el_gguf_tensor *t)
{
    fail_named(err, EL_ERR_UNSUPPORTED, "tensor ", t->name, " has unsupported type ");
    el_error_append(err, el_gguf_type_name(t->type));
    el_error_append(err, " (");
    el_error_num(err, (long long)t->type);
    el_error_append(err, "); the runtime runs F32, F16, Q4_0, Q8_0");
    return EL_ERR_UNSUPPORTED;
}

/* Element count and byte size from type and shape. The count is kept below
 * UINT64_MAX / 4 so that no byte size computed from it can overflow. */
static el_status tensor_size(el_gguf_tensor *t, el_error *err)
{
    uint64_t count = 1;
    uint32_t i;
    if (t->type != EL_TYPE_F32 && t->type != EL_TYPE_F16 && t->type != EL_TYPE_Q4_0 && t->type != EL_TYPE_Q8_0)
        return unsupported_tensor_type(err, t);
    for (i = 0; i < t->n_dims; i++) {
        if (t->ne[i] == 0)
            return fail_named(err, EL_ERR_FORMAT, "corrupt GGUF file: tensor ", t->name, " has a zero dimension");
        if (t->ne[i] > UINT64_MAX / 4 / count)
            return fail_named(err, EL_ERR_FORMAT, "corrupt GGUF file: tensor ", t->name, " has too many elements");
        count *= t->ne[i];
    }
    if ((t->type == EL_TYPE_Q4_0 || t->type == EL_TYPE_Q8_0) && t->ne[0] % QUANT_BLOCK != 0) {
        fail_named(err, EL_ERR_FORMAT, "tensor ", t->name, " has rows of ");
        append_u64(err, t->ne[0]);
        el_error_append(err, " values, not a multiple of the 32-value blocks of ");
        el_error_append(err, el_gguf_type_name(t->type));
        return EL_ERR_FORMAT;
    }
    switch (t->type) {
    case EL_TYPE_F32: t->nbytes = count * 4; break;
    case EL_TYPE_F16: t->nbytes = count * 2; break;
    case EL_TYPE_Q8_0: t->nbytes = count / QUANT_BLOCK * 34; break;
    default: t->nbytes = count / QUANT_BLOCK * 18; break;
    }
    return EL_OK;
}

static el_status parse_tensor_info(cursor *c, el_gguf_tensor *t, el_error *err)
{
    uint32_t i;
    if (!take_str(c, &t->name)) return truncated(err, "a tensor name", no_name, c->size);
    if (!take_u32(c, &t->n_dims)) return truncated(err, "the info of tensor ", t->name, c->size);
    if (t->n_dims < 1 || t->n_dims > 4) {
        fail_named(err, EL_ERR_FORMAT, "corrupt GGUF file: tensor ", t->name, " has ");
        el_error_num(err, (long long)t->n_dims);
        el_error_append(err, " dimensions (1 to 4 allowed)");
        return EL_ERR_FORMAT;
    }
    for (i = 0; i < 4; i++) t->ne[i] = 1;
    for (i = 0; i < t->n_dims; i++)
        if (!take_u64(c, &t->ne[i])) return truncated(err, "the info of tensor ", t->name, c->size);
    if (!take_u32(c, &t->type) || !take_u64(c, &t->offset))
        return truncated(err, "the info of tensor ", t->name, c->size);
    return tensor_size(t, err);
}

static el_status parse_tensor_infos(cursor *c, el_gguf *gguf, el_arena *arena, el_error *err)
{
    uint64_t i;
    gguf->tensors = (el_gguf_tensor *)alloc_entries(arena, gguf->n_tensors, sizeof(el_gguf_tensor), "tensor list",
                                                    err);
    if (gguf->tensors == NULL && gguf->n_tensors > 0) return EL_ERR_NO_MEMORY;
    for (i = 0; i < gguf->n_tensors; i++) {
        el_status status = parse_tensor_info(c, &gguf->tensors[i], err);
        if (status != EL_OK) return status;
        if (same_name_earlier(gguf->tensors[i].name, &gguf->tensors[0].name, sizeof(el_gguf_tensor), i))
            return fail_named(err, EL_ERR_FORMAT, "corrupt GGUF file: tensor ", gguf->tensors[i].name,
                              " appears twice");
    }
    return EL_OK;
}

/* ------------------------------------------------------------ tensor data */

/* Points t->data into the data section once its offset is aligned and its bytes
 * lie inside the file. */
static el_status place_tensor(el_gguf *gguf, el_gguf_tensor *t, el_error *err)
{
    uint64_t room = gguf->data_offset <= gguf->size ? gguf->size - gguf->data_offset : 0;
    if (t->offset % gguf->alignment != 0) {
        fail_named(err, EL_ERR_FORMAT, "corrupt GGUF file: tensor ", t->name, " starts at offset ");
        append_u64(err, t->offset);
        el_error_append(err, ", not a multiple of the alignment ");
        el_error_num(err, (long long)gguf->alignment);
        return EL_ERR_FORMAT;
    }
    if (t->offset > room || t->nbytes > room - t->offset) {
        fail_named(err, EL_ERR_FORMAT, "truncated GGUF file: the data of tensor ", t->name, " (");
        append_u64(err, t->nbytes);
        el_error_append(err, " bytes) runs past the end of the file (");
        append_u64(err, gguf->size);
        el_error_append(err, " bytes)");
        return EL_ERR_FORMAT;
    }
    t->data = gguf->file + (size_t)(gguf->data_offset + t->offset);
    return EL_OK;
}

/* The data section starts at the first multiple of the alignment after the infos. */
static el_status place_tensors(el_gguf *gguf, size_t header_end, el_error *err)
{
    uint64_t i;
    gguf->data_offset = ((uint64_t)header_end + gguf->alignment - 1) / gguf->alignment * gguf->alignment;
    for (i = 0; i < gguf->n_tensors; i++) {
        el_status status = place_tensor(gguf, &gguf->tensors[i], err);
        if (status != EL_OK) return status;
    }
    return EL_OK;
}

/* ------------------------------------------------------------ the data section's layout */

/* Each tensor's region runs from its offset to the next tensor's offset (or to the end
 * of the data section). Inside the file is not enough: one flipped byte that turns F32
 * into Q4_0 shrinks the size the shape implies, and the shrunken tensor still fits.
 * A writer puts tensors back to back, each padded to the alignment, so the size the
 * type and shape imply must fill the region up to that padding, and no two regions may
 * overlap. Quadratic in the tensor count (hundreds at most), no memory needed. */
static uint64_t region_end(const el_gguf *gguf, uint64_t i, uint64_t section_end)
{
    uint64_t j, end = section_end;
    for (j = 0; j < gguf->n_tensors; j++) {
        uint64_t other = gguf->tensors[j].offset;
        if (j != i && other > gguf->tensors[i].offset && other < end) end = other;
    }
    return end;
}

static el_status overlapping(el_error *err, const el_gguf_tensor *t, const el_gguf_tensor *other)
{
    fail_named(err, EL_ERR_FORMAT, "corrupt GGUF file: the data of tensor ", t->name, " (offset ");
    append_u64(err, t->offset);
    el_error_append(err, ", ");
    append_u64(err, t->nbytes);
    el_error_append(err, " bytes) overlaps that of tensor ");
    el_error_append_str(err, other->name);
    el_error_append(err, " (offset ");
    append_u64(err, other->offset);
    el_error_append(err, ")");
    return EL_ERR_FORMAT;
}

static el_status wrong_size(el_error *err, const el_gguf_tensor *t, uint64_t region)
{
    uint32_t i;
    fail_named(err, EL_ERR_FORMAT, "corrupt GGUF file: tensor ", t->name, " is ");
    el_error_append(err, el_gguf_type_name(t->type));
    el_error_append(err, " of shape [");
    for (i = 0; i < t->n_dims; i++) {
        if (i > 0) el_error_append(err, ", ");
        append_u64(err, t->ne[i]);
    }
    el_error_append(err, "], which takes ");
    append_u64(err, t->nbytes);
    el_error_append(err, " bytes, but its data region holds ");
    append_u64(err, region);
    el_error_append(err, " (its type or shape is corrupt)");
    return EL_ERR_FORMAT;
}

static el_status check_region(const el_gguf *gguf, uint64_t i, uint64_t section_end, el_error *err)
{
    const el_gguf_tensor *t = &gguf->tensors[i];
    uint64_t j, end = region_end(gguf, i, section_end), padded;
    for (j = 0; j < gguf->n_tensors; j++) {
        const el_gguf_tensor *other = &gguf->tensors[j];
        if (j != i && other->offset == t->offset) return overlapping(err, j > i ? t : other, j > i ? other : t);
        if (other->offset == end && t->offset + t->nbytes > end) return overlapping(err, t, other);
    }
    /* place_tensor kept offset + nbytes inside the file, so this cannot overflow */
    padded = (t->offset + t->nbytes + gguf->alignment - 1) / gguf->alignment * gguf->alignment;
    if (padded < end || t->offset + t->nbytes > end) return wrong_size(err, t, end - t->offset);
    return EL_OK;
}

static el_status check_layout(const el_gguf *gguf, el_error *err)
{
    uint64_t i, section_end = gguf->size - gguf->data_offset; /* place_tensor: data_offset <= size */
    for (i = 0; i < gguf->n_tensors; i++) {
        el_status status = check_region(gguf, i, section_end, err);
        if (status != EL_OK) return status;
    }
    return EL_OK;
}

el_status el_gguf_parse(el_gguf *gguf, const uint8_t *file, size_t size, el_arena *arena, el_error *err)
{
    size_t mark;
    cursor c;
    el_status status;
    if (gguf == NULL || arena == NULL || (file == NULL && size > 0))
        return el_fail(err, EL_ERR_ARGUMENT, "el_gguf_parse: NULL argument", NULL, NULL);
    el_memset(gguf, 0, sizeof *gguf);
    gguf->file = file;
    gguf->size = size;
    c.file = file;
    c.size = size;
    c.pos = 0;
    mark = el_arena_mark(arena);
    status = parse_header(&c, gguf, err);
    if (status == EL_OK) status = parse_kvs(&c, gguf, arena, err);
    if (status == EL_OK) status = read_alignment(gguf, err);
    if (status == EL_OK) status = parse_tensor_infos(&c, gguf, arena, err);
    if (status == EL_OK) status = place_tensors(gguf, c.pos, err);
    if (status == EL_OK) status = check_layout(gguf, err);
    if (status != EL_OK) el_arena_reset(arena, mark); /* give back what a failed parse took */
    return status;
}

/* ------------------------------------------------------------ lookups */

const el_gguf_kv *el_gguf_find(const el_gguf *gguf, const char *key)
{
    uint64_t i;
    for (i = 0; i < gguf->n_kv; i++)
        if (el_str_equals(gguf->kv[i].key, key)) return &gguf->kv[i];
    return NULL;
}

const el_gguf_tensor *el_gguf_find_tensor(const el_gguf *gguf, const char *name)
{
    uint64_t i;
    for (i = 0; i < gguf->n_tensors; i++)
        if (el_str_equals(gguf->tensors[i].name, name)) return &gguf->tensors[i];
    return NULL;
}

static el_status missing_key(el_error *err, const char *key)
{
    return el_fail(err, EL_ERR_FORMAT, "missing metadata key ", key, NULL);
}

static el_status wrong_type(el_error *err, const char *key, const el_gguf_kv *kv, const char *expected)
{
    el_fail(err, EL_ERR_FORMAT, "metadata key ", key, " is ");
    el_error_append(err, value_type_name(kv->type));
    el_error_append(err, ", expected ");
    el_error_append(err, expected);
    return EL_ERR_FORMAT;
}

/* An integer value of any width and sign as sign + magnitude, so that no signed
 * conversion of an out-of-range value (implementation-defined in C) is needed.
 * Returns 0 when the value is not an integer. */
static int integer_value(const el_gguf_kv *kv, uint64_t *magnitude, int *negative)
{
    const uint8_t *p = kv->value;
    uint64_t v, sign_bit, span;
    switch (kv->type) {
    case EL_GGUF_UINT8: case EL_GGUF_INT8: v = p[0]; sign_bit = 0x80u; break;
    case EL_GGUF_UINT16: case EL_GGUF_INT16: v = read_u16(p); sign_bit = 0x8000u; break;
    case EL_GGUF_UINT32: case EL_GGUF_INT32: v = el_read_u32(p); sign_bit = 0x80000000u; break;
    case EL_GGUF_UINT64: case EL_GGUF_INT64: v = el_read_u64(p); sign_bit = 0x8000000000000000ull; break;
    default: return 0;
    }
    span = sign_bit * 2; /* 2**bits; wraps to 0 for 64 bits, which the subtraction below wants */
    *negative = (kv->type == EL_GGUF_INT8 || kv->type == EL_GGUF_INT16 || kv->type == EL_GGUF_INT32
                 || kv->type == EL_GGUF_INT64) && (v & sign_bit) != 0;
    *magnitude = *negative ? span - v : v;
    return 1;
}

el_status el_gguf_get_u32(const el_gguf *gguf, const char *key, uint32_t *out, el_error *err)
{
    const el_gguf_kv *kv = el_gguf_find(gguf, key);
    uint64_t magnitude;
    int negative;
    if (kv == NULL) return missing_key(err, key);
    if (!integer_value(kv, &magnitude, &negative)) return wrong_type(err, key, kv, "an integer");
    if (negative || magnitude > UINT32_MAX) {
        el_fail(err, EL_ERR_FORMAT, "metadata key ", key, " is ");
        if (negative) el_error_append(err, "-");
        append_u64(err, magnitude);
        el_error_append(err, ", outside 0 to 4294967295");
        return EL_ERR_FORMAT;
    }
    *out = (uint32_t)magnitude;
    return EL_OK;
}

el_status el_gguf_get_f32(const el_gguf *gguf, const char *key, float *out, el_error *err)
{
    const el_gguf_kv *kv = el_gguf_find(gguf, key);
    double wide;
    if (kv == NULL) return missing_key(err, key);
    if (kv->type == EL_GGUF_FLOAT32) {
        *out = el_read_f32(kv->value);
        return EL_OK;
    }
    if (kv->type != EL_GGUF_FLOAT64) return wrong_type(err, key, kv, "a float");
    /* Converting a double beyond float's range is undefined behaviour in C. */
    wide = read_f64(kv->value);
    if (wide > FLT_MAX || wide < -FLT_MAX)
        return el_fail(err, EL_ERR_FORMAT, "metadata key ", key, " is beyond float range");
    *out = (float)wide;
    return EL_OK;
}

el_status el_gguf_get_str(const el_gguf *gguf, const char *key, el_str *out, el_error *err)
{
    const el_gguf_kv *kv = el_gguf_find(gguf, key);
    if (kv == NULL) return missing_key(err, key);
    if (kv->type != EL_GGUF_STRING) return wrong_type(err, key, kv, "a string");
    /* parse checked the string: its length fits in u32 and its bytes in the file */
    out->len = (uint32_t)el_read_u64(kv->value);
    out->data = (const char *)kv->value + 8;
    return EL_OK;
}
