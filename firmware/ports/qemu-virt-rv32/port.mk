# port.mk: what the riscv32 virt port adds to the bare-metal Makefile. The compiler is
# Debian's riscv64-unknown-elf-gcc (no C library, not PIE); the board's -march=rv32imac
# -mabi=ilp32 pick its rv32imac/ilp32 multilib, whose libgcc brings soft float and
# 64-bit division.
PORT_SRCS = port/port.c port/start.S
PORT_CFLAGS = -fno-pic -fno-stack-protector -fno-asynchronous-unwind-tables -fno-unwind-tables
PORT_LDFLAGS = -static -Wl,--build-id=none
LDSCRIPT = port/link.ld
# where the model goes unless config.mk says (WEIGHTS_REGION), and the sizes the
# Makefile's default arena placement compares against
PORT_WEIGHTS_REGION = RAM
RAM_BYTES = 134217728
PSRAM_REGION =
