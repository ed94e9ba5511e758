"""CTL client logic (ccmsec.ctlclient): CTL-1, CTL-2, CTL-3 records, passwords; and the events the
CTL Provider emits for RST-3, RST-4 and RST-7."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography.hazmat.primitives import serialization

from ccmsec.ctlclient import (
    CtlClientError,
    ServerCertificate,
    build_records,
    check_signer_trusted,
    check_tokens,
    read_password_file,
)
from ccmsec.formats.ctl import Role, build_ctl, dn_string, parse_ctl, public_key_bytes, serial_bytes
from ccmsec.pki.ca import name, new_key, self_signed
from ccmsec.pki.tokens import create_software_token, ensure_manufacturer_ca
from ccmsec.policy.resets import ClusterModeChanged, CtlProviderPortChanged, CtlUpdated, required_actions
from ccmsec.runtime.actions import describe, event_bodies
from ccmsec_proto import events_pb2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctlclient")
    ca = ensure_manufacturer_ca(tmp / "pki")
    tokens = {n: create_software_token(tmp / "tokens", n, "pw", ca) for n in ("t1", "t2", "t3")}
    servers = [
        ServerCertificate(Role.CAPF, "capf", "127.0.0.3", self_signed(name("CAPF"), new_key("rsa2048"))),
        ServerCertificate(Role.TFTP, "tftp-signer", "127.0.0.4",
                          self_signed(name("tftp-signer"), new_key("rsa2048"))),
        ServerCertificate(Role.CCM, "callmanager", "127.0.0.5",
                          self_signed(name("callmanager"), new_key("rsa2048"))),
    ]
    return tokens, servers


def test_ctl1_refuses_fewer_than_two_tokens():
    with pytest.raises(CtlClientError, match="CTL-1: .*at least two security tokens, got 1"):
        check_tokens(["t1"], None)
    with pytest.raises(CtlClientError, match="CTL-1: a token is given twice"):
        check_tokens(["t1", "t1"], None)
    assert check_tokens(["t1", "t2"], None) == "t1"
    assert check_tokens(["t1", "t2"], "t2") == "t2"


def test_ctl1_two_names_for_one_token_are_refused(world):
    """CTL-1 asks for two distinct tokens: two token names with one certificate (a copied token
    folder) passed the name check and built a CTL listing the same token twice, which the provider
    then refused with "lists 2 security token(s); at least two are needed"."""
    tokens, servers = world
    with pytest.raises(CtlClientError, match="CTL-1: two of the tokens given are the same token"):
        build_records([tokens["t1"].certificate, tokens["t1"].certificate], servers)


def test_ctl1_signer_must_be_listed():
    with pytest.raises(CtlClientError, match="CTL-1: the signing token 't3' must be one of"):
        check_tokens(["t1", "t2"], "t3")


def test_ctl3_records_carry_every_field_in_a_fixed_order(world):
    tokens, servers = world
    records = build_records([tokens["t1"].certificate, tokens["t2"].certificate], servers)
    assert [r.role for r in records] == [Role.TOKEN, Role.TOKEN, Role.CCM, Role.TFTP, Role.CAPF]
    for record, server in zip(records[2:], sorted(servers, key=lambda s: [Role.CCM, Role.TFTP,
                                                                          Role.CAPF].index(s.role))):
        cert = server.certificate
        assert record.subject == dn_string(cert.subject) and record.issuer == dn_string(cert.issuer)
        assert record.serial == serial_bytes(cert.serial_number)
        assert record.public_key == public_key_bytes(cert)
        assert record.cert_signature == cert.signature
        assert record.dns_name == server.dns_name
        assert record.ipv4 == ipaddress.IPv4Address(server.ipv4)
        assert record.certificate_der == cert.public_bytes(serialization.Encoding.DER)
    assert records[0].cert_signature is None  # token records carry no signature (SAST)


def test_same_input_twice_gives_an_equivalent_file(world):
    tokens, servers = world
    certs = [tokens["t1"].certificate, tokens["t2"].certificate]
    first = parse_ctl(build_ctl(build_records(certs, servers), tokens["t1"], 1_700_000_000))
    second = parse_ctl(build_ctl(build_records(certs, list(reversed(servers))), tokens["t1"],
                                 1_700_000_999))
    assert [r.encode() for r in first.records] == [r.encode() for r in second.records]
    assert first.header.timestamp != second.header.timestamp


def test_ctl3_refuses_a_list_without_capf(world):
    tokens, servers = world
    with pytest.raises(CtlClientError, match="CAPF"):
        build_records([tokens["t1"].certificate, tokens["t2"].certificate],
                      [s for s in servers if s.role is not Role.CAPF])


def test_ctl2_signer_must_be_in_the_current_ctl_unless_new_trust(world):
    tokens, servers = world
    current = parse_ctl(build_ctl(build_records([tokens["t1"].certificate, tokens["t2"].certificate],
                                                servers), tokens["t1"], 1_700_000_000))
    check_signer_trusted(None, tokens["t3"].certificate, False)  # first CTL: anything goes
    check_signer_trusted(current, tokens["t2"].certificate, False)  # a token already trusted
    with pytest.raises(CtlClientError, match="CTL-2: the signing token is not in the current CTL"):
        check_signer_trusted(current, tokens["t3"].certificate, False)
    check_signer_trusted(current, tokens["t3"].certificate, True)  # explicit --new-trust


def test_password_file_one_line_or_one_per_token(tmp_path):
    one = tmp_path / "one"
    one.write_text("secret\n")
    assert read_password_file(one, ["t1", "t2"], "t2") == "secret"
    per_token = tmp_path / "per"
    per_token.write_text("p1\np2\n")
    assert read_password_file(per_token, ["t1", "t2"], "t2") == "p2"
    wrong = tmp_path / "wrong"
    wrong.write_text("a\nb\nc\n")
    with pytest.raises(CtlClientError, match="has 3 lines"):
        read_password_file(wrong, ["t1", "t2"], "t1")
    with pytest.raises(CtlClientError, match="cannot read password file"):
        read_password_file(tmp_path / "missing", ["t1", "t2"], "t1")


def _described(change) -> list[str]:
    return [describe(k, t, b) for k, t, b in event_bodies(required_actions(change), reason="why")]


def test_password_file_is_bounded_and_text_like_standard_input(tmp_path):
    """A password file is read at most 64 KiB, as standard input is: a huge file (or /dev/zero)
    was read whole, and its first line taken as the password; a binary file is a clear refusal."""
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (200 * 1024) + b"\n")
    with pytest.raises(CtlClientError, match="holds over 65536 bytes; not a password file"):
        read_password_file(huge, ["t1", "t2"], "t1")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00secret")
    with pytest.raises(CtlClientError, match="is not UTF-8 text"):
        read_password_file(binary, ["t1", "t2"], "t1")


def test_rst3_mode_change_resets_all_devices_and_restarts_callmanager():
    assert _described(ClusterModeChanged()) == ["device.reset RST-3", "service.restart.callmanager RST-3"]
    (_, _, body), _ = event_bodies(required_actions(ClusterModeChanged()), reason="why")
    assert body["device_reset"].all and body["device_reset"].kind == events_pb2.RESET


def test_rst4_ctl_update_restarts_devices_callmanager_and_tftp():
    assert _described(CtlUpdated()) == ["device.reset RST-4", "service.restart.callmanager RST-4",
                                        "service.restart.tftp-signer RST-4"]
    events = event_bodies(required_actions(CtlUpdated()), reason="why")
    assert events[0][2]["device_reset"].kind == events_pb2.RESTART
    assert events[1][2]["service_restart"].nodes == []  # every node of the role


def test_rst7_port_change_restarts_only_the_ctl_provider():
    assert _described(CtlProviderPortChanged()) == ["service.restart.ctl-provider RST-7"]
