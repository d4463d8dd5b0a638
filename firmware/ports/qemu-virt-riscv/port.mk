# port.mk: what the riscv virt port adds to the bare-metal Makefile. RV64GC builds with
# Debian's riscv64-linux-gnu-gcc, which defaults to PIE and a stack protector (both off
# here); RV32IMAC with riscv64-unknown-elf-gcc, whose rv32imac/ilp32 multilib (picked by
# the board's -march/-mabi) brings soft float and 64-bit division in libgcc.
PORT_SRCS = port/port.c port/start.S app/el_memory_store.c
# the rest of RAM keeps uploaded models (edgellama keeps it in a file: the board's store_file)
PORT_CFLAGS = -DEL_PORT_MODEL_STORE=1 -fno-pic -fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables -fno-unwind-tables
PORT_LDFLAGS = -static -no-pie -Wl,--build-id=none
LDSCRIPT = port/link.ld
# where the model goes unless config.mk says (WEIGHTS_REGION), and the sizes the
# Makefile's default arena placement compares against
PORT_WEIGHTS_REGION = RAM
RAM_BYTES = 134217728
PSRAM_REGION =
