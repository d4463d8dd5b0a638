/* el_updater.c: two model slots and a boot record in a model store (el_updater.h). */
#include "el_updater.h"

#include "el_gguf.h" /* el_read_u32 */
#include "el_sha256.h"

#define RECORD_BYTES 128u
#define BOOT_MAGIC 0x52424c45u   /* "ELBR" */
#define UPLOAD_MAGIC 0x50554c45u /* "ELUP" */

/* ------------------------------------------------------------ bytes */

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* CRC-32 (zlib's) a nibble at a time: a 64-byte table in flash, about twice the speed of
 * the bitwise loop (the boot check runs it over the whole model). */
uint32_t el_crc32(const uint8_t *p, size_t n)
{
    static const uint32_t table[16] = {
        0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
        0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};
    uint32_t crc = 0xffffffffu;
    size_t i;
    for (i = 0; i < n; i++) {
        crc ^= p[i];
        crc = (crc >> 4) ^ table[crc & 15u];
        crc = (crc >> 4) ^ table[crc & 15u];
    }
    return ~crc;
}

static size_t slot_offset(const el_updater *u, int slot) { return u->slots_at + (size_t)(slot - 1) * u->slot_bytes; }

static const uint8_t *slot_bytes_at(const el_updater *u, int slot) { return u->store.base + slot_offset(u, slot); }

static int on_flash(const el_updater *u) { return u->store.erase_bytes > 0; }

/* Where record r lives: 0 and 1 the boot record's copies, 2 the upload record. */
static size_t record_at(const el_updater *u, int r) { return (size_t)r * u->record_stride; }

/* Replace a record: on flash its unit is erased first (the other records have units of
 * their own, so a cut here costs only this record). */
static void write_record(el_updater *u, int r, const uint8_t *bytes)
{
    if (on_flash(u)) u->store.erase(record_at(u, r), u->record_stride);
    u->store.write(record_at(u, r), bytes, RECORD_BYTES);
}

static int sha256_matches(const uint8_t *data, uint32_t size, const uint8_t want[32])
{
    el_sha256 h;
    uint8_t got[32];
    el_sha256_init(&h);
    el_sha256_update(&h, data, size);
    el_sha256_final(&h, got);
    return el_memcmp(got, want, 32) == 0;
}

/* A slot's model still has the bytes its record says (the image's own always has). */
static int model_whole(const el_updater *u, const el_model_ref *m)
{
    if (m->slot == 0) return 1;
    return m->size <= u->slot_bytes && sha256_matches(slot_bytes_at(u, m->slot), m->size, m->sha256);
}

/* ------------------------------------------------------------ records */

/* model reference: slot, size, sha256 (40 bytes) */
static void put_ref(uint8_t *p, const el_model_ref *m)
{
    put_u32(p, (uint32_t)m->slot);
    put_u32(p + 4, m->size);
    el_memcpy(p + 8, m->sha256, 32);
}

static void get_ref(const uint8_t *p, el_model_ref *m)
{
    m->slot = (int)el_read_u32(p);
    m->size = el_read_u32(p + 4);
    el_memcpy(m->sha256, p + 8, 32);
}

/* boot record: magic, generation, the model in force, the one before it, CRC-32 */
static int read_boot_record(const el_updater *u, int copy, uint32_t *generation, el_model_ref *active,
                            el_model_ref *previous)
{
    const uint8_t *r = u->store.base + record_at(u, copy);
    if (el_read_u32(r) != BOOT_MAGIC || el_read_u32(r + 88) != el_crc32(r, 88)) return 0;
    *generation = el_read_u32(r + 4);
    get_ref(r + 8, active);
    get_ref(r + 48, previous);
    return active->slot >= 0 && active->slot <= 2 && previous->slot >= 0 && previous->slot <= 2;
}

static void write_boot_record(el_updater *u)
{
    uint8_t r[RECORD_BYTES];
    el_memset(r, 0, sizeof r);
    put_u32(r, BOOT_MAGIC);
    put_u32(r + 4, u->generation);
    put_ref(r + 8, &u->active);
    put_ref(r + 48, &u->previous);
    put_u32(r + 88, el_crc32(r, 88));
    /* generation n goes to copy n % 2: never over the copy in force */
    write_record(u, (int)(u->generation % 2u), r);
}

/* The upload and `received`, the bytes a restart may resume after. */
static void write_upload_record(el_updater *u, uint32_t received)
{
    uint8_t r[RECORD_BYTES];
    el_memset(r, 0, sizeof r);
    if (u->upload.slot != 0) {
        put_u32(r, UPLOAD_MAGIC);
        put_ref(r + 4, &u->upload);
        put_u32(r + 44, received);
        put_u32(r + 60, el_crc32(r, 60));
    }
    write_record(u, 2, r);
}

static void read_upload_record(el_updater *u)
{
    const uint8_t *r = u->store.base + record_at(u, 2);
    u->upload.slot = 0;
    u->received = 0;
    if (el_read_u32(r) != UPLOAD_MAGIC || el_read_u32(r + 60) != el_crc32(r, 60)) return;
    get_ref(r + 4, &u->upload);
    u->received = el_read_u32(r + 44);
    if (u->upload.slot < 1 || u->upload.slot > 2 || u->upload.size > u->slot_bytes || u->received > u->upload.size)
        u->upload.slot = 0, u->received = 0;
}

/* ------------------------------------------------------------ boot */

void el_updater_init(el_updater *u, el_store store, const uint8_t *builtin, size_t builtin_size)
{
    uint32_t g0 = 0, g1 = 0;
    el_model_ref a0, p0, a1, p1;
    int ok0, ok1;
    el_memset(u, 0, sizeof *u);
    u->store = store;
    u->builtin = builtin;
    u->builtin_size = builtin_size;
    u->record_stride = RECORD_BYTES;
    u->slots_at = EL_STORE_SLOTS_AT;
    if (on_flash(u)) { /* whole units per record, the slots in whole units (units are powers of two) */
        size_t unit = store.erase_bytes;
        u->record_stride = (RECORD_BYTES + unit - 1) / unit * unit;
        u->slots_at = 3 * u->record_stride > EL_STORE_SLOTS_AT ? 3 * u->record_stride : EL_STORE_SLOTS_AT;
    }
    if (store.base == NULL || store.size <= u->slots_at) return; /* no store (a board whose flash has no room) */
    {
        size_t granule = on_flash(u) && store.erase_bytes > 4096u ? store.erase_bytes : 4096u;
        u->slot_bytes = (store.size - u->slots_at) / 2u / granule * granule;
    }
    ok0 = read_boot_record(u, 0, &g0, &a0, &p0);
    ok1 = read_boot_record(u, 1, &g1, &a1, &p1);
    if (ok0 && (!ok1 || g0 > g1)) u->generation = g0, u->active = a0, u->previous = p0;
    else if (ok1) u->generation = g1, u->active = a1, u->previous = p1;
    read_upload_record(u);
}

const uint8_t *el_updater_model(el_updater *u, size_t *size)
{
    if (!model_whole(u, &u->active)) u->active.slot = 0; /* a slot that lost its bytes: the image's own */
    if (u->active.slot == 0) {
        *size = u->builtin_size;
        return u->builtin;
    }
    *size = u->active.size;
    return slot_bytes_at(u, u->active.slot);
}

/* ------------------------------------------------------------ uploads */

long el_updater_begin(el_updater *u, uint32_t size, const uint8_t sha256[32], const char **error)
{
    el_model_ref want;
    int target = u->active.slot == 1 ? 2 : 1; /* never the slot in use */
    if (u->slot_bytes == 0) return *error = "model: this board has no model store", -1;
    if (size == 0) return *error = "model: MODEL_BEGIN needs size=N above 0", -1;
    want.size = size;
    el_memcpy(want.sha256, sha256, 32);
    if (want.size > u->slot_bytes) return *error = "model: larger than a slot (INFO's slot_bytes)", -1;
    want.slot = target;
    if (u->upload.slot == target && u->upload.size == want.size && el_memcmp(u->upload.sha256, want.sha256, 32) == 0)
        return (long)u->received; /* the same model again: go on where it stopped */
    if (u->previous.slot == target) { /* its bytes are about to go: rollback goes to the image's own */
        u->previous.slot = 0;
        u->previous.size = (uint32_t)u->builtin_size;
        u->generation++;
        write_boot_record(u);
    }
    u->upload = want;
    u->received = 0;
    write_upload_record(u, 0);
    return 0;
}

/* Flash: erase the units of the slot that this chunk enters (a unit is entered at its
 * first byte; a resumed upload starts at a unit's start, so that unit is erased again). */
static void erase_entered_units(el_updater *u, size_t at, uint32_t len)
{
    size_t unit = u->store.erase_bytes, first = (at + unit - 1) / unit * unit;
    for (; first < at + len; first += unit) u->store.erase(first, unit);
}

/* The progress to record after a chunk (0: keep the record as it is): in writable memory
 * every chunk; on flash only at a unit boundary or the end. */
static int progress_to_record(const el_updater *u, uint32_t before, uint32_t after, uint32_t *recorded)
{
    size_t unit = u->store.erase_bytes;
    if (!on_flash(u) || after == u->upload.size) return *recorded = after, 1;
    if (after / unit == before / unit) return 0;
    *recorded = (uint32_t)(after / unit * unit);
    return 1;
}

int el_updater_chunk(el_updater *u, const uint8_t *payload, int n, const char **error)
{
    uint32_t offset, len, recorded;
    if (u->upload.slot == 0) return *error = "model: no upload in progress (MODEL_BEGIN first)", -1;
    if (n < 5) return *error = "model: a chunk is 4 bytes of offset and at least one byte", -1;
    offset = el_read_u32(payload);
    len = (uint32_t)n - 4u;
    if (offset != u->received) return *error = "model: chunk out of order (send from the offset MODEL_BEGIN gave)", -1;
    if (len > u->upload.size - offset) return *error = "model: chunk past the announced size", -1;
    if (on_flash(u)) erase_entered_units(u, slot_offset(u, u->upload.slot) + offset, len);
    u->store.write(slot_offset(u, u->upload.slot) + offset, payload + 4, len);
    u->received += len;
    if (progress_to_record(u, offset, u->received, &recorded)) write_upload_record(u, recorded); /* a restart resumes there */
    return 0;
}

/* The switch: a new generation in the copy that is not in force. */
static void switch_to(el_updater *u, const el_model_ref *to)
{
    u->previous = u->active;
    u->active = *to;
    u->generation++;
    write_boot_record(u);
}

int el_updater_commit(el_updater *u, const char **error)
{
    el_model_ref to = u->upload;
    if (to.slot == 0) return *error = "model: no upload in progress", -1;
    if (u->received != to.size) return *error = "model: the upload is not complete", -1;
    if (!sha256_matches(slot_bytes_at(u, to.slot), to.size, to.sha256)) {
        u->upload.slot = 0; /* the bytes are wrong: the next upload starts over */
        u->received = 0;
        write_upload_record(u, 0);
        return *error = "model: the slot's SHA-256 differs from the announced one; upload again", -1;
    }
    switch_to(u, &to);
    u->upload.slot = 0;
    u->received = 0;
    write_upload_record(u, 0);
    return 0;
}

int el_updater_rollback(el_updater *u, const char **error)
{
    el_model_ref to = u->previous;
    if (u->generation == 0) return *error = "model: nothing to roll back to (no model was uploaded)", -1;
    if (!model_whole(u, &to)) return *error = "model: the model before is no longer whole", -1;
    switch_to(u, &to);
    return 0;
}

void el_updater_revert(el_updater *u)
{
    el_model_ref back = u->previous;
    u->previous = u->active;
    u->active = back;
    u->generation++;
    write_boot_record(u);
}
