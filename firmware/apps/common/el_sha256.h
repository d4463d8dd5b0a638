/* el_sha256.h: SHA-256 (FIPS 180-4), for checking a model uploaded over the serial line
 * against the digest the host sent. C99, no libc. */
#ifndef EL_SHA256_H
#define EL_SHA256_H

#include "el_base.h"

typedef struct {
    uint32_t state[8];
    uint64_t bytes;      /* message bytes so far */
    uint8_t block[64];   /* the block being filled */
    int filled;
} el_sha256;

void el_sha256_init(el_sha256 *h);
void el_sha256_update(el_sha256 *h, const uint8_t *data, size_t n);
void el_sha256_final(el_sha256 *h, uint8_t digest[32]);

#endif
