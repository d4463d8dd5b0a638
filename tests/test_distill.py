"""`edgellama data distill`: a draft's training data written by its target (the default
model here): one document per training story, its opening and the model's own
continuation, the held-out stories left out, the same file for the same seed."""

from click.testing import CliRunner

from edgellama import LLM, SamplingParams
from edgellama.cli import main
from edgellama.model.data import DOC_SEPARATOR, split_documents, validation_count
from edgellama.runtime.distill import opening

STORIES = ("once upon a time, there was a dog named max. he liked to run.\n"
           "one day, a little girl named lily found a ball! she was happy.\n"
           "tom had a red car. it was fast.\n"
           "a bird sat on a tree. it sang a song.\n")


def distill(tmp_path, name, *args):
    corpus, out = tmp_path / "stories.txt", tmp_path / name
    corpus.write_text(STORIES)
    result = CliRunner().invoke(main, ["data", "distill", str(tmp_path / "model.gguf"), str(corpus), "-o", str(out),
                                       "--segment", "stories", "--max-tokens", "24", "--threads", "1", *args])
    return result, out


def test_openings_are_first_sentences():
    assert opening("once upon a time, there was a dog. he ran.") == "once upon a time, there was a dog."
    assert opening("what is that? said tom.") == "what is that?"
    long = "no end " * 50
    assert len(opening(long)) <= 200 and long.startswith(opening(long) + " ")  # cut at a space


def test_distill_continues_each_training_story_and_leaves_the_held_out_ones(tmp_path):
    from edgellama.model.gguf_file import write_gguf
    from edgellama.model.loading import load_model
    write_gguf(load_model(None), tmp_path / "model.gguf", "q8_0")
    result, out = distill(tmp_path, "a.txt", "--val-fraction", "0.25")
    assert result.exit_code == 0, result.output
    assert "3 stories continued by the model" in result.output and "1 held out" in result.output
    stories = split_documents(STORIES, "stories")
    docs = split_documents(out.read_text(), "endoftext")
    assert len(docs) == len(stories) - validation_count(len(stories), 0.25) == 3
    llm = LLM(str(tmp_path / "model.gguf"), threads=1)
    for i, (story, doc) in enumerate(zip(stories, docs)):
        start = opening(story)
        assert doc.startswith(start) and doc != story
        # the continuation is the model's, with the story's seed
        want = llm.generate(start, SamplingParams(temperature=1.0, max_tokens=24, seed=1 + i), use_tqdm=False)
        assert doc == (start + want[0].outputs[0].text).strip()
    assert "a bird sat on a tree" not in out.read_text()  # the held-out story's opening
    again, out_again = distill(tmp_path, "b.txt", "--val-fraction", "0.25")
    assert out_again.read_text() == out.read_text()
    other, out_other = distill(tmp_path, "c.txt", "--val-fraction", "0.25", "--seed", "7")
    assert out_other.read_text() != out.read_text()
    greedy, out_greedy = distill(tmp_path, "d.txt", "--val-fraction", "0.25", "--temperature", "0")
    assert DOC_SEPARATOR in out_greedy.read_text() and out_greedy.read_text() != out.read_text()


def test_distill_refuses_bad_input_and_writes_nothing(tmp_path):
    for args, message in ((["--temperature", "-1"], "--temperature"), (["--max-tokens", "0"], "--max-tokens"),
                          (["--val-fraction", "1"], "--val-fraction")):
        (tmp_path / "model.gguf").write_bytes(b"")
        result, out = distill(tmp_path, "x.txt", *args)
        assert result.exit_code != 0 and message in result.output, result.output
        assert not out.exists() and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["data", "distill", str(tmp_path / "none.gguf"), str(tmp_path / "s.txt"),
                                       "-o", str(tmp_path / "y.txt")])
    assert result.exit_code != 0 and "none.gguf: no such model file" in result.output
