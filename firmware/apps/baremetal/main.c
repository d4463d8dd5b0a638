/* main.c: the bare-metal main loop: prompt lines in over the UART, completions out.
 *
 * The same file runs on every bare-metal board; the board's port (el_port.h) brings
 * the UART, a tick counter and the exit. The model is linked into read-only memory
 * (el_model_blob.S) and read in place; the runtime gets one static arena.
 *
 * Two protocols on the same UART, told apart by the first byte of each input:
 *
 *   - the framed protocol (firmware/PROTOCOL.md, firmware/apps/common/el_protocol.c):
 *     a frame starts with the magic byte 0xFE, which never occurs in UTF-8 text;
 *     programs (edgellama chat/bench/serve --board/--port) use it;
 *   - the plain-text line mode below, for a person on screen or minicom: any other
 *     byte at the start of input begins a text line.
 *
 * The line mode:
 *
 *   boot:     "edgellama VERSION board=B model=M ctx=N arena=BYTES arena_used=BYTES
 *              weights=BYTES kv_blocks=N block=N"   (one line)
 *   request:  one line of text, the prompt; optionally prefixed by "key=value ... |"
 *             with keys temperature, top_p, top_k, min_p, repetition_penalty,
 *             frequency_penalty, presence_penalty, seed, max_tokens, min_tokens,
 *             ignore_eos (1 or 0). Defaults: greedy (temperature=0), max_tokens=EL_MAX_TOKENS.
 *             The prefix is read as options only when every word before the first '|'
 *             is key=value; otherwise the whole line is the prompt.
 *   reply:    the completion (the text after the prompt), streamed as it is produced,
 *             then "\n[stats] tokens=N prompt=N cached=N finish=stop|length|abort|error ms=N
 *             ttft_ms=N tok_per_s=N.N arena_hw=BYTES arena=BYTES kv_blocks=USED/TOTAL
 *             kv_hw=N" (times only where the port has a timer).
 *   errors:   "[error] message" on its own line; the loop goes on.
 *   commands: "/exit" ends the program with status 0 (QEMU exits), "/stats" prints
 *             the engine's counters.
 *
 * Input: no echo; a line ends at '\r' or '\n' (so "\r\n" is one line and an empty
 * one, which is ignored); backspace and DEL remove the last character; a line longer
 * than EL_LINE_MAX - 1 bytes is read to its end, dropped, and answered with an error.
 * A line holding other control bytes (or 0xFF), or that is not well-formed UTF-8, is line
 * noise: it is dropped silently, and so is what follows it until the line has been quiet
 * for 300 ms. The frame magic 0xFE inside a line drops the line and starts a frame.
 */
#include "el_port.h"
#include "el_protocol.h"
#include "el_runtime.h"
#include "el_updater.h"

#ifndef EL_ARENA_BYTES
#define EL_ARENA_BYTES (3u << 20)
#endif
#ifndef EL_BLOCK_SIZE
#define EL_BLOCK_SIZE 16
#endif
#ifndef EL_MAX_MODEL_LEN
#define EL_MAX_MODEL_LEN 0 /* the model's context */
#endif
#ifndef EL_KV_DTYPE
#define EL_KV_DTYPE 0 /* 0 f32, 1 int8 */
#endif
#ifndef EL_MAX_BATCH_TOKENS
#define EL_MAX_BATCH_TOKENS 8 /* prompt rows per forward pass: the planner's MCU default */
#endif
#ifndef EL_MAX_SEQS
#define EL_MAX_SEQS 1 /* one prompt at a time: the planner's MCU default */
#endif
#ifndef EL_SPECULATIVE_TOKENS
#define EL_SPECULATIVE_TOKENS 0 /* n-gram drafts verified per step (el_speculate.h); 0: none */
#endif
#ifndef EL_PROMPT_LOOKUP_MAX
#define EL_PROMPT_LOOKUP_MAX 0 /* 0 = the runtime's default (5) */
#endif
#ifndef EL_PROMPT_LOOKUP_MIN
#define EL_PROMPT_LOOKUP_MIN 0 /* 0 = EL_PROMPT_LOOKUP_MAX */
#endif
#ifndef EL_KV_CACHE_BYTES
#define EL_KV_CACHE_BYTES 0 /* the KV pool; 0 = EL_MAX_SEQS full sequences */
#endif
#ifndef EL_MAX_TOKENS
#define EL_MAX_TOKENS 128
#endif
#ifndef EL_LINE_MAX
#define EL_LINE_MAX 512
#endif
#ifndef EL_BOARD_NAME
#define EL_BOARD_NAME "unknown"
#endif
/* a step's events (el_engine_max_events): a token per sequence and per accepted draft, and forks */
#define MAX_EVENTS (EL_MAX_SEQS * (2 + EL_SPECULATIVE_TOKENS))

extern const uint8_t el_model_start[], el_model_end[];

/* The arena: its own section, so the linker script can place it (RAM or PSRAM) and
 * startup need not zero it (the runtime zeroes what it hands out). */
static unsigned char arena[EL_ARENA_BYTES] __attribute__((section(".el_arena"), aligned(64)));

static char line[EL_LINE_MAX];
static int32_t prompt_tokens[EL_LINE_MAX + 8]; /* never more tokens than bytes, plus BOS */

/* ------------------------------------------------------------ output */

static void put_str(const char *s)
{
    while (*s) port_putc((unsigned char)*s++);
}

static void put_bytes(const char *s, int n)
{
    int i;
    for (i = 0; i < n; i++) port_putc((unsigned char)s[i]);
}

static void put_u64(uint64_t v)
{
    char digits[EL_PROTO_U64_CHARS];
    put_bytes(digits, el_proto_format_u64(digits, v));
}

static void put_kv(const char *key, uint64_t value)
{
    port_putc(' ');
    put_str(key);
    port_putc('=');
    put_u64(value);
}

static void put_error(const char *message)
{
    put_str("[error] ");
    put_str(message);
    port_putc('\n');
}

/* ------------------------------------------------------------ the model's checksum */

#ifdef EL_MODEL_CRC32
/* The build wrote the model file's CRC-32 (el_crc32) into EL_MODEL_CRC32, so a flash
 * image that was cut short, mis-flashed or bit-flipped is refused at boot instead of
 * being run: bare metal skips the per-value NaN scan (el_model_check_values). */
static void put_hex32(uint32_t v)
{
    int shift;
    put_str("0x");
    for (shift = 28; shift >= 0; shift -= 4) port_putc("0123456789abcdef"[(v >> shift) & 15u]);
}

/* One "[error] ..." line and exit when the model in flash is not the one built in. */
static void verify_model(const uint8_t *model, size_t size)
{
    uint32_t crc = el_crc32(model, size);
    if (crc == (uint32_t)EL_MODEL_CRC32) return;
    put_str("[error] the model image is corrupt: CRC-32 ");
    put_hex32(crc);
    put_str(", the build recorded ");
    put_hex32((uint32_t)EL_MODEL_CRC32);
    put_str(" (reflash the firmware)\n");
    port_exit(1);
}
#endif

/* ------------------------------------------------------------ input */

/* Whether buf holds well-formed UTF-8 (what a person types; random bytes rarely are). */
static int utf8_valid(const char *buf, int n)
{
    int i = 0, k, more;
    unsigned char c;
    while (i < n) {
        c = (unsigned char)buf[i++];
        more = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 && c >= 0xC2 ? 1 : (c & 0xF0) == 0xE0 ? 2
             : (c & 0xF8) == 0xF0 && c <= 0xF4 ? 3 : -1;
        if (more < 0 || i + more > n) return 0;
        for (k = 0; k < more; k++)
            if (((unsigned char)buf[i++] & 0xC0) != 0x80) return 0;
    }
    return 1;
}

#define LINE_NOISE (-2)
#define LINE_FRAME (-3)

/* One line into buf (NUL-terminated, without its end), its first byte already read;
 * returns its length, -1 when it was longer than the buffer (the whole line is
 * consumed and dropped), LINE_NOISE for a line with control bytes (dropped), or
 * LINE_FRAME when the frame magic arrived (the line is dropped). */
static int read_line(char *buf, int capacity, int c)
{
    int n = 0, overflow = 0, noise = 0;
    for (;; c = port_getc()) {
        if (c == EL_PROTO_MAGIC0) return LINE_FRAME;
        if (c == '\r' || c == '\n') break;
        if (c == 0x08 || c == 0x7f) {
            /* one character back: a UTF-8 sequence's continuation bytes go with it */
            while (n > 0 && ((unsigned char)buf[n - 1] & 0xC0) == 0x80) n--;
            if (n > 0) n--;
            continue;
        }
        if ((c < 0x20 && c != '\t') || c == 0xFF) noise = 1;
        if (overflow) continue;
        if (n >= capacity - 1) {
            overflow = 1;
            continue;
        }
        buf[n++] = (char)c;
    }
    buf[n] = '\0';
    return noise || !utf8_valid(buf, n) ? LINE_NOISE : overflow ? -1 : n;
}

/* After line noise: drop input until it has been quiet for 300 ms (a person types after
 * a pause; noise comes in bursts). Returns the frame magic when a frame begins, else -1. */
static int skip_noise(void)
{
    uint32_t hz = port_tick_hz();
    uint64_t last = port_ticks();
    int c;
    while (hz != 0 && port_ticks() - last < (uint64_t)hz * 3u / 10u) {
        if ((c = port_try_getc()) < 0) continue;
        if (c == EL_PROTO_MAGIC0) return c;
        last = port_ticks();
    }
    return -1;
}

/* ------------------------------------------------------------ options prefix */

static int is_space(char c) { return c == ' ' || c == '\t'; }

static int str_eq(const char *a, int n, const char *b)
{
    int i;
    for (i = 0; i < n; i++)
        if (b[i] == '\0' || a[i] != b[i]) return 0;
    return b[n] == '\0';
}

/* Reads a "key=value ... |" prefix into r and returns where the prompt starts (0 when
 * the line has no such prefix); -1 when a word of the prefix is a bad option (that
 * word in bad, bad_len). */
static int parse_prefix(const char *text, int n, el_request *r, const char **bad, int *bad_len)
{
    int bar, i, start, eq;
    el_request trial = *r;
    for (bar = 0; bar < n && text[bar] != '|'; bar++) continue;
    if (bar == n) return 0;
    /* every word before the bar must look like key=value, or it is all prompt */
    for (i = 0; i < bar;) {
        while (i < bar && is_space(text[i])) i++;
        if (i == bar) break;
        for (start = i, eq = -1; i < bar && !is_space(text[i]); i++)
            if (text[i] == '=' && eq < 0) eq = i;
        if (eq <= start || eq == i - 1) return 0;
    }
    for (i = 0; i < bar;) {
        while (i < bar && is_space(text[i])) i++;
        if (i == bar) break;
        for (start = i, eq = -1; i < bar && !is_space(text[i]); i++)
            if (text[i] == '=' && eq < 0) eq = i;
        if (!el_proto_apply_option(&trial, text + start, eq - start, text + eq + 1, i - eq - 1)) {
            *bad = text + start;
            *bad_len = i - start;
            return -1;
        }
    }
    *r = trial;
    i = bar + 1;
    if (i < n && text[i] == ' ') i++; /* "opts | prompt": the space after the bar is the separator */
    return i;
}

/* ------------------------------------------------------------ the runtime */

static el_runtime *rt;
static int last_seq = -1;

static uint64_t ms_since(uint64_t start)
{
    uint32_t hz = port_tick_hz();
    return hz == 0 ? 0 : (port_ticks() - start) * 1000u / hz;
}

/* The memory part of a stats line: arena and KV blocks, then the end of the line. */
static void put_memory(const el_engine_stats *st, int with_cached)
{
    put_kv("arena_hw", st->arena_high_water);
    put_kv("arena", st->arena_size);
    put_str(" kv_blocks=");
    put_u64((uint64_t)st->blocks_used);
    port_putc('/');
    put_u64((uint64_t)st->blocks_total);
    if (with_cached) put_kv("kv_cached", (uint64_t)st->blocks_cached);
    put_kv("kv_hw", (uint64_t)st->blocks_high_water);
    port_putc('\n');
}

static void put_stats(int tokens, int n_prompt, int n_cached, el_finish_reason finish, uint64_t start,
                      uint64_t first)
{
    el_engine_stats st;
    uint32_t hz = port_tick_hz();
    el_runtime_stats(rt, &st);
    put_str("[stats]");
    put_kv("tokens", (uint64_t)tokens);
    put_kv("prompt", (uint64_t)n_prompt);
    put_kv("cached", (uint64_t)n_cached);
    put_str(finish == EL_FINISH_STOP     ? " finish=stop"
            : finish == EL_FINISH_LENGTH ? " finish=length"
            : finish == EL_FINISH_ERROR  ? " finish=error" /* NaN/Inf logits: EL_FINISH_ERROR_TEXT */
                                         : " finish=abort");
    if (hz != 0) {
        uint64_t end = port_ticks(), ticks = end - start;
        put_kv("ms", ticks * 1000u / hz);
        put_kv("ttft_ms", (first - start) * 1000u / hz);
        /* decode speed: the tokens after the first over the time after the first */
        if (tokens > 1 && end > first) {
            uint64_t tenths = (uint64_t)(tokens - 1) * 10u * hz / (end - first);
            put_str(" tok_per_s=");
            put_u64(tenths / 10u);
            port_putc('.');
            put_u64(tenths % 10u);
        }
    }
    put_memory(&st, 0);
}

static void generate(const char *text, int n)
{
    el_request request;
    el_error err;
    el_event events[MAX_EVENTS];
    const char *bad = "";
    const int32_t *tokens;
    int start, n_tokens, seq, count, i, n_prompt = 0, n_cached = 0, done = 0, generated = 0, bad_len = 0;
    el_finish_reason finish = EL_FINISH_NONE;
    uint64_t t0, t_first = 0;

    el_request_defaults(&request);
    request.sampling.temperature = 0.0f; /* greedy unless asked otherwise */
    request.max_tokens = EL_MAX_TOKENS;
    start = parse_prefix(text, n, &request, &bad, &bad_len);
    if (start < 0) {
        put_str("[error] bad option '");
        put_bytes(bad, bad_len);
        put_str("' (keys: temperature top_p top_k min_p repetition_penalty frequency_penalty "
                "presence_penalty seed max_tokens min_tokens ignore_eos)\n");
        return;
    }
    err.status = EL_OK;
    err.message[0] = '\0';
    if (el_request_check(&request, &err) != EL_OK) {
        put_error(err.message);
        return;
    }
    if (start >= n) {
        put_error("empty prompt");
        return;
    }
    /* the previous request's blocks go back to the pool (full ones stay cached) */
    if (last_seq >= 0) el_runtime_release(rt, last_seq);
    last_seq = -1;
    el_serve_release(); /* and those the framed protocol's server keeps */
    t0 = port_ticks();
    n_tokens = el_runtime_tokenize(rt, text + start, n - start, 1, prompt_tokens,
                                   (int)(sizeof prompt_tokens / sizeof prompt_tokens[0]), &err);
    if (n_tokens < 0) {
        put_error(err.message);
        return;
    }
    seq = el_runtime_add(rt, prompt_tokens, n_tokens, &request, &err);
    if (seq < 0) {
        put_error(err.message);
        return;
    }
    last_seq = seq;
    while (!done) {
        count = el_runtime_step(rt, events, MAX_EVENTS);
        (void)port_ticks(); /* a port may extend a 32-bit counter: read it at least once a step */
        if (count == 0 && el_runtime_pending(rt) == 0) {
            finish = EL_FINISH_ABORT;
            break;
        }
        for (i = 0; i < count; i++) {
            if (events[i].seq_id != seq) continue;
            if (generated++ == 0) t_first = port_ticks();
            put_bytes(events[i].text, events[i].text_len);
            if (events[i].finished) {
                finish = events[i].finish;
                done = 1;
            }
        }
    }
    if (el_runtime_tokens(rt, seq, &tokens, &n_prompt, &n_cached) < 0) n_prompt = n_tokens;
    port_putc('\n');
    put_stats(generated, n_prompt, n_cached, finish, t0, generated > 0 ? t_first : t0);
    el_runtime_release(rt, seq); /* the framed protocol's server may need the slot */
    last_seq = -1;
}

static void engine_stats(void)
{
    el_engine_stats st;
    el_runtime_stats(rt, &st);
    put_str("[stats]");
    put_kv("prompt_tokens_computed", (uint64_t)st.prompt_tokens_computed);
    put_kv("tokens_generated", (uint64_t)st.tokens_generated);
    put_kv("steps", (uint64_t)st.steps);
    put_kv("prefix_hits", (uint64_t)st.prefix_hits);
    put_kv("preemptions", (uint64_t)st.preemptions);
    put_kv("arena_used", st.arena_used);
    put_memory(&st, 1);
}

/* ------------------------------------------------------------ models over the line */

static el_engine_options options;

#ifdef EL_PORT_MODEL_STORE
static el_updater updater;

static void store_write(size_t offset, const void *data, size_t n) { port_store_write(offset, data, n); }
static void store_erase(size_t offset, size_t n) { port_store_erase(offset, n); }

/* The model the boot record names (el_updater.h), or the image's own. */
static const uint8_t *boot_model(size_t *size)
{
    el_store store;
    store.base = port_model_store(&store.size, &store.erase_bytes);
    store.write = store_write;
    store.erase = store_erase;
    el_updater_init(&updater, store, el_model_start, (size_t)(el_model_end - el_model_start));
    return el_updater_model(&updater, size);
}

/* A runtime on `model`, in the arena: after a switch of models (the old runtime's memory
 * is taken over; the protocol's server released its sequences first). */
static el_runtime *open_model(void *user, const uint8_t *model, size_t size, const char **error)
{
    static el_error err;
    (void)user;
    err.status = EL_OK;
    err.message[0] = '\0';
    rt = el_runtime_open(arena, sizeof arena, model, size, &options, &err);
    last_seq = -1;
    if (rt == NULL) *error = err.message;
    return rt;
}
#endif

/* ------------------------------------------------------------ the framed protocol's I/O */

/* A port without a non-blocking receive: CANCEL is read only between requests. */
#if defined(__GNUC__)
__attribute__((weak)) int port_try_getc(void) { return -1; }
#endif

static int uart_read(void *user, int wait_ms)
{
    uint32_t hz = port_tick_hz();
    uint64_t start, limit;
    int c;
    (void)user;
    if (wait_ms < 0) return port_getc();
    start = port_ticks();
    limit = (uint64_t)wait_ms * hz / 1000u;
    for (;;) {
        if ((c = port_try_getc()) >= 0) return c;
        if (hz == 0 || port_ticks() - start >= limit) return -1;
    }
}

static void uart_write(void *user, const uint8_t *data, int n)
{
    (void)user;
    put_bytes((const char *)data, n);
}

static uint64_t uart_now_us(void *user)
{
    uint64_t ticks = port_ticks(), hz = port_tick_hz();
    (void)user;
    return ticks / hz * 1000000u + ticks % hz * 1000000u / hz;
}

/* A text line for a person (its first byte already read); returns the frame magic when
 * a frame began inside the line, else -1. */
static int text_line(void *user, int first)
{
    int n = read_line(line, (int)sizeof line, first);
    (void)user;
    if (n == LINE_FRAME) return EL_PROTO_MAGIC0;
    if (n == LINE_NOISE) return skip_noise();
    if (n == 0) return -1;
    if (n < 0) {
        put_str("[error] line too long (at most ");
        put_u64(sizeof line - 1);
        put_str(" bytes); ignored\n");
        return -1;
    }
    if (str_eq(line, n, "/exit")) {
        put_str("[bye]\n");
        port_exit(0);
    }
    if (str_eq(line, n, "/stats")) engine_stats();
    else generate(line, n);
    return -1;
}

int main(void)
{
    el_error err;
    el_engine_stats st;
    const uint8_t *model = el_model_start;
    size_t model_size = (size_t)(el_model_end - el_model_start);
    el_serve_io io;
    uint64_t t0;

    port_init();
    el_memset(&io, 0, sizeof io);
    el_memset(&options, 0, sizeof options);
    options.max_seqs = EL_MAX_SEQS;
    options.block_size = EL_BLOCK_SIZE;
    options.kv_cache_bytes = EL_KV_CACHE_BYTES;
    options.max_batch_tokens = EL_MAX_BATCH_TOKENS;
    options.max_model_len = EL_MAX_MODEL_LEN;
    options.kv_dtype = EL_KV_DTYPE ? EL_KV_INT8 : EL_KV_F32;
    options.speculative_tokens = EL_SPECULATIVE_TOKENS;
    options.prompt_lookup_max = EL_PROMPT_LOOKUP_MAX;
    options.prompt_lookup_min = EL_PROMPT_LOOKUP_MIN;
    err.status = EL_OK;
    err.message[0] = '\0';
    t0 = port_ticks();
#ifdef EL_MODEL_CRC32
    verify_model(el_model_start, model_size);
#endif
#ifdef EL_PORT_MODEL_STORE
    model = boot_model(&model_size);
    io.updater = &updater;
    io.reopen = open_model;
#endif
    rt = el_runtime_open(arena, sizeof arena, model, model_size, &options, &err);
    if (rt == NULL) {
        put_error(err.message);
        port_exit(1);
    }
    el_runtime_stats(rt, &st);
    put_str("edgellama ");
    put_str(el_runtime_version());
    put_str(" board=" EL_BOARD_NAME " model=");
    put_bytes(rt->model.name.data, (int)rt->model.name.len);
    put_kv("ctx", (uint64_t)rt->engine.options.max_model_len);
    put_kv("arena", st.arena_size);
    put_kv("arena_used", st.arena_used);
    put_kv("weights", model_size);
    put_kv("kv_blocks", (uint64_t)st.blocks_total);
    put_kv("block", (uint64_t)rt->engine.options.block_size);
    if (port_tick_hz() != 0) put_kv("load_ms", ms_since(t0));
    port_putc('\n');

    io.read = uart_read;
    io.write = uart_write;
    io.now_us = port_tick_hz() != 0 ? uart_now_us : NULL;
    io.text_line = text_line;
    io.board = EL_BOARD_NAME;
    io.default_max_tokens = EL_MAX_TOKENS;
    el_serve(rt, &io); /* returns only at the end of input, which a UART never has */
    port_exit(0);
}
