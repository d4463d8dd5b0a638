"""Chat templates as they travel in a model file (GGUF `tokenizer.chat_template`).

The runtime renders conversations itself (firmware/core/el_chat.c is the one place the
formats are written) and picks its template from this text: "<|im_start|>" means
ChatML, "[INST]" Llama-2, anything else plain. The Jinja text stored here renders the
same conversation the same way, so llama.cpp and Hugging Face tools that apply a
model's template show the model the text it was trained on (tests check the two agree).

Training corpora can be written in plain and ChatML only: Llama-2's template puts EOS
tokens inside a conversation, which a text corpus cannot hold.
"""

from edgellama.errors import EdgeLlamaError

CHAT_FORMATS = ("plain", "chatml")

# Newlines are Jinja string expressions, because "{%-" and "-%}" would strip literal ones.
JINJA = {
    "plain": (
        "{%- set ns = namespace(previous='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
        "{%- elif message['role'] == 'user' -%}"
        "{{ (' ' if ns.previous == 'assistant' else 'user: ') + message['content'] + '\\n' }}"
        "{%- else -%}{{ 'assistant: ' + message['content'] + '\\nuser:' }}"
        "{%- endif -%}"
        "{%- set ns.previous = message['role'] -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ 'assistant:' }}{%- endif -%}"
    ),
    "chatml": (
        "{%- set ns = namespace(previous='') -%}"
        "{%- for message in messages -%}"
        "{%- if ns.previous == 'assistant' -%}{{ '\\n' }}{%- endif -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
        "{%- if message['role'] != 'assistant' -%}{{ '\\n' }}{%- endif -%}"
        "{%- set ns.previous = message['role'] -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    ),
}


def check_chat_format(chat_format: str, flag: str = "--chat-format"):
    if chat_format not in CHAT_FORMATS:
        raise EdgeLlamaError(f"{flag}: unknown chat format {chat_format!r} (choose from {', '.join(CHAT_FORMATS)})")


def jinja_template(chat_format: str) -> str:
    """The tokenizer.chat_template text for a chat format ("" for none)."""
    if not chat_format:
        return ""
    check_chat_format(chat_format)
    return JINJA[chat_format]
