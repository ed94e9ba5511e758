"""The attacks of issue 9, replayed on the running cluster as an attacker on the same host would:
with another service's certificate (its identity folder), call what only call control or the
administrator may call. Each is refused with PERMISSION_DENIED naming the caller, logged by the
service that refused it and recorded in callmanager's audit log; the legitimate path still works.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from ccmsec import adminclient
from ccmsec.pki import ca as ca_mod
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity, load_identity
from ccmsec_proto import (
    callmanager_pb2_grpc, capf_pb2, capf_pb2_grpc, common_pb2, ctl_provider_pb2, ctl_provider_pb2_grpc,
    keymanager_pb2, keymanager_pb2_grpc,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _identity(data: Path, role: str):
    """What a process running as `role` on this host holds: that service's identity folder."""
    return load_identity(data / "identities" / "services" / role)


def _channel(cluster, identity, role: str):
    svc = cluster["endpoints"]["services"][role]
    return secure_channel(identity, svc["host"], svc["grpc_port"], role)


def _audited(data: Path, actor: str, method: str, timeout: float = 20.0, *,
             action: str = "rpc.denied") -> dict:
    """The audit row of a refused call (written by callmanager from the refusing service's
    `access.denied`), or with `action` of another owner's write (from its `owner.change`)."""
    deadline = time.monotonic() + timeout
    with adminclient.AdminClient(adminclient.discover(data)) as api:
        while True:
            for entry in api.audit(limit=200):
                if entry["action"] == action and entry["actor"] == actor and entry["target"] == method:
                    return entry
            assert time.monotonic() < deadline, f"no {action} audit entry for {actor} -> {method}"
            time.sleep(0.2)


def _logged(data: Path, role: str, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in (data / "logs" / f"{role}.log").read_text(errors="replace").splitlines():
            if needle in line:
                return line
        assert time.monotonic() < deadline, f"{role}.log has no line with {needle!r}"
        time.sleep(0.2)


async def test_phone_sim_certificate_gets_no_srtp_keys_but_call_control_does(cluster):
    """Issue 9 §2: KeyManager key material only to call control."""
    data = cluster["data"]
    method = "/ccmsec.v1.KeyManager/GenerateCallKeys"
    request = keymanager_pb2.CallKeysRequest(call_id="attack-1")
    async with _channel(cluster, _identity(data, "phone-sim"), "keymanager") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await keymanager_pb2_grpc.KeyManagerStub(ch).GenerateCallKeys(request, timeout=10)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "phone-sim/phone-sim" in refused.value.details() and method in refused.value.details()
    assert not refused.value.trailing_metadata() or all(
        b"master" not in (v if isinstance(v, bytes) else v.encode()) for _, v in refused.value.trailing_metadata())
    async with _channel(cluster, _identity(data, "callmanager"), "keymanager") as ch:
        keys = await keymanager_pb2_grpc.KeyManagerStub(ch).GenerateCallKeys(request, timeout=10)
    assert len(keys.a_to_b.master_key) == 16 and keys.a_to_b.master_key != keys.b_to_a.master_key
    line = _logged(data, "keymanager", f"refused {method} for phone-sim/phone-sim")
    assert keys.a_to_b.master_key.hex() not in line
    entry = _audited(data, "phone-sim/phone-sim", method)
    assert entry["outcome"] == "denied" and "keymanager/keymanager" in entry["detail"]


def _lsc(issuer: ca_mod.Issued, device: str) -> ca_mod.Issued:
    key = ca_mod.new_key("ec256")
    return ca_mod.Issued(ca_mod.issue(issuer, ca_mod.name(device), key.public_key(), client=True, server=True), key)


async def _on_2443(cluster, lsc: ca_mod.Issued, *, expect: bool, timeout: float = 15.0) -> bool:
    """Whether call control's SCCP/TLS port completes mutual TLS with this LSC, once the outcome is
    `expect` (a CA change reaches call control through CAPF's event and its answer) or after `timeout`."""
    from tests.e2e.test_offline_lsc import _handshake_within

    from ccmsec.pki.tls import sccp_phone_context
    from cryptography import x509

    svc = cluster["endpoints"]["services"]["callmanager"]
    ccm = x509.load_der_x509_certificate(
        (cluster["data"] / "servers" / "callmanager" / "ccmserver.cer").read_bytes())
    ctx = sccp_phone_context("authenticated", [ccm], lsc=lsc)
    return await _handshake_within(svc["host"], svc["sccp_tls_port"], ctx, ccm, expect=expect, timeout=timeout)


async def test_phone_sim_certificate_cannot_install_a_third_party_ca_but_the_administrator_can(cluster, tmp_path):
    """Issue 9 §2: CA changes only from the administration path. And the attack's last step (§1):
    an LSC minted from the attacker's CA — refused by SetThirdPartyCa, then planted as the file call
    control used to read — is refused by call control's 2443; the administrator's CA is trusted
    through CAPF (its event, then `Capf/GetThirdPartyCa`), never through a file."""
    data = cluster["data"]
    method = "/ccmsec.v1.Capf/SetThirdPartyCa"
    stored = data / "capf" / "lsc-third-party-ca.crt"  # CAPF's own folder
    before = stored.read_bytes() if stored.exists() else None
    evil = ca_mod.create_ca(ca_mod.name("Attacker CA"), ca_mod.new_key("ec256"))
    async with _channel(cluster, _identity(data, "phone-sim"), "capf") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await capf_pb2_grpc.CapfStub(ch).SetThirdPartyCa(
                capf_pb2.ThirdPartyCaRequest(certificate=evil.pem), timeout=10)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "phone-sim/phone-sim" in refused.value.details() and method in refused.value.details()
    assert (stored.read_bytes() if stored.exists() else None) == before  # nothing installed
    _audited(data, "phone-sim/phone-sim", method)
    _logged(data, "capf", f"refused {method} for phone-sim/phone-sim")
    # The other door: the file call control used to trust, written by any process of the host
    # (in compose, by any container: the shared volume was read-write for all).
    (data / "pki" / "lsc-third-party-ca.crt").write_bytes(evil.pem)
    forged = _lsc(evil, "SEP00E2EA77AC7")
    assert not await _on_2443(cluster, forged, expect=True, timeout=5), \
        "call control accepted an LSC of the attacker's CA on 2443"
    _logged(data, "callmanager", "unable to get local issuer certificate")
    # The legitimate administration path (the command line's own identity) still works.
    good = ca_mod.create_ca(ca_mod.name("Plane E2E Third-Party CA"), ca_mod.new_key("ec256"))
    async with _channel(cluster, client_identity(data), "capf") as ch:
        cert = await capf_pb2_grpc.CapfStub(ch).SetThirdPartyCa(
            capf_pb2.ThirdPartyCaRequest(certificate=good.pem), timeout=10)
    assert "Plane E2E Third-Party CA" in cert.subject and stored.read_bytes() == good.pem
    assert await _on_2443(cluster, _lsc(good, "SEP00E2EA77AC8"), expect=True), \
        "the administrator's CA did not reach call control through CAPF"
    assert not await _on_2443(cluster, forged, expect=True, timeout=3)  # the planted one still is not
    # ...and is audited by its owner (CAPF's owner.change, recorded by callmanager; issue 9 §5).
    entry = _audited(data, "cli/cli", "capf", action="capf.third_party_ca")
    assert entry["outcome"] == "ok" and "Plane E2E Third-Party CA" in entry["detail"]
    assert "(via grpc)" in entry["detail"] and "by capf" in entry["detail"]


async def test_gateway_certificate_cannot_change_the_cluster_mode(cluster):
    """Issue 9 §2, §5: the mode is ctl-provider's, changed only from the administration path; the
    old door on call control is gone."""
    data = cluster["data"]
    method = "/ccmsec.v1.CtlProvider/SetSecurityMode"
    admin = client_identity(data)
    async with _channel(cluster, admin, "callmanager") as ch:
        mode_before = (await callmanager_pb2_grpc.CallManagerStub(ch).GetClusterMode(common_pb2.Empty(), timeout=10)).mode
    async with _channel(cluster, _identity(data, "srtp-gateway"), "ctl-provider") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ctl_provider_pb2_grpc.CtlProviderStub(ch).SetSecurityMode(
                ctl_provider_pb2.SecurityModeRequest(mode=common_pb2.CLUSTER_NON_SECURE), timeout=10)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "srtp-gateway/srtp-gateway" in refused.value.details()
    async with _channel(cluster, admin, "callmanager") as ch:
        mode_after = (await callmanager_pb2_grpc.CallManagerStub(ch).GetClusterMode(common_pb2.Empty(), timeout=10)).mode
    assert mode_after == mode_before
    _audited(data, "srtp-gateway/srtp-gateway", method)
    _logged(data, "ctl-provider", f"refused {method} for srtp-gateway/srtp-gateway")


async def test_services_hold_only_their_own_key(cluster):
    """Issue 9 §1: each service folder holds its own key only (0600, folder 0700); the CA key is
    in DATA/pki, which no service reads."""
    data = cluster["data"]
    for role, _ in cluster["endpoints"]["services"].items():
        folder = data / "identities" / "services" / role
        keys = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.key"))
        assert keys == (["admin-api/tls.key", "tls.key"] if role == "callmanager" else ["tls.key"]), role
        assert (folder.stat().st_mode & 0o777) == 0o700
        assert ((folder / "tls.key").stat().st_mode & 0o777) == 0o600
        assert str(load_identity(folder).identity) == f"{role}/{role}"
