"""deploy/monitoring (issue 16): the shipped dashboard and rule files are well formed — what a
Grafana import and an operator rely on beyond `promtool check rules` (tests/e2e/test_monitoring.py
checks that every metric they use is exported by a running service)."""

from __future__ import annotations

import json

import yaml

from tests.conftest import ROOT

MONITORING = ROOT / "deploy" / "monitoring"


def test_dashboard_panels_are_laid_out_and_use_the_datasource_variable():
    dash = json.loads((MONITORING / "grafana" / "ccmsec-dashboard.json").read_text())
    assert dash["uid"] == "ccmsec-cluster" and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not (mine & cells), f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() and t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_every_alert_has_a_unique_name_a_severity_and_a_summary():
    rules = yaml.safe_load((MONITORING / "prometheus" / "ccmsec-rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    names = [r["alert"] for r in alerts]
    assert len(names) == len(set(names))
    wanted = {"CcmsecServiceDown", "CcmsecPhonesUnregistered", "CcmsecCertificateExpiring", "CcmsecEventBusLag"}
    assert wanted <= set(names)
    for r in alerts:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_the_example_configuration_scrapes_every_role_and_loads_the_rules():
    from ccmsec.cluster.topology import ROLES

    config = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "ccmsec")
    targets = {t.split(":")[0] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == set(ROLES)
    assert any(path.endswith("ccmsec-rules.yml") for path in config["rule_files"])


def test_grafana_provisioning_matches_the_compose_profile():
    """Grafana cannot be run here (no Debian package, no registry: docs/compose.md), so what it
    would load is checked against what the compose profile mounts: the data source is the profile's
    Prometheus, the dashboards provider reads the folder the dashboard JSON is mounted into, and the
    dashboard's data-source variable selects that data source's type."""
    from ccmsec.cluster import compose

    prov = MONITORING / "grafana" / "provisioning"
    sources = yaml.safe_load((prov / "datasources" / "ccmsec.yml").read_text())["datasources"]
    (source,) = sources
    prom = compose.compose_model()["services"]["prometheus"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["isDefault"] is True
    container_port = prom["ports"][0].rsplit(":", 1)[-1].split("/")[0]
    assert source["url"] == f"http://prometheus:{container_port}"
    (provider,) = yaml.safe_load((prov / "dashboards" / "ccmsec.yml").read_text())["providers"]
    mounts = compose.MONITORING_FILES["grafana"]
    dashboard_in_container = mounts[f"{compose.MONITORING_DIR}/grafana/ccmsec-dashboard.json"]
    assert provider["type"] == "file"
    assert dashboard_in_container.rsplit("/", 1)[0] == provider["options"]["path"]
    assert mounts[f"{compose.MONITORING_DIR}/grafana/provisioning"] == "/etc/grafana/provisioning"
    dash = json.loads((MONITORING / "grafana" / "ccmsec-dashboard.json").read_text())
    variable = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    assert variable["query"] == source["type"]
