"""`ccmsec line add|list`: directory numbers on phones (gRPC to callmanager)."""

from __future__ import annotations

import argparse

from ccmsec.cli.common import add_data_option, int_in
from ccmsec.cli.device import _grpc_call, _print_json, format_table


def register(subparsers) -> None:
    parser = subparsers.add_parser("line", help="directory numbers on phones")
    sub = parser.add_subparsers(dest="line_command", metavar="ACTION")
    sub.required = True
    add = sub.add_parser("add", help="put a directory number on a phone (shared if on several)")
    add_data_option(add)
    add.add_argument("dn", help="directory number (0-9 * # +, up to 24)")
    add.add_argument("--device", required=True)
    add.add_argument("--index", type=int_in(0), default=0, help="line button (default: next free)")
    add.add_argument("--label", default="",
                     help="printable ASCII, up to 40 characters (the phone shows it over Skinny)")
    add.set_defaults(func=_add)
    lst = sub.add_parser("list", help="list lines")
    add_data_option(lst)
    lst.add_argument("--device", default="")
    lst.add_argument("--dn", default="")
    lst.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print JSON (errors too, as a JSON object on stderr)")
    lst.set_defaults(func=_list)


def _add(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    line = _grpc_call(args, lambda stub: stub.AddLine(
        pb.Line(dn=args.dn, device=args.device, line_index=args.index, label=args.label), timeout=10))
    print(f"{line.device}: line {line.line_index} = {line.dn}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    reply = _grpc_call(args, lambda stub: stub.GetLines(
        pb.LinesRequest(device=args.device, dn=args.dn), timeout=10))
    rows = [{"dn": r.dn, "device": r.device, "line_index": r.line_index, "label": r.label}
            for r in reply.lines]
    if args.json:
        _print_json(rows)
    else:
        print(format_table(rows, [("DN", "dn"), ("DEVICE", "device"), ("LINE", "line_index"),
                                  ("LABEL", "label")]) if rows else "no lines")
    return 0
