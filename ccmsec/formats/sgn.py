"""Signed files (`*.sgn`): the trust-list header (no records) followed by the original bytes
unchanged. We write version 1.0; other tools write 1.2 for the same layout, so any 1.x header is
read. A trust list (`CTLFile.tlv`, `ITLFile.tlv`: same header, records instead of a payload) is
refused by its file name, version 2.0 (`.enc.sgn`, LATER-1) by its version.

The header code is `ccmsec.formats.ctl`'s; this module only fixes the version and treats the body as
an opaque payload. Signing is a pure function over bytes, so a TFTP server can fan it out to a
process pool: pass a picklable signer (`ccmsec.pki.tokens.FileSigner` pickles as key bytes and
caches the loaded key per process), e.g.
`pool.submit(sign_file, payload, "SEP0011223344AA.cnf.xml.sgn", signer, timestamp)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from ccmsec.formats.ctl import (
    CtlFormatError,
    Digest,
    SignatureError,
    SignedContainer,
    Signer,
    build_signed,
    parse_header,
    serial_bytes,
    verify_signature,
)

SGN_VERSION = (1, 0)
# Firmware images are the largest signed files (a few MB); anything far beyond is not one.
MAX_SGN_SIZE = 64 * 1024 * 1024

__all__ = ["SGN_VERSION", "MAX_SGN_SIZE", "SignedFile", "SgnFormatError", "SignatureError", "sign_file",
           "parse_sgn", "verify_sgn"]


class SgnFormatError(CtlFormatError):
    """The bytes are not a well-formed `.sgn` file."""


@dataclass(frozen=True)
class SignedFile(SignedContainer):
    payload: bytes = field(repr=False)


def sign_file(payload: bytes, file_name: str, signer: Signer, timestamp: int,
              digest: Digest = Digest.SHA1) -> bytes:
    """`payload` signed as `file_name` (the name the phone requests, e.g.
    `SEP0011223344AA.cnf.xml.sgn`). Deterministic for the same inputs."""
    return build_signed(SGN_VERSION, bytes(payload), signer, file_name=file_name,
                        timestamp=timestamp, digest=digest)


def parse_sgn(data: bytes) -> SignedFile:
    """Split a `.sgn` file into header and payload. Raises SgnFormatError (a CtlFormatError)."""
    data = bytes(data)
    if len(data) > MAX_SGN_SIZE:
        raise SgnFormatError(f"file is {len(data)} bytes; signed files are limited to "
                             f"{MAX_SGN_SIZE // (1024 * 1024)} MiB")
    try:
        header, span = parse_header(data)
    except SgnFormatError:
        raise
    except CtlFormatError as exc:
        raise SgnFormatError(str(exc)) from None
    if header.version[0] != SGN_VERSION[0]:
        raise SgnFormatError(f"version {header.version[0]}.{header.version[1]} is not a signed "
                             "file (expected 1.x; 2.0 is an encrypted .enc.sgn file, not supported)")
    if header.file_name.lower().endswith(".tlv"):
        raise SgnFormatError(f"{header.file_name} is a trust list, not a signed file "
                             "(`ccmsec ctl show` reads trust lists)")
    return SignedFile(header=header, raw=data, signature_span=span,
                      payload=data[header.length:])


def verify_sgn(signed_file: SignedFile, certificate: x509.Certificate) -> None:
    """Check the signature with `certificate` (a TFTP or CCM+TFTP certificate from the CTL).

    Raises SignatureError naming the problem: signed by another certificate, or altered.
    """
    wanted = serial_bytes(certificate.serial_number).lstrip(b"\x00")
    if signed_file.header.signer_serial.lstrip(b"\x00") != wanted:
        raise SignatureError(f"{signed_file.header.file_name}: signed by serial "
                             f"{signed_file.header.signer_serial.hex()}, not by the given "
                             f"certificate (serial {certificate.serial_number:x})")
    verify_signature(signed_file, certificate)
