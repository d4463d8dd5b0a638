/* el_chat.c: the three built-in chat templates (see el_chat.h for their shapes). */
#include "el_chat.h"

/* ------------------------------------------------------------ choosing a template */

static int str_contains(el_str s, const char *needle)
{
    uint32_t m = (uint32_t)el_strlen(needle), i;
    for (i = 0; i + m <= s.len; i++)
        if (el_memcmp(s.data + i, needle, m) == 0) return 1;
    return 0;
}

static int str_is(const char *a, const char *b)
{
    size_t n = el_strlen(b);
    return el_strlen(a) == n && el_memcmp(a, b, n) == 0;
}

el_chat_template el_chat_template_for(const el_model *model)
{
    /* the Jinja text itself is not run: its markers are enough to tell the family */
    if (str_contains(model->chat_template, "<|im_start|>")) return EL_CHAT_CHATML;
    if (str_contains(model->chat_template, "[INST]")) return EL_CHAT_LLAMA2;
    return EL_CHAT_PLAIN;
}

int el_chat_template_from_name(const char *name)
{
    if (name == NULL) return -1;
    if (str_is(name, "plain")) return EL_CHAT_PLAIN;
    if (str_is(name, "llama2")) return EL_CHAT_LLAMA2;
    if (str_is(name, "chatml")) return EL_CHAT_CHATML;
    return -1;
}

static int valid(int tmpl) { return tmpl >= EL_CHAT_PLAIN && tmpl <= EL_CHAT_CHATML; }

const char *el_chat_template_name(int tmpl)
{
    static const char *const names[] = {"plain", "llama2", "chatml"};
    return valid(tmpl) ? names[tmpl] : "";
}

/* ------------------------------------------------------------ per-template strings */

const char *el_chat_generation_prompt(int tmpl)
{
    /* llama2's "[/INST]" closes the user turn, and the reply follows it directly */
    static const char *const prompts[] = {"assistant:", "", "<|im_start|>assistant\n"};
    return valid(tmpl) ? prompts[tmpl] : "";
}

const char *el_chat_reply_end(int tmpl)
{
    /* plain's end marker is the start of the next user line: a model trained on
     * such transcripts writes it itself, which is why it is also the stop string */
    static const char *const ends[] = {"\nuser:", "", "<|im_end|>"};
    return valid(tmpl) ? ends[tmpl] : "";
}

const char *el_chat_stop_string(int tmpl) { return el_chat_reply_end(tmpl); }

int el_chat_message_specials(int tmpl, int previous, int role)
{
    int flags = 0;
    /* every conversation starts with BOS, as the models saw it in training */
    if (previous == EL_CHAT_NONE) flags |= EL_CHAT_BOS_BEFORE;
    if (tmpl == EL_CHAT_LLAMA2) {
        /* each [INST] opens with BOS, except the user text that shares the system's [INST] */
        if (role != EL_CHAT_ASSISTANT && previous != EL_CHAT_SYSTEM) flags |= EL_CHAT_BOS_BEFORE;
        if (role == EL_CHAT_ASSISTANT) flags |= EL_CHAT_EOS_AFTER;
    }
    return flags;
}

int el_chat_turn_bos(int tmpl, int previous)
{
    return (el_chat_message_specials(tmpl, previous, EL_CHAT_USER) & EL_CHAT_BOS_BEFORE) != 0;
}

/* ------------------------------------------------------------ rendering */

/* Appends to a fixed buffer; remembers an overflow instead of writing past the end. */
typedef struct {
    char *out;
    int capacity, len, overflow;
} writer;

static void put(writer *w, const char *text, int n)
{
    if (n <= 0) return;
    if (w->overflow || n > w->capacity - w->len) {
        w->overflow = 1;
        return;
    }
    el_memcpy(w->out + w->len, text, (size_t)n);
    w->len += n;
}

static void puts_(writer *w, const char *text) { put(w, text, (int)el_strlen(text)); }

static void render_plain(writer *w, int previous, int role, const char *content, int len)
{
    if (role == EL_CHAT_SYSTEM) {
        put(w, content, len);
        puts_(w, "\n\n");
    } else if (role == EL_CHAT_USER) {
        /* after a reply, "\nuser:" is already there: it ended the reply */
        puts_(w, previous == EL_CHAT_ASSISTANT ? " " : "user: ");
        put(w, content, len);
        puts_(w, "\n");
    } else {
        puts_(w, "assistant: ");
        put(w, content, len);
        puts_(w, "\nuser:");
    }
}

static void render_llama2(writer *w, int previous, int role, const char *content, int len)
{
    if (role == EL_CHAT_SYSTEM) {
        /* Llama-2 has no system turn: the system text opens the first [INST] */
        puts_(w, "[INST] <<SYS>>\n");
        put(w, content, len);
        puts_(w, "\n<</SYS>>\n\n");
    } else if (role == EL_CHAT_USER) {
        if (previous != EL_CHAT_SYSTEM) puts_(w, "[INST] ");
        put(w, content, len);
        puts_(w, " [/INST]");
    } else {
        puts_(w, " ");
        put(w, content, len);
        puts_(w, " ");
    }
}

static void render_chatml(writer *w, int previous, int role, const char *content, int len)
{
    static const char *const roles[] = {"system", "user", "assistant"};
    /* a reply ends at <|im_end|>; the newline that closes its line comes with the next message */
    if (previous == EL_CHAT_ASSISTANT) puts_(w, "\n");
    puts_(w, "<|im_start|>");
    puts_(w, roles[role]);
    puts_(w, "\n");
    put(w, content, len);
    puts_(w, "<|im_end|>");
    if (role != EL_CHAT_ASSISTANT) puts_(w, "\n");
}

int el_chat_message(int tmpl, int previous, int role, const char *content, int len, char *out, int capacity)
{
    writer w;
    if (!valid(tmpl) || role < EL_CHAT_SYSTEM || role > EL_CHAT_ASSISTANT || len < 0 || capacity < 0) return -1;
    if (previous < EL_CHAT_NONE || previous > EL_CHAT_ASSISTANT || (content == NULL && len > 0)) return -1;
    w.out = out;
    w.capacity = capacity;
    w.len = w.overflow = 0;
    if (tmpl == EL_CHAT_PLAIN) render_plain(&w, previous, role, content, len);
    else if (tmpl == EL_CHAT_LLAMA2) render_llama2(&w, previous, role, content, len);
    else render_chatml(&w, previous, role, content, len);
    if (w.overflow) return -1;
    if (w.len < capacity) out[w.len] = '\0';
    return w.len;
}
