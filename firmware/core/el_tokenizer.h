/* el_tokenizer.h: sentencepiece-BPE encoding and decoding from a GGUF vocabulary.
 *
 * Encoding follows the rules of a llama GGUF vocabulary, which equal the sentencepiece
 * library's for a BPE model with identity normalization: a space is put in front of
 * the text, spaces become U+2581, the text is split into UTF-8 characters, and the
 * adjacent pair whose merge is a vocabulary piece with the highest score is merged
 * (the leftmost on ties) until none is left; a piece that is not in the vocabulary is
 * emitted as its bytes' <0xXX> tokens.
 */
#ifndef EL_TOKENIZER_H
#define EL_TOKENIZER_H

#include "el_model.h"

typedef struct {
    el_vocab vocab;
    int32_t byte_token[256];   /* id of <0xXX>, or -1 */
    int32_t *piece_slots;      /* open-addressing table: piece text -> id (-1 empty) */
    uint32_t n_slots;          /* a power of two */
    uint32_t max_piece_len;
    uint32_t max_user_len;     /* longest USER_DEFINED piece (0: none): such pieces are matched whole */
    int has_unused;            /* UNUSED pieces: merged like others, then split back as sentencepiece does */
    int byte_fallback;         /* any <0xXX> piece: unknown pieces become bytes, else one <unk> per run */
} el_tokenizer;

el_status el_tokenizer_init(el_tokenizer *tok, const el_vocab *vocab, el_arena *arena, el_error *err);

/* The id of a piece given as UTF-8 bytes, or -1. */
int el_tokenizer_find(const el_tokenizer *tok, const char *piece, size_t len);

/* Encode `len` bytes of text (any bytes; invalid UTF-8 falls back to byte tokens),
 * with BOS first when add_bos. Temporary memory comes from `scratch` and is given
 * back before returning. Returns the number of tokens, or -1 with err set when
 * `capacity` or the scratch arena is too small. */
int el_tokenize(const el_tokenizer *tok, const char *text, size_t len, int add_bos, int32_t *out, int capacity,
                el_arena *scratch, el_error *err);

/* The most tokens el_tokenize can give for `len` bytes, BOS included: a capacity that
 * never fails. Each byte becomes at most three normalized bytes (a space is U+2581, an
 * invalid byte U+FFFD), each of which may be its own byte token, after the three of the
 * dummy prefix. */
size_t el_tokenize_bound(size_t len);

/* The bytes one token stands for: U+2581 becomes a space, <0xXX> its byte, control
 * tokens nothing, the unknown token " \xe2\x81\x87 " (U+2047, as sentencepiece
 * prints it). After BOS (previous == bos_id) a leading space is dropped, as
 * sentencepiece drops the space it added. Returns the byte count (<= capacity). */
size_t el_token_text(const el_tokenizer *tok, int previous, int token, char *out, size_t capacity);

/* Streaming: bytes go in token by token, and only whole UTF-8 characters come out,
 * so a multi-byte character split over two tokens is never printed in halves.
 * An invalid sequence is passed through byte by byte once it is known to be invalid. */
typedef struct {
    unsigned char pending[4];
    int n_pending;
} el_utf8_stream;

void el_utf8_stream_init(el_utf8_stream *stream);
/* Appends the complete characters to out; returns the bytes written (out needs n + 4). */
size_t el_utf8_stream_feed(el_utf8_stream *stream, const char *bytes, size_t n, char *out);
/* Whatever is still held at the end of a stream. */
size_t el_utf8_stream_flush(el_utf8_stream *stream, char *out);

#endif
