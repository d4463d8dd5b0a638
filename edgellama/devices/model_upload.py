"""Models over the serial line: put a GGUF file into a microcontroller's model store
(firmware/apps/common/el_updater.h, PROTOCOL.md "Models over the line").

    with open_device(port="socket://127.0.0.1:4321", board="mps2-an386") as dev:
        upload_model(dev, "new.gguf", "mps2-an386")   # checked, sent, verified, switched
        rollback_model(dev)                            # back to the model before

Before a byte is sent the model is checked against the device: that it fits a slot
(INFO's slot_bytes), that its context covers the firmware's max_model_len, and that the
runtime it needs fits the device's arena (the planner's arithmetic with the device's
own engine options). The upload resumes where an earlier one of the same file stopped
(a cut link, a board that lost power); a chunk the device refuses (line noise) is sent
again; the device checks the SHA-256 of the whole slot before it switches, and answers
with the old model until then.
"""

import hashlib
from pathlib import Path

from edgellama.devices import protocol as P
from edgellama.errors import EdgeLlamaError

CHUNK_BYTES = P.MAX_PAYLOAD - 4  # a frame's payload less the chunk's offset
RETRIES = 8                      # chunks lost or refused in one upload before it gives up
CHUNK_TIMEOUT = 5.0              # seconds a chunk's OK may take (the device writes it and answers)


def _int(info: dict, key: str) -> int:
    try:
        return int(info.get(key))
    except (TypeError, ValueError):
        return 0


def check_fits(info: dict, model_path: Path, board) -> None:
    """EdgeLlamaError naming the numbers when the model cannot run on this device (`info`:
    ProtocolDevice.info(), INFO with the runtime's names)."""
    from edgellama.boards.planner import model_info, plan
    slot = _int(info, "slot_bytes")
    if not slot:
        raise EdgeLlamaError(f"{info.get('board') or 'the device'}: its firmware has no model store, so a model "
                             "goes on it only in a new image (edgellama build, then the board's programmer)")
    size = model_path.stat().st_size
    if size > slot:
        raise EdgeLlamaError(f"{model_path}: {size:,} bytes do not fit the device's model slot of {slot:,} bytes")
    found = model_info(model_path)
    ctx, context = _int(info, "context_length"), found.config["context_length"]
    if context < ctx:
        raise EdgeLlamaError(f"{model_path}: its context of {context} tokens is shorter than the device's "
                             f"max_model_len of {ctx} (build the firmware with --ctx {context})")
    p = plan(board, model_path, ctx=ctx, max_seqs=_int(info, "max_seqs") or None,
             block_size=_int(info, "block") or None, info=found)
    arena = _int(info, "arena_bytes")
    if p.arena_total > arena:
        raise EdgeLlamaError(f"{model_path}: the runtime needs {p.arena_total:,} bytes of arena for it at "
                             f"{ctx} tokens of context and the device has {arena:,}")


def upload_model(device, model_path, board, progress=None) -> dict:
    """Check, send, verify and switch; returns the device's INFO after the switch.
    progress(sent, total) hears how far it got."""
    model_path = Path(model_path)
    data = model_path.read_bytes()
    check_fits(device.info(), model_path, board)
    begin = f"size={len(data)}\nsha256={hashlib.sha256(data).hexdigest()}\n".encode()

    def resume_offset() -> int:  # where the device's copy of this file ends
        answer = device.request(P.MODEL_BEGIN, begin, P.OK)
        offset = int(P.parse_kv(answer.payload[1:]).get("offset", -1))
        if not 0 <= offset <= len(data):
            raise EdgeLlamaError(f"{device.stream.description}: MODEL_BEGIN answered offset {offset}")
        return offset

    offset, retries = resume_offset(), 0
    while offset < len(data):
        chunk = data[offset:offset + CHUNK_BYTES]
        try:
            device.request(P.MODEL_CHUNK, offset.to_bytes(4, "little") + chunk, P.OK, timeout=CHUNK_TIMEOUT)
            offset += len(chunk)
        except EdgeLlamaError as e:  # lost to noise, or refused: ask the device where it stands
            retries += 1
            if retries > RETRIES or "closed" in str(e):
                raise EdgeLlamaError(f"{model_path}: the upload stopped at byte {offset:,} of {len(data):,} ({e}); "
                                     "the device keeps its model, and the same command resumes") from None
            offset = resume_offset()
        if progress is not None:
            progress(offset, len(data))
    device.request(P.MODEL_COMMIT, b"", P.OK, timeout=max(device.timeout, 120.0))
    return device.refresh_info()


def rollback_model(device) -> dict:
    """Back to the model before the last switch; returns the device's INFO after it."""
    device.request(P.MODEL_ROLLBACK, b"", P.OK, timeout=max(device.timeout, 120.0))
    return device.refresh_info()


def flash_model_serial(board, port: str, model=None, rollback: bool = False, echo=None) -> str:
    """`edgellama flash --port`: a model into the board's model store over the serial line,
    or back to the one before; returns the line to print."""
    from edgellama.boards.catalog import get_board
    from edgellama.devices.opener import open_device
    echo = echo or (lambda text: None)
    board = get_board(board)
    with open_device(port=port, board=board.name) as device:
        before = device.info()
        if rollback:
            after = rollback_model(device)
        else:
            shown = [-1]

            def progress(sent, total):  # a line at each tenth, not one per chunk
                tenth = sent * 10 // total
                if tenth != shown[0]:
                    shown[0] = tenth
                    echo(f"  {sent:,} of {total:,} bytes")
            after = upload_model(device, model, board, progress=progress)
    return (f"{board.name} on {port}: model {after.get('model')} (slot {after.get('model_slot')}) answers now; "
            f"before: {before.get('model')} (slot {before.get('model_slot')})")
