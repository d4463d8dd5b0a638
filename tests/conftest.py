import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests explore the same examples on every run (a CI run that fails, fails again
# here); EDGELLAMA_HYPOTHESIS=explore draws new ones each time, for hunting.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=1000)
settings.load_profile("explore" if os.environ.get("EDGELLAMA_HYPOTHESIS") == "explore" else "ci")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EDGELLAMA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "stories260K.bin").is_file():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set EDGELLAMA_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Pretokenized shards go to a per-session cache, not the user's."""
    os.environ["EDGELLAMA_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def stories260k_f32(shared_data, tmp_path_factory) -> Path:
    """llama2.c's stories260K as an F32 GGUF file, written once a session."""
    from edgellama.model.gguf_file import write_gguf
    from edgellama.model.llama2c import read_llama2c
    from edgellama.model.tokenizer import load_vocab
    model = read_llama2c(shared_data / "stories260K.bin", load_vocab(shared_data / "tok512.model"))
    path = tmp_path_factory.mktemp("stories260k") / "stories260K.gguf"
    write_gguf(model, path, "f32")
    return path


@pytest.fixture(scope="session")
def small_corpus(shared_data) -> Path:
    return shared_data / "tinystories_train_prefix_197k.txt"


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, small_corpus) -> Path:
    from edgellama.model.tokenizer import train_tokenizer
    path = tmp_path_factory.mktemp("tok") / "tok384.model"
    train_tokenizer(small_corpus, 384, path)
    return path


def tiny_config(data, tokenizer, out, **kw):
    from edgellama.model.train_config import TrainConfig
    base = dict(data=str(data), tokenizer=str(tokenizer) if tokenizer else None, out=str(out), preset="tiny", batch_size=8,
                max_iters=20, warmup_iters=5, eval_interval=10, eval_windows=20, learning_rate=3e-3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, small_corpus, tiny_tokenizer) -> Path:
    from edgellama.model.train import train
    out = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    train(tiny_config(small_corpus, tiny_tokenizer, out, max_iters=60, eval_interval=30))
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """The reference models are tiny; extra threads only fight over the two cores."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_first_layers(path: Path, n_layers: int, quant: str = "f32") -> Path:
    """The default model cut to its first n_layers, as a GGUF file: a draft model for
    speculative decoding with the same vocabulary, cheap, and often wrong."""
    import dataclasses

    from edgellama.model.gguf_file import write_gguf
    from edgellama.model.loading import load_model
    model = load_model(None)
    keep = {name: t for name, t in model.tensors.items()
            if not name.startswith("blk.") or int(name.split(".")[1]) < n_layers}
    write_gguf(dataclasses.replace(model, config=dataclasses.replace(model.config, n_layers=n_layers), tensors=keep),
               path, quant)
    return path


def require_board(name):
    """The board, or a skip naming what to install when its toolchain or emulator is missing
    (scripts/test.sh installs them, so CI runs these tests)."""
    import shutil

    from edgellama.boards.catalog import get_board
    from edgellama.boards.toolchains import get_toolchain
    board = get_board(name)
    toolchain = get_toolchain(board.toolchain)
    if not toolchain.installed():
        pytest.skip(f"{toolchain.cc} is not installed ({toolchain.install_command()})")
    if board.emulated and shutil.which(board.reach.emulator) is None:
        pytest.skip(f"{board.reach.emulator} is not installed (apt-get install {' '.join(board.reach.apt)})")
    return board


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory):
    """A real sshd on 127.0.0.1 (tests/sshd.py): .host .port .user .target, .client_key (an
    authorized key), .known_hosts (holding the server's host key), .kill_sessions()."""
    import sshd
    why = sshd.available()
    if why:
        pytest.skip(why)
    with sshd.SSHD(tmp_path_factory.mktemp("sshd")) as server:
        yield server


# The greedy generation every emulated target must reproduce from the host program.
PROMPT = "once upon a time"
GREEDY = ["--temperature", "0", "--max-tokens", "48"]


@pytest.fixture(scope="module")
def host_text():
    """The host program's greedy text for a model file (the reference every target must equal)."""
    from edgellama.runtime import build as runtime_build
    program = runtime_build.host_program()
    cache = {}

    def get(model_path):
        key = hashlib.sha256(model_path.read_bytes()).hexdigest()
        if key not in cache:
            result = subprocess.run([str(program), str(model_path), "generate", PROMPT, *GREEDY],
                                    capture_output=True, text=True, timeout=60, check=True)
            cache[key] = result.stdout
        return cache[key]
    return get



@pytest.fixture(scope="session")
def board_builds(tmp_path_factory):
    """(board, quant, model) -> BuildResult: each board image is built once in the session,
    however many modules run it (model None is the embedded default model)."""
    from edgellama.boards import builder
    root, cache = tmp_path_factory.mktemp("board-builds"), {}

    def get(board, quant="q8_0", model=None):
        key = (board, quant, str(model) if model else "default")
        if key not in cache:
            require_board(board)
            name = "-".join([board, quant, Path(model).stem if model else "default"])
            cache[key] = builder.build(board, model, quant=quant, out_dir=root / name)
        return cache[key]
    return get


# The `openai` client against a module's `server` fixture (an edgellama serve on loopback).
@pytest.fixture(scope="module")
def client(server):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id

# ---------------------------------------------------------------- markers
# `pytest -m "not emulated and not slow"` is the quick loop. Whole modules that boot QEMU
# or train say so with `pytestmark`; the tests below each take over ~0.8 s here (measured
# with `pytest --durations=0` on 2 cores) and are marked slow in this one list.
SLOW_TESTS = {
    "tests/test_bad_input.py::test_corpus_too_small",
    "tests/test_bad_input.py::test_corrupt_checkpoint_leaves_previous_output_untouched",
    "tests/test_bad_input.py::test_eval_and_generate_refuse_bad_models",
    "tests/test_bad_input.py::test_gguf_with_wrong_magic",
    "tests/test_bad_input.py::test_missing_corpus",
    "tests/test_bad_input.py::test_truncated_gguf",
    "tests/test_bad_input.py::test_unknown_preset",
    "tests/test_bench.py::test_cli_outputs_history_and_report",
    "tests/test_bench_suite.py::test_the_suite_runs_every_case_and_keeps_the_run",
    "tests/test_bit_exact.py::test_every_kernel_thread_count_and_batch_gives_the_same_bits",
    "tests/test_boards.py::test_cli_lists_and_shows_boards",
    "tests/test_boards.py::test_install_for_a_board_names_what_it_needs",
    "tests/test_c_gguf.py::test_loads_our_own_files",
    "tests/test_c_gguf.py::test_sanitizers_find_nothing",
    "tests/test_c_sampler.py::test_generations_match_the_reference",
    "tests/test_c_sampler.py::test_pcg32_matches_the_published_reference",
    "tests/test_c_sampler.py::test_small_vocabularies_with_ties_match_the_reference",
    "tests/test_c_tokenizer.py::test_every_corpus_line_matches_sentencepiece",
    "tests/test_c_tokenizer.py::test_random_text_and_bytes_match_sentencepiece",
    "tests/test_chat_devices.py::test_local_chat_turns_and_commands",
    "tests/test_chat_devices.py::test_system_prompt_and_reset_change_the_context",
    "tests/test_cli_runtime.py::test_generate_stops_before_a_stop_string",
    "tests/test_cli_runtime.py::test_generate_streams_a_seeded_story",
    "tests/test_default_model.py::test_greedy_story_is_english_and_repeatable",
    "tests/test_default_model.py::test_quantized_quality_within_bars",
    "tests/test_engine_options.py::test_cli_bad_value_is_one_error_line",
    "tests/test_engine_options.py::test_cli_export_c_takes_the_kv_dtype_the_plan_suggests",
    "tests/test_gguf.py::test_checkpoint_round_trip_is_exact_in_f32",
    "tests/test_llama2c.py::test_cli_import_reproduces_run_c_greedy",
    "tests/test_llama2c.py::test_v2_imports_within_q8_error",
    "tests/test_planner.py::test_a_model_too_big_for_any_memory",
    "tests/test_planner.py::test_cli_plan_prints_the_plan_and_exits_0_either_way",
    "tests/test_planner.py::test_cli_unknown_board_is_one_line",
    "tests/test_planner.py::test_exported_sizes_are_exact",
    "tests/test_planner.py::test_largest_context_is_the_edge",
    "tests/test_platformio.py::test_pico2_sources_compile_and_link_for_cortex_m33",
    "tests/test_protocol.py::test_c_crc_and_encode_match_python",
    "tests/test_protocol.py::test_dropped_link_is_an_error_not_a_hang",
    "tests/test_protocol.py::test_generate_on_a_port_that_goes_quiet_is_one_line",
    "tests/test_protocol.py::test_posix_noise_and_oversized_frames",
    "tests/test_runtime.py::test_greedy_matches_reference_for_200_steps",
    "tests/test_runtime.py::test_quantized_loss_within_bars",
    "tests/test_serve.py::test_a_device_failing_mid_stream_reports_an_error",
    "tests/test_bit_exact.py::test_int8_kv_is_the_same_everywhere_too",
    "tests/test_protocol.py::test_c_parser_decodes_python_frames",
    "tests/test_bench.py::test_bench_once_local",
    "tests/test_runtime.py::test_logits_match_reference",
    "tests/test_c_sampler.py::test_pcg32_c_equals_python",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if f"{item.path.relative_to(REPO).as_posix()}::{item.originalname}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
