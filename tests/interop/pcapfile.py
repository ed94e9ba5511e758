"""A minimal pcap writer: SCCP frames as TCP segments of one loopback conversation.

Lets tshark judge our encodings of every message without a live capture (the live captures in
`test_sccp_tshark.py` and `test_calls_tshark.py` prove the same on real sockets)."""

from __future__ import annotations

import struct
from pathlib import Path

PHONE = ((10, 0, 0, 2), 40000)
CALL_CONTROL = ((10, 0, 0, 1), 2000)


def write_sccp_pcap(path: Path, frames: list[tuple[bool, bytes]], port: int = 2000) -> None:
    """`frames`: (from_phone, bytes) in order; one TCP segment each, sequence numbers consistent."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # Ethernet
    seq = {True: 1000, False: 50000}
    for index, (from_phone, data) in enumerate(frames):
        (src, sport), (dst, dport) = (PHONE, (CALL_CONTROL[0], port)) if from_phone \
            else ((CALL_CONTROL[0], port), PHONE)
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq[from_phone], seq[not from_phone],
                          0x50, 0x18, 65535, 0, 0)
        seq[from_phone] += len(data)
        ip = struct.pack("!BBHHHBBH4B4B", 0x45, 0, 20 + len(tcp) + len(data), index & 0xFFFF, 0,
                         64, 6, 0, *src, *dst)
        packet = bytes(12) + b"\x08\x00" + ip + tcp + data
        out += struct.pack("<IIII", index, 0, len(packet), len(packet)) + packet
    Path(path).write_bytes(bytes(out))
