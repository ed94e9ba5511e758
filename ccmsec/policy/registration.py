"""Whether a Register is accepted, and how the registration is recorded — a pure function (call
control and the SRST reference decide with it).

Inputs are plain values (the SCCP `RegistrationRequest`, the device row, the cluster mode, the
phone-certificate trust anchors); the output is a `Verdict`. No sockets, no database.

Order of the checks (first failure wins, its rule id leads the reason):

1. MODE-4  unknown device: auto-registered as non-secure in a non-secure cluster, refused in
           mixed mode (auto-registration is off there).
2. DEV-3   the configured mode must be one the model can do — the configured model and the
           model the phone reports in Register (device type) both count.
3. DEV-1   the transport must match the effective mode: non-secure on 2000, authenticated on TLS
           with a NULL cipher (AUTH-7), encrypted on TLS with AES (ENC-1). In a non-secure cluster
           every device is effectively non-secure (MODE-3), whatever its row says.
4. AUTH-2 / CERT-2  on TLS the client certificate (already chain-checked by the TLS layer
           against the CAPF, third-party and manufacturer CAs) is classified LSC or MIC by its
           issuer; an LSC must verify as a client certificate (`verify_lsc_any`) against the CAPF
           CA or the offline third-party CA (`ccmsec capf set-ca`), a MIC against the
           manufacturer CA, and its CN must name this device (an LSC's CN is the device name; a
           MIC's CN is the name or ends with "-<name>").
5. MODE-7  mixed mode and an address in Register different from the TCP peer: accepted but
           flagged `nat_suspected` (the caller logs a warning).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from ccmsec.domain import CertificateKind, ClusterMode, DeviceSecurityMode
from ccmsec.pki.ca import fingerprint_sha256
from ccmsec.pki.lsc import LscError, verify_lsc_any
from ccmsec.pki.tls import (
    SccpTransportMode,
    TransportModeMismatch,
    check_transport_for_mode,
    transport_mode_of_cipher,
)
from ccmsec.policy.devices import PolicyViolation, capabilities, model_supports
from ccmsec.wire.sccp import RegistrationRequest

# SCCP device type (Register.device_type) -> catalogue model (values of the Skinny protocol).
DEVICE_TYPE_MODELS: dict[int, str] = {
    30006: "7970", 7: "7960", 8: "7940", 30007: "7912", 6: "7910", 20000: "7905G", 30008: "7902",
}
MODEL_DEVICE_TYPES: dict[str, int] = {v: k for k, v in DEVICE_TYPE_MODELS.items()}
# Model given to an auto-registered device whose device type we do not know.
AUTO_REGISTER_FALLBACK_MODEL = "7960"




@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """What registration needs from the `devices` row."""

    name: str
    model: str
    security_mode: str


@dataclass(frozen=True)
class PhoneTrust:
    """Issuers of phone certificates: the CAPF certificate and, in offline-CA mode, the
    third-party CA (LSCs), and the manufacturer CA (MICs)."""

    capf: x509.Certificate | None
    manufacturer: x509.Certificate | None
    third_party: x509.Certificate | None = None

    @property
    def lsc_anchors(self) -> list[x509.Certificate]:
        return [c for c in (self.capf, self.third_party) if c is not None]

    @property
    def tls_anchors(self) -> list[x509.Certificate]:
        """What the 2443 listener trusts for client certificates."""
        return [*self.lsc_anchors, *([self.manufacturer] if self.manufacturer is not None else [])]


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ""            # "<RULE>: why" when refused; "" when accepted
    rule: str = ""
    device: DeviceRecord | None = None   # the device as registered (model, effective mode)
    auto_registered: bool = False        # the caller must create the device row
    certificate_kind: CertificateKind | None = None
    certificate_fingerprint: str = ""
    nat_suspected: bool = False          # MODE-7
    phone_text: str = ""                 # what RegisterReject carries (31 ASCII characters)

    @classmethod
    def refuse(cls, rule: str, text: str, phone_text: str = "") -> "Verdict":
        """`text` is the full reason (logs, refusals list); `phone_text` a version that fits the
        phone's 31-character display when the full one would be cut (e.g. in a device name)."""
        return cls(False, f"{rule}: {text}", rule, phone_text=phone_text)

    @property
    def reject_text(self) -> str:
        return self.phone_text or self.reason


def model_of_device_type(device_type: int) -> str | None:
    return DEVICE_TYPE_MODELS.get(device_type)


def effective_mode(configured: str, cluster_mode: str) -> DeviceSecurityMode:
    """MODE-3: in a non-secure cluster every device runs non-secure."""
    return DeviceSecurityMode.parse(configured).effective(cluster_mode)


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate | None) -> bool:
    if issuer is None or cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_lsc(cert: x509.Certificate, trust: PhoneTrust, device: str,
              anchors: list[x509.Certificate] | None = None) -> str:
    """"" when the LSC verifies as this device's client certificate against an LSC anchor whose
    name is its issuer (one signature check, not one per anchor); otherwise why not.
    `anchors`: those anchors when the caller has already picked them by the issuer's name."""
    if anchors is None:
        issuer = cert.issuer
        anchors = [a for a in trust.lsc_anchors if a.subject == issuer]
    if not anchors:
        return "certificate is neither an LSC from CAPF or the third-party CA nor a MIC"
    try:
        verify_lsc_any(cert, anchors, device_name=device)
    except LscError as exc:
        return f"LSC refused: {exc}"
    return ""


def certificate_names_device(cert: x509.Certificate, kind: CertificateKind, device: str) -> bool:
    cn = _common_name(cert)
    if kind is CertificateKind.MIC:
        return cn == device or cn.endswith("-" + device)
    return cn == device


def decide(request: RegistrationRequest, device: DeviceRecord | None, cluster_mode: str,
           trust: PhoneTrust) -> Verdict:
    """The registration decision for one Register (see the module docstring for the order)."""
    name = request.device_name
    reported_model = model_of_device_type(request.register.device_type)
    auto = False
    if device is None:
        if cluster_mode == ClusterMode.MIXED:
            return Verdict.refuse("MODE-4", f"unknown device {name}: auto-registration is off "
                                            "in mixed mode", phone_text=f"MODE-4: unknown {name}")
        device = DeviceRecord(name, reported_model or AUTO_REGISTER_FALLBACK_MODEL,
                              DeviceSecurityMode.NON_SECURE)
        auto = True

    mode = effective_mode(device.security_mode, cluster_mode)
    for model in {device.model, reported_model} - {None}:
        try:
            if not model_supports(model, mode):  # type: ignore[arg-type]
                return Verdict.refuse("DEV-3", f"model {capabilities(model).model} cannot be {mode}")  # type: ignore[arg-type]
        except PolicyViolation as exc:
            return Verdict.refuse(exc.rule_id, exc.reason)

    try:
        transport = (transport_mode_of_cipher(request.tls_cipher)
                     if request.secure and request.tls_cipher else SccpTransportMode.NON_SECURE)
    except TransportModeMismatch as exc:      # a cipher that is neither AES nor NULL
        return Verdict.refuse("DEV-1", str(exc))
    try:
        check_transport_for_mode(mode, transport)
    except TransportModeMismatch as exc:
        # An encrypted device on an integrity-only channel breaks ENC-1; other mismatches DEV-1.
        rule = "ENC-1" if mode is DeviceSecurityMode.ENCRYPTED and transport is SccpTransportMode.AUTHENTICATED \
            else "DEV-1"
        return Verdict.refuse(rule, str(exc))

    kind, fingerprint = None, ""
    if transport is not SccpTransportMode.NON_SECURE:
        cert = request.peer_certificate
        if not isinstance(cert, x509.Certificate):
            return Verdict.refuse("AUTH-2", "no client certificate on the TLS connection")
        # An issuer named like an LSC anchor is checked as an LSC (chain, usage, validity);
        # anything else must be a MIC signed by the manufacturer CA.
        issuer = cert.issuer  # parsed once, compared with each LSC anchor
        lsc_anchors = [a for a in trust.lsc_anchors if a.subject == issuer]
        if lsc_anchors:
            found = CertificateKind.LSC
        elif _issued_by(cert, trust.manufacturer):
            found = CertificateKind.MIC
        else:
            return Verdict.refuse("CERT-2", "certificate is neither an LSC from CAPF or the "
                                            "third-party CA nor a MIC")
        if not certificate_names_device(cert, found, name):
            return Verdict.refuse("AUTH-2", f"{found.value} is for {_common_name(cert)!r}, "
                                            f"not {name}")
        if found is CertificateKind.LSC:
            problem = check_lsc(cert, trust, name, lsc_anchors)
            if problem:
                return Verdict.refuse("CERT-2", problem)
        kind, fingerprint = found, fingerprint_sha256(cert)

    peer_ip = request.peer_address[0] if request.peer_address else ""
    nat = cluster_mode == ClusterMode.MIXED and bool(peer_ip) and request.register.ip_address != peer_ip
    return Verdict(True, device=DeviceRecord(device.name, device.model, mode.value),
                   auto_registered=auto, certificate_kind=kind,
                   certificate_fingerprint=fingerprint, nat_suspected=nat)
