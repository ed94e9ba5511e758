"""What the TFTP server serves, built from its owners' answers (owners.py) and the cluster's settings.

- `SEP<MAC>.cnf.xml` per device (`inputs_from_owners`, `build_device_config`): security mode, CallManager group, SRST
  information, CAPF settings with the pending operation, hardening (DEV-4) and the firmware load.
- the static files (`write_static_files`): ring list, ring tone, locale files, XMLDefault.cnf.xml —
  written once into the cluster folder if missing; an administrator may replace them.

A device in a device pool (call control's, sent with the device by `CallManager/GetDeviceConfigs`)
gets the pool's CallManager group and SRST reference; otherwise the cluster's own callmanager and
srst services.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ccmsec import firmware
from ccmsec.domain import CapfAuthMode, DeviceSecurityMode
from ccmsec.domain import CapfOperation as Operation
from ccmsec.formats.cnfxml import (
    CallManagerMember, CapfSettings, DefaultConfig, DeviceConfig, Hardening, SrstInfo,
)
from ccmsec.fsutil import atomic_write
from ccmsec_proto.callmanager_pb2 import DeviceHardening

log = logging.getLogger("ccmsec.tftp-signer")

# DEV-4: the hardening settings, as call control sends them (callmanager.proto DeviceHardening)
HARDENING = tuple(f.name for f in DeviceHardening.DESCRIPTOR.fields)


@dataclass(frozen=True)
class ClusterEndpoints:
    """Where the phones of this cluster find call control, CAPF and SRST."""

    callmanagers: tuple[str, ...]
    sccp_port: int = 2000
    sccp_tls_port: int = 2443
    capf_host: str = ""
    capf_port: int = 3804
    srst_host: str | None = None
    load_server: str | None = None

    def members(self, hosts: tuple[str, ...] | None = None) -> tuple[CallManagerMember, ...]:
        return tuple(CallManagerMember(h, self.sccp_port, self.sccp_tls_port)
                     for h in (hosts or self.callmanagers)[:3])


def _capf_settings(op: dict | None, endpoints: ClusterEndpoints) -> tuple[CapfAuthMode, CapfSettings]:
    if op is None:
        return CapfAuthMode.NULL, CapfSettings(endpoints.capf_host, endpoints.capf_port)
    key = op["key_type"]
    if key.startswith("ec"):
        curve = {"ec256": "P-256", "ec384": "P-384", "ec521": "P-521"}.get(key, "P-256")
        key_fields = {"key_type": "EC", "key_size": None, "curve": curve}
    else:
        size = int(key[3:]) if key[3:].isdigit() else 2048
        key_fields = {"key_type": "RSA", "key_size": size, "curve": None}
    # The authentication string is stored only as a hash (CAPF); the user keys it in on the phone.
    return (CapfAuthMode.parse(op["auth_mode"]),
            CapfSettings(endpoints.capf_host, endpoints.capf_port, operation=Operation.parse(op["operation"]),
                         **key_fields))


def srst_info(pool: dict | None, endpoints: ClusterEndpoints) -> SrstInfo:
    """The pool's SRST reference (`reference`: its row, CERT-6 certificate included), a bare host
    reference, or the cluster's own srst service; `Disable` when there is none."""
    reference = (pool or {}).get("reference")
    if reference is not None:
        secure = bool(reference["secure"] and reference["certificate"])
        return SrstInfo("Enable", (reference["host"],), (reference["sccp_port"],), is_secure=secure,
                        secure_ports=(reference["sccp_tls_port"],),
                        certificate=reference["certificate"] if secure else None)
    srst_host = (pool or {}).get("srst") or endpoints.srst_host
    return SrstInfo("Enable", (srst_host,), (endpoints.sccp_port,)) if srst_host else SrstInfo("Disable")


def build_device_config(device: dict, capf_op: dict | None, pool: dict | None,
                        endpoints: ClusterEndpoints) -> DeviceConfig:
    """Pure: one device row (+ its pending CAPF operation and pool) -> its DeviceConfig."""
    hosts = tuple(pool["callmanagers"]) if pool and pool.get("callmanagers") else None
    srst = srst_info(pool, endpoints)
    auth_mode, capf = _capf_settings(capf_op, endpoints)
    try:
        load = firmware.load_name(device["model"])
    except firmware.FirmwareError:
        load = None
    return DeviceConfig(
        device_name=device["name"],
        model=device["model"],
        security_mode=DeviceSecurityMode.parse(device["security_mode"]),
        call_managers=endpoints.members(hosts),
        srst=srst,
        capf_auth_mode=auth_mode,
        capf=capf,
        load_information=load,
        load_server=endpoints.load_server,
        hardening=Hardening(**{f: bool(device[f]) for f in HARDENING}),
    )


@dataclass(frozen=True)
class DeviceSource:
    name: str
    config_version: int
    config: DeviceConfig


@dataclass(frozen=True, eq=False)
class DeviceInputs:
    """Everything one SEP<MAC>.cnf.xml is built from (with the endpoints, fixed for the process):
    equal inputs build byte-identical files. `key` holds the owners' answers as sent (the
    serialized device and operation messages); two inputs are equal when their keys are (compared
    by value, not by a version column)."""

    name: str
    device: dict
    capf: dict | None
    pool: dict | None
    key: tuple

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceInputs) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]


def _pool(message) -> dict:
    """A pool as call control sent it (PoolConfig): {callmanagers, srst, reference}."""
    reference = None
    if message.HasField("reference"):
        r = message.reference
        reference = {"host": r.host, "sccp_port": r.sccp_port, "sccp_tls_port": r.sccp_tls_port,
                     "secure": r.secure, "certificate": bytes(r.certificate) or None}
    return {"callmanagers": list(message.cm_group)[:3], "srst": message.srst or None, "reference": reference}


def _operation(message) -> dict:
    """A pending operation as CAPF sent it (PendingOperation), in the words of ccmsec.domain."""
    return {"device_name": message.device, "operation": Operation.from_proto(message.operation).value,
            "auth_mode": CapfAuthMode.from_proto(message.auth_mode).value, "key_type": message.key_type,
            "id": message.id}


def inputs_from_owners(devices, operations: dict, old: dict[str, DeviceInputs]) -> dict[str, DeviceInputs]:
    """The inputs of every SEP device from the owners' answers (`CallManager/GetDeviceConfigs`
    messages, `Capf/GetPendingOperations` by device); an unchanged device keeps its old object."""
    out: dict[str, DeviceInputs] = {}
    for message in devices:
        name = message.name
        if not name.startswith("SEP"):
            continue  # only SEP<MAC> devices fetch a SEP<MAC>.cnf.xml
        op = operations.get(name)
        key = (message.SerializeToString(deterministic=True),
               op.SerializeToString(deterministic=True) if op is not None else None)
        before = old.get(name)
        if before is not None and before.key == key:
            out[name] = before
            continue
        hardening = message.hardening
        device = {"name": name, "model": message.model,
                  "security_mode": DeviceSecurityMode.from_proto(message.mode).value,
                  "device_pool": message.device_pool or None, "config_version": message.config_version,
                  **{f: getattr(hardening, f) for f in HARDENING}}
        out[name] = DeviceInputs(name, device, _operation(op) if op is not None else None,
                                 _pool(message.pool) if message.HasField("pool") else None, key)
    return out


def device_configs(devices, operations: dict, endpoints: ClusterEndpoints) -> list[DeviceSource]:
    """The configs built from the owners' answers."""
    return [DeviceSource(i.name, i.device["config_version"],
                         build_device_config(i.device, i.capf, i.pool, endpoints))
            for i in inputs_from_owners(devices, operations, {}).values()]


# --- static files ------------------------------------------------------------------------------

RINGS = (("Chirp 1", "Ringer1.raw", 480.0), ("Chirp 2", "Ringer2.raw", 620.0))
LOCALE_FILES = {
    "United_States/g3-tones.xml": (
        '<?xml version="1.0" encoding="UTF-8"?>\n<tones country="United_States">\n'
        '  <tone name="dial" freq1="350" freq2="440" on="continuous"/>\n'
        '  <tone name="ringback" freq1="440" freq2="480" on="2000" off="4000"/>\n'
        '  <tone name="busy" freq1="480" freq2="620" on="500" off="500"/>\n</tones>\n'),
    "English_United_States/7970-dictionary.xml": (
        '<?xml version="1.0" encoding="UTF-8"?>\n<dictionary locale="English_United_States">\n'
        '  <entry key="settings">Settings</entry>\n  <entry key="services">Services</entry>\n'
        '  <entry key="directories">Directories</entry>\n  <entry key="messages">Messages</entry>\n'
        '</dictionary>\n'),
    "English_United_States/7960-dictionary.xml": (
        '<?xml version="1.0" encoding="UTF-8"?>\n<dictionary locale="English_United_States">\n'
        '  <entry key="redial">Redial</entry>\n  <entry key="newcall">NewCall</entry>\n'
        '</dictionary>\n'),
}


def _mulaw(sample: float) -> int:
    """G.711 mu-law of a sample in [-1, 1] (the ring tones are 8 kHz mu-law .raw files)."""
    value = max(-32635, min(32635, int(sample * 32635)))
    sign = 0x80 if value < 0 else 0
    value = abs(value) + 0x84
    exponent = max(0, min(7, value.bit_length() - 8))
    mantissa = (value >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ring_tone(frequency: float, seconds: float = 1.0, rate: int = 8000) -> bytes:
    return bytes(_mulaw(0.5 * math.sin(2 * math.pi * frequency * i / rate)) for i in range(int(seconds * rate)))


def ring_list() -> bytes:
    rings = "".join(f"  <Ring>\n    <DisplayName>{d}</DisplayName>\n    <FileName>{f}</FileName>\n  </Ring>\n"
                    for d, f, _ in RINGS)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<CiscoIPPhoneRingList>\n{rings}</CiscoIPPhoneRingList>\n'.encode()


def static_files(endpoints: ClusterEndpoints) -> dict[str, bytes]:
    files = {"RingList.xml": ring_list()}
    for _, name, freq in RINGS:
        files[name] = ring_tone(freq)
    files.update({name: body.encode() for name, body in LOCALE_FILES.items()})
    loads = tuple(sorted(firmware.LOADS.items()))
    files[DefaultConfig.FILENAME] = DefaultConfig(endpoints.members(), loads).to_xml()
    return files


def write_static_files(folder: Path, endpoints: ClusterEndpoints) -> list[str]:
    """Create the static files that are missing (never overwrite: the administrator may edit them)."""
    written = []
    for name, data in static_files(endpoints).items():
        path = folder / name
        if not path.exists():
            atomic_write(path, data)
            written.append(name)
    return written
