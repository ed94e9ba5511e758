"""Simulated phones in the running local cluster: `ccmsec phones …` against the phone-sim service,
booting from the tftp-signer and registering with callmanager in non-secure mode."""

from __future__ import annotations

import asyncio
import re

import grpc
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
    if "tftp-unreachable" in show:
        pytest.skip("tftp-signer does not serve TFTP yet; the phone reached the TFTP download stage")
    if "config-missing" in show:
        pytest.skip("tftp-signer serves neither SEP<MAC>.cnf.xml nor XMLDefault.cnf.xml yet")
    if "registration-failed" in show and "cannot connect" in show:
        pytest.skip("callmanager's SCCP listener is not up yet; the phone got its configuration")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "state: registered" in show and "transport: non-secure" in show, show
    listing = cli(cluster, "list").stdout
    assert all(f"{n}  7960   registered" in listing for n in names), listing
    try:
        regs = _registrations(cluster, names[0]).registrations
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip("callmanager has no GetRegistrations yet")
        raise
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
