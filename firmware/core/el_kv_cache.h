/* el_kv_cache.h: the paged KV cache, vLLM's block manager at microcontroller scale.
 *
 * A fixed pool of blocks, each holding the keys and values of `block_size` token
 * positions for every layer, is carved from the arena once. A sequence owns a block
 * table (logical block i -> pool block). Blocks are reference-counted: a full block
 * is registered under a hash of its tokens and of the block before it, so another
 * sequence (or the next chat turn) with the same prefix finds it and shares it
 * instead of computing it again. Freed blocks that are registered stay findable
 * until the pool needs them (least recently freed first). A fork shares all of its
 * parent's blocks (el_kv_share); a shared block that is still being filled is copied
 * (el_kv_copy) by the first of them to write into it.
 */
#ifndef EL_KV_CACHE_H
#define EL_KV_CACHE_H

#include "el_kernels.h"

typedef enum { EL_KV_F32 = 0, EL_KV_INT8 = 1 } el_kv_dtype;

typedef struct {
    int block_size, n_blocks, n_layers, kv_dim, n_kv_heads, head_dim;
    el_kv_dtype dtype;
    /* storage: [block][layer][head][slot][head_dim] values; int8 adds [block][layer][head][slot] scales */
    void *keys, *values;
    float *key_scales, *value_scales;
    /* block manager */
    int32_t *ref_count;
    int32_t *free_prev, *free_next;  /* doubly linked free list, so a prefix hit can take a block out */
    int32_t free_head, free_tail, n_free;
    uint8_t *registered;             /* full and findable by hash */
    uint64_t *hash;
    int32_t *tokens;                 /* [block][block_size]: compared on a hash hit */
    int32_t *bucket_head, *bucket_next;
    int32_t n_buckets;
    /* counters */
    long long prefix_queries, prefix_hits, evictions, copies;
    int used_high_water;
} el_kv_cache;

size_t el_kv_block_bytes(const el_config *config, int block_size, el_kv_dtype dtype);
el_status el_kv_init(el_kv_cache *kv, const el_config *config, int block_size, int n_blocks, el_kv_dtype dtype,
                     el_arena *arena, el_error *err);

/* A free block with reference count 1 (evicting the least recently freed cached one
 * if needed), or -1 when every block is in use. */
int el_kv_allocate(el_kv_cache *kv);
void el_kv_release(el_kv_cache *kv, int block);
/* One more reference to a block in use (a fork's block table holds it too). */
void el_kv_share(el_kv_cache *kv, int block);
/* Every layer's keys and values (and int8 scales) of block src into block dst. */
void el_kv_copy(el_kv_cache *kv, int dst, int src);
int el_kv_blocks_used(const el_kv_cache *kv);
int el_kv_blocks_cached(const el_kv_cache *kv);  /* free but still findable */

/* Prefix caching. parent is the hash of the previous block (0 for the first). */
uint64_t el_kv_hash(uint64_t parent, const int32_t *tokens, int n);
/* A registered block with these tokens, or -1: a look that takes nothing (admission
 * uses it to count what a prompt would find before committing to it). */
int el_kv_find(const el_kv_cache *kv, uint64_t hash, const int32_t *tokens);
/* The same block with its reference taken (counted as a prefix hit); -1 when none. */
int el_kv_lookup(el_kv_cache *kv, uint64_t hash, const int32_t *tokens);
void el_kv_register(el_kv_cache *kv, int block, uint64_t hash, const int32_t *tokens);

/* Write one position's keys and values (kv_dim floats each) for a layer. */
void el_kv_store(el_kv_cache *kv, int block, int slot, int layer, const float *key, const float *value);
/* Attention reads the cache in place, a block at a time, without copying positions out:
 * over slots 0..n_slots-1 of one block and one kv head, scores[s] = scale * (q . key of
 * slot s) (q: head_dim floats), and out += weights[s] * value of slot s, in slot order. */
void el_kv_key_dots(const el_kv_cache *kv, int block, int n_slots, int layer, int head, const float *q, float scale,
                    float *scores);
void el_kv_value_adds(const el_kv_cache *kv, int block, int n_slots, int layer, int head, const float *weights,
                      float *out);

#endif
