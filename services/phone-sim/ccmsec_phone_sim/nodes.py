"""Which phones a reset of one server reaches (RST-9).

A `device.reset` event with `server` names a call-control node (`CCMSEC_NODE` of that node, e.g.
`callmanager` or `callmanager-sub1`), never an address. A phone is the node's when the connection it
registered over reached one of the node's addresses AND one of its SCCP ports
(`Phone.registered_address`, the socket's peer, so a phone configured with a host name or an IP
address counts the same, and `Phone.registered_port`). The address alone is not enough: nodes may
share one (the test cluster puts every node on a 127.0.0.x loopback address, and a host name such
as `localhost` resolves to one of them), and a reset of one node must not reach another's phones.

* When the local runner's endpoints file lists the cluster's nodes (`services` in
  `DATA/run/endpoints.json`), it alone says which nodes exist: the node's entry gives its host (its
  addresses; a host bound to every address, 0.0.0.0, or one that does not resolve is found by the
  node's name as below) and its ports, `sccp_port` and `sccp_tls_port` (an entry naming neither:
  the cluster's SCCP ports, `CCMSEC_SCCP_PORT` / `CCMSEC_SCCP_TLS_PORT`). A server the file does
  not list is no node of this cluster and reaches no phone — `localhost` included.
* Without such a file (compose): the node's name as a host name, resolved (a node's service name is
  its DNS name, which is also what its phones are configured with), and the `CCMSEC_PEERS` host
  when the node is its role's publisher (`callmanager`); its ports are the cluster's SCCP ports
  (`CCMSEC_SCCP_PORT` / `CCMSEC_SCCP_TLS_PORT`, the same for every node there).

Only a call-control node is a node here (`ccmsec.policy.resets.check_reset_server`: the publisher
`callmanager` or a subscriber `callmanager-subK`): the endpoints file also lists `srst`, the SRST
reference, whose SCCP port its phones in fallback reached — a reset naming it reached them. A name
that is no call-control node (`srst`, bad input from the bus) is refused with an error and reaches
no phone, as one that resolves to nothing does.

Names are resolved in worker threads of this module's own (never the loop's default executor), at
most one lookup per name at a time: `getaddrinfo` cannot be cancelled, so a lookup that outlived
its timeout keeps its thread, and repeated events for a name that does not answer must neither
occupy every thread (the default executor also makes MICs and writes phones.json; the next name's
lookup would time out too) nor start a thread each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import socket
from dataclasses import dataclass

from ccmsec.policy.resets import NotACallControlNode, check_reset_server

log = logging.getLogger("ccmsec.phone-sim")

RESOLVE_TIMEOUT = 2.0
RESOLVER_THREADS = 4

_resolver: concurrent.futures.ThreadPoolExecutor | None = None
_lookups: dict[str, concurrent.futures.Future] = {}  # name -> the lookup still running for it


def normalise_ip(text: str) -> str | None:
    """An IP address in one spelling (an IPv4-mapped IPv6 address as IPv4); None if not one."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return None if ip.is_unspecified else ip.compressed


async def _resolve(name: str, timeout: float) -> set[str]:
    ip = normalise_ip(name)
    if ip is not None:
        return {ip}
    global _resolver
    lookup = _lookups.get(name)
    if lookup is None:  # else: join the lookup still running for this name (no thread more)
        if _resolver is None:
            _resolver = concurrent.futures.ThreadPoolExecutor(RESOLVER_THREADS, "phone-sim-resolve")
        lookup = _resolver.submit(socket.getaddrinfo, name, None, type=socket.SOCK_STREAM)
        _lookups[name] = lookup
        lookup.add_done_callback(lambda f, name=name: _lookups.pop(name, None) if _lookups.get(name) is f
                                 else None)
    try:
        infos = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(lookup)), timeout)
    except (OSError, asyncio.TimeoutError, UnicodeError):
        return set()
    return {ip for *_, sockaddr in infos if (ip := normalise_ip(str(sockaddr[0]))) is not None}


@dataclass(frozen=True)
class NodeEndpoints:
    """Where a call-control node serves phones: its addresses and its SCCP ports."""

    addresses: frozenset[str] = frozenset()
    ports: frozenset[int] = frozenset()

    def reached_by(self, address: str, port: int) -> bool:
        """Whether a connection that reached `address`:`port` reached this node."""
        return bool(address) and normalise_ip(address) in self.addresses and port in self.ports


NOWHERE = NodeEndpoints()
SCCP_PORT_KEYS = ("sccp_port", "sccp_tls_port")


def _port(value) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
    return value if ok else None


async def node_endpoints(node: str, *, endpoints: dict | None, peers: dict[str, str],
                         sccp_ports: tuple[int, ...], timeout: float = RESOLVE_TIMEOUT) -> NodeEndpoints:
    """The addresses and SCCP ports call-control node `node` serves phones at (see the module
    docstring). `sccp_ports`: the cluster's SCCP ports, for a node whose own are not known."""
    try:
        check_reset_server(node)
    except NotACallControlNode as exc:   # `srst` (its phones in fallback) or bad input from the bus
        log.error("device reset refused: %s; no phone reset", exc)
        return NOWHERE
    ports = frozenset(p for p in map(_port, sccp_ports) if p is not None)
    services = (endpoints or {}).get("services")
    if isinstance(services, dict):   # the local runner's file: the nodes of this cluster
        entry = services.get(node)
        if not isinstance(entry, dict):
            log.warning("device reset names server %r, which is no node of this cluster (endpoints "
                        "file): no phone reset", node)
            return NOWHERE
        own = frozenset(p for k in SCCP_PORT_KEYS if (p := _port(entry.get(k))) is not None)
        ports = own or ports
        if isinstance(entry.get("host"), str):
            found = await _resolve(entry["host"], timeout)
            if found:  # a node bound to every address (0.0.0.0) is found by its name below
                return NodeEndpoints(frozenset(found), ports)
    names = {node} | ({peers[node]} if isinstance(peers.get(node), str) else set())
    found = set()
    for name in sorted(names):
        found |= await _resolve(name, timeout)
    return NodeEndpoints(frozenset(found), ports) if found else NOWHERE
