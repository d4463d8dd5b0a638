/* el_model.h: a llama model as a view over a parsed GGUF file.
 *
 * Loading checks that every required key and tensor is present with the shape the
 * config implies and a supported type; weights stay where they are in the buffer.
 */
#ifndef EL_MODEL_H
#define EL_MODEL_H

#include "el_gguf.h"

typedef struct {
    int dim, n_layers, n_heads, n_kv_heads, head_dim, kv_dim, hidden_dim, vocab_size, context_length;
    float norm_eps, rope_theta;
} el_config;

/* How a matrix's bytes are laid out: as in the file (one row after another), or
 * rearranged in place at load by this target's kernels (el_kernel_arrange), where the
 * model's memory is writable and private to the runtime. */
enum { EL_LAYOUT_ROWS = 0, EL_LAYOUT_GROUPS_OF_8 = 1 };

/* Above this many bytes of matrices a model is taken to stream from DRAM every token (a
 * typical last-level cache a core gets; a hint for the kernels, never for a value). */
#define EL_CACHED_WEIGHT_BYTES (8u << 20)

/* A weight matrix of rows x cols (cols = the row length, ggml's ne[0]). */
typedef struct {
    uint32_t type;
    uint32_t rows, cols;
    uint32_t layout;        /* EL_LAYOUT_ROWS unless the kernels rearranged it */
    uint32_t streamed;      /* 1: the model's matrices together are too large to stay in a cache
                             * between tokens (EL_CACHED_WEIGHT_BYTES), so every read comes from
                             * DRAM; kernels may pick a loop that suits streaming */
    const void *data;
} el_matrix;

typedef struct {
    const float *attn_norm, *ffn_norm;  /* dim floats each; norms must be F32 */
    el_matrix attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_down, ffn_up;
} el_layer_weights;

typedef struct {
    int n_tokens;
    const el_str *pieces;   /* sentencepiece pieces, '\xe2\x96\x81' for spaces */
    const float *scores;
    const int32_t *types;   /* 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte */
    int bos_id, eos_id, unk_id;
} el_vocab;

typedef struct {
    el_config config;
    el_matrix token_embd;
    el_matrix output;       /* token_embd again when the classifier is tied */
    const float *output_norm;
    el_layer_weights *layers;
    el_vocab vocab;
    el_str name;
    el_str chat_template;   /* tokenizer.chat_template, empty when absent */
    el_gguf gguf;
} el_model;

el_status el_model_load(el_model *model, const uint8_t *file, size_t size, el_arena *arena, el_error *err);
/* The matrices a decode step multiplies by, one by one: index 0 the classifier, then
 * each layer's seven; NULL past the last. (The embedding is only looked up.) */
el_matrix *el_model_matrix(el_model *model, int index);

/* One pass over every tensor of a loaded model: an error naming the first tensor with
 * a NaN or Inf value (F32, F16) or block scale (Q8_0, Q4_0). It reads the whole file,
 * so a host runs it at load (el_engine_options.check_values) and a board whose image
 * is checksummed at build time may skip it. */
el_status el_model_check_values(const el_model *model, el_error *err);

/* Bytes of one row of a matrix of this type and row length (0 for an unsupported type). */
size_t el_row_bytes(uint32_t type, uint32_t cols);

#endif
