/* el_model_blob.S: the GGUF model file, byte for byte, in read-only memory (flash on a
 * microcontroller), where the runtime reads the weights in place.
 *
 * The Makefile defines EL_MODEL_FILE as the file's path in quotes. The start is aligned
 * to 32 bytes, GGUF's tensor alignment, so every tensor is as aligned in memory as it is
 * in the file. */
    .section .el_model, "a"
    .balign 32
    .global el_model_start
el_model_start:
    .incbin EL_MODEL_FILE
    .global el_model_end
el_model_end:
    .byte 0
