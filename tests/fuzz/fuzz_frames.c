/* fuzz_frames.c: any bytes through the serial protocol's frame parser, then valid PING
 * frames: whatever came before, the parser must find one of them (it resynchronizes).
 * Enough copies follow to complete any frame the noise may have begun. */
#include <stdint.h>
#include <stdlib.h>

#include "el_protocol.h"

static int is_ping(const el_proto_parser *p, int result) { return result == EL_PROTO_FRAME && p->type == EL_MSG_PING; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static el_proto_parser parser;
    uint8_t ping[64];
    int n = el_proto_encode(ping, (int)sizeof ping, EL_MSG_PING, (const uint8_t *)"fuzz", 4), i, found = 0;
    int copies = (EL_PROTO_MAX_PAYLOAD + 16) / n + 2;
    el_proto_parser_init(&parser);
    for (i = 0; i < (int)size; i++) el_proto_feed(&parser, data[i]);
    for (i = 0; i < copies * n && !found; i++) found = is_ping(&parser, el_proto_feed(&parser, ping[i % n]));
    if (!found) abort();
    return 0;
}
