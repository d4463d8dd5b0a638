/* fuzz_frames.c: any bytes through the serial protocol's frame parser, then valid PING
 * frames: whatever came before, the parser must find one of them (it resynchronizes).
 * Enough copies follow to complete any frame the noise may have begun. Every result a
 * byte gives is drained (el_proto_next), as a receiver must. */
#include <stdint.h>
#include <stdlib.h>

#include "el_protocol.h"

/* Feed one byte and drain its results; whether a PING was among them. */
static int feed_finds_ping(el_proto_parser *p, int byte)
{
    int result = el_proto_feed(p, byte), found = 0;
    while (result != EL_PROTO_MORE) {
        if (result == EL_PROTO_FRAME) {
            if (p->len < 0 || p->len > EL_PROTO_MAX_PAYLOAD) abort();
            found |= p->type == EL_MSG_PING;
        }
        result = el_proto_next(p);
    }
    return found;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static el_proto_parser parser;
    uint8_t ping[64];
    int n = el_proto_encode(ping, (int)sizeof ping, EL_MSG_PING, (const uint8_t *)"fuzz", 4), i, found = 0;
    int copies = (EL_PROTO_MAX_PAYLOAD + 16) / n + 2;
    el_proto_parser_init(&parser);
    for (i = 0; i < (int)size; i++) feed_finds_ping(&parser, data[i]);
    for (i = 0; i < copies * n && !found; i++) found = feed_finds_ping(&parser, ping[i % n]);
    if (!found) abort();
    return 0;
}
