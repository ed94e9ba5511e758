"""deploy/monitoring (issue 16): the shipped dashboard and rule files are well formed — what a
Grafana import and an operator rely on beyond `promtool check rules` (tests/e2e/test_monitoring.py
checks that every metric they use is exported by a running service)."""

from __future__ import annotations

import json

import pytest
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


def _targets_of(text: str) -> list[str]:
    return [t for group in yaml.safe_load(text) for t in group["targets"]]


def test_the_example_configuration_scrapes_every_node_and_loads_the_rules():
    """The `ccmsec` job reads its targets from the folder the compose profile mounts, and the
    committed targets file (rendered with the committed compose file) lists every role and every
    call-control subscriber that compose file runs."""
    from ccmsec.cluster import compose
    from ccmsec.cluster.topology import ROLES

    config = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "ccmsec")
    assert "static_configs" not in job
    (sd,) = job["file_sd_configs"]
    mounted = compose.MONITORING_FILES["prometheus"][compose.PROMETHEUS_TARGETS_DIR]
    assert sd["files"] == [f"{mounted}/*.yml"]
    committed = (ROOT / compose.PROMETHEUS_TARGETS).read_text()
    assert committed == compose.render_prometheus_targets(compose.COMPOSE_SUBSCRIBERS)
    nodes = {t.split(":")[0] for t in _targets_of(committed)}
    in_compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert nodes == {name for name, svc in in_compose.items()
                     if "CCMSEC_METRICS_PORT" in (svc.get("environment") or {})}
    assert set(ROLES) < nodes and "callmanager-sub1" in nodes
    assert any(path.endswith("ccmsec-rules.yml") for path in config["rule_files"])


def test_rendered_targets_follow_the_subscribers(tmp_path):
    """`ccmsec compose render --subscribers N` writes the targets with the compose file: each
    rendered callmanager-subN is scraped, no other; `--check` finds a targets file left from
    another number stale, and a number out of range is refused before anything is written."""
    import argparse

    from ccmsec.cli import compose as compose_cli
    from ccmsec.cli.common import CliError
    from ccmsec.cluster import compose

    def render(*argv):
        parser = argparse.ArgumentParser()
        compose_cli.register(parser.add_subparsers())
        args = parser.parse_args(["compose", "render", "--root", str(root), *argv])
        return args.func(args)

    for n in (0, 3, compose.MAX_SUBSCRIBERS):
        services = compose.compose_model(subscribers=n)["services"]
        scraped = {t.split(":")[0] for t in _targets_of(compose.render_prometheus_targets(n))}
        metrics = {name for name, svc in services.items() if "CCMSEC_METRICS_PORT" in svc.get("environment", {})}
        assert scraped == metrics
        assert {t for t in scraped if t.startswith("callmanager-sub")} == {
            f"callmanager-sub{i}" for i in range(1, n + 1)}
        assert all(t.endswith(f":{compose.METRICS_PORT}") for t in compose.scrape_targets(subscribers=n))

    root = tmp_path / "project"
    (root / "services").mkdir(parents=True)
    default = root / compose.PROMETHEUS_TARGETS
    assert render() == 0
    committed = default.read_text()
    assert compose.prometheus_targets_path(compose.COMPOSE_SUBSCRIBERS) == compose.PROMETHEUS_TARGETS
    # another size goes to a folder of its own, mounted by its own compose file; the committed
    # cluster's targets stay as they were (rendering a 3-subscriber file beside the committed one
    # once rewrote them)
    other = tmp_path / "docker-compose.3subs.yml"
    assert render("--subscribers", "3", "--output", str(other)) == 0
    assert default.read_text() == committed
    three = root / compose.prometheus_targets_path(3)
    written = three.read_text()
    assert "callmanager-sub3:9100" in written and "callmanager-sub4" not in written
    prom = yaml.safe_load(other.read_text())["services"]["prometheus"]
    # the file lies outside the root: it names the root from its own folder, as docker-compose
    # resolves it, so its targets mount is the folder render wrote
    assert f"./project/{compose.prometheus_targets_dir(3)}:/etc/prometheus/targets:ro" in prom["volumes"]
    assert (other.parent / f"project/{compose.prometheus_targets_dir(3)}/ccmsec.yml").resolve() == three
    assert render("--subscribers", "3", "--output", str(other), "--check") == 0
    assert render("--check") == 0
    # the bad cases: a 2-subscriber targets file holding what 3 subscribers need is stale (that
    # file alone); 9 subscribers are refused and nothing is written
    assert render("--subscribers", "2") == 0
    two = root / compose.prometheus_targets_path(2)
    two.write_text(written)
    with pytest.raises(CliError, match="out of date") as stale:
        render("--subscribers", "2", "--check")
    assert str(stale.value).split(": ", 1)[1] == str(two)
    with pytest.raises(CliError, match="0 to 4 call-control subscribers"):
        render("--subscribers", "9")
    assert two.read_text() == written
    assert not (root / compose.prometheus_targets_path(4)).exists()


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
