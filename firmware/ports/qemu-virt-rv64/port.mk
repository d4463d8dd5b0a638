# port.mk: what the riscv64 virt port adds to the bare-metal Makefile. The compiler is
# Debian's riscv64-linux-gnu-gcc, which defaults to PIE and a stack protector: both off.
PORT_SRCS = port/port.c port/start.S
PORT_CFLAGS = -fno-pic -fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables -fno-unwind-tables
PORT_LDFLAGS = -static -no-pie -Wl,--build-id=none
LDSCRIPT = port/link.ld
# where the model goes unless config.mk says (WEIGHTS_REGION), and the sizes the
# Makefile's default arena placement compares against
PORT_WEIGHTS_REGION = RAM
RAM_BYTES = 134217728
PSRAM_REGION =
