"""`ccmsec up | status | down`: run a whole cluster locally, one process per service."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from ccmsec.cli.common import (
    EXIT_NOT_READY, CliError, add_data_option, add_json_option, data_dir, json_output, print_json,
    seconds,
)
from ccmsec.cluster import runner


def _up(args) -> int:
    d = data_dir(args, local=True)
    try:
        rows = runner.up(d, base=args.base, timeout=args.timeout, subscribers=args.subscribers,
                         service_users=args.service_users)
    except runner.RunnerError as exc:
        raise CliError(str(exc)) from None
    print(runner.format_rows(rows))
    if args.detach:
        print(f"cluster running from {d}; stop it with: ccmsec down --data {d}")
        return 0
    print("cluster running; press Ctrl-C to stop it")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and runner.supervisor_pid(d):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    runner.down(d)
    return 0


def _context_in_use(args):
    """The context to report on: one made from a client bundle, when neither --data nor
    $CCMSEC_DATA_DIR names a local runner's folder."""
    if getattr(args, "data", None) or os.environ.get("CCMSEC_DATA_DIR"):
        return None
    from ccmsec import contexts

    try:
        ctx = contexts.active()
    except contexts.ContextError as exc:
        raise CliError(str(exc)) from None
    return ctx if ctx is not None and ctx.reaches_grpc else None


def _status(args) -> int:
    ctx = _context_in_use(args)
    try:
        if ctx is not None:  # a cluster elsewhere (compose): every service's health, as its ports are published
            rows = runner.status_through_ports(ctx.cluster_dir)
            if not json_output(args):
                print(f"context {ctx.name}: services reached through their published gRPC ports")
        else:
            d = data_dir(args, local=True)
            rows = runner.status(d)
            note = runner.service_users_note(d)
            if note and not json_output(args):
                print(note, file=sys.stderr)
    except runner.RunnerError as exc:
        raise CliError(str(exc)) from None
    if json_output(args):
        print_json([r.as_json() for r in rows])
    else:
        print(runner.format_rows(rows))
    return runner.status_exit_code(rows)


def _down(args) -> int:
    d = data_dir(args, local=True)
    try:
        n = runner.down(d)
    except runner.RunnerError as exc:
        raise CliError(str(exc)) from None
    if n == 0:
        print(f"no cluster running from {d}")
    return 0


def _restart(args) -> int:
    """CHK-14: restart every server (or the roles named) through `service.restart` events."""
    import asyncio

    from ccmsec.cluster.topology import ROLES

    d = data_dir(args, local=True)
    roles = args.roles or list(ROLES)
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise CliError(f"unknown role(s): {', '.join(unknown)}; known: {', '.join(ROLES)}")
    try:
        result = asyncio.run(runner.restart_services(d, roles, timeout=args.timeout, progress=True))
    except runner.RunnerError as exc:
        raise CliError(str(exc)) from None
    for role, (old, new) in result.items():
        print(f"{role:13} restarted: pid {old} -> {new}, SERVING")
    return 0


def register(sub) -> None:
    p = sub.add_parser("restart", help="restart services through restart events (CHK-14: all of them)")
    add_data_option(p)
    p.add_argument("roles", nargs="*", metavar="ROLE", help="roles to restart (default: every service)")
    p.add_argument("--timeout", type=seconds, default=90.0)
    p.set_defaults(func=_restart)
    p = sub.add_parser("up", help="start a local cluster (NATS + every service)")
    add_data_option(p)
    p.add_argument("-d", "--detach", action="store_true", help="return once every service is serving")
    p.add_argument("--base", help="loopback base address 127.A.B.0 (default: derived from --data)")
    p.add_argument("--timeout", type=seconds, default=runner.UP_TIMEOUT, help="seconds to wait for SERVING")
    p.add_argument("--subscribers", type=int, default=0, metavar="N",
                   help="call-control subscribers beside the publisher (0-4; LATER-7): phones list "
                        "the publisher and the first two subscribers, then SRST")
    p.add_argument("--service-users", choices=("auto", "on", "off"), default=None,
                   help="run each service under a uid of its own, so none can read another's key or "
                        "the cluster CA key (needs root; default $CCMSEC_SERVICE_USERS or auto: on "
                        "when root and the installation is readable by other users; "
                        "ids from $CCMSEC_SERVICE_UID_BASE, default 61000)")
    p.set_defaults(func=_up)
    p = sub.add_parser("status", help="show the cluster's services: the local runner's, or, with a "
                                      "context made from a client bundle in use, every service it "
                                      "publishes (exit 0 all serving, 3 one down or not serving, "
                                      "4 one DEGRADED)")
    add_data_option(p)
    add_json_option(p)
    p.set_defaults(func=_status)
    p = sub.add_parser("down", help="stop every process of the local cluster")
    add_data_option(p)
    p.set_defaults(func=_down)
