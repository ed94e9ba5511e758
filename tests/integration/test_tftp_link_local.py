"""TFTP with link-local IPv6 clients (fe80::…%interface), over real interfaces.

A link-local address means nothing without its interface: the scope id in the socket address. The
test builds a small network of its own — a user and network namespace (`unshare -rn`, no root
needed, gone when the process exits) holding the server, a veth pair to a second namespace holding
the client, and a decoy veth pair whose fe80::/64 route the routing table prefers — so an answer
sent without the request's scope id leaves by the decoy and never reaches the client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

SERVER = textwrap.dedent(r'''
    import asyncio, json, subprocess, sys
    from ccmsec.aio.tftp import TftpServer
    from ccmsec.wire.tftp import TftpError

    FILES = {"SEP001122334455.cnf.xml": bytes(range(256)) * 40}

    async def resolve(name, client):
        return FILES.get(name)

    def sh(cmd):
        subprocess.run(cmd, shell=True, check=True)

    CHILD = """
    import asyncio, json, socket, subprocess, sys, time
    from ccmsec.aio.tftp import tftp_get
    from ccmsec.wire.tftp import TftpError
    print("ready", flush=True)
    sys.stdin.readline()                           # v1 has been moved into this namespace
    subprocess.run("ip link set lo up; ip link set v1 up; ip -6 addr add fe80::2/64 dev v1 nodad",
                   shell=True, check=True)
    ports = json.loads(sys.stdin.readline())
    async def fetch(port, name):
        try:
            data = await tftp_get("fe80::1%v1", port, name, timeout=0.3, retries=3)
            return ["ok", len(data)]
        except TftpError as exc:
            return ["error", exc.code, exc.message]
    async def main():
        out = {}
        for case, port in ports.items():
            out[case] = [await fetch(port, "SEP001122334455.cnf.xml"), await fetch(port, "missing")]
        print(json.dumps(out), flush=True)
    asyncio.run(main())
    """

    async def main():
        sh("ip link set lo up")
        sh("ip link add v0 type veth peer name v1 && ip link set v0 up "
           "&& ip -6 addr add fe80::1/64 dev v0 nodad")
        # The decoy: an interface whose fe80::/64 route is preferred, so an answer without the
        # request's scope id leaves by it and is lost.
        sh("ip link add w0 type veth peer name w1 && ip link set w0 up && ip link set w1 up "
           "&& ip -6 route add fe80::/64 dev w0 metric 1")
        child = await asyncio.create_subprocess_exec(
            "unshare", "-n", sys.executable, "-c", CHILD,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert (await child.stdout.readline()).strip() == b"ready"
        sh(f"ip link set v1 netns {child.pid}")
        child.stdin.write(b"go\n")
        servers = {
            "link-local listener": TftpServer("fe80::1%v0", 0, resolve, timeout=0.3),
            "wildcard listener": TftpServer("::", 0, resolve, timeout=0.3),
            "wildcard listener without IPV6_PKTINFO": TftpServer("::", 0, resolve, timeout=0.3),
        }
        servers["wildcard listener without IPV6_PKTINFO"]._want_pktinfo = lambda sock: False
        started = {}
        for case, server in servers.items():
            try:
                await server.start()
                started[case] = server.address[1]
            except OSError as exc:
                started[case] = None
                print(json.dumps({"start failed": case, "error": str(exc)}), file=sys.stderr)
        child.stdin.write(json.dumps({c: p for c, p in started.items() if p}).encode() + b"\n")
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        await child.wait()
        for server in servers.values():
            await server.close()
        result = json.loads(line) if line else {}
        result.update({c: "did not start" for c, p in started.items() if not p})
        print(json.dumps(result))

    asyncio.run(main())
''')


def _why_no_namespaces() -> str | None:
    """Why this host cannot build the test's network, or None: it can."""
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:  # scripts/test checks for both (and installs them in CI)
        return f"{' and '.join(missing)} not installed (util-linux, iproute2)"
    try:
        probe = subprocess.run(["unshare", "-rn", "sh", "-c", "unshare -n true && ip link add t0 type veth "
                                "peer name t1 && ip link set t0 up && ip -6 addr add fe80::1/64 dev t0 nodad"],
                               capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "the namespace probe did not finish in 10 s"
    if probe.returncode != 0:
        return ("user and network namespaces (unshare -rn) with veth and IPv6 are not available here: "
                + (probe.stderr.strip()[-200:] or f"exit status {probe.returncode}"))
    return None


def test_link_local_ipv6_clients_are_answered_on_their_own_interface():
    """A request from fe80::2%v1 is answered — DATA from the transfer socket and the listener's
    "file not found" — on that interface: the reply address keeps the request's scope id, and the
    transfer socket binds with it (a listener on `fe80::1%v0` binds, and so do its transfers: with
    scope id 0 both are EINVAL). Without the scope id, the decoy route carries the answer away and
    the client times out."""
    why = _why_no_namespaces()
    if why:
        pytest.skip(why)
    run = subprocess.run(["unshare", "-rn", sys.executable, "-c", SERVER], capture_output=True, text=True,
                         timeout=100)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    found = ["ok", 256 * 40]
    missing = ["error", 1, "file not found"]
    assert result == {
        "link-local listener": [found, missing],
        "wildcard listener": [found, missing],
        "wildcard listener without IPV6_PKTINFO": [found, missing],
    }, run.stderr


LISTENER = textwrap.dedent(r'''
    import asyncio, json, socket, subprocess
    from ccmsec.aio.tftp import TftpServer, tftp_get

    subprocess.run("ip link set lo up && ip link add v0 type veth peer name v1 && ip link set v0 up "
                   "&& ip link set v1 up && ip -6 addr add fe80::1/64 dev v0 nodad", shell=True, check=True)
    DATA = bytes(range(256)) * 9

    async def resolve(name, client):
        return DATA if name == "SEP001122334455.cnf.xml" else None

    async def main():
        out = {}
        for case, host in (("by name", "fe80::1%v0"), ("by number", f"fe80::1%{socket.if_nametoindex('v0')}")):
            async with TftpServer(host, 0, resolve, timeout=0.3) as server:
                try:
                    got = await tftp_get(*server.address, "SEP001122334455.cnf.xml", timeout=0.3, retries=3)
                    fetched = got == DATA
                except Exception as exc:
                    fetched = repr(exc)
                out[case] = {"address": [server.address[0], server.address[1] > 0], "fetched": fetched}
        print(json.dumps(out))

    asyncio.run(main())
''')


def test_a_link_local_listener_reports_its_address_with_its_interface():
    """`TftpServer.address` of a listener on `fe80::1%v0` (or `%<index>`) was ("fe80::1", port):
    the kernel reports the scope id apart from the host, and it was dropped — the address shown was
    not the one listened on, and a client handed it sends by whichever interface the routing table
    picks for fe80::/64. It is now ("fe80::1%v0", port), the interface by name even when given by
    number, and `tftp_get(*server.address, ...)` fetches the file with it."""
    why = _why_no_namespaces()
    if why:
        pytest.skip(why)
    run = subprocess.run(["unshare", "-rn", sys.executable, "-c", LISTENER], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {case: {"address": ["fe80::1%v0", True], "fetched": True}
                      for case in ("by name", "by number")}, run.stderr


# A name service of the test's own (glibc loads `libnss_<name>.so.2` from LD_LIBRARY_PATH; the
# test's mount namespace points /etc/nsswitch.conf at it): as mDNS or nss-myhostname do, it
# answers a link-local address with its interface — `tftp-server.test` is fe80::1 on v1 — and
# `tftp-dual.test` has that address and 127.0.0.1.
NSS_MODULE = r'''
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <nss.h>
#include <stdint.h>
#include <string.h>

enum nss_status _nss_ccmsectest_gethostbyname4_r(const char *name, struct gaih_addrtuple **pat, char *buffer,
                                                 size_t buflen, int *errnop, int *herrnop, int32_t *ttlp) {
    int dual = strcmp(name, "tftp-dual.test") == 0;
    if (!dual && strcmp(name, "tftp-server.test") != 0) {
        *errnop = ENOENT;
        *herrnop = HOST_NOT_FOUND;
        return NSS_STATUS_NOTFOUND;
    }
    size_t pad = (-(uintptr_t)buffer) & (__alignof__(struct gaih_addrtuple) - 1);
    size_t len = strlen(name) + 1;
    if (buflen < pad + 2 * sizeof(struct gaih_addrtuple) + len) {
        *errnop = ERANGE;
        *herrnop = NETDB_INTERNAL;
        return NSS_STATUS_TRYAGAIN;
    }
    struct gaih_addrtuple *tuple = (struct gaih_addrtuple *)(buffer + pad);
    memset(tuple, 0, 2 * sizeof(*tuple));
    char *copy = memcpy((char *)(tuple + 2), name, len);
    tuple[0].name = copy;
    tuple[0].family = AF_INET6;
    inet_pton(AF_INET6, "fe80::1", tuple[0].addr);
    tuple[0].scopeid = if_nametoindex("v1");
    if (dual) {
        tuple[0].next = &tuple[1];
        tuple[1].family = AF_INET;
        inet_pton(AF_INET, "127.0.0.1", tuple[1].addr);
    }
    *pat = tuple;
    if (ttlp) *ttlp = 0;
    return NSS_STATUS_SUCCESS;
}
'''

RESOLVED = textwrap.dedent(r'''
    import asyncio, json, os, subprocess, sys
    from ccmsec.aio.tftp import TftpServer

    def sh(cmd):
        subprocess.run(cmd, shell=True, check=True)

    CHILD = """
    import asyncio, json, subprocess, sys
    from ccmsec.aio.tftp import TftpServer, tftp_get
    DATA = bytes(range(256)) * 9
    async def resolve(name, client):
        return DATA if name == "SEP001122334455.cnf.xml" else None
    print("ready", flush=True)
    sys.stdin.readline()                           # v1 has been moved into this namespace
    # The decoy: w0's fe80::/64 route is preferred, so a datagram to fe80::1 without v1's scope
    # id leaves by w0 and is lost.
    subprocess.run("ip link set lo up && ip link set v1 up && ip -6 addr add fe80::2/64 dev v1 nodad "
                   "&& ip link add w0 type veth peer name w1 && ip link set w0 up && ip link set w1 up "
                   "&& ip -6 route add fe80::/64 dev w0 metric 1", shell=True, check=True)
    port = int(sys.stdin.readline())
    async def fetch(name, port, bind_host=None):
        try:
            data = await tftp_get(name, port, "SEP001122334455.cnf.xml", bind_host=bind_host,
                                  timeout=0.3, retries=3)
            return "ok" if data == DATA else "wrong data"
        except Exception as exc:
            return repr(exc)
    async def main():
        async with TftpServer("127.0.0.1", 0, resolve, timeout=0.3) as v4:
            out = {"link-local name": await fetch("tftp-server.test", port),
                   "name of two families, IPv4 asked": await fetch("tftp-dual.test", v4.address[1], "0.0.0.0"),
                   "IPv6-only name, IPv4 asked": await fetch("tftp-server.test", port, "0.0.0.0")}
        print(json.dumps(out), flush=True)
    asyncio.run(main())
    """

    async def resolve(name, client):
        return bytes(range(256)) * 9 if name == "SEP001122334455.cnf.xml" else None

    async def main():
        sh(f"mount --bind {os.environ['NSSWITCH']} /etc/nsswitch.conf")
        sh("ip link set lo up && ip link add v0 type veth peer name v1 && ip link set v0 up "
           "&& ip -6 addr add fe80::1/64 dev v0 nodad")
        child = await asyncio.create_subprocess_exec(
            "unshare", "-n", sys.executable, "-c", CHILD,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert (await child.stdout.readline()).strip() == b"ready"
        sh(f"ip link set v1 netns {child.pid}")
        child.stdin.write(b"go\n")
        async with TftpServer("fe80::1%v0", 0, resolve, timeout=0.3) as server:
            child.stdin.write(f"{server.address[1]}\n".encode())
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            await child.wait()
        print(line.decode().strip())

    asyncio.run(main())
''')


def test_a_name_that_resolves_to_a_link_local_address_keeps_its_interface(tmp_path):
    """`tftp_get` given a name kept only the host of the resolver's answer: a link-local one
    (fe80::1 on v1, as mDNS or nss-myhostname answer) lost its scope id and the request left by the
    decoy route, so the fetch timed out. It now keeps the whole socket address getaddrinfo gives,
    and with `bind_host` given it resolves in that family (a name with an IPv6 and an IPv4
    address, `bind_host="0.0.0.0"`: the IPv4 one, not an IPv6 address and an IPv4 socket; a name
    without an address of that family: a TftpError saying so)."""
    why = _why_no_namespaces()
    if why:
        pytest.skip(why)
    if shutil.which("cc") is None:  # scripts/test installs it (gcc)
        pytest.skip("cc not installed: the test's name service module is built with it")
    (tmp_path / "nss.c").write_text(NSS_MODULE)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "libnss_ccmsectest.so.2"),
                    str(tmp_path / "nss.c")], check=True, timeout=60)
    (tmp_path / "nsswitch.conf").write_text("hosts: ccmsectest\n")
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path), NSSWITCH=str(tmp_path / "nsswitch.conf"))
    run = subprocess.run(["unshare", "-rnm", sys.executable, "-c", RESOLVED], capture_output=True, text=True,
                         timeout=100, env=env)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {
        "link-local name": "ok",
        "name of two families, IPv4 asked": "ok",
        "IPv6-only name, IPv4 asked": "TftpError(\"TFTP error 0: cannot resolve 'tftp-server.test': no address "
                                      "of the family of '0.0.0.0'\")",
    }, run.stderr
