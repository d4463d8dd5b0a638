"""Chat training data made from a story corpus itself, in the spirit of TinyStories-Instruct.

For each story a request is derived from its own content: its main character ("a dog
named max", from the first "<kind> named <name>"; else the name it mentions most among
the names the corpus introduces with "named"), one or two things it mentions (words
of THINGS, a list of concrete nouns common in children's stories), and sometimes a
feature it has (dialogue, a happy ending). Request and story are rendered with the
runtime's chat template (capi.render_chat, the same text `edgellama chat` shows the
model), so a model trained on them answers a request with a story. A share of the
stories stays plain, so the model still tells a story from "once upon a time".

The output is a corpus of documents separated by `<|endoftext|>`, in the order of the
stories, so the held-out split of the output (its last documents) is made of the same
stories as the held-out split of the input.
"""

import random
import re
from dataclasses import dataclass, field

from edgellama.errors import EdgeLlamaError
from edgellama.model.chat_format import CHAT_FORMATS, check_chat_format
from edgellama.model.data import DOC_SEPARATOR, read_corpus, split_documents, validation_count, write_documents

THINGS = (
    "apple", "ball", "balloon", "bear", "bed", "bike", "bird", "block", "boat", "book", "bottle", "box", "bread",
    "bucket", "bug", "bunny", "butterfly", "cake", "candy", "car", "cat", "chair", "cloud", "coat", "cookie",
    "cow", "crab", "crayon", "cup", "dinosaur", "dog", "doll", "door", "dragon", "drum", "duck", "egg", "farm",
    "fish", "flower", "forest", "fox", "frog", "garden", "gift", "hat", "hill", "horse", "house", "ice cream",
    "jar", "kite", "key", "lake", "leaf", "lion", "map", "monkey", "moon", "mouse", "necklace", "nest", "ocean",
    "owl", "paint", "park", "pencil", "phone", "picture", "pie", "pig", "plane", "puppy", "puzzle", "rabbit",
    "rain", "rainbow", "ring", "river", "robot", "rock", "rope", "sand", "school", "sea", "shell", "ship",
    "shoe", "sky", "snake", "snow", "sock", "song", "star", "stick", "stone", "sun", "swing", "table", "teddy",
    "toy", "train", "treasure", "tree", "truck", "turtle", "wall", "water", "wind", "window", "wolf", "worm",
)
KINDS = ("girl", "boy", "dog", "cat", "bird", "fish", "bunny", "rabbit", "bear", "mouse", "frog", "duck", "car",
         "truck", "boat", "puppy", "kitten", "lion", "owl", "fox", "monkey", "turtle", "robot", "dragon", "bug",
         "man", "woman", "lady", "squirrel", "horse", "cow", "pig", "bee", "butterfly", "spider", "elephant",
         "kid", "baby", "parrot", "crab", "ant", "goat", "penguin", "pirate", "giraffe", "kitty", "fairy")
# "a little girl named lily", "an old dog named max": the kind is the word before "named".
_CHARACTER = re.compile(r"\b(?:a|an|the)\s+(?:[a-z]+\s+){0,2}?([a-z]+)\s+named\s+([a-z]+)\b")
_NAMED = re.compile(r"\bnamed\s+([a-z]+)\b")
# Words that follow "named" without being a name ("a man named mr ...", "named it"), and
# ordinary words that are also pets' names: never taken for a name from mentions alone.
NOT_NAMES = frozenset(("her", "him", "his", "it", "its", "them", "the", "a", "an", "mr", "mrs", "miss", "red",
                       "blue", "spot", "sunny", "snowy", "olive", "peanut", "sandy", "fluffy", "nutty"))
_HAPPY = re.compile(r"\b(happy|happily|smiled|smiling|laughed|glad|best day|loved)\b")
PHRASINGS = ("tell me a story about {}.", "write a story about {}.", "can you tell me a story about {}?",
             "i want a story about {}.", "please tell a story about {}.")


@dataclass
class StoryFacts:
    """What a request can ask of a story, all read from the story's text."""
    name: str = ""
    kind: str = ""
    things: list = field(default_factory=list)  # every THINGS word in the story, most mentioned first
    dialogue: bool = False
    happy_ending: bool = False


@dataclass
class Request:
    text: str
    name: str
    things: list


def mentions(text: str, word: str) -> int:
    """How often `word` (or its plural) is in `text` as a whole word."""
    return len(re.findall(rf"\b{re.escape(word)}(?:s|es)?\b", text))


def known_names(stories: list) -> set:
    """The names a corpus introduces ("... named lily") at least twice, so that a story
    which never says "named" can still be asked for by its main character's name."""
    counts = {}
    for story in stories:
        for name in _NAMED.findall(story):
            counts[name] = counts.get(name, 0) + 1
    return {n for n, c in counts.items() if c >= 2 and n not in THINGS and n not in KINDS and n not in NOT_NAMES}


def story_facts(story: str, names: set = frozenset()) -> StoryFacts:
    facts = StoryFacts()
    character = _CHARACTER.search(story)
    if character and character.group(1) in KINDS:
        facts.kind, facts.name = character.group(1), character.group(2)
    elif (named := _NAMED.search(story)) is not None and named.group(1) not in NOT_NAMES:
        facts.name = named.group(1)
    else:  # the name mentioned most, at least twice
        mentioned = {n: c for n in set(re.findall(r"[a-z]+", story)) & names for c in [mentions(story, n)] if c >= 2}
        facts.name = max(sorted(mentioned), key=lambda n: mentioned[n]) if mentioned else ""
    counts = {t: mentions(story, t) for t in THINGS if t not in (facts.kind, facts.name)}
    facts.things = sorted((t for t, n in counts.items() if n), key=lambda t: -counts[t])
    facts.dialogue = story.count('"') >= 2
    facts.happy_ending = _HAPPY.search(story.strip().split("\n")[-1]) is not None
    return facts


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def make_request(facts: StoryFacts, rng: random.Random) -> Request | None:
    """A request the story answers, or None when the story gives nothing to ask for."""
    things = facts.things[:rng.choice((1, 1, 2))] if facts.things else []
    if facts.name:
        subject = f"{_a(facts.kind)} named {facts.name}" if facts.kind and rng.random() < 0.7 else facts.name
    elif facts.kind:
        subject = _a(facts.kind)
    elif things:
        subject, things = _a(things[0]), things[1:]
    else:
        return None
    about = " and ".join([subject] + [_a(t) for t in things])
    features = [f for f, has in (("with a happy ending", facts.happy_ending), ("with some talking", facts.dialogue))
                if has]
    if features and rng.random() < 0.3:
        about += " " + rng.choice(features)
    shown = things if facts.name or facts.kind else facts.things[:1 + len(things)]
    return Request(rng.choice(PHRASINGS).format(about), facts.name, shown)


def render_conversation(template: str, request: str, reply: str) -> str:
    """One request and its reply as training text, exactly as the runtime renders a chat."""
    from edgellama.runtime.capi import CHAT_EOS_AFTER, render_chat
    parts = render_chat(template, [{"role": "user", "content": request}, {"role": "assistant", "content": reply}])
    # BOS before the first message is the document's own; anything else cannot be text
    if any(specials & CHAT_EOS_AFTER for _, specials in parts) or any(specials for _, specials in parts[1:]):
        raise EdgeLlamaError(f"chat format {template}: puts special tokens inside a conversation; "
                             f"use one of {', '.join(CHAT_FORMATS)}")
    return "".join(text for text, _ in parts)


@dataclass
class ChatCorpusStats:
    stories: int = 0
    conversations: int = 0
    plain: int = 0
    with_name: int = 0


def chat_documents(stories: list, template: str = "plain", chat_fraction: float = 0.5, seed: int = 1):
    """(documents, stats): each story as a conversation (about chat_fraction of them, those
    a request can be made for) or as itself, in the stories' order."""
    check_chat_format(template, "--template")
    if not 0 <= chat_fraction <= 1:
        raise EdgeLlamaError(f"--chat-fraction: must be between 0 and 1, got {chat_fraction}")
    rng, names = random.Random(seed), known_names(stories)
    docs, stats = [], ChatCorpusStats(stories=len(stories))
    for story in stories:
        request = make_request(story_facts(story, names), rng) if rng.random() < chat_fraction else None
        if request is None:
            docs.append(story)
            stats.plain += 1
        else:
            docs.append(render_conversation(template, request.text, story))
            stats.conversations += 1
            stats.with_name += bool(request.name)
    return docs, stats


def write_chat_corpus(corpus, out, segment: str = "auto", template: str = "plain", chat_fraction: float = 0.5,
                      seed: int = 1) -> ChatCorpusStats:
    """`edgellama data chat`: the chat corpus of a story corpus, written atomically."""
    stories = split_documents(read_corpus(corpus), segment)
    if any(DOC_SEPARATOR in s for s in stories):
        raise EdgeLlamaError(f"{corpus}: a story contains {DOC_SEPARATOR} (use --segment endoftext)")
    if not stories:
        raise EdgeLlamaError(f"{corpus}: no stories in it")
    docs, stats = chat_documents(stories, template, chat_fraction, seed)
    write_documents(out, docs)
    return stats


@dataclass
class Following:
    """How often replies name what their requests asked for."""
    requests: int = 0
    replies: int = 0
    name: int = 0     # replies that mention the asked name
    things: int = 0   # replies that mention every asked thing
    both: int = 0


def held_out_requests(corpus, segment: str = "stories", val_fraction: float = 0.05, seed: int = 1) -> list:
    """Requests (with a name and at least one thing) for the stories a model trained on
    `corpus`'s chat data never saw: its validation split."""
    stories = split_documents(read_corpus(corpus), segment)
    names, rng = known_names(stories), random.Random(seed)
    requests = [make_request(story_facts(s, names), rng) for s in stories[-validation_count(len(stories),
                                                                                          val_fraction):]]
    return [r for r in requests if r is not None and r.name and r.things]


def request_following(llm, requests: list, seeds=(1, 2, 3), temperature: float = 0.8) -> Following:
    """Ask `llm` (an edgellama LLM) each request once per seed, in its chat template."""
    from edgellama.runtime.sampling_params import SamplingParams
    conversations = [[{"role": "user", "content": r.text}] for r in requests for _ in seeds]
    params = [SamplingParams(temperature=temperature, top_p=0.95, seed=s, max_tokens=None)
              for _ in requests for s in seeds]
    outputs = llm.chat(conversations, params, use_tqdm=False)
    result = Following(requests=len(requests), replies=len(outputs))
    for i, out in enumerate(outputs):
        request, reply = requests[i // len(seeds)], out.outputs[0].text
        has_name = mentions(reply, request.name) > 0
        has_things = all(mentions(reply, t) for t in request.things)
        result.name += has_name
        result.things += has_things
        result.both += has_name and has_things
    return result
