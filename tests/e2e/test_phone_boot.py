"""Simulated phones in the running local cluster: `ccmsec phones …` against the phone-sim service,
booting from the tftp-signer and registering with callmanager in non-secure mode."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec_proto import callmanager_pb2, callmanager_pb2_grpc
from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def cli(cluster, *args, timeout=90):
    return run_cli("phones", *args, "--data", str(cluster["data"]), timeout=timeout)


def _registrations(cluster, device):
    svc = cluster["endpoints"]["services"]["callmanager"]

    async def call():
        async with secure_channel(client_identity(cluster["data"]), svc["host"], svc["grpc_port"],
                                  "callmanager") as ch:
            stub = callmanager_pb2_grpc.CallManagerStub(ch)
            return await stub.GetRegistrations(callmanager_pb2.RegistrationsRequest(device=device), timeout=5)

    return asyncio.run(call())


def test_phones_cli_refuses_bad_input_clearly(cluster):
    res = cli(cluster, "add", "--count", "1", "--model", "9999")
    assert res.returncode != 0 and "unknown phone model" in res.stderr and "Traceback" not in res.stderr
    res = cli(cluster, "show", "SEP0BADBADBAD0")
    assert res.returncode != 0 and "unknown phone" in res.stderr
    res = cli(cluster, "boot")
    assert res.returncode != 0 and "--all" in res.stderr


def test_non_secure_phones_boot_through_tftp_and_register(cluster):
    res = cli(cluster, "add", "--count", "2", "--model", "7960", "--name-prefix", "SEP0E2E")
    assert res.returncode == 0, res.stderr
    names = re.findall(r"^(SEP[0-9A-F]{12})", res.stdout, re.M)
    assert len(names) == 2
    res = cli(cluster, "boot", *names, "--wait", "--timeout", "60")
    assert "settled" in res.stdout, res.stdout + res.stderr
    show = cli(cluster, "show", names[0]).stdout
    assert "downloading-ctl" in show and "downloading-config" in show  # it really went to TFTP
    # every stage must work: a phone stuck at TFTP or at registration fails the test, never skips it
    assert res.returncode == 0, res.stdout + res.stderr + show
    assert "state: registered" in show and "transport: non-secure" in show, show
    listing = cli(cluster, "list").stdout
    assert all(f"{n}  7960   registered" in listing for n in names), listing
    # the same for scripts (issue 16: phones show --json)
    shown = cli(cluster, "show", names[0], "--json")
    assert shown.returncode == 0, shown.stderr
    phone = json.loads(shown.stdout)
    assert phone["name"] == names[0] and phone["state"] == "registered" and phone["model"] == "7960"
    assert phone["transport"] == "non-secure", phone
    regs = _registrations(cluster, names[0]).registrations
    assert [r.device for r in regs] == [names[0]]


def test_factory_reset_and_auth_string_through_the_cli(cluster):
    res = cli(cluster, "add", "--count", "1", "--model", "7970", "--name-prefix", "SEP0F7")
    assert res.returncode == 0 and "MIC" in res.stdout, res.stderr
    name = res.stdout.split()[0]
    assert cli(cluster, "set-auth-string", name, "12ab").returncode != 0
    assert cli(cluster, "set-auth-string", name, "123456").returncode == 0
    res = cli(cluster, "factory-reset", name)
    assert res.returncode == 0 and "MIC kept" in res.stdout  # CERT-1
    show = cli(cluster, "show", name).stdout
    assert "MIC   O=ccmsec" in show or "MIC   CN=" in show, show
    assert "LSC   none" in show and "trust list: none" in show


def _phone(cluster, name):
    from ccmsec_proto import phone_sim_pb2, phone_sim_pb2_grpc

    svc = cluster["endpoints"]["services"]["phone-sim"]

    async def call():
        async with secure_channel(client_identity(cluster["data"]), svc["host"], svc["grpc_port"],
                                  "phone-sim") as ch:
            return await phone_sim_pb2_grpc.PhoneSimStub(ch).GetPhone(
                phone_sim_pb2.PhoneName(name=name), timeout=5)

    return asyncio.run(call())


def _wait_rebooted(cluster, name, boots, timeout=60.0):
    """Until the phone has booted again (the RST-2 reset) and settled registered."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        p = _phone(cluster, name)
        if p.boots > boots and p.state == "registered" and not p.booting:
            return p
        assert time.monotonic() < deadline, (p.state, p.boots, p.last_failure_reason)
        time.sleep(0.3)


def test_chk11_hardening_through_the_cli_reaches_the_phone_and_is_honoured(cluster):
    """CHK-11, DEV-4, RST-2 on the running cluster: `device harden` stores the settings, the
    device's cnf.xml carries them, the reset reboots the phone, and the phone then refuses what
    is off — web server (connection refused), Settings menu (locked), PC port (no link)."""
    import urllib.request

    name = "SEP0C1100000001"
    data = ["--data", str(cluster["data"])]
    added = run_cli("device", "add", name, "--model", "7970", *data)
    assert added.returncode == 0, added.stderr
    res = cli(cluster, "add", "--model", "7970", "--name", name)
    assert res.returncode == 0 and res.stdout.startswith(name), res.stdout + res.stderr
    assert "does not know" not in res.stderr  # the device exists in call control
    res = cli(cluster, "boot", name, "--wait", "--timeout", "60")
    assert res.returncode == 0, res.stdout + res.stderr
    before = _phone(cluster, name)
    assert before.web_address and before.pc_port.startswith("enabled")
    with urllib.request.urlopen(f"http://{before.web_address}/", timeout=5) as page:
        assert name.encode() in page.read()
    opened = cli(cluster, "settings", name)
    assert opened.returncode == 0 and "PC port" in opened.stdout, opened.stderr

    hardened = run_cli("device", "harden", name, *data)
    assert hardened.returncode == 0, hardened.stderr
    assert "RST-2" in hardened.stdout and "span        off" in hardened.stdout
    config = run_cli("tftp", "get", f"{name}.cnf.xml", *data)  # what the TFTP server now serves
    assert config.returncode == 0, config.stderr
    for element in ("<webAccess>1</webAccess>", "<pcPort>1</pcPort>", "<garp>1</garp>",
                    "<settingsAccess>0</settingsAccess>", "<voiceVlanAccess>1</voiceVlanAccess>",
                    "<spanToPCPort>0</spanToPCPort>"):
        assert element in config.stdout, config.stdout
    after = _wait_rebooted(cluster, name, before.boots)
    assert after.web_address == "" and after.settings["webAccess"] == "off"
    assert after.pc_port.startswith("disabled: a PC plugged into the phone gets no link")
    assert after.settings["settingsAccess"] == "off" and after.settings["garp"] == "off"
    host, port = before.web_address.rsplit(":", 1)
    import socket

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()
    locked = cli(cluster, "settings", name)
    assert locked.returncode == 1 and "Settings menu is locked" in locked.stderr
    shown = cli(cluster, "show", name).stdout
    assert "web server: off (connection refused)" in shown and "PC port: disabled" in shown

    # One feature back on: only that one is honoured again.
    res = run_cli("device", "harden", name, "--settings", "on", "--pc-port", "on", *data)
    assert res.returncode == 0, res.stderr
    again = _wait_rebooted(cluster, name, after.boots)
    assert again.pc_port.startswith("enabled: the PC is kept off the voice VLAN")
    assert cli(cluster, "settings", name).returncode == 0
    assert again.web_address == ""


def test_phones_can_be_pointed_at_other_servers_through_the_cli(cluster):
    """Issue 14: `phones set-servers` points a phone at any TFTP / CAPF / call-control address;
    a bad address is refused with one clear line and changes nothing; --clear goes back."""
    res = cli(cluster, "add", "--count", "1", "--model", "7960", "--name-prefix", "SEP0F8")
    assert res.returncode == 0, res.stderr
    name = res.stdout.split()[0]
    for bad, text in ((("--capf", "capf host:3804"), "CAPF:"), (("--tftp", "127.0.0.9:70000"), "1..65535"), ((), "--tftp")):
        res = cli(cluster, "set-servers", name, *bad)
        assert res.returncode != 0 and text in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert "overrides" not in cli(cluster, "show", name).stdout
    res = cli(cluster, "set-servers", name, "--tftp", "127.0.0.9", "--capf", "127.0.0.9:3805",
              "--call-control", "127.0.0.9:2001")
    assert res.returncode == 0, res.stderr
    show = cli(cluster, "show", name).stdout
    assert "TFTP 127.0.0.9:69   CAPF 127.0.0.9:3805   call control 127.0.0.9:2001" in show, show
    cli(cluster, "boot", name, "--wait", "--timeout", "60")
    show = cli(cluster, "show", name).stdout
    assert "no answer from TFTP 127.0.0.9:69" in show, show  # it went where it was pointed
    assert cli(cluster, "set-servers", name, "--clear").returncode == 0
    assert "overrides" not in cli(cluster, "show", name).stdout


def test_secrets_at_rest_in_the_running_cluster_are_owner_only(cluster):
    """Each role's database (callmanager's: password and auth-string hashes) with its WAL, and phone-sim's phones.json
    (private keys, auth strings) as the running services wrote them: 0600, in 0700 folders."""
    import os
    import stat
    import time
    from pathlib import Path

    from ccmsec.cluster.databases import database_path

    data = cluster["data"]
    res = cli(cluster, "add", "--count", "1", "--model", "7970", "--name-prefix", "SEP0E55")
    assert res.returncode == 0, res.stderr
    phones = data / "phone-sim" / "phones.json"
    deadline = time.monotonic() + 10
    while not phones.exists():  # the fleet saves in the background
        assert time.monotonic() < deadline
        time.sleep(0.1)
    users = json.loads((data / "run" / "endpoints.json").read_text()).get("service_users") or {}
    if "uid_base" in users:
        # Services under uids of their own (ccmsec.cluster.accounts): each role's own database
        # (ccmsec.cluster.databases) — call control's callmanager's, group read-write for its
        # subscribers; phone-sim's its uid's alone, like its own file and folder.
        shared = users["uid_base"]
        callmanager, phone_sim = shared + 4, shared + 8
        for path in (database_path(data, "callmanager"), Path(f"{database_path(data, 'callmanager')}-wal")):
            st = os.stat(path)
            assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == st.st_gid == callmanager, path
        st = os.stat(database_path(data, "phone-sim"))
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == phone_sim, st
        assert not (data / "ccmsec.db").exists()
        st = os.stat(data)
        assert stat.S_IMODE(st.st_mode) == 0o3771 and st.st_uid == 0 and st.st_gid == shared
        assert stat.S_IMODE(os.stat(phones).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(data / "phone-sim").st_mode) == 0o700
        assert os.stat(phones).st_uid == os.stat(data / "phone-sim").st_uid == shared + 8  # phone-sim's
        return
    for path in (database_path(data, "callmanager"), Path(f"{database_path(data, 'callmanager')}-wal"),
                 database_path(data, "phone-sim"), phones):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    for folder in (data, data / "phone-sim", data / "db" / "phone-sim"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
