"""MODE-6: clusters sharing one TFTP server (ccmsec.policy.tftp_paths)."""

from __future__ import annotations

import pytest

from ccmsec.policy.tftp_paths import TftpClusterEntry as E, TftpPathConflict, check_tftp_clusters, with_mode

REGISTRY = [E("a", "cluster-a", "alt-a", "mixed"), E("b", "cluster-b", "", "mixed")]


def test_mode6_a_new_cluster_with_unique_paths_and_the_same_mode_is_accepted():
    result = check_tftp_clusters(REGISTRY, E("c", "cluster-c", "alt-c", "mixed"))
    assert [e.cluster_id for e in result] == ["a", "b", "c"]


@pytest.mark.parametrize("candidate, problem", [
    (E("c", "cluster-a", "", "mixed"), "TFTP path 'cluster-a' .* already used by cluster a"),
    (E("c", "CLUSTER-A/", "", "mixed"), "already used by cluster a"),  # case and slash folded
    (E("c", "cluster-c", "alt-a", "mixed"), "'alt-a' .* already used by cluster a"),
    (E("c", "alt-a", "", "mixed"), "already used by cluster a"),  # one's primary, other's alternate
    (E("c", "cluster-c", "", "non-secure"), "all clusters on one TFTP server must use the same"),
    (E("c", "cluster-c", "cluster-c", "mixed"), "alternate TFTP path equals its TFTP path"),
    (E("c", "../etc", "", "mixed"), "not a plain folder name"),
    (E("c", "", "", "mixed"), "no TFTP path"),
    (E("c", "p", "", "secure"), "is not one of"),
])
def test_mode6_refuses_configurations_that_could_overwrite_another_ctl(candidate, problem):
    with pytest.raises(TftpPathConflict, match=f"MODE-6: .*{problem}"):
        check_tftp_clusters(REGISTRY, candidate)


def test_mode6_an_entry_may_replace_its_own_earlier_version():
    result = check_tftp_clusters(REGISTRY, E("a", "cluster-a", "alt-a2", "mixed"))
    assert [e for e in result if e.cluster_id == "a"][0].alternate_path == "alt-a2"


def test_mode6_a_mode_switch_of_one_cluster_alone_is_refused():
    with pytest.raises(TftpPathConflict, match="same security mode"):
        check_tftp_clusters(REGISTRY, with_mode(REGISTRY, "a", "non-secure"))
    # alone on the TFTP server it may switch
    assert check_tftp_clusters(REGISTRY[:1], with_mode(REGISTRY, "a", "non-secure"))[0].mode == "non-secure"
