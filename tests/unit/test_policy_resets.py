"""RST-1..9: each change maps to exactly the resets/restarts its rule names."""

from __future__ import annotations

import pytest

from ccmsec.policy import resets as r


def test_rst1_device_security_mode_resets_that_device_only():
    assert r.required_actions(r.DeviceSecurityModeChanged("SEP1")) == [
        r.ResetDevices(("SEP1",), r.ResetKind.RESET, "RST-1")]


def test_rst2_hardening_resets_the_device_only():
    assert r.required_actions(r.HardeningChanged("SEP2")) == [
        r.ResetDevices(("SEP2",), r.ResetKind.RESET, "RST-2")]


def test_rst3_cluster_mode_resets_all_and_restarts_callmanager():
    actions = r.required_actions(r.ClusterModeChanged())
    assert actions == [r.ResetDevices(r.ALL, r.ResetKind.RESET, "RST-3"),
                       r.RestartService("callmanager", "RST-3")]
    assert not any(isinstance(a, r.RestartService) and a.role == "tftp-signer" for a in actions)


def test_rst4_ctl_update_restarts_devices_callmanager_and_tftp_everywhere():
    actions = r.required_actions(r.CtlUpdated())
    assert r.ResetDevices(r.ALL, r.ResetKind.RESTART, "RST-4") in actions
    restarts = {(a.role, a.nodes) for a in actions if isinstance(a, r.RestartService)}
    assert restarts == {("callmanager", r.ALL), ("tftp-signer", r.ALL)}
    assert len(actions) == 3


def test_rst5_srst_change_resets_only_dependent_devices():
    actions = r.required_actions(r.SrstSecurityChanged("srst1", ("SEP1", "SEP2")))
    assert actions == [r.ResetDevices(("SEP1", "SEP2"), r.ResetKind.RESET, "RST-5")]
    assert r.required_actions(r.SrstSecurityChanged("srst1", ())) == []


def test_rst6_capf_enterprise_params_reset_devices_without_service_restart():
    assert r.required_actions(r.CapfEnterpriseParamsChanged()) == [
        r.ResetDevices(r.ALL, r.ResetKind.RESET, "RST-6")]


def test_rst7_tls_port_restarts_ctl_provider_only():
    assert r.required_actions(r.CtlProviderPortChanged()) == [
        r.RestartService("ctl-provider", "RST-7")]


def test_rst8_capf_service_params_restart_capf_only():
    assert r.required_actions(r.CapfServiceParamsChanged()) == [r.RestartService("capf", "RST-8")]


def test_rst9_reset_devices_on_server_targets_that_server():
    assert r.required_actions(r.ResetDevicesOnServer("ccm2")) == [
        r.ResetDevices(r.DevicesOnServer("ccm2"), r.ResetKind.RESET, "RST-9")]


def test_unknown_change_is_refused():
    with pytest.raises(TypeError, match="not a configuration change"):
        r.required_actions("cluster mode")  # type: ignore[arg-type]


def test_later8_legacy_tls_change_restarts_the_two_phone_tls_listeners_only():
    """LATER-8: callmanager (2443) and capf (3804) rebuild their listeners; no device reset."""
    assert r.required_actions(r.LegacyTlsChanged()) == [
        r.RestartService("callmanager", "LATER-8"), r.RestartService("capf", "LATER-8")]


def test_rst9_a_reset_on_a_server_names_a_call_control_node_never_srst():
    """RST-9 resets the devices registered to a call-control node (publisher or subscriber). `srst`
    — the SRST reference, which serves phones in fallback (SRST-1) — is no such node, nor is any
    other name: refused with a clear error."""
    from ccmsec.cluster import topology

    assert r.MAX_SUBSCRIBERS == topology.MAX_SUBSCRIBERS
    for node in ["callmanager"] + [topology.subscriber_name(k) for k in range(1, topology.MAX_SUBSCRIBERS + 1)]:
        assert r.check_reset_server(node) == node
    with pytest.raises(r.NotACallControlNode, match=r"server 'srst' is no call-control node \(an SRST reference"):
        r.check_reset_server("srst")
    for bad in ("", "callmanager-sub0", "callmanager-sub5", "callmanager-sub01", "tftp-signer", "localhost",
                "127.0.0.1", "callmanager\n", "x" * 300):
        with pytest.raises(r.NotACallControlNode, match="is no call-control node"):
            r.check_reset_server(bad)


def test_rst9_a_reset_on_a_node_this_cluster_does_not_run_is_refused(tmp_path, monkeypatch):
    """RST-9: callmanager checked only the node name's form, so a reset naming a subscriber this
    cluster does not run (callmanager-sub3 beside callmanager and callmanager-sub1) was accepted,
    published, and reset nothing — under compose always, since only the local runner's endpoints
    file said which nodes exist. Now the setting CCMSEC_CLUSTER_CALL_CONTROL_NODES says (both
    runners set it): a node not among them is NoSuchCallControlNode, naming those that are; unset
    (a service run alone), the form alone. A list that names no call-control node is a bad setting."""
    from ccmsec.runtime.settings import SettingsError, load_settings

    for key in ("CCMSEC_SERVICE", "CCMSEC_DATA_DIR", "CCMSEC_CLUSTER_CALL_CONTROL_NODES"):
        monkeypatch.delenv(key, raising=False)
    assert load_settings(service="callmanager", data_dir=tmp_path).cluster_nodes is None   # not known
    monkeypatch.setenv("CCMSEC_CLUSTER_CALL_CONTROL_NODES", '["callmanager", "callmanager-sub1"]')
    nodes = load_settings(service="callmanager", data_dir=tmp_path).cluster_nodes
    assert nodes == {"callmanager", "callmanager-sub1"}
    assert r.check_reset_server("callmanager-sub1", nodes) == "callmanager-sub1"
    assert r.check_reset_server("callmanager", nodes) == "callmanager"
    with pytest.raises(r.NoSuchCallControlNode,
                       match=r"server 'callmanager-sub3' is no node of this cluster: its call-control "
                             r"nodes are callmanager, callmanager-sub1; a reset on it would reach no phone"):
        r.check_reset_server("callmanager-sub3", nodes)
    with pytest.raises(r.NotACallControlNode):                 # the form is still checked first
        r.check_reset_server("srst", nodes)
    assert r.check_reset_server("callmanager-sub3") == "callmanager-sub3"   # nodes not known
    for bad, why in (('["callmanager", "srst"]', "'srst' is no call-control node name"),
                     ('["callmanager", "callmanager"]', "a node is listed twice"),
                     ("[]", "at least 1 item"), ("[3]", "valid string"),
                     ('["callmanager-sub9"]', "is no call-control node name")):
        monkeypatch.setenv("CCMSEC_CLUSTER_CALL_CONTROL_NODES", bad)
        with pytest.raises(SettingsError, match=f"CCMSEC_CLUSTER_CALL_CONTROL_NODES.*{why}"):
            load_settings(service="callmanager", data_dir=tmp_path)


def test_rst9_a_node_list_leaving_out_the_publisher_or_the_node_itself_is_a_bad_setting(tmp_path, monkeypatch):
    """RST-9: CCMSEC_CLUSTER_CALL_CONTROL_NODES is every call-control node the cluster runs. The
    publisher always runs (it serves the administration API) and so does the node reading the list:
    a list without either disagrees with what runs — it was taken, and a reset on the publisher, or
    on this very node, was then refused (404 / NOT_FOUND) as "no node of this cluster". Now it stops
    the service at start as a bad setting, naming what is missing; a full list still loads."""
    from ccmsec.runtime.settings import SettingsError, load_settings

    for key in ("CCMSEC_SERVICE", "CCMSEC_DATA_DIR", "CCMSEC_NODE", "CCMSEC_CLUSTER_CALL_CONTROL_NODES"):
        monkeypatch.delenv(key, raising=False)
    for node, listed, why in (
            ("callmanager", '["callmanager-sub1"]', "does not name the publisher 'callmanager'"),
            ("callmanager-sub2", '["callmanager", "callmanager-sub1"]',
             "does not name this node 'callmanager-sub2'")):
        monkeypatch.setenv("CCMSEC_CLUSTER_CALL_CONTROL_NODES", listed)
        with pytest.raises(SettingsError, match=f"CCMSEC_CLUSTER_CALL_CONTROL_NODES.*{why}"):
            load_settings(service="callmanager", node=node, data_dir=tmp_path)
    monkeypatch.setenv("CCMSEC_CLUSTER_CALL_CONTROL_NODES", '["callmanager", "callmanager-sub1", "callmanager-sub2"]')
    assert load_settings(service="callmanager", node="callmanager-sub2", data_dir=tmp_path).cluster_nodes == {
        "callmanager", "callmanager-sub1", "callmanager-sub2"}


@pytest.mark.parametrize("subscribers", [0, 1, 4])
def test_rst9_the_local_runner_and_compose_tell_callmanager_the_same_nodes(tmp_path, subscribers):
    """RST-9: one function says which call-control nodes a cluster runs
    (topology.call_control_node_names); the local runner and compose both hand every node of
    callmanager that list — all of it, not the phones' group of at most three — and nothing to
    roles that do not check a reset on a server."""
    import json

    from ccmsec.cluster import compose, topology

    expected = ["callmanager", *(f"callmanager-sub{k}" for k in range(1, subscribers + 1))]
    assert topology.call_control_node_names(subscribers) == expected
    cluster = topology.local_cluster(tmp_path, subscribers=subscribers, privileged_ports=False)
    assert [i.node for i in cluster.call_control_nodes()] == expected
    services = compose.compose_model(subscribers=subscribers)["services"]
    for inst in cluster.instances:
        runner = cluster.env_for(inst).get(topology.CLUSTER_NODES_VARIABLE)
        composed = services[inst.node]["environment"].get(topology.CLUSTER_NODES_VARIABLE)
        assert runner == composed, inst.node
        assert (json.loads(runner) if runner else None) == (expected if inst.role == "callmanager" else None)
    with pytest.raises(ValueError, match="0 to 4 call-control subscribers"):
        topology.call_control_node_names(5)
