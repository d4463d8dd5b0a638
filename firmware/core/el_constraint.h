/* el_constraint.h: structured outputs as a logit mask.
 *
 * A constraint is a byte-level DFA that the host compiles from a choice, a regex, a
 * JSON schema or a grammar (edgellama/runtime/structured.py). Before each draw the
 * sampler keeps only the tokens whose bytes lead from the sequence's state to a live
 * state, and EOS only where the state accepts, so the output is always a prefix of a
 * word of the language and ends only on a whole one. Nothing in it depends on the
 * vocabulary: the same bytes constrain any model, on every target, and the host never
 * ships per-token tables (walking the vocabulary costs one pass over its pieces a step).
 *
 * The bytes, little-endian, read in place (from a request buffer, or flash):
 *   "ELD1"                        magic
 *   u16 n_states, u16 n_classes   1..65534 states, 1..256 byte classes
 *   u8  class[256]                each byte's class
 *   u8  accepting[n_states]       1 where the text may end
 *   u16 next[n_states][n_classes] the state after a byte of that class, EL_DFA_DEAD for none
 * State 0 is the start. The host writes only states from which an accepting state can
 * be reached, so a live state always has a way to finish.
 */
#ifndef EL_CONSTRAINT_H
#define EL_CONSTRAINT_H

#include "el_tokenizer.h"

#define EL_DFA_DEAD 0xffffu
#define EL_DFA_HEADER_BYTES 264u /* magic, counts and the class map */

typedef struct {
    int n_states, n_classes;
    const uint8_t *classes;   /* 256 */
    const uint8_t *accepting; /* n_states */
    const uint8_t *next;      /* n_states * n_classes u16 */
} el_constraint;

/* The bytes' DFA, checked whole (sizes, classes and states in range). */
el_status el_constraint_parse(el_constraint *c, const uint8_t *data, size_t len, el_error *err);
/* The same view without the checks, for bytes el_constraint_parse accepted before (the
 * engine checks a request's constraint once, when it is added, not at every token). */
void el_constraint_view(el_constraint *c, const uint8_t *data);

/* The state after n bytes from `state`, or -1 once a byte leaves the language. */
int el_constraint_walk(const el_constraint *c, int state, const char *bytes, size_t n);
int el_constraint_accepts(const el_constraint *c, int state);

/* Set the logit of every token that cannot come next to `masked`: a token whose bytes
 * (after `previous`) leave the language, a token with no bytes (control tokens), and
 * EOS and BOS unless `state` accepts. `scratch` holds the longest token's bytes
 * (el_sequence_scratch_bytes). Returns how many tokens stay. */
int el_constraint_mask(const el_constraint *c, int state, const el_tokenizer *tok, int previous, float *logits,
                       float masked, char *scratch, size_t capacity);

#endif
