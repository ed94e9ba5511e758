"""Security on an SRST reference in the running cluster (CHK-10, SRST-2, CERT-6, RST-5): the
administration API fetches the srst service's certificate over TLS 2445, stores it with the
reference, places it in the configuration file of every phone whose pool names the reference —
not in the CTL — and resets exactly those phones. Bad cases: a router that cannot be reached, a
certificate that changed (refused until confirmed), a phone outside the pool untouched."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest

from ccmsec.adminclient import AdminApiError, AdminClient, discover
from ccmsec.aio.srstcreds import CredentialsServer
from ccmsec.aio.tftp import tftp_get
from ccmsec.formats.cnfxml import parse_cnf_xml
from ccmsec.formats.sgn import parse_sgn
from ccmsec.wire.tftp import TftpError
from ccmsec.pki.ca import fingerprint_sha256
from ccmsec.pki.servercert import ensure_server_certificate
from tests.conftest import free_port, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

IN_POOL, OUTSIDE = "SEP0A5A00000001", "SEP0A5A00000002"


def phones(cluster, *args, timeout=90):
    return run_cli("phones", *args, "--data", str(cluster["data"]), timeout=timeout)


def boots(cluster, name) -> int:
    out = phones(cluster, "show", name).stdout
    return int(re.search(r"boots: (\d+)", out).group(1))


def state(cluster, name) -> str:
    return re.search(r"state: (\S+)", phones(cluster, "show", name).stdout).group(1)


def config_of(cluster, name):
    """The file the phone gets: signed in mixed mode, plain in a non-secure cluster."""
    svc = cluster["endpoints"]["services"]["tftp-signer"]
    get = lambda f: asyncio.run(tftp_get(svc["host"], svc["tftp_port"], f, timeout=2, retries=3))
    try:
        return parse_cnf_xml(parse_sgn(get(f"{name}.cnf.xml.sgn")).payload)
    except TftpError:
        return parse_cnf_xml(get(f"{name}.cnf.xml"))


class LoopThread:
    """An asyncio loop of the test's own, for a credentials server the test controls."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_securing_the_reference_reaches_only_its_pools_phones_CERT_6_RST_5(cluster):
    services = cluster["endpoints"]["services"]
    srst, cm = services["srst"], services["callmanager"]
    router_der = (cluster["data"] / "srst" / "srst" / "ccmserver.cer").read_bytes()
    with AdminClient(discover(cluster["data"])) as admin:
        for name in (IN_POOL, OUTSIDE):
            admin.add_device(name, "7960")
            assert phones(cluster, "add", "--model", "7960", "--name", name).returncode == 0
        admin.add_srst_reference("E2E-SRST", srst["host"], sccp_port=srst["sccp_port"],
                                 sccp_tls_port=srst["sccp_tls_port"],
                                 credentials_port=srst["srst_cert_port"])
        admin.add_pool("E2E-SRST-POOL", [cm["host"]], srst="E2E-SRST")
        admin.set_device_pool(IN_POOL, "E2E-SRST-POOL")
        res = phones(cluster, "boot", IN_POOL, OUTSIDE, "--wait", "--timeout", "60")
        assert res.returncode == 0, res.stdout + res.stderr
        assert state(cluster, IN_POOL) == state(cluster, OUTSIDE) == "registered"
        before = {n: boots(cluster, n) for n in (IN_POOL, OUTSIDE)}
        assert config_of(cluster, IN_POOL).srst.certificate is None  # not secure yet

        result = admin.srst_security("E2E-SRST", True)
        assert result["secure"] and result["certificate_sha256"] == fingerprint_sha256(
            parse_der(router_der))
        assert result["reset"] == [IN_POOL]  # RST-5: only the pool's phones
        info = config_of(cluster, IN_POOL).srst
        assert info.is_secure and info.certificate == router_der and info.addresses == (srst["host"],)
        assert info.secure_ports == (srst["sccp_tls_port"],)
        outside = config_of(cluster, OUTSIDE).srst
        assert outside.certificate is None and not outside.is_secure
        # The CTL never carries it (CERT-6).
        ctl_entries = phones(cluster, "show", IN_POOL).stdout
        assert "ROLE_SRST" not in ctl_entries

        deadline = time.monotonic() + 60
        while boots(cluster, IN_POOL) == before[IN_POOL]:
            assert time.monotonic() < deadline, "the pool's phone was not reset (RST-5)"
            time.sleep(0.5)
        assert boots(cluster, OUTSIDE) == before[OUTSIDE], "a phone outside the pool was reset"
        # Configuring the same certificate again changes nothing and resets nobody.
        assert admin.srst_security("E2E-SRST", True)["reset"] == []
        shown = admin.srst_reference("E2E-SRST")
        assert shown["devices"] == [IN_POOL] and shown["pools"] == ["E2E-SRST-POOL"]

        res = run_cli("srst", "show", "E2E-SRST", "--data", str(cluster["data"]))
        assert res.returncode == 0 and shown["certificate_sha256"] in res.stdout, res.stderr


def parse_der(der):
    from cryptography import x509
    return x509.load_der_x509_certificate(der)


def test_unreachable_router_and_changed_certificate_change_nothing_SRST_2(cluster, tmp_path):
    loop = LoopThread()
    port = free_port()
    first = ensure_server_certificate(tmp_path / "a", "router-a", ip="127.0.0.1")
    second = ensure_server_certificate(tmp_path / "b", "router-a", ip="127.0.0.1")
    try:
        with AdminClient(discover(cluster["data"])) as admin:
            admin.add_srst_reference("E2E-SRST-OWN", "127.0.0.1", credentials_port=port)
            with pytest.raises(AdminApiError) as caught:
                admin.srst_security("E2E-SRST-OWN", True)  # nothing listens yet
            assert caught.value.status == 502 and caught.value.rule == "SRST-2"
            assert "unreachable" in caught.value.error
            assert admin.srst_reference("E2E-SRST-OWN")["secure"] is False

            server = CredentialsServer(first)
            loop.run(server.start("127.0.0.1", port))
            stored = admin.srst_security("E2E-SRST-OWN", True)["certificate_sha256"]
            assert stored == fingerprint_sha256(first.cert)
            loop.run(server.close())

            server = CredentialsServer(second)  # the router now shows another certificate
            loop.run(server.start("127.0.0.1", port))
            with pytest.raises(AdminApiError) as caught:
                admin.srst_security("E2E-SRST-OWN", True)
            new = fingerprint_sha256(second.cert)
            assert caught.value.status == 409 and caught.value.rule == "CERT-6"
            assert new in caught.value.error
            assert admin.srst_reference("E2E-SRST-OWN")["certificate_sha256"] == stored
            with pytest.raises(AdminApiError):
                admin.srst_security("E2E-SRST-OWN", True, accept_sha256="ab" * 32)  # wrong one
            accepted = admin.srst_security("E2E-SRST-OWN", True, accept_sha256=new)
            assert accepted["certificate_sha256"] == new
            loop.run(server.close())
            assert admin.srst_security("E2E-SRST-OWN", False)["secure"] is False
            admin.remove_srst_reference("E2E-SRST-OWN")
    finally:
        loop.stop()


def srst_cli(cluster, *args):
    return run_cli("srst", *args, "--data", str(cluster["data"]), timeout=60)


def refused(res, *words) -> None:
    """A bad case through the CLI: non-zero exit, a clear one-line reason naming `words`, no traceback."""
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    for word in words:
        assert word.lower() in out.lower(), out


def test_srst_cli_add_secure_unsecure_remove_and_their_bad_cases_CHK_10(cluster, tmp_path):
    """`ccmsec srst add|secure|unsecure|remove` as an administrator types them, each with its bad
    case: a bad address, an unknown reference, a router that does not answer."""
    loop = LoopThread()
    port = free_port()
    router = ensure_server_certificate(tmp_path / "r", "router-cli", ip="127.0.0.1")
    try:
        # add: success, then a bad address and a duplicate name are refused and store nothing.
        res = srst_cli(cluster, "add", "E2E-SRST-CLI", "--host", "127.0.0.1", "--credentials-port", str(port))
        assert res.returncode == 0 and "SRST reference E2E-SRST-CLI: 127.0.0.1" in res.stdout, res.stderr
        with AdminClient(discover(cluster["data"])) as admin:
            assert admin.srst_reference("E2E-SRST-CLI")["secure"] is False
        refused(srst_cli(cluster, "add", "E2E-SRST-BAD", "--host", "not a host!"), "host")
        refused(srst_cli(cluster, "add", "E2E-SRST-CLI", "--host", "127.0.0.2"), "E2E-SRST-CLI")
        listed = srst_cli(cluster, "list").stdout
        assert "E2E-SRST-CLI" in listed and "E2E-SRST-BAD" not in listed, listed

        # secure: nothing answers on the credentials port yet -> a clear error, still not secure.
        refused(srst_cli(cluster, "secure", "E2E-SRST-CLI"), "unreachable")
        refused(srst_cli(cluster, "secure", "NO-SUCH-SRST"), "NO-SUCH-SRST")
        server = CredentialsServer(router)
        loop.run(server.start("127.0.0.1", port))
        res = srst_cli(cluster, "secure", "E2E-SRST-CLI")
        sha = fingerprint_sha256(router.cert)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"SRST reference E2E-SRST-CLI is secure: certificate sha256 {sha}" in res.stdout, res.stdout
        loop.run(server.close())
        with AdminClient(discover(cluster["data"])) as admin:
            assert admin.srst_reference("E2E-SRST-CLI")["certificate_sha256"] == sha

        # unsecure: success, then an unknown reference.
        res = srst_cli(cluster, "unsecure", "E2E-SRST-CLI")
        assert res.returncode == 0 and "SRST reference E2E-SRST-CLI is not secure" in res.stdout, res.stderr
        with AdminClient(discover(cluster["data"])) as admin:
            assert admin.srst_reference("E2E-SRST-CLI")["secure"] is False
        refused(srst_cli(cluster, "unsecure", "NO-SUCH-SRST"), "NO-SUCH-SRST")

        # remove: success, then the same name again (now unknown).
        res = srst_cli(cluster, "remove", "E2E-SRST-CLI")
        assert res.returncode == 0 and "SRST reference E2E-SRST-CLI removed" in res.stdout, res.stderr
        assert "E2E-SRST-CLI" not in srst_cli(cluster, "list").stdout
        refused(srst_cli(cluster, "remove", "E2E-SRST-CLI"), "E2E-SRST-CLI")
    finally:
        loop.stop()
