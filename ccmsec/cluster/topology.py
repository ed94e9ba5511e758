"""The one description of a cluster: which services exist, what each listens on, what each needs.

Both runners read it: `ccmsec up` (local processes, each bound to its own loopback address, as compose
gives each container its own host) and the compose renderer (docker-compose.yml).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

GRPC_PORT = 50051
METRICS_PORT = 9100
NATS_PORT = 4222
# Call-control subscribers (LATER-7): extra callmanager nodes beside the publisher, each on its own
# address; phones list the nodes in order (publisher first, at most three) and then SRST.
MAX_SUBSCRIBERS = 4
SUBSCRIBER_HOST_INDEX = 20   # callmanager-sub1 on .21, callmanager-sub2 on .22, ...


@dataclass(frozen=True)
class Port:
    name: str          # settings field without the CCMSEC_ prefix, e.g. "tftp_port"
    number: int
    protocol: str      # tcp | udp
    purpose: str
    public: bool = True  # reachable by phones (published in compose)


@dataclass(frozen=True)
class ServiceSpec:
    role: str
    package: str        # python package; run as `python -m <package>`
    host_index: int     # last octet of the service's loopback address
    description: str
    ports: tuple[Port, ...] = ()
    # Roles it calls over gRPC, exactly as its code does (`peer_channel("<role>")`; ctl-provider
    # also through its certificate sources) — tests/unit/test_topology_peers.py derives them from
    # the code. Compose's start order follows them (compose.start_dependencies).
    peers: tuple[str, ...] = ()
    persistent: bool = True       # its data must survive restarts (a named volume in compose)

    @property
    def executable(self) -> str:
        return f"ccmsec-{self.role}"


def _p(name, number, protocol, purpose, public=True) -> Port:
    return Port(name, number, protocol, purpose, public)


# The eight roles of the source document (docs/architecture.md, "Shape").
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("ctl-provider", "ccmsec_ctl_provider", 2, "CTL Provider: server certificates for the CTL client",
                (_p("ctl_provider_port", 2444, "tcp", "CTL Provider TLS"),), ("callmanager", "tftp-signer", "capf")),
    ServiceSpec("capf", "ccmsec_capf", 3, "Certificate Authority Proxy Function: issues LSCs",
                (_p("capf_port", 3804, "tcp", "CAPF over TLS"),), ("callmanager", "ctl-provider")),
    ServiceSpec("tftp-signer", "ccmsec_tftp_signer", 4, "TFTP server that signs every file it serves",
                (_p("tftp_port", 69, "udp", "TFTP"),), ("callmanager", "capf", "ctl-provider")),
    ServiceSpec("callmanager", "ccmsec_callmanager", 5, "call control: SCCP registration, calls, administration API",
                (_p("sccp_port", 2000, "tcp", "SCCP"), _p("sccp_tls_port", 2443, "tcp", "SCCP over TLS"),
                 _p("admin_port", 8443, "tcp", "HTTPS administration")),
                ("keymanager", "capf", "srtp-gateway", "ctl-provider")),
    ServiceSpec("keymanager", "ccmsec_keymanager", 6, "key manager: SRTP master values per call", (), ()),
    # Controlled with MGCP semantics over gRPC on mutual TLS (GW-4, CHK-12), not MGCP text on UDP
    # 2427: that port would be unauthenticated. Media uses an ephemeral UDP port per connection.
    ServiceSpec("srtp-gateway", "ccmsec_srtp_gateway", 7, "MGCP-controlled media gateway with the SRTP package",
                (), ("callmanager",)),
    ServiceSpec("srst", "ccmsec_srst", 8, "Survivable Remote Site Telephony reference",
                (_p("sccp_port", 2000, "tcp", "SCCP (fallback)"), _p("sccp_tls_port", 2443, "tcp", "SCCP over TLS (fallback)"),
                 _p("srst_cert_port", 2445, "tcp", "SRST certificate provider")), ("callmanager",)),
    ServiceSpec("phone-sim", "ccmsec_phone_sim", 9, "simulated phones speaking TFTP, CAPF, SCCP and SRTP",
                (), ("tftp-signer", "capf"), persistent=False),  # gRPC: the image anchor, the third-party CA
)

ROLES = tuple(s.role for s in SERVICES)


def spec(role: str) -> ServiceSpec:
    for s in SERVICES:
        if s.role == role:
            return s
    raise KeyError(f"unknown role {role!r}; known: {', '.join(ROLES)}")


def default_base_address(data_dir: Path) -> str:
    """127.A.B.0 derived from the data directory, so clusters side by side never collide."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).digest()
    a = 1 + digest[0] % 254          # never 127.0.x.x, where the machine's own services live
    b = digest[1]
    return f"127.{a}.{b}.0"


def privileged_ports_allowed() -> bool:
    return os.geteuid() == 0


def subscriber_name(number: int) -> str:
    return f"callmanager-sub{number}"


# Every call-control node of the cluster by name (JSON list), for the roles that check a reset on a
# server (RST-9: callmanager's API and gRPC refuse a node the cluster does not run). Not the
# CallManager group of CCMSEC_CALL_CONTROL_NODES: that is the phones' list (addresses or compose
# names), at most three; this is every node's name, however many.
CLUSTER_NODES_VARIABLE = "CCMSEC_CLUSTER_CALL_CONTROL_NODES"
CLUSTER_NODES_ROLES = ("callmanager",)   # the roles that read it (every node of theirs)


def call_control_node_names(subscribers: int) -> list[str]:
    """The call-control nodes of a cluster with `subscribers` subscribers, publisher first
    (LATER-7): the names the local runner and compose both give them — the one place that says
    which nodes a cluster runs."""
    if not isinstance(subscribers, int) or not 0 <= subscribers <= MAX_SUBSCRIBERS:
        raise ValueError(f"--subscribers: 0 to {MAX_SUBSCRIBERS} call-control subscribers, not {subscribers}")
    return ["callmanager", *(subscriber_name(n) for n in range(1, subscribers + 1))]


def cluster_nodes_env(role: str, subscribers: int) -> dict[str, str]:
    """CCMSEC_CLUSTER_CALL_CONTROL_NODES for a node of `role` in a cluster with `subscribers`
    subscribers (both runners set it through here); nothing for a role that does not read it."""
    import json

    if role not in CLUSTER_NODES_ROLES:
        return {}
    return {CLUSTER_NODES_VARIABLE: json.dumps(call_control_node_names(subscribers))}


@dataclass
class Instance:
    spec: ServiceSpec
    host: str
    ports: dict[str, int] = field(default_factory=dict)   # includes grpc_port and metrics_port
    node: str = ""        # instance name; the role for the one instance of a role

    def __post_init__(self) -> None:
        self.node = self.node or self.spec.role

    @property
    def role(self) -> str:
        return self.spec.role

    @property
    def publisher(self) -> bool:
        """The callmanager publisher (or any other role's only instance): it alone writes."""
        return self.node == self.spec.role


@dataclass
class LocalCluster:
    """A topology laid out on loopback addresses for one data directory."""

    data_dir: Path
    base: str
    nats_host: str
    instances: list[Instance]

    @property
    def nats_url(self) -> str:
        return f"nats://{self.nats_host}:{NATS_PORT}"

    def instance(self, name: str) -> Instance:
        """The instance named `name` (a node), or the first instance of role `name`."""
        for inst in self.instances:
            if inst.node == name:
                return inst
        for inst in self.instances:
            if inst.role == name:
                return inst
        raise KeyError(name)

    @property
    def subscribers(self) -> int:
        return sum(1 for i in self.instances if i.role == "callmanager" and not i.publisher)

    def call_control_nodes(self) -> list[Instance]:
        """The callmanager nodes in the order phones list them: publisher, then subscribers."""
        return [i for i in self.instances if i.role == "callmanager"]

    def peers(self) -> dict[str, str]:
        return {i.role: i.host for i in self.instances if i.publisher}

    def endpoints(self) -> dict:
        cm = self.instance("callmanager")
        return {
            "data_dir": str(self.data_dir),
            "base": self.base,
            "nats_url": self.nats_url,
            "admin_url": f"https://{cm.host}:{cm.ports['admin_port']}",
            "subscribers": self.subscribers,
            "services": {i.node: {"host": i.host, **i.ports} for i in self.instances},
        }

    def env_for(self, inst: Instance) -> dict[str, str]:
        import json

        env = {
            "CCMSEC_SERVICE": inst.role,
            "CCMSEC_NODE": inst.node,
            "CCMSEC_DATA_DIR": str(self.data_dir),
            "CCMSEC_IDENTITY_DIR": str(self.data_dir / "identities" / "services" / inst.node),
            "CCMSEC_HOST": inst.host,
            "CCMSEC_NATS_URL": self.nats_url,
            "CCMSEC_PEERS": json.dumps(self.peers(), sort_keys=True),
            # The CallManager group of phones without a pool (tftp-signer writes it), in order.
            "CCMSEC_CALL_CONTROL_NODES": json.dumps([i.host for i in self.call_control_nodes()][:3]),
            # Every call-control node by name: a reset on a server (RST-9) is checked against them.
            **cluster_nodes_env(inst.role, self.subscribers),
        }
        if not os.environ.get("CCMSEC_DATABASE_URL"):
            # Each owner its own SQLite file, call control's nodes callmanager's (issue 9 §5,
            # ccmsec/cluster/databases.py); a database named for the whole run is kept as it is.
            from ccmsec.cluster.databases import database_url

            env["CCMSEC_DATABASE_URL"] = database_url(self.data_dir, inst.node)
        if inst.role == "callmanager":
            env["CCMSEC_CALLMANAGER_PUBLISHER"] = "true" if inst.publisher else "false"
        for name, number in inst.ports.items():
            env[f"CCMSEC_{name.upper()}"] = str(number)
        return env


def local_cluster(data_dir: Path, base: str | None = None, subscribers: int = 0,
                  privileged_ports: bool | None = None) -> LocalCluster:
    """`privileged_ports`: whether services may bind ports below 1024 (default: when root). False
    under service users (ccmsec.cluster.accounts): a service's own uid cannot bind TFTP 69."""
    data_dir = Path(data_dir).resolve()
    if privileged_ports is None:
        privileged_ports = privileged_ports_allowed()
    names = call_control_node_names(subscribers)   # ValueError for a count out of range
    base = base or default_base_address(data_dir)
    net = ipaddress.ip_address(base)
    if not ipaddress.ip_network("127.0.0.0/8").supernet_of(ipaddress.ip_network(f"{base}/32")):
        raise ValueError(f"base address {base} is not on loopback (127.0.0.0/8)")
    instances = []
    for s in SERVICES:
        host = str(net + s.host_index)
        ports = {"grpc_port": GRPC_PORT, "metrics_port": METRICS_PORT}
        for p in s.ports:
            number = p.number
            if number < 1024 and not privileged_ports:
                number += 10000  # e.g. TFTP 69 -> 10069 when not root
            ports[p.name] = number
        instances.append(Instance(s, host, ports))
        if s.role == "callmanager":
            # A subscriber serves phones (SCCP) and gRPC; the administration API is the publisher's.
            sub_ports = {k: v for k, v in ports.items() if k != "admin_port"}
            for number, node in enumerate(names[1:], start=1):
                instances.append(Instance(s, str(net + SUBSCRIBER_HOST_INDEX + number), dict(sub_ports),
                                          node=node))
    return LocalCluster(data_dir, base, str(net + 1), instances)
