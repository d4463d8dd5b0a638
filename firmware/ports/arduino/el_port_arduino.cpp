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
 *   EL_PORT_MODEL_STORE  1: keep models sent over the serial line in flash
 *                    (el_updater.h): the RP2350's filesystem region (the core's
 *                    _FS_start.._FS_end, sized by board_build.filesystem_size; no
 *                    filesystem is mounted on it), the ESP32-S3's "spiffs" data partition
 */
#include <Arduino.h>
#if defined(EL_PORT_MODEL_STORE) && defined(ARDUINO_ARCH_ESP32)
#include <esp_idf_version.h>
#include <esp_partition.h>
#if ESP_IDF_VERSION_MAJOR >= 5
#include <spi_flash_mmap.h> /* SPI_FLASH_SEC_SIZE */
#else
#include <esp_spi_flash.h>
#endif
#elif defined(EL_PORT_MODEL_STORE) && defined(ARDUINO_ARCH_RP2040)
#include <hardware/flash.h>
#endif

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

/* ------------------------------------------------------------ the model store (flash) */

#if defined(EL_PORT_MODEL_STORE) && defined(ARDUINO_ARCH_ESP32)
/* The "spiffs" data partition of the board's partition table, mapped for reading (the
 * runtime reads a stored model in place); esp_partition_write/erase_range keep the
 * mapping's cache coherent. */
static const esp_partition_t *store_partition;

uint8_t *port_model_store(size_t *size, size_t *erase_bytes)
{
    const void *mapped = NULL;
#if ESP_IDF_VERSION_MAJOR >= 5
    esp_partition_mmap_handle_t handle;
    const esp_partition_mmap_memory_t memory = ESP_PARTITION_MMAP_DATA;
#else
    spi_flash_mmap_handle_t handle;
    const spi_flash_mmap_memory_t memory = SPI_FLASH_MMAP_DATA;
#endif
    *size = 0;
    *erase_bytes = SPI_FLASH_SEC_SIZE;
    store_partition = esp_partition_find_first(ESP_PARTITION_TYPE_DATA, ESP_PARTITION_SUBTYPE_DATA_SPIFFS, NULL);
    if (store_partition == NULL ||
        esp_partition_mmap(store_partition, 0, store_partition->size, memory, &mapped, &handle) != ESP_OK)
        return NULL; /* no store: the board runs the model of its image */
    *size = store_partition->size;
    return (uint8_t *)mapped;
}

void port_store_write(size_t offset, const void *data, size_t n) { esp_partition_write(store_partition, offset, data, n); }

void port_store_erase(size_t offset, size_t n) { esp_partition_erase_range(store_partition, offset, n); }

#elif defined(EL_PORT_MODEL_STORE) && defined(ARDUINO_ARCH_RP2040)
/* The flash after the sketch that the core keeps for a filesystem, read through XIP. The
 * SDK's erase and program run from RAM with the flash off the bus, so interrupts are off
 * and the other core waits meanwhile (as the core's own LittleFS does); they flush the XIP
 * cache when done. */
extern "C" uint8_t _FS_start, _FS_end;

static uint32_t flash_offset(size_t offset) { return (uint32_t)((uintptr_t)(&_FS_start + offset) - XIP_BASE); }

uint8_t *port_model_store(size_t *size, size_t *erase_bytes)
{
    *size = (size_t)(&_FS_end - &_FS_start);
    *erase_bytes = FLASH_SECTOR_SIZE;
    return &_FS_start;
}

void port_store_erase(size_t offset, size_t n)
{
    noInterrupts();
    rp2040.idleOtherCore();
    flash_range_erase(flash_offset(offset), n);
    rp2040.resumeOtherCore();
    interrupts();
}

/* Programming takes whole 256-byte pages: the bytes around the range are 0xFF, which
 * leaves those already in flash as they are. */
void port_store_write(size_t offset, const void *data, size_t n)
{
    const uint8_t *from = (const uint8_t *)data;
    uint8_t page[FLASH_PAGE_SIZE];
    size_t at, i;
    for (at = offset / FLASH_PAGE_SIZE * FLASH_PAGE_SIZE; at < offset + n; at += FLASH_PAGE_SIZE) {
        for (i = 0; i < FLASH_PAGE_SIZE; i++)
            page[i] = at + i >= offset && at + i < offset + n ? from[at + i - offset] : 0xFF;
        noInterrupts();
        rp2040.idleOtherCore();
        flash_range_program(flash_offset(at), page, FLASH_PAGE_SIZE);
        rp2040.resumeOtherCore();
        interrupts();
    }
}
#elif defined(EL_PORT_MODEL_STORE)
#error "EL_PORT_MODEL_STORE: this Arduino core has no model store here (ESP32 and RP2040/RP2350 do)"
#endif

void setup(void) { el_app_main(); /* never returns */ }

void loop(void) {}
