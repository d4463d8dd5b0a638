/* el_kv_cache.c: block storage, the free list, reference counts and prefix hashing. */
#include "el_kv_cache.h"

#include "el_kernels.h"

/* ------------------------------------------------------------ sizes and setup */

static size_t slot_values(const el_kv_cache *kv) { return (size_t)kv->kv_dim; }

static size_t block_offset(const el_kv_cache *kv, int block, int layer, int slot)
{
    return (((size_t)block * (size_t)kv->n_layers + (size_t)layer) * (size_t)kv->block_size + (size_t)slot);
}

/* Where the vector of one head at one slot sits, counted in head vectors (times head_dim
 * for values, as is for int8 scales). Within a block and layer each head's slots follow
 * one another, so attention over a block reads one contiguous run per head, not a few
 * lines of every slot's kv_dim values (eight sequences of the 15M shape: 1.06x). */
static size_t head_slot(const el_kv_cache *kv, int block, int layer, int head, int slot)
{
    return ((((size_t)block * (size_t)kv->n_layers + (size_t)layer) * (size_t)kv->n_kv_heads + (size_t)head) *
                (size_t)kv->block_size + (size_t)slot);
}

size_t el_kv_block_bytes(const el_config *config, int block_size, el_kv_dtype dtype)
{
    size_t positions = (size_t)config->n_layers * (size_t)block_size;
    size_t per_position = dtype == EL_KV_F32 ? 2 * sizeof(float) * (size_t)config->kv_dim
                                             : 2 * ((size_t)config->kv_dim + sizeof(float) * (size_t)config->n_kv_heads);
    /* plus the manager's bookkeeping per block: refs, links, flags, hash, tokens, bucket */
    return positions * per_position + 5 * sizeof(int32_t) + 1 + sizeof(uint64_t) + sizeof(int32_t) * (size_t)block_size;
}

static void free_list_push_back(el_kv_cache *kv, int block)
{
    kv->free_prev[block] = kv->free_tail;
    kv->free_next[block] = -1;
    if (kv->free_tail >= 0) kv->free_next[kv->free_tail] = block;
    else kv->free_head = block;
    kv->free_tail = block;
    kv->n_free++;
}

static void free_list_push_front(el_kv_cache *kv, int block)
{
    kv->free_next[block] = kv->free_head;
    kv->free_prev[block] = -1;
    if (kv->free_head >= 0) kv->free_prev[kv->free_head] = block;
    else kv->free_tail = block;
    kv->free_head = block;
    kv->n_free++;
}

static void free_list_remove(el_kv_cache *kv, int block)
{
    int prev = kv->free_prev[block], next = kv->free_next[block];
    if (prev >= 0) kv->free_next[prev] = next;
    else kv->free_head = next;
    if (next >= 0) kv->free_prev[next] = prev;
    else kv->free_tail = prev;
    kv->n_free--;
}

el_status el_kv_init(el_kv_cache *kv, const el_config *config, int block_size, int n_blocks, el_kv_dtype dtype,
                     el_arena *arena, el_error *err)
{
    size_t positions, values;
    int i;
    if (block_size < 1 || n_blocks < 1)
        return el_fail(err, EL_ERR_ARGUMENT, "KV cache: block size and block count must be positive", "", "");
    el_memset(kv, 0, sizeof *kv);
    kv->block_size = block_size;
    kv->n_blocks = n_blocks;
    kv->n_layers = config->n_layers;
    kv->kv_dim = config->kv_dim;
    kv->n_kv_heads = config->n_kv_heads;
    kv->head_dim = config->head_dim;
    kv->dtype = dtype;
    positions = (size_t)n_blocks * (size_t)config->n_layers * (size_t)block_size;
    values = positions * slot_values(kv);
    if (dtype == EL_KV_F32) {
        kv->keys = el_arena_alloc(arena, values * sizeof(float), 16);
        kv->values = el_arena_alloc(arena, values * sizeof(float), 16);
    } else {
        kv->keys = el_arena_alloc(arena, values, 16);
        kv->values = el_arena_alloc(arena, values, 16);
        kv->key_scales = (float *)el_arena_alloc(arena, positions * (size_t)kv->n_kv_heads * sizeof(float), 16);
        kv->value_scales = (float *)el_arena_alloc(arena, positions * (size_t)kv->n_kv_heads * sizeof(float), 16);
        if (kv->key_scales == NULL || kv->value_scales == NULL) kv->keys = NULL;
    }
    kv->ref_count = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)n_blocks, 4);
    kv->free_prev = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)n_blocks, 4);
    kv->free_next = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)n_blocks, 4);
    kv->registered = (uint8_t *)el_arena_alloc(arena, (size_t)n_blocks, 1);
    kv->hash = (uint64_t *)el_arena_alloc(arena, sizeof(uint64_t) * (size_t)n_blocks, 8);
    kv->tokens = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)n_blocks * (size_t)block_size, 4);
    kv->n_buckets = n_blocks;
    kv->bucket_head = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)n_blocks, 4);
    kv->bucket_next = (int32_t *)el_arena_alloc(arena, sizeof(int32_t) * (size_t)n_blocks, 4);
    if (kv->keys == NULL || kv->values == NULL || kv->ref_count == NULL || kv->free_prev == NULL ||
        kv->free_next == NULL || kv->registered == NULL || kv->hash == NULL || kv->tokens == NULL ||
        kv->bucket_head == NULL || kv->bucket_next == NULL)
        return el_fail(err, EL_ERR_NO_MEMORY, "KV cache: the arena is too small for the block pool", "", "");
    kv->free_head = kv->free_tail = -1;
    for (i = 0; i < n_blocks; i++) {
        kv->bucket_head[i] = -1;
        kv->bucket_next[i] = -1;
        free_list_push_back(kv, i);
    }
    return EL_OK;
}

/* ------------------------------------------------------------ prefix hash table */

uint64_t el_kv_hash(uint64_t parent, const int32_t *tokens, int n)
{
    /* FNV-1a over the parent hash and the token ids, byte by byte (endian-free). */
    uint64_t h = 0xcbf29ce484222325ull;
    int i, byte;
    for (byte = 0; byte < 8; byte++) h = (h ^ ((parent >> (8 * byte)) & 0xff)) * 0x100000001b3ull;
    for (i = 0; i < n; i++)
        for (byte = 0; byte < 4; byte++) h = (h ^ (((uint32_t)tokens[i] >> (8 * byte)) & 0xff)) * 0x100000001b3ull;
    return h | 1; /* never 0, which means "no parent" */
}

static int bucket_of(const el_kv_cache *kv, uint64_t hash) { return (int)(hash % (uint64_t)kv->n_buckets); }

static void unregister(el_kv_cache *kv, int block)
{
    int bucket = bucket_of(kv, kv->hash[block]);
    int32_t *link = &kv->bucket_head[bucket];
    while (*link >= 0 && *link != block) link = &kv->bucket_next[*link];
    if (*link == block) *link = kv->bucket_next[block];
    kv->registered[block] = 0;
}

void el_kv_register(el_kv_cache *kv, int block, uint64_t hash, const int32_t *tokens)
{
    int bucket;
    if (kv->registered[block]) return;
    kv->hash[block] = hash;
    el_memcpy(kv->tokens + (size_t)block * (size_t)kv->block_size, tokens, sizeof(int32_t) * (size_t)kv->block_size);
    bucket = bucket_of(kv, hash);
    kv->bucket_next[block] = kv->bucket_head[bucket];
    kv->bucket_head[bucket] = block;
    kv->registered[block] = 1;
}

int el_kv_find(const el_kv_cache *kv, uint64_t hash, const int32_t *tokens)
{
    int block;
    for (block = kv->bucket_head[bucket_of(kv, hash)]; block >= 0; block = kv->bucket_next[block]) {
        if (kv->hash[block] != hash) continue;
        if (el_memcmp(kv->tokens + (size_t)block * (size_t)kv->block_size, tokens,
                      sizeof(int32_t) * (size_t)kv->block_size) != 0)
            continue; /* a hash collision: same hash, other tokens */
        return block;
    }
    return -1;
}

int el_kv_lookup(el_kv_cache *kv, uint64_t hash, const int32_t *tokens)
{
    int block = el_kv_find(kv, hash, tokens);
    kv->prefix_queries++;
    if (block < 0) return -1;
    if (kv->ref_count[block] == 0) free_list_remove(kv, block);
    kv->ref_count[block]++;
    kv->prefix_hits++;
    if (el_kv_blocks_used(kv) > kv->used_high_water) kv->used_high_water = el_kv_blocks_used(kv);
    return block;
}

/* ------------------------------------------------------------ allocation */

int el_kv_allocate(el_kv_cache *kv)
{
    int block = kv->free_head;
    if (block < 0) return -1;
    free_list_remove(kv, block);
    if (kv->registered[block]) {
        unregister(kv, block);
        kv->evictions++;
    }
    kv->ref_count[block] = 1;
    if (el_kv_blocks_used(kv) > kv->used_high_water) kv->used_high_water = el_kv_blocks_used(kv);
    return block;
}

void el_kv_release(el_kv_cache *kv, int block)
{
    if (block < 0 || kv->ref_count[block] <= 0) return;
    if (--kv->ref_count[block] > 0) return;
    /* Cached blocks go to the back so they are evicted last; plain ones are reused first. */
    if (kv->registered[block]) free_list_push_back(kv, block);
    else free_list_push_front(kv, block);
}

void el_kv_share(el_kv_cache *kv, int block)
{
    if (block >= 0 && kv->ref_count[block] > 0) kv->ref_count[block]++;
}

int el_kv_blocks_used(const el_kv_cache *kv) { return kv->n_blocks - kv->n_free; }

int el_kv_blocks_cached(const el_kv_cache *kv)
{
    int block, n = 0;
    for (block = kv->free_head; block >= 0; block = kv->free_next[block]) n += kv->registered[block];
    return n;
}

/* ------------------------------------------------------------ storage */

void el_kv_store(el_kv_cache *kv, int block, int slot, int layer, const float *key, const float *value)
{
    size_t dim = (size_t)kv->head_dim, at;
    int h;
    for (h = 0; h < kv->n_kv_heads; h++) {
        at = head_slot(kv, block, layer, h, slot);
        if (kv->dtype == EL_KV_F32) {
            el_memcpy((float *)kv->keys + at * dim, key + h * kv->head_dim, sizeof(float) * dim);
            el_memcpy((float *)kv->values + at * dim, value + h * kv->head_dim, sizeof(float) * dim);
        } else { /* int8 with one scale per (position, head) */
            el_quantize_int8((int8_t *)kv->keys + at * dim, &kv->key_scales[at], key + h * kv->head_dim, kv->head_dim);
            el_quantize_int8((int8_t *)kv->values + at * dim, &kv->value_scales[at], value + h * kv->head_dim,
                             kv->head_dim);
        }
    }
}

void el_kv_copy(el_kv_cache *kv, int dst, int src)
{
    size_t positions = (size_t)kv->n_layers * (size_t)kv->block_size, values = positions * slot_values(kv);
    size_t from = block_offset(kv, src, 0, 0), to = block_offset(kv, dst, 0, 0);
    size_t value_bytes = kv->dtype == EL_KV_F32 ? sizeof(float) : 1, scales = (size_t)kv->n_kv_heads;
    el_memcpy((char *)kv->keys + to * slot_values(kv) * value_bytes,
              (const char *)kv->keys + from * slot_values(kv) * value_bytes, values * value_bytes);
    el_memcpy((char *)kv->values + to * slot_values(kv) * value_bytes,
              (const char *)kv->values + from * slot_values(kv) * value_bytes, values * value_bytes);
    if (kv->dtype == EL_KV_INT8) {
        el_memcpy(kv->key_scales + to * scales, kv->key_scales + from * scales, sizeof(float) * positions * scales);
        el_memcpy(kv->value_scales + to * scales, kv->value_scales + from * scales, sizeof(float) * positions * scales);
    }
    kv->copies++;
}

/* Attention reads a block's slots in one loop: for a layer and head, a block's positions
 * sit one after another (head_dim values apart), so no block table is consulted per position. */
void el_kv_key_dots(const el_kv_cache *kv, int block, int n_slots, int layer, int head, const float *q, float scale,
                    float *scores)
{
    size_t at = head_slot(kv, block, layer, head, 0), dim = (size_t)kv->head_dim;
    int slot;
    if (kv->dtype == EL_KV_F32) {
        el_kernel_key_dots(scores, q, (const float *)kv->keys + at * dim, dim, n_slots, kv->head_dim, scale);
    } else {
        /* int8: the scale is common to the head, so it multiplies the sum once */
        const int8_t *key = (const int8_t *)kv->keys + at * dim;
        for (slot = 0; slot < n_slots; slot++, key += dim)
            scores[slot] = scale * (kv->key_scales[at + (size_t)slot] * el_dot_int8(q, key, kv->head_dim));
    }
}

void el_kv_value_adds(const el_kv_cache *kv, int block, int n_slots, int layer, int head, const float *weights,
                      float *out)
{
    size_t at = head_slot(kv, block, layer, head, 0), dim = (size_t)kv->head_dim;
    int slot, i;
    if (kv->dtype == EL_KV_F32) {
        el_kernel_value_sum(out, weights, (const float *)kv->values + at * dim, dim, n_slots, kv->head_dim);
    } else {
        const int8_t *value = (const int8_t *)kv->values + at * dim;
        for (slot = 0; slot < n_slots; slot++, value += dim) {
            float w = weights[slot] * kv->value_scales[at + (size_t)slot];
            for (i = 0; i < kv->head_dim; i++) out[i] += w * (float)value[i];
        }
    }
}
