"""Container healthcheck: `python -m ccmsec.runtime.healthcheck`.

Reads the same environment as the service (CCMSEC_SERVICE, CCMSEC_DATA_DIR, CCMSEC_IDENTITY_DIR,
CCMSEC_GRPC_PORT, CCMSEC_HOST, CCMSEC_NODE) and asks the service's gRPC health endpoint over mutual
TLS, presenting the service's own identity (health is open to every cluster identity; the
container holds no other key) and expecting the server certificate of the role. Prints one line;
exits 0 when SERVING, 1 otherwise (what Docker's HEALTHCHECK expects).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys

# gRPC's own C-core logging would add lines to the one-line answer Docker keeps.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

TIMEOUT = 3.0
# Docker before 25 has no start_interval: the first check runs one `interval` (10 s) after the
# start and the next only 10 s later, so a service serving at 11 s was healthy at 20 s. While the
# container's first process is younger than its start period, a check therefore keeps asking
# (every START_POLL s, one process, at most START_WAIT s: below the 30 s check timeout) and answers
# as soon as the service serves. Later checks ask once, as before.
START_PERIOD = 30.0   # compose.HEALTH["start_period"] (a unit test keeps them equal)
START_WAIT = 20.0
START_POLL = 0.5
# gRPC prefixes every connection error with the same words; the reason comes after them.
_GRPC_PREFIX = re.compile(r"^failed to connect to all addresses; last error: \w+: (?:ipv[46]:)?\S+: ")
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _short(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def probe_address(host: str) -> str:
    """Where to knock: a wildcard bind address is reached over loopback."""
    return _WILDCARDS.get(host, host)


async def _check(identity, role: str, host: str, port: int) -> str:
    import grpc

    from ccmsec.runtime.grpcio import health_detail

    try:
        state, why = await asyncio.wait_for(health_detail(identity, host, port, role, timeout=TIMEOUT),
                                            TIMEOUT + 0.5)
        return f"{state} ({_short(why, 200)})" if why else state
    except grpc.aio.AioRpcError as exc:
        reason = _GRPC_PREFIX.sub("", exc.details() or "")
        return f"{exc.code().name} ({_short(reason, 120)})"
    except asyncio.TimeoutError:
        return "DEADLINE_EXCEEDED (no answer)"


def process_age(pid: int = 1) -> float | None:
    """Seconds since process PID started (in a container, 1 is the service itself); None when
    /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
    except (OSError, ValueError, IndexError):
        return None


def start_wait(age: float | None) -> float:
    """How long this check may keep asking for SERVING: only while the service is starting."""
    if age is None or age >= START_PERIOD:
        return 0.0
    return min(START_WAIT, START_PERIOD - age)


async def _check_until_serving(identity, role: str, host: str, port: int, wait: float) -> str:
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        status = await _check(identity, role, host, port)
        if status == "SERVING" or asyncio.get_running_loop().time() + START_POLL > deadline:
            return status
        await asyncio.sleep(START_POLL)


def run() -> tuple[int, str]:
    """(exit code, the one line to print)."""
    from ccmsec.runtime.identity import IdentityError, load_identity
    from ccmsec.runtime.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        return 1, f"unhealthy: {_short(exc)}"
    role = settings.service
    # Never issue anything from here: the service's identity is given to it before it starts.
    try:
        identity = load_identity(settings.identity_folder)
    except IdentityError as exc:
        return 1, f"unhealthy: {role}: {_short(exc, 200)}"
    host = probe_address(settings.host)
    where = f"{role} ({settings.node_name}) at {host}:{settings.grpc_port}"
    try:
        status = asyncio.run(_check_until_serving(identity, role, host, settings.grpc_port,
                                                  start_wait(process_age())))
    except (OSError, ValueError) as exc:
        return 1, f"unhealthy: {where}: {_short(exc)}"
    if status == "SERVING":
        return 0, f"healthy: {where}: SERVING"
    return 1, f"unhealthy: {where}: {status}"


def main() -> int:
    code, line = run()
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
