"""Which phones a reset of one server reaches (RST-9).

A `device.reset` event with `server` names a call-control node (`CCMSEC_NODE` of that node, e.g.
`callmanager` or `callmanager-sub1`), never an address. A phone is the node's when the connection it
registered over reached one of the node's addresses (`Phone.registered_address`, the socket's peer,
so a phone configured with a host name or an IP address counts the same):

* the node's host in the local runner's endpoints file (`services.<node>.host`, each node on an
  address of its own, subscribers included);
* otherwise the node's name as a host name, resolved (compose: a node's service name is its DNS
  name, which is also what its phones are configured with), and the `CCMSEC_PEERS` host when the
  node is its role's publisher (`callmanager`).

A name that is no node name (bad input from the bus) or resolves to nothing reaches no phone.

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
import re
import socket

log = logging.getLogger("ccmsec.phone-sim")

NODE_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?")
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


async def node_addresses(node: str, *, endpoints: dict | None, peers: dict[str, str],
                         timeout: float = RESOLVE_TIMEOUT) -> set[str]:
    """The IP addresses call-control node `node` serves phones at (see the module docstring)."""
    if not isinstance(node, str) or not NODE_RE.fullmatch(node):
        log.warning("device reset names server %r, which is no node name: no phone reset", node[:80])
        return set()
    services = (endpoints or {}).get("services")
    entry = services.get(node) if isinstance(services, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("host"), str):
        found = await _resolve(entry["host"], timeout)
        if found:  # a node bound to every address (0.0.0.0) is found by its name below
            return found
    names = {node} | ({peers[node]} if isinstance(peers.get(node), str) else set())
    found = set()
    for name in sorted(names):
        found |= await _resolve(name, timeout)
    return found
