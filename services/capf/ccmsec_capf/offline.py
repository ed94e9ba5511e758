"""Offline-CA mode: export the phones' CSRs, import the certificates a third-party CA signed.

With the enterprise parameter `issuer = offline`, a phone's install/upgrade session ends with its
CSR kept on the operation (state `awaiting_ca`, see ccmsec.wire.capf). The administrator exports
those CSRs, has the third-party CA sign them, and imports the answers here. An imported
certificate is accepted only when:

1. it is one X.509 certificate (PEM or DER);
2. its public key is the key of a CSR CAPF holds (that is how it finds its operation);
3. its CN is the device of that operation;
4. it is signed by, and verifies as a client certificate against, the configured third-party CA
   (`DATA/pki/lsc-third-party-ca.crt`, set once with `ccmsec capf set-ca FILE`);
5. the operation still awaits a certificate: one operation takes at most one.

Anything else is refused with the reason and nothing is written. An accepted certificate is
recorded like every issuance (capf_certificates: device, serial, fingerprint, operation, time,
outcome `issued`; operation state `issued`) and is delivered when the phone comes back.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ccmsec.db.capf import CsrRecord, SqlCapfStore, spki_sha256
from ccmsec.pki.lsc import LscError, import_third_party_lsc, load_one_certificate

MAX_IMPORT_FILES = 1000


@dataclass(frozen=True)
class ImportOutcome:
    name: str                               # the file name, as given
    accepted: bool
    reason: str                             # why refused; "" when accepted
    device: str = ""
    op_id: int = 0
    certificate: x509.Certificate | None = None


def csr_pem(record: CsrRecord) -> bytes:
    """The exported file body (`<device>.csr`)."""
    return x509.load_der_x509_csr(record.csr_der).public_bytes(serialization.Encoding.PEM)


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


async def import_certificate(store: SqlCapfStore, ca: x509.Certificate, name: str, data: bytes,
                             also=None) -> ImportOutcome:
    """Check one certificate file against the CSRs and the third-party CA; record it if good.
    `also(session, device, fingerprint)` adds to the recording transaction (the audit record)."""

    def refused(why: str, device: str = "", op_id: int = 0) -> ImportOutcome:
        return ImportOutcome(name, False, why, device, op_id)

    try:
        cert = load_one_certificate(data, name or "certificate")
    except LscError as exc:
        return refused(str(exc))
    key_sha = spki_sha256(cert.public_key())
    record = await store.csr_for_key(key_sha)
    if record is None:
        # Say "wrong key" rather than "unknown" when the CN names a device whose CSR waits.
        waiting = await store.csr_for_device(_cn(cert)) if _cn(cert) else None
        if waiting is not None:
            return refused(f"the certificate for {waiting.device_name} is not for the key of its CSR "
                           f"(operation {waiting.op_id})", waiting.device_name, waiting.op_id)
        return refused("the certificate's key matches no CSR CAPF exported")
    if record.state != "awaiting_ca":
        return refused(f"operation {record.op_id} of {record.device_name} is {record.state}, not awaiting a "
                       "certificate: one operation takes at most one", record.device_name, record.op_id)
    csr = x509.load_der_x509_csr(record.csr_der)
    try:
        import_third_party_lsc(cert, csr, record.device_name, ca)
    except LscError as exc:
        return refused(str(exc), record.device_name, record.op_id)
    der = cert.public_bytes(serialization.Encoding.DER)
    try:
        await store.record_imported(record.op_id, key_sha, der, also=also)
    except ValueError as exc:  # lost a race with another import of the same operation
        return refused(str(exc), record.device_name, record.op_id)
    return ImportOutcome(name, True, "", record.device_name, record.op_id, cert)
