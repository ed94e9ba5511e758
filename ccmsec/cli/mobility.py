"""`ccmsec mobility add|pin|list`: extension-mobility users — the line a user brings to any phone
they log in to at the phone with their user id and PIN (`ccmsec phones login NAME USER`); the phone
keeps its own security mode (DEV-2)."""

from __future__ import annotations

import argparse

from pathlib import Path

from ccmsec.cli.common import (
    add_data_option,
    add_json_option,
    json_output,
    print_json,
    proto_json,
    read_password,
)
from ccmsec.cli.device import _grpc_call, format_table


def register(subparsers) -> None:
    parser = subparsers.add_parser("mobility", help="extension-mobility users (DEV-2)")
    sub = parser.add_subparsers(dest="mobility_command", metavar="ACTION")
    sub.required = True
    add = sub.add_parser("add", help="a user and the directory number they bring")
    add_data_option(add)
    add.add_argument("user", help="user id (letters, digits, _.-)")
    add.add_argument("dn", help="directory number")
    add.add_argument("--name", default="", help="display name")
    add.add_argument("--label", default="")
    add.set_defaults(func=_add)
    pin = sub.add_parser("pin", help="set the PIN a user types at the phone to log in (4-16 digits)")
    add_data_option(pin)
    pin.add_argument("user")
    pin.add_argument("--pin-file", dest="password_file", type=Path, metavar="FILE",
                     help="file holding the PIN, - for standard input (default: prompt)")
    pin.set_defaults(func=_pin)
    lst = sub.add_parser("list", help="users and where each is logged in")
    add_data_option(lst)
    add_json_option(lst)
    lst.set_defaults(func=_list)


def _add(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    user = _grpc_call(args, lambda stub: stub.AddMobilityUser(
        pb.MobilityUser(user_id=args.user, dn=args.dn, display_name=args.name, label=args.label), timeout=10))
    print(f"user {user.user_id}: line {user.dn}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from ccmsec_proto import common_pb2

    reply = _grpc_call(args, lambda stub: stub.GetMobilityUsers(common_pb2.Empty(), timeout=10))
    rows = [proto_json(u) for u in reply.users]
    if json_output(args):
        print_json(rows)
    else:
        print(format_table(rows, [("USER", "user_id"), ("NAME", "display_name"), ("DN", "dn"),
                                  ("LOGGED IN TO", "logged_in_to")]) if rows else "no users")
    return 0


def _pin(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    secret = read_password(args, prompt="PIN: ")
    user = _grpc_call(args, lambda stub: stub.SetMobilityPin(
        pb.MobilityPinRequest(user_id=args.user, pin=secret), timeout=30))
    print(f"user {user.user_id}: PIN set (logs in at a phone with `ccmsec phones login NAME {user.user_id}`)")
    return 0
