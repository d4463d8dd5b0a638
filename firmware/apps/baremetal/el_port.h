/* el_port.h: what the bare-metal main loop needs from a board.
 *
 * A port (firmware/ports/BOARD/) brings the startup code that gets to main() with a
 * stack, .data copied, .bss zeroed and the FPU on; a linker script; and these
 * functions. Everything else (the runtime, the main loop, the weights) is portable.
 */
#ifndef EL_PORT_H
#define EL_PORT_H

#include <stdint.h>

#if defined(__GNUC__)
#define EL_NORETURN __attribute__((noreturn))
#else
#define EL_NORETURN
#endif

/* Clocks and the UART; called once, first thing in main(). */
void port_init(void);
/* Blocking: waits while the transmitter is full. */
void port_putc(int c);
/* Blocking: waits for one received byte and returns it (0..255). */
int port_getc(void);
/* Non-blocking: a received byte (0..255), or -1 when none is waiting. Optional: the
 * main loop brings a weak one that always says none (CANCEL is then read only
 * between requests). */
int port_try_getc(void);
/* Ends the program: 0 is success. Under QEMU the emulator exits with a status that
 * says which; on a board it stops (or resets). Never returns. */
EL_NORETURN void port_exit(int code);
/* A free-running tick counter (64-bit, never wraps in practice) and its rate; a port
 * without a timer returns 0 from both, and the stats leave times out. */
uint64_t port_ticks(void);
uint32_t port_tick_hz(void);

#ifdef EL_PORT_MODEL_STORE
#include <stddef.h>
/* Optional (port.mk defines EL_PORT_MODEL_STORE): memory that keeps its contents across
 * a restart, for models over the serial line (firmware/apps/common/el_updater.h). Its
 * start and size, and its erase unit (0: writable memory, where port_store_write is a
 * copy and port_store_erase is never called; flash: its sector size, where
 * port_store_erase sets whole sectors to 0xFF and port_store_write programs). */
uint8_t *port_model_store(size_t *size, size_t *erase_bytes);
void port_store_write(size_t offset, const void *data, size_t n);
void port_store_erase(size_t offset, size_t n);
#endif

#endif
