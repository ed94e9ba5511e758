"""Which cluster owns which folder of a shared TFTP server (MODE-6), and how a requested name maps
to a cluster folder. Pure: no I/O.

A TFTP server may be shared by several clusters. Each cluster has a TFTP path (and optionally an
alternate TFTP path); its files live under `DATA/tftp/<path>/`. MODE-6: all clusters sharing the
server use the same security mode, and no path (nor alternate path) may be used twice or nest inside
another cluster's path — otherwise one cluster's `CTLFile.tlv` would overwrite another's.

Request names: `<path>/NAME` is served from that cluster's folder (for any registered path or
alternate path); a bare `NAME` (what a phone asks for) is served from this server's own cluster,
the default path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ccmsec.domain import ClusterMode

PATH_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
MAX_DEPTH = 3  # <path>/<locale>/<file>
MAX_CLUSTERS = 64
MODES = ClusterMode.choices()
RESERVED = {"signed"}  # our own sub-folder of signed files in each cluster folder


class Mode6Error(ValueError):
    """A shared-TFTP configuration that MODE-6 refuses (the message says which clusters clash)."""


class BadName(ValueError):
    """A requested file name that is not served (traversal, odd characters, too deep)."""


@dataclass(frozen=True)
class ClusterPath:
    name: str
    tftp_path: str
    alternate_path: str = ""
    mode: str = ClusterMode.NON_SECURE.value

    def paths(self) -> tuple[str, ...]:
        return (self.tftp_path, self.alternate_path) if self.alternate_path else (self.tftp_path,)


def check_path(path: str, what: str = "TFTP path") -> str:
    if not isinstance(path, str) or not PATH_RE.fullmatch(path):
        raise Mode6Error(f"{what} {path!r}: 1-32 letters, digits, '_' or '-' (starting with a letter "
                         "or digit)")
    if path.lower() in RESERVED:
        raise Mode6Error(f"{what} {path!r} is reserved")
    return path


def validate_layout(clusters: list[ClusterPath]) -> None:
    """Raise Mode6Error unless the clusters can share one TFTP server (MODE-6)."""
    if len(clusters) > MAX_CLUSTERS:
        raise Mode6Error(f"at most {MAX_CLUSTERS} clusters may share a TFTP server")
    owners: dict[str, str] = {}
    names: set[str] = set()
    for c in clusters:
        if not c.name or len(c.name) > 64:
            raise Mode6Error("cluster name must be 1-64 characters")
        if c.name in names:
            raise Mode6Error(f"cluster {c.name!r} is listed twice")
        names.add(c.name)
        if c.mode not in MODES:
            raise Mode6Error(f"cluster {c.name!r}: security mode {c.mode!r} not one of {MODES}")
        check_path(c.tftp_path)
        if c.alternate_path:
            check_path(c.alternate_path, "alternate TFTP path")
            if c.alternate_path.lower() == c.tftp_path.lower():
                raise Mode6Error(f"MODE-6: cluster {c.name!r} uses {c.tftp_path!r} as both TFTP path "
                                 "and alternate TFTP path")
        for path in c.paths():
            # Folder names compare case-insensitively: on some file systems they are the same folder.
            other = owners.get(path.lower())
            if other is not None:
                raise Mode6Error(f"MODE-6: TFTP path {path!r} of cluster {c.name!r} is already used by "
                                 f"cluster {other!r}; its CTLFile.tlv would be overwritten")
            owners[path.lower()] = c.name
    modes = {c.mode for c in clusters}
    if len(modes) > 1:
        listing = ", ".join(f"{c.name}={c.mode}" for c in clusters)
        raise Mode6Error(f"MODE-6: clusters sharing a TFTP server must use the same security mode "
                         f"({listing})")


@dataclass(frozen=True)
class Layout:
    """This server's own cluster plus the other clusters that share it."""

    own: ClusterPath
    others: tuple[ClusterPath, ...] = ()

    def __post_init__(self) -> None:
        validate_layout([self.own, *self.others])

    def with_cluster(self, cluster: ClusterPath) -> Layout:
        """A new layout with `cluster` added; Mode6Error if MODE-6 forbids it."""
        return Layout(self.own, (*self.others, cluster))

    def with_own_mode(self, mode: str) -> Layout:
        """The layout after this cluster's mode changed; Mode6Error when that breaks MODE-6."""
        own = ClusterPath(self.own.name, self.own.tftp_path, self.own.alternate_path, mode)
        return Layout(own, self.others)

    def owner(self, path: str) -> ClusterPath | None:
        for c in (self.own, *self.others):
            if path in c.paths():
                return c
        return None

    def split(self, filename: str) -> tuple[ClusterPath, str, str]:
        """A requested name -> (owning cluster, folder to read from, name inside that folder)."""
        name = filename.replace("\\", "/")
        parts = name.split("/")
        if len(parts) > MAX_DEPTH:
            raise BadName(f"{filename!r}: more than {MAX_DEPTH} path levels")
        for part in parts:
            if not SEGMENT_RE.fullmatch(part) or part in (".", ".."):
                raise BadName(f"{filename!r}: bad path segment {part[:40]!r}")
        owner = self.owner(parts[0]) if len(parts) > 1 else None
        if owner is None:
            owner, folder, rest = self.own, self.own.tftp_path, parts
        else:
            folder, rest = parts[0], parts[1:]
        if rest[0].lower() in RESERVED:
            raise BadName(f"{filename!r}: the {rest[0]!r} folder is not served")
        return owner, folder, "/".join(rest)
