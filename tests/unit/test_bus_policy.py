"""The bus policy table (BUS-2, BUS-3): subjects, the consumer's check, the docs' copy, and every
kind the code publishes has an entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ccmsec.runtime import bus_policy
from ccmsec.runtime.bus import make_event
from ccmsec.runtime.bus_policy import SubjectError, check_event, parse_subject, subject_for
from ccmsec_proto import events_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_subjects_carry_the_publisher_role_BUS_2():
    assert subject_for("device.reset", publisher="callmanager") == "ccmsec.callmanager.device.reset"
    assert subject_for("service.restart", "capf", "cli") == "ccmsec.cli.service.restart.capf"
    assert subject_for("device.reset") == "ccmsec.*.device.reset"            # a consumer's pattern
    assert subject_for("service.restart") == "ccmsec.*.service.restart.*"
    with pytest.raises(SubjectError, match="needs a target"):
        subject_for("service.restart", publisher="cli")
    with pytest.raises(SubjectError, match="unknown event kind"):
        subject_for("coffee.made")


def test_parse_subject_is_bounded_and_strict_BUS_3():
    assert parse_subject("ccmsec.cli.service.restart.capf") == bus_policy.Subject("cli", "service.restart", "capf")
    for bad in ("ccmsec.device.reset", "other.cli.device.reset", "ccmsec.cli.coffee.made",
                "ccmsec.cli.service.restart", "ccmsec.cli.service.restart.a.b", "ccmsec." + "x" * 300):
        with pytest.raises(SubjectError):
            parse_subject(bad)


def test_the_consumer_check_BUS_3():
    reset = make_event("device.reset", "n", device_reset=events_pb2.DeviceReset(all=True))
    assert check_event("ccmsec.callmanager.device.reset", reset)[1] == ""
    assert "may not publish" in check_event("ccmsec.phone-sim.device.reset", reset)[1]
    assert "differs from its subject" in check_event("ccmsec.phone-sim.access.denied", reset)[1]
    restart = make_event("service.restart", "n", service_restart=events_pb2.ServiceRestart(role="capf"))
    assert check_event("ccmsec.cli.service.restart.capf", restart)[1] == ""
    assert "subject of 'srst'" in check_event("ccmsec.cli.service.restart.srst", restart)[1]
    assert check_event("nonsense", reset)[0] is None


def _owner_change(origin: str, action: str, target: str) -> events_pb2.Event:
    return make_event("owner.change", origin, owner_change=events_pb2.OwnerChange(
        actor="cli/cli", action=action, target=target, detail="x"))


def test_an_owner_records_only_its_own_kind_of_write_BUS_3():
    """Every service may publish `owner.change` (each owns an outbox the operator may resend), and
    callmanager writes the record's action and target as sent: a service trusted for any action
    could write the audit log's record of another owner's write ("capf.activate" from phone-sim)
    or of another service's resend. Each role may record only its own writes, and `outbox.resend`
    only of its own outbox (target `<its role>/<its node>`); anything else is dropped."""
    ok = [("capf", "capf", "capf.activate", "capf"), ("capf", "capf", "capf.enterprise_parameters", "capf"),
          ("ctl-provider", "ctl-provider", "ctl_provider.port", "ctl-provider"),
          ("ctl-provider", "ctl-provider", "cluster.legacy_tls", "cluster"),
          ("ctl-provider", "ctl-provider", "tftp_cluster.register", "tftp2"),
          ("tftp-signer", "tftp-signer", "tftp.resign", "all"),
          ("keymanager", "keymanager", "outbox.resend", "keymanager/keymanager"),
          ("callmanager", "callmanager-sub1", "outbox.resend", "callmanager/callmanager-sub1")]
    for role, node, action, target in ok:
        assert check_event(f"ccmsec.{role}.owner.change", _owner_change(node, action, target))[1] == "", action
    refused = [("phone-sim", "phone-sim", "capf.activate", "capf"),          # another owner's write
               ("srst", "srst", "tftp.resign", "all"),
               ("capf", "capf", "ctl_provider.activate", "ctl-provider"),
               ("ctl-provider", "ctl-provider", "capf.import", "SEP000000000001"),
               ("tftp-signer", "tftp-signer", "tftp.resign.more", "all"),
               ("capf", "capf", "capf.", "capf"),
               ("ctl-provider", "ctl-provider", "cluster.mode", "cluster"),   # callmanager's own record
               ("keymanager", "keymanager", "access.denied", "x"),
               ("phone-sim", "phone-sim", "outbox.resend", "capf/capf"),      # another service's resend
               ("phone-sim", "capf", "outbox.resend", "capf/capf"),
               ("keymanager", "keymanager", "outbox.resend", "keymanager/other"),
               ("keymanager", "", "outbox.resend", "keymanager/")]
    for role, node, action, target in refused:
        assert "may" in check_event(f"ccmsec.{role}.owner.change", _owner_change(node, action, target))[1], (
            role, action, target)
    empty = make_event("owner.change", "capf")   # no body at all
    assert "may not record" in check_event("ccmsec.capf.owner.change", empty)[1]


def test_an_owner_change_record_in_another_kind_of_event_is_dropped_BUS_3():
    """callmanager's audit reads `mode.changed` and `ctl.updated` with the same handler as
    `owner.change`, by the body: ctl-provider (their one publisher) could send a `capf.activate`
    owner_change body in a mode.changed event and so record CAPF's write past the check above."""
    forged = make_event("mode.changed", "ctl-provider", owner_change=events_pb2.OwnerChange(
        actor="cli/cli", action="capf.activate", target="capf"))
    assert "owner.change record sent as 'mode.changed'" in check_event(
        "ccmsec.ctl-provider.mode.changed", forged)[1]
    forged.kind = "ctl.updated"
    assert check_event("ccmsec.ctl-provider.ctl.updated", forged)[1]
    real = make_event("mode.changed", "ctl-provider", mode_changed=events_pb2.SecurityModeChanged())
    assert check_event("ccmsec.ctl-provider.mode.changed", real)[1] == ""


def test_every_action_an_owner_stages_is_one_it_may_record_BUS_3():
    """An owner's audit record is never dropped by the check above: every `stage_owner_change`
    action in a service's code is one the policy gives its role."""
    pattern = re.compile(r"stage_owner_change\((?:[^()]|\([^()]*\))*?action=(f?)\"([^\"]+)\"", re.S)
    found = 0
    for role in ("ctl-provider", "capf", "tftp-signer"):
        for path in (ROOT / "services" / role).rglob("*.py"):
            for is_f, action in pattern.findall(path.read_text()):
                for scope in (("service", "enterprise") if is_f else ("",)):
                    concrete = action.replace("{scope}", scope)
                    assert "{" not in concrete, action
                    assert check_event(f"ccmsec.{role}.owner.change",
                                       _owner_change(role, concrete, "t"))[1] == "", (role, concrete)
                    found += 1
    assert found >= 10, found


def test_docs_show_the_table_as_declared():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    match = re.search(r"<!-- bus-policy -->\n(.*?)\n<!-- /bus-policy -->", doc, re.S)
    assert match, "docs/architecture.md lacks the generated bus policy table"
    assert match.group(1).strip() == bus_policy.describe().strip(), (
        "docs/architecture.md's bus table is stale: paste bus_policy.describe() between the markers")


def test_every_kind_the_code_publishes_has_an_entry_BUS_2():
    """A new event kind published anywhere without a row in the table fails here."""
    published = set()
    pattern = re.compile(r"""(?:publish|make_event)\(\s*["']([a-z]+\.[a-z.]+)["']""")
    for folder in ("ccmsec", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            published |= set(pattern.findall(path.read_text(errors="replace")))
    published |= {"device.reset", "service.restart"}   # ccmsec/runtime/actions.py (RST-* actions)
    assert published, "found no publisher at all"
    assert published <= set(bus_policy.KINDS), published - set(bus_policy.KINDS)


def test_the_audit_records_who_really_reported_a_refusal_BUS_3():
    """An `access.denied` report is audited under the role its subject proves, whatever its body
    claims (any service may report refusals; none may speak for another)."""
    from ccmsec_callmanager.access_audit import entry_for

    event = make_event("access.denied", "phone-sim", access_denied=events_pb2.AccessDenied(
        caller_role="cli", caller_node="cli", method="/ccmsec.v1.KeyManager/GenerateCallKeys",
        refused_by="keymanager/keymanager", reason="not allowed"))
    honest = entry_for(event, "keymanager")
    assert honest.remote == "keymanager/keymanager" and "refused by keymanager/keymanager:" in honest.detail
    forged = entry_for(event, "phone-sim")
    assert forged.remote.startswith("phone-sim (claims keymanager/keymanager)")
    assert "refused by phone-sim (claims keymanager/keymanager)" in forged.detail


def test_docs_show_the_permissions_as_rendered_BUS_6():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    match = re.search(r"<!-- bus-permissions -->\n(.*?)\n<!-- /bus-permissions -->", doc, re.S)
    assert match, "docs/architecture.md lacks the generated NATS permission table"
    assert match.group(1).strip() == bus_policy.describe_permissions().strip(), (
        "docs/architecture.md's permission table is stale: paste bus_policy.describe_permissions() "
        "between the markers")


def test_every_consumer_a_service_binds_is_declared_for_its_role_BUS_6():
    """A subscription added to a service without its name in `bus_policy.CONSUMERS` fails here (the
    server would refuse the consumer at start)."""
    name_of = re.compile(r"""self\.subscribe\([^;]*?,\s*["']([a-z0-9-]+)["']""", re.S)
    # names given in (kind, name) pairs that a loop subscribes (callmanager's owner-change audit)
    kinds = "|".join(re.escape(k) for k in bus_policy.KINDS)
    paired = re.compile(rf"""\(\s*["'](?:{kinds})["']\s*,\s*["']([a-z0-9-]+)["']\s*\)""")
    found = 0
    for service_dir in (ROOT / "services").iterdir():
        role = service_dir.name
        for path in service_dir.rglob("*.py"):
            text = path.read_text(errors="replace")
            for name in name_of.findall(text) + paired.findall(text):
                found += 1
                assert bus_policy.may_consume(role, name), f"{path}: {role} binds undeclared consumer {name!r}"
    for name in name_of.findall((ROOT / "ccmsec" / "runtime" / "service.py").read_text()):
        assert all(bus_policy.may_consume(role, name) for role in bus_policy.SERVICE_ROLES), name
    assert found >= 10
    assert bus_policy.durable_name("cm.sub 1", "device-reset") == "cm_sub_1-device-reset"


def test_a_restart_is_allowed_only_of_the_roles_its_publisher_may_restart_BUS_2():
    """Per target: call control restarts nothing, CAPF only itself, the CTL Provider what its
    changes require, the CLI anything (CHK-14)."""
    def restart(target):
        return make_event("service.restart", "n", service_restart=events_pb2.ServiceRestart(role=target))

    assert "may not publish" in check_event("ccmsec.callmanager.service.restart.capf", restart("capf"))[1]
    assert check_event("ccmsec.capf.service.restart.capf", restart("capf"))[1] == ""
    assert "may not restart 'ctl-provider'" in check_event(
        "ccmsec.capf.service.restart.ctl-provider", restart("ctl-provider"))[1]
    assert "may not restart 'keymanager'" in check_event(
        "ccmsec.ctl-provider.service.restart.keymanager", restart("keymanager"))[1]
    assert all(check_event(f"ccmsec.cli.service.restart.{r}", restart(r))[1] == ""
               for r in bus_policy.SERVICE_ROLES)
    allow = bus_policy.user_permissions("capf", "capf", "UKEY")["publish"]["allow"]
    assert [s for s in allow if ".service.restart." in s] == ["ccmsec.capf.service.restart.capf"]
    assert not [s for s in bus_policy.user_permissions("callmanager", "callmanager", "UKEY")["publish"]["allow"]
                if ".service.restart." in s]


def test_every_restart_an_owner_s_change_requires_is_allowed_to_it_BUS_2():
    """The restart targets follow the RST rules: a change an owner makes (ccmsec/policy/resets.py)
    never requires a restart the server would refuse it."""
    from ccmsec.policy import resets

    owners = {
        "ctl-provider": [resets.ClusterModeChanged(), resets.CtlUpdated(), resets.CtlProviderPortChanged(),
                         resets.LegacyTlsChanged()],
        "capf": [resets.CapfServiceParamsChanged(), resets.CapfEnterpriseParamsChanged()],
        "callmanager": [resets.DeviceSecurityModeChanged("SEP1"), resets.HardeningChanged("SEP1"),
                        resets.SrstSecurityChanged("gw", ("SEP1",)), resets.ResetDevicesOnServer("cm")],
    }
    for role, changes in owners.items():
        for change in changes:
            for action in resets.required_actions(change):
                if isinstance(action, resets.RestartService):
                    assert bus_policy.may_restart(role, action.role), (role, change, action.role)
                else:
                    assert bus_policy.may_publish(role, "device.reset"), (role, change)
