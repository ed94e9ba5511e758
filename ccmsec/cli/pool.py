"""`ccmsec pool add|list`: device pools with their CallManager group and SRST reference."""

from __future__ import annotations

import argparse

from ccmsec.cli.common import add_data_option
from ccmsec.cli.device import _grpc_call, _print_json, format_table


def register(subparsers) -> None:
    parser = subparsers.add_parser("pool", help="device pools (CallManager group, SRST reference)")
    sub = parser.add_subparsers(dest="pool_command", metavar="ACTION")
    sub.required = True
    add = sub.add_parser("add", help="create a device pool")
    add_data_option(add)
    add.add_argument("name")
    add.add_argument("--cm", required=True, help="CallManager group, in order: HOST[,HOST…] (max 3)")
    add.add_argument("--srst", default="", help="SRST reference")
    add.set_defaults(func=_add)
    lst = sub.add_parser("list", help="list device pools")
    add_data_option(lst)
    lst.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print JSON (errors too, as a JSON object on stderr)")
    lst.set_defaults(func=_list)


def _add(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    hosts = [h.strip() for h in args.cm.split(",") if h.strip()]
    pool = _grpc_call(args, lambda stub: stub.AddDevicePool(
        pb.DevicePool(name=args.name, cm_group=hosts, srst=args.srst), timeout=10))
    print(f"device pool {pool.name}: CallManager group {', '.join(pool.cm_group)}"
          + (f", SRST {pool.srst}" if pool.srst else ""))
    return 0


def _list(args: argparse.Namespace) -> int:
    from ccmsec_proto import common_pb2

    reply = _grpc_call(args, lambda stub: stub.GetDevicePools(common_pb2.Empty(), timeout=10))
    rows = [{"name": p.name, "cm_group": ",".join(p.cm_group), "srst": p.srst} for p in reply.pools]
    if args.json:
        _print_json(rows)
    else:
        print(format_table(rows, [("POOL", "name"), ("CALLMANAGER GROUP", "cm_group"),
                                  ("SRST", "srst")]) if rows else "no device pools")
    return 0
