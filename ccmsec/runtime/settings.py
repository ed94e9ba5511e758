"""Service settings from the environment (prefix CCMSEC_), validated with pydantic-settings."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from pathlib import Path

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

ROLES = (
    "ctl-provider", "capf", "tftp-signer", "callmanager",
    "keymanager", "srtp-gateway", "srst", "phone-sim",
)


MAX_SECRET = 1024  # bytes of a password file


class SettingsError(Exception):
    """Bad settings: one readable line per problem, never a traceback."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CCMSEC_", extra="ignore")

    service: str = Field(description="role name, one of " + ", ".join(ROLES))
    node: str = ""
    data_dir: Path
    # The service's own identity folder (certificate, key, NATS credentials); default
    # DATA/identities/services/<node>. Compose mounts each container's own folder here.
    identity_dir: Path | None = None
    # Where this service keeps its own private keys (its server key, the CAPF or manufacturer CA
    # key); default: next to their certificates under the data directory. Compose mounts a volume
    # here that no other container has, so the shared data volume carries certificates only.
    key_dir: Path | None = None
    # Where the (simulated) manufacturer CA certificate is: phone-sim, the manufacturer, writes it;
    # call control and CAPF read it. Default DATA/pki; compose gives it a folder (volume) of its
    # own that only phone-sim can write, so no other role can swap the CA MICs are checked with.
    manufacturer_ca_dir: Path | None = None
    host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=1, le=65535)
    metrics_port: int = Field(9100, ge=0, le=65535)  # 0 = metrics endpoint off
    metrics_interval: float = Field(15.0, ge=0.2, le=600)  # seconds between gauge samples (I/O-bound ones)
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = ""
    # The database password as a file (compose: a volume only the services mount), so that it is
    # never in the environment or the compose file; it fills in the password of database_url.
    database_password_file: Path | None = None
    # Where callmanager keeps the generated `admin` password (default DATA/admin-password).
    admin_password_file: Path | None = None
    log_level: str = "INFO"
    shutdown_grace: float = Field(4.0, ge=0, le=30)
    bus_connect_timeout: float = Field(30.0, gt=0, le=600)
    # Seconds between checks of the event stream and the service's consumers (BUS-5).
    bus_check_interval: float = Field(2.0, ge=0.1, le=300)
    peers: dict[str, str] = Field(default_factory=dict)  # role -> host (JSON in CCMSEC_PEERS)

    # Phone-facing ports of the roles (the source's defaults).
    ctl_provider_port: int = Field(2444, ge=1, le=65535)
    capf_port: int = Field(3804, ge=1, le=65535)
    tftp_port: int = Field(69, ge=1, le=65535)
    sccp_port: int = Field(2000, ge=1, le=65535)
    sccp_tls_port: int = Field(2443, ge=1, le=65535)
    admin_port: int = Field(8443, ge=1, le=65535)
    srst_cert_port: int = Field(2445, ge=1, le=65535)
    # Seconds between a registered phone's KeepAlives (sent in RegisterAck; callmanager and srst).
    # Three missed ones tell the phone its node is gone (LATER-7), so this sets failover time.
    sccp_keepalive: int = Field(30, ge=1, le=600)
    # Call-control nodes in the order phones list them (JSON list of addresses; empty = the
    # callmanager peer alone), and whether this callmanager node is the publisher — the node that
    # writes callmanager's tables and serves the administration API (subscribers serve phones).
    call_control_nodes: list[str] = Field(default_factory=list, max_length=8)
    callmanager_publisher: bool = True
    # Every call-control node the cluster runs, by name (JSON list: `callmanager`, then
    # `callmanager-subK`), as the local runner and compose both set it
    # (ccmsec.cluster.topology.cluster_nodes_env). A reset on a server (RST-9) naming another is
    # refused; unset (a service run alone): not known, only the name's form is checked.
    cluster_call_control_nodes: list[str] | None = Field(None, min_length=1, max_length=8)
    tftp_path: str = "cluster1"
    tftp_caching: bool = True
    # The administration API's audit log keeps this many days and at most this many rows
    # (0 = no limit); older rows are deleted at start and every hour (docs/callmanager.md).
    audit_retention_days: int = Field(365, ge=0, le=36500)
    audit_max_rows: int = Field(1_000_000, ge=0, le=1_000_000_000)

    @field_validator("service")
    @classmethod
    def _known_role(cls, v: str) -> str:
        if v not in ROLES:
            raise ValueError(f"unknown role {v!r}; expected one of {', '.join(ROLES)}")
        return v

    @field_validator("cluster_call_control_nodes")
    @classmethod
    def _node_names(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        from ccmsec.policy.resets import NotACallControlNode, check_reset_server

        if v is None:
            return v
        for name in v:
            try:
                check_reset_server(name)
            except NotACallControlNode:
                raise ValueError(f"{str(name)[:64]!r} is no call-control node name (callmanager or "
                                 "callmanager-subK)") from None
        if len(set(v)) != len(v):
            raise ValueError("a node is listed twice")
        # Every node the cluster runs: the publisher always (it serves the administration API), and
        # the callmanager node reading the list — without them a reset on it would be refused (RST-9).
        if "callmanager" not in v:
            raise ValueError("does not name the publisher 'callmanager' (every call-control node "
                             "the cluster runs)")
        node = info.data.get("node") or info.data.get("service")
        if info.data.get("service") == "callmanager" and node and node not in v:
            raise ValueError(f"does not name this node {str(node)[:64]!r} (every call-control node "
                             "the cluster runs)")
        return v

    @property
    def cluster_nodes(self) -> frozenset[str] | None:
        """The call-control nodes a reset on a server (RST-9) is checked against; None: not known."""
        return frozenset(self.cluster_call_control_nodes) if self.cluster_call_control_nodes else None

    @field_validator("host")
    @classmethod
    def _ip_host(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"not an IP address: {v!r}") from None
        return v

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, v: str) -> str:
        if not v.startswith(("nats://", "tls://")):
            raise ValueError(f"NATS URL must start with nats:// or tls://, got {v!r}")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log level must be DEBUG, INFO, WARNING or ERROR, got {v!r}")
        return v

    @property
    def node_name(self) -> str:
        return self.node or self.service

    @property
    def manufacturer_folder(self) -> Path:
        return self.manufacturer_ca_dir or self.data_dir / "pki"

    @property
    def identity_folder(self) -> Path:
        return self.identity_dir or self.data_dir / "identities" / "services" / self.node_name

    @property
    def db_url(self) -> str:
        if not self.database_url:
            return f"sqlite+aiosqlite:///{self.data_dir / 'ccmsec.db'}"
        if self.database_password_file is None:
            return self.database_url
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        path = self.database_password_file
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_SECRET + 1)
        except OSError as exc:
            raise SettingsError(f"CCMSEC_DATABASE_PASSWORD_FILE: cannot read {path}: {exc.strerror}") from None
        password = raw.decode("utf-8", "replace").strip()
        if not password or len(raw) > MAX_SECRET:
            raise SettingsError(f"CCMSEC_DATABASE_PASSWORD_FILE: {path} holds no usable password "
                                f"(1-{MAX_SECRET} bytes)")
        try:
            url = make_url(self.database_url).set(password=password)
        except ArgumentError:
            raise SettingsError("CCMSEC_DATABASE_URL: not a database URL") from None
        return url.render_as_string(hide_password=False)

    def peer_host(self, role: str) -> str:
        """The peer's IP address: phones, TFTP clients and CTL records need addresses, while compose
        names peers by host name — so a name is resolved (and remembered once it resolves)."""
        try:
            host = self.peers[role]
        except KeyError:
            raise SettingsError(f"no address known for peer {role!r} (set CCMSEC_PEERS)") from None
        return resolve_host(host)


_RESOLVED: dict[str, str] = {}


def resolve_host(host: str) -> str:
    """An IPv4 literal as is; a name through the resolver, cached after the first success. A name
    that does not resolve yet (its container not created) is returned unchanged."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if host in _RESOLVED:
        return _RESOLVED[host]
    try:
        address = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except (OSError, IndexError, UnicodeError):
        return host
    _RESOLVED[host] = address
    return address


def load_settings(cls: type[ServiceSettings] = ServiceSettings, **overrides) -> ServiceSettings:
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"CCMSEC_{field.upper()}"
            problems.append(f"{env}: {err['msg']}")
        raise SettingsError("bad settings: " + "; ".join(problems)) from None
    except _SourceError as exc:
        # A JSON-valued variable (CCMSEC_PEERS, CCMSEC_CALL_CONTROL_NODES,
        # CCMSEC_CLUSTER_CALL_CONTROL_NODES) that does not parse:
        # pydantic-settings raises this before validation, not a ValidationError.
        found = re.search(r'field "([A-Za-z0-9_]+)"', str(exc))
        env = f"CCMSEC_{found.group(1).upper()}" if found else "a CCMSEC_ variable"
        raise SettingsError(f"bad settings: {env}: not valid JSON") from None


def peers_json(peers: dict[str, str]) -> str:
    return json.dumps(peers, sort_keys=True)
