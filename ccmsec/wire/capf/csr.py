"""Offline-CA extension: the PKCS#10 request a phone sends in a sign-certificate response (23).

The CSR (DER) travels in the CERTIFICATE element, nested form, type LSC: the protocol names no
separate CSR element. Both sides use these helpers: the phone builds it with its new key, the
server accepts it only when it proves that key and names the device.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .frames import CapfProtocolError
from .keys import spki_der


def build_csr(device_name: str, private_key) -> bytes:
    """The phone's PKCS#10 request (DER): subject CN = device name, signed by the phone's key
    (proof of possession for the third-party CA)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_name)]))
        .sign(private_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def decode_csr(der: bytes, device_name: str, public_key_der: bytes | None = None) -> x509.CertificateSigningRequest:
    """Accept a phone's CSR only if it parses, its signature verifies, its only CN is the device
    name, and (when given) its key is the one the phone reported in KEY_GEN_RESPONSE."""
    try:
        csr = x509.load_der_x509_csr(der)
        key = csr.public_key()
        valid = csr.is_signature_valid
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CapfProtocolError(f"SIGN_CERT_RESPONSE: not a DER PKCS#10 request: {exc}") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise CapfProtocolError("SIGN_CERT_RESPONSE: CSR key must be RSA or EC")
    if not valid:
        raise CapfProtocolError("SIGN_CERT_RESPONSE: CSR signature does not verify with its own key")
    if len(cns) != 1 or cns[0].value != device_name:
        got = [a.value for a in cns]
        raise CapfProtocolError(f"SIGN_CERT_RESPONSE: CSR subject CN {got!r} is not device {device_name!r}")
    if public_key_der is not None and spki_der(key) != public_key_der:
        raise CapfProtocolError("SIGN_CERT_RESPONSE: CSR is not for the key the phone generated")
    return csr
