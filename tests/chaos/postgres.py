"""A private PostgreSQL server for the chaos suite: its own data directory, port and socket
folder, started and stopped by the test — never the machine's shared server on 127.0.0.1:5432.

The server binaries are Debian's (`apt-get install postgresql`; `.ci/run` installs them): found
through `pg_config --bindir`, /usr/lib/postgresql/*/bin or PATH. PostgreSQL refuses to run as
root, so under root the server runs as the `postgres` account the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path


class PostgresUnavailable(Exception):
    """No PostgreSQL server binaries, or no account to run them as."""


def _bindir() -> Path:
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                             timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: install them "
                              "(Debian/Ubuntu: apt-get install postgresql; .ci/run does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    def __init__(self, root: Path):
        self.bin = _bindir()
        self.root = root
        self.data = root / "pgdata"
        self.sockets = root / "sockets"
        self.log = root / "postgres.log"
        self.port = _free_port()
        self.user: str | None = None
        if os.getuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no `postgres` account to run "
                                          "the server as (PostgreSQL refuses root)") from None
            self.user = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/ccmsec"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True,
                             timeout=timeout, user=self.user, cwd=self.root)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({res.returncode}): {res.stderr.strip()[-800:]}"
                               + (f"\n{self.log.read_text()[-1500:]}" if self.log.exists() else ""))
        return res

    def init(self) -> "PrivatePostgres":
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if self.user:
            for p in (self.root, self.sockets):
                shutil.chown(p, self.user, self.user)
        # trust on 127.0.0.1 only: a throw-away server on a private port and socket folder
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.sockets}'\nmax_connections = 200\n"
                       "shared_buffers = 32MB\nlogging_collector = off\n")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "ccmsec")
        return self

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def crash(self) -> None:
        """Stop at once, as a crash does: no checkpoint, every connection cut; the next start
        recovers from the write-ahead log."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")

    def restart_after(self, down_for: float) -> float:
        """Crash, stay down `down_for` seconds, start; returns how long the database was away."""
        t0 = time.monotonic()
        self.crash()
        time.sleep(down_for)
        self.start()
        return time.monotonic() - t0

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
            except (RuntimeError, subprocess.SubprocessError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
