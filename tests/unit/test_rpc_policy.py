"""The authorization policy (issue 9 §2) covers exactly the RPCs the protos declare.

A new RPC without a policy entry fails here (and is refused at run time: default deny); an entry
for a method that no longer exists fails too, so the table never drifts from the protos.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import ccmsec_proto
from ccmsec.runtime import rpc_policy
from ccmsec.runtime.identity import IDENTITY_ROLES

ROOT = Path(__file__).resolve().parents[2]


def proto_methods() -> set[str]:
    """Every method of every ccmsec.v1 service, from the generated descriptors."""
    found = set()
    for info in pkgutil.iter_modules(ccmsec_proto.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"ccmsec_proto.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name.startswith("ccmsec.v1."), service.full_name
            found |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return found


def test_every_proto_method_has_a_policy_entry():
    methods = proto_methods()
    assert len(methods) > 60  # the walk really saw the protos
    missing = sorted(methods - set(rpc_policy.POLICY))
    assert not missing, ("RPCs without an authorization policy entry (add them to "
                         f"ccmsec/runtime/rpc_policy.py): {missing}")


def test_no_policy_entry_for_a_method_that_does_not_exist():
    open_services = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                     "/grpc.reflection.v1.ServerReflection/")
    stale = sorted(m for m in rpc_policy.POLICY if m not in proto_methods() and not m.startswith(open_services))
    assert not stale, f"policy entries for methods no proto declares: {stale}"


def test_entries_name_only_known_roles_and_are_never_empty():
    for method, roles in rpc_policy.POLICY.items():
        assert roles, method
        if roles is not rpc_policy.ANY:
            assert roles <= set(IDENTITY_ROLES), (method, roles - set(IDENTITY_ROLES))


def test_the_rules_of_issue_9():
    """Key material only to call control; CA and mode changes only from the administration path
    and the owner that needs them; phone-sim and the gateway get nothing that changes state."""
    p = rpc_policy.POLICY
    assert p["/ccmsec.v1.KeyManager/GenerateCallKeys"] == {"callmanager"}
    for ca_change in ("SetThirdPartyCa", "ImportCertificates", "ExportCsrs"):
        assert p[f"/ccmsec.v1.Capf/{ca_change}"] == {"cli", "admin-api"}
    # The cluster mode has one owner (issue 9 §5): changed only at ctl-provider, by the admin path.
    assert not any(m.startswith("/ccmsec.v1.CallManager/Set") and "Mode" in m for m in p)
    assert p["/ccmsec.v1.CtlProvider/SetSecurityMode"] == {"cli", "admin-api"}
    assert p["/ccmsec.v1.CtlProvider/CommitCtl"] == {"cli", "admin-api"}
    # The third-party CA is read from its owner (issue 9 §1): by call control, which trusts its
    # LSCs on 2443, and phone-sim, whose phones store them; set by the administration path alone.
    assert p["/ccmsec.v1.Capf/GetThirdPartyCa"] == {"cli", "admin-api", "callmanager", "phone-sim"}
    for role in ("phone-sim", "srtp-gateway"):
        mine = sorted(m for m, r in p.items() if role in r and r is not rpc_policy.ANY)
        reads = ("/ccmsec.v1.TftpSigner/GetSigningCertificate", "/ccmsec.v1.CallManager/GetClusterMode",
                 "/ccmsec.v1.Capf/GetThirdPartyCa")
        assert all(m.endswith("/Status") or m in reads for m in mine), (role, mine)
    # Devices are call control's; CAPF alone looks them up over gRPC (issue 9 §5), nobody else.
    for lookup in ("GetDevice", "ListDevices"):
        assert p[f"/ccmsec.v1.CallManager/{lookup}"] == {"capf"}
        assert not rpc_policy.is_allowed(f"/ccmsec.v1.CallManager/{lookup}", "tftp-signer")
        assert not rpc_policy.is_allowed(f"/ccmsec.v1.CallManager/{lookup}", "cli")
    # A node's own server certificate: only the CTL Provider builds CallManager records from it.
    assert p["/ccmsec.v1.CallManager/GetServerCertificate"] == {"ctl-provider"}
    # The administration API's cluster view asks the mode's and the CTL's owner.
    for read in ("GetSecurityMode", "GetCurrentCtl"):
        assert rpc_policy.is_allowed(f"/ccmsec.v1.CtlProvider/{read}", "admin-api")
    assert not rpc_policy.is_allowed("/ccmsec.v1.KeyManager/NoSuchMethod", "callmanager")
    assert rpc_policy.is_allowed("/grpc.health.v1.Health/Check", "phone-sim")


def test_docs_show_the_table_as_declared():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    match = re.search(r"<!-- rpc-policy -->\n(.*?)\n<!-- /rpc-policy -->", doc, re.S)
    assert match, "docs/architecture.md lacks the generated policy table"
    assert match.group(1).strip() == rpc_policy.describe().strip(), (
        "docs/architecture.md's policy table is stale: paste rpc_policy.describe() between the markers")
