"""Certificate authentication in the convention real CAPF phones and servers use.

A phone proving itself with its LSC or MIC signs `device name (ASCII) | 0x00 | certificate (DER)`
with that certificate's key, twice: SHA-1 in SIGNED_DATA (element 6, the bare signature) and
SHA-512 in SIGNED_DATA_SHA2 (element 20, `uint8 hash | uint16 length | signature`). An RSA
signature is PKCS#1 type-1 padding over the bare digest (no DigestInfo); an EC one is ordinary
ECDSA over the bytes. A phone sends both (some servers require both); a server accepts a response
carrying either, and refuses one where any signature present fails.
"""

from __future__ import annotations

import hmac

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ccmsec.pki.rawrsa import sign_digest_pkcs1

from .frames import Element, HashAlgorithm, decode_signed_data_sha2, encode_signed_data_sha2

_HASHES: dict[HashAlgorithm, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA1: hashes.SHA1, HashAlgorithm.SHA256: hashes.SHA256, HashAlgorithm.SHA512: hashes.SHA512,
}


class CapfAuthError(ValueError):
    """The phone's credential (auth string, LSC or MIC signature) was refused."""


def auth_payload(device_name: str, cert_der: bytes) -> bytes:
    """What the phone signs: its name, a NUL, its certificate."""
    return device_name.encode("ascii") + b"\x00" + cert_der


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _sign(private_key, data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return sign_digest_pkcs1(private_key, _digest(algorithm, data))
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(algorithm))
    raise CapfAuthError("the certificate key is neither RSA nor EC")


def sign_auth(private_key, device_name: str, cert_der: bytes) -> list[tuple[Element, bytes]]:
    """The two signature elements a phone adds to its auth response (SHA-1, then SHA-512)."""
    data = auth_payload(device_name, cert_der)
    return [
        (Element.SIGNED_DATA, _sign(private_key, data, hashes.SHA1())),
        (Element.SIGNED_DATA_SHA2, encode_signed_data_sha2(HashAlgorithm.SHA512,
                                                           _sign(private_key, data, hashes.SHA512()))),
    ]


def _verify(public_key, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm) -> bool:
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            recovered = public_key.recover_data_from_signature(signature, padding.PKCS1v15(), None)
            return hmac.compare_digest(recovered, _digest(algorithm, data))
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(algorithm))
            return True
    except (InvalidSignature, ValueError):
        return False
    raise CapfAuthError("the certificate key is neither RSA nor EC")


def verify_auth_signatures(cert: x509.Certificate, device_name: str, signed_data: bytes | None,
                           signed_data_sha2: bytes | None) -> None:
    """Raise CapfAuthError unless at least one signature is present and every one present is the
    certificate key's over the device name and the certificate. `signed_data_sha2` is the raw
    element 20 value (hash id, length, signature)."""
    if signed_data is None and signed_data_sha2 is None:
        raise CapfAuthError("certificate authentication without a signature")
    data = auth_payload(device_name, cert.public_bytes(serialization.Encoding.DER))
    key = cert.public_key()
    if signed_data is not None and not _verify(key, signed_data, data, hashes.SHA1()):
        raise CapfAuthError("authentication signature (SHA-1) does not verify with the presented certificate")
    if signed_data_sha2 is not None:
        hash_id, signature = decode_signed_data_sha2(signed_data_sha2)
        if not _verify(key, signature, data, _HASHES[hash_id]()):
            raise CapfAuthError(f"authentication signature ({hash_id.name}) does not verify with the "
                                "presented certificate")
