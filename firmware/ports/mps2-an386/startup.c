/* startup.c: Cortex-M4F reset for the Arm MPS2+ AN386 (and QEMU's mps2-an386).
 *
 * The vector table sits at 0x0 (flash); the core loads the initial stack pointer and
 * the reset handler from it. Reset_Handler turns on the FPU first: the core locks up
 * on the first floating-point instruction while CP10/CP11 are off, and GCC may use FP
 * registers anywhere once the C code proper starts. Only then are .data copied from
 * flash and .bss zeroed, and main() called. The arena (.el_arena) is not zeroed here:
 * the runtime zeroes every block it hands out.
 */
#include <stdint.h>

#include "el_port.h"

extern uint32_t __stack_top[];
extern uint32_t __data_start[], __data_end[], __data_load[];
extern uint32_t __bss_start[], __bss_end[];

int main(void);
void Reset_Handler(void);
void Default_Handler(void);
void HardFault_Handler(void);
EL_NORETURN void port_fault(const char *what);

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)

void Reset_Handler(void)
{
    volatile uint32_t *dst;
    const volatile uint32_t *src;
    /* CP10 and CP11 full access, before any floating-point instruction */
    SCB_CPACR |= (0xFu << 20);
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    /* word loops through volatile pointers: GCC keeps them as loops here, before
     * anything else is set up */
    for (dst = __data_start, src = __data_load; dst < __data_end;) *dst++ = *src++;
    for (dst = __bss_start; dst < __bss_end;) *dst++ = 0;
    port_exit(main());
}

/* The stacked exception frame (r0-r3, r12, lr, pc, xPSR) goes to port_hard_fault,
 * which may resume past a semihosting BKPT that faulted (see port.c). Branching, not
 * calling, keeps EXC_RETURN in lr, so port_hard_fault's return is the exception's. */
__attribute__((naked)) void HardFault_Handler(void)
{
    __asm__ volatile("tst lr, #4\n\t"
                     "ite eq\n\t"
                     "mrseq r0, msp\n\t"
                     "mrsne r0, psp\n\t"
                     "b port_hard_fault\n\t");
}
void Default_Handler(void) { port_fault("unexpected exception"); }

/* The Cortex-M vector table: initial SP, then the handlers (the Thumb bit is set by
 * the compiler in each function address). No interrupts are used. */
__attribute__((section(".vectors"), used)) const uintptr_t vectors[16] = {
    (uintptr_t)__stack_top,
    (uintptr_t)Reset_Handler,
    (uintptr_t)Default_Handler,   /* NMI */
    (uintptr_t)HardFault_Handler,
    (uintptr_t)HardFault_Handler, /* MemManage */
    (uintptr_t)HardFault_Handler, /* BusFault */
    (uintptr_t)HardFault_Handler, /* UsageFault */
    0, 0, 0, 0,
    (uintptr_t)Default_Handler,   /* SVCall */
    (uintptr_t)Default_Handler,   /* DebugMonitor */
    0,
    (uintptr_t)Default_Handler,   /* PendSV */
    (uintptr_t)Default_Handler,   /* SysTick */
};
