/* startup.c: Cortex-M33 reset for the Arm MPS2+ AN505 (and QEMU's mps2-an505).
 *
 * The core resets in the Secure state and reads the initial stack pointer and the reset
 * handler from the vector table at 0x10000000 (the initial Secure VTOR; link.ld puts
 * the table first in FLASH there). The program stays Secure: no SAU regions, no
 * Non-secure image, so only the Secure side's registers are set here.
 *
 * Reset_Handler turns on the FPU first: the core faults on the first floating-point
 * instruction while CP10/CP11 are off, and GCC may use FP registers anywhere once the
 * C code proper starts (NSACR only grants the FPU to the Non-secure side, which never
 * runs). It sets MSPLIM to the bottom of the stack, so that an overflow faults instead
 * of writing into the arena. Only then are .data copied from flash and .bss zeroed, and
 * main() called. The arena (.el_arena) is not zeroed here: the runtime zeroes every
 * block it hands out.
 */
#include <stdint.h>

#include "el_port.h"

extern uint32_t __stack_top[], __stack_limit[];
extern uint32_t __data_start[], __data_end[], __data_load[];
extern uint32_t __bss_start[], __bss_end[];

int main(void);
void Reset_Handler(void);
void Default_Handler(void);
void HardFault_Handler(void);
EL_NORETURN void port_fault(const char *what);

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u) /* CPACR_S from the Secure state */

void Reset_Handler(void)
{
    volatile uint32_t *dst;
    const volatile uint32_t *src;
    /* CP10 and CP11 full access, before any floating-point instruction */
    SCB_CPACR |= (0xFu << 20);
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    __asm__ volatile("msr msplim, %0" : : "r"(__stack_limit));
    /* word loops through volatile pointers: GCC keeps them as loops here, before
     * anything else is set up */
    for (dst = __data_start, src = __data_load; dst < __data_end;) *dst++ = *src++;
    for (dst = __bss_start; dst < __bss_end;) *dst++ = 0;
    port_exit(main());
}

/* The stacked exception frame (r0-r3, r12, lr, pc, xPSR) goes to port_hard_fault,
 * which may resume past a semihosting BKPT that faulted (see port.c). Branching, not
 * calling, keeps EXC_RETURN in lr, so port_hard_fault's return is the exception's.
 * EXC_RETURN bit 2 says which stack the frame is on, as on v7-M; from Secure to Secure
 * the frame has no extra state context, so the PC is still word 6. MSPLIM is lifted
 * first: after a stack overflow the handler itself has no stack left above the limit,
 * and a fault inside HardFault locks the core up before anything is printed
 * (port_hard_fault puts the limit back when it resumes). */
__attribute__((naked)) void HardFault_Handler(void)
{
    __asm__ volatile("movs r1, #0\n\t"
                     "msr msplim, r1\n\t"
                     "tst lr, #4\n\t"
                     "ite eq\n\t"
                     "mrseq r0, msp\n\t"
                     "mrsne r0, psp\n\t"
                     "b port_hard_fault\n\t");
}
void Default_Handler(void) { port_fault("unexpected exception"); }

/* The Armv8-M Mainline vector table: initial SP, then the handlers (the Thumb bit is
 * set by the compiler in each function address). No interrupts are used. MemManage,
 * BusFault, UsageFault (a stack overflow past MSPLIM among them) and SecureFault stay
 * disabled in SHCSR and escalate to HardFault; their entries are there all the same. */
__attribute__((section(".vectors"), used)) const uintptr_t vectors[16] = {
    (uintptr_t)__stack_top,
    (uintptr_t)Reset_Handler,
    (uintptr_t)Default_Handler,   /* NMI */
    (uintptr_t)HardFault_Handler,
    (uintptr_t)HardFault_Handler, /* MemManage */
    (uintptr_t)HardFault_Handler, /* BusFault */
    (uintptr_t)HardFault_Handler, /* UsageFault */
    (uintptr_t)HardFault_Handler, /* SecureFault */
    0, 0, 0,
    (uintptr_t)Default_Handler,   /* SVCall */
    (uintptr_t)Default_Handler,   /* DebugMonitor */
    0,
    (uintptr_t)Default_Handler,   /* PendSV */
    (uintptr_t)Default_Handler,   /* SysTick */
};
