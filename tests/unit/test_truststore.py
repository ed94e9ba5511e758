"""The phone trust store: first CTL on trust, later ones only from a known token (CTL-2)."""

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ccmsec.formats.ctl import Role, build_ctl, record_from_certificate
from ccmsec.formats.sgn import SignatureError, parse_sgn, sign_file
from ccmsec.pki.ca import create_ca, issue_with_new_key, name, new_key
from ccmsec.pki.tokens import FileSigner
from ccmsec.pki.truststore import CtlRejected, TrustStore

TS = 1_700_000_000


@pytest.fixture(scope="module")
def pki():
    ca = create_ca(name("Manufacturing CA"))

    def signer(cn, kind="rsa2048"):
        return FileSigner.from_issued(issue_with_new_key(ca, name(cn), kind))

    p = {n: signer(n) for n in ("sast1", "sast2", "sast3", "cm1", "tftp1", "capf")}
    p["ca"] = ca
    return p


def ctl(pki, tokens, signer, ts=TS, extra=()):
    records = [record_from_certificate(pki[t].certificate, Role.TOKEN) for t in tokens]
    records += [
        record_from_certificate(pki["cm1"].certificate, Role.CCM, "cm1", "127.0.0.1"),
        record_from_certificate(pki["tftp1"].certificate, Role.TFTP, "tftp1", "127.0.0.2"),
        record_from_certificate(pki["capf"].certificate, Role.CAPF, "cm1", "127.0.0.1"),
        *extra,
    ]
    return build_ctl(records, pki[signer] if isinstance(signer, str) else signer, ts)


def test_ctl2_first_ctl_is_trusted_when_self_consistent(pki):
    store = TrustStore()
    assert not store.has_ctl and store.tftp_certificates() == []
    installed = store.offer(ctl(pki, ["sast1", "sast2"], "sast1"))
    assert store.ctl is installed and store.has_ctl


def test_ctl2_first_ctl_with_bad_signature_is_rejected(pki):
    data = bytearray(ctl(pki, ["sast1", "sast2"], "sast1"))
    data[-1] ^= 1
    with pytest.raises(CtlRejected, match="not self-consistent: bad signature"):
        TrustStore().offer(bytes(data))


def test_ctl2_first_ctl_signed_by_an_unlisted_key_is_rejected(pki):
    impostor = FileSigner(pki["sast1"].certificate, new_key("rsa2048"))
    with pytest.raises(CtlRejected, match="not self-consistent"):
        TrustStore().offer(ctl(pki, ["sast1"], impostor))


def test_ctl2_update_signed_by_a_known_token_is_accepted(pki):
    store = TrustStore()
    store.offer(ctl(pki, ["sast1", "sast2"], "sast1"))
    # Signed by the *other* known token, and it replaces sast1 with sast3.
    new = store.offer(ctl(pki, ["sast2", "sast3"], "sast2", ts=TS + 60))
    assert store.ctl is new
    assert pki["sast3"].certificate in store.token_certificates()
    assert pki["sast1"].certificate not in store.token_certificates()


def test_ctl2_update_signed_by_an_unknown_token_is_rejected(pki):
    store = TrustStore()
    first = store.offer(ctl(pki, ["sast1", "sast2"], "sast1"))
    rogue = ctl(pki, ["sast3"], "sast3", ts=TS + 60)  # self-consistent, but sast3 is unknown
    with pytest.raises(CtlRejected, match="not a token in the current CTL \\(CTL-2\\)"):
        store.offer(rogue)
    assert store.ctl is first  # nothing changed


def test_ctl2_forged_token_with_a_known_serial_and_subject_is_rejected(pki):
    """An attacker's certificate copying a trusted token's serial and names does not pass."""
    store = TrustStore()
    store.offer(ctl(pki, ["sast1", "sast2"], "sast1"))
    real = pki["sast1"].certificate
    forged_ca = create_ca(pki["ca"].cert.subject)  # same CA name, attacker's key
    key = new_key("rsa2048")
    now = dt.datetime.now(dt.timezone.utc)
    forged = (x509.CertificateBuilder().subject_name(real.subject).issuer_name(real.issuer)
              .public_key(key.public_key()).serial_number(real.serial_number)
              .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
              .sign(forged_ca.key, hashes.SHA256()))
    forger = FileSigner(forged, key)
    data = build_ctl([record_from_certificate(forged, Role.TOKEN)], forger, TS + 60)
    with pytest.raises(CtlRejected, match="CTL-2"):
        store.offer(data)


def test_ctl2_replay_of_an_older_ctl_is_rejected(pki):
    store = TrustStore()
    old = ctl(pki, ["sast1", "sast2"], "sast1", ts=TS)
    store.offer(ctl(pki, ["sast1", "sast2"], "sast1", ts=TS + 100))
    with pytest.raises(CtlRejected, match="older than the current CTL"):
        store.offer(old)
    store.offer(store.to_bytes())  # the same CTL again is fine


def test_malformed_ctl_is_rejected_with_reason(pki):
    with pytest.raises(CtlRejected, match="malformed CTL"):
        TrustStore().offer(b"\x01\x00\x02\x01\x02")


def test_factory_reset_forgets_the_ctl(pki):
    """DEV-4: factory reset clears the CTL; the next one is trusted on first use again."""
    store = TrustStore()
    store.offer(ctl(pki, ["sast1", "sast2"], "sast1"))
    store.clear()
    assert not store.has_ctl and store.to_bytes() == b""
    store.offer(ctl(pki, ["sast3"], "sast3"))
    assert store.token_certificates() == [pki["sast3"].certificate]


def test_role_helpers(pki):
    store = TrustStore()
    ccm_tftp = issue_with_new_key(pki["ca"], name("cm2")).cert
    store.offer(ctl(pki, ["sast1", "sast2"], "sast1",
                    extra=[record_from_certificate(ccm_tftp, Role.CCM_TFTP, "cm2")]))
    assert store.tftp_certificates() == [pki["tftp1"].certificate, ccm_tftp]
    assert store.callmanager_certificates() == [pki["cm1"].certificate, ccm_tftp]
    assert store.capf_certificates() == [pki["capf"].certificate]
    assert store.certificates_for_role(Role.TVS) == []


def test_serialises_to_the_ctl_bytes(pki, tmp_path):
    data = ctl(pki, ["sast1", "sast2"], "sast1")
    store = TrustStore()
    store.offer(data)
    assert store.to_bytes() == data
    restored = TrustStore.from_bytes(store.to_bytes())
    assert restored.to_bytes() == data and restored.capf_certificates() == store.capf_certificates()
    store.save(tmp_path / "CTLFile.tlv")
    assert TrustStore.load(tmp_path / "CTLFile.tlv").to_bytes() == data
    assert not TrustStore.load(tmp_path / "absent").has_ctl
    with pytest.raises(CtlRejected):
        TrustStore.from_bytes(data[:-1])


def test_auth5_signed_files_verify_with_the_tftp_certificate_in_the_ctl(pki):
    store = TrustStore()
    store.offer(ctl(pki, ["sast1", "sast2"], "sast1"))
    good = parse_sgn(sign_file(b"<device/>", "SEP1.cnf.xml.sgn", pki["tftp1"], TS))
    assert store.verify_signed_file(good) == pki["tftp1"].certificate
    altered = bytearray(sign_file(b"<device/>", "SEP1.cnf.xml.sgn", pki["tftp1"], TS))
    altered[-2] ^= 1
    with pytest.raises(SignatureError, match="bad signature"):
        store.verify_signed_file(parse_sgn(bytes(altered)))
    # Signed by a certificate the CTL lists only as CCM: refused.
    by_ccm = parse_sgn(sign_file(b"<device/>", "SEP1.cnf.xml.sgn", pki["cm1"], TS))
    with pytest.raises(SignatureError, match="is not a TFTP certificate in the CTL"):
        store.verify_signed_file(by_ccm)
