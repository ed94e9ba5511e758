"""The key a CAPF server asks a phone to generate, and the public keys phones report."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .frames import CapfProtocolError, Curve, Element, Frame, KeyType, u8, u16

RSA_SIZES = (1024, 2048, 4096)
_CURVE_NAMES = {Curve.P256: "secp256r1", Curve.P384: "secp384r1", Curve.P521: "secp521r1"}
_CURVE_CLASSES = {Curve.P256: ec.SECP256R1, Curve.P384: ec.SECP384R1, Curve.P521: ec.SECP521R1}


@dataclass(frozen=True)
class KeySpec:
    key_type: KeyType
    size: int | None = None     # RSA modulus bits
    curve: Curve | None = None  # EC curve

    @classmethod
    def parse(cls, kind: str) -> "KeySpec":
        """kind as stored in the database: rsa1024 | rsa2048 | rsa4096 | ec256 | ec384 | ec521."""
        table = {
            "rsa1024": cls(KeyType.RSA, 1024), "rsa2048": cls(KeyType.RSA, 2048),
            "rsa4096": cls(KeyType.RSA, 4096), "ec256": cls(KeyType.EC, curve=Curve.P256),
            "ec384": cls(KeyType.EC, curve=Curve.P384), "ec521": cls(KeyType.EC, curve=Curve.P521),
        }
        try:
            return table[kind]
        except KeyError:
            raise ValueError(f"unsupported CAPF key type {kind!r}") from None

    def elements(self) -> list[tuple[Element, bytes]]:
        out = [(Element.KEY_TYPE, u8(self.key_type))]
        if self.key_type is KeyType.RSA:
            out.append((Element.KEY_SIZE, u16(self.size or 0)))
        else:
            out.append((Element.CURVE, u8(self.curve if self.curve is not None else 0)))
        return out

    @classmethod
    def from_frame(cls, frame: Frame) -> "KeySpec":
        key_type = KeyType(frame.u8(Element.KEY_TYPE))
        if key_type is KeyType.RSA:
            size = frame.u16(Element.KEY_SIZE)
            if size not in RSA_SIZES:
                raise CapfProtocolError(f"KEY_GEN_REQUEST: unsupported RSA size {size}")
            return cls(key_type, size=size)
        return cls(key_type, curve=Curve(frame.u8(Element.CURVE)))

    def matches(self, public_key) -> bool:
        if self.key_type is KeyType.RSA:
            return isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == self.size
        return (isinstance(public_key, ec.EllipticCurvePublicKey)
                and public_key.curve.name == _CURVE_NAMES[self.curve])  # type: ignore[index]

    def generate(self):
        """A fresh private key of this kind (CPU-bound: RSA-4096 takes a second or more)."""
        if self.key_type is KeyType.RSA:
            return rsa.generate_private_key(public_exponent=65537, key_size=self.size)  # type: ignore[arg-type]
        return ec.generate_private_key(_CURVE_CLASSES[self.curve]())  # type: ignore[index]


def load_public_key(spki: bytes):
    try:
        key = serialization.load_der_public_key(spki)
    except (ValueError, TypeError) as exc:
        raise CapfProtocolError(f"PUBLIC_KEY is not a DER SubjectPublicKeyInfo: {exc}") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise CapfProtocolError("PUBLIC_KEY must be RSA or EC")
    return key


def spki_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
