/* el_memory_store.c: a model store in plain memory (el_port.h's port_model_store and
 * friends), for ports whose store is RAM that keeps its contents: link.ld's .el_store
 * (el_store_start..el_store_end) at the end of the emulated boards' PSRAM, which
 * edgellama backs with a file (the board's store_file), so it survives a restart as
 * flash would. A port takes it by naming app/el_memory_store.c in port.mk's PORT_SRCS
 * beside -DEL_PORT_MODEL_STORE=1; a flash port writes its own.
 *
 * Built with -DEL_STORE_SIMULATE_FLASH=UNIT (the tests do), the memory behaves as flash
 * with erase units of UNIT bytes, erased to 0xFF: a write may only clear bits, and one
 * that would set a bit stops the board with a message, so the updater's flash
 * discipline runs end to end on an emulated board. */
#include "el_port.h"

extern uint8_t el_store_start[], el_store_end[];

#ifdef EL_STORE_SIMULATE_FLASH
#define STORE_ERASE_BYTES ((size_t)(EL_STORE_SIMULATE_FLASH))
#else
#define STORE_ERASE_BYTES ((size_t)0) /* writable memory */
#endif

static void refuse(const char *why)
{
    while (*why) port_putc((unsigned char)*why++);
    port_exit(4);
}

uint8_t *port_model_store(size_t *size, size_t *erase_bytes)
{
    *size = (size_t)(el_store_end - el_store_start);
    *erase_bytes = STORE_ERASE_BYTES;
    return el_store_start;
}

void port_store_write(size_t offset, const void *data, size_t n)
{
    const uint8_t *from = (const uint8_t *)data;
    size_t i;
    for (i = 0; i < n; i++) {
        if (STORE_ERASE_BYTES && (el_store_start[offset + i] & from[i]) != from[i])
            refuse("\n[fault] store: a write to flash that was not erased\n");
        el_store_start[offset + i] = from[i];
    }
}

void port_store_erase(size_t offset, size_t n)
{
#ifdef EL_STORE_SIMULATE_FLASH
    size_t i;
    if (offset % STORE_ERASE_BYTES != 0 || n % STORE_ERASE_BYTES != 0)
        refuse("\n[fault] store: an erase of part of a unit\n");
    for (i = 0; i < n; i++) el_store_start[offset + i] = 0xFF;
#else
    (void)offset;
    (void)n;
    refuse("\n[fault] store: an erase of memory that is not flash\n");
#endif
}
