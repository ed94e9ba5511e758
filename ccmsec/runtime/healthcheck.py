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
        status = asyncio.run(_check(identity, role, host, settings.grpc_port))
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
