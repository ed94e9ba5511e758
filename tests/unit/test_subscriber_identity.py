"""A call-control subscriber holds its own identity and no administrator's credential: the HTTPS
administration API (and its `admin-api` client identity towards peers) runs on the publisher
alone, so one compromised subscriber cannot act as the administrator (issue 9 §1)."""

from __future__ import annotations

from ccmsec.cluster import pki
from ccmsec.cluster.topology import local_cluster
from ccmsec.runtime.identity import admin_api_identity_dir, load_identity, service_identity_dir


def test_local_runner_gives_the_admin_api_identity_to_the_publisher_only(tmp_path):
    cluster = local_cluster(tmp_path, base="127.77.0.0", subscribers=2)
    pki.issue_local_cluster(cluster)
    nodes = [i.node for i in cluster.instances if i.role == "callmanager"]
    publisher = next(i.node for i in cluster.instances if i.role == "callmanager" and i.publisher)
    assert len(nodes) == 3
    for node in nodes:
        folder = service_identity_dir(tmp_path, node)
        assert load_identity(folder).identity.node == node
        if node == publisher:
            assert load_identity(admin_api_identity_dir(folder)).identity.role == "admin-api"
        else:
            assert not admin_api_identity_dir(folder).exists(), node
