/* start.S: reset for QEMU's riscv64 virt machine (-bios none), in machine mode.
 *
 * QEMU starts every hart at 0x80000000 with a0 = hart id. Hart 0 runs the program;
 * any others park. Before C: the stack, a trap vector (a fault prints its cause and
 * exits with a failure), the FPU (mstatus.FS = Initial: with FS off every
 * floating-point instruction traps), and .bss zeroed. .data needs no copy: QEMU loads
 * the whole image into RAM. The arena (.el_arena) is not zeroed here: the runtime
 * zeroes every block it hands out.
 */
    .section .text.start, "ax"
    .global _start
_start:
    csrr    t0, mhartid
    bnez    t0, park
    la      sp, __stack_top
    la      t0, trap_entry
    csrw    mtvec, t0
    li      t0, (1 << 13)          /* mstatus.FS = 01 (Initial) */
    csrs    mstatus, t0
    csrw    fcsr, zero             /* round to nearest, no flags */
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 2f
    sd      zero, 0(t0)
    addi    t0, t0, 8
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
