import hashlib
import os
import subprocess
from pathlib import Path

import pytest

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
