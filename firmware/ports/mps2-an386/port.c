/* port.c: the AN386 board for the bare-metal main loop: CMSDK UART0, CMSDK timers 0
 * (ticks) and 1 (see port_init), and the exit.
 *
 * Exit: semihosting SYS_EXIT_EXTENDED when the debugger (or QEMU, run with
 * -semihosting-config enable=on,target=native) answers semihosting calls: QEMU exits
 * with the status. port_init probes for it with a harmless call (SYS_ERRNO); without
 * semihosting the BKPT faults and the fault handler steps over it. Then the exit is a
 * system reset through AIRCR, which QEMU run with -no-reboot turns into an exit (status
 * 0), and a board into a reboot.
 */
#include <stdint.h>

#include "el_port.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

/* CMSDK APB UART0 */
#define UART0_BASE 0x40004000u
#define UART_DATA REG(UART0_BASE + 0x00)
#define UART_STATE REG(UART0_BASE + 0x04)  /* bit 0 TX full, bit 1 RX full */
#define UART_CTRL REG(UART0_BASE + 0x08)   /* bit 0 TX enable, bit 1 RX enable */
#define UART_BAUDDIV REG(UART0_BASE + 0x10)

/* CMSDK APB timer 0: a 32-bit down counter at the system clock */
#define TIMER0_BASE 0x40000000u
#define TIMER_CTRL REG(TIMER0_BASE + 0x00)
#define TIMER_VALUE REG(TIMER0_BASE + 0x04)
#define TIMER_RELOAD REG(TIMER0_BASE + 0x08)
#define TIMER1_BASE 0x40001000u
#define TIMER1_CTRL REG(TIMER1_BASE + 0x00)
#define TIMER1_VALUE REG(TIMER1_BASE + 0x04)
#define TIMER1_RELOAD REG(TIMER1_BASE + 0x08)

#define SCB_AIRCR REG(0xE000ED0Cu)

#define SYSCLK_HZ 25000000u
#define BAUD 115200u

static uint32_t timer_last;
static uint64_t timer_total;
static volatile int probing, semihosting;

EL_NORETURN void port_fault(const char *what);
void port_hard_fault(uint32_t *frame);

/* One semihosting call: operation in r0, parameter block in r1, result in r0. */
static uint32_t semihost(uint32_t op, const volatile void *block)
{
    register uint32_t r0 __asm__("r0") = op;
    register const volatile void *r1 __asm__("r1") = block;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void port_init(void)
{
    UART_CTRL = 0;
    UART_BAUDDIV = SYSCLK_HZ / BAUD; /* 217; the UART needs at least 16 */
    UART_CTRL = 0x3;
    TIMER_CTRL = 0;
    TIMER_RELOAD = 0xFFFFFFFFu;
    TIMER_VALUE = 0xFFFFFFFFu;
    TIMER_CTRL = 0x1;
    timer_last = TIMER_VALUE;
    timer_total = 0;
    /* Timer 1 wraps every 10 ms, interrupts off. It does nothing for the program; under
     * QEMU its expiries wake the emulator's main loop, which is where the UART's input
     * is polled: without them the first input after boot can wait up to a second. */
    TIMER1_CTRL = 0;
    TIMER1_RELOAD = SYSCLK_HZ / 100u;
    TIMER1_VALUE = SYSCLK_HZ / 100u;
    TIMER1_CTRL = 0x1;
    /* semihosting is there when this BKPT does not fault */
    probing = 1;
    semihosting = 1;
    (void)semihost(0x13u, 0); /* SYS_ERRNO */
    probing = 0;
}

void port_putc(int c)
{
    while (UART_STATE & 0x1u) continue;
    UART_DATA = (uint32_t)(c & 0xFF);
}

int port_getc(void)
{
    while (!(UART_STATE & 0x2u)) continue;
    return (int)(UART_DATA & 0xFFu);
}

int port_try_getc(void) { return (UART_STATE & 0x2u) ? (int)(UART_DATA & 0xFFu) : -1; }

/* Down-counting 32-bit timer extended to 64 bits: correct while it is read at least
 * once per wrap (2^32 / 25 MHz = 171 s); the main loop reads it every step. */
uint64_t port_ticks(void)
{
    uint32_t now = TIMER_VALUE;
    timer_total += (uint32_t)(timer_last - now);
    timer_last = now;
    return timer_total;
}

uint32_t port_tick_hz(void) { return SYSCLK_HZ; }

EL_NORETURN static void system_reset(void)
{
    __asm__ volatile("dsb" ::: "memory");
    SCB_AIRCR = 0x05FA0004u; /* VECTKEY | SYSRESETREQ */
    __asm__ volatile("dsb" ::: "memory");
    for (;;) continue;
}

void port_exit(int code)
{
    volatile uint32_t block[2];
    while (UART_STATE & 0x1u) continue; /* the last byte out first */
    if (semihosting) {
        block[0] = 0x20026u; /* ADP_Stopped_ApplicationExit */
        block[1] = (uint32_t)code;
        (void)semihost(0x20u, block); /* SYS_EXIT_EXTENDED */
    }
    system_reset();
}

static void put_str(const char *s)
{
    while (*s) port_putc((unsigned char)*s++);
}

void port_fault(const char *what)
{
    put_str("\n[fault] ");
    put_str(what);
    put_str("\n");
    port_exit(3);
}

/* From HardFault_Handler (startup.c) with the stacked frame: the probe's BKPT (16 bits)
 * is stepped over, anything else is a fault. */
void port_hard_fault(uint32_t *frame)
{
    if (probing) {
        probing = 0;
        semihosting = 0;
        frame[6] += 2;
        return;
    }
    port_fault("hard fault");
}
