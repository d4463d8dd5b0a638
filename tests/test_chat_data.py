"""Whole stories as documents, chat data made from stories, and the chat template a
model file carries: what `edgellama data chat` and `train --segment/--chat-format` do."""

import random
import subprocess
import sys

import jinja2
import numpy as np
import pytest

from edgellama.model import data
from edgellama.model.chat_data import (
    chat_documents,
    known_names,
    make_request,
    mentions,
    render_conversation,
    story_facts,
)
from edgellama.model.chat_format import JINJA, jinja_template
from edgellama.model.gguf_file import read_gguf, write_gguf
from edgellama.model.tokenizer import processor_for, sentencepiece_proto
from edgellama.resources import DEFAULT_MODEL
from edgellama.runtime import capi

STORIES = ("once upon a time, a little dog named max found a red ball in the park.\n\n"
           'max said, "this ball is fun!" he played all day.\n\n'
           "at the end, max was happy.\n"
           "lily and ben saw a big tree. lily wanted to climb the tree.\n\n"
           "ben helped lily. lily said thank you.\n"
           "the sun was hot. a frog sat by the lake.\n")


def edgellama(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edgellama", *args], capture_output=True, text=True, timeout=300,
                          **kw)


def test_stories_keep_their_paragraphs():
    stories = data.split_documents(STORIES, "stories")
    assert len(stories) == 3
    assert stories[0].count("\n\n") == 2 and stories[0].endswith("max was happy.")
    assert stories[1] == "lily and ben saw a big tree. lily wanted to climb the tree.\n\nben helped lily. lily said thank you."
    assert data.split_documents(STORIES.replace("\n", "\r\n"), "stories") == stories
    assert len(data.split_documents(STORIES, "lines")) == 6
    assert data.split_documents(STORIES, "auto") == data.split_documents(STORIES, "lines")
    marked = "a\n\nb\n<|endoftext|>\nc\n"
    assert data.split_documents(marked, "auto") == ["a\n\nb", "c"]
    with pytest.raises(Exception, match="--segment: unknown segmentation 'pages'"):
        data.split_documents(STORIES, "pages")


def test_pretokenized_stories_have_newline_tokens_and_one_bos_each(tmp_path):
    corpus = tmp_path / "stories.txt"
    corpus.write_text(STORIES * 4)
    vocab = read_gguf(DEFAULT_MODEL).model.vocab
    tokens = data.pretokenize(corpus, sentencepiece_proto(vocab), 0.25, "stories")
    newline = vocab.tokens.index("<0x0A>")
    both = np.concatenate([tokens.train, tokens.val])
    assert (both == vocab.bos_id).sum() == 12
    assert (both == newline).sum() == 4 * (2 * 2 + 2)  # two blank lines in story 1, one in story 2
    by_lines = data.pretokenize(corpus, sentencepiece_proto(vocab), 0.25, "lines")
    assert (np.concatenate([by_lines.train, by_lines.val]) == newline).sum() == 0


def test_story_facts_come_from_the_story():
    stories = data.split_documents(STORIES, "stories")
    names = known_names(stories * 2)
    assert names == {"max"}
    facts = story_facts(stories[0], names)
    assert (facts.name, facts.kind) == ("max", "dog")
    assert facts.things == ["ball", "park"] and facts.dialogue and facts.happy_ending
    # no "named": the name the corpus introduces elsewhere, mentioned at least twice
    assert story_facts(stories[1], {"lily", "ben"}).name == "lily"
    assert story_facts(stories[1], set()).name == ""
    third = story_facts(stories[2], names)
    assert third.name == "" and set(third.things) == {"sun", "frog", "lake"} and not third.dialogue
    assert mentions("two balls and a ball", "ball") == 2 and mentions("ballet", "ball") == 0


def test_requests_ask_for_what_the_story_has():
    stories = data.split_documents(STORIES, "stories")
    rng = random.Random(5)
    for _ in range(50):
        request = make_request(story_facts(stories[0], {"max"}), rng)
        assert request.name == "max" and "max" in request.text
        assert request.things and all(t in request.text and t in stories[0] for t in request.things)
    nameless = make_request(story_facts(stories[2]), rng)
    assert nameless.name == "" and nameless.things[0] in nameless.text


def test_chat_documents_keep_story_order_and_render_like_the_runtime():
    stories = data.split_documents(STORIES, "stories")
    docs, stats = chat_documents(stories, "plain", 1.0, seed=2)
    assert stats.conversations == 3 and stats.plain == 0
    for story, doc in zip(stories, docs):
        assert doc.startswith("user: ") and doc.endswith(f"\nassistant: {story}\nuser:")
    plain, stats = chat_documents(stories, "plain", 0.0)
    assert plain == stories and stats.plain == 3
    assert chat_documents(stories, "plain", 0.5, seed=9) == chat_documents(stories, "plain", 0.5, seed=9)
    chatml = render_conversation("chatml", "hi", "a story")
    assert chatml == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\na story<|im_end|>"


def test_training_text_is_what_the_runtime_prompts_with():
    """The tokens of a conversation's request in training are the tokens the runtime's
    chat puts before the reply, so a trained model sees in chat what it learned."""
    from edgellama.runtime.llm import LLM
    llm = LLM(str(DEFAULT_MODEL))
    sp = processor_for(read_gguf(DEFAULT_MODEL).model.vocab)
    request = "tell me a story about a dog named max and a ball."
    prompt = capi.Chat(llm._rt, "plain").prompt_tokens([{"role": "user", "content": request}])
    document = [sp.bos_id()] + sp.encode(render_conversation("plain", request, "once upon a time.\n\nthe end."))
    assert document[:len(prompt)] == prompt
    assert sp.decode(document[len(prompt) - 1:]) == ": once upon a time.\n\nthe end.\nuser:"


def test_llama2_cannot_be_a_training_corpus():
    with pytest.raises(Exception, match="special tokens inside a conversation"):
        render_conversation("llama2", "hi", "a story")


@pytest.mark.parametrize("template", ["plain", "chatml"])
def test_stored_jinja_template_renders_like_the_runtime(template):
    conversation = [{"role": "system", "content": "be kind."}, {"role": "user", "content": "a story?"},
                    {"role": "assistant", "content": "once.\n\nthe end."}, {"role": "user", "content": "another"}]
    env = jinja2.Environment()
    for messages in (conversation, conversation[1:], conversation[1:3]):
        expected = "".join(text for text, _ in capi.render_chat(template, messages, generation_prompt=True))
        got = env.from_string(JINJA[template]).render(messages=messages, add_generation_prompt=True)
        assert got == expected
        whole = "".join(text for text, _ in capi.render_chat(template, messages))
        assert env.from_string(JINJA[template]).render(messages=messages, add_generation_prompt=False) == whole


def test_chat_template_travels_in_the_model_file(tmp_path):
    from edgellama.runtime.llm import LLM
    model = read_gguf(DEFAULT_MODEL).model
    for fmt, runtime_name in (("chatml", "chatml"), ("plain", "plain")):
        model.vocab.chat_template = jinja_template(fmt)
        path = tmp_path / f"{fmt}.gguf"
        write_gguf(model, path, "q8_0")
        assert read_gguf(path).model.vocab.chat_template == JINJA[fmt]
        assert capi.Chat(LLM(str(path))._rt).name == runtime_name
    assert ", chat template chatml\n" in edgellama("inspect", str(tmp_path / "chatml.gguf")).stdout
    model.vocab.chat_template = ""
    write_gguf(model, tmp_path / "none.gguf", "q8_0")
    assert ", chat template plain (none stored)\n" in edgellama("inspect", str(tmp_path / "none.gguf")).stdout


def test_data_chat_command(tmp_path, shared_data):
    out = tmp_path / "chat.txt"
    r = edgellama("data", "chat", str(shared_data / "tinystories_train_prefix_197k.txt"), "--segment", "stories",
                  "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "as conversations" in r.stdout and "--chat-format plain" in r.stdout
    docs = data.split_documents(out.read_text(), "auto")
    stories = data.split_documents((shared_data / "tinystories_train_prefix_197k.txt").read_text(), "stories")
    assert len(docs) == len(stories)
    chats = [d for d in docs if d.startswith("user: ")]
    assert 0.3 < len(chats) / len(docs) < 0.6
    assert all(d.endswith("\nuser:") and "\nassistant: " in d for d in chats)
    bad = edgellama("data", "chat", str(shared_data / "tinystories_train_prefix_197k.txt"), "--chat-fraction", "2",
                    "-o", str(tmp_path / "bad.txt"))
    assert bad.returncode == 1 and bad.stderr.strip() == "error: --chat-fraction: must be between 0 and 1, got 2.0"
    assert not (tmp_path / "bad.txt").exists()
    missing = edgellama("data", "chat", str(tmp_path / "none.txt"), "-o", str(tmp_path / "x.txt"))
    assert missing.returncode == 1 and "none.txt: cannot read corpus" in missing.stderr
    assert "Traceback" not in bad.stderr + missing.stderr
