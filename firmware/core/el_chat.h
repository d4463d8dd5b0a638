/* el_chat.h: chat templates, rendered one message at a time.
 *
 * A chat keeps one sequence whose KV stays in the cache between turns, so each turn
 * appends only its own tokens: the text of one message is rendered from its role and
 * the role of the message before it, never from the whole history. Rendering the
 * messages of a conversation one after another and concatenating the texts gives the
 * template's usual text for the whole conversation.
 *
 *   plain   {system}\n\n  user: {user}\n  assistant: {reply}\nuser: {user}\n  assistant:
 *   llama2  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {reply} </s><s>[INST] {user} [/INST]
 *   chatml  <|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n
 *
 * BOS and EOS are tokens, never text (a tokenizer does not turn the text "<s>" into
 * BOS), so they are reported as flags beside the text. A reply ends with the
 * template's end marker, which is also its stop: "\nuser:" (plain), EOS (llama2),
 * "<|im_end|>" (chatml). A generated reply that stopped there has the marker in its
 * tokens already; one cut short (max_tokens) gets the marker from el_chat_reply_end.
 */
#ifndef EL_CHAT_H
#define EL_CHAT_H

#include "el_model.h"

typedef enum { EL_CHAT_PLAIN = 0, EL_CHAT_LLAMA2 = 1, EL_CHAT_CHATML = 2 } el_chat_template;
typedef enum { EL_CHAT_SYSTEM = 0, EL_CHAT_USER = 1, EL_CHAT_ASSISTANT = 2 } el_chat_role;

/* `previous` for the first message of a conversation. */
#define EL_CHAT_NONE (-1)

/* Special tokens around one message's text. */
#define EL_CHAT_BOS_BEFORE 1
#define EL_CHAT_EOS_AFTER 2

/* From tokenizer.chat_template: "<|im_start|>" means ChatML, "[INST]" Llama-2, else plain. */
el_chat_template el_chat_template_for(const el_model *model);
/* "plain", "llama2" or "chatml"; -1 for any other name. */
int el_chat_template_from_name(const char *name);
/* The name of a template, or "" for a bad value. */
const char *el_chat_template_name(int tmpl);

/* The text of one message (NUL-terminated when there is room for it). `previous` is
 * the role of the message before (EL_CHAT_NONE for the first); an assistant message is
 * rendered whole: generation prompt, reply, end marker. Returns the length, or -1 for
 * a bad template or role, or when `capacity` is too small. */
int el_chat_message(int tmpl, int previous, int role, const char *content, int len, char *out, int capacity);
/* EL_CHAT_BOS_BEFORE and/or EL_CHAT_EOS_AFTER for that message. */
int el_chat_message_specials(int tmpl, int previous, int role);
/* Whether a user turn after `previous` starts with a BOS token. */
int el_chat_turn_bos(int tmpl, int previous);

/* What follows the last user message so that the model writes the reply. */
const char *el_chat_generation_prompt(int tmpl);
/* The text that ends a reply (llama2: "", its end is the EOS token). */
const char *el_chat_reply_end(int tmpl);
/* The stop string that ends a reply ("" when EOS does). */
const char *el_chat_stop_string(int tmpl);

#endif
