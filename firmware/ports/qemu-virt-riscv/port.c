/* port.c: QEMU's riscv64 and riscv32 virt machines for the bare-metal main loop: the
 * NS16550 UART at 0x10000000, the CLINT's mtime (10 MHz) as the tick counter, and the
 * exit through the SiFive test device at 0x100000 (0x5555 passes: QEMU exits with status
 * 0; (code << 16) | 0x3333 fails: QEMU exits with status code). The same devices at the
 * same addresses on both; a 32-bit hart reads the 64-bit mtime in two halves.
 */
#include <stdint.h>

#include "el_port.h"

#define UART_BASE 0x10000000u
#define UART_REG(off) (*(volatile uint8_t *)(uintptr_t)(UART_BASE + (off)))
#define UART_RBR UART_REG(0) /* receive (read), DLAB = 0 */
#define UART_THR UART_REG(0) /* transmit (write), DLAB = 0 */
#define UART_DLL UART_REG(0) /* divisor low, DLAB = 1 */
#define UART_IER UART_REG(1)
#define UART_DLM UART_REG(1) /* divisor high, DLAB = 1 */
#define UART_LCR UART_REG(3)
#define UART_MCR UART_REG(4)
#define UART_LSR UART_REG(5) /* bit 0 data ready, bit 5 transmitter holding register empty */

#define UART_CLOCK_HZ 3686400u /* QEMU's virt UART clock */
#define BAUD 115200u

/* the CLINT's 64-bit mtime, and its low and high 32-bit words */
#define MTIME (*(volatile uint64_t *)(uintptr_t)0x0200BFF8u)
#define MTIME_LO (*(volatile uint32_t *)(uintptr_t)0x0200BFF8u)
#define MTIME_HI (*(volatile uint32_t *)(uintptr_t)0x0200BFFCu)
#define MTIME_HZ 10000000u

#define TEST_DEVICE (*(volatile uint32_t *)(uintptr_t)0x00100000u)

/* start.S's trap vector: mcause, mepc and mtval are XLEN registers (unsigned long in
 * both ABIs, ilp32 and lp64) */
void port_trap(unsigned long cause, unsigned long epc, unsigned long tval);

void port_init(void)
{
    uint32_t divisor = UART_CLOCK_HZ / (16u * BAUD);
    /* The FIFOs stay off, as at reset: turning them on clears the receiver, and QEMU
     * delivers input from the moment the machine starts, so a byte could be lost.
     * Without them the receiver holds one byte, and QEMU waits until it is read. */
    UART_IER = 0x00;                 /* no interrupts */
    UART_LCR = 0x80;                 /* DLAB: divisor latch */
    UART_DLL = (uint8_t)(divisor & 0xFF);
    UART_DLM = (uint8_t)(divisor >> 8);
    UART_LCR = 0x03;                 /* 8 data bits, no parity, 1 stop bit */
    UART_MCR = 0x03;                 /* DTR, RTS */
}

void port_putc(int c)
{
    while (!(UART_LSR & 0x20)) continue;
    UART_THR = (uint8_t)c;
}

int port_getc(void)
{
    while (!(UART_LSR & 0x01)) continue;
    return (int)UART_RBR;
}

int port_try_getc(void) { return (UART_LSR & 0x01) ? (int)UART_RBR : -1; }

#if __riscv_xlen == 32
/* A 32-bit hart reads mtime a word at a time, and the low word can carry into the high
 * one between the two reads: read high, low, high again, and retry when the high word
 * moved (the low word read then may belong to either side of the carry). */
uint64_t port_ticks(void)
{
    uint32_t hi, lo;
    do {
        hi = MTIME_HI;
        lo = MTIME_LO;
    } while (MTIME_HI != hi);
    return ((uint64_t)hi << 32) | lo;
}
#else
uint64_t port_ticks(void) { return MTIME; }
#endif

uint32_t port_tick_hz(void) { return MTIME_HZ; }

void port_exit(int code)
{
    while (!(UART_LSR & 0x40)) continue; /* transmitter empty: the last byte is out */
    TEST_DEVICE = code == 0 ? 0x5555u : (((uint32_t)code & 0xFFFFu) << 16) | 0x3333u;
    for (;;) __asm__ volatile("wfi");
}

static void put_str(const char *s)
{
    while (*s) port_putc((unsigned char)*s++);
}

static void put_hex(unsigned long v)
{
    int shift;
    put_str("0x");
    for (shift = (int)sizeof v * 8 - 4; shift >= 0; shift -= 4) port_putc("0123456789abcdef"[(v >> shift) & 0xF]);
}

void port_trap(unsigned long cause, unsigned long epc, unsigned long tval)
{
    put_str("\n[fault] trap mcause=");
    put_hex(cause);
    put_str(" mepc=");
    put_hex(epc);
    put_str(" mtval=");
    put_hex(tval);
    put_str("\n");
    port_exit(3);
}
