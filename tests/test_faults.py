"""Fault injection: what happens when the world breaks in the middle of the work.

1. The device's disk fills up during `edgellama flash` (a real ENOSPC: the remote
   directory is a small tmpfs mounted for the test, filled by another writer while the
   model uploads, or already too full): one error line naming the space problem, the
   running release unchanged and still answering, no partial release left.
2. The KV pool runs out while sequences are waiting, prefilling, decoding, preempted and
   finished-but-held: each finishes with the tokens it makes alone (preemption
   recomputes) or is refused with a clear error; the pool is empty after release.
3. The serial link: noise in both directions during a streamed generation, and the link
   dropped mid-generation (the cable pulled: silence, or the port vanishing): a clear
   EdgeLlamaError within the deadline, and after reconnecting the device answers the next
   request with the host runtime's greedy text.
"""

import errno
import os
import posixpath
import random
import select
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edgellama.devices import protocol as P
from edgellama.errors import EdgeLlamaError
from edgellama.runtime import capi
from edgellama.runtime.sampling_params import SamplingParams

GREEDY = {"temperature": 0.0}


# ================================================================ 1. disk full during flash

BOARD = "qemu-aarch64"
PROMPT = "once upon a time"
GEN = ["generate", PROMPT, "--temperature", "0", "--max-tokens", "20"]


def _mount_tmpfs(path: Path, size: int) -> str | None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True, check=False)
    return None if r.returncode == 0 else (r.stderr.strip() or "mount failed")


def _fill(directory: Path, leave: int = 0) -> Path:
    """Write a filler file into directory until the filesystem has at most `leave` bytes free."""
    filler = directory / f"filler-{time.monotonic_ns()}"
    with open(filler, "wb") as f:
        chunk = b"\0" * 65536
        while True:
            free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
            if free <= leave:
                break
            try:
                f.write(chunk[:max(1, min(len(chunk), free - leave))])
                f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
    return filler


@pytest.fixture(scope="module")
def flash_builds(board_builds):
    return {quant: board_builds(BOARD, quant) for quant in ("q8_0", "f32")}


def _release_bytes(build) -> int:
    return sum((build.out_dir / n).stat().st_size for n in ("edgellama-run", "model.gguf", "manifest.json"))


@pytest.fixture
def small_disk(tmp_path, flash_builds):
    """A tmpfs with room for the Q8_0 release and the F32 one, plus a little."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    size = _release_bytes(flash_builds["q8_0"]) + _release_bytes(flash_builds["f32"]) + (1 << 20)
    why = _mount_tmpfs(mnt, size)
    if why:
        pytest.skip(f"cannot mount a tmpfs here: {why}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _ssh_args(server, remote_dir):
    return ["--identity", str(server.client_key), "--known-hosts", str(server.known_hosts), "--remote-dir",
            str(remote_dir)]


def _cli_flash(server, build, remote_dir):
    from click.testing import CliRunner

    from edgellama.cli import main
    return CliRunner().invoke(main, ["flash", "--board", BOARD, "--host", server.target, "--dir", str(build.out_dir),
                                     *_ssh_args(server, remote_dir)])


def _remote_state(server, remote_dir):
    """(current release, its files, the remote program's greedy text) over SSH."""
    from edgellama.devices import flash
    from edgellama.devices.transports import ssh
    with ssh.connect(server.target, key_filename=server.client_key, known_hosts=server.known_hosts) as c:
        current = flash.current_release(c, str(remote_dir))
        files = sorted(c.check(["ls", "-A", posixpath.join(str(remote_dir), "current") + "/"]).split())
        rc, out, err = c.run(flash.remote_program_argv(BOARD, GEN, str(remote_dir)), timeout=60)
        assert rc == 0, err
    return current, files, out


def _host_greedy(model_path) -> str:
    from edgellama.runtime import build as runtime_build
    return subprocess.run([str(runtime_build.host_program()), str(model_path), *GEN], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def _assert_disk_full_failure(server, result, remote, before):
    assert result.exit_code == 1, result.output
    # one error line, at the end (before it: the remote's description and the transient upload bar)
    assert result.output.count("error: ") == 1, result.output
    line = result.output.split("error: ", 1)[1]
    assert line.endswith("\n") and line.count("\n") == 1, result.output
    assert "disk space" in line and "untouched" in line and "connection lost" not in line, line
    current, files, out = _remote_state(server, remote)
    assert (current, files, out) == before  # the old release runs, nothing partial under current
    releases = remote / "releases"
    assert not [p.name for p in releases.iterdir() if p.name.startswith(".")]  # the staging is gone
    assert not list(remote.glob(".*.tmp"))  # no half-made link


@pytest.mark.emulated
@pytest.mark.parametrize("when", ["before the upload", "during the upload"])
def test_disk_full_during_flash_leaves_the_release_running(sshd_server, flash_builds, small_disk, when):
    remote = small_disk / "edgellama"
    result = _cli_flash(sshd_server, flash_builds["q8_0"], remote)
    assert result.exit_code == 0, result.output
    before = _remote_state(sshd_server, remote)
    assert before[2] == _host_greedy(flash_builds["q8_0"].out_dir / "model.gguf")
    fillers = []
    if when == "before the upload":
        # less free space than the F32 release needs, but some: the upload could start
        fillers.append(_fill(small_disk, leave=_release_bytes(flash_builds["f32"]) // 3))
        result = _cli_flash(sshd_server, flash_builds["f32"], remote)
    else:
        # another writer fills the disk once the model is part-way up (a real ENOSPC for
        # sftp-server's writes)
        stop = threading.Event()

        def filler():
            while not stop.is_set():
                for part in (remote / "releases").glob(".*.partial/model.gguf.part"):
                    try:
                        if part.stat().st_size >= 256 * 1024:
                            fillers.append(_fill(small_disk))
                            return
                    except FileNotFoundError:
                        pass
                time.sleep(0.005)
        thread = threading.Thread(target=filler, daemon=True)
        thread.start()
        result = _cli_flash(sshd_server, flash_builds["f32"], remote)
        stop.set()
        thread.join(10)
        assert fillers, "the upload finished before the disk could be filled"
    _assert_disk_full_failure(sshd_server, result, remote, before)
    # space again: the next flash goes through
    for f in fillers:
        f.unlink()
    result = _cli_flash(sshd_server, flash_builds["f32"], remote)
    assert result.exit_code == 0, result.output
    current, _, out = _remote_state(sshd_server, remote)
    assert current != before[0] and out == _host_greedy(flash_builds["f32"].out_dir / "model.gguf")


# ================================================================ 2. the KV pool runs out

BS = 4  # tokens a block: small, so a few short sequences exhaust the pool


@pytest.fixture(scope="module")
def model_path():
    from edgellama.model.loading import resolve
    return str(resolve(None))


@pytest.fixture(scope="module")
def block_bytes(model_path):
    return capi.Runtime(model_path, block_size=BS, max_seqs=1, threads=1).kv_block_bytes


def pool(model_path, block_bytes, n_blocks, max_seqs=8, batch=8, **kw):
    rt = capi.Runtime(model_path, block_size=BS, kv_cache_bytes=n_blocks * block_bytes, max_seqs=max_seqs,
                      max_batch_tokens=batch, threads=1, **kw)
    assert rt.stats()["blocks_total"] == n_blocks
    return rt


@pytest.fixture(scope="module")
def alone(model_path):
    """Greedy output tokens of a prompt run by itself in a roomy engine (memoized)."""
    rt = capi.Runtime(model_path, block_size=BS, max_seqs=1, threads=1)
    cache = {}

    def get(prompt, n):
        key = (tuple(prompt), n)
        if key not in cache:
            seq = rt.add(list(prompt), capi.make_request(GREEDY, n, ignore_eos=True))
            while rt.pending():
                rt.step()
            tokens, n_prompt, _ = rt.tokens(seq)
            rt.release(seq)
            cache[key] = tokens[n_prompt:]
        return cache[key]
    return get


class Driver:
    """Steps an engine, keeping every sequence's streamed tokens and checking the pool's
    counters after each step."""

    def __init__(self, rt):
        self.rt = rt
        self.streamed, self.finish, self.peak = {}, {}, 0

    def add(self, prompt, n):
        seq = self.rt.add(list(prompt), capi.make_request(GREEDY, n, ignore_eos=True))
        self.streamed[seq], self.finish[seq] = [], None
        return seq

    def cont(self, seq, tokens, n):
        self.rt.cont(seq, list(tokens), capi.make_request(GREEDY, n, ignore_eos=True))
        self.streamed[seq], self.finish[seq] = [], None

    def step(self):
        for ev in self.rt.step():
            assert self.finish[ev.seq_id] is None, f"sequence {ev.seq_id} streamed after it finished"
            self.streamed[ev.seq_id].append(ev.token)
            if ev.finished:
                self.finish[ev.seq_id] = capi.FINISH_REASONS[ev.finish]
        s = self.rt.stats()
        assert 0 <= s["blocks_used"] <= s["blocks_total"] and s["blocks_used"] + s["blocks_cached"] <= s["blocks_total"]
        self.peak = max(self.peak, s["blocks_used"])

    def until(self, done, max_steps=5000):
        for _ in range(max_steps):
            if done():
                return
            self.step()
        raise AssertionError(f"stuck after {max_steps} steps: {self.rt.stats()}")

    def drain(self):
        self.until(lambda: not self.rt.pending())

    def output(self, seq):
        tokens, n_prompt, _ = self.rt.tokens(seq)
        assert tokens[n_prompt:][-len(self.streamed[seq]):] == self.streamed[seq]  # the stream is the sequence
        return tokens, n_prompt


def ids(rt, n, seed):
    """A prompt of n tokens: BOS and English-ish tokens of the model (seeded)."""
    text = ("once upon a time there was a little girl named lily she loved to play outside with her dog "
            "and her friend tom one day they found a big red ball in the park ") * 3
    words = text.split()
    rng = random.Random(seed)
    start = rng.randrange(len(words) // 3)
    return rt.tokenize(" ".join(words[start:start + n]))[:n]


def test_pool_runs_out_while_waiting_decoding_and_finished(model_path, block_bytes, alone):
    """A holds most of the pool; B cannot be admitted (waiting) until A grows, finishes and
    is reclaimed while A is finished-but-held; both equal their runs alone."""
    rt = pool(model_path, block_bytes, 12)
    d = Driver(rt)
    a_prompt, b_prompt = ids(rt, 26, 1), ids(rt, 22, 2)  # A: 7 blocks at once; B needs 6 of the 5 left
    a = d.add(a_prompt, 14)                                # A grows to 40 tokens, 10 blocks
    d.step()
    b = d.add(b_prompt, 20)
    d.until(lambda: d.finish[a] is not None)
    assert d.streamed[b] == []          # B waited: never admitted while A held the pool
    assert d.peak == 10
    d.drain()                           # A is finished but not released: its blocks are reclaimed for B
    assert (d.finish[a], d.finish[b]) == ("length", "length")
    assert d.output(a)[0][len(a_prompt):] == alone(a_prompt, 14)
    assert d.output(b)[0][len(b_prompt):] == alone(b_prompt, 20)
    assert rt.stats()["preemptions"] == 0
    assert d.peak == 11                 # B's 41 computed positions needed A's blocks back
    # A continues although its blocks went to B (which, finished and held, gives them back):
    # recomputed from its tokens and whatever the prefix cache still has
    a_tokens = d.output(a)[0]
    more = rt.tokenize(" and then", add_bos=False)
    with pytest.raises(ValueError, match=r"prompt of \d+ tokens is too long: .*KV pool of 48 tokens"):
        d.cont(a, more, 6) if len(a_tokens) + len(more) + 1 > 48 else d.cont(a, more * 3, 1)
    d.cont(a, more, 3)
    d.drain()
    assert d.finish[a] == "length" and d.streamed[a] == alone(a_tokens + more, 3)
    assert d.finish[b] == "length"  # B stays finished; its tokens are still there
    assert d.output(b)[0][len(b_prompt):] == alone(b_prompt, 20)
    for seq in (a, b):
        rt.release(seq)
    s = rt.stats()
    assert s["blocks_used"] == 0 and s["blocks_cached"] <= s["blocks_total"], s


def test_pool_runs_out_while_prefilling_and_after_preemption(model_path, block_bytes, alone):
    """Two decoding sequences grow into a pool that a chunked prefill has taken: the newest
    (the one prefilling) is preempted, then preempted again while it recomputes; every
    output equals its run alone and the pool is empty after release."""
    rt = pool(model_path, block_bytes, 16, batch=8)
    d = Driver(rt)
    p = [ids(rt, 6, 3), ids(rt, 7, 4), ids(rt, 30, 5)]
    n = [40, 36, 20]
    a = d.add(p[0], n[0])
    b = d.add(p[1], n[1])
    d.step()
    c = d.add(p[2], n[2])   # 30 tokens in chunks of at most 8 rows: several steps of prefill
    d.drain()
    s = rt.stats()
    assert s["preemptions"] >= 1 and d.peak == 16, s
    for seq, prompt, count in zip((a, b, c), p, n):
        assert d.finish[seq] == "length"
        assert d.output(seq)[0][len(prompt):] == alone(prompt, count), seq
    for seq in (a, b, c):
        rt.release(seq)
    assert rt.stats()["blocks_used"] == 0


def test_requests_that_cannot_fit_are_refused_clearly(model_path, block_bytes, alone):
    rt = pool(model_path, block_bytes, 6, max_seqs=2)  # 24 tokens in all
    d = Driver(rt)
    with pytest.raises(ValueError, match=r"prompt of 30 tokens is too long: at most 23 fit.*KV pool of 24 tokens"):
        d.add(ids(rt, 30, 6), 4)
    a = d.add(ids(rt, 10, 7), 30)  # fits, but only 24 tokens can exist: finishes by length at the pool's size
    b = d.add(ids(rt, 5, 8), 3)
    with pytest.raises(ValueError, match="all sequence slots are busy"):
        d.add(ids(rt, 5, 9), 3)
    d.drain()
    tokens, n_prompt = d.output(a)
    assert d.finish[a] == "length" and len(tokens) == 24
    assert tokens[n_prompt:] == alone(ids(rt, 10, 7), 30)[:24 - n_prompt]
    assert d.output(b)[0][5:] == alone(ids(rt, 5, 8), 3)
    with pytest.raises(ValueError, match="too long"):  # a chat turn past the pool
        d.cont(a, ids(rt, 3, 10)[1:], 2)
    rt.release(a)
    rt.release(b)
    assert rt.stats()["blocks_used"] == 0
    # the engine still works after the refusals
    c = d.add(ids(rt, 8, 11), 10)
    d.drain()
    assert d.output(c)[0][8:] == alone(ids(rt, 8, 11), 10)
    rt.release(c)
    assert rt.stats()["blocks_used"] == 0


@pytest.mark.parametrize("seed", range(6))
def test_random_traffic_in_a_small_pool(model_path, block_bytes, alone, seed):
    """Arrivals, aborts, releases and chat continuations at random in a pool a fraction
    of what they need: every finished sequence equals its run alone, an aborted one is a
    prefix of it, and nothing is left in use after release."""
    rng = random.Random(seed)
    rt = pool(model_path, block_bytes, rng.choice([10, 14, 20]), max_seqs=4, batch=rng.choice([4, 8, 16]),
              enable_prefix_caching=bool(seed % 2))
    d = Driver(rt)
    live, base = {}, {}  # seq -> (context before this turn, tokens asked for)
    for _ in range(60):
        r = rng.random()
        free = [i for i in range(4) if i not in live]
        if r < 0.3 and free:
            prompt = ids(rt, rng.randrange(2, 20), rng.randrange(1000))
            try:
                seq = d.add(prompt, rng.randrange(1, 30))
            except ValueError as e:
                assert "too long" in str(e)
                continue
            live[seq], base[seq] = prompt, rt.tokens(seq)[0]
        elif r < 0.4 and live:
            seq = rng.choice(sorted(live))
            rt.abort(seq)
            d.finish[seq] = d.finish[seq] or "abort"
        elif r < 0.55 and live:
            seq = rng.choice(sorted(live))
            if d.finish[seq] is not None:
                _check(d, seq, base[seq], alone)
                if rng.random() < 0.5 and d.finish[seq] == "length":
                    more = ids(rt, rng.randrange(2, 6), rng.randrange(1000))[1:]
                    before = rt.tokens(seq)[0]
                    try:
                        d.cont(seq, more, rng.randrange(1, 10))
                        base[seq] = before + more
                        continue
                    except ValueError as e:
                        assert "too long" in str(e)
                rt.release(seq)
                del live[seq]
        for _ in range(rng.randrange(1, 4)):
            d.step()
    d.drain()
    assert d.peak == rt.stats()["blocks_total"]  # the pool did run out
    for seq in sorted(live):
        _check(d, seq, base[seq], alone)
        rt.release(seq)
    assert rt.stats()["blocks_used"] == 0, rt.stats()


def _check(d, seq, context, alone):
    tokens, _ = d.output(seq)
    got = tokens[len(context):]
    assert tokens[:len(context)] == context
    want = alone(context, 64)
    if d.finish[seq] == "abort":
        assert got == want[:len(got)], seq
    else:
        assert d.finish[seq] == "length" and got == want[:len(got)] and got, seq


# ================================================================ 3. the serial link breaks

def greedy(n):
    return SamplingParams(temperature=0.0, max_tokens=n)


class Wire:
    """The cable between the host and the POSIX program serving on a pty (--serial): a pump
    moves the device's bytes at a serial line's pace (BYTES_PER_S) to the plugged-in host
    end, or drops them while nothing is plugged in (a UART sends into the void). A host end
    is a Stream (write/read(timeout)/close) for ProtocolDevice."""

    BYTES_PER_S = 6000

    def __init__(self, master):
        self.master = master
        self.conn = None
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        while not self.stop:
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self.master, 256)
            except OSError:
                return
            time.sleep(len(data) / self.BYTES_PER_S)
            with self.lock:
                if self.conn is not None:
                    self.conn._arrive(data)

    def plug(self, corrupt=None):
        with self.lock:
            self.conn = HostEnd(self, corrupt)
        return self.conn

    def unplug(self, how):
        """'silent': the cable pulled (nothing more arrives, writes go nowhere); 'vanished':
        the host's port disappears (reads and writes fail, as a USB adapter unplugged)."""
        with self.lock:
            conn, self.conn = self.conn, None
        with conn.cond:
            conn.state = how
            conn.cond.notify_all()

    def close(self):
        self.stop = True
        self.thread.join(5)


class HostEnd:
    description = "the test's serial link"

    def __init__(self, wire, corrupt):
        self.wire, self.corrupt = wire, corrupt
        self.buf = bytearray()
        self.cond = threading.Condition()
        self.state = "plugged"
        self.received = 0

    def _arrive(self, data):
        if self.corrupt is not None:
            data = self.corrupt(self.received, data)
        with self.cond:
            self.received += len(data)
            self.buf += data
            self.cond.notify_all()

    def write(self, data):
        if self.state == "vanished":
            raise EOFError("the port is gone")
        if self.state == "plugged":
            os.write(self.wire.master, data)

    def read(self, timeout):
        with self.cond:
            self.cond.wait_for(lambda: self.buf or self.state == "vanished", timeout)
            if self.state == "vanished" and not self.buf:
                raise EOFError("the port is gone")
            out = bytes(self.buf)
            self.buf.clear()
            return out

    def close(self):
        if self.state == "plugged" and self.wire.conn is self:
            self.wire.unplug("silent")


@pytest.fixture(scope="module")
def reference_text(model_path):
    from edgellama.runtime.llm import LLM
    llm = LLM(model_path)
    return lambda prompt, n: llm.generate([prompt], greedy(n), use_tqdm=False)[0].outputs[0].text


@pytest.fixture
def served(model_path):
    """(wire, the serving process): the POSIX program serving on a pty's slave."""
    from edgellama.runtime import build as runtime_build
    master, slave = os.openpty()
    proc = subprocess.Popen([str(runtime_build.host_program()), model_path, "serve", "--serial", os.ttyname(slave)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wire = Wire(master)
    try:
        yield wire, proc
    finally:
        wire.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()
        os.close(master)
        os.close(slave)


def _device(conn, timeout=4.0):
    from edgellama.devices.protocol_device import ProtocolDevice
    return ProtocolDevice(conn, timeout=timeout, hello_timeout=3.0)


STORY = "once upon a time"


def test_noise_into_the_device_while_it_streams(served, reference_text):
    wire, proc = served
    conn = wire.plug()
    dev = _device(conn)
    rng = random.Random(7)
    bursts = [bytes(rng.randrange(256) for _ in range(rng.randrange(50, 400))) for _ in range(4)]
    write = conn.write

    def write_then_noise(data):  # line noise right behind the GENERATE: it reaches the device while it
        write(data)              # decodes (between steps it polls for CANCEL), and again as tokens stream
        if data[:3] == P.MAGIC + bytes([P.GENERATE]):
            def noise():
                for burst in bursts[:3]:
                    time.sleep(0.005)
                    write(burst)
            threading.Thread(target=noise, daemon=True).start()
    conn.write = write_then_noise
    chunks = []
    for i, text in enumerate(dev.generate(STORY, greedy(120))):
        chunks.append(text)
        if i == 5:
            write(bursts[3])
    conn.write = write
    assert "".join(chunks) == reference_text(STORY, 120)
    assert dev.last_stats.finish_reason in ("length", "stop")
    time.sleep(0.4)  # a half frame the noise began is dropped after the device's 300 ms gap
    assert "".join(dev.generate("the little dog", greedy(30))) == reference_text("the little dog", 30)
    assert proc.poll() is None


def test_noise_from_the_device_is_an_error_or_the_right_text(served, reference_text):
    """A byte of a TOKEN frame flipped on the way to the host: the frame's CRC fails and
    the frame is dropped. The host must not hand over text with a hole in it: either the
    reply is refused with an error or the text is the device's."""
    wire, _ = served
    hit = []

    def flip(offset, data):
        at = 200 - offset  # once, about 200 bytes into the conversation (inside the reply's tokens)
        if 0 <= at < len(data) and not hit:
            hit.append(at)
            data = data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1:]
        return data
    dev = _device(wire.plug(corrupt=flip))
    try:
        text = "".join(dev.generate(STORY, greedy(60)))
    except EdgeLlamaError as e:
        assert "lost" in str(e) or "corrupt" in str(e) or "CRC" in str(e) or "token" in str(e), e
    else:
        assert text == reference_text(STORY, 60)
    assert hit
    assert "".join(dev.generate("the little dog", greedy(30))) == reference_text("the little dog", 30)


@pytest.mark.parametrize("how", ["silent", "vanished"])
def test_link_dropped_mid_generation_then_reconnect(served, reference_text, how):
    wire, proc = served
    dev = _device(wire.plug())
    got = []
    start = time.monotonic()
    with pytest.raises(EdgeLlamaError) as e:
        for i, text in enumerate(dev.generate(STORY, greedy(200))):
            got.append(text)
            if i == 8:
                wire.unplug(how)
    elapsed = time.monotonic() - start
    assert 9 <= len(got) < 200 and elapsed < 30, (len(got), elapsed)
    message = str(e.value)
    assert "\n" not in message
    if how == "silent":
        assert "no answer to GENERATE within 4 s" in message
    else:
        assert "link closed during GENERATE" in message and "the port is gone" in message
    dev.close()
    # the cable back in: a new host connection finds the device answering, with the right text
    dev = _device(wire.plug())
    assert dev.info()["model"] == "tinystories-850k"
    assert "".join(dev.generate(STORY, greedy(40))) == reference_text(STORY, 40)
    assert "".join(dev.generate("the little dog", greedy(30))) == reference_text("the little dog", 30)
    assert proc.poll() is None
    dev.close()
