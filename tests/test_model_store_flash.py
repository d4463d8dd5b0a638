"""The model updater (firmware/apps/common/el_updater.c) on a store with flash's rules,
the way the PlatformIO boards keep models (RP2350 and ESP32-S3 flash): a write may only
clear bits, so every byte written must have been erased first (or be rewritten
unchanged), and erases take whole 4 KiB units. The store here is simulated in Python
behind the updater's own callbacks, so the test can cut the power after any number of
erases and writes, including halfway through one, then boot again from what the flash
holds: the board must boot the old model or the new one, whole, never anything else; the
upload must resume and commit; and no write may ever need an erase it did not get. The
same runs on a writable-memory store (erase unit 0: the emulated boards' file-backed
store) keep the two kinds of store to one set of rules."""

import ctypes
import hashlib
import random

import pytest

from edgellama.runtime import build as runtime_build

UNIT = 4096
CHUNK = 1000  # the host's chunks do not line up with the flash's units
WRITE = ctypes.CFUNCTYPE(None, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t)
ERASE = ctypes.CFUNCTYPE(None, ctypes.c_size_t, ctypes.c_size_t)


class Store(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("size", ctypes.c_size_t), ("erase_bytes", ctypes.c_size_t),
                ("write", WRITE), ("erase", ERASE)]


@pytest.fixture(scope="module")
def lib():
    core, common = runtime_build.firmware_dir() / "core", runtime_build.firmware_dir() / "apps" / "common"
    sources = [core / "el_base.c", core / "el_gguf.c", common / "el_sha256.c", common / "el_updater.c"]
    lib = ctypes.CDLL(str(runtime_build.build_shared_library(sources, "updater-probe")))
    lib.el_updater_model.restype = ctypes.c_void_p
    lib.el_updater_begin.restype = ctypes.c_long
    return lib


class Board:
    """A store (flash or writable memory) whose power can fail after `budget` operations;
    `boot` makes a fresh updater from what the store holds, as a restart would."""

    def __init__(self, lib, size, erase_bytes, builtin):
        self.lib, self.erase_bytes, self.builtin = lib, erase_bytes, builtin
        self.memory = (ctypes.c_uint8 * size)(*([0xFF] * size if erase_bytes else [0] * size))
        self.budget, self.cut_halfway, self.violations = None, False, []
        self.write_cb, self.erase_cb = WRITE(self._write), ERASE(self._erase)
        self.builtin_buffer = ctypes.create_string_buffer(builtin, len(builtin))
        self.boot()

    def _spend(self) -> str:
        """'do', 'half' (the power fails during this operation) or 'off' (it has failed)."""
        if self.budget is None:
            return "do"
        self.budget -= 1
        if self.budget > 0:
            return "do"
        return "half" if self.budget == 0 and self.cut_halfway else "off"

    def _write(self, offset, data, n):
        mode = self._spend()
        if mode == "off":
            return
        new = ctypes.string_at(data, n)
        count = n // 2 if mode == "half" else n
        for i in range(count):
            old = self.memory[offset + i]
            if self.erase_bytes and old & new[i] != new[i]:
                self.violations.append(f"write at {offset + i} needs bits set: {old:#04x} -> {new[i]:#04x}")
            self.memory[offset + i] = old & new[i] if self.erase_bytes else new[i]

    def _erase(self, offset, n):
        if not self.erase_bytes:
            self.violations.append("erase called on writable memory")
            return
        if offset % self.erase_bytes or n % self.erase_bytes:
            self.violations.append(f"erase of {n} bytes at {offset}: not whole units")
        mode = self._spend()
        if mode == "off":
            return
        for i in range(offset, offset + (n // 2 if mode == "half" else n)):
            self.memory[i] = 0xFF

    def boot(self):
        self.budget = None
        self.updater = ctypes.create_string_buffer(2048)
        store = Store(ctypes.addressof(self.memory), len(self.memory), self.erase_bytes, self.write_cb, self.erase_cb)
        self.lib.el_updater_init(self.updater, store, self.builtin_buffer, ctypes.c_size_t(len(self.builtin)))

    def model(self) -> bytes:
        size = ctypes.c_size_t()
        at = self.lib.el_updater_model(self.updater, ctypes.byref(size))
        return ctypes.string_at(at, size.value)

    def call(self, name, *args):
        error = ctypes.c_char_p()
        result = getattr(self.lib, name)(self.updater, *args, ctypes.byref(error))
        return result, (error.value or b"").decode()

    def upload(self, model: bytes, budget=None, halfway=False) -> str:
        """Upload and commit `model`, from the offset the board asks for; 'done', or
        'power' when the power failed on the way."""
        self.budget, self.cut_halfway = budget, halfway
        sha = (ctypes.c_uint8 * 32)(*hashlib.sha256(model).digest())
        offset, error = self.call("el_updater_begin", ctypes.c_uint32(len(model)), sha)
        assert offset >= 0, error
        while offset < len(model):
            piece = offset.to_bytes(4, "little") + model[offset:offset + CHUNK]
            status, error = self.call("el_updater_chunk", piece, ctypes.c_int(len(piece)))
            assert status == 0, error
            offset += len(piece) - 4
        status, error = self.call("el_updater_commit")
        powered = self.budget is None or self.budget > 0
        if powered:
            assert status == 0, error
        return "done" if powered else "power"


def models():
    """The image's own model, two uploaded before (the first's slot then takes the new
    one, so its units hold old bytes that must be erased), and the new one."""
    rnd = random.Random(5)
    return rnd.randbytes(300), rnd.randbytes(22_000), rnd.randbytes(21_000), rnd.randbytes(23_500)


@pytest.mark.parametrize("erase_bytes", [UNIT, 0])
def test_power_cut_at_every_step_boots_a_whole_model(lib, erase_bytes):
    builtin, first, old, new = models()
    count = Board(lib, 16 * UNIT, erase_bytes, builtin)
    count.upload(first)
    count.upload(old)
    count.budget = 10**9
    count.upload(new, budget=10**9)
    steps = 10**9 - count.budget  # the operations of one upload-and-commit
    assert 10 < steps < 80, steps
    resumed_from_middle = 0
    for cut in range(1, steps + 1):
        for halfway in (False, True):
            board = Board(lib, 16 * UNIT, erase_bytes, builtin)
            assert board.upload(first) == "done" and board.upload(old) == "done" and board.model() == old
            state = board.upload(new, budget=cut, halfway=halfway)
            board.boot()
            assert board.model() in (old, new), (cut, halfway)
            if board.model() == new:  # only the switch, the commit's last records, makes it new
                assert state == "done" or cut >= steps - 1, (cut, halfway)
            if state == "power" and board.model() == old:
                size = ctypes.c_uint32(len(new))
                sha = (ctypes.c_uint8 * 32)(*hashlib.sha256(new).digest())
                offset, _ = board.call("el_updater_begin", size, sha)
                if erase_bytes:
                    assert offset % UNIT == 0 or offset == len(new), offset  # a resume starts a unit afresh
                resumed_from_middle += 0 < offset < len(new)
                board.boot()
                assert board.upload(new) == "done"
            board.boot()
            assert board.model() == new, (cut, halfway)
            status, error = board.call("el_updater_rollback")
            assert status == 0, error
            board.boot()
            assert board.model() == old
            assert board.violations == [], (cut, halfway, board.violations[:3])
    assert resumed_from_middle > 4  # the cuts did land inside the upload, and it went on from there


def test_flash_layout_keeps_records_in_units_of_their_own(lib):
    """On flash the two boot-record copies and the upload record sit in separate units, so
    erasing one never touches another; slots start after them, in whole units."""
    builtin, _, old, _ = models()
    board = Board(lib, 16 * UNIT, UNIT, builtin)
    board.upload(old)
    first = bytes(board.memory[:3 * UNIT])
    assert first[0:4] in (b"ELBR", b"\xff" * 4) and first[UNIT:UNIT + 4] in (b"ELBR", b"\xff" * 4)
    assert b"ELBR" in (first[0:4], first[UNIT:UNIT + 4])
    slots = bytes(board.memory[3 * UNIT:])
    at = slots.find(old)
    assert at >= 0 and at % UNIT == 0  # slot 1 or 2, from a unit's start
    assert board.violations == []


def test_a_board_without_room_for_a_store_runs_its_image_model(lib):
    """A store the port could not find (the ESP32 without a 'spiffs' partition: NULL and
    0 bytes) or too small for two slots: the image's own model, and uploads refused."""
    builtin, _, old, _ = models()
    for size in (0, 3 * UNIT):
        board = Board(lib, max(size, 1), UNIT, builtin)
        if size == 0:
            board.updater = ctypes.create_string_buffer(2048)
            store = Store(None, 0, UNIT, board.write_cb, board.erase_cb)
            lib.el_updater_init(board.updater, store, board.builtin_buffer, ctypes.c_size_t(len(builtin)))
        assert board.model() == builtin
        sha = (ctypes.c_uint8 * 32)(*hashlib.sha256(old).digest())
        offset, error = board.call("el_updater_begin", ctypes.c_uint32(len(old)), sha)
        assert offset == -1 and error == "model: this board has no model store"
