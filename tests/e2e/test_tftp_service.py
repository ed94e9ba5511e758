"""Issue 4 server side on the whole local cluster: a device added through the administration CLI is
served by the tftp-signer over real TFTP (our CLI, tftp-hpa, curl); a change through the API is in
the very next download (DEV-4); in mixed mode the signed config verifies with the TFTP certificate
(AUTH-3, CERT-5)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from cryptography import x509

from ccmsec.adminclient import AdminClient, discover
from ccmsec.formats.cnfxml import parse_cnf_xml
from ccmsec.formats.sgn import parse_sgn, verify_sgn
from tests.conftest import run_cli
from tests.ownerdb import owner_sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
DEVICE = "SEP00AA11BB22C3"


def _cli_ok(*args):
    res = run_cli(*args, timeout=60)
    assert res.returncode == 0, f"ccmsec {' '.join(args)}: {res.stderr}"
    return res


def _set_cluster_mode(data, mode: str) -> None:
    # Written straight into the mode owner's database as the owner commits (its commit counter,
    # ccmsec/db/commits.py); the tftp-signer's version check sees the commit and asks the mode's
    # owner (CtlProvider/GetSecurityMode) at the next request, so no event is needed (and none is
    # sent, so the other services of the shared session cluster are not reset).
    owner_sql(data, "ctl-provider", "UPDATE cluster_settings SET value = ? WHERE key = 'security_mode'", mode)


def test_device_config_served_by_tftp_after_admin_changes(cluster, tmp_path):
    data = cluster["data"]
    tftp = cluster["endpoints"]["services"]["tftp-signer"]
    _cli_ok("device", "add", DEVICE, "--model", "7970", "--data", str(data))
    out = tmp_path / "via-cli.xml"
    _cli_ok("tftp", "get", f"{DEVICE}.cnf.xml", "-o", str(out), "--data", str(data))
    config = parse_cnf_xml(out.read_bytes())
    assert config.device_name == DEVICE and config.hardening.web_access is True
    assert config.call_managers[0].host == cluster["endpoints"]["services"]["callmanager"]["host"]
    assert config.capf.host == cluster["endpoints"]["services"]["capf"]["host"]

    if shutil.which("tftp"):
        subprocess.run(["tftp", tftp["host"], str(tftp["tftp_port"]), "-m", "binary", "-c", "get",
                        f"{DEVICE}.cnf.xml", str(tmp_path / "hpa.xml")], check=True, timeout=30)
        assert (tmp_path / "hpa.xml").read_bytes() == out.read_bytes()
    if shutil.which("curl"):
        subprocess.run(["curl", "-sS", "-o", str(tmp_path / "curl.xml"),
                        f"tftp://{tftp['host']}:{tftp['tftp_port']}/{DEVICE}.cnf.xml"], check=True, timeout=30)
        assert (tmp_path / "curl.xml").read_bytes() == out.read_bytes()

    # DEV-4: hardening changed through the HTTPS API is in the next download.
    with AdminClient(discover(data)) as admin:
        admin.update_device(DEVICE, web_access=False, pc_port=False)
    changed = parse_cnf_xml(_cli_ok("tftp", "get", f"{DEVICE}.cnf.xml", "--data", str(data)).stdout.encode())
    assert changed.hardening.web_access is False and changed.hardening.pc_port is False

    listing = json.loads(_cli_ok("tftp", "ls", "--devices", "--json", "--data", str(data)).stdout)
    names = {f["name"]: f for f in listing["files"]}
    assert f"{DEVICE}.cnf.xml" in names and names["SCCP70.8-4-2S.sbn"]["signed"]


def test_auth3_sgn_only_in_mixed_mode_and_signed_by_the_tftp_certificate(cluster, tmp_path):
    data = cluster["data"]
    _cli_ok("device", "add", "SEP00AA11BB22C4", "--model", "7960", "--data", str(data))
    res = run_cli("tftp", "get", "SEP00AA11BB22C4.cnf.xml.sgn", "--data", str(data), timeout=60)
    assert res.returncode != 0 and "error 1" in res.stderr  # non-secure: nothing is signed
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    res = run_cli("tftp", "cert", "-o", str(blocker / "tftp.cer"), "--data", str(data), timeout=60)
    assert res.returncode != 0 and "cannot write" in res.stderr and "Traceback" not in res.stderr
    _cli_ok("tftp", "cert", "-o", str(tmp_path / "tftp.cer"), "--data", str(data))
    cert = x509.load_der_x509_certificate((tmp_path / "tftp.cer").read_bytes())
    assert (data / "servers" / "tftp-signer" / "ccmserver.cer").read_bytes() == (tmp_path / "tftp.cer").read_bytes()
    _set_cluster_mode(data, "mixed")
    try:
        out = tmp_path / "signed.sgn"
        _cli_ok("tftp", "get", "SEP00AA11BB22C4.cnf.xml.sgn", "-o", str(out), "--data", str(data))
        signed = parse_sgn(out.read_bytes())
        verify_sgn(signed, cert)
        assert parse_cnf_xml(signed.payload).device_name == "SEP00AA11BB22C4"
        started = time.monotonic()
        res = _cli_ok("tftp", "resign", "--all", "--data", str(data))
        assert "signed" in res.stdout and time.monotonic() - started < 30
    finally:
        _set_cluster_mode(data, "non-secure")
    res = run_cli("tftp", "get", "RingList.xml.sgn", "--data", str(data), timeout=60)
    assert res.returncode != 0 and "error 1" in res.stderr


def test_1100_read_requests_from_one_address_do_not_starve_a_phone_elsewhere(cluster):
    """One source cannot starve the others: 1,100 read requests from one address that never
    acknowledge hold at most that address's share of the tftp-signer's transfers (the rest get
    "server busy: too many transfers from your address"), and a phone at another address gets
    its file at once."""
    import asyncio
    import resource
    import socket

    from ccmsec.aio.tftp import tftp_get
    from ccmsec.wire import tftp as t

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2000 and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    svc = cluster["endpoints"]["services"]["tftp-signer"]
    target = (svc["host"], svc["tftp_port"])
    flood = []
    try:
        for _ in range(1100):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            flood.append(sock)
            sock.bind(("127.250.0.1", 0))
            sock.setblocking(False)
            sock.sendto(t.encode_request(t.OP_RRQ, "RingList.xml"), target)

        async def phone():
            loop = asyncio.get_running_loop()
            started = loop.time()
            data = await tftp_get(*target, "RingList.xml", bind_host="127.250.0.2", timeout=0.5)
            return data, loop.time() - started

        time.sleep(0.5)
        data, took = asyncio.run(phone())
        assert data and took < 2.0, took
        answers = {"data": 0, "busy": 0}
        for sock in flood:
            try:
                packet = t.parse_packet(sock.recv(2048))
            except BlockingIOError:
                continue
            if isinstance(packet, t.Error):
                assert packet.message == "server busy: too many transfers from your address"
                answers["busy"] += 1
            else:
                answers["data"] += 1
        assert answers["data"] <= 1024 // 4 and answers["busy"] >= 1100 - 1024 // 4, answers
    finally:
        for sock in flood:
            sock.close()
