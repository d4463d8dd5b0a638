/* el_tokenizer.c: sentencepiece BPE over a GGUF vocabulary, and back to text.
 *
 * The oracle is the sentencepiece library (0.2.x) running a BPE model with identity
 * normalization, a dummy prefix, extra spaces kept and byte fallback; every rule
 * below is one of its rules, measured against it:
 *  - empty text gives no tokens; any other text gets U+2581 in front, and each space
 *    becomes U+2581 (tabs, newlines and other control characters stay as they are);
 *  - each byte that does not start a valid UTF-8 character (strictly: no overlong
 *    forms, surrogates or code points past U+10FFFF) becomes U+FFFD, byte by byte;
 *  - the text is split into characters, except that the longest USER_DEFINED piece
 *    found at a position is one symbol that is never merged;
 *  - merges may only produce NORMAL, USER_DEFINED and UNUSED pieces (never CONTROL,
 *    UNKNOWN or BYTE ones); the best pair has the highest score, compared the way
 *    sentencepiece compares the float's bits (-0.0 < +0.0), the leftmost on ties;
 *  - a final UNUSED piece is split back into the two symbols it was last merged from
 *    (sentencepiece keeps one split per piece text, the one pushed last), and is
 *    unknown when it was never merged (a one-character piece);
 *  - a final symbol that is no such piece is unknown: its bytes become <0xXX> tokens,
 *    or, without byte tokens, a run of unknown symbols becomes one <unk>.
 *
 * Memory: el_tokenize takes up to about 60 bytes of scratch per byte of text (85 when
 * the vocabulary has UNUSED pieces), all given back before it returns.
 */
#include "el_tokenizer.h"

/* Token types of a GGUF / sentencepiece vocabulary. */
enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_USER_DEFINED = 4, TOK_UNUSED = 5, TOK_BYTE = 6 };

/* ------------------------------------------------------------------ vocabulary */

static int piece_type(const el_vocab *vocab, int id)
{
    return vocab->types != NULL ? (int)vocab->types[id] : TOK_NORMAL;
}

/* Pieces a merge may produce: sentencepiece's "normal" pieces. */
static int is_mergeable(int type)
{
    return type == TOK_NORMAL || type == TOK_USER_DEFINED || type == TOK_UNUSED;
}

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a: short keys, no multiplications to spare */
    while (n--) h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

static int piece_equals(const el_vocab *vocab, int id, const char *s, size_t n)
{
    const el_str *p = &vocab->pieces[id];
    return p->len == n && el_memcmp(p->data, s, n) == 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1; /* sentencepiece writes byte pieces in upper case only */
}

/* The byte of a "<0xXX>" piece, or -1. */
static int byte_of_piece(el_str p)
{
    int hi, lo;
    if (p.len != 6 || p.data[0] != '<' || p.data[1] != '0' || p.data[2] != 'x' || p.data[5] != '>') return -1;
    hi = hex_digit(p.data[3]);
    lo = hex_digit(p.data[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

static el_status check_vocab(const el_vocab *vocab, el_error *err)
{
    if (vocab->n_tokens <= 0 || vocab->pieces == NULL)
        return el_fail(err, EL_ERR_FORMAT, "tokenizer: the vocabulary is empty", NULL, NULL);
    if (vocab->n_tokens > (1 << 24)) /* keeps the slot count and table size from wrapping */
        return el_fail(err, EL_ERR_UNSUPPORTED, "tokenizer: more than 16M pieces", NULL, NULL);
    if (vocab->unk_id < 0 || vocab->unk_id >= vocab->n_tokens) {
        el_fail(err, EL_ERR_FORMAT, "tokenizer: unknown-token id ", NULL, NULL);
        el_error_num(err, vocab->unk_id);
        el_error_append(err, " is outside the vocabulary");
        return EL_ERR_FORMAT;
    }
    return EL_OK;
}

/* Ids go in ascending order, so a lookup meets the lowest id of a text first. */
static void insert_piece(el_tokenizer *tok, int id)
{
    el_str p = tok->vocab.pieces[id];
    uint32_t mask = tok->n_slots - 1, slot = hash_bytes(p.data, p.len) & mask;
    while (tok->piece_slots[slot] >= 0) slot = (slot + 1) & mask;
    tok->piece_slots[slot] = id;
}

/* Remembers what encoding needs to know about the piece types up front. */
static void note_piece(el_tokenizer *tok, int id)
{
    el_str p = tok->vocab.pieces[id];
    int type = piece_type(&tok->vocab, id), byte = byte_of_piece(p);
    if (p.len > tok->max_piece_len) tok->max_piece_len = p.len;
    if (type == TOK_USER_DEFINED && p.len > tok->max_user_len) tok->max_user_len = p.len;
    if (type == TOK_UNUSED) tok->has_unused = 1;
    if (type == TOK_BYTE && byte >= 0 && tok->byte_token[byte] < 0) {
        tok->byte_token[byte] = id;
        tok->byte_fallback = 1;
    }
}

static int utf8_char_len(const unsigned char *p, size_t avail);

/* GGUF strings are UTF-8, and byte-fallback tokens are stored as the ASCII text
 * "<0xNN>", so a piece that is not valid UTF-8 comes from a corrupt file; decoding
 * it would hand broken text to every caller. */
static el_status check_pieces_utf8(const el_vocab *vocab, el_error *err)
{
    int i;
    for (i = 0; i < vocab->n_tokens; i++) {
        const unsigned char *p = (const unsigned char *)vocab->pieces[i].data;
        size_t at = 0, len = vocab->pieces[i].len;
        int n = 1;
        while (at < len && (n = utf8_char_len(p + at, len - at)) > 0) at += (size_t)n;
        if (at < len) {
            el_fail(err, EL_ERR_FORMAT, "tokenizer: the piece of token ", NULL, NULL);
            el_error_num(err, i);
            el_error_append(err, " is not valid UTF-8 (byte ");
            el_error_num(err, (long long)at);
            el_error_append(err, ")");
            return EL_ERR_FORMAT;
        }
    }
    return EL_OK;
}

el_status el_tokenizer_init(el_tokenizer *tok, const el_vocab *vocab, el_arena *arena, el_error *err)
{
    int i;
    uint32_t n_slots = 2;
    el_status status = check_vocab(vocab, err);
    if (status == EL_OK) status = check_pieces_utf8(vocab, err);
    if (status != EL_OK) return status;
    el_memset(tok, 0, sizeof *tok);
    tok->vocab = *vocab;
    el_memset(tok->byte_token, 0xff, sizeof tok->byte_token); /* all -1 (a loop here becomes libc's memset) */
    while (n_slots < 2u * (uint32_t)vocab->n_tokens) n_slots *= 2; /* at most half full: short probes */
    tok->piece_slots = (int32_t *)el_arena_alloc(arena, n_slots * sizeof(int32_t), sizeof(int32_t));
    if (tok->piece_slots == NULL)
        return el_fail(err, EL_ERR_NO_MEMORY, "tokenizer: the arena is too small for the piece table", NULL, NULL);
    tok->n_slots = n_slots;
    el_memset(tok->piece_slots, 0xff, n_slots * sizeof(int32_t)); /* all -1 */
    for (i = 0; i < vocab->n_tokens; i++) {
        if (vocab->pieces[i].len == 0) continue; /* an empty piece matches no text */
        insert_piece(tok, i);
        note_piece(tok, i);
    }
    return EL_OK;
}

/* Which pieces a lookup may return. Encoding consults only the mergeable ones: sentencepiece
 * keeps CONTROL, UNKNOWN and BYTE pieces out of that table. */
enum { FIND_ANY, FIND_MERGEABLE, FIND_USER_DEFINED };

static int wanted(int type, int filter)
{
    if (filter == FIND_MERGEABLE) return is_mergeable(type);
    if (filter == FIND_USER_DEFINED) return type == TOK_USER_DEFINED;
    return 1;
}

/* The lowest id of the wanted kind whose piece is the text, or -1. */
static int lookup(const el_tokenizer *tok, const char *s, size_t n, int filter)
{
    uint32_t mask = tok->n_slots - 1, slot;
    int32_t id;
    if (n == 0 || n > tok->max_piece_len) return -1;
    for (slot = hash_bytes(s, n) & mask; (id = tok->piece_slots[slot]) >= 0; slot = (slot + 1) & mask) {
        if (piece_equals(&tok->vocab, id, s, n) && wanted(piece_type(&tok->vocab, id), filter)) return id;
    }
    return -1;
}

int el_tokenizer_find(const el_tokenizer *tok, const char *piece, size_t len)
{
    return lookup(tok, piece, len, FIND_ANY);
}

/* ------------------------------------------------------------------ UTF-8 */

/* Bytes of the character a lead byte starts, or 0 for a byte that starts none. */
static int utf8_lead_len(unsigned char c)
{
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0; /* continuation bytes, and C0/C1 (overlong) */
    if (c < 0xE0) return 2;
    if (c < 0xF0) return 3;
    if (c < 0xF5) return 4;
    return 0; /* past U+10FFFF */
}

/* Whether b may follow the lead byte: the second byte also rules out overlong forms,
 * surrogates and code points past U+10FFFF. */
static int utf8_second_ok(unsigned char lead, unsigned char b)
{
    if (lead == 0xE0) return b >= 0xA0 && b <= 0xBF;
    if (lead == 0xED) return b >= 0x80 && b <= 0x9F;
    if (lead == 0xF0) return b >= 0x90 && b <= 0xBF;
    if (lead == 0xF4) return b >= 0x80 && b <= 0x8F;
    return b >= 0x80 && b <= 0xBF;
}

/* Whether bytes p[0..n) are the valid start (or all) of one character. */
static int utf8_prefix_ok(const unsigned char *p, int n)
{
    int i;
    if (n > utf8_lead_len(p[0])) return 0;
    if (n >= 2 && !utf8_second_ok(p[0], p[1])) return 0;
    for (i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return 1;
}

/* Length of the valid character at p (avail bytes there), or 0. */
static int utf8_char_len(const unsigned char *p, size_t avail)
{
    int need = utf8_lead_len(p[0]);
    if (need == 0 || (size_t)need > avail) return 0;
    return utf8_prefix_ok(p, need) ? need : 0;
}

/* ------------------------------------------------------------------ normalization */

static const char space_mark[3] = {'\xe2', '\x96', '\x81'};  /* U+2581 */
static const char replacement[3] = {'\xef', '\xbf', '\xbd'}; /* U+FFFD */

/* Writes the text as sentencepiece normalizes it (out holds 3 + 3 * len bytes) and
 * returns its length; *n_chars gets its character count. */
static size_t normalize(const char *text, size_t len, char *out, uint32_t *n_chars)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0, n = 0;
    uint32_t chars = 0;
    if (len == 0) {
        *n_chars = 0;
        return 0;
    }
    el_memcpy(out, space_mark, 3); /* the dummy prefix: "world" reads like " world" */
    n = 3;
    chars = 1;
    while (i < len) {
        int c = utf8_char_len(p + i, len - i);
        if (c == 0) { /* not UTF-8: U+FFFD for this one byte, then try the next */
            el_memcpy(out + n, replacement, 3);
            n += 3;
            i += 1;
        } else if (p[i] == ' ') {
            el_memcpy(out + n, space_mark, 3);
            n += 3;
            i += 1;
        } else {
            el_memcpy(out + n, p + i, (size_t)c);
            n += (size_t)c;
            i += (size_t)c;
        }
        chars++;
    }
    *n_chars = chars;
    return n;
}

/* ------------------------------------------------------------------ symbols */

typedef struct {
    uint32_t start, len;  /* bytes of the normalized text; len 0 once merged into its left neighbour */
    int32_t prev, next;   /* live neighbours, -1 at the ends */
    int frozen;           /* a USER_DEFINED piece: never merged */
} tok_symbol;

/* Length of the longest USER_DEFINED piece at the start of s, or 0. */
static uint32_t user_piece_at(const el_tokenizer *tok, const char *s, size_t avail)
{
    uint32_t n = tok->max_user_len < avail ? tok->max_user_len : (uint32_t)avail;
    for (; n > 0; n--)
        if (lookup(tok, s, n, FIND_USER_DEFINED) >= 0) return n;
    return 0;
}

/* Splits normalized text (valid UTF-8 by now) into symbols; returns their count. */
static int32_t split_symbols(const el_tokenizer *tok, const char *norm, size_t norm_len, tok_symbol *sym)
{
    size_t at = 0;
    int32_t n = 0;
    while (at < norm_len) {
        uint32_t len = tok->max_user_len > 0 ? user_piece_at(tok, norm + at, norm_len - at) : 0;
        sym[n].frozen = len > 0;
        if (len == 0) len = (uint32_t)utf8_lead_len((unsigned char)norm[at]);
        sym[n].start = (uint32_t)at;
        sym[n].len = len;
        sym[n].prev = n - 1;
        sym[n].next = at + len < norm_len ? n + 1 : -1;
        at += len;
        n++;
    }
    return n;
}

/* ------------------------------------------------------------------ the agenda of pairs */

/* A candidate merge of symbol `left` with its right neighbour. */
typedef struct {
    uint32_t key;   /* the merged piece's score_key */
    int32_t left;
    uint32_t size;  /* bytes of the merged piece: a pair whose symbols changed no longer adds up */
} tok_pair;

typedef struct {
    tok_pair *items;  /* a binary heap, the best pair on top */
    uint32_t n;
} tok_heap;

/* Scores ordered as sentencepiece orders them: by the float's bits, so that -0.0 < +0.0
 * and a NaN is a number like any other (this decides ties the way the library does). */
static uint32_t score_key(const el_vocab *vocab, int id)
{
    uint32_t bits = 0;
    if (vocab->scores != NULL) el_memcpy(&bits, &vocab->scores[id], sizeof bits);
    return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

/* The higher score first, the leftmost on ties. */
static int better(const tok_pair *a, const tok_pair *b)
{
    return a->key > b->key || (a->key == b->key && a->left < b->left);
}

static void heap_push(tok_heap *h, tok_pair item)
{
    uint32_t i = h->n++;
    while (i > 0 && better(&item, &h->items[(i - 1) / 2])) {
        h->items[i] = h->items[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->items[i] = item;
}

static tok_pair heap_pop(tok_heap *h)
{
    tok_pair top = h->items[0], last = h->items[--h->n];
    uint32_t i = 0, child;
    while ((child = 2 * i + 1) < h->n) {
        if (child + 1 < h->n && better(&h->items[child + 1], &h->items[child])) child++;
        if (!better(&h->items[child], &last)) break;
        h->items[i] = h->items[child];
        i = child;
    }
    h->items[i] = last;
    return top;
}

/* ------------------------------------------------------------------ merging */

/* For an UNUSED piece: the byte length of the left symbol of its last recorded merge. */
typedef struct {
    int32_t id;
    uint32_t left_len;
} tok_split;

typedef struct {
    const el_tokenizer *tok;
    const char *norm;
    tok_symbol *sym;
    tok_heap heap;
    tok_split *splits;  /* NULL when the vocabulary has no UNUSED piece */
    uint32_t n_splits;
} tok_bpe;

/* Puts the pair (left, right) on the agenda when their concatenation is a piece. */
static void try_pair(tok_bpe *bpe, int32_t left, int32_t right)
{
    const tok_symbol *l, *r;
    int id;
    if (left < 0 || right < 0) return;
    l = &bpe->sym[left];
    r = &bpe->sym[right];
    if (l->frozen || r->frozen) return;
    id = lookup(bpe->tok, bpe->norm + l->start, l->len + r->len, FIND_MERGEABLE);
    if (id < 0) return;
    {
        tok_pair pair;
        pair.key = score_key(&bpe->tok->vocab, id);
        pair.left = left;
        pair.size = l->len + r->len;
        heap_push(&bpe->heap, pair);
    }
    if (bpe->splits != NULL && piece_type(&bpe->tok->vocab, id) == TOK_UNUSED) {
        bpe->splits[bpe->n_splits].id = id;
        bpe->splits[bpe->n_splits].left_len = l->len;
        bpe->n_splits++;
    }
}

/* Merges the best pair until none is left. A pair is stale when either symbol has
 * changed since it was pushed: the sizes then no longer add up (symbols only grow). */
static void merge_all(tok_bpe *bpe, int32_t n_sym)
{
    int32_t i;
    for (i = 1; i < n_sym; i++) try_pair(bpe, i - 1, i);
    while (bpe->heap.n > 0) {
        tok_pair top = heap_pop(&bpe->heap);
        tok_symbol *l = &bpe->sym[top.left], *r;
        if (l->len == 0 || l->next < 0) continue;
        r = &bpe->sym[l->next];
        if (r->len == 0 || l->len + r->len != top.size) continue;
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) bpe->sym[r->next].prev = top.left;
        try_pair(bpe, l->prev, top.left);
        try_pair(bpe, top.left, l->next);
    }
}

/* ------------------------------------------------------------------ output */

typedef struct {
    int32_t *out;
    int capacity, n;
    int prev_unknown;  /* the last token came from unknown text (for the one-<unk>-per-run rule) */
} tok_output;

static int emit(tok_output *o, int32_t id)
{
    if (o->n >= o->capacity) return 0;
    o->out[o->n++] = id;
    return 1;
}

/* Unknown text: its bytes as <0xXX> tokens, or one <unk> for a whole run of it. */
static int emit_unknown(const el_tokenizer *tok, tok_output *o, const char *s, uint32_t len)
{
    uint32_t i;
    int ok = 1;
    if (!tok->byte_fallback) {
        if (!o->prev_unknown) ok = emit(o, tok->vocab.unk_id);
        o->prev_unknown = 1;
        return ok;
    }
    for (i = 0; i < len && ok; i++) {
        int32_t byte = tok->byte_token[(unsigned char)s[i]];
        ok = emit(o, byte >= 0 ? byte : tok->vocab.unk_id);
    }
    return ok;
}

static int32_t last_split(const tok_bpe *bpe, int32_t id)
{
    uint32_t i = bpe->n_splits;
    while (i-- > 0)
        if (bpe->splits[i].id == id) return (int32_t)bpe->splits[i].left_len;
    return -1;
}

/* One final symbol. An UNUSED piece is never output: it is split back into the symbols
 * it was merged from, and one that was never merged (a single character) is unknown.
 * Recursion depth is at most the piece's length in bytes. */
static int emit_symbol(const tok_bpe *bpe, tok_output *o, const char *s, uint32_t len)
{
    const el_tokenizer *tok = bpe->tok;
    int id = lookup(tok, s, len, FIND_MERGEABLE);
    int32_t left_len;
    if (id < 0) return emit_unknown(tok, o, s, len);
    if (piece_type(&tok->vocab, id) != TOK_UNUSED) {
        o->prev_unknown = 0;
        return emit(o, id);
    }
    left_len = last_split(bpe, id);
    if (left_len <= 0) return emit_unknown(tok, o, s, len);
    return emit_symbol(bpe, o, s, (uint32_t)left_len) && emit_symbol(bpe, o, s + left_len, len - (uint32_t)left_len);
}

static int emit_all(const tok_bpe *bpe, tok_output *o)
{
    int32_t i;
    for (i = 0; i >= 0; i = bpe->sym[i].next)
        if (!emit_symbol(bpe, o, bpe->norm + bpe->sym[i].start, bpe->sym[i].len)) return 0;
    return 1;
}

/* ------------------------------------------------------------------ encoding */

/* Scratch for one text: symbols, the agenda (n - 1 initial pairs plus at most two per
 * merge) and, for UNUSED pieces, one split record per push. */
static int alloc_bpe(tok_bpe *bpe, uint32_t n_sym, el_arena *scratch)
{
    size_t n_pairs = 3 * (size_t)n_sym;
    bpe->sym = (tok_symbol *)el_arena_alloc(scratch, n_sym * sizeof(tok_symbol), sizeof(void *));
    bpe->heap.items = (tok_pair *)el_arena_alloc(scratch, n_pairs * sizeof(tok_pair), sizeof(uint32_t));
    bpe->heap.n = 0;
    bpe->splits = NULL;
    bpe->n_splits = 0;
    if (bpe->tok->has_unused)
        bpe->splits = (tok_split *)el_arena_alloc(scratch, n_pairs * sizeof(tok_split), sizeof(int32_t));
    return bpe->sym != NULL && bpe->heap.items != NULL && (!bpe->tok->has_unused || bpe->splits != NULL);
}

static int encode_text(const el_tokenizer *tok, const char *text, size_t len, tok_output *o, el_arena *scratch,
                       el_error *err)
{
    uint32_t n_chars;
    size_t norm_len;
    tok_bpe bpe;
    char *norm = (char *)el_arena_alloc(scratch, 3 + 3 * len, 1);
    if (norm == NULL) goto no_memory;
    norm_len = normalize(text, len, norm, &n_chars);
    if (norm_len == 0) return 1;
    bpe.tok = tok;
    bpe.norm = norm;
    if (!alloc_bpe(&bpe, n_chars, scratch)) goto no_memory;
    merge_all(&bpe, split_symbols(tok, norm, norm_len, bpe.sym));
    if (emit_all(&bpe, o)) return 1;
    el_fail(err, EL_ERR_CAPACITY, "tokenize: more than ", NULL, NULL);
    el_error_num(err, o->capacity);
    el_error_append(err, " tokens");
    return 0;
no_memory:
    el_fail(err, EL_ERR_NO_MEMORY, "tokenize: the scratch arena is too small for ", NULL, NULL);
    el_error_num(err, (long long)len);
    el_error_append(err, " bytes of text");
    return 0;
}

int el_tokenize(const el_tokenizer *tok, const char *text, size_t len, int add_bos, int32_t *out, int capacity,
                el_arena *scratch, el_error *err)
{
    size_t mark;
    int ok;
    tok_output o;
    /* keeps symbol indices in 32 bits and scratch sizes from wrapping on a 32-bit target */
    if (len > 0x1FFFFFFFu || len > ((size_t)-1 - 64) / 64) {
        el_fail(err, EL_ERR_ARGUMENT, "tokenize: the text is too long", NULL, NULL);
        return -1;
    }
    o.out = out;
    o.capacity = capacity;
    o.n = 0;
    o.prev_unknown = 0;
    if (add_bos) {
        if (tok->vocab.bos_id < 0 || tok->vocab.bos_id >= tok->vocab.n_tokens) {
            el_fail(err, EL_ERR_ARGUMENT, "tokenize: the vocabulary has no BOS token", NULL, NULL);
            return -1;
        }
        if (!emit(&o, tok->vocab.bos_id)) {
            el_fail(err, EL_ERR_CAPACITY, "tokenize: no room for BOS", NULL, NULL);
            return -1;
        }
    }
    mark = el_arena_mark(scratch);
    ok = encode_text(tok, text, len, &o, scratch, err);
    el_arena_reset(scratch, mark);
    return ok ? o.n : -1;
}

size_t el_tokenize_bound(size_t len) { return 3 * len + 3 + 1; }

/* ------------------------------------------------------------------ decoding */

static size_t put(char *out, size_t capacity, size_t n, const char *bytes, size_t count)
{
    while (count-- > 0 && n < capacity) out[n++] = *bytes++;
    return n;
}

size_t el_token_text(const el_tokenizer *tok, int previous, int token, char *out, size_t capacity)
{
    static const char unknown_surface[5] = {' ', '\xe2', '\x81', '\x87', ' '}; /* " U+2047 " */
    el_str p;
    uint32_t i = 0;
    size_t n = 0;
    int type;
    if (token < 0 || token >= tok->vocab.n_tokens) return 0;
    p = tok->vocab.pieces[token];
    type = piece_type(&tok->vocab, token);
    if (type == TOK_CONTROL) return 0;
    if (type == TOK_UNKNOWN) return put(out, capacity, 0, unknown_surface, sizeof unknown_surface);
    if (type == TOK_BYTE && byte_of_piece(p) >= 0) {
        char byte = (char)byte_of_piece(p);
        return put(out, capacity, 0, &byte, 1);
    }
    /* sentencepiece drops the space it put in front of the text */
    if (previous == tok->vocab.bos_id && p.len >= 3 && el_memcmp(p.data, space_mark, 3) == 0) i = 3;
    while (i < p.len && n < capacity) {
        if (i + 3 <= p.len && el_memcmp(p.data + i, space_mark, 3) == 0) {
            out[n++] = ' ';
            i += 3;
        } else {
            out[n++] = p.data[i++];
        }
    }
    return n;
}

/* ------------------------------------------------------------------ streaming */

void el_utf8_stream_init(el_utf8_stream *stream)
{
    stream->n_pending = 0;
}

size_t el_utf8_stream_flush(el_utf8_stream *stream, char *out)
{
    size_t n = (size_t)stream->n_pending;
    el_memcpy(out, stream->pending, n);
    stream->n_pending = 0;
    return n;
}

size_t el_utf8_stream_feed(el_utf8_stream *stream, const char *bytes, size_t n, char *out)
{
    size_t i, w = 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)bytes[i];
        if (stream->n_pending > 0) {
            stream->pending[stream->n_pending] = c;
            if (utf8_prefix_ok(stream->pending, stream->n_pending + 1)) {
                if (++stream->n_pending == utf8_lead_len(stream->pending[0])) w += el_utf8_stream_flush(stream, out + w);
                continue;
            }
            w += el_utf8_stream_flush(stream, out + w); /* known invalid now: pass it through */
        }
        if (utf8_lead_len(c) >= 2) {
            stream->pending[0] = c;
            stream->n_pending = 1;
        } else {
            out[w++] = (char)c; /* ASCII, or a byte that starts nothing: as it is */
        }
    }
    return w;
}
