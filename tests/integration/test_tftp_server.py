"""TFTP server and client over real UDP sockets on loopback."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct

import pytest

from ccmsec.aio.tftp import TftpServer, TftpSocketError, tftp_get
from ccmsec.wire import tftp as t

pytestmark = pytest.mark.timeout(60)

FILES = {
    "SEP001122334455.cnf.xml": os.urandom(1500),
    "empty": b"",
    "exact": b"e" * 1024,
    "big": os.urandom(300_000),
    "text.txt": b"line one\nline two\r\nbare cr\r end\n",
}


async def resolve(filename: str, client: tuple[str, int]) -> bytes | None:
    if filename == "forbidden":
        raise t.TftpError(t.ERR_ACCESS_VIOLATION, "not for you")
    if filename == "crash":
        raise RuntimeError("resolver bug")
    return FILES.get(filename)


@pytest.fixture
async def server():
    async with TftpServer("127.0.0.1", 0, resolve, timeout=0.1, retries=10, max_windowsize=512) as srv:
        yield srv


async def drained(server: TftpServer, within: float = 2.0) -> bool:
    """The server handles the final ACK after the client returns; wait (bounded) for that."""
    for _ in range(int(within / 0.01)):
        if server.active_sessions == 0:
            return True
        await asyncio.sleep(0.01)
    return False


class UdpPeer(asyncio.DatagramProtocol):
    """A raw UDP endpoint collecting what it receives, for speaking TFTP by hand."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple]] = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    async def recv(self, timeout: float = 2.0):
        return await asyncio.wait_for(self.queue.get(), timeout)


async def raw_peer(host: str = "127.0.0.1"):
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=(host, 0))
    return transport, peer


@pytest.mark.parametrize(
    "options",
    [{}, {"blksize": 1428}, {"blksize": 8, "windowsize": 16}, {"tsize": True}, {"blksize": 65464, "windowsize": 4, "tsize": True}],
)
async def test_fetch_is_byte_identical(server, options):
    host, port = server.address
    for name, data in FILES.items():
        assert await tftp_get(host, port, name, timeout=0.2, **options) == data


async def test_netascii_mode_round_trip(server):
    host, port = server.address
    assert await tftp_get(host, port, "text.txt", mode="netascii") == FILES["text.txt"]


async def test_netascii_of_a_large_file_is_refused_so_transfers_cannot_multiply_it(server):
    """netascii re-encodes the file for each transfer (octet ones share the resolver's bytes): a
    file above 1 MiB (a firmware image) is refused in netascii with a clear error, served in octet."""
    FILES["image"] = os.urandom(t.MAX_NETASCII_SIZE + 1)
    try:
        host, port = server.address
        with pytest.raises(t.TftpError) as info:
            await tftp_get(host, port, "image", mode="netascii", blksize=1428, timeout=0.2)
        assert info.value.code == t.ERR_NOT_DEFINED and "ask in octet mode" in info.value.message
        assert await tftp_get(host, port, "image", blksize=1428, windowsize=16, timeout=0.2) == FILES["image"]
        FILES["image"] = b"x\n" * (t.MAX_NETASCII_SIZE // 2)  # exactly the limit: still served
        assert await tftp_get(host, port, "image", mode="netascii", blksize=1428, windowsize=16,
                              timeout=0.2) == FILES["image"]
    finally:
        del FILES["image"]


async def test_errors_carry_server_code_and_message(server):
    host, port = server.address
    with pytest.raises(t.TftpError) as info:
        await tftp_get(host, port, "missing")
    assert (info.value.code, info.value.message) == (1, "file not found")
    with pytest.raises(t.TftpError) as info:
        await tftp_get(host, port, "forbidden")
    assert (info.value.code, info.value.message) == (2, "not for you")
    with pytest.raises(t.TftpError) as info:
        await tftp_get(host, port, "crash")
    assert info.value.code == 0
    assert await tftp_get(host, port, "empty") == b""  # still serving


async def test_many_concurrent_transfers(server):
    host, port = server.address
    names = list(FILES) * 60
    results = await asyncio.gather(*(tftp_get(host, port, n, blksize=1428, timeout=0.5) for n in names))
    assert results == [FILES[n] for n in names]
    assert await drained(server)


async def test_block_numbers_wrap_over_real_sockets(server):
    data = os.urandom(8 * 65536 + 100)  # > 65535 blocks of 8 bytes
    FILES["wrap"] = data
    try:
        host, port = server.address
        assert await tftp_get(host, port, "wrap", blksize=8, windowsize=512, timeout=0.5) == data
    finally:
        del FILES["wrap"]


async def test_bounded_sessions_answer_server_busy():
    gate = asyncio.Event()

    async def slow(filename, client):
        await gate.wait()
        return b"ok"

    async with TftpServer("127.0.0.1", 0, slow, max_sessions=2, max_sessions_per_source=2) as srv:
        host, port = srv.address
        first = [asyncio.create_task(tftp_get(host, port, "a", timeout=0.5)) for _ in range(2)]
        while srv.active_sessions < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(t.TftpError) as info:
            await tftp_get(host, port, "a", timeout=0.5)
        assert (info.value.code, info.value.message) == (0, "server busy")
        gate.set()
        assert await asyncio.gather(*first) == [b"ok", b"ok"]
        assert await tftp_get(host, port, "a") == b"ok"  # capacity is back


async def test_one_address_flooding_read_requests_cannot_starve_the_others():
    """Per-source limit: 200 read requests from one address that never acknowledge get at most
    the address's share of the transfers ("server busy: too many transfers from your address"
    for the rest), and a phone at another address is served at once meanwhile."""
    import socket

    FILES["flood"] = os.urandom(200_000)
    try:
        async with TftpServer("127.0.0.1", 0, resolve, max_sessions=64, max_sessions_per_source=16,
                              timeout=2, retries=3) as srv:
            host, port = srv.address
            flood = []
            for _ in range(200):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.2", 0))
                sock.setblocking(False)
                sock.sendto(t.encode_request(t.OP_RRQ, "flood"), (host, port))
                flood.append(sock)
            await asyncio.sleep(0.3)
            busy = data = 0
            for sock in flood:
                try:
                    packet = t.parse_packet(sock.recv(2048))
                except BlockingIOError:
                    continue
                if isinstance(packet, t.Error):
                    assert packet.message == "server busy: too many transfers from your address"
                    busy += 1
                else:
                    data += 1
            assert (data, busy) == (16, 184) and srv.active_sessions == 16
            assert srv.refused_per_source == 184
            loop = asyncio.get_running_loop()
            started = loop.time()
            got = await tftp_get(host, port, "flood", blksize=1428, bind_host="127.0.0.3", timeout=0.5)
            assert got == FILES["flood"] and loop.time() - started < 2.0
            for sock in flood:
                sock.close()
    finally:
        del FILES["flood"]


async def test_write_request_refused_with_access_violation(server):
    transport, peer = await raw_peer()
    try:
        transport.sendto(t.encode_request(t.OP_WRQ, "SEP001122334455.cnf.xml"), server.address)
        data, _ = await peer.recv()
        assert t.parse_packet(data) == t.Error(2, "writes are not allowed")
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("datagram", "code"),
    [
        (t.encode_rrq("../../etc/passwd"), 2),
        (t.encode_rrq("/etc/passwd"), 2),
        (b"\x00\x01" + b"A" * 300 + b"\0octet\0", 2),
        (b"\x00\x01" + b"A" * 1000 + b"\0octet\0", 2),
        (b"\x00\x07junk", 4),
        (b"\x00\x01noterminator", 4),
        (b"\x00\x01f\0mail\0", 4),
    ],
)
async def test_hostile_requests_get_error_and_server_keeps_serving(server, datagram, code):
    transport, peer = await raw_peer()
    try:
        transport.sendto(datagram, server.address)
        data, _ = await peer.recv()
        assert t.parse_packet(data).code == code
    finally:
        transport.close()
    assert await tftp_get(*server.address, "SEP001122334455.cnf.xml") == FILES["SEP001122334455.cnf.xml"]


async def test_runt_datagrams_answered_and_stray_ack_dropped(server):
    transport, peer = await raw_peer()
    try:
        for junk in (b"\x00", b"\x01", b"\x00\x04\x00"):  # (asyncio never sends empty datagrams)
            transport.sendto(junk, server.address)
            data, _ = await peer.recv()
            assert t.parse_packet(data).code == t.ERR_ILLEGAL_OPERATION
        transport.sendto(t.encode_ack(1), server.address)  # stray ACK on the listening port
        with pytest.raises(asyncio.TimeoutError):
            await peer.recv(timeout=0.2)
    finally:
        transport.close()
    assert await tftp_get(*server.address, "exact") == FILES["exact"]


async def test_foreign_tid_gets_error_5_and_transfer_completes(server):
    client_t, client = await raw_peer()
    stranger_t, stranger = await raw_peer()
    try:
        client_t.sendto(t.encode_rrq("exact"), server.address)
        data, tid = await client.recv()
        assert t.parse_packet(data) == t.Data(1, FILES["exact"][:512])
        assert tid != server.address  # a fresh TID per transfer
        stranger_t.sendto(t.encode_ack(1), tid)
        err, _ = await stranger.recv()
        assert t.parse_packet(err) == t.Error(5, "unknown transfer ID")
        client_t.sendto(t.encode_ack(1), tid)
        data, _ = await client.recv()
        assert t.parse_packet(data) == t.Data(2, FILES["exact"][512:])
        client_t.sendto(t.encode_ack(2), tid)
        data, _ = await client.recv()
        assert t.parse_packet(data) == t.Data(3, b"")
        client_t.sendto(t.encode_ack(3), tid)
        assert await drained(server)
        assert server.completed >= 1
    finally:
        client_t.close()
        stranger_t.close()


async def test_repeated_rrq_does_not_start_a_second_transfer(server):
    client_t, client = await raw_peer()
    try:
        client_t.sendto(t.encode_rrq("exact"), server.address)
        client_t.sendto(t.encode_rrq("exact"), server.address)
        _, tid = await client.recv()
        data, tid2 = await client.recv()  # the server's own retransmission after its timeout
        assert tid2 == tid and t.parse_packet(data).block == 1
    finally:
        client_t.close()


async def test_close_cancels_running_transfers_cleanly():
    srv = TftpServer("127.0.0.1", 0, resolve, timeout=5, retries=5)
    await srv.start()
    client_t, client = await raw_peer()
    try:
        client_t.sendto(t.encode_rrq("big"), srv.address)
        await client.recv()  # DATA 1, then we go silent
        assert srv.active_sessions == 1
        await asyncio.wait_for(srv.close(), 2)
        assert srv.active_sessions == 0
    finally:
        client_t.close()


async def test_client_gives_up_on_silent_server():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))  # bound but never answers
    try:
        with pytest.raises(t.TftpTimeoutError):
            await tftp_get("127.0.0.1", sock.getsockname()[1], "x", timeout=0.05, retries=2)
    finally:
        sock.close()


async def test_transfers_and_errors_are_counted_by_kind_of_file():
    """Issue 16: `ccmsec_tftp_transfers_total{kind,outcome}`, `..._errors_total{kind,error}` and
    `..._sent_bytes_total{kind}` over real sockets, with the owner's classifier naming the kind:
    a completed read, a missing file, a refused one, a resolver bug, and a client that stops
    acknowledging (the transfer times out). tftp-signer's own classifier is checked below."""
    from ccmsec.runtime.metrics import REGISTRY

    kinds = {"big": "firmware", "missing": "device-config", "forbidden": "trust-list", "crash": "static",
             "text.txt": "abandoned"}

    def sample(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    wanted = [("ccmsec_tftp_transfers_total", {"kind": "firmware", "outcome": "completed"}),
              ("ccmsec_tftp_sent_bytes_total", {"kind": "firmware"}),
              ("ccmsec_tftp_errors_total", {"kind": "device-config", "error": "not_found"}),
              ("ccmsec_tftp_errors_total", {"kind": "trust-list", "error": "access_violation"}),
              ("ccmsec_tftp_errors_total", {"kind": "static", "error": "internal"}),
              ("ccmsec_tftp_errors_total", {"kind": "abandoned", "error": "transfer"}),
              ("ccmsec_tftp_transfers_total", {"kind": "abandoned", "outcome": "failed"})]
    before = [sample(name, **labels) for name, labels in wanted]
    async with TftpServer("127.0.0.1", 0, resolve, timeout=0.1, retries=3, kind_of=kinds.__getitem__) as srv:
        host, port = srv.address
        assert await tftp_get(host, port, "big") == FILES["big"]
        for name in ("missing", "forbidden", "crash"):
            with pytest.raises(t.TftpError):
                await tftp_get(host, port, name)
        transport, peer = await raw_peer()
        try:  # asks for a file, takes its first block and never acknowledges it
            transport.sendto(b"\x00\x01text.txt\x00octet\x00", (host, port))
            await peer.recv()
            for _ in range(300):
                if sample(wanted[-1][0], **wanted[-1][1]) > before[-1]:
                    break
                await asyncio.sleep(0.02)
        finally:
            transport.close()
        assert await drained(srv)
    after = [sample(name, **labels) for name, labels in wanted]
    assert after[1] - before[1] == len(FILES["big"])
    assert [a - b for a, b in zip(after, before)][2:] == [1, 1, 1, 1, 1] and after[0] - before[0] == 1


def test_tftp_signer_names_the_kind_of_each_file():
    from ccmsec import firmware
    from ccmsec_tftp_signer.files import FILE_KINDS, classify

    load = firmware.LOADS["7960"]
    assert [classify(n) for n in ("CTLFile.tlv", "ITLFile.tlv", "SEP00112233AABB.cnf.xml",
                                  f"{load}.sbn", "XMLDefault.cnf.xml", "RingList.xml")] == \
        ["trust-list", "trust-list", "device-config", "firmware", "default-config", "static"]
    assert classify("SEP00112233aabb.cnf.xml") == "static"  # not a device name: never a device's kind
    assert {"trust-list", "device-config", "default-config", "firmware", "static", "other-cluster"} == set(FILE_KINDS)


@pytest.mark.parametrize("listen", ["0.0.0.0", "::"])
async def test_wildcard_listener_answers_from_the_address_the_request_was_sent_to(listen):
    """Multi-homed host: listening on the wildcard address, a request sent to 127.0.0.2 (all of
    127/8 is loopback on Linux) from a client at 127.0.0.1 is answered from 127.0.0.2 — the
    transfer's DATA and the listener's own errors — not from the address the routing table would
    pick (127.0.0.1), which a TFTP client drops as an unknown TID. `::` is the dual-stack case."""
    try:
        srv = TftpServer(listen, 0, resolve, timeout=0.2)
        await srv.start()
    except OSError as exc:
        pytest.skip(f"cannot listen on {listen}: {exc}")
    try:
        port = srv.address[1]
        client_t, client = await raw_peer("127.0.0.1")
        try:
            client_t.sendto(t.encode_rrq("exact"), ("127.0.0.2", port))
            data, source = await client.recv()
            assert source[0] == "127.0.0.2" and source[1] != port
            assert t.parse_packet(data) == t.Data(1, FILES["exact"][:512])
            client_t.sendto(t.encode_error(0, "enough"), source)  # ends that transfer: no retransmission
        finally:
            client_t.close()
        client_t, client = await raw_peer("127.0.0.1")
        try:
            client_t.sendto(t.encode_rrq("missing"), ("127.0.0.2", port))
            data, source = await client.recv()
            assert source == ("127.0.0.2", port) and t.parse_packet(data) == t.Error(1, "file not found")
        finally:
            client_t.close()
        # The real client checks the answer's source address against the one it asked.
        for address in ("127.0.0.2", "127.0.0.3"):
            assert await tftp_get(address, port, "big", blksize=1428, timeout=0.2, retries=3,
                                  bind_host="127.0.0.1") == FILES["big"]
        assert await tftp_get("127.0.0.1", port, "exact", timeout=0.2) == FILES["exact"]
    finally:
        await srv.close()


def test_the_local_address_to_answer_from_is_never_a_broadcast_or_multicast_one():
    """IP_PKTINFO of a broadcast request (to 10.0.0.255, received on 10.0.0.5's interface): the
    transfer socket binds the interface's address (ipi_spec_dst), not the broadcast address in the
    header; an IPv6 multicast destination gives no address to bind (the routing table picks)."""
    from ccmsec.aio.tftp import _IN6_PKTINFO, _IN_PKTINFO, _IP_PKTINFO, _IPV6_PKTINFO, _local_address

    def v4(spec_dst: str, header_dst: str) -> list:
        info = _IN_PKTINFO.pack(3, socket.inet_aton(spec_dst), socket.inet_aton(header_dst))
        return [(socket.IPPROTO_IP, _IP_PKTINFO, info)]

    def v6(dst: str) -> list:
        return [(socket.IPPROTO_IPV6, _IPV6_PKTINFO, _IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, dst), 4))]

    assert _local_address(v4("10.0.0.5", "10.0.0.255"), socket.AF_INET) == ("10.0.0.5", 3)
    assert _local_address(v4("10.0.0.5", "255.255.255.255"), socket.AF_INET) == ("10.0.0.5", 3)
    assert _local_address(v4("10.0.0.7", "10.0.0.7"), socket.AF_INET) == ("10.0.0.7", 3)
    assert _local_address(v6("fe80::1"), socket.AF_INET6) == ("fe80::1", 4)
    assert _local_address(v6("ff02::1"), socket.AF_INET6) is None
    assert _local_address([], socket.AF_INET) is None
    # Dual-stack `::`: an IPv4 request's IP_PKTINFO wins over its v4-mapped header destination.
    assert _local_address(v6("::ffff:10.0.0.255") + v4("10.0.0.5", "10.0.0.255"), socket.AF_INET6) \
        == ("::ffff:10.0.0.5", 3)
    assert _local_address(v6("::ffff:10.0.0.255"), socket.AF_INET6) is None
    assert _local_address([(socket.IPPROTO_IP, _IP_PKTINFO, b"\0" * 4)], socket.AF_INET) is None  # short: ignored


def _udp_from_port_zero(payload: bytes, dst: tuple[str, int]) -> None:
    """Send one UDP datagram with source port 0 over loopback (a raw socket: no UDP socket can)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except PermissionError:
        pytest.skip("raw sockets need CAP_NET_RAW")
    with sock:
        header = struct.pack("!HHHH", 0, dst[1], 8 + len(payload), 0)  # checksum 0: none (IPv4)
        sock.sendto(header + payload, (dst[0], 0))


async def test_a_request_from_source_port_zero_is_dropped_without_taking_a_transfer_slot():
    """Nothing can be delivered to UDP port 0: such a request would hold a transfer slot (and one
    of its address's) for the whole retry period. It is dropped and counted; others are served."""
    async with TftpServer("127.0.0.1", 0, resolve, timeout=0.5, retries=5,
                          max_sessions=4, max_sessions_per_source=1) as srv:
        _udp_from_port_zero(t.encode_rrq("big"), srv.address)
        for _ in range(100):
            if srv.dropped_undeliverable or srv.active_sessions:
                break
            await asyncio.sleep(0.01)
        assert srv.active_sessions == 0
        assert srv.dropped_undeliverable == 1
        # The address's one slot is free: a real client from it is served at once.
        assert await tftp_get(*srv.address, "exact", timeout=0.2, retries=2) == FILES["exact"]


@pytest.mark.parametrize("listen, source", [("127.0.0.1", "0.0.0.0"), ("::", "::ffff:0.0.0.0")])
async def test_a_request_from_the_unspecified_address_is_not_answered_onto_this_host(listen, source):
    """A DHCP-style broadcast from 0.0.0.0 passes the kernel's martian check, and a datagram sent
    to 0.0.0.0 (or ::) is delivered to this host itself: the transfer would send the file to
    whatever local service listens on the port the request named. It is dropped instead."""
    try:
        srv = TftpServer(listen, 0, resolve, timeout=0.1, retries=2)
        await srv.start()
    except OSError as exc:
        pytest.skip(f"cannot listen on {listen}: {exc}")
    local_t, local = await raw_peer("127.0.0.1")  # a local service on some UDP port
    try:
        port = local_t.get_extra_info("sockname")[1]
        srv._on_request(t.encode_rrq("exact"), (source, port))  # as the listener received it
        with pytest.raises(asyncio.TimeoutError):
            await local.recv(timeout=0.5)
        assert srv.active_sessions == 0 and srv.dropped_undeliverable == 1
    finally:
        local_t.close()
        await srv.close()


@pytest.mark.parametrize("listen", ["0.0.0.0", "::"])
async def test_a_broadcast_request_is_answered_from_the_interface_address_on_a_dual_stack_listener(listen):
    """A request broadcast to 127.255.255.255 (lo's broadcast address) is answered from 127.0.0.1.
    On a dual-stack `::` listener, IPV6_PKTINFO of an IPv4 request carries only the header
    destination (::ffff:127.255.255.255): binding that made the DATA leave from the broadcast
    address, which no client accepts. The IPv4 request's IP_PKTINFO (ipi_spec_dst) is used."""
    try:
        srv = TftpServer(listen, 0, resolve, timeout=0.2)
        await srv.start()
    except OSError as exc:
        pytest.skip(f"cannot listen on {listen}: {exc}")
    try:
        port = srv.address[1]
        client_t, client = await raw_peer("127.0.0.1")
        try:
            client_t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            client_t.sendto(t.encode_rrq("exact"), ("127.255.255.255", port))
            data, source = await asyncio.wait_for(client.recv(), 5)
            assert source[0] == "127.0.0.1" and source[1] != port
            assert t.parse_packet(data) == t.Data(1, FILES["exact"][:512])
            client_t.sendto(t.encode_error(0, "enough"), source)
        finally:
            client_t.close()
    finally:
        await srv.close()


async def test_tftp_get_closes_its_socket_when_the_endpoint_set_up_fails(monkeypatch):
    """`tftp_get` makes its socket, then asyncio's endpoint on it: when that set-up fails (out of
    memory, a loop refusing the socket, a cancellation) the socket is closed, not left open until
    the garbage collector finds it — a phone simulator retrying its downloads ran out of files.
    A bind that fails leaves nothing open either: a link-local address without its interface
    (`fe80::1`), which every Linux refuses (EINVAL) whatever its addresses and sysctls — not an
    address merely assumed absent (192.0.2.1 binds where it is configured or ip_nonlocal_bind is
    set, and the test then sent to port 69 instead of failing)."""
    import gc
    import warnings

    import ccmsec.aio.tftp as aio

    made: list[socket.socket] = []
    real = aio._udp_socket

    def recording(*args, **kwargs):
        sock = real(*args, **kwargs)
        made.append(sock)
        return sock

    async def failing(*args, **kwargs):
        raise OSError("endpoint set-up failed")

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(aio, "_udp_socket", recording)
    fds = len(os.listdir("/proc/self/fd"))
    with monkeypatch.context() as patch:
        patch.setattr(loop, "create_datagram_endpoint", failing)
        for _ in range(10):
            with pytest.raises(OSError, match="endpoint set-up failed"):
                await tftp_get("127.0.0.1", 69, "SEP001122334455.cnf.xml", timeout=0.1)
    assert len(made) == 10 and [s.fileno() for s in made] == [-1] * 10
    for _ in range(10):
        with pytest.raises(TftpSocketError, match="cannot bind fe80::1 port 0: .*needs its interface"):
            await tftp_get("::1", 69, "SEP001122334455.cnf.xml", bind_host="fe80::1", timeout=0.1)
    assert len(os.listdir("/proc/self/fd")) == fds
    made.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # an unclosed socket collected here would raise
        gc.collect()


async def test_the_per_source_share_of_a_link_local_client_is_counted_per_interface():
    """Per-source limit (docs/tftp.md): `fe80::2` on one interface and `fe80::2` on another are two
    hosts — the scope id is part of the address, and the kernel reports the host without its
    `%scope`. A client flooding from one link used up the share of the phone with the same
    link-local address on the other link ("server busy: too many transfers from your address");
    each now has its own share, and one on the same link is still refused over its share."""
    held = asyncio.Event()

    async def waiting(name, client):  # the transfer never starts: no socket, only its slot
        await held.wait()
        return None

    async with TftpServer("::", 0, waiting, max_sessions=8, max_sessions_per_source=1) as srv:
        rrq = t.encode_request(t.OP_RRQ, "SEP001122334455.cnf.xml")
        srv._on_request(rrq, ("fe80::2", 40000, 0, 2))  # as the listener got it: (host, port, flow, scope)
        srv._on_request(rrq, ("fe80::2", 40001, 0, 3))  # the same address on another interface
        assert srv.active_sessions == 2 and srv.refused_per_source == 0
        srv._on_request(rrq, ("fe80::2", 40002, 0, 2))  # a second transfer from the first host
        assert srv.active_sessions == 2 and srv.refused_per_source == 1
        held.set()
        for _ in range(100):
            if not srv.active_sessions:
                break
            await asyncio.sleep(0.01)
        assert srv.active_sessions == 0 and not srv._per_source  # each share given back


async def test_a_listener_that_cannot_bind_raises_a_tftp_error_naming_the_address_and_leaves_nothing_open():
    """A TftpServer on a port another socket holds (bound without SO_REUSEADDR/SO_REUSEPORT: the
    kernel refuses a second bind on any host, EADDRINUSE), or on a link-local address without its
    interface (EINVAL), raised a bare OSError ("[Errno 98] Address already in use", no address);
    now a TftpError (code 0) naming the address and the reason — still an OSError, so the
    tftp-signer's start reports "cannot start: ..." — with its socket closed."""
    import gc
    import warnings

    from ccmsec.wire.tftp import TftpError

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    held = holder.getsockname()[1]
    try:
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(10):
            server = TftpServer("127.0.0.1", held, resolve)
            with pytest.raises(TftpError) as raised:
                await server.start()
            assert isinstance(raised.value, TftpSocketError) and isinstance(raised.value, OSError)
            assert raised.value.code == t.ERR_NOT_DEFINED and raised.value.errno == errno.EADDRINUSE
            assert raised.value.message == f"cannot listen on 127.0.0.1 port {held}: Address already in use"
            with pytest.raises(RuntimeError, match="not started"):
                server.address
            await server.close()
        with pytest.raises(TftpSocketError, match=r"cannot listen on fe80::1 port 0: .*needs its interface"):
            await TftpServer("fe80::1", 0, resolve).start()
        assert len(os.listdir("/proc/self/fd")) == fds
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            gc.collect()
        async with TftpServer("127.0.0.1", 0, resolve) as srv:  # the holder's port is still its own
            assert await tftp_get(*srv.address, "exact") == FILES["exact"]
    finally:
        holder.close()


async def test_tftp_get_refuses_a_port_out_of_range_before_sending_anything():
    """A server port out of 1..65535 reached the socket: given a name, the resolver took 70000 as
    70000 % 65536 and the request went to port 4464 (a time-out, or another server's answer);
    given an address, the first send failed and the error was only "transfer aborted" (with
    asyncio's traceback in the log). Now a TftpError naming the port, nothing sent. The good case:
    the same name with the server's port fetches the file."""
    from ccmsec.wire.tftp import TftpError

    async with TftpServer("127.0.0.1", 0, resolve) as srv:
        port = srv.address[1]
        for host, bad in (("localhost", port + 65536), ("127.0.0.1", port + 65536), ("::1", 0),
                          ("127.0.0.1", -1), ("localhost", "69")):
            with pytest.raises(TftpError) as raised:
                await tftp_get(host, bad, "exact", timeout=0.2, retries=0, bind_host="127.0.0.1"
                               if host != "::1" else None)
            assert raised.value.message == f"bad TFTP server port {str(bad)!r}: a port is 1..65535", raised.value
        assert srv.active_sessions == 0 and srv.failed == 0
        assert await tftp_get("localhost", port, "exact", bind_host="127.0.0.1") == FILES["exact"]


async def test_the_shown_address_of_an_ipv6_listener_is_bracketed():
    """A status showed an IPv6 listener as `::1:40123` — the port reads as the address's last
    group. `address_text` (what the tftp-signer's Status reports) brackets the host; IPv4 stays
    `host:port`; and the text, split back, reaches the server."""
    async def resolve(name, client):
        return b"shown"

    async with TftpServer("127.0.0.1", 0, resolve) as v4:
        assert v4.address_text == f"127.0.0.1:{v4.address[1]}"
    try:   # the machine's IPv6 loopback, asked of the kernel itself (not of the server under test)
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    async with TftpServer("::1", 0, resolve) as v6:
        text = v6.address_text
        assert text == f"[::1]:{v6.address[1]}"
        host, _, port = text.rpartition(":")
        assert await tftp_get(host.strip("[]"), int(port), "any") == b"shown"
