/* el_protocol.c: framing, CRC, key=value parsing and the serve loop (see
 * firmware/PROTOCOL.md). C99, no libc, no malloc. */
#include "el_protocol.h"
#include "el_bench_prompt.h"
#include "el_math.h"

#ifndef EL_SERVE_MAX_TOKENS
#define EL_SERVE_MAX_TOKENS 1088 /* a bench prompt or one chat turn (system text + message) */
#endif
#define SERVE_EVENTS (2 * EL_SERVE_MAX_SAMPLES) /* a request's forks report in one step */
#define GAP_US 300000u /* a frame silent this long is dropped (a half frame after a cut) */
#define TOO_LONG_TEXT "frame too long (the maximum payload is 512 bytes)"

/* ------------------------------------------------------------ CRC and frames */

uint16_t el_proto_crc16(uint16_t crc, const uint8_t *data, int n)
{
    int i, bit;
    for (i = 0; i < n; i++) {
        crc ^= (uint16_t)((uint16_t)data[i] << 8);
        for (bit = 0; bit < 8; bit++)
            crc = (uint16_t)((crc & 0x8000u) ? (uint16_t)(crc << 1) ^ 0x1021u : (uint16_t)(crc << 1));
    }
    return crc;
}

int el_proto_encode(uint8_t *out, int capacity, int type, const uint8_t *payload, int len)
{
    uint16_t crc;
    int i;
    if (len < 0 || len > EL_PROTO_MAX_PAYLOAD || capacity < len + EL_PROTO_OVERHEAD) return -1;
    out[0] = EL_PROTO_MAGIC0;
    out[1] = EL_PROTO_MAGIC1;
    out[2] = (uint8_t)type;
    out[3] = (uint8_t)(len & 0xFF);
    out[4] = (uint8_t)(len >> 8);
    for (i = 0; i < len; i++) out[5 + i] = payload[i];
    crc = el_proto_crc16(0xFFFFu, out + 2, len + 3);
    out[5 + len] = (uint8_t)(crc & 0xFF);
    out[6 + len] = (uint8_t)(crc >> 8);
    return len + EL_PROTO_OVERHEAD;
}

void el_proto_parser_init(el_proto_parser *p)
{
    static const uint8_t empty[1] = {0};
    p->start = p->have = p->end = p->fresh = 0;
    p->noise = p->type = p->len = 0;
    p->payload = empty;
}

int el_proto_busy(const el_proto_parser *p) { return p->have != 0; }

static int frame_len(const el_proto_parser *p) { return p->raw[p->start + 3] | (p->raw[p->start + 4] << 8); }

/* The candidate is not a frame: the search for the magic resumes at the byte after its
 * first one, so what it swallowed (a frame sent after a half frame) is rescanned. */
static void reject(el_proto_parser *p)
{
    p->start++;
    p->have = 0;
}

/* Every byte of a candidate is in: a frame if its CRC matches. */
static int finish(el_proto_parser *p)
{
    uint8_t *f = p->raw + p->start;
    int len = frame_len(p);
    uint16_t crc = el_proto_crc16(0xFFFFu, f + 2, len + 3);
    if (f[5 + len] != (crc & 0xFFu) || f[6 + len] != (crc >> 8)) {
        reject(p);
        return EL_PROTO_BAD_CRC;
    }
    p->type = f[2];
    p->len = len;
    f[5 + len] = 0; /* the CRC's first byte, checked: now the NUL after the payload */
    p->payload = f + 5;
    p->start += len + EL_PROTO_OVERHEAD;
    p->have = 0;
    return EL_PROTO_FRAME;
}

/* The next held byte, raw[start + have], against the candidate. */
static int examine(el_proto_parser *p)
{
    int at = p->start + p->have, fresh = at >= p->fresh;
    uint8_t b = p->raw[at];
    if (fresh) p->fresh = at + 1;
    if (p->have == 0) {
        if (b == EL_PROTO_MAGIC0) {
            p->have = 1;
            return EL_PROTO_MORE;
        }
        p->start++;
        p->noise = b;
        /* a rescanned byte was part of a binary frame: not the start of a text line */
        return fresh ? EL_PROTO_NOISE : EL_PROTO_MORE;
    }
    p->have++;
    if (p->have == 2) {
        if (b != EL_PROTO_MAGIC1) reject(p); /* 0xFE 0xFE: the second may start a frame */
        return EL_PROTO_MORE;
    }
    if (p->have < 5) return EL_PROTO_MORE;
    if (frame_len(p) > EL_PROTO_MAX_PAYLOAD) { /* rejected at its header: nothing waits for its payload */
        reject(p);
        return EL_PROTO_TOO_LONG;
    }
    return p->have < frame_len(p) + EL_PROTO_OVERHEAD ? EL_PROTO_MORE : finish(p);
}

int el_proto_next(el_proto_parser *p)
{
    int r;
    while (p->start + p->have < p->end)
        if ((r = examine(p)) != EL_PROTO_MORE) return r;
    return EL_PROTO_MORE;
}

/* Moves the held bytes to the front of raw. They are never a full frame when a byte
 * comes (a full candidate is decided at once), so there is room for it. */
static void compact(el_proto_parser *p)
{
    int i, n = p->end - p->start;
    for (i = 0; i < n; i++) p->raw[i] = p->raw[p->start + i];
    p->fresh = p->fresh > p->start ? p->fresh - p->start : 0;
    p->end = n;
    p->start = 0;
}

int el_proto_feed(el_proto_parser *p, int byte)
{
    if (p->end == EL_PROTO_MAX_FRAME) compact(p);
    if (p->end == EL_PROTO_MAX_FRAME) el_proto_parser_init(p); /* cannot happen (see compact): never overflow */
    p->raw[p->end++] = (uint8_t)byte;
    return el_proto_next(p);
}

int el_proto_drop(el_proto_parser *p)
{
    if (p->have > 0) reject(p);
    return el_proto_next(p);
}

/* ------------------------------------------------------------ key=value text */

int el_proto_next_kv(const char *text, int n, int *pos, const char **key, int *key_len, const char **value,
                     int *value_len)
{
    int i = *pos, start, eq = -1;
    for (;;) {
        if (i >= n) {
            *pos = n;
            return 0;
        }
        if (text[i] == '\n') { /* an empty line: the body follows */
            *pos = i + 1;
            return 0;
        }
        for (start = i, eq = -1; i < n && text[i] != '\n'; i++)
            if (text[i] == '=' && eq < 0) eq = i;
        *pos = i < n ? i + 1 : n;
        if (eq < 0) { /* a line without '=': a key with an empty value */
            *key = text + start;
            *key_len = i - start;
            *value = text + i;
            *value_len = 0;
            return 1;
        }
        *key = text + start;
        *key_len = eq - start;
        *value = text + eq + 1;
        *value_len = i - eq - 1;
        return 1;
    }
}

int el_proto_format_u64(char *out, uint64_t v)
{
    char reversed[EL_PROTO_U64_CHARS];
    int n = 0, i;
    do {
        reversed[n++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v > 0);
    for (i = 0; i < n; i++) out[i] = reversed[n - 1 - i];
    return n;
}

int el_proto_key_is(const char *key, int key_len, const char *name)
{
    int i;
    for (i = 0; i < key_len; i++)
        if (name[i] == '\0' || key[i] != name[i]) return 0;
    return name[key_len] == '\0';
}

int el_proto_parse_number(const char *s, int n, double *out)
{
    double value = 0.0, scale = 1.0;
    int i = 0, negative = 0, digits = 0, exponent = 0, exp_negative = 0, exp_digits = 0;
    if (i < n && (s[i] == '-' || s[i] == '+')) negative = s[i++] == '-';
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, digits++) value = value * 10.0 + (s[i] - '0');
    if (i < n && s[i] == '.')
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++, digits++) value += (s[i] - '0') * (scale /= 10.0);
    if (digits == 0) return 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+')) exp_negative = s[i++] == '-';
        for (; i < n && s[i] >= '0' && s[i] <= '9' && exponent < 400; i++, exp_digits++)
            exponent = exponent * 10 + (s[i] - '0');
        if (exp_digits == 0) return 0;
        while (exponent-- > 0) value = exp_negative ? value / 10.0 : value * 10.0;
    }
    if (i != n) return 0;
    *out = negative ? -value : value;
    return 1;
}

/* ------------------------------------------------------------ the server's state */

typedef struct {
    el_runtime *rt;
    const el_serve_io *io;
    el_proto_parser parser;
    uint8_t frame[EL_PROTO_MAX_PAYLOAD + EL_PROTO_OVERHEAD];
    uint8_t out[EL_PROTO_MAX_PAYLOAD];
    int out_len;
    int32_t tokens[EL_SERVE_MAX_TOKENS];
    char system[EL_PROTO_MAX_PAYLOAD];
    int system_len;
    int conv_seq, last_seq, tmpl, cancelled, ended;
    uint64_t last_input_us; /* when the last byte (or text line) came: for the half-frame gap */
    uint32_t bench_count; /* the last BENCH call's number (el_bench_prompt) */
    uint64_t text_bytes;  /* the reply's text sent in TOKEN frames: DONE's text_bytes, so a host
                           * can tell a reply that lost a frame to line noise */
    el_event events[SERVE_EVENTS];
    int n_samples;        /* the request's samples: their sequences, finish reasons and token counts */
    int sample_seq[EL_SERVE_MAX_SAMPLES];
    el_finish_reason sample_finish[EL_SERVE_MAX_SAMPLES];
    int sample_tokens[EL_SERVE_MAX_SAMPLES];
    int beam;             /* the request is a beam search: its beams come whole at its end */
    float sample_cum_logprob[EL_SERVE_MAX_SAMPLES];
    uint8_t constraint[EL_SERVE_CONSTRAINT_BYTES]; /* the automaton CONSTRAINT frames uploaded */
    int constraint_len;
} server;

static server S;

static uint64_t now_us(void) { return S.io->now_us != NULL ? S.io->now_us(S.io->user) : 0; }

static void send_frame(int type, const uint8_t *payload, int len)
{
    int n = el_proto_encode(S.frame, (int)sizeof S.frame, type, payload, len);
    if (n > 0) S.io->write(S.io->user, S.frame, n);
}

/* the reply being built in S.out (cut at the maximum payload) */
static void out_bytes(const char *s, int n)
{
    int i;
    for (i = 0; i < n && S.out_len < EL_PROTO_MAX_PAYLOAD; i++) S.out[S.out_len++] = (uint8_t)s[i];
}

static void out_str(const char *s) { out_bytes(s, (int)el_strlen(s)); }

static void out_u64(uint64_t v)
{
    char digits[EL_PROTO_U64_CHARS];
    out_bytes(digits, el_proto_format_u64(digits, v));
}

static void out_kv(const char *key, uint64_t value)
{
    out_str(key);
    out_bytes("=", 1);
    out_u64(value);
    out_bytes("\n", 1);
}

static void out_kv_str(const char *key, const char *value, int n)
{
    out_str(key);
    out_bytes("=", 1);
    out_bytes(value, n);
    out_bytes("\n", 1);
}

static void send_error(const char *a, const char *b)
{
    S.out_len = 0;
    out_str(a);
    if (b != NULL) out_str(b);
    send_frame(EL_MSG_ERROR, S.out, S.out_len);
}

/* The other sequences of the last request: its forks, or a beam search's beams (the
 * sequence that started it is last_seq or conv_seq, released with them). */
static void release_forks(void)
{
    int i;
    for (i = 0; i < S.n_samples; i++)
        if (S.sample_seq[i] >= 0 && S.sample_seq[i] != S.last_seq && S.sample_seq[i] != S.conv_seq)
            el_runtime_release(S.rt, S.sample_seq[i]);
    S.n_samples = 0;
}

static void release_all(void)
{
    release_forks();
    if (S.conv_seq >= 0) el_runtime_release(S.rt, S.conv_seq);
    if (S.last_seq >= 0 && S.last_seq != S.conv_seq) el_runtime_release(S.rt, S.last_seq);
    S.conv_seq = S.last_seq = -1;
}

void el_serve_release(void)
{
    if (S.rt != NULL) release_all();
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFF);
    p[1] = (uint8_t)((v >> 8) & 0xFF);
    p[2] = (uint8_t)((v >> 16) & 0xFF);
    p[3] = (uint8_t)(v >> 24);
}

/* TOKEN (n = 1): time, text; SAMPLE_TOKEN (sample >= 0): time, the sample's index, text. */
static void send_token(uint64_t t_us, int sample, const char *text, int n)
{
    uint32_t t = (uint32_t)(t_us > 0xFFFFFFFFu ? 0xFFFFFFFFu : t_us);
    int head = sample >= 0 ? 5 : 4, chunk;
    do { /* a long text goes in several frames; each carries the time */
        chunk = n > EL_PROTO_MAX_PAYLOAD - head ? EL_PROTO_MAX_PAYLOAD - head : n;
        put_u32(S.out, t);
        if (sample >= 0) S.out[4] = (uint8_t)sample;
        el_memcpy(S.out + head, text, (size_t)chunk);
        send_frame(sample >= 0 ? EL_MSG_SAMPLE_TOKEN : EL_MSG_TOKEN, S.out, chunk + head);
        text += chunk;
        n -= chunk;
    } while (n > 0);
}

/* LOGPROB: sample, token, logprob (IEEE-754 bits), rank, n_top, then n_top (id, logprob);
 * every number 4 bytes little-endian, the counts one byte. */
static void send_logprob(int sample, const el_logprob_entry *e)
{
    int i, at = 14;
    S.out[0] = (uint8_t)sample;
    put_u32(S.out + 1, (uint32_t)e->token);
    put_u32(S.out + 5, el_float_bits(e->logprob));
    put_u32(S.out + 9, (uint32_t)e->rank);
    S.out[13] = (uint8_t)e->n_top;
    for (i = 0; i < e->n_top; i++, at += 8) {
        put_u32(S.out + at, (uint32_t)e->top_ids[i]);
        put_u32(S.out + at + 4, el_float_bits(e->top_logprobs[i]));
    }
    send_frame(EL_MSG_LOGPROB, S.out, at);
}

/* The request `seq` started ends: it and every fork it made. */
static void abort_request(int seq)
{
    int i;
    el_runtime_abort(S.rt, seq);
    for (i = 1; i < S.n_samples; i++)
        if (S.sample_seq[i] >= 0) el_runtime_abort(S.rt, S.sample_seq[i]);
}

/* One parser result while a reply runs: CANCEL stops it (returns 1), PING is answered,
 * any other request is busy. */
static int answer_while_busy(int r, int seq)
{
    if (r == EL_PROTO_TOO_LONG) send_error(TOO_LONG_TEXT, NULL);
    if (r != EL_PROTO_FRAME) return 0;
    if (S.parser.type == EL_MSG_CANCEL) {
        S.cancelled = 1;
        abort_request(seq);
        return 1; /* what follows is the next request: the main loop reads it */
    }
    if (S.parser.type == EL_MSG_PING) send_frame(EL_MSG_PONG, S.parser.payload, S.parser.len);
    else send_error("busy: a reply is running (send CANCEL first)", NULL);
    return 0;
}

/* Input while a reply runs, until none is waiting or CANCEL. */
static void poll_input(int seq)
{
    int c, r = el_proto_next(&S.parser); /* bytes held back by a rescan come first */
    for (;;) {
        for (; r != EL_PROTO_MORE; r = el_proto_next(&S.parser))
            if (answer_while_busy(r, seq)) return;
        if (S.ended || (c = S.io->read(S.io->user, 0)) == -1) return;
        if (c == -2) {
            S.ended = 1;
            abort_request(seq);
            return;
        }
        r = el_proto_feed(&S.parser, c);
    }
}

/* One event of the request's sample: its logprobs, its text, its end. Returns 1 when
 * the sample just finished. */
static int report_event(const el_event *ev, uint64_t t)
{
    int sample = ev->sample_index;
    if (sample < 0 || sample >= S.n_samples) return 0;
    S.sample_seq[sample] = ev->seq_id;
    if (S.beam) { /* the whole beam at once: count its tokens */
        const int32_t *tokens;
        int n_prompt, n_cached, n = el_runtime_tokens(S.rt, ev->seq_id, &tokens, &n_prompt, &n_cached);
        S.sample_tokens[sample] = n > n_prompt ? n - n_prompt : 0;
        S.sample_cum_logprob[sample] = ev->cumulative_logprob;
    } else if (ev->token >= 0 && ev->prompt_pos == 0) {
        S.sample_tokens[sample]++;
    }
    if (!S.ended) {
        if (ev->logprobs != NULL) send_logprob(sample, ev->logprobs);
        send_token(t, S.n_samples > 1 ? sample : -1, ev->text, ev->text_len);
        S.text_bytes += (uint64_t)ev->text_len;
    }
    if (!ev->finished) return 0;
    S.sample_finish[sample] = ev->finish;
    return 1;
}

/* Steps until every sample of the request that sequence `seq` started has finished;
 * returns sample 0's finish (an error in any sample is the request's). */
static el_finish_reason run(int seq, uint64_t t0, uint64_t *first, int *generated)
{
    int count, i, finished = 0;
    el_finish_reason finish = EL_FINISH_NONE;
    *generated = 0;
    S.text_bytes = 0;
    for (i = 0; i < S.n_samples; i++) {
        S.sample_seq[i] = i == 0 ? seq : -1;
        S.sample_finish[i] = EL_FINISH_NONE;
        S.sample_tokens[i] = 0;
    }
    for (;;) {
        count = el_runtime_step(S.rt, S.events, SERVE_EVENTS);
        if (count == 0 && el_runtime_pending(S.rt) == 0) break;
        for (i = 0; i < count; i++) {
            uint64_t t;
            if (S.events[i].parent_id != seq) continue;
            t = now_us() - t0;
            if (*generated == 0) *first = t;
            if (S.events[i].token >= 0) (*generated)++;
            finished += report_event(&S.events[i], t);
            if (S.events[i].finished && S.events[i].finish == EL_FINISH_ERROR) finish = EL_FINISH_ERROR;
        }
        if (finished >= S.n_samples) break;
        poll_input(seq);
    }
    if (S.beam) /* one event per beam, each holding all its tokens */
        for (*generated = 0, i = 0; i < S.n_samples; i++) *generated += S.sample_tokens[i];
    if (finish == EL_FINISH_ERROR) return finish;
    return S.sample_finish[0] != EL_FINISH_NONE ? S.sample_finish[0] : EL_FINISH_ABORT;
}

static const char *finish_name(el_finish_reason f)
{
    return f == EL_FINISH_STOP ? "stop" : f == EL_FINISH_LENGTH ? "length" : f == EL_FINISH_ERROR ? "error" : "abort";
}

/* n > 1: each sample's finish and token count, in sample order, comma-separated. */
static void samples_kv(void)
{
    int i;
    out_str("finishes=");
    for (i = 0; i < S.n_samples; i++) {
        if (i > 0) out_bytes(",", 1);
        out_str(finish_name(S.sample_finish[i]));
    }
    out_str("\ntoken_counts=");
    for (i = 0; i < S.n_samples; i++) {
        if (i > 0) out_bytes(",", 1);
        out_u64((uint64_t)S.sample_tokens[i]);
    }
    out_bytes("\n", 1);
    if (!S.beam) return;
    out_str("cum_logprobs="); /* exact: each float's IEEE-754 bits, 8 hex digits */
    for (i = 0; i < S.n_samples; i++) {
        static const char hex[] = "0123456789abcdef";
        uint32_t bits = el_float_bits(S.sample_cum_logprob[i]);
        int shift;
        if (i > 0) out_bytes(",", 1);
        for (shift = 28; shift >= 0; shift -= 4) out_bytes(&hex[(bits >> shift) & 0xF], 1);
    }
    out_bytes("\n", 1);
}

static void memory_kv(void)
{
    el_engine_stats st;
    el_runtime_stats(S.rt, &st);
    out_kv("arena_hw", st.arena_high_water);
    out_kv("arena", st.arena_size);
    out_kv("kv_blocks", (uint64_t)st.blocks_used);
    out_kv("kv_total", (uint64_t)st.blocks_total);
    out_kv("kv_hw", (uint64_t)st.blocks_high_water);
}

/* ------------------------------------------------------------ requests */

static void handle_hello(void)
{
    const el_config *cfg = el_runtime_config(S.rt);
    const char *board = S.io->board != NULL ? S.io->board : ""; /* a server without a board name (a harness) */
    el_engine_stats st;
    el_runtime_stats(S.rt, &st);
    S.out_len = 0;
    out_kv("protocol", EL_PROTO_VERSION);
    out_kv_str("version", el_runtime_version(), (int)el_strlen(el_runtime_version()));
    out_kv_str("board", board, (int)el_strlen(board));
    out_kv_str("model", S.rt->model.name.data, (int)S.rt->model.name.len);
    out_kv("ctx", (uint64_t)S.rt->engine.options.max_model_len);
    out_kv("vocab", (uint64_t)cfg->vocab_size);
    out_kv("arena", st.arena_size);
    out_kv("arena_used", st.arena_used);
    out_kv("kv_total", (uint64_t)st.blocks_total);
    out_kv("block", (uint64_t)S.rt->engine.options.block_size);
    out_kv("max_seqs", (uint64_t)S.rt->engine.options.max_seqs);
    out_kv("max_payload", EL_PROTO_MAX_PAYLOAD);
    out_kv("constraint_bytes", EL_SERVE_CONSTRAINT_BYTES);
    if (S.io->updater != NULL) { /* models over the line: the slot in use (0: the image's own) */
        out_kv("slot_bytes", (uint64_t)S.io->updater->slot_bytes);
        out_kv("model_slot", (uint64_t)S.io->updater->active.slot);
    }
    out_kv("clock", S.io->now_us != NULL ? 1 : 0);
    out_kv_str("template", el_chat_template_name((int)S.tmpl), (int)el_strlen(el_chat_template_name((int)S.tmpl)));
    send_frame(EL_MSG_INFO, S.out, S.out_len);
}

static void handle_stats(void)
{
    el_engine_stats st;
    el_runtime_stats(S.rt, &st);
    S.out_len = 0;
    out_kv("prompt_tokens_computed", (uint64_t)st.prompt_tokens_computed);
    out_kv("tokens_generated", (uint64_t)st.tokens_generated);
    out_kv("steps", (uint64_t)st.steps);
    out_kv("prefix_queries", (uint64_t)st.prefix_queries);
    out_kv("prefix_hits", (uint64_t)st.prefix_hits);
    out_kv("preemptions", (uint64_t)st.preemptions);
    out_kv("arena_used", st.arena_used);
    out_kv("arena_high_water", st.arena_high_water);
    out_kv("arena_size", st.arena_size);
    out_kv("blocks_total", (uint64_t)st.blocks_total);
    out_kv("blocks_used", (uint64_t)st.blocks_used);
    out_kv("blocks_cached", (uint64_t)st.blocks_cached);
    out_kv("blocks_high_water", (uint64_t)st.blocks_high_water);
    out_kv("draft_tokens", (uint64_t)st.draft_tokens);
    out_kv("draft_accepted", (uint64_t)st.draft_accepted);
    send_frame(EL_MSG_STATS_RESULT, S.out, S.out_len);
}

/* A text value with the escapes \n \r \t \\ undone; returns its length, or -1 when it
 * does not fit in capacity bytes. */
static int unescape(const char *in, int n, char *out, int capacity)
{
    int i, len = 0;
    char c;
    for (i = 0; i < n; i++) {
        c = in[i];
        if (c == '\\' && i + 1 < n) {
            c = in[++i];
            c = c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : c;
        }
        if (len >= capacity) return -1;
        out[len++] = c;
    }
    return len;
}

static void set_system(const char *text, int n)
{
    release_all();
    S.system_len = unescape(text, n, S.system, (int)sizeof S.system);
    if (S.system_len < 0) S.system_len = (int)sizeof S.system;
}

int el_proto_apply_option(el_request *r, const char *key, int key_len, const char *value, int value_len)
{
    el_sampling *s = &r->sampling;
    double v;
    if (el_proto_key_is(key, key_len, "stop")) {
        int len;
        if (r->n_stop >= EL_MAX_STOP_STRINGS) return 0;
        len = unescape(value, value_len, r->stop[r->n_stop], EL_MAX_STOP_LEN - 1);
        if (len < 1) return 0;
        r->stop[r->n_stop][len] = '\0';
        r->stop_len[r->n_stop++] = len;
        return 1;
    }
    if (!el_proto_parse_number(value, value_len, &v) || v > 3.0e38 || v < -3.0e38) return 0;
    if (el_proto_key_is(key, key_len, "temperature")) s->temperature = (float)v;
    else if (el_proto_key_is(key, key_len, "top_p")) s->top_p = (float)v;
    else if (el_proto_key_is(key, key_len, "min_p")) s->min_p = (float)v;
    else if (el_proto_key_is(key, key_len, "repetition_penalty")) s->repetition_penalty = (float)v;
    else if (el_proto_key_is(key, key_len, "frequency_penalty")) s->frequency_penalty = (float)v;
    else if (el_proto_key_is(key, key_len, "presence_penalty")) s->presence_penalty = (float)v;
    else if (el_proto_key_is(key, key_len, "length_penalty")) r->length_penalty = (float)v;
    else if (v < -1.0 || v > 2147483647.0 || v != (double)(long long)v) return 0; /* the rest are integers */
    else if (el_proto_key_is(key, key_len, "top_k")) s->top_k = (int)v;
    else if (el_proto_key_is(key, key_len, "seed") && v >= 0) s->seed = (uint64_t)v;
    else if (el_proto_key_is(key, key_len, "max_tokens")) r->max_tokens = (int)v;
    else if (el_proto_key_is(key, key_len, "min_tokens")) r->min_tokens = (int)v;
    else if (el_proto_key_is(key, key_len, "ignore_eos") && (v == 0 || v == 1)) r->ignore_eos = (int)v;
    else if (el_proto_key_is(key, key_len, "n")) r->n = (int)v;
    else if (el_proto_key_is(key, key_len, "logprobs")) r->logprobs = (int)v;
    else if (el_proto_key_is(key, key_len, "beam_width")) r->beam_width = (int)v;
    else return 0;
    return 1;
}

/* CONSTRAINT: 4 bytes of offset (LE), then the automaton's bytes from there. Offset 0
 * starts a new one; the chunks come in order, each answered with OK. */
static void handle_constraint(const uint8_t *payload, int n)
{
    uint32_t offset;
    if (n < 4) {
        send_error("constraint: a chunk starts with its 4-byte offset", NULL);
        return;
    }
    offset = (uint32_t)payload[0] | (uint32_t)payload[1] << 8 | (uint32_t)payload[2] << 16 |
             (uint32_t)payload[3] << 24;
    if (offset == 0) S.constraint_len = 0;
    if (offset != (uint32_t)S.constraint_len) {
        S.constraint_len = 0;
        send_error("constraint: a chunk out of order (upload it again from offset 0)", NULL);
        return;
    }
    if (n - 4 > EL_SERVE_CONSTRAINT_BYTES - S.constraint_len) {
        S.constraint_len = 0;
        S.out_len = 0;
        out_str("constraint: more than this device's ");
        out_u64(EL_SERVE_CONSTRAINT_BYTES);
        out_str(" bytes");
        send_frame(EL_MSG_ERROR, S.out, S.out_len);
        return;
    }
    el_memcpy(S.constraint + S.constraint_len, payload + 4, (size_t)(n - 4));
    S.constraint_len += n - 4;
    S.out[0] = EL_MSG_CONSTRAINT;
    send_frame(EL_MSG_OK, S.out, 1);
}

/* ------------------------------------------------------------ models over the line */

/* OK for a MODEL_* request: its type, then key=value lines in S.out after it. */
static void send_model_ok(int type, const char *key, uint64_t value)
{
    uint8_t type_byte = (uint8_t)type;
    S.out_len = 0;
    out_bytes((const char *)&type_byte, 1);
    if (key != NULL) out_kv(key, value);
    out_kv_str("model", S.rt->model.name.data, (int)S.rt->model.name.len);
    send_frame(EL_MSG_OK, S.out, S.out_len);
}

/* After a switch: the runtime on the record's model. When that model does not open,
 * the record goes back, and so does the model (it opened before, in the same arena with
 * the same options); *error says why. 1 when the new one runs. */
static int run_switched_model(const char **error)
{
    el_updater *u = S.io->updater;
    const uint8_t *model;
    const char *unused = NULL;
    size_t size;
    release_all(); /* the conversation belongs to the model it was had with */
    model = el_updater_model(u, &size);
    S.rt = S.io->reopen(S.io->user, model, size, error);
    if (S.rt == NULL) {
        el_updater_revert(u);
        model = el_updater_model(u, &size);
        S.rt = S.io->reopen(S.io->user, model, size, &unused);
    }
    S.tmpl = (int)el_runtime_chat_template(S.rt);
    return *error == NULL;
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                                                                    : -1;
}

/* MODEL_BEGIN's key=value lines: size=N and sha256=64 hex digits; 0 when malformed. */
static int parse_model_begin(const char *text, int n, uint32_t *size, uint8_t sha256[32])
{
    const char *key, *value;
    int pos = 0, key_len, value_len, k, have_size = 0, have_sha = 0;
    double v;
    while (el_proto_next_kv(text, n, &pos, &key, &key_len, &value, &value_len)) {
        if (el_proto_key_is(key, key_len, "size") && el_proto_parse_number(value, value_len, &v) && v >= 0 &&
            v < 4294967296.0 && v == (double)(uint32_t)v) {
            *size = (uint32_t)v;
            have_size = 1;
        } else if (el_proto_key_is(key, key_len, "sha256") && value_len == 64) {
            for (k = 0; k < 32; k++) {
                int hi = hex_digit(value[2 * k]), lo = hex_digit(value[2 * k + 1]);
                if (hi < 0 || lo < 0) return 0;
                sha256[k] = (uint8_t)(hi * 16 + lo);
            }
            have_sha = 1;
        } else {
            return 0;
        }
    }
    return have_size && have_sha;
}

static void handle_model(int type, const uint8_t *payload, int n)
{
    el_updater *u = S.io->updater;
    const char *error = NULL;
    long offset;
    if (u == NULL || S.io->reopen == NULL) {
        send_error("model: this device keeps the model of its image (no model store)", NULL);
        return;
    }
    if (type == EL_MSG_MODEL_BEGIN) {
        uint32_t size = 0;
        uint8_t sha256[32];
        if (!parse_model_begin((const char *)payload, n, &size, sha256))
            send_error("model: MODEL_BEGIN needs size=N and sha256=64 hex digits", NULL);
        else if ((offset = el_updater_begin(u, size, sha256, &error)) < 0) send_error(error, NULL);
        else send_model_ok(type, "offset", (uint64_t)offset);
    } else if (type == EL_MSG_MODEL_CHUNK) {
        if (el_updater_chunk(u, payload, n, &error) < 0) {
            send_error(error, NULL);
        } else {
            S.out[0] = (uint8_t)type;
            send_frame(EL_MSG_OK, S.out, 1);
        }
    } else {
        int status = type == EL_MSG_MODEL_COMMIT ? el_updater_commit(u, &error) : el_updater_rollback(u, &error);
        if (status < 0) send_error(error, NULL);
        else if (!run_switched_model(&error)) send_error("model: it does not open here, so the one before is back: ",
                                                         error);
        else send_model_ok(type, "slot", (uint64_t)u->active.slot);
    }
}

/* GENERATE's constraint=LEN and constraint_crc=CRC name the automaton uploaded last: the
 * request reads it in place. 1, or 0 after an ERROR saying what does not match. */
static int use_constraint(el_request *request, long long len, long long crc)
{
    if (len < 0 && crc < 0) return 1;
    if (len != S.constraint_len || crc != (long long)el_proto_crc16(0xFFFFu, S.constraint, S.constraint_len)) {
        send_error("constraint: the device holds a different constraint (upload it again)", NULL);
        return 0;
    }
    request->constraint = S.constraint;
    request->constraint_len = S.constraint_len;
    return 1;
}

static void handle_generate(const char *text, int n)
{
    el_request request;
    el_error err;
    el_engine_stats before, after;
    const char *key, *value;
    const int32_t *all;
    int pos = 0, key_len, value_len, chat = 0, reset = 0, started_over, n_tokens = 0, seq, generated;
    int n_prompt = 0, n_cached = 0;
    long long constraint_len = -1, constraint_crc = -1;
    double v;
    el_finish_reason finish;
    uint64_t t0 = now_us(), first = 0, total;

    el_request_defaults(&request);
    request.max_tokens = S.io->default_max_tokens > 0 ? S.io->default_max_tokens : 128;
    err.status = EL_OK;
    err.message[0] = '\0';
    while (el_proto_next_kv(text, n, &pos, &key, &key_len, &value, &value_len)) {
        if (el_proto_key_is(key, key_len, "chat")) chat = value_len == 1 && value[0] == '1';
        else if (el_proto_key_is(key, key_len, "reset")) reset = value_len == 1 && value[0] == '1';
        else if (el_proto_key_is(key, key_len, "system")) {
            set_system(value, value_len);
        } else if ((el_proto_key_is(key, key_len, "constraint") || el_proto_key_is(key, key_len, "constraint_crc")) &&
                   el_proto_parse_number(value, value_len, &v) && v >= 0 && v <= 2147483647.0) {
            if (key_len == 10) constraint_len = (long long)v;
            else constraint_crc = (long long)v;
        } else if (!el_proto_apply_option(&request, key, key_len, value, value_len)) {
            S.out_len = 0;
            out_str("bad option '");
            out_bytes(key, key_len);
            out_str("=");
            out_bytes(value, value_len);
            out_str("'");
            send_frame(EL_MSG_ERROR, S.out, S.out_len);
            return;
        }
    }
    if (!use_constraint(&request, constraint_len, constraint_crc)) return;
    if (el_request_check(&request, &err) != EL_OK) {
        send_error(err.message, NULL);
        return;
    }
    if (request.n > EL_SERVE_MAX_SAMPLES || (chat && (request.n > 1 || request.beam_width > 0))) {
        send_error(chat ? "n: a chat turn takes one sample (and no beam search)" : "n: at most 8 samples a request",
                   NULL);
        return;
    }
    if (reset) release_all();
    release_forks();
    if (S.last_seq >= 0 && S.last_seq != S.conv_seq) el_runtime_release(S.rt, S.last_seq);
    S.last_seq = -1;
    el_runtime_stats(S.rt, &before);
    if (chat) {
        if (el_runtime_chat_request(S.rt, S.tmpl, &request, &err) != EL_OK) {
            send_error(err.message, NULL);
            return;
        }
        seq = el_runtime_chat_admit(S.rt, S.tmpl, S.conv_seq, S.system, S.system_len, text + pos, n - pos, S.tokens,
                                    EL_SERVE_MAX_TOKENS, &request, &started_over, &err);
        if (started_over) S.conv_seq = -1; /* the conversation filled the context: released, started over */
        if (seq < 0) {
            send_error(err.message, NULL);
            return;
        }
        S.conv_seq = seq;
    } else {
        release_all(); /* a one-shot request ends the conversation */
        if (pos >= n) {
            send_error("empty prompt", NULL);
            return;
        }
        n_tokens = el_runtime_tokenize(S.rt, text + pos, n - pos, 1, S.tokens, EL_SERVE_MAX_TOKENS, &err);
        if (n_tokens < 0 || (seq = el_runtime_add(S.rt, S.tokens, n_tokens, &request, &err)) < 0) {
            send_error(err.message, NULL);
            return;
        }
        S.last_seq = seq;
    }
    S.n_samples = request.beam_width > 0 ? request.beam_width : request.n; /* a search reports W beams */
    S.beam = request.beam_width > 0;
    S.cancelled = 0;
    finish = run(seq, t0, &first, &generated);
    if (finish == EL_FINISH_ERROR) { /* non-finite logits: an error, not a reply */
        send_error(EL_FINISH_ERROR_TEXT, NULL);
        return;
    }
    total = now_us() - t0;
    el_runtime_stats(S.rt, &after);
    if (el_runtime_tokens(S.rt, seq, &all, &n_prompt, &n_cached) < 0) n_prompt = n_tokens;
    S.out_len = 0;
    out_kv_str("finish", finish_name(finish), (int)el_strlen(finish_name(finish)));
    out_kv("tokens", (uint64_t)generated);
    out_kv("text_bytes", S.text_bytes);
    if (S.n_samples > 1 || S.beam) samples_kv();
    out_kv("prompt", (uint64_t)n_prompt);
    out_kv("cached", (uint64_t)n_cached);
    out_kv("computed", (uint64_t)(after.prompt_tokens_computed - before.prompt_tokens_computed));
    if (S.io->now_us != NULL) {
        out_kv("ttft_us", generated > 0 ? first : total);
        out_kv("total_us", total);
    }
    memory_kv();
    send_frame(EL_MSG_DONE, S.out, S.out_len);
}

static void handle_bench(const char *text, int n)
{
    el_request request;
    el_error err;
    el_engine_stats st;
    const char *key, *value;
    int pos = 0, key_len, value_len, want = 64, gen = 32, seq, generated, ctx;
    double v;
    uint64_t t0, first = 0, total;
    long long rss;
    el_finish_reason finish;

    while (el_proto_next_kv(text, n, &pos, &key, &key_len, &value, &value_len)) {
        if (!el_proto_parse_number(value, value_len, &v) || v < 1 || v > 1e6) {
            send_error("bench: prompt_tokens and gen_tokens must be positive integers", NULL);
            return;
        }
        if (el_proto_key_is(key, key_len, "prompt_tokens")) want = (int)v;
        else if (el_proto_key_is(key, key_len, "gen_tokens")) gen = (int)v;
        else {
            send_error("bench: unknown key (prompt_tokens, gen_tokens)", NULL);
            return;
        }
    }
    ctx = S.rt->engine.options.max_model_len;
    if (want < 2 || want + gen > ctx || el_bench_prompt_room(want) > EL_SERVE_MAX_TOKENS) {
        send_error("bench: prompt_tokens (at least 2) + gen_tokens exceed the context", NULL);
        return;
    }
    release_all();
    err.status = EL_OK;
    err.message[0] = '\0';
    /* a new call number each time: the prompt shares no prefix with the previous run */
    if (el_bench_prompt(S.rt, want, ++S.bench_count, S.tokens, EL_SERVE_MAX_TOKENS, &err) != want) {
        send_error("bench: cannot tokenize the bench text", NULL);
        return;
    }
    el_request_defaults(&request);
    request.sampling.temperature = 0.0f;
    request.max_tokens = gen;
    request.ignore_eos = 1;
    t0 = now_us();
    if ((seq = el_runtime_add(S.rt, S.tokens, want, &request, &err)) < 0) {
        send_error(err.message, NULL);
        return;
    }
    S.last_seq = seq;
    S.n_samples = 1;
    S.beam = 0;
    S.cancelled = 0;
    finish = run(seq, t0, &first, &generated);
    total = now_us() - t0;
    el_runtime_stats(S.rt, &st);
    S.out_len = 0;
    out_kv_str("finish", finish_name(finish), (int)el_strlen(finish_name(finish)));
    out_kv("prompt_tokens", (uint64_t)want);
    out_kv("gen_tokens", (uint64_t)generated);
    if (S.io->now_us != NULL) {
        out_kv("prefill_us", first);
        out_kv("ttft_us", first);
        out_kv("total_us", total);
    }
    memory_kv();
    rss = S.io->rss_bytes != NULL ? S.io->rss_bytes(S.io->user) : -1;
    if (rss >= 0) out_kv("rss_bytes", (uint64_t)rss);
    send_frame(EL_MSG_BENCH_RESULT, S.out, S.out_len);
    el_runtime_release(S.rt, seq);
    S.last_seq = -1;
}

static void handle_frame(void)
{
    const char *text = (const char *)S.parser.payload;
    int n = S.parser.len;
    switch (S.parser.type) {
    case EL_MSG_HELLO: handle_hello(); break;
    case EL_MSG_GENERATE: handle_generate(text, n); break;
    case EL_MSG_BENCH: handle_bench(text, n); break;
    case EL_MSG_PING: send_frame(EL_MSG_PONG, S.parser.payload, n); break;
    case EL_MSG_STATS: handle_stats(); break;
    case EL_MSG_CONSTRAINT: handle_constraint(S.parser.payload, n); break;
    case EL_MSG_MODEL_BEGIN:
    case EL_MSG_MODEL_CHUNK:
    case EL_MSG_MODEL_COMMIT:
    case EL_MSG_MODEL_ROLLBACK: handle_model(S.parser.type, S.parser.payload, n); break;
    case EL_MSG_CANCEL: break; /* nothing running: nothing to stop */
    case EL_MSG_RESET:
        set_system(text, n);
        S.out[0] = EL_MSG_RESET;
        send_frame(EL_MSG_OK, S.out, 1);
        break;
    default: send_error("unknown message type", NULL); break;
    }
}

/* Acts on the parser's results, starting with r, until it needs input: one byte can
 * complete several frames (a rescan after a rejected candidate). */
static void serve_results(int r)
{
    int c;
    while (r != EL_PROTO_MORE && !S.ended) {
        if (r == EL_PROTO_FRAME) handle_frame();
        else if (r == EL_PROTO_TOO_LONG) send_error(TOO_LONG_TEXT, NULL);
        else if (r == EL_PROTO_NOISE && S.io->text_line != NULL) {
            c = S.io->text_line(S.io->user, S.parser.noise);
            S.last_input_us = now_us();
            if (c >= 0) { /* a frame began inside the line */
                r = el_proto_feed(&S.parser, c);
                continue;
            }
        }
        r = el_proto_next(&S.parser);
    }
}

int el_serve(el_runtime *rt, const el_serve_io *io)
{
    int c;
    el_memset(&S, 0, sizeof S);
    S.rt = rt;
    S.io = io;
    S.conv_seq = S.last_seq = -1;
    S.tmpl = (int)el_runtime_chat_template(rt);
    el_proto_parser_init(&S.parser);
    while (!S.ended) {
        /* inside a frame, wait a little: a frame silent for GAP_US is a half frame */
        c = io->read(io->user, el_proto_busy(&S.parser) && io->now_us != NULL ? 50 : -1);
        if (c == -2) break;
        if (c == -1) { /* the half frame is rejected; what came after its magic is rescanned */
            if (el_proto_busy(&S.parser) && now_us() - S.last_input_us > GAP_US)
                serve_results(el_proto_drop(&S.parser));
            continue;
        }
        S.last_input_us = now_us();
        serve_results(el_proto_feed(&S.parser, c));
    }
    release_all();
    return 0;
}
