# port.mk: what the AN386 port adds to the bare-metal Makefile.
PORT_SRCS = port/startup.c port/port.c app/el_memory_store.c
# the rest of PSRAM keeps uploaded models (edgellama keeps it in a file: the board's store_file)
PORT_CFLAGS = -DEL_PORT_MODEL_STORE=1
PORT_LDFLAGS =
LDSCRIPT = port/link.ld
# where the model goes unless config.mk says (WEIGHTS_REGION), and the sizes the
# Makefile's default arena placement compares against
PORT_WEIGHTS_REGION = FLASH
RAM_BYTES = 4194304
PSRAM_REGION = PSRAM
