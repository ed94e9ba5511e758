"""`ccmsec outbox list|resend`: the events a service's outbox set aside (refused for good by
NATS/JetStream, never published), seen and tried again once the cause is fixed.

    ccmsec outbox list SERVICE [--limit N] [--json]     id, subject, when, reason, payload size
    ccmsec outbox resend SERVICE (--id N [--id M ...] | --all)

Each service owns its outbox: these commands ask the service (gRPC `ccmsec.v1.Outbox`, the
command line's identity), never its database. The payload of an event is never shown.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

from ccmsec.cli.common import (
    EXIT_USAGE, CliError, add_data_option, add_json_option, data_dir, int_in, json_output, print_json,
)
from ccmsec.textsafe import shown

LIST_MAX = 1000   # ccmsec.runtime.outbox.LIST_MAX
RESEND_MAX = 1000  # ccmsec.runtime.outbox.REQUEUE_MAX

DESCRIPTION = """\
A row of a service's event outbox that NATS/JetStream refuses for good (its subject is not the
service's to publish, the message is too large, its payload does not decode...) is set aside:
counted in ccmsec_outbox_set_aside_total, shown in `ccmsec status` (outbox_set_aside), and deleted
after 7 days. `list` shows those rows (oldest first; never the payload, only its size); `resend`,
once the cause is fixed, puts them back in the queue: the relay tries them again in order, and
sets aside again (logged, counted) one refused again. A resend restarts a row's 7 days (its staged
time becomes the resend's) and is audited (outbox.resend in the audit log). SERVICE is a node name of `ccmsec status`
(e.g. callmanager, callmanager-sub1, ctl-provider)."""


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("outbox", help="a service's set-aside outbox events: list, resend",
                           description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_option(group)
    actions = group.add_subparsers(dest="outbox_command", metavar="ACTION")
    actions.required = True

    lst = actions.add_parser("list", help="the events SERVICE's outbox set aside (never published)")
    add_data_option(lst)
    lst.add_argument("service", metavar="SERVICE", help="node name, e.g. callmanager")
    lst.add_argument("--limit", type=int_in(1, LIST_MAX), default=100,
                     help=f"most rows shown, oldest first (default 100, at most {LIST_MAX})")
    add_json_option(lst)
    lst.set_defaults(func=cmd_list)

    resend = actions.add_parser("resend", help="try set-aside events again (after fixing the cause)")
    add_data_option(resend)
    resend.add_argument("service", metavar="SERVICE", help="node name, e.g. callmanager")
    which = resend.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", type=int_in(1, 2**63 - 1), action="append", metavar="N",
                       help="a row id from `ccmsec outbox list` (repeat for more)")
    which.add_argument("--all", action="store_true", help="every set-aside row of SERVICE")
    add_json_option(resend)
    resend.set_defaults(func=cmd_resend)


def _target(args) -> tuple[object, str, dict]:
    from ccmsec.cluster.databases import role_of
    from ccmsec.cluster.state import read_endpoints

    data = data_dir(args)
    endpoints = read_endpoints(data)
    services = (endpoints or {}).get("services") or {}
    if not services:
        raise CliError(f"no running cluster found in {data} (start it with `ccmsec up --data {data}`)")
    if args.service not in services:
        raise CliError(f"no service {shown(args.service)!s} in this cluster; services: "
                       f"{', '.join(sorted(services))}", EXIT_USAGE)
    try:
        role = role_of(args.service)
    except KeyError:
        raise CliError(f"{shown(args.service)}: not a ccmsec service node", EXIT_USAGE) from None
    return data, role, services[args.service]


def _call(args, method: str, request):
    """One unary call to SERVICE's Outbox over mutual TLS; errors become one CLI line."""
    import grpc

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import outbox_pb2_grpc

    data, role, svc = _target(args)

    async def run():
        async with secure_channel(client_identity(data), svc["host"], svc["grpc_port"], role) as channel:
            return await getattr(outbox_pb2_grpc.OutboxStub(channel), method)(request, timeout=30)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        raise CliError(f"{args.service}: {exc.details() or exc.code().name}",
                       details={"grpc_status": exc.code().name}) from None


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args) -> int:
    from ccmsec_proto import outbox_pb2

    reply = _call(args, "ListSetAside", outbox_pb2.ListSetAsideRequest(limit=args.limit))
    rows = [{"id": r.id, "event_id": r.event_id, "kind": r.kind, "subject": r.subject,
             "set_aside_since": _when(r.created_unix_ms), "created_unix_ms": r.created_unix_ms,
             "reason": r.reason, "payload_bytes": r.payload_bytes, "attempts": r.attempts}
            for r in reply.rows]
    if json_output(args):
        print_json({"node": reply.node, "role": reply.role, "total": reply.total, "rows": rows})
        return 0
    if not rows:
        print(f"{reply.node}: no set-aside outbox events")
        return 0
    print(f"{'ID':>8}  {'STAGED (UTC)':19}  {'BYTES':>7}  {'SUBJECT':40}  REASON")
    for r in rows:
        print(f"{r['id']:>8}  {_when(r['created_unix_ms']):19}  {r['payload_bytes']:>7}  "
              f"{shown(r['subject'] or r['kind'], 40):40}  {shown(r['reason'], 300)}")
    more = reply.total - len(rows)
    print(f"{reply.total} set-aside event(s) on {reply.node}" + (f" ({more} more: --limit)" if more else "")
          + f"; after fixing the cause: ccmsec outbox resend {args.service} --id N | --all")
    return 0


def cmd_resend(args) -> int:
    from ccmsec_proto import outbox_pb2

    if args.ids and len(args.ids) > RESEND_MAX:
        raise CliError(f"at most {RESEND_MAX} --id at once (or --all)", EXIT_USAGE)
    reply = _call(args, "Resend", outbox_pb2.ResendRequest(ids=args.ids or [], all=args.all))
    ids = list(reply.ids)
    if json_output(args):
        print_json({"service": args.service, "requeued": ids})
        return 0
    if not ids:
        print(f"{args.service}: no set-aside outbox events to resend")
        return 0
    print(f"{args.service}: {len(ids)} event(s) re-queued ({', '.join(map(str, ids[:20]))}"
          f"{' ...' if len(ids) > 20 else ''}); refused again, they are set aside again "
          f"(`ccmsec outbox list {args.service}`)")
    return 0
