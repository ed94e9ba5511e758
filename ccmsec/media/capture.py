"""Proof on the wire: capture UDP media on loopback with `dumpcap` and read it back with
`tshark`, then check what an eavesdropper would see (ENC-2, ENC-4, GW-1).

`LoopbackCapture` runs Wireshark's capture engine on `lo` with a BPF filter for the given ports
(it needs the capture privilege: root, or dumpcap's capabilities). `media_proof` answers the two
questions of an encrypted call: does any captured packet carry the plaintext audio, and does
libsrtp, given only the keys the signalling or the SDP carried, decrypt the captured packets back to
exactly the audio that was sent.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ccmsec.media.rtp import RtpError, parse_rtp
from ccmsec.media.srtp import MasterKey, SrtpReceiver, SrtpRefused

MAX_PACKETS = 200_000


class CaptureError(RuntimeError):
    pass


@dataclass(frozen=True)
class Datagram:
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes = field(repr=False)


def capture_available() -> str | None:
    """None when dumpcap and tshark are both here, else why not."""
    missing = [tool for tool in ("dumpcap", "tshark") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed (Debian package tshark)" if missing else None


class LoopbackCapture:
    def __init__(self, ports: list[int] | None = None, *, host: str | None = None,
                 directory: Path | None = None, bpf: str | None = None, interfaces: tuple[str, ...] = ("lo",)):
        """UDP `ports` (optionally on `host`), or any capture filter given as `bpf`. The file goes
        in `directory` (a fresh temporary one when not given: the caller removes it). More than one
        interface (loopback and a compose project's bridge, where a container's media reaches this
        host): one pcapng file (`media.pcapng`), the filter on each."""
        self.filter = " or ".join(f"udp port {p}" for p in ports) if ports else "udp"
        if host:
            self.filter = f"host {host} and ({self.filter})"
        if bpf:
            self.filter = bpf
        self._dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="ccmsec-capture-"))
        self.interfaces = tuple(interfaces) or ("lo",)
        # pcap holds one link type only: several interfaces need pcapng
        self.path = self._dir / ("media.pcap" if len(self.interfaces) == 1 else "media.pcapng")
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "LoopbackCapture":
        why = capture_available()
        if why:
            raise CaptureError(why)
        each = [arg for iface in self.interfaces for arg in ("-i", iface, "-f", self.filter)]
        fmt = ["-P"] if len(self.interfaces) == 1 else []
        self._proc = subprocess.Popen(["dumpcap", "-q", *fmt, *each, "-w", str(self.path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and b"Capturing on" not in line:
            line = self._proc.stderr.readline()
            if not line and self._proc.poll() is not None:
                break
        if b"Capturing on" not in line:
            self.stop()
            raise CaptureError(f"dumpcap could not capture on {' and '.join(self.interfaces)}: "
                               f"{line.decode(errors='replace').strip() or 'no output'}")
        time.sleep(0.5)  # "Capturing on" comes a moment before the filter sees every packet
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        time.sleep(0.3)  # let the last packets reach the file
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> "LoopbackCapture":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def datagrams(self) -> list[Datagram]:
        return read_datagrams(self.path)


def read_datagrams(path: Path) -> list[Datagram]:
    """Every UDP datagram of a capture file (pcap or pcapng), in order, through tshark."""
    out = subprocess.run(["tshark", "-r", str(path), "-c", str(MAX_PACKETS), "-T", "fields",
                          "-e", "ip.src", "-e", "udp.srcport", "-e", "ip.dst", "-e", "udp.dstport",
                          "-e", "udp.payload"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise CaptureError(f"tshark could not read {path}: {out.stderr.strip()[:200]}")
    packets = []
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 5 or not parts[4] or not parts[1]:
            continue
        packets.append(Datagram((parts[0], int(parts[1])), (parts[2], int(parts[3])),
                                bytes.fromhex(parts[4].replace(":", ""))))
    return packets


@dataclass
class DirectionProof:
    packets: int
    plaintext_hits: int          # captured packets containing a 16-byte run of the sent payload
    decrypted: int               # packets libsrtp accepted under the key
    refused: int
    audio_matches: bool          # the decrypted payloads, in sequence order, are exactly what was sent
    srtp: bool

    def summary(self) -> str:
        kind = "SRTP" if self.srtp else "RTP"
        return (f"{self.packets} {kind} packets captured, {self.plaintext_hits} carry plaintext audio, "
                f"{self.decrypted} decrypt with the signalled key, audio identical: {self.audio_matches}")


def _windows(payloads: list[bytes], size: int = 16) -> set[bytes]:
    out = set()
    for p in payloads:
        for i in range(0, max(len(p) - size, 0) + 1, 8):
            chunk = p[i:i + size]
            if len(set(chunk)) > 2:  # skip runs of silence: they prove nothing
                out.add(chunk)
    return out


def media_proof(captured: list[bytes], sent_payloads: list[bytes], key: MasterKey | None) -> DirectionProof:
    """`captured`: the UDP payloads of one direction; `sent_payloads`: the G.711 payloads the sender
    put in them; `key`: the master values the signalling gave the receiver (None: plain RTP)."""
    windows = _windows(sent_payloads)
    hits = sum(1 for d in captured if any(w in d for w in windows))
    got: dict[int, bytes] = {}
    refused = 0
    receiver = SrtpReceiver(key) if key else None
    for datagram in captured:
        try:
            rtp = receiver.unprotect(datagram) if receiver else datagram
            packet = parse_rtp(rtp)
        except (SrtpRefused, RtpError):
            refused += 1
            continue
        got[packet.sequence] = packet.payload
    ordered = [got[s] for s in sorted(got)]
    if got and max(got) - min(got) > 60000:  # the 16-bit sequence wrapped: order from the wrap point
        low = sorted(s for s in got if s < 32768)
        high = sorted(s for s in got if s >= 32768)
        ordered = [got[s] for s in high + low]
    return DirectionProof(len(captured), hits, len(got), refused,
                          bool(sent_payloads) and ordered == list(sent_payloads), key is not None)


def audio_proof(report: "StreamReport", captured: list[bytes], sent_payloads: list[bytes]) -> str:
    """What a capture shows of one stream whose sent audio is known: how many captured packets
    carry a run of that audio in the clear, and whether what libsrtp decrypted (`report.payloads`,
    in capture order) is exactly the audio sent."""
    windows = _windows(sent_payloads)
    plain = sum(1 for d in captured if any(w in d for w in windows))
    got = report.payloads
    same = bool(got) and len(got) == len(sent_payloads) and got == sent_payloads
    return (f"plaintext audio in {plain} of {len(captured)} packets; decrypted back to the audio sent: "
            f"{'yes' if same else 'NO'} ({len(got)} of {len(sent_payloads)} frames)")


def _tshark_lines(args: list[str]) -> list[str]:
    out = subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise CaptureError(f"tshark {' '.join(args[:3])}…: {out.stderr.strip()[:200]}")
    return out.stdout.splitlines()


def sccp_from_capture(pcap: Path, port: int, *, keylog: Path | None = None,
                      by_device: bool = False) -> list[tuple]:
    """Every SCCP message of every TCP connection to `port` in a capture, in order, as
    (direction, message) with direction "to-phone" or "from-phone". With `keylog` the
    connections are read as TLS and decrypted with the NSS key log (SSLKEYLOGFILE) — what an
    investigator holding the endpoints' TLS secrets can see; without, as clear TCP. With
    `by_device` each entry is (device, direction, message), the device named by the connection's
    Register."""
    from ccmsec.wire.sccp import SccpFramer, SccpProtocolError

    streams = sorted({int(v) for v in _tshark_lines(["-r", str(pcap), "-Y", f"tcp.port=={port}", "-T",
                                                      "fields", "-e", "tcp.stream"]) if v.strip()})
    tls_opts = ["-o", f"tls.keylog_file:{keylog}", "-d", f"tcp.port=={port},tls"] if keylog else []
    messages: list[tuple[str, object]] = []
    for stream in streams[:1000]:
        kind = "tls" if keylog else "tcp"
        lines = _tshark_lines(["-r", str(pcap), "-q", *tls_opts, "-z", f"follow,{kind},raw,{stream}"])
        framers = {"from-phone": SccpFramer(), "to-phone": SccpFramer()}
        found: list[tuple[str, object]] = []
        broken: set[str] = set()   # a direction that is not SCCP (e.g. TLS records read as TCP)
        for line in lines:
            if not line.strip() or line.startswith(("=", "Follow:", "Filter:", "Node ")):
                continue
            direction = "to-phone" if line.startswith("\t") else "from-phone"  # node 0 opened it
            try:
                data = bytes.fromhex(line.strip())
            except ValueError:
                continue
            if direction in broken:
                continue
            try:
                for message in framers[direction].feed(data):
                    found.append((direction, message))
            except SccpProtocolError:
                broken.add(direction)
        if by_device:
            device = next((m.device_name for d, m in found if d == "from-phone" and hasattr(m, "device_name")), "")
            messages.extend((device, d, m) for d, m in found)
        else:
            messages.extend(found)
    return messages


@dataclass
class StreamReport:
    """One captured media stream (source → destination) and what its signalled key makes of it."""

    src: tuple[str, int]
    dst: tuple[str, int]
    packets: int = 0
    suite: str = ""            # from the StartMediaTransmission that pointed the sender here
    device: str = ""           # which phone was told to send here (to-phone SMT's connection)
    decrypted: int = 0         # accepted by libsrtp under that key
    refused: int = 0
    payloads: list[bytes] = field(default_factory=list, repr=False)

    @property
    def srtp(self) -> bool:
        return bool(self.suite)

    def line(self) -> str:
        where = f"{self.src[0]}:{self.src[1]} -> {self.dst[0]}:{self.dst[1]}"
        if not self.srtp:
            return f"{where}: {self.packets} packets, no key was signalled for it: plain RTP"
        return (f"{where}: {self.packets} SRTP packets; {self.decrypted} authenticate and decrypt under the "
                f"{self.suite} key signalled for this stream, {self.refused} refused")


def verify_capture(pcap: Path, *, sccp_port: int, keylog: Path | None, media: list[Datagram]) -> list[StreamReport]:
    """Pair each captured media stream with the key call control signalled for it: a
    StartMediaTransmission tells a phone where to send and with which master values, and an
    OpenReceiveChannel (answered with the phone's address) which master values the phone receives
    with, so every datagram to that address must authenticate under that key (ENC-4). Keys are
    read from the SCCP in the same capture (TLS-decrypted with `keylog`)."""
    from ccmsec.media.keys import from_encryption_info
    from ccmsec.wire.sccp import OpenReceiveChannel, OpenReceiveChannelAck, StartMediaTransmission

    sent_keys: dict[tuple[str, int], MasterKey] = {}
    opened: dict[tuple[str, int], MasterKey | None] = {}   # (device, party id) -> receive key
    for device, direction, message in sccp_from_capture(pcap, sccp_port, keylog=keylog, by_device=True):
        # a phone's receive address gets the key of its OpenReceiveChannel: what a sender the
        # phone cannot see (e.g. the gateway) must encrypt with for the phone to accept it
        if direction == "to-phone" and isinstance(message, OpenReceiveChannel):
            opened[(device, message.pass_thru_party_id)] = from_encryption_info(message.encryption)
        elif direction == "from-phone" and isinstance(message, OpenReceiveChannelAck):
            key = opened.get((device, message.pass_thru_party_id))
            target = (message.ip_address, message.port)
            if key is not None and target not in sent_keys:
                sent_keys[target] = key
        if direction == "to-phone" and isinstance(message, StartMediaTransmission):
            key = from_encryption_info(message.encryption)
            target = (message.remote_ip, message.remote_port)
            if key is not None:
                sent_keys[target] = key
            else:
                sent_keys.pop(target, None)
    reports: dict[tuple, StreamReport] = {}
    receivers: dict[tuple, SrtpReceiver] = {}
    for d in media:
        report = reports.setdefault((d.src, d.dst), StreamReport(d.src, d.dst))
        report.packets += 1
        key = sent_keys.get(d.dst)
        if key is None:
            continue
        report.suite = key.suite.name
        receiver = receivers.setdefault((d.src, d.dst), SrtpReceiver(key))
        try:
            rtp = parse_rtp(receiver.unprotect(d.payload))
        except (SrtpRefused, RtpError):
            report.refused += 1
            continue
        report.decrypted += 1
        if len(report.payloads) < 3000:
            report.payloads.append(rtp.payload)
    return list(reports.values())
