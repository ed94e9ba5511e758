"""Runner state on disk (DATA/run): which processes a local cluster consists of, by PID."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ccmsec.fsutil import atomic_write


def run_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "run"


def state_path(data_dir: Path) -> Path:
    return run_dir(data_dir) / "state.json"


def endpoints_path(data_dir: Path) -> Path:
    return run_dir(data_dir) / "endpoints.json"


def _read_json_object(path: Path) -> dict | None:
    """The JSON object in `path`; None when there is none: missing, `--data` naming a file, or
    not a JSON object (a torn or foreign file describes no cluster — never a traceback)."""
    try:
        value = json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError, ValueError):  # JSON and UTF-8 errors included
        return None
    return value if isinstance(value, dict) else None


def read_state(data_dir: Path) -> dict | None:
    return _read_json_object(state_path(data_dir))


def write_state(data_dir: Path, state: dict) -> None:
    atomic_write(state_path(data_dir), json.dumps(state, indent=2, sort_keys=True).encode())


def read_endpoints(data_dir: Path) -> dict | None:
    return _read_json_object(endpoints_path(data_dir))  # None: no cluster there (yet)


def pid_belongs_to(pid: int, data_dir: Path) -> bool:
    """True when `pid` is alive and was started for this cluster (guards against reused PIDs)."""
    if not pid or pid <= 0:
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie is gone already
            return False
    except (OSError, IndexError):
        return False
    marker = f"CCMSEC_CLUSTER_DIR={Path(data_dir).resolve()}".encode()
    return marker in environ.split(b"\0")


def cluster_processes(data_dir: Path) -> list[int]:
    """Every live process started for this cluster, whoever started it (services, their pool
    workers, NATS, the supervisor): each inherits CCMSEC_CLUSTER_DIR. This process and its
    ancestors are left out, so a command run from inside a cluster never counts itself."""
    own = set()
    pid = os.getpid()
    while pid > 1 and pid not in own:
        own.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in own and pid_belongs_to(int(entry.name), data_dir):
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
