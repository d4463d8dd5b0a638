/* start.S: reset for QEMU's riscv64 and riscv32 virt machines (-bios none), in machine
 * mode.
 *
 * QEMU starts every hart at 0x80000000 with a0 = hart id. Hart 0 runs the program;
 * any others park. Before C: gp (the linker relaxes accesses within 2 KiB of
 * __global_pointer$ into gp-relative ones, so gp must hold it before any C runs), the
 * stack, a trap vector (a fault prints its cause and exits with a failure), the FPU
 * where the hart has one (mstatus.FS = Initial: with FS off every floating-point
 * instruction traps; RV32IMAC has none, and libgcc does float in software), and .bss
 * zeroed. .data needs no copy: QEMU loads the whole image into RAM. The arena
 * (.el_arena) is not zeroed here: the runtime zeroes every block it hands out.
 */
#if __riscv_xlen == 32
#define STORE_ZERO sw zero, 0(t0)
#define WORD_BYTES 4
#else
#define STORE_ZERO sd zero, 0(t0)
#define WORD_BYTES 8
#endif
    /* the CSR instructions are Zicsr, which -march=rv32imac leaves out (GCC 12 splits it
     * from the base ISA) and which cannot be added there: -march=rv32imac_zicsr no longer
     * matches the rv32imac/ilp32 multilib, so the rv64 libgcc would be linked */
    .option arch, +zicsr
    .section .text.start, "ax"
    .global _start
_start:
    /* with relaxation on, the linker would turn this very load into "mv gp, gp" */
    .option push
    .option norelax
    la      gp, __global_pointer$
    .option pop
    csrr    t0, mhartid
    bnez    t0, park
    la      sp, __stack_top
    la      t0, trap_entry
    csrw    mtvec, t0
#ifdef __riscv_flen
    li      t0, (1 << 13)          /* mstatus.FS = 01 (Initial) */
    csrs    mstatus, t0
    csrw    fcsr, zero             /* round to nearest, no flags */
#endif
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 2f
    STORE_ZERO
    addi    t0, t0, WORD_BYTES
    j       1b
2:  call    main
    call    port_exit              /* main's status is in a0 */
park:
    wfi
    j       park

    .balign 4
trap_entry:
    la      sp, __stack_top        /* whatever went wrong, report it on a fresh stack */
    csrr    a0, mcause
    csrr    a1, mepc
    csrr    a2, mtval
    call    port_trap
    j       park
