"""Each role's `ServiceSpec.peers` is what its code calls over gRPC, derived from the code itself.

A service reaches another service's gRPC port in one of three ways, all found here:

* `peer_channel("<role>")` (the runtime's cached mTLS channel to a peer);
* `secure_channel(self.identity, …, "<role>")` (a channel of its own, e.g. ctl-provider's to each
  call-control node of the group);
* `peer_channel` handed on as a function — ctl-provider's certificate gathering, which asks the
  roles of its certificate sources (`ccmsec_ctl_provider.certificates.SOURCES`).

A new call site of any kind changes the derived set, and the test fails until topology.py says the
same; a new way of handing `peer_channel` on fails until it is taught here. Compose's start order
(`compose.start_dependencies`) is built from these lists, so they must not drift.
"""

from __future__ import annotations

import re
from pathlib import Path

from ccmsec.cluster import compose
from ccmsec.cluster.topology import ROLES, SERVICES, ServiceSpec, spec

ROOT = Path(__file__).resolve().parents[2]

CALL = re.compile(r"""peer_channel\(\s*["']([a-z-]+)["']""")
OWN_CHANNEL = re.compile(r"""secure_channel\(\s*self\.identity\s*,[^)]*?["']([a-z-]+)["']\s*\)""", re.S)
HANDED_ON = re.compile(r"""peer_channel\b(?!\s*\()""")


def _handed_on_roles(role: str, path: Path, line: str) -> set[str]:
    """The roles a `peer_channel` handed on as a function reaches; unknown hand-overs fail."""
    if role == "ctl-provider" and "gather(" in line:
        from ccmsec_ctl_provider.certificates import SOURCES

        return {s.service for s in SOURCES}
    raise AssertionError(f"{path}: peer_channel is handed on ({line.strip()!r}); teach "
                         "tests/unit/test_topology_peers.py which roles it reaches")


def _code_lines(path: Path):
    """Lines of code outside docstrings and comments (a mention in prose is no call)."""
    text = path.read_text()
    text = re.sub(r'"""(?:.|\n)*?"""', lambda m: "\n" * m.group(0).count("\n"), text)
    for line in text.splitlines():
        yield line.split("#", 1)[0]


def peers_in_code(role: str) -> set[str]:
    package = ROOT / "services" / role / spec(role).package
    found: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        lines = list(_code_lines(path))
        text = "\n".join(lines)
        found |= set(CALL.findall(text)) | set(OWN_CHANNEL.findall(text))
        for line in lines:
            if HANDED_ON.search(line) and "def peer_channel" not in line:
                found |= _handed_on_roles(role, path, line)
    return found - {role}


def peer_drift(services: tuple[ServiceSpec, ...]) -> dict[str, dict[str, list[str]]]:
    wrong = {}
    for s in services:
        in_code = peers_in_code(s.role)
        assert in_code <= set(ROLES), (s.role, in_code - set(ROLES))
        if set(s.peers) != in_code:
            wrong[s.role] = {"topology": sorted(s.peers), "code": sorted(in_code)}
    return wrong


def test_every_roles_peers_are_the_roles_its_code_calls():
    wrong = peer_drift(SERVICES)
    assert not wrong, f"ServiceSpec.peers differ from the gRPC calls in the code: {wrong}"


def test_the_derivation_sees_the_known_calls():
    """The derivation is not vacuous: the calls this project is known to make are found."""
    assert {"callmanager", "ctl-provider"} <= peers_in_code("capf")   # GetDevice/ListDevices, GetCurrentCtl
    assert {"callmanager", "tftp-signer", "capf"} <= peers_in_code("ctl-provider")
    assert peers_in_code("keymanager") == set()
    # the TFTP server asks the owners of what it builds files from (issue 9 §5)
    assert peers_in_code("tftp-signer") == {"callmanager", "capf", "ctl-provider"}


def test_a_drifted_peer_list_is_caught():
    """The bad case: a topology that leaves out a call the code makes is reported by role."""
    drifted = tuple(ServiceSpec(s.role, s.package, s.host_index, s.description, s.ports,
                                tuple(p for p in s.peers if not (s.role == "capf" and p == "callmanager")),
                                s.persistent) for s in SERVICES)
    assert peer_drift(drifted) == {"capf": {"topology": ["ctl-provider"], "code": ["callmanager", "ctl-provider"]}}
    # and compose's start order is what the true lists give (each waits only for peers that
    # cannot call back: capf and callmanager call each other, so neither waits for the other)
    waits = compose.start_dependencies()
    assert "callmanager" not in waits["capf"] and "capf" not in waits["callmanager"]
    assert waits["phone-sim"] == ["tftp-signer", "capf"]  # capf: the third-party CA (issue 9 §1)
