"""The serial protocol is spelled twice, in C (firmware/apps/common/el_protocol.h) and in
Python (edgellama/devices/protocol.py): the message ids and limits must agree."""

import re
from pathlib import Path

from edgellama.devices import protocol as P

HEADER = Path(__file__).resolve().parent.parent / "firmware" / "apps" / "common" / "el_protocol.h"


def header_defines() -> dict:
    """{NAME: int} of the header's numeric #defines (hex or decimal, comments ignored)."""
    text = HEADER.read_text(encoding="utf-8")
    return {name: int(value, 0) for name, value in
            re.findall(r"^#define\s+(EL_\w+)\s+(0x[0-9A-Fa-f]+|\d+)\b", text, re.M)}


def test_message_ids_agree():
    defines = header_defines()
    c_messages = {name[len("EL_MSG_"):]: value for name, value in defines.items() if name.startswith("EL_MSG_")}
    assert len(c_messages) >= 15
    assert c_messages == {name: value for value, name in P.NAMES.items()}
    for name, value in c_messages.items():
        assert getattr(P, name) == value, name


def test_framing_limits_agree():
    defines = header_defines()
    assert bytes([defines["EL_PROTO_MAGIC0"], defines["EL_PROTO_MAGIC1"]]) == P.MAGIC
    assert defines["EL_PROTO_MAX_PAYLOAD"] == P.MAX_PAYLOAD
    assert defines["EL_PROTO_OVERHEAD"] == P.OVERHEAD
    assert defines["EL_PROTO_VERSION"] == P.VERSION
