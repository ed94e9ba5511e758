"""TFTP read-transfer state machines, driven without sockets."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccmsec.wire import tftp as t

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 69)
SERVER_TID = ("127.0.0.1", 50000)


def rrq(**options: str) -> t.Request:
    return t.Request(t.OP_RRQ, "f", "octet", dict(options))


def packets(out):
    return [t.parse_packet(d) for d, _ in out]


def test_plain_transfer_lockstep():
    data = os.urandom(1300)
    tr = t.ReadTransfer(data, rrq(), CLIENT)
    out = packets(tr.start(0.0))
    assert out == [t.Data(1, data[:512])]
    assert packets(tr.receive(t.encode_ack(1), CLIENT, 0.1)) == [t.Data(2, data[512:1024])]
    assert packets(tr.receive(t.encode_ack(2), CLIENT, 0.2)) == [t.Data(3, data[1024:])]
    assert tr.receive(t.encode_ack(3), CLIENT, 0.3) == []
    assert tr.state is t.TransferState.DONE


def test_exact_multiple_ends_with_empty_block():
    tr = t.ReadTransfer(b"x" * 512, rrq(), CLIENT)
    tr.start(0)
    assert packets(tr.receive(t.encode_ack(1), CLIENT, 0)) == [t.Data(2, b"")]


def test_oack_first_then_data_after_ack0():
    tr = t.ReadTransfer(b"x" * 20, rrq(blksize="8", tsize="0"), CLIENT)
    assert packets(tr.start(0)) == [t.OAck({"blksize": "8", "tsize": "20"})]
    assert tr.receive(t.encode_ack(1), CLIENT, 0) == []  # not ACK 0: ignored
    assert packets(tr.receive(t.encode_ack(0), CLIENT, 0)) == [t.Data(1, b"x" * 8)]


def test_client_error_on_oack_ends_transfer():
    tr = t.ReadTransfer(b"x", rrq(blksize="8"), CLIENT)
    tr.start(0)
    assert tr.receive(t.encode_error(8, "nope"), CLIENT, 0) == []
    assert tr.state is t.TransferState.FAILED and "nope" in tr.error


def test_windowed_sending_and_ack_inside_window_resends_from_there():
    data = bytes(range(80))
    tr = t.ReadTransfer(data, rrq(blksize="8", windowsize="4"), CLIENT)
    tr.start(0)
    assert [p.block for p in packets(tr.receive(t.encode_ack(0), CLIENT, 0))] == [1, 2, 3, 4]
    # RFC 7440: the client lost block 3 and acknowledges 2 -> send 3..6.
    assert [p.block for p in packets(tr.receive(t.encode_ack(2), CLIENT, 0))] == [3, 4, 5, 6]
    assert [p.block for p in packets(tr.receive(t.encode_ack(6), CLIENT, 0))] == [7, 8, 9, 10]


def test_duplicate_ack_never_retransmits_sorcerers_apprentice():
    tr = t.ReadTransfer(b"x" * 2000, rrq(), CLIENT)
    tr.start(0)
    assert len(tr.receive(t.encode_ack(1), CLIENT, 0)) == 1
    for _ in range(5):
        assert tr.receive(t.encode_ack(1), CLIENT, 0) == []
    assert tr.receive(t.encode_ack(0), CLIENT, 0) == []  # stale
    assert tr.receive(t.encode_ack(9), CLIENT, 0) == []  # ahead of what was sent


def test_timeout_retransmits_window_with_bounded_retries():
    tr = t.ReadTransfer(b"x" * 5000, rrq(windowsize="3"), CLIENT, timeout=1.0, max_retries=2)
    tr.start(0)
    tr.receive(t.encode_ack(0), CLIENT, 0)  # no OACK? windowsize was acknowledged, so ACK 0 starts data
    assert tr.tick(0.5) == []  # not yet due
    assert [p.block for p in packets(tr.tick(1.0))] == [1, 2, 3]
    assert [p.block for p in packets(tr.tick(2.0))] == [1, 2, 3]
    out = packets(tr.tick(3.0))
    assert out == [t.Error(0, "transfer timed out")]
    assert tr.state is t.TransferState.FAILED


def test_client_cannot_pin_a_transfer_with_a_huge_timeout_option():
    """A client asking for timeout=255 does not get it: the transfer gives up after the server's
    own timeouts (6 s here), not after 6 x 255 s holding one of the server's bounded slots."""
    tr = t.ReadTransfer(b"x" * 600, rrq(timeout="255"), CLIENT, timeout=1.0, max_retries=5)
    out = tr.start(0)
    assert packets(out) == [t.Data(1, b"x" * 512)]  # no OACK: the option was ignored
    now = 0.0
    while tr.state is t.TransferState.RUNNING and now < 100:
        now += 1.0
        tr.tick(now)
    assert tr.state is t.TransferState.FAILED and now == 6.0
    slow = t.ReadTransfer(b"x", rrq(timeout="4"), CLIENT, max_timeout=4)
    assert packets(slow.start(0)) == [t.OAck({"timeout": "4"})] and slow.deadline == 4


def test_oack_is_retransmitted_on_timeout():
    tr = t.ReadTransfer(b"x", rrq(tsize="0"), CLIENT, timeout=1.0)
    tr.start(0)
    assert packets(tr.tick(1.0)) == [t.OAck({"tsize": "1"})]


def test_foreign_tid_gets_error_5_and_transfer_continues():
    tr = t.ReadTransfer(b"x" * 600, rrq(), CLIENT)
    tr.start(0)
    stranger = ("127.0.0.1", 40001)
    out = tr.receive(t.encode_ack(1), stranger, 0)
    assert out == [(t.encode_error(5, "unknown transfer ID"), stranger)]
    assert tr.state is t.TransferState.RUNNING
    assert packets(tr.receive(t.encode_ack(1), CLIENT, 0)) == [t.Data(2, b"x" * 88)]


def test_malformed_from_client_ends_with_illegal_operation():
    tr = t.ReadTransfer(b"x", rrq(), CLIENT)
    tr.start(0)
    out = packets(tr.receive(b"\x00\x09zz", CLIENT, 0))
    assert out[0].code == t.ERR_ILLEGAL_OPERATION
    assert tr.state is t.TransferState.FAILED


def test_block_numbers_wrap_past_65535():
    data = os.urandom(8 * 65540 + 3)
    tr = t.ReadTransfer(data, rrq(blksize="8", windowsize="64"), CLIENT)
    client = t.ReadClient("f", SERVER, blksize=8, windowsize=64)
    client.start(0)
    to_client = tr.start(0)
    seen_zero = False
    rounds = 0
    while tr.state is t.TransferState.RUNNING and rounds < 10_000:
        rounds += 1
        to_server = []
        for datagram, _ in to_client:
            if datagram[:4] == b"\x00\x03\x00\x00":
                seen_zero = True
            to_server += client.receive(datagram, CLIENT, 0)
        to_client = []
        for datagram, _ in to_server:
            to_client += tr.receive(datagram, CLIENT, 0)
    assert seen_zero
    assert tr.state is t.TransferState.DONE
    assert client.state is t.TransferState.DONE and client.result == data


# --- client ---------------------------------------------------------------------------------


def test_client_locks_server_tid_and_rejects_others():
    c = t.ReadClient("f", SERVER)
    assert packets(c.start(0)) == [t.Request(t.OP_RRQ, "f", "octet", {})]
    assert packets(c.receive(t.encode_data(1, b"a" * 512), SERVER_TID, 0)) == [t.Ack(1)]
    other = ("127.0.0.1", 50001)
    assert c.receive(t.encode_data(2, b"b"), other, 0) == [(t.encode_error(5, "unknown transfer ID"), other)]
    assert c.receive(t.encode_data(2, b"b"), SERVER_TID, 0) == [(t.encode_ack(2), SERVER_TID)]
    assert c.result == b"a" * 512 + b"b"


def test_client_refuses_answer_from_other_host():
    c = t.ReadClient("f", SERVER)
    c.start(0)
    assert packets(c.receive(t.encode_data(1, b"a"), ("127.0.0.9", 5), 0)) == [t.Error(5, "unknown transfer ID")]
    assert c.state is t.TransferState.RUNNING


def test_client_refuses_oack_larger_than_requested():
    c = t.ReadClient("f", SERVER, blksize=512)
    c.start(0)
    out = packets(c.receive(t.encode_oack({"blksize": "1024"}), SERVER_TID, 0))
    assert out[0].code == t.ERR_OPTION_REFUSED
    assert c.state is t.TransferState.FAILED and c.error.code == t.ERR_OPTION_REFUSED


def test_client_refuses_unrequested_option():
    c = t.ReadClient("f", SERVER)
    c.start(0)
    c.receive(t.encode_oack({"windowsize": "4"}), SERVER_TID, 0)
    assert c.state is t.TransferState.FAILED


def test_client_reports_server_error():
    c = t.ReadClient("f", SERVER)
    c.start(0)
    c.receive(t.encode_error(1, "file not found"), SERVER_TID, 0)
    assert (c.error.code, c.error.message) == (1, "file not found")


def test_client_size_bound():
    c = t.ReadClient("f", SERVER, max_size=600)
    c.start(0)
    c.receive(t.encode_data(1, b"a" * 512), SERVER_TID, 0)
    c.receive(t.encode_data(2, b"a" * 512), SERVER_TID, 0)
    assert c.state is t.TransferState.FAILED and c.error.code == t.ERR_DISK_FULL


def test_client_timeout_resends_last_then_gives_up():
    c = t.ReadClient("f", SERVER, timeout=1, max_retries=1)
    rrq_out = c.start(0)
    assert c.tick(1.0) == rrq_out
    c.tick(2.0)
    assert isinstance(c.error, t.TftpTimeoutError)


def test_client_gap_acks_last_in_order_once():
    c = t.ReadClient("f", SERVER, blksize=8, windowsize=4)
    c.start(0)
    c.receive(t.encode_oack({"blksize": "8", "windowsize": "4"}), SERVER_TID, 0)
    assert c.receive(t.encode_data(1, b"a" * 8), SERVER_TID, 0) == []
    assert packets(c.receive(t.encode_data(3, b"a" * 8), SERVER_TID, 0)) == [t.Ack(1)]
    assert c.receive(t.encode_data(4, b"a" * 8), SERVER_TID, 0) == []  # no ACK storm


@pytest.mark.parametrize("bad", [{"blksize": 7}, {"blksize": 65465}, {"windowsize": 0}, {"mode": "mail"}])
def test_client_rejects_invalid_arguments(bad):
    with pytest.raises(ValueError):
        t.ReadClient("f", SERVER, **bad)


# --- fuzzing the state machines -------------------------------------------------------------

datagrams = st.one_of(
    st.binary(max_size=64),
    st.builds(t.encode_ack, st.integers(0, 65535)),
    st.builds(t.encode_data, st.integers(0, 65535), st.binary(max_size=20)),
    st.builds(t.encode_error, st.integers(0, 10), st.text(max_size=10)),
    st.builds(t.encode_oack, st.dictionaries(st.sampled_from(["blksize", "tsize", "windowsize", "x"]),
                                             st.sampled_from(["0", "8", "16", "999999", "a"]))),
)
sources = st.sampled_from([CLIENT, SERVER_TID, ("127.0.0.1", 1), ("127.0.0.2", 69)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(datagrams, sources, st.floats(0, 100)), max_size=30))
def test_fuzz_read_transfer_never_raises(events):
    tr = t.ReadTransfer(b"z" * 100, rrq(blksize="16", windowsize="3"), CLIENT, max_retries=3)
    tr.start(0)
    for datagram, source, now in events:
        for out, _ in tr.receive(datagram, source, now) + tr.tick(now):
            t.parse_packet(out)  # everything we send is well-formed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(datagrams, sources, st.floats(0, 100)), max_size=30))
def test_fuzz_read_client_never_raises(events):
    c = t.ReadClient("f", SERVER, blksize=16, windowsize=3, tsize=True, max_size=500)
    c.start(0)
    for datagram, source, now in events:
        for out, _ in c.receive(datagram, source, now) + c.tick(now):
            t.parse_packet(out)


def test_read_client_refuses_a_file_shorter_or_longer_than_its_announced_tsize():
    """tsize (RFC 2349) is the size the server will send: a transfer that ends at another size is a
    truncated or changed file, reported as an error and never returned as the file."""
    for announced, sent in ((20, b"x" * 12), (5, b"x" * 12)):
        c = t.ReadClient("f", SERVER, blksize=16, tsize=True)
        c.start(0)
        assert packets(c.receive(t.encode_oack({"blksize": "16", "tsize": str(announced)}), SERVER_TID, 0)) \
            == [t.Ack(0)]
        out = packets(c.receive(t.encode_data(1, sent), SERVER_TID, 0))
        assert c.state is t.TransferState.FAILED and c.result is None
        assert "announced" in c.error.message and out == [t.Error(t.ERR_NOT_DEFINED, "size differs from tsize")]
    # netascii: servers differ on whether tsize counts the encoded bytes or the file's
    c = t.ReadClient("f", SERVER, blksize=16, tsize=True, mode="netascii")
    c.start(0)
    c.receive(t.encode_oack({"blksize": "16", "tsize": "3"}), SERVER_TID, 0)
    c.receive(t.encode_data(1, b"a\r\nb"), SERVER_TID, 0)
    assert c.state is t.TransferState.DONE and c.result == b"a\nb"
