"""Phone configuration files: `SEP<MAC>.cnf.xml` (one per device) and `XMLDefault.cnf.xml`.

Element names follow the real files where they are public (the
usecallmanager.nz description of SEPMAC.cnf.xml): `deviceProtocol`, `deviceSecurityMode`,
`devicePool/callManagerGroup/members/member[@priority]/callManager/{ports/ethernetPhonePort,
processNodeName}`, `devicePool/srstInfo/{srstOption, ipAddr1..3, port1..3, isSecure}`,
`loadInformation`, `loadServer`, `capfAuthMode`, `capfList/capf/{phonePort, processNodeName}`,
`certHash`, `encrConfig`, `vendorConfig/{webAccess, pcPort, settingsAccess, garp, voiceVlanAccess,
spanToPCPort}`.

Elements this project chose because the real ones are not public (documented here on purpose):
- `deviceName`, `model` (top level): the device the file is for, so a phone can check it.
- `callManager/ports/securedEthernetPhonePort`: the SCCP-over-TLS port (2443).
- `srstInfo/srstCertificate`: the SRST gateway certificate (CERT-6), base64 of the DER; a phone
  pins it as the only certificate it accepts from the SRST router over TLS (not the CTL).
- `srstInfo/securePort1..3`: the SCCP-over-TLS port of each SRST address (2443), next to the
  public `port1..3` (clear SCCP, 2000); a secure phone uses it when `isSecure` is true.
- `capfOperation` (top level) with `operation` (none | install | upgrade | delete |
  troubleshoot), `authString` (digits, for capfAuthMode 1), `keyType` (RSA | EC),
  `keySize` (RSA bits) and `curve` (P-256 | P-384 | P-521, for EC): what CAPF has pending
  for the phone. The file is signed, not encrypted, unless `encrConfig` is true — the
  authentication string is a one-time value, as in the real product where the user keys it in.

No keepalive interval, on purpose: the real file has no element for it (the interval is each
node's service parameter, sent in its RegisterAck; `mgcpPorts/keepAlive` is an MGCP UDP port, not
an interval) — docs/tftp.md "No keepalive interval in SEP<MAC>.cnf.xml".

vendorConfig values use the phones' numeric convention: webAccess, pcPort, garp,
voiceVlanAccess: 0 = enabled, 1 = disabled; settingsAccess and spanToPCPort: 1 = enabled,
0 = disabled. In Python every hardening field is a bool meaning "enabled". A missing element
means the phone's factory behaviour: every feature on except span to PC port.

Parsing is defensive: input is bounded in size, any DOCTYPE or entity declaration is refused
before the stdlib parser sees it (no entity expansion, no external fetches), and every bad
value raises `CnfXmlError` (a ValueError) naming the element.
"""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ccmsec.domain import CapfAuthMode, CapfOperation, DeviceSecurityMode, DomainError

MAX_CNF_XML = 64 * 1024  # phones of this era choke on larger files; so do we
MAX_TEXT = 1024

# deviceSecurityMode, capfAuthMode and capfOperation/operation are spelled by ccmsec.domain
# (DeviceSecurityMode.to_xml / CapfAuthMode.to_xml / CapfOperation); "none" = no operation.
NO_CAPF_OPERATION = "none"
KEY_TYPES = ("RSA", "EC")
CURVES = ("P-256", "P-384", "P-521")
SRST_OPTIONS = ("Disable", "Enable", "User Specific")

_DEVICE_NAME = re.compile(r"SEP[0-9A-F]{12}")
_HEX_HASH = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_FORBIDDEN = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class CnfXmlError(ValueError):
    """A configuration file or value is malformed; the message names the element."""


def _word(cls, value, element: str):
    """A vocabulary member from a member or its text; CnfXmlError naming the element otherwise."""
    try:
        return cls.parse(value)
    except DomainError as exc:
        raise CnfXmlError(f"{element}: {exc}") from None


def _from_xml(cls, number: int | None, element: str):
    try:
        return cls.from_xml(number)
    except DomainError as exc:
        raise CnfXmlError(f"{element}: {exc}") from None


def _operation(text: str | None) -> CapfOperation | None:
    if not text or text == NO_CAPF_OPERATION:
        return None
    return _word(CapfOperation, text, "capfOperation")


def _check_port(value: int, what: str) -> None:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise CnfXmlError(f"{what}: port {value!r} not in 1..65535")


def _check_text(value: str, what: str) -> None:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise CnfXmlError(f"{what}: text missing or longer than {MAX_TEXT}")


@dataclass(frozen=True)
class CallManagerMember:
    host: str
    ethernet_phone_port: int = 2000
    secure_port: int = 2443

    def __post_init__(self) -> None:
        if not self.host:
            raise CnfXmlError("callManager: empty processNodeName")
        _check_text(self.host, "processNodeName")
        _check_port(self.ethernet_phone_port, "ethernetPhonePort")
        _check_port(self.secure_port, "securedEthernetPhonePort")


@dataclass(frozen=True)
class SrstInfo:
    option: str = "Disable"
    addresses: tuple[str, ...] = ()  # ipAddr1..3
    ports: tuple[int, ...] = ()  # port1..3, default 2000 each
    is_secure: bool = False
    certificate: bytes | None = None  # DER of the SRST gateway certificate (CERT-6)
    secure_ports: tuple[int, ...] = ()  # securePort1..3 (ours), default 2443 each

    def __post_init__(self) -> None:
        if self.option not in SRST_OPTIONS:
            raise CnfXmlError(f"srstOption {self.option!r} not one of {SRST_OPTIONS}")
        if len(self.addresses) > 3 or len(self.ports) > 3:
            raise CnfXmlError("srstInfo: at most three addresses and ports")
        for address in self.addresses:
            _check_text(address, "srstInfo ipAddr")
        for port in self.ports:
            _check_port(port, "srstInfo port")
        if len(self.secure_ports) > 3:
            raise CnfXmlError("srstInfo: at most three secure ports")
        for port in self.secure_ports:
            _check_port(port, "srstInfo securePort")
        if self.certificate is not None and len(self.certificate) > 16 * 1024:
            raise CnfXmlError("srstCertificate larger than 16 KiB")

    def secure_port(self, index: int) -> int:
        """The TLS port of address `index` (2443 unless the file says otherwise)."""
        return self.secure_ports[index] if index < len(self.secure_ports) else 2443


@dataclass(frozen=True)
class CapfSettings:
    host: str
    port: int = 3804
    operation: CapfOperation | None = None  # None: nothing pending ("none" in the file)
    auth_string: str | None = None
    key_type: str = "RSA"
    key_size: int | None = 2048
    curve: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise CnfXmlError("capf: empty processNodeName")
        _check_text(self.host, "capf processNodeName")
        _check_port(self.port, "capf phonePort")
        if self.operation is not None:
            object.__setattr__(self, "operation", _word(CapfOperation, self.operation, "capfOperation"))
        if self.auth_string is not None and not re.fullmatch(r"[0-9]{4,10}", self.auth_string):
            raise CnfXmlError("capf authString must be 4 to 10 digits")
        if self.key_type not in KEY_TYPES:
            raise CnfXmlError(f"capf keyType {self.key_type!r} not one of {KEY_TYPES}")
        if self.key_size is not None and self.key_size not in (512, 1024, 2048, 3072, 4096):
            raise CnfXmlError(f"capf keySize {self.key_size} not a supported RSA size")
        if self.curve is not None and self.curve not in CURVES:
            raise CnfXmlError(f"capf curve {self.curve!r} not one of {CURVES}")


@dataclass(frozen=True)
class Hardening:
    """DEV-4 phone hardening; True means the feature is enabled. The defaults are the phone's
    factory behaviour: everything on, except mirroring its traffic to the PC port."""

    web_access: bool = True
    pc_port: bool = True
    settings_access: bool = True
    garp: bool = True
    voice_vlan_access: bool = True
    span_to_pc_port: bool = False

    @classmethod
    def all_off(cls) -> Hardening:
        return cls(False, False, False, False, False, False)


@dataclass(frozen=True)
class DeviceConfig:
    device_name: str
    model: str
    security_mode: DeviceSecurityMode = DeviceSecurityMode.NON_SECURE
    call_managers: tuple[CallManagerMember, ...] = ()
    srst: SrstInfo | None = None
    capf_auth_mode: CapfAuthMode = CapfAuthMode.NULL
    capf: CapfSettings | None = None
    cert_hash: str | None = None
    encr_config: bool = False
    load_information: str | None = None
    load_server: str | None = None  # alternate TFTP server for firmware images
    hardening: Hardening = field(default_factory=Hardening)
    protocol: str = "SCCP"

    def __post_init__(self) -> None:
        if not _DEVICE_NAME.fullmatch(self.device_name or ""):
            raise CnfXmlError(f"deviceName {self.device_name!r} is not SEP followed by 12 upper-case hex digits")
        if not self.model:
            raise CnfXmlError("model: empty")
        _check_text(self.model, "model")
        object.__setattr__(self, "security_mode",
                           _word(DeviceSecurityMode, self.security_mode, "deviceSecurityMode"))
        if not 1 <= len(self.call_managers) <= 3:
            raise CnfXmlError(f"callManagerGroup needs 1 to 3 members, got {len(self.call_managers)}")
        object.__setattr__(self, "capf_auth_mode", _word(CapfAuthMode, self.capf_auth_mode, "capfAuthMode"))
        if self.cert_hash is not None and not _HEX_HASH.fullmatch(self.cert_hash):
            raise CnfXmlError("certHash must be an MD5, SHA-1 or SHA-256 hex digest")
        for value, what in ((self.load_information, "loadInformation"), (self.load_server, "loadServer")):
            if value is not None:
                _check_text(value, what)
        if self.protocol not in ("SCCP", "SIP"):
            raise CnfXmlError(f"deviceProtocol {self.protocol!r} not SCCP or SIP")

    @property
    def filename(self) -> str:
        return f"{self.device_name}.cnf.xml"

    def to_xml(self) -> bytes:
        """Deterministic serialisation: same config, same bytes (so signatures are stable)."""
        root = ET.Element("device")
        _sub(root, "deviceProtocol", self.protocol)
        _sub(root, "deviceName", self.device_name)
        _sub(root, "model", self.model)
        _sub(root, "deviceSecurityMode", str(self.security_mode.to_xml()))
        pool = _sub(root, "devicePool")
        _call_manager_group(pool, self.call_managers)
        if self.srst is not None:
            _srst(pool, self.srst)
        if self.load_information is not None:
            _sub(root, "loadInformation", self.load_information)
        if self.load_server is not None:
            _sub(root, "loadServer", self.load_server)
        _sub(root, "capfAuthMode", str(self.capf_auth_mode.to_xml()))
        if self.capf is not None:
            capf = _sub(_sub(root, "capfList"), "capf")
            _sub(capf, "phonePort", str(self.capf.port))
            _sub(capf, "processNodeName", self.capf.host)
            op = _sub(root, "capfOperation")
            _sub(op, "operation", self.capf.operation.value if self.capf.operation else NO_CAPF_OPERATION)
            if self.capf.auth_string is not None:
                _sub(op, "authString", self.capf.auth_string)
            _sub(op, "keyType", self.capf.key_type)
            if self.capf.key_size is not None:
                _sub(op, "keySize", str(self.capf.key_size))
            if self.capf.curve is not None:
                _sub(op, "curve", self.capf.curve)
        if self.cert_hash is not None:
            _sub(root, "certHash", self.cert_hash)
        _sub(root, "encrConfig", "true" if self.encr_config else "false")
        vendor = _sub(root, "vendorConfig")
        h = self.hardening
        _sub(vendor, "webAccess", "0" if h.web_access else "1")
        _sub(vendor, "pcPort", "0" if h.pc_port else "1")
        _sub(vendor, "settingsAccess", "1" if h.settings_access else "0")
        _sub(vendor, "garp", "0" if h.garp else "1")
        _sub(vendor, "voiceVlanAccess", "0" if h.voice_vlan_access else "1")
        _sub(vendor, "spanToPCPort", "1" if h.span_to_pc_port else "0")
        return _serialise(root)


@dataclass(frozen=True)
class DefaultConfig:
    """`XMLDefault.cnf.xml`: what a phone without its own file (auto-registration) gets."""

    call_managers: tuple[CallManagerMember, ...]
    loads: tuple[tuple[str, str], ...] = ()  # (model, firmware image name)

    FILENAME = "XMLDefault.cnf.xml"

    def __post_init__(self) -> None:
        if not 1 <= len(self.call_managers) <= 3:
            raise CnfXmlError(f"callManagerGroup needs 1 to 3 members, got {len(self.call_managers)}")
        for model, image in self.loads:
            _check_text(model, "loadInformation model")
            _check_text(image, "loadInformation")

    def to_xml(self) -> bytes:
        root = ET.Element("Default")
        _call_manager_group(root, self.call_managers)
        for model, image in self.loads:
            _sub(root, "loadInformation", image).set("model", model)
        return _serialise(root)


# --- writing ----------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def _serialise(root: ET.Element) -> bytes:
    ET.indent(root, space="  ")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def _call_manager_group(parent: ET.Element, members: tuple[CallManagerMember, ...]) -> None:
    container = _sub(_sub(parent, "callManagerGroup"), "members")
    for priority, member in enumerate(members):
        element = _sub(container, "member")
        element.set("priority", str(priority))
        cm = _sub(element, "callManager")
        ports = _sub(cm, "ports")
        _sub(ports, "ethernetPhonePort", str(member.ethernet_phone_port))
        _sub(ports, "securedEthernetPhonePort", str(member.secure_port))
        _sub(cm, "processNodeName", member.host)


def _srst(parent: ET.Element, srst: SrstInfo) -> None:
    element = _sub(parent, "srstInfo")
    _sub(element, "srstOption", srst.option)
    for i in range(3):
        _sub(element, f"ipAddr{i + 1}", srst.addresses[i] if i < len(srst.addresses) else "")
        _sub(element, f"port{i + 1}", str(srst.ports[i] if i < len(srst.ports) else 2000))
        if i < len(srst.secure_ports):
            _sub(element, f"securePort{i + 1}", str(srst.secure_ports[i]))
    _sub(element, "isSecure", "true" if srst.is_secure else "false")
    if srst.certificate is not None:
        _sub(element, "srstCertificate", base64.b64encode(srst.certificate).decode("ascii"))


# --- reading ----------------------------------------------------------------------------------


class _NoDoctypeBuilder(ET.TreeBuilder):
    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise CnfXmlError("DOCTYPE and entity declarations are refused")


def _load(data: bytes, root_tag: str) -> ET.Element:
    if not isinstance(data, (bytes, bytearray)):
        raise CnfXmlError("configuration must be bytes")
    if len(data) > MAX_CNF_XML:
        raise CnfXmlError(f"configuration of {len(data)} bytes exceeds {MAX_CNF_XML}")
    if _FORBIDDEN.search(data):
        raise CnfXmlError("DOCTYPE and entity declarations are refused")
    # The byte scan only sees ASCII-compatible encodings; a UTF-16 document hides its DOCTYPE from
    # it, so the parser itself refuses one too, before the internal subset (entities) is read.
    parser = ET.XMLParser(target=_NoDoctypeBuilder())
    try:
        parser.feed(bytes(data))
        root = parser.close()
    except ET.ParseError as exc:
        raise CnfXmlError(f"not well-formed XML: {exc}") from None
    except (ValueError, LookupError) as exc:  # bad bytes, or an unknown declared encoding
        raise CnfXmlError(f"unreadable XML: {exc}") from None
    if root.tag != root_tag:
        raise CnfXmlError(f"root element is <{root.tag}>, expected <{root_tag}>")
    return root


def _text(parent: ET.Element, path: str, required: bool = True) -> str | None:
    element = parent.find(path)
    if element is None:
        if required:
            raise CnfXmlError(f"missing <{path}>")
        return None
    text = (element.text or "").strip()
    if len(text) > MAX_TEXT * 32:
        raise CnfXmlError(f"<{path}> too long")
    return text


def _int(parent: ET.Element, path: str, required: bool = True, default: int | None = None) -> int | None:
    text = _text(parent, path, required)
    if text is None or (text == "" and not required):
        return default
    if not text.isdigit() or len(text) > 6:
        raise CnfXmlError(f"<{path}> is not a number: {text[:20]!r}")
    return int(text)


def _bool(parent: ET.Element, path: str, default: bool = False) -> bool:
    text = _text(parent, path, required=False)
    if text is None:
        return default
    if text.lower() not in ("true", "false"):
        raise CnfXmlError(f"<{path}> must be true or false, got {text[:20]!r}")
    return text.lower() == "true"


def _flag(vendor: ET.Element | None, tag: str, enabled_value: str, disabled_value: str,
          default: bool = True) -> bool:
    if vendor is None:
        return default
    text = _text(vendor, tag, required=False)
    if text is None:
        return default
    if text not in (enabled_value, disabled_value):
        raise CnfXmlError(f"<vendorConfig/{tag}> must be 0 or 1, got {text[:20]!r}")
    return text == enabled_value


def _members(parent: ET.Element) -> tuple[CallManagerMember, ...]:
    group = parent.find("callManagerGroup/members")
    if group is None:
        raise CnfXmlError("missing <callManagerGroup/members>")
    members = group.findall("member")
    if not 1 <= len(members) <= 3:
        raise CnfXmlError(f"callManagerGroup needs 1 to 3 members, got {len(members)}")
    ordered = []
    for element in members:
        priority = element.get("priority", "0")
        if not priority.isdigit() or len(priority) > 3:
            raise CnfXmlError(f"member priority {priority[:10]!r} is not a number")
        cm = element.find("callManager")
        if cm is None:
            raise CnfXmlError("member without <callManager>")
        ordered.append((int(priority), CallManagerMember(
            host=_text(cm, "processNodeName") or "",
            ethernet_phone_port=_int(cm, "ports/ethernetPhonePort", False, 2000),
            secure_port=_int(cm, "ports/securedEthernetPhonePort", False, 2443),
        )))
    ordered.sort(key=lambda pair: pair[0])
    return tuple(member for _, member in ordered)


def _parse_srst(pool: ET.Element) -> SrstInfo | None:
    element = pool.find("srstInfo")
    if element is None:
        return None
    addresses, ports, secure_ports = [], [], []
    for i in (1, 2, 3):
        address = _text(element, f"ipAddr{i}", required=False)
        if address:
            addresses.append(address)
            ports.append(_int(element, f"port{i}", False, 2000))
            if element.find(f"securePort{i}") is not None:
                secure_ports.append(_int(element, f"securePort{i}"))
    certificate = None
    cert_text = _text(element, "srstCertificate", required=False)
    if cert_text:
        try:
            certificate = base64.b64decode(cert_text, validate=True)
        except (binascii.Error, ValueError):
            raise CnfXmlError("<srstCertificate> is not valid base64") from None
    return SrstInfo(
        option=_text(element, "srstOption", required=False) or "Disable",
        addresses=tuple(addresses),
        ports=tuple(ports),
        is_secure=_bool(element, "isSecure"),
        secure_ports=tuple(secure_ports),
        certificate=certificate,
    )


def _parse_capf(root: ET.Element) -> CapfSettings | None:
    capf = root.find("capfList/capf")
    if capf is None:
        return None
    op = root.find("capfOperation")
    fields: dict = {}
    if op is not None:
        fields = {
            "operation": _operation(_text(op, "operation", required=False)),
            "auth_string": _text(op, "authString", required=False) or None,
            "key_type": _text(op, "keyType", required=False) or "RSA",
            "key_size": _int(op, "keySize", required=False),
            "curve": _text(op, "curve", required=False) or None,
        }
    return CapfSettings(host=_text(capf, "processNodeName") or "", port=_int(capf, "phonePort", False, 3804), **fields)


def _wrap(build):
    try:
        return build()
    except CnfXmlError:
        raise
    except (TypeError, ValueError) as exc:  # dataclass validation of parsed values
        raise CnfXmlError(str(exc)) from None


def parse_cnf_xml(data: bytes) -> DeviceConfig:
    """Parse a `SEP<MAC>.cnf.xml`. Raises CnfXmlError on anything malformed or out of range."""
    root = _load(data, "device")

    def build() -> DeviceConfig:
        pool = root.find("devicePool")
        if pool is None:
            raise CnfXmlError("missing <devicePool>")
        vendor = root.find("vendorConfig")
        return DeviceConfig(
            device_name=_text(root, "deviceName") or "",
            model=_text(root, "model") or "",
            security_mode=_from_xml(DeviceSecurityMode, _int(root, "deviceSecurityMode"), "deviceSecurityMode"),
            call_managers=_members(pool),
            srst=_parse_srst(pool),
            capf_auth_mode=_from_xml(CapfAuthMode, _int(root, "capfAuthMode", False, CapfAuthMode.NULL.to_xml()),
                                     "capfAuthMode"),
            capf=_parse_capf(root),
            cert_hash=_text(root, "certHash", required=False) or None,
            encr_config=_bool(root, "encrConfig"),
            load_information=_text(root, "loadInformation", required=False),
            load_server=_text(root, "loadServer", required=False),
            hardening=Hardening(
                web_access=_flag(vendor, "webAccess", "0", "1"),
                pc_port=_flag(vendor, "pcPort", "0", "1"),
                settings_access=_flag(vendor, "settingsAccess", "1", "0"),
                garp=_flag(vendor, "garp", "0", "1"),
                voice_vlan_access=_flag(vendor, "voiceVlanAccess", "0", "1"),
                span_to_pc_port=_flag(vendor, "spanToPCPort", "1", "0", default=False),
            ),
            protocol=_text(root, "deviceProtocol", required=False) or "SCCP",
        )

    return _wrap(build)


def parse_default_cnf_xml(data: bytes) -> DefaultConfig:
    """Parse `XMLDefault.cnf.xml`."""
    root = _load(data, "Default")

    def build() -> DefaultConfig:
        loads = []
        for element in root.findall("loadInformation"):
            model = element.get("model")
            if not model:
                raise CnfXmlError("<loadInformation> without a model attribute")
            loads.append((model, (element.text or "").strip()))
        return DefaultConfig(call_managers=_members(root), loads=tuple(loads))

    return _wrap(build)
