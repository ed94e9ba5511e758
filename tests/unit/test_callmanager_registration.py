"""Pure registration decisions (registration.decide) and policy-action → event mapping, rule by rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ccmsec.db.lines import InvalidLineOrPool, validate_cm_group, validate_dn, validate_pool_name
from ccmsec.pki import ca
from ccmsec.policy.resets import (
    CapfEnterpriseParamsChanged, ClusterModeChanged, CtlUpdated, DeviceSecurityModeChanged,
    HardeningChanged, ResetDevicesOnServer, SrstSecurityChanged, required_actions,
)
from ccmsec.wire.sccp import Register, RegistrationRequest
from ccmsec.runtime.actions import event_bodies
from ccmsec_callmanager.registration import CertificateKind, DeviceRecord, PhoneTrust, decide
from ccmsec_callmanager.registry import Registry, RegistrationEntry
from ccmsec_proto import events_pb2

CAPF = ca.create_ca(ca.name("CAPF"))
MFR = ca.create_ca(ca.name("Manufacturer"))
TRUST = PhoneTrust(CAPF.cert, MFR.cert)
KEY = ca.new_key()
NAME = "SEP00112233AABB"


def _cert(issuer, cn):
    return ca.issue(issuer, ca.name(cn), KEY.public_key(), server=False, client=True)


def _req(name=NAME, *, cipher=None, cert=None, ip="127.0.0.1", peer="127.0.0.1", device_type=30006):
    return RegistrationRequest(name, (peer, 5000), cert, cipher is not None, cipher,
                               Register(name, ip, device_type=device_type))


def _dev(mode, model="7970"):
    return DeviceRecord(NAME, model, mode)


AES, NULL = "ECDHE-RSA-AES128-GCM-SHA256", "NULL-SHA256"


def test_mode1_mode4_unknown_device_auto_registers_only_in_non_secure_cluster():
    v = decide(_req(device_type=8), None, "non-secure", TRUST)
    assert v.accepted and v.auto_registered and v.device.model == "7940"
    v = decide(_req(), None, "mixed", TRUST)
    assert not v.accepted and v.rule == "MODE-4"


def test_mode3_non_secure_cluster_makes_every_device_non_secure():
    v = decide(_req(), _dev("encrypted"), "non-secure", TRUST)
    assert v.accepted and v.device.security_mode == "non-secure"


@pytest.mark.parametrize("mode,cipher,rule", [
    ("authenticated", None, "DEV-1"), ("encrypted", None, "DEV-1"),
    ("encrypted", NULL, "ENC-1"), ("authenticated", AES, "DEV-1"), ("non-secure", AES, "DEV-1"),
    # encrypted = TLS with AES: a cipher that is neither AES nor NULL is refused, never counted as encrypted
    ("encrypted", "ECDHE-RSA-CHACHA20-POLY1305", "DEV-1"), ("encrypted", "DES-CBC3-SHA", "DEV-1"),
    ("encrypted", "ADH-AES128-SHA", "DEV-1"),
])
def test_dev1_transport_must_match_the_mode(mode, cipher, rule):
    v = decide(_req(cipher=cipher, cert=_cert(CAPF, NAME)), _dev(mode), "mixed", TRUST)
    assert not v.accepted and v.rule == rule, v.reason


async def test_dev1_sccp_server_decider_refuses_a_cipher_neither_aes_nor_null_cleanly():
    """The SCCP server's own transport check (`require_transport_matching_mode`): a reject with
    the reason, not an exception out of the decider."""
    from ccmsec.aio.sccp import require_transport_matching_mode

    decide_transport = require_transport_matching_mode({NAME: "encrypted"}.get)
    refused = await decide_transport(_req(cipher="ECDHE-RSA-CHACHA20-POLY1305"))
    assert not refused.accepted and "neither AES" in refused.reason and "DEV-1" in refused.reason
    assert (await decide_transport(_req(cipher=AES))).accepted


def test_auth7_enc1_cert2_lsc_and_mic_accepted_on_matching_cipher():
    v = decide(_req(cipher=NULL, cert=_cert(CAPF, NAME)), _dev("authenticated"), "mixed", TRUST)
    assert v.accepted and v.certificate_kind is CertificateKind.LSC
    v = decide(_req(cipher=AES, cert=_cert(MFR, "CP-7970G-" + NAME)), _dev("encrypted"), "mixed", TRUST)
    assert v.accepted and v.certificate_kind is CertificateKind.MIC and len(v.certificate_fingerprint) == 64


def test_auth2_cert2_wrong_device_or_issuer_refused():
    v = decide(_req(cipher=AES, cert=_cert(CAPF, "SEP999999999999")), _dev("encrypted"), "mixed", TRUST)
    assert v.rule == "AUTH-2" and "SEP999999999999" in v.reason
    rogue = ca.create_ca(ca.name("CAPF"))  # same subject, other key: signature check refuses it
    v = decide(_req(cipher=AES, cert=_cert(rogue, NAME)), _dev("encrypted"), "mixed", TRUST)
    assert v.rule == "CERT-2"
    v = decide(_req(cipher=AES, cert=None), _dev("encrypted"), "mixed", TRUST)
    assert v.rule == "AUTH-2"


def test_dev3_model_that_cannot_do_the_mode_refused():
    v = decide(_req(cipher=NULL, cert=_cert(CAPF, NAME), device_type=30007),
               _dev("authenticated", "7912"), "mixed", TRUST)
    assert v.rule == "DEV-3"
    v = decide(_req(cipher=AES, cert=_cert(CAPF, NAME), device_type=30007),
               _dev("encrypted", "7960"), "mixed", TRUST)
    assert v.rule == "DEV-3"  # the phone says it is a 7912


def test_mode7_translated_address_flagged_in_mixed_mode_only():
    assert decide(_req(ip="10.0.0.9"), _dev("non-secure"), "mixed", TRUST).nat_suspected
    assert not decide(_req(ip="10.0.0.9"), _dev("non-secure"), "non-secure", TRUST).nat_suspected
    assert not decide(_req(), _dev("non-secure"), "mixed", TRUST).nat_suspected


def test_rst_rows_map_to_exactly_their_events():
    def shape(change):
        return [(k, t, b.get("device_reset") or b.get("service_restart")) for k, t, b in
                event_bodies(required_actions(change), request_id="r1")]

    (k, t, body), = shape(DeviceSecurityModeChanged("SEP1"))
    assert (k, t, list(body.devices), body.rule, body.kind) == ("device.reset", None, ["SEP1"], "RST-1", events_pb2.RESET)
    assert shape(HardeningChanged("SEP1"))[0][2].rule == "RST-2"
    rows = shape(ClusterModeChanged())
    assert [(k, t) for k, t, _ in rows] == [("device.reset", None), ("service.restart", "callmanager")]
    assert rows[0][2].all and rows[0][2].rule == "RST-3" and rows[1][2].rule == "RST-3"
    rows = shape(CtlUpdated())
    assert rows[0][2].kind == events_pb2.RESTART and [t for _, t, _ in rows] == [None, "callmanager", "tftp-signer"]
    assert shape(SrstSecurityChanged("gw", ())) == []
    assert list(shape(SrstSecurityChanged("gw", ("A", "B")))[0][2].devices) == ["A", "B"]
    assert shape(CapfEnterpriseParamsChanged())[0][2].all
    body = shape(ResetDevicesOnServer("ccm2"))[0][2]
    assert body.server == "ccm2" and body.rule == "RST-9" and body.request_id == "r1"


def test_reset_progress_counts_only_re_registrations_after_the_reset():
    reg = Registry("ccm1")

    def entry(name, since):
        return RegistrationEntry(name, "7970", "non-secure", "", "", False, 2000, "", "", "", since)
    reg.add(entry("A", 1.0))
    progress = reg.track_reset({"A", "B"}, "r")
    reg.reset_sent("r", "A")
    reg.add(entry("A", 0.0))  # an older registration does not count
    assert progress.not_back == ["A", "B"]
    reg.add(entry("A", progress.sent["A"] + 1))
    assert progress.not_back == ["B"] and not progress.complete


def test_reset_progress_a_phone_not_here_to_reset_is_back_once_it_registers_after_that():
    """Issue 13: a targeted phone with no registration here when the node handled the request
    (phone-sim rebooting it for the same event) gets no Reset; registering afterwards is coming
    back. A registration from before that moment, or of a device not targeted, does not count."""
    reg = Registry("ccm1")

    def entry(name, since):
        return RegistrationEntry(name, "7970", "non-secure", "", "", False, 2000, "", "", "", since)
    progress = reg.track_reset({"A", "B"}, "r")
    reg.reset_missed("r", {"A", "B", "C"})
    assert set(progress.missed) == {"A", "B"} and not progress.sent
    reg.add(entry("A", progress.missed["A"] - 1))   # older than the handling: not back
    reg.add(entry("C", progress.missed["A"] + 1))   # not targeted
    assert progress.not_back == ["A", "B"] and progress.back == set()
    reg.add(entry("A", progress.missed["A"] + 1))
    assert progress.not_back == ["B"]
    reg.reset_sent("r", "B")                          # sent after all: only a later registration counts
    assert "B" not in progress.missed
    reg.add(entry("B", progress.sent["B"] - 1))
    assert progress.not_back == ["B"]
    reg.add(entry("B", progress.sent["B"] + 1))
    assert progress.complete


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_line_and_pool_validators_refuse_cleanly(text):
    for check in (validate_dn, validate_pool_name, lambda t: validate_cm_group([t])):
        try:
            assert check(text) is not None
        except InvalidLineOrPool as exc:
            assert str(exc)
