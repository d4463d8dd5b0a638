/* el_memory_store.c: a model store in plain memory (el_port.h's port_model_store and
 * friends), for ports whose store is RAM that keeps its contents: link.ld's .el_store
 * (el_store_start..el_store_end) at the end of the emulated boards' PSRAM, which
 * edgellama backs with a file (the board's store_file), so it survives a restart as
 * flash would. A port takes it by naming app/el_memory_store.c in port.mk's PORT_SRCS
 * beside -DEL_PORT_MODEL_STORE=1; a flash port writes its own. */
#include "el_port.h"

extern uint8_t el_store_start[], el_store_end[];

uint8_t *port_model_store(size_t *size, size_t *erase_bytes)
{
    *size = (size_t)(el_store_end - el_store_start);
    *erase_bytes = 0; /* writable memory */
    return el_store_start;
}

void port_store_write(size_t offset, const void *data, size_t n)
{
    const uint8_t *from = (const uint8_t *)data;
    size_t i;
    for (i = 0; i < n; i++) el_store_start[offset + i] = from[i];
}

void port_store_erase(size_t offset, size_t n)
{
    (void)offset;
    (void)n;
}
