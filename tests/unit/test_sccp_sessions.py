"""SCCP registration state machines, server and phone side, wired back to back in memory."""

from __future__ import annotations

import pytest

from ccmsec.wire import sccp as s


def _pump(phone: s.SccpPhoneSession, server: s.SccpServerSession, now: float = 0.0):
    """Move bytes both ways until quiet; return (phone events, server events)."""
    phone_events, server_events = [], []
    for _ in range(10):
        up = phone.data_to_send()
        down = b""
        if up:
            server_events += server.receive_data(up, now)
        down = server.data_to_send()
        if down:
            phone_events += phone.receive_data(down, now)
        if not up and not down:
            break
    return phone_events, server_events


def _accept_all(request: s.RegistrationRequest) -> s.RegistrationDecision:
    return s.RegistrationDecision.accept()


def test_register_ack_then_capabilities_exchange():
    seen = []

    def decide(request):
        seen.append(request)
        return s.RegistrationDecision.accept()

    server = s.SccpServerSession(decide, peer_address=("127.0.0.1", 5000), secure=True,
                                 tls_cipher="AES128-SHA256", keepalive_interval=15)
    phone = s.SccpPhoneSession(s.Register("SEP001122334455", "127.0.0.1"),
                               s.CapabilitiesRes((s.MediaCapability(4),), encryption_capable=True))
    phone.start()
    p_events, s_events = _pump(phone, server)
    assert seen[0].device_name == "SEP001122334455" and seen[0].secure
    assert seen[0].tls_cipher == "AES128-SHA256" and seen[0].peer_address == ("127.0.0.1", 5000)
    assert isinstance(s_events[0], s.DeviceRegistered)
    caps = [e for e in s_events if isinstance(e, s.CapabilitiesReceived)]
    assert caps and caps[0].capabilities.encryption_capable
    assert isinstance(p_events[0], s.RegisterAccepted)
    assert p_events[0].ack.keepalive_interval == 15
    assert server.state is s.ServerState.REGISTERED and phone.state is s.PhoneState.REGISTERED


def test_reject_carries_reason_and_closes():
    server = s.SccpServerSession(lambda r: s.RegistrationDecision.reject("device not in database"))
    phone = s.SccpPhoneSession(s.Register("SEPUNKNOWN"))
    phone.start()
    p_events, s_events = _pump(phone, server)
    assert s_events == [s.RegistrationRefused("SEPUNKNOWN", "device not in database")]
    assert p_events == [s.RegisterRejected("device not in database")]
    assert server.state is s.ServerState.CLOSED and phone.state is s.PhoneState.REJECTED
    # Nothing more is processed on a closed session.
    assert server.receive_data(s.KeepAlive().serialize()) == []


def test_async_decider_path_accept_and_reject():
    server = s.SccpServerSession(None)
    events = server.receive_data(s.Register("SEP1").serialize())
    assert isinstance(events[0], s.RegistrationRequested)
    assert server.state is s.ServerState.PENDING
    assert server.data_to_send() == b""  # nothing until decided
    assert isinstance(server.accept()[0], s.DeviceRegistered)
    framer = s.SccpFramer()
    assert [type(m) for m in framer.feed(server.data_to_send())] == [s.RegisterAck, s.CapabilitiesReq]
    with pytest.raises(RuntimeError):
        server.reject("late")


def test_out_of_order_messages_are_ignored_not_crashing():
    server = s.SccpServerSession(_accept_all)
    events = server.receive_data(s.OffHook(1, 1).serialize() + s.Unregister().serialize())
    assert [type(e) for e in events] == [s.MessageIgnored] * 2
    assert server.data_to_send() == b"" and server.state is s.ServerState.CONNECTED
    # A second Register on a registered connection is ignored as well.
    server.receive_data(s.Register("SEP1").serialize())
    server.data_to_send()
    events = server.receive_data(s.Register("SEP2").serialize())
    assert isinstance(events[0], s.MessageIgnored) and server.device_name == "SEP1"


def test_a_standby_connection_is_kept_alive_then_registers_LATER_7():
    """KeepAlive before Register: a phone's standby connection — acked, reported once, and the
    phone can still register over it when it fails over."""
    server = s.SccpServerSession(_accept_all)
    events = server.receive_data(s.KeepAlive().serialize())
    assert [type(e) for e in events] == [s.StandbyHeld] and server.standby
    assert s.SccpFramer().feed(server.data_to_send()) == [s.KeepAliveAck()]
    assert server.receive_data(s.KeepAlive().serialize()) == []      # reported once only
    assert s.SccpFramer().feed(server.data_to_send()) == [s.KeepAliveAck()]
    events = server.receive_data(s.Register("SEP1").serialize())
    assert any(isinstance(e, s.DeviceRegistered) for e in events)
    assert server.state is s.ServerState.REGISTERED


def test_keepalive_and_unregister():
    server = s.SccpServerSession(_accept_all)
    phone = s.SccpPhoneSession(s.Register("SEP1"))
    phone.start()
    _pump(phone, server, now=0)
    assert phone.tick(29.0) == []  # not due yet
    assert phone.data_to_send() == b""
    phone.tick(30.0)
    p_events, s_events = _pump(phone, server, now=30)
    assert s.KeepAliveReceived("SEP1") in s_events and s.KeepAliveAcked() in p_events
    phone.unregister()
    p_events, s_events = _pump(phone, server, now=31)
    assert s.DeviceUnregistered("SEP1") in s_events
    assert s.UnregisterAcked(0) in p_events
    assert phone.state is s.PhoneState.CLOSED and server.state is s.ServerState.CLOSED


def test_phone_declares_call_control_lost_without_acks():
    phone = s.SccpPhoneSession(s.Register("SEP1"))
    phone.start()
    phone.receive_data(s.RegisterAck(keepalive_interval=10).serialize(), now=0)
    events = []
    for t in (10, 20, 30, 40):
        events += phone.tick(t)
    assert events == [s.KeepAliveTimeout("SEP1")]


def test_server_times_out_silent_device():
    server = s.SccpServerSession(_accept_all, keepalive_interval=10, now=0)
    server.receive_data(s.Register("SEP1").serialize(), now=0)
    assert server.tick(20) == []
    assert server.tick(26) == [s.KeepAliveTimeout("SEP1")]


def test_reset_delivery_asks_phone_to_reboot():
    server = s.SccpServerSession(_accept_all)
    phone = s.SccpPhoneSession(s.Register("SEP1"))
    with pytest.raises(RuntimeError):
        server.send_reset()
    phone.start()
    _pump(phone, server)
    server.send_reset(s.ResetType.RESTART)
    p_events, _ = _pump(phone, server)
    assert p_events == [s.ResetRequested(s.ResetType.RESTART)]
    assert phone.state is s.PhoneState.CLOSED


def test_call_messages_reach_the_application_after_registration():
    server = s.SccpServerSession(_accept_all)
    server.receive_data(s.Register("SEP1").serialize())
    events = server.receive_data(s.OffHook(1, 0).serialize())
    assert events == [s.MessageReceived(s.OffHook(1, 0))]


def test_broken_framing_raises_protocol_error():
    server = s.SccpServerSession(_accept_all)
    with pytest.raises(s.SccpProtocolError):
        server.receive_data(b"\xff\xff\xff\xff" + bytes(8))
