/* el_constraint.c: the structured-outputs DFA: reading it, walking it, masking with it. */
#include "el_constraint.h"

static int read_u16(const uint8_t *p) { return p[0] | (p[1] << 8); }

void el_constraint_view(el_constraint *c, const uint8_t *data)
{
    c->n_states = read_u16(data + 4);
    c->n_classes = read_u16(data + 6);
    c->classes = data + 8;
    c->accepting = c->classes + 256;
    c->next = c->accepting + c->n_states;
}

el_status el_constraint_parse(el_constraint *c, const uint8_t *data, size_t len, el_error *err)
{
    size_t i, n_next;
    if (data == NULL || len < EL_DFA_HEADER_BYTES || el_memcmp(data, "ELD1", 4) != 0)
        return el_fail(err, EL_ERR_ARGUMENT, "constraint: not a compiled automaton (no ELD1 header)", "", "");
    el_constraint_view(c, data);
    if (c->n_states < 1 || c->n_states >= (int)EL_DFA_DEAD || c->n_classes < 1 || c->n_classes > 256)
        return el_fail(err, EL_ERR_ARGUMENT, "constraint: state or class count out of range", "", "");
    n_next = (size_t)c->n_states * (size_t)c->n_classes;
    if (len != EL_DFA_HEADER_BYTES + (size_t)c->n_states + 2 * n_next)
        return el_fail(err, EL_ERR_ARGUMENT, "constraint: its length does not match its state and class counts",
                       "", "");
    for (i = 0; i < 256; i++)
        if (c->classes[i] >= c->n_classes)
            return el_fail(err, EL_ERR_ARGUMENT, "constraint: a byte's class is out of range", "", "");
    for (i = 0; i < n_next; i++) {
        int s = read_u16(c->next + 2 * i);
        if (s != (int)EL_DFA_DEAD && s >= c->n_states)
            return el_fail(err, EL_ERR_ARGUMENT, "constraint: a transition leads to no state", "", "");
    }
    return EL_OK;
}

int el_constraint_walk(const el_constraint *c, int state, const char *bytes, size_t n)
{
    size_t i;
    for (i = 0; i < n && state >= 0; i++) {
        int s = read_u16(c->next + 2 * ((size_t)state * (size_t)c->n_classes + c->classes[(uint8_t)bytes[i]]));
        state = s == (int)EL_DFA_DEAD ? -1 : s;
    }
    return state;
}

int el_constraint_accepts(const el_constraint *c, int state) { return state >= 0 && c->accepting[state]; }

int el_constraint_mask(const el_constraint *c, int state, const el_tokenizer *tok, int previous, float *logits,
                       float masked, char *scratch, size_t capacity)
{
    int token, kept = 0, accepts = el_constraint_accepts(c, state);
    for (token = 0; token < tok->vocab.n_tokens; token++) {
        int ok;
        if (token == tok->vocab.eos_id || token == tok->vocab.bos_id) {
            ok = accepts;
        } else {
            size_t n = el_token_text(tok, previous, token, scratch, capacity);
            ok = n > 0 && el_constraint_walk(c, state, scratch, n) >= 0;
        }
        if (ok) kept++;
        else logits[token] = masked;
    }
    return kept;
}
