/* el_protocol.h: the framed serial protocol (firmware/PROTOCOL.md is the spec).
 *
 * Framing, CRC and key=value parsing, and one serve loop over an el_runtime that both
 * the POSIX program (`serve`) and the bare-metal main loop use. C99, no libc, no
 * malloc: the parser and the server keep their buffers in fixed-size structures.
 *
 *   frame = magic 0xFE 0x4C | type (1) | length (2, LE) | payload | CRC (2, LE)
 *   CRC   = CRC-16/CCITT-FALSE over type, length and payload
 */
#ifndef EL_PROTOCOL_H
#define EL_PROTOCOL_H

#include "el_runtime.h"
#include "el_updater.h"

#define EL_PROTO_MAGIC0 0xFE
#define EL_PROTO_MAGIC1 0x4C
#define EL_PROTO_MAX_PAYLOAD 512
#define EL_PROTO_OVERHEAD 7 /* magic, type, length, CRC */
#define EL_PROTO_VERSION 1

/* host to device */
#define EL_MSG_HELLO 0x01
#define EL_MSG_GENERATE 0x02
#define EL_MSG_CANCEL 0x03
#define EL_MSG_BENCH 0x04
#define EL_MSG_PING 0x05
#define EL_MSG_STATS 0x06
#define EL_MSG_RESET 0x07
#define EL_MSG_CONSTRAINT 0x08 /* a chunk of a structured-output automaton (el_constraint.h) */
#define EL_MSG_MODEL_BEGIN 0x09    /* models over the line (el_updater.h): an upload starts or resumes */
#define EL_MSG_MODEL_CHUNK 0x0A    /* 4 bytes of offset, then the model's bytes from there */
#define EL_MSG_MODEL_COMMIT 0x0B   /* check the upload's SHA-256, switch to it */
#define EL_MSG_MODEL_ROLLBACK 0x0C /* back to the model before */
/* device to host */
#define EL_MSG_INFO 0x81
#define EL_MSG_TOKEN 0x82
#define EL_MSG_DONE 0x83
#define EL_MSG_ERROR 0x84
#define EL_MSG_BENCH_RESULT 0x85
#define EL_MSG_PONG 0x86
#define EL_MSG_STATS_RESULT 0x87
#define EL_MSG_OK 0x88
#define EL_MSG_SAMPLE_TOKEN 0x89 /* a TOKEN of sample i of a request with n > 1 */
#define EL_MSG_LOGPROB 0x8A      /* the logprobs of the token whose TOKEN follows */

/* The most samples one GENERATE may ask for (n), within the engine's max_seqs. */
#define EL_SERVE_MAX_SAMPLES 8

/* The largest structured-output automaton the server holds (static memory, beside the
 * arena; the planner reads this line): a JSON schema of a few fields is 2-12 KB. */
#ifndef EL_SERVE_CONSTRAINT_BYTES
#define EL_SERVE_CONSTRAINT_BYTES 16384
#endif

/* CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor);
 * pass 0xFFFF to start, the previous value to continue. */
uint16_t el_proto_crc16(uint16_t crc, const uint8_t *data, int n);

/* One frame into out; returns its size, or -1 when the payload is over the maximum or
 * out is too small. */
int el_proto_encode(uint8_t *out, int capacity, int type, const uint8_t *payload, int len);

/* The receiving side: bytes in one at a time.
 *
 * Resynchronization: a candidate frame starts at each magic. One that is rejected (an
 * oversized length, a wrong CRC, a FE not followed by 0x4C, or el_proto_drop after a
 * gap) is not skipped whole: the search for the magic resumes at the byte after its
 * first one, so a frame inside a rejected one (a request sent after a half frame) is
 * still found. The parser keeps the candidate's bytes for that in `raw`, at most one
 * maximum frame, never more: no byte is ever lost for want of room.
 *
 * One byte in can give several results (the rescanned bytes may hold frames): after a
 * result other than EL_PROTO_MORE, call el_proto_next until it returns EL_PROTO_MORE
 * before reading on. Bytes rescanned outside any frame are skipped silently; NOISE is
 * only reported for a byte that arrived while no frame was in progress. */
enum {
    EL_PROTO_MORE = 0,      /* nothing more to report until the next byte */
    EL_PROTO_FRAME = 1,     /* a frame is complete: type, payload, len */
    EL_PROTO_NOISE = -1,    /* the byte arrived outside any frame (not the magic) */
    EL_PROTO_BAD_CRC = -2,  /* a candidate ended with a wrong CRC: rejected, its bytes rescanned */
    EL_PROTO_TOO_LONG = -3  /* a header announced more than EL_PROTO_MAX_PAYLOAD: rejected, rescanned */
};

#define EL_PROTO_MAX_FRAME (EL_PROTO_MAX_PAYLOAD + EL_PROTO_OVERHEAD)

typedef struct {
    uint8_t raw[EL_PROTO_MAX_FRAME]; /* the candidate from its magic, then bytes to rescan */
    int start;  /* the candidate's first byte in raw */
    int have;   /* bytes of the candidate examined (0: searching for the magic) */
    int end;    /* bytes held in raw */
    int fresh;  /* raw[fresh..end) were never examined: only those can be reported as NOISE */
    int noise;  /* the byte a NOISE result reports */
    /* the last FRAME (valid until the next call): payload points into raw, NUL after it */
    int type, len;
    const uint8_t *payload;
} el_proto_parser;

void el_proto_parser_init(el_proto_parser *p);
/* A received byte; the first result (then el_proto_next until EL_PROTO_MORE). */
int el_proto_feed(el_proto_parser *p, int byte);
/* The next result from bytes held back by a rejected candidate, or EL_PROTO_MORE. */
int el_proto_next(el_proto_parser *p);
/* Rejects the frame in progress (a half frame after a gap) and rescans its bytes; the
 * first result, as el_proto_next. */
int el_proto_drop(el_proto_parser *p);
/* Whether a frame has started and not ended (for dropping a half frame after a gap). */
int el_proto_busy(const el_proto_parser *p);

/* key=value lines: the next pair of text[*pos..n), stopping at an empty line (after
 * which *pos is the body's start) or at the end. Returns 1 for a pair, 0 at the end. */
int el_proto_next_kv(const char *text, int n, int *pos, const char **key, int *key_len, const char **value,
                     int *value_len);
int el_proto_key_is(const char *key, int key_len, const char *name);
/* v in decimal into out (at least EL_PROTO_U64_CHARS bytes, not NUL-terminated); returns the length. */
#define EL_PROTO_U64_CHARS 20
int el_proto_format_u64(char *out, uint64_t v);
/* A decimal number (sign, digits, point, digits, exponent) spanning all n bytes. */
int el_proto_parse_number(const char *s, int n, double *out);
/* One sampling or request option (temperature=0.7, max_tokens=64, stop=...) into r;
 * 0 for an unknown key or a bad value. GENERATE and the text mode share it. */
int el_proto_apply_option(el_request *r, const char *key, int key_len, const char *value, int value_len);

/* ------------------------------------------------------------ the server */

typedef struct {
    void *user;
    /* A received byte (0..255); -1 when none came within wait_ms (wait_ms < 0: wait
     * as long as it takes); -2 when the input has ended (the serve loop returns). */
    int (*read)(void *user, int wait_ms);
    void (*write)(void *user, const uint8_t *data, int n);
    /* Microseconds of a free-running device clock; NULL when the device has none. */
    uint64_t (*now_us)(void *user);
    /* Peak resident memory in bytes; NULL (or a negative result) when not known. */
    long long (*rss_bytes)(void *user);
    /* Plain-text mode: called with a byte that arrived outside any frame at the start
     * of input; reads and answers one text line. Returns -1, or a byte to go on with
     * as frame input (the magic, when a frame began inside the line). NULL: such
     * bytes are ignored. */
    int (*text_line)(void *user, int first_byte);
    const char *board;
    int default_max_tokens;
    /* Models over the line (MODEL_* frames): the board's two slots and boot record, and
     * how to open a runtime on a model (in the one arena: the old runtime is gone once it
     * is called; NULL with *error set when the model does not open). NULL updater: the
     * device keeps the model of its image, and MODEL_* frames get an ERROR. */
    el_updater *updater;
    el_runtime *(*reopen)(void *user, const uint8_t *model, size_t size, const char **error);
} el_serve_io;

/* Serves requests until io->read reports the end of input; returns 0. */
int el_serve(el_runtime *rt, const el_serve_io *io);
/* Releases the sequences the server keeps (the conversation, the last reply): for a
 * text_line handler that runs a request of its own. */
void el_serve_release(void);

#endif
