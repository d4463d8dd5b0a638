/* el_port_arduino.cpp: el_port.h for PlatformIO boards with an Arduino core (ESP32-S3,
 * RP2350): the UART is Arduino's Serial (USB CDC on both boards), ticks are micros().
 *
 * Build-time settings (the generated platformio.ini passes them):
 *   EL_ARENA_BYTES   the runtime's arena
 *   EL_ARENA_PSRAM   1: allocate the arena in PSRAM with ps_malloc (ESP32), else a
 *                    static buffer in SRAM
 *   EL_BAUD          Serial's baud rate (a USB CDC port ignores it)
 *   EL_MAX_BATCH_TOKENS  rows per forward step when the main loop leaves it to the
 *                    runtime (the planner's MCU figure, smaller than the runtime's 32)
 */
#include <Arduino.h>

extern "C" {
#include "el_port.h"
#include "el_runtime.h"

int el_app_main(void);
el_runtime *el_port_runtime_open(void *memory, size_t memory_size, const uint8_t *model, size_t model_size,
                                 const el_engine_options *options, el_error *err);
}

#ifndef EL_ARENA_BYTES
#define EL_ARENA_BYTES (400u * 1024u)
#endif
#ifndef EL_ARENA_PSRAM
#define EL_ARENA_PSRAM 0
#endif
#ifndef EL_BAUD
#define EL_BAUD 115200
#endif
#define ARENA_ALIGN 64u

#if defined(ARDUINO_ARCH_ESP32) && defined(SET_LOOP_TASK_STACK_SIZE)
SET_LOOP_TASK_STACK_SIZE(16 * 1024); /* the main loop runs in Arduino's loop task */
#endif

#if !EL_ARENA_PSRAM
static unsigned char arena[EL_ARENA_BYTES] __attribute__((aligned(ARENA_ALIGN)));
#endif

static uint32_t ticks_last;
static uint64_t ticks_total;

void port_init(void)
{
    Serial.begin(EL_BAUD);
    while (!Serial) delay(10); /* USB CDC: wait for the host to open the port */
    ticks_last = micros();
    ticks_total = 0;
}

void port_putc(int c) { Serial.write((uint8_t)c); }

int port_getc(void)
{
    int c;
    while ((c = Serial.read()) < 0) delay(1); /* lets the core's USB and idle tasks run */
    return c & 0xFF;
}

int port_try_getc(void)
{
    int c = Serial.read();
    return c < 0 ? -1 : c & 0xFF;
}

void port_exit(int code)
{
    (void)code;
    Serial.flush();
    for (;;) delay(1000); /* a board has nowhere to exit to: stop */
}

/* micros() extended to 64 bits: correct while read at least once per 71-minute wrap
 * (the main loop reads it every step). */
uint64_t port_ticks(void)
{
    uint32_t now = micros();
    ticks_total += (uint32_t)(now - ticks_last);
    ticks_last = now;
    return ticks_total;
}

uint32_t port_tick_hz(void) { return 1000000u; }

el_runtime *el_port_runtime_open(void *memory, size_t memory_size, const uint8_t *model, size_t model_size,
                                 const el_engine_options *options, el_error *err)
{
    unsigned char *base;
    el_engine_options opts = *options;
    (void)memory; /* the main loop's stub arena */
    (void)memory_size;
#ifdef EL_MAX_BATCH_TOKENS
    if (opts.max_batch_tokens == 0) opts.max_batch_tokens = EL_MAX_BATCH_TOKENS;
#endif
#if EL_ARENA_PSRAM
    uintptr_t raw = (uintptr_t)ps_malloc(EL_ARENA_BYTES + ARENA_ALIGN);
    if (raw == 0) {
        el_fail(err, EL_ERR_NO_MEMORY, "PSRAM: cannot allocate the arena of ", NULL, NULL);
        el_error_num(err, (long long)EL_ARENA_BYTES);
        el_error_append(err, " bytes (is PSRAM enabled and big enough?)");
        return NULL;
    }
    base = (unsigned char *)((raw + ARENA_ALIGN - 1) & ~(uintptr_t)(ARENA_ALIGN - 1));
#else
    base = arena;
#endif
    return el_runtime_open(base, EL_ARENA_BYTES, model, model_size, &opts, err);
}

void setup(void) { el_app_main(); /* never returns */ }

void loop(void) {}
