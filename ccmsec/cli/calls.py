"""`ccmsec calls [list]|watch|cti`: every call call control carries and its security status
(CALL-1), live, and the CTI ports an application drives (gRPC to callmanager).

The status is the one the policy computed for the call, and each leg shows what that phone
displays (lock = encrypted, shield = authenticated, none). Phone actions (dial, answer, hold…)
are `ccmsec phones dial|answer|…`: a user at a simulated phone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ccmsec.cli.common import (
    EXIT_USAGE, CliError, add_data_option, add_json_option, json_output, proto_json, seconds_or_zero,
)
from ccmsec.cli.device import _grpc_call, _print_json, format_table

CTI_ACTIONS = ("dial", "answer", "hangup")


def register(subparsers) -> None:
    parser = subparsers.add_parser("calls", help="calls in progress and their security status (CALL-1)")
    add_data_option(parser)
    add_json_option(parser)
    parser.set_defaults(func=_list)
    sub = parser.add_subparsers(dest="calls_command", metavar="ACTION")
    lst = sub.add_parser("list", help="calls in progress (the default)")
    add_data_option(lst)
    add_json_option(lst)
    lst.set_defaults(func=_list)
    watch = sub.add_parser("watch", help="the calls now, then every change as it happens")
    add_data_option(watch)
    watch.add_argument("--timeout", type=seconds_or_zero, default=0.0, help="stop after SECONDS (0: until Ctrl-C)")
    watch.add_argument("--count", type=int, default=0, help="stop after N events (0: no limit)")
    watch.add_argument("--table", action="store_true",
                       help="a live table of the calls in progress, redrawn at every change (instead of "
                            "one line per event)")
    watch.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="one JSON object per event and line (kind, at_unix_ms, detail, call)")
    watch.set_defaults(func=_watch)
    cti = sub.add_parser("cti", help="drive a CTI port (never secure: CALL-3)")
    add_data_option(cti)
    cti.add_argument("port", help="e.g. CTI7000")
    cti.add_argument("action", choices=CTI_ACTIONS)
    cti.add_argument("number", nargs="?", default="", help="with dial: the number")
    cti.set_defaults(func=_cti)


def _legs(call) -> str:
    """Each leg; its codec too where it is not the call's (a bridge's legs in their own laws)."""
    return ", ".join(f"{lg.device}({lg.dn} {lg.state} {lg.shown}"
                     + (f" {lg.codec})" if lg.codec and lg.codec != call.codec else ")")
                     for lg in call.legs)


def call_row(call) -> dict:
    return {"id": call.id, "calling": call.calling, "called": call.called, "phase": call.phase,
            "status": call.status, "rule": call.rule, "codec": call.codec,
            "legs": _legs(call), "resources": ", ".join(call.resources), "barge": call.barge}


COLUMNS = [("ID", "id"), ("CALLING", "calling"), ("CALLED", "called"), ("PHASE", "phase"),
           ("STATUS", "status"), ("RULE", "rule"), ("CODEC", "codec"), ("LEGS (what each shows)", "legs"),
           ("RESOURCES", "resources")]


def _list(args: argparse.Namespace) -> int:
    from ccmsec_proto import common_pb2

    reply = _grpc_call(args, lambda stub: stub.ListCalls(common_pb2.Empty(), timeout=10))
    if json_output(args):
        _print_json([proto_json(c) for c in reply.calls])
    elif reply.calls:
        print(format_table([call_row(c) for c in reply.calls], COLUMNS))
    else:
        print("no calls")
    return 0


def event_line(event) -> str:
    c = event.call
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at_unix_ms / 1000)) if event.at_unix_ms else "--:--:--"
    detail = f"  ({event.detail})" if event.detail else ""
    return (f"{stamp} {event.kind:8} call {c.id} {c.calling or '?'} -> {c.called or '?'} {c.phase} "
            f"status {c.status} [{c.rule or '-'}] {_legs(c)}"
            + (f" resources {', '.join(c.resources)}" if c.resources else "") + detail)


class LiveCalls:
    """The calls in progress as a watch reports them: `apply` each event, `render` the table."""

    def __init__(self) -> None:
        self.calls: dict[int, object] = {}

    def apply(self, event) -> None:
        if event.kind == "ended":
            self.calls.pop(event.call.id, None)
        else:   # existing, created, updated, refused (a refused barge: the call as it stays)
            self.calls[event.call.id] = event.call

    def render(self, last_event: str = "") -> str:
        rows = [call_row(c) for _, c in sorted(self.calls.items())]
        head = f"{time.strftime('%H:%M:%S')}  {len(rows)} call(s) in progress" + (
            f"  — last: {last_event}" if last_event else "")
        return head + "\n" + (format_table(rows, COLUMNS) if rows else "no calls")


CLEAR = "\033[H\033[J"


def _watch(args: argparse.Namespace) -> int:
    import asyncio

    from ccmsec_proto import common_pb2

    if args.count < 0:
        raise CliError("--count must not be negative")
    if json_output(args) and args.table:
        raise CliError("--json and --table do not go together: choose one", EXIT_USAGE)

    async def run(stub) -> int:
        seen = 0
        stream = stub.WatchCalls(common_pb2.Empty())
        try:
            async def consume() -> None:
                nonlocal seen
                live = LiveCalls()
                async for event in stream:
                    if json_output(args):
                        print(json.dumps(proto_json(event), sort_keys=True), flush=True)
                    elif args.table:
                        live.apply(event)
                        prefix = CLEAR if sys.stdout.isatty() else "\n"
                        print(prefix + live.render(f"{event.kind} call {event.call.id}"), flush=True)
                    else:
                        print(event_line(event), flush=True)
                    seen += 1
                    if args.count and seen >= args.count:
                        return
            if args.timeout:
                try:
                    await asyncio.wait_for(consume(), args.timeout)
                except asyncio.TimeoutError:
                    pass
            else:
                await consume()
        finally:
            stream.cancel()
        return seen

    try:
        seen = _grpc_call(args, run)
    except KeyboardInterrupt:
        return 0
    if not seen:
        print("no calls", file=sys.stderr)
    return 0


def _cti(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    if args.action == "dial" and not args.number:
        raise CliError("dial needs a number: ccmsec calls cti PORT dial NUMBER")
    reply = _grpc_call(args, lambda stub: stub.DriveCtiPort(
        pb.CtiRequest(port=args.port, action=args.action, number=args.number), timeout=10))
    print(f"{reply.port}: " + (", ".join(reply.calls) or "idle"))
    return 0
