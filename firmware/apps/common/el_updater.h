/* el_updater.h: models over the serial line (PROTOCOL.md, "Models over the line").
 *
 * A board with a model store (flash, or memory that keeps its contents) holds two model
 * slots and a boot record; the model linked into the image stays as the fallback. An
 * upload goes to the slot that is not in use, in chunks whose progress is recorded, so a
 * cut link or a power loss resumes where it stopped; a commit checks the slot's SHA-256
 * against the one the upload announced and only then switches the boot record. Until
 * that switch the old model answers, and after a power loss at any point the board boots
 * the model of the record in force.
 *
 * The store, from its start, where it is writable memory (a file-backed region under
 * QEMU, PSRAM kept powered):
 *
 *     0     boot record, copy 0 (128 bytes)      two copies: a switch writes the older
 *     128   boot record, copy 1                  one, so a cut write leaves the other
 *     256   upload record (128 bytes)            the upload in progress
 *     4096  slot 1, then slot 2                  slot_bytes each: (size - 4096) / 2, in 4 KiB
 *
 * Where it is flash (erase_bytes E > 0: a write may only clear bits of erased bytes), each
 * record has an erase unit of its own, so erasing one copy never touches the other: copy 0
 * at 0, copy 1 at E, the upload record at 2E, the slots from 3E (at least 4096), each a
 * whole number of units. An upload erases each unit of its slot as it enters it, and
 * records its progress only at unit boundaries (and at the end), so the record's unit is
 * erased once per unit of model, not once per chunk, and a resumed upload starts at a
 * unit's start, which it erases again (bytes a cut write left half-programmed included).
 *
 * A boot record: "ELBR", generation, the model in force (0: the image's own, 1 or 2: a
 * slot) with its size and SHA-256, the one before it (for rollback) likewise, and a
 * CRC-32 of the rest; the valid copy with the higher generation is in force. An upload
 * record: "ELUP", the slot, size, SHA-256, bytes received so far, CRC-32. Numbers are
 * little-endian 32-bit words.
 */
#ifndef EL_UPDATER_H
#define EL_UPDATER_H

#include "el_base.h"

#define EL_STORE_SLOTS_AT 4096u /* the slots' start in writable memory, and at least that on flash */

/* Where models are kept: base and size of a memory-mapped store, and how to write it.
 * Writable memory: erase_bytes 0, write a plain copy, erase unused. Flash: erase_bytes is
 * its erase unit, erase(offset, n) sets whole units (offset and n multiples of it) to
 * 0xFF, and write programs bytes that erase left at 0xFF (or rewrites them unchanged). */
typedef struct {
    uint8_t *base;
    size_t size;
    size_t erase_bytes;
    void (*write)(size_t offset, const void *data, size_t n);
    void (*erase)(size_t offset, size_t n);
} el_store;

typedef struct {
    int slot;                 /* 0: the image's own model, 1 or 2: a slot */
    uint32_t size;
    uint8_t sha256[32];
} el_model_ref;

typedef struct {
    el_store store;
    const uint8_t *builtin;   /* the model linked into the image */
    size_t builtin_size;
    size_t slot_bytes;
    size_t record_stride;     /* 128 bytes, or one erase unit on flash */
    size_t slots_at;          /* where slot 1 starts */
    uint32_t generation;      /* the record in force (0: none written yet) */
    el_model_ref active, previous;
    el_model_ref upload;      /* the upload in progress (slot 0: none) */
    uint32_t received;        /* bytes of it stored (the record may say fewer on flash) */
} el_updater;

/* Reads the records. Nothing is written until an upload begins. */
void el_updater_init(el_updater *u, el_store store, const uint8_t *builtin, size_t builtin_size);
/* The model to run: the record's, when its bytes still have their SHA-256 (else the one
 * before it, else the image's own; `active` says which). */
const uint8_t *el_updater_model(el_updater *u, size_t *size);
/* MODEL_BEGIN (size and SHA-256 of the model): the offset to send from (the bytes an
 * upload of the same model already stored), or -1 with *error set. */
long el_updater_begin(el_updater *u, uint32_t size, const uint8_t sha256[32], const char **error);
/* MODEL_CHUNK: 4 bytes of offset (LE), then the bytes; 0, or -1 with *error set. */
int el_updater_chunk(el_updater *u, const uint8_t *payload, int n, const char **error);
/* MODEL_COMMIT: the whole upload, its SHA-256 right: the record switches to it. */
int el_updater_commit(el_updater *u, const char **error);
/* MODEL_ROLLBACK: back to the model before (when its bytes are still whole). */
int el_updater_rollback(el_updater *u, const char **error);
/* Undo the last switch (the model it switched to would not open). */
void el_updater_revert(el_updater *u);

/* CRC-32 (zlib's): the records' check, and the boot check of the image's own model. */
uint32_t el_crc32(const uint8_t *p, size_t n);

#endif
