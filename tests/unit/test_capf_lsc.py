"""LSC issuance, the CAPF certificate and chain checks (ccmsec.pki.lsc)."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ccmsec.pki.ca import create_ca, issue, issue_with_new_key, name, new_key
from ccmsec.pki.lsc import (
    LscError, LscIssuer, build_lsc_csr, capf_certificate_pem, ensure_capf_ca, import_third_party_lsc,
    issue_lsc, verify_lsc_chain, verify_mic_chain,
)
from ccmsec.wire.capf import CapfAuthError, CertType

DEVICE = "SEP001122334455"


@pytest.fixture(scope="module")
def capf(tmp_path_factory):
    return ensure_capf_ca(tmp_path_factory.mktemp("pki"), key_kind="ec256")


@pytest.fixture(scope="module")
def manufacturer():
    return create_ca(name("Manufacturer CA"), key=new_key("ec256"))


def test_chk2_capf_certificate_created_once_and_never_replaced(tmp_path):
    """CHK-2: CAPF is activated before the CTL is built; a restart must not change its certificate."""
    first = ensure_capf_ca(tmp_path, key_kind="ec256")
    again = ensure_capf_ca(tmp_path, key_kind="ec256")
    assert again.cert == first.cert
    assert stat.S_IMODE(os.stat(tmp_path / "capf.key").st_mode) == 0o600
    assert x509.load_pem_x509_certificate(capf_certificate_pem(tmp_path)) == first.cert
    (tmp_path / "capf.key").unlink()
    with pytest.raises(LscError, match="half a CAPF pair"):
        ensure_capf_ca(tmp_path)


def test_cert3_capf_certificate_is_a_ca_usable_for_tls(capf):
    """CERT-3: one CAPF certificate, a CA (pathlen 0, keyCertSign) that also carries TLS names."""
    bc = capf.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    ku = capf.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    san = capf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert bc.ca and bc.path_length == 0 and ku.key_cert_sign and ku.digital_signature
    assert "localhost" in san.get_values_for_type(x509.DNSName)


@pytest.mark.parametrize("kind", ["rsa1024", "rsa2048", "ec256"])
def test_issue_lsc_for_supported_keys(capf, kind):
    key = new_key(kind)
    cert = issue_lsc(capf, DEVICE, key.public_key())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEVICE
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert verify_lsc_chain(cert, capf.cert, device_name=DEVICE)[-1] == capf.cert


def test_issue_lsc_rsa4096_from_der(capf):
    from ccmsec.wire.capf import spki_der
    key = new_key("rsa4096")
    cert = issue_lsc(capf, DEVICE, spki_der(key.public_key()))
    assert cert.public_key().key_size == 4096


def test_issue_lsc_refuses_unsupported_keys(capf):
    with pytest.raises(LscError, match="secp256k1"):
        issue_lsc(capf, DEVICE, ec.generate_private_key(ec.SECP256K1()).public_key())


def test_verify_lsc_chain_refuses_foreign_issuer_wrong_device_and_expiry(capf):
    key = new_key("ec256")
    lsc = issue_lsc(capf, DEVICE, key.public_key())
    other = create_ca(name("Other CAPF"), key=new_key("ec256"))
    with pytest.raises(LscError, match="does not chain"):
        verify_lsc_chain(issue(other, name(DEVICE), key.public_key()), capf.cert)
    with pytest.raises(LscError, match="is not device"):
        verify_lsc_chain(lsc, capf.cert, device_name="SEP999999999999")
    with pytest.raises(LscError, match="does not chain"):
        verify_lsc_chain(lsc, capf.cert, at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=4000))


def test_cert1_mic_checked_against_manufacturer_ca_only(capf, manufacturer):
    """CERT-1: MICs come from the manufacturer CA; a CAPF-issued certificate is never a MIC."""
    mic = issue_with_new_key(manufacturer, name(f"CP-7960G-{DEVICE}"), "ec256")
    verify_mic_chain(mic.cert, [manufacturer.cert], device_name=DEVICE)
    lsc = issue_lsc(capf, DEVICE, new_key("ec256").public_key())
    with pytest.raises(LscError, match="MIC does not chain"):
        verify_mic_chain(lsc, [manufacturer.cert], device_name=DEVICE)
    with pytest.raises(LscError, match="LSC does not chain"):
        verify_lsc_chain(mic.cert, capf.cert)
    with pytest.raises(LscError, match="is not device"):
        verify_mic_chain(mic.cert, [manufacturer.cert], device_name="SEP999999999999")


def test_issuer_verify_device_certificate_maps_to_capf_auth_error(capf, manufacturer):
    issuer = LscIssuer(capf, [manufacturer.cert])
    mic = issue_with_new_key(manufacturer, name(DEVICE), "ec256")
    issuer.verify_device_certificate(DEVICE, CertType.MIC, mic.cert)
    with pytest.raises(CapfAuthError, match="LSC refused"):
        issuer.verify_device_certificate(DEVICE, CertType.LSC, mic.cert)
    with pytest.raises(CapfAuthError, match="no manufacturer CA"):
        LscIssuer(capf).verify_device_certificate(DEVICE, CertType.MIC, mic.cert)


async def test_issuer_signs_valid_lscs(capf):
    from ccmsec.wire.capf import spki_der
    der = await LscIssuer(capf).issue_lsc(DEVICE, spki_der(new_key("ec256").public_key()))
    verify_lsc_chain(x509.load_der_x509_certificate(der), capf.cert, device_name=DEVICE)


def test_offline_ca_csr_and_import(capf):
    third_party = create_ca(name("Enterprise CA"), key=new_key("ec256"))
    phone_key = new_key("ec256")
    csr = build_lsc_csr(DEVICE, phone_key)
    assert csr.is_signature_valid
    signed = issue(third_party, name(DEVICE), csr.public_key())
    assert import_third_party_lsc(signed, csr, DEVICE, third_party.cert) is signed
    with pytest.raises(LscError, match="not for the CSR's key"):
        import_third_party_lsc(issue(third_party, name(DEVICE), new_key("ec256").public_key()), csr, DEVICE,
                               third_party.cert)
    with pytest.raises(LscError, match="is not device"):
        import_third_party_lsc(issue(third_party, name("SEP999"), csr.public_key()), csr, DEVICE, third_party.cert)
    with pytest.raises(LscError, match="not signed by the given CA"):
        import_third_party_lsc(signed, csr, DEVICE, capf.cert)
