"""One simulated phone: what it holds and every security decision it makes while booting.

Sans-IO: the methods take the bytes a download produced and return what the phone decided (or raise
`BootFailure` naming the rule); `ccmsec_phone_sim.boot` does the networking. What a phone holds:

* a **MIC** (7970 only, issued by the manufacturer CA at "manufacture"); never overwritten or
  deleted, not even by a factory reset (CERT-1);
* an **LSC** installed through CAPF (7970, 7960, 7940); the small models hold no certificate
  at all and can only authenticate their firmware image (DEV-3);
* a **trust store** (`ccmsec.pki.truststore.TrustStore`): the first CTL is taken on trust,
  later ones only when signed by a token already trusted (CTL-2);
* **image anchors**: the image-signing certificate(s) built into the phone at manufacture.
  Firmware images are always signed (AUTH-1) with the TFTP certificate, also in non-secure mode,
  where the phone holds no CTL — so, as a real phone carries its vendor's image key, each
  simulated phone is manufactured with the cluster's image-signing certificate. An image verifies
  when its signer is one of these anchors or one of the CTL's TFTP certificates.

Boot decisions: a phone holding a CTL insists on `SEP<MAC>.cnf.xml.sgn` and verifies it with the
CTL's TFTP certificate (AUTH-5); without a CTL it takes the plain `.cnf.xml`. An altered image is
refused and the current one kept (AUTH-1). It opens TLS to call control only with a certificate,
a CTL holding a CallManager entry and a configuration saying authenticated or encrypted (AUTH-6),
presenting its LSC in preference to its MIC (CERT-2).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import ipaddress
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.domain import CapfAuthMode, DeviceSecurityMode
from ccmsec.formats.cnfxml import (
    CnfXmlError,
    DeviceConfig,
    Hardening,
    parse_cnf_xml,
    parse_default_cnf_xml,
)
from ccmsec.formats.ctl import CtlFormatError, SignatureError
from ccmsec.formats.sgn import SignedFile, parse_sgn, verify_sgn
from ccmsec.pki.ca import Issued, key_to_pem
from ccmsec.pki.truststore import CtlRejected, TrustStore
from ccmsec.wire.capf import PhoneCredentials

from ccmsec_phone_sim.models import ModelInfo, check_name, mac_of, model_info

CTL_FILE = "CTLFile.tlv"
DEFAULT_CONFIG = "XMLDefault.cnf.xml"
HISTORY = 32


class State(str, enum.Enum):
    OFF = "off"
    DOWNLOADING_CTL = "downloading-ctl"
    DOWNLOADING_CONFIG = "downloading-config"
    CAPF = "capf"
    DOWNLOADING_FIRMWARE = "downloading-firmware"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"


class SettingsLocked(Exception):
    """The phone's Settings menu does not open (settings access disabled, DEV-4; or phone off)."""


class BootFailure(Exception):
    """A step of the boot refused what it got. `code` is short (e.g. config-rejected), `reason`
    names the rule; `fatal` says whether the boot stops (the phone has nothing to run on)."""

    def __init__(self, code: str, reason: str, *, fatal: bool = True):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.fatal = fatal


def firmware_file_name(load: str) -> str:
    """The file a phone requests for its load: always the signed image (AUTH-1)."""
    return load if load.endswith(".sgn") else f"{load}.sgn"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class SccpPlan:
    """How the phone reaches call control, and why (AUTH-6)."""

    mode: DeviceSecurityMode  # what the connection provides
    reason: str

    @property
    def secure(self) -> bool:
        return self.mode.is_secure


@dataclass
class Phone:
    name: str
    model: str
    mic: Issued | None = None
    lsc: Issued | None = None
    trust: TrustStore = field(default_factory=TrustStore)
    image_anchors: list[x509.Certificate] = field(default_factory=list)
    firmware: str = ""
    auth_string: str | None = None  # typed on the phone (`ccmsec phones set-auth-string`)
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 of what it accepted
    config: DeviceConfig | None = None
    state: State = State.OFF
    last_failure: str = ""
    last_failure_reason: str = ""
    boots: int = 0
    pending_capf_key: object | None = None  # key generated for an install not yet stored
    web_address: str = ""
    registered_with: str = ""
    # The IP address and port the registration's connection reached (a host name resolved): what
    # a reset of one server (RST-9) matches against the node's addresses and SCCP ports, never the
    # name configured (nodes.py).
    registered_address: str = ""
    registered_port: int = 0
    fallback: bool = False  # registered with the SRST reference (SRST-1), not call control
    transport: str = ""
    certificate_in_use: str = ""
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    saved_state: State = State.OFF  # the state stored before a restart of the simulator
    # Where the phone goes instead of the cluster's servers (`ccmsec phones set-servers`), so it can
    # be tested against any TFTP, CAPF or call-control implementation: "host:port", "" = default.
    tftp_server: str = ""
    capf_server: str = ""
    call_control: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name)
        self.info: ModelInfo = model_info(self.model)
        self.model = self.info.model
        if not self.firmware:
            self.firmware = self.info.factory_image
        if self.mic is not None and not self.info.has_mic:
            raise ValueError(f"model {self.model} has no MIC (CERT-1/DEV-3)")

    @property
    def mac(self) -> str:
        return mac_of(self.name)

    # --- state ------------------------------------------------------------------------------------
    def enter(self, state: State) -> None:
        self.state = state
        self.history.append(f"{time.strftime('%H:%M:%S')} {state.value}")

    def clear_failure(self) -> None:
        """A new boot starts with a clean slate: what failed before stays in the history only."""
        self.last_failure = self.last_failure_reason = ""

    def record_failure(self, failure: BootFailure) -> None:
        self.last_failure, self.last_failure_reason = failure.code, failure.reason
        self.history.append(f"{time.strftime('%H:%M:%S')} {failure.code}: {failure.reason}")

    # --- CTL (CTL-2) ------------------------------------------------------------------------------
    def accept_ctl(self, data: bytes) -> bool:
        """Offer a downloaded CTL. True when installed (or identical to the one held); on refusal
        the phone keeps its current CTL and raises a non-fatal BootFailure naming CTL-2."""
        if self.trust.has_ctl and self.trust.to_bytes() == data:
            return True
        try:
            self.trust.offer(data)
        except CtlRejected as exc:
            raise BootFailure("ctl-rejected", f"CTL-2: {exc.reason}; keeping the current CTL",
                              fatal=False) from None
        self.files[CTL_FILE] = _sha256(data)
        return True

    # --- configuration (AUTH-5) -------------------------------------------------------------------
    def config_file_names(self) -> list[str]:
        """What to request, in order. With a CTL only signed files will do (AUTH-5)."""
        suffix = ".sgn" if self.trust.has_ctl else ""
        return [f"{self.name}.cnf.xml{suffix}", f"{DEFAULT_CONFIG}{suffix}"]

    def _verify_signed(self, requested: str, data: bytes, what: str, code: str) -> SignedFile:
        try:
            signed = parse_sgn(data)
        except CtlFormatError as exc:
            raise BootFailure(code, f"AUTH-5: {requested} is not a valid signed file: {exc}") from None
        if signed.header.file_name != requested:
            # A validly signed file for another name (e.g. another phone's config) is not ours.
            raise BootFailure(code, f"AUTH-5: {requested} carries the signed name "
                                    f"{signed.header.file_name!r}")
        try:
            self.trust.verify_signed_file(signed)
        except (SignatureError, ValueError) as exc:
            raise BootFailure(code, f"AUTH-5: {what} {requested} rejected: {exc}") from None
        return signed

    def accept_config(self, requested: str, data: bytes) -> DeviceConfig:
        """Check and parse a downloaded configuration; raises a fatal BootFailure on refusal."""
        if requested.endswith(".sgn"):
            payload = self._verify_signed(requested, data, "configuration", "config-rejected").payload
        elif self.trust.has_ctl:
            raise BootFailure("config-rejected", f"AUTH-5: the phone holds a CTL and refuses the "
                                                 f"unsigned {requested}")
        else:
            payload = data
        try:
            if requested.startswith(DEFAULT_CONFIG):
                config = self._from_default(payload)
            else:
                config = parse_cnf_xml(payload)
        except CnfXmlError as exc:
            raise BootFailure("config-rejected", f"{requested} is malformed: {exc}") from None
        if config.device_name != self.name:
            raise BootFailure("config-rejected", f"{requested} is for {config.device_name}, not {self.name}")
        self.config = config
        self.files[requested] = _sha256(data)
        return config

    def _from_default(self, payload: bytes) -> DeviceConfig:
        """XMLDefault.cnf.xml (auto-registration): its CallManager group and this model's load."""
        default = parse_default_cnf_xml(payload)
        load = next((image for model, image in default.loads
                     if model_info_safe(model) == self.model), None)
        return DeviceConfig(device_name=self.name, model=self.model, security_mode=DeviceSecurityMode.NON_SECURE,
                            call_managers=default.call_managers, load_information=load or None)

    # --- firmware (AUTH-1) ------------------------------------------------------------------------
    def firmware_wanted(self) -> str | None:
        """The load the configuration names, when it differs from the running image."""
        load = self.config.load_information if self.config else None
        if not load or load == self.firmware:
            return None
        return load

    def accept_firmware(self, load: str, data: bytes) -> None:
        """Verify the signed image; on any refusal keep the current image (AUTH-1, non-fatal)."""
        requested = firmware_file_name(load)
        try:
            signed = parse_sgn(data)
        except CtlFormatError as exc:
            raise self._image_refused(requested, f"not a signed image: {exc}") from None
        if signed.header.file_name != requested:
            raise self._image_refused(requested, f"signed as {signed.header.file_name!r}")
        anchors = {_der(c): c for c in [*self.image_anchors, *self.trust.tftp_certificates()]}
        if not anchors:
            raise self._image_refused(requested, "no image-signing certificate to verify it with")
        errors = []
        for cert in anchors.values():
            try:
                verify_sgn(signed, cert)
                break
            except SignatureError as exc:
                errors.append(str(exc))
        else:
            raise self._image_refused(requested, "; ".join(errors[-2:]))
        self.firmware = load
        self.files[requested] = _sha256(data)

    def _image_refused(self, requested: str, why: str) -> BootFailure:
        return BootFailure("firmware-rejected", f"AUTH-1: image {requested} rejected ({why}); "
                                                f"still running {self.firmware}", fatal=False)

    # --- hardening (DEV-4) ------------------------------------------------------------------------
    @property
    def hardening(self) -> Hardening:
        return self.config.hardening if self.config else Hardening()

    @property
    def web_server_enabled(self) -> bool:
        """webAccess off turns the server off — on models that can turn it off (DEV-3)."""
        return self.hardening.web_access or not self.info.web_server_disable

    def settings_in_force(self) -> dict[str, str]:
        h = self.hardening
        onoff = lambda v: "on" if v else "off"  # noqa: E731
        return {"webAccess": onoff(self.web_server_enabled), "pcPort": onoff(h.pc_port),
                "settingsAccess": onoff(h.settings_access), "garp": onoff(h.garp),
                "voiceVlanAccess": onoff(h.voice_vlan_access),
                "spanToPCPort": onoff(h.pc_port and h.span_to_pc_port)}

    def pc_port_status(self) -> str:
        """What a PC plugged into the phone's PC port gets (DEV-4)."""
        h = self.hardening
        if not h.pc_port:
            return "disabled: a PC plugged into the phone gets no link"
        return ("enabled: " + ("the PC may reach the voice VLAN" if h.voice_vlan_access
                               else "the PC is kept off the voice VLAN")
                + (", and the phone's traffic is mirrored to it" if h.span_to_pc_port else ""))

    def garp_status(self) -> str:
        return ("accepted (another host may take over the gateway's address)" if self.hardening.garp
                else "ignored: only answers to the phone's own ARP requests count")

    def settings_menu(self) -> list[tuple[str, str]]:
        """The Settings menu a user opens on the phone. DEV-4: with settingsAccess off it does not
        open (SettingsLocked); a phone that is off has no menu either."""
        if self.state is State.OFF or self.config is None:
            raise SettingsLocked(f"{self.name} is off or has no configuration yet; boot it first")
        if not self.hardening.settings_access:
            raise SettingsLocked(f"{self.name}: the Settings menu is locked (DEV-4: settings access "
                                 "is disabled in its configuration)")
        ctl = self.trust.ctl
        return [
            ("Device name", self.name), ("Model", self.model), ("MAC address", self.mac),
            ("Image", self.firmware),
            ("Call control", ", ".join(f"{m.host}:{m.ethernet_phone_port}/{m.secure_port}"
                                       for m in self.config.call_managers)),
            ("Security mode", self.config.security_mode.value),
            ("CTL", f"{len(ctl.records)} entries, signed by {ctl.header.signer_name}" if ctl else "none"),
            ("LSC", "installed" if self.lsc is not None else "not installed"),
            ("MIC", "installed" if self.mic is not None else "none"),
            ("Web access", "enabled" if self.web_server_enabled else "disabled"),
            ("PC port", self.pc_port_status()),
            ("Gratuitous ARP", self.garp_status()),
        ]

    # --- where the servers are (the configuration, unless overridden) ---------------------------
    def set_servers(self, *, tftp: str | None = None, capf: str | None = None,
                    call_control: Sequence[str] | None = None, clear: bool = False) -> None:
        """Point the phone at other servers (None keeps a setting, "" or [] clears it). Each
        address is checked first: nothing changes when one is bad (ValueError)."""
        checked = {}
        if tftp is not None:
            checked["tftp_server"] = normalise_server(tftp, TFTP_PORT, "TFTP") if tftp else ""
        if capf is not None:
            checked["capf_server"] = normalise_server(capf, CAPF_PORT, "CAPF") if capf else ""
        if call_control is not None:
            if len(call_control) > MAX_CALL_CONTROL:
                raise ValueError(f"at most {MAX_CALL_CONTROL} call-control addresses (a CallManager group)")
            checked["call_control"] = tuple(normalise_server(a, None, "call control") for a in call_control)
        if clear:
            self.tftp_server, self.capf_server, self.call_control = "", "", ()
        for name, value in checked.items():
            setattr(self, name, value)

    def tftp_address(self, default: tuple[str, int]) -> tuple[str, int]:
        return split_server(self.tftp_server, TFTP_PORT) if self.tftp_server else default

    def capf_address(self) -> tuple[str, int]:
        if self.capf_server:
            return split_server(self.capf_server, CAPF_PORT)
        capf = self.config.capf if self.config else None
        if capf is None:
            raise BootFailure("capf-failed", "the configuration names no CAPF server", fatal=False)
        return capf.host, capf.port

    def call_control_addresses(self, secure: bool) -> list[tuple[str, int]]:
        """Call control to try, in order: the overrides (a port of their own, else 2443 / 2000 by
        transport) or the configuration's CallManager group."""
        if self.call_control:
            return [split_server(a, SCCP_TLS_PORT if secure else SCCP_PORT) for a in self.call_control]
        members = self.config.call_managers if self.config else ()
        return [(m.host, m.secure_port if secure else m.ethernet_phone_port) for m in members]

    # --- CAPF (CERT-1, CERT-2, DEV-3) -------------------------------------------------------------
    def capf_operation(self) -> str:
        """The pending CAPF operation of the configuration, or "none"."""
        capf = self.config.capf if self.config else None
        return capf.operation.value if capf is not None and capf.operation else "none"

    def check_capf_possible(self) -> None:
        """Raise a non-fatal BootFailure when this phone cannot run the scheduled operation."""
        if not self.info.supports_lsc:
            raise BootFailure("capf-refused", f"DEV-3: model {self.model} supports image authentication "
                                              "only; it cannot hold an LSC", fatal=False)
        if not self.trust.capf_certificates():
            raise BootFailure("capf-failed", "no CAPF certificate in the CTL to authenticate CAPF with",
                              fatal=False)

    def capf_credentials(self, lsc_issuers: Sequence[x509.Certificate] = ()) -> PhoneCredentials:
        """What the phone brings to a CAPF session. `lsc_issuers`: CAs besides the CAPF
        certificate whose LSCs the phone stores (offline-CA mode: the third-party CA)."""
        capf = self.config.capf if self.config else None
        auth = (capf.auth_string if capf is not None and capf.auth_string else None) or self.auth_string
        return PhoneCredentials(
            self.name,
            mic_cert=self.mic.cert if self.mic else None, mic_key=self.mic.key if self.mic else None,
            lsc_cert=self.lsc.cert if self.lsc else None, lsc_key=self.lsc.key if self.lsc else None,
            auth_string=auth, auth_mode=self.capf_auth_mode(), capf_certificate=self.trust.capf_certificates()[0],
            pending_key=self.pending_capf_key, lsc_issuers=tuple(lsc_issuers),
        )

    def capf_auth_mode(self) -> CapfAuthMode:
        """How this phone proves itself to CAPF: its configuration's capfAuthMode, whatever the
        server asks for (issue 14)."""
        return self.config.capf_auth_mode if self.config else CapfAuthMode.NULL

    def capf_pending(self, retry_after: int) -> BootFailure:
        """Offline CA: CAPF holds the phone's CSR and said "retry later". Not a failure of the
        phone: it keeps its pending key (also across boots) and comes back."""
        return BootFailure("capf-pending", f"waiting for the CA to sign the CSR (CAPF asked to come "
                                           f"back in {retry_after} s; the key stays on the phone)",
                           fatal=False)

    def take_capf_result(self, creds: PhoneCredentials) -> bool:
        """Keep what CAPF changed — only ever the LSC (CERT-1). True when the LSC changed."""
        before = self.lsc.cert if self.lsc else None
        if creds.lsc_cert is not None:
            self.lsc = Issued(creds.lsc_cert, creds.lsc_key)
        else:
            self.lsc = None
        self.pending_capf_key = creds.pending_key
        after = self.lsc.cert if self.lsc else None
        if after is not None:
            self.files["LSC"] = _sha256(_der(after))
        else:
            self.files.pop("LSC", None)
        return (before is None) != (after is None) or (before is not None and _der(before) != _der(after))

    # --- call control (AUTH-6, CERT-2) ------------------------------------------------------------
    def sccp_plan(self) -> SccpPlan:
        wanted = self.config.security_mode if self.config else DeviceSecurityMode.NON_SECURE
        if not wanted.is_secure:
            return SccpPlan(DeviceSecurityMode.NON_SECURE, "configuration says non-secure")
        missing = []
        if self.lsc is None and self.mic is None:
            missing.append("no certificate (LSC or MIC)")
        if not self.trust.callmanager_certificates():
            missing.append("no CTL with a CallManager entry")
        if missing:
            return SccpPlan(DeviceSecurityMode.NON_SECURE, f"AUTH-6: configured {wanted.value} but "
                                                      f"{' and '.join(missing)}; no TLS")
        return SccpPlan(wanted, f"configured {wanted.value}")

    def tls_identity(self) -> tuple[str, Issued]:
        """CERT-2: the LSC takes precedence over the MIC."""
        if self.lsc is not None:
            return "LSC", self.lsc
        if self.mic is not None:
            return "MIC", self.mic
        raise ValueError("AUTH-6: no certificate")

    # --- factory reset (DEV-4, CERT-1) ------------------------------------------------------------
    def factory_reset(self) -> None:
        """Clears the CTL, the LSC, the configuration and the files held; never the MIC."""
        self.trust.clear()
        self.lsc = None
        self.pending_capf_key = None
        self.config = None
        self.files.clear()
        self.firmware = self.info.factory_image
        self.auth_string = None
        self.last_failure = self.last_failure_reason = ""
        self.enter(State.OFF)

    # --- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def pair(issued: Issued | None) -> dict | None:
            if issued is None:
                return None
            return {"cert": issued.pem.decode(), "key": key_to_pem(issued.key).decode()}

        return {
            "name": self.name, "model": self.model, "mic": pair(self.mic), "lsc": pair(self.lsc),
            "ctl": base64.b64encode(self.trust.to_bytes()).decode(),
            "image_anchors": [c.public_bytes(serialization.Encoding.PEM).decode() for c in self.image_anchors],
            "firmware": self.firmware, "auth_string": self.auth_string, "files": dict(self.files),
            "config": base64.b64encode(self.config.to_xml()).decode() if self.config else "",
            "state": self.state.value, "last_failure": self.last_failure,
            "last_failure_reason": self.last_failure_reason, "boots": self.boots,
            "pending_capf_key": key_to_pem(self.pending_capf_key).decode() if self.pending_capf_key else None,
            "history": list(self.history),
            "servers": {"tftp": self.tftp_server, "capf": self.capf_server, "call_control": list(self.call_control)},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Phone":
        def pair(v: dict | None) -> Issued | None:
            if not v:
                return None
            return Issued(x509.load_pem_x509_certificate(v["cert"].encode()),
                          serialization.load_pem_private_key(v["key"].encode(), None))

        ctl = base64.b64decode(d.get("ctl") or "")
        phone = cls(
            name=d["name"], model=d["model"], mic=pair(d.get("mic")), lsc=pair(d.get("lsc")),
            trust=TrustStore.from_bytes(ctl) if ctl else TrustStore(),
            image_anchors=[x509.load_pem_x509_certificate(p.encode()) for p in d.get("image_anchors", [])],
            firmware=d.get("firmware", ""), auth_string=d.get("auth_string"),
            files=dict(d.get("files", {})), last_failure=d.get("last_failure", ""),
            last_failure_reason=d.get("last_failure_reason", ""), boots=int(d.get("boots", 0)),
        )
        if d.get("config"):
            phone.config = parse_cnf_xml(base64.b64decode(d["config"]))
        if d.get("pending_capf_key"):
            phone.pending_capf_key = serialization.load_pem_private_key(d["pending_capf_key"].encode(), None)
        phone.history.extend(d.get("history", []))
        servers = d.get("servers") or {}
        phone.set_servers(tftp=servers.get("tftp", ""), capf=servers.get("capf", ""),
                          call_control=servers.get("call_control", []))
        # A phone comes back powered off; `saved_state` lets the owner power on those that were on.
        phone.saved_state = State(d.get("state", "off"))
        return phone


TFTP_PORT, CAPF_PORT, SCCP_PORT, SCCP_TLS_PORT = 69, 3804, 2000, 2443
MAX_CALL_CONTROL = 3
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def split_server(text: str, default_port: int | None) -> tuple[str, int | None]:
    """"host", "host:port" or "[v6]:port" → (host, port); ValueError naming what is wrong."""
    text = text.strip()
    if len(text) > 260:
        raise ValueError("server address too long")
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad server address {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise ValueError(f"{text!r} is not host[:port] (an IP address or a host name)") from None
    if port is None:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} of {text!r} is not 1..65535")
    return host, int(port)


def normalise_server(text: str, default_port: int | None, what: str) -> str:
    try:
        host, port = split_server(text, default_port)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port is not None else shown


def model_info_safe(model: str) -> str | None:
    try:
        return model_info(model).model
    except ValueError:
        return None

