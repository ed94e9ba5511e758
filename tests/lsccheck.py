"""Whether a phone's LSC is one the cluster's CAPF issued for that phone: shared by the chaos
suite's database test (local cluster) and the compose suite's (containers)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa


def lsc_problem(der: bytes, name: str, capf: x509.Certificate) -> str | None:
    """None when `der` is an LSC CAPF issued for `name`, else why not."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return f"not a certificate: {exc}"
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not cn or cn[0].value != name:
        return f"issued for {cert.subject.rfc4514_string()}"
    if cert.issuer != capf.subject:
        return f"issued by {cert.issuer.rfc4514_string()}"
    key = capf.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    except Exception as exc:  # noqa: BLE001 — InvalidSignature
        return f"signature does not verify with CAPF's key: {exc!r}"
    return None
