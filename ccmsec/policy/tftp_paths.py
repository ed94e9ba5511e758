"""MODE-6: several clusters sharing one TFTP server.

They must all use the same security mode, and every cluster's TFTP path and alternate TFTP path
must be unique across all of them (a cluster's own primary and alternate differ too); otherwise
one cluster's CTL client would overwrite another cluster's `CTLFile.tlv`. A pure check over a
registry of `TftpClusterEntry` rows: `check_tftp_clusters(existing, candidate)` returns the new
registry or raises `TftpPathConflict` naming the conflict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ccmsec.domain import ClusterMode

CLUSTER_MODES = ClusterMode.choices()
_PATH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TftpPathConflict(ValueError):
    """A TFTP cluster configuration that MODE-6 refuses."""

    rule_id = "MODE-6"


@dataclass(frozen=True)
class TftpClusterEntry:
    cluster_id: str
    tftp_path: str
    alternate_path: str = ""
    mode: str = ClusterMode.NON_SECURE.value

    def paths(self) -> tuple[str, ...]:
        return (self.tftp_path, self.alternate_path) if self.alternate_path else (self.tftp_path,)


def _norm(path: str) -> str:
    # TFTP servers of the period ran on case-insensitive file systems: compare folded.
    return path.strip("/").casefold()


def validate_entry(entry: TftpClusterEntry) -> TftpClusterEntry:
    if not _ID_RE.match(entry.cluster_id):
        raise TftpPathConflict(f"MODE-6: invalid cluster id {entry.cluster_id!r}")
    for what, path in (("TFTP path", entry.tftp_path), ("alternate TFTP path", entry.alternate_path)):
        if path and (not _PATH_RE.match(path.strip("/")) or ".." in path):
            raise TftpPathConflict(f"MODE-6: {what} {path!r} of cluster {entry.cluster_id} is "
                                   "not a plain folder name")
    if not entry.tftp_path:
        raise TftpPathConflict(f"MODE-6: cluster {entry.cluster_id} has no TFTP path")
    if entry.mode not in CLUSTER_MODES:
        raise TftpPathConflict(f"MODE-6: cluster mode {entry.mode!r} is not one of "
                               f"{', '.join(CLUSTER_MODES)}")
    if entry.alternate_path and _norm(entry.alternate_path) == _norm(entry.tftp_path):
        raise TftpPathConflict(f"MODE-6: cluster {entry.cluster_id}: the alternate TFTP path "
                               f"equals its TFTP path {entry.tftp_path!r}")
    return entry


def check_tftp_clusters(existing: list[TftpClusterEntry],
                        candidate: TftpClusterEntry) -> list[TftpClusterEntry]:
    """The registry with `candidate` added or replacing its own earlier entry; raises
    TftpPathConflict when a path is shared or the modes differ (MODE-6)."""
    validate_entry(candidate)
    others = [e for e in existing if e.cluster_id != candidate.cluster_id]
    for other in others:
        if other.mode != candidate.mode:
            raise TftpPathConflict(
                f"MODE-6: cluster {candidate.cluster_id} would be {candidate.mode} but cluster "
                f"{other.cluster_id}, sharing the TFTP server, is {other.mode}; all clusters on one "
                "TFTP server must use the same security mode")
        taken = {_norm(p): p for p in other.paths()}
        for path in candidate.paths():
            if _norm(path) in taken:
                raise TftpPathConflict(
                    f"MODE-6: TFTP path {path!r} of cluster {candidate.cluster_id} is already used "
                    f"by cluster {other.cluster_id}; its CTLFile.tlv would be overwritten")
    return sorted(others + [candidate], key=lambda e: e.cluster_id)


def with_mode(registry: list[TftpClusterEntry], cluster_id: str, mode: str) -> TftpClusterEntry:
    """The entry of `cluster_id` switched to `mode` (to check a mode change before making it)."""
    for entry in registry:
        if entry.cluster_id == cluster_id:
            return replace(entry, mode=mode)
    raise KeyError(cluster_id)
