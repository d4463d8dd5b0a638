/* start.S: reset for QEMU's riscv32 virt machine (-bios none), in machine mode, on an
 * RV32IMAC hart (no FPU: float and double are libgcc's soft-float routines).
 *
 * QEMU starts every hart at 0x80000000 with a0 = hart id. Hart 0 runs the program;
 * any others park. Before C: gp (the linker relaxes accesses within 2 KiB of
 * __global_pointer$ into gp-relative ones, so gp must hold it before any C runs), the
 * stack, a trap vector (a fault prints its cause and exits with a failure), and .bss
 * zeroed. .data needs no copy: QEMU loads the whole image into RAM. The arena
 * (.el_arena) is not zeroed here: the runtime zeroes every block it hands out.
 */
    /* the CSR instructions are Zicsr, which the board's -march=rv32imac leaves out (GCC 12
     * splits it from the base ISA) and which cannot be added there: -march=rv32imac_zicsr
     * no longer matches the rv32imac/ilp32 multilib, so the rv64 libgcc would be linked */
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
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 2f
    sw      zero, 0(t0)
    addi    t0, t0, 4
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
