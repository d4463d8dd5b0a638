/* el_model_flash.S: the GGUF model, byte for byte, in flash, read in place by the runtime.
 *
 * The file comes in with .incbin, found through the include path (the PlatformIO
 * project passes -I data). The section is a .rodata one, so every Arduino core's linker
 * script puts it in flash (the RP2350's XIP flash, the ESP32-S3's flash-mapped DROM)
 * with no linker script of ours; it starts 32-byte aligned, GGUF's tensor alignment, so
 * each tensor is as aligned in memory as in the file. The symbols are the ones the
 * bare-metal main loop (firmware/apps/baremetal/main.c) reads. */
#ifndef EL_MODEL_FILE
#define EL_MODEL_FILE "model.gguf"
#endif
    .section .rodata.el_model, "a"
    .balign 32
    .global el_model_start
el_model_start:
    .incbin EL_MODEL_FILE
    .global el_model_end
el_model_end:
