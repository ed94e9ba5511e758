"""A phone's trust store: the CTL it currently trusts (CTL-2).

The first CTL is taken on trust once it is self-consistent (its signature verifies with a token
record listed in it). After that a new CTL is accepted only when it is signed by a token that is
already in the current CTL: the new file's signer certificate must be byte-for-byte one of the
current token certificates and the signature must verify with it. A CTL older than the current one
(by header timestamp) is refused as a replay. Factory reset (`clear()`) forgets the CTL.

The store serialises to the CTL bytes themselves.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from ccmsec.formats.ctl import (
    CtlFile,
    CtlFormatError,
    Role,
    SignatureError,
    parse_ctl,
    serial_bytes,
    verify_ctl,
    verify_signature,
)
from ccmsec.formats.sgn import SignedFile
from ccmsec.fsutil import atomic_write


class CtlRejected(ValueError):
    """The offered CTL was refused; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TrustStore:
    def __init__(self) -> None:
        self._ctl: CtlFile | None = None

    @property
    def ctl(self) -> CtlFile | None:
        return self._ctl

    @property
    def has_ctl(self) -> bool:
        return self._ctl is not None

    def offer(self, ctl_bytes: bytes) -> CtlFile:
        """Install `ctl_bytes` if CTL-2 allows it; raises CtlRejected with the reason otherwise."""
        try:
            candidate = parse_ctl(ctl_bytes)
        except CtlFormatError as exc:
            raise CtlRejected(f"malformed CTL: {exc}") from None
        try:
            signer = verify_ctl(candidate)
        except SignatureError as exc:
            raise CtlRejected(f"CTL is not self-consistent: {exc}") from None
        current = self._ctl
        if current is not None:
            trusted = [r for r in current.records_for_role(Role.TOKEN)
                       if r.certificate_der == signer.certificate_der]
            if not trusted:
                raise CtlRejected(
                    f"CTL signed by {signer.subject} (serial {signer.serial.hex()}), which is not "
                    "a token in the current CTL (CTL-2)")
            try:  # verify again with the certificate we already trust, not the one offered
                verify_signature(candidate, trusted[0].certificate)
            except SignatureError as exc:
                raise CtlRejected(f"CTL signature does not verify with the trusted token: {exc}") \
                    from None
            if candidate.header.timestamp < current.header.timestamp:
                raise CtlRejected(
                    f"CTL timestamp {candidate.header.timestamp} is older than the current CTL's "
                    f"{current.header.timestamp} (replay of an old CTL)")
        self._ctl = candidate
        return candidate

    def clear(self) -> None:
        """Factory reset: forget the CTL (the next one offered is trusted on first use)."""
        self._ctl = None

    # --- lookups --------------------------------------------------------------------------------
    def certificates_for_role(self, *roles: Role) -> list[x509.Certificate]:
        if self._ctl is None:
            return []
        return [r.certificate for r in self._ctl.records_for_role(*roles)]

    def token_certificates(self) -> list[x509.Certificate]:
        return self.certificates_for_role(Role.TOKEN)

    def tftp_certificates(self) -> list[x509.Certificate]:
        return self.certificates_for_role(Role.TFTP, Role.CCM_TFTP)

    def callmanager_certificates(self) -> list[x509.Certificate]:
        return self.certificates_for_role(Role.CCM, Role.CCM_TFTP)

    def capf_certificates(self) -> list[x509.Certificate]:
        return self.certificates_for_role(Role.CAPF)

    def verify_signed_file(self, signed_file: SignedFile) -> x509.Certificate:
        """AUTH-5: verify a `.sgn` file with the TFTP certificate named by its header serial."""
        serial = signed_file.header.signer_serial.lstrip(b"\x00")
        for cert in self.tftp_certificates():
            if serial_bytes(cert.serial_number).lstrip(b"\x00") == serial:
                verify_signature(signed_file, cert)
                return cert
        header = signed_file.header
        raise SignatureError(f"{header.file_name}: signer {header.signer_name} (serial "
                             f"{header.signer_serial.hex()}) is not a TFTP certificate in the CTL")

    # --- persistence ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The current CTL bytes (empty when there is none)."""
        return b"" if self._ctl is None else self._ctl.raw

    @classmethod
    def from_bytes(cls, data: bytes) -> "TrustStore":
        """Restore a store; the stored CTL is checked like a first CTL."""
        store = cls()
        if data:
            store.offer(data)
        return store

    def save(self, path: Path) -> None:
        atomic_write(path, self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> "TrustStore":
        try:
            return cls.from_bytes(Path(path).read_bytes())
        except FileNotFoundError:
            return cls()

    def __repr__(self) -> str:
        if self._ctl is None:
            return "TrustStore(empty)"
        signer = self._ctl.header.signer_name
        return f"TrustStore({len(self._ctl.records)} records, signed by {signer!r})"

