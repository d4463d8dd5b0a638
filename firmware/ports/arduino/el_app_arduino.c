/* el_app_arduino.c: the bare-metal main loop (firmware/apps/baremetal/main.c, copied
 * beside this file as el_app_main.inc) under an Arduino core.
 *
 * An Arduino core owns main() and calls setup() and loop(), so the loop's main()
 * becomes el_app_main(), which the port's setup() calls (el_port_arduino.cpp). The
 * arena comes from the port: main.c's own static arena lives in a section (.el_arena)
 * that only our bare-metal linker scripts place, so here it shrinks to a stub and
 * el_runtime_open goes through el_port_runtime_open, which opens the runtime on the
 * port's arena (PSRAM on an ESP32 with PSRAM, a static SRAM buffer elsewhere). */
#undef EL_ARENA_BYTES
#define EL_ARENA_BYTES 64u
#define main el_app_main
#define el_runtime_open el_port_runtime_open
#include "el_app_main.inc"
