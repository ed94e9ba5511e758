"""`ccmsec device ...`: manage phones through the HTTPS administration API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ccmsec.adminclient import (
    DEVICE_MODELS,
    HARDENING_FIELDS,
    SECURITY_MODES,
    AdminClient,
    AdminClientError,
    discover,
)
from ccmsec.cli.common import CliError, add_data_option, data_dir, read_password

LIST_COLUMNS = [("NAME", "name"), ("MODEL", "model"), ("SECURITY", "security_mode"),
                ("POOL", "device_pool"), ("VERSION", "config_version"),
                ("DESCRIPTION", "description")]


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add_data_option(parent)
    parent.add_argument("--url", help="administration API URL (default: admin_url in "
                                      "DATA/run/endpoints.json)")
    parent.add_argument("--user", help="account name (default: admin)")
    parent.add_argument("--password-file", type=Path,
                        help="file holding the password (default for admin: DATA/admin-password)")
    parent.add_argument("--ca-file", type=Path,
                        help="certificate to verify the API with (default: DATA/pki/cluster-ca.crt "
                             "or DATA/callmanager/https.crt)")
    parent.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parent


def register(subparsers) -> None:
    common = _connection_options()
    parser = subparsers.add_parser("device", help="add, list, show, remove phones; set their security")
    sub = parser.add_subparsers(dest="device_command", metavar="ACTION")
    sub.required = True

    add = sub.add_parser("add", parents=[common], help="add a phone")
    add.add_argument("name", help="SEP + 12 hex digits (the MAC), or [A-Za-z0-9_-]{1,15}")
    add.add_argument("--model", required=True, choices=DEVICE_MODELS)
    add.add_argument("--security", default="non-secure", choices=SECURITY_MODES)
    add.add_argument("--description", default="")
    add.add_argument("--pool", help="device pool")
    add.set_defaults(func=_add)

    lst = sub.add_parser("list", parents=[common], help="list phones")
    lst.set_defaults(func=_list)

    show = sub.add_parser("show", parents=[common], help="show one phone")
    show.add_argument("name")
    show.set_defaults(func=_show)

    remove = sub.add_parser("remove", parents=[common], help="remove a phone")
    remove.add_argument("name")
    remove.set_defaults(func=_remove)

    setsec = sub.add_parser("set-security", parents=[common],
                            help="change a phone's security mode (the phone is reset, RST-1)")
    setsec.add_argument("name")
    setsec.add_argument("mode", choices=SECURITY_MODES)
    setsec.set_defaults(func=_set_security)


def _client(args: argparse.Namespace) -> AdminClient:
    password = None
    if args.password_file or (args.user and args.user != "admin"):
        password = read_password(args, prompt="Password: ")
    try:
        endpoint = discover(data_dir(args), url=args.url, username=args.user, password=password,
                            cafile=args.ca_file)
        return AdminClient(endpoint)
    except AdminClientError as exc:
        raise CliError(str(exc)) from None


def _run(args: argparse.Namespace, call):
    with _client(args) as client:
        try:
            return call(client)
        except AdminClientError as exc:
            raise CliError(str(exc)) from None


def _print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _cell(value) -> str:
    return "-" if value is None or value == "" else str(value)


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Left-aligned columns, each as wide as its widest cell."""
    cells = [[title for title, _ in columns]]
    cells += [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _show_device(device: dict) -> None:
    keys = ["name", "model", "security_mode", "description", "device_pool", *HARDENING_FIELDS,
            "config_version", "created_at", "updated_at"]
    width = max(len(k) for k in keys)
    for key in keys:
        value = device.get(key)
        if isinstance(value, bool):
            value = "enabled" if value else "disabled"
        print(f"{key.ljust(width)}  {_cell(value)}")


def _add(args: argparse.Namespace) -> int:
    extra = {"description": args.description}
    if args.pool:
        extra["device_pool"] = args.pool
    device = _run(args, lambda c: c.add_device(args.name, args.model, args.security, **extra))
    if args.json:
        _print_json(device)
    else:
        print(f"added {device['name']} ({device['model']}, {device['security_mode']})")
    return 0


def _list(args: argparse.Namespace) -> int:
    devices = _run(args, lambda c: c.list_devices())
    if args.json:
        _print_json(devices)
    elif not devices:
        print("no devices")
    else:
        print(format_table(devices, LIST_COLUMNS))
    return 0


def _show(args: argparse.Namespace) -> int:
    device = _run(args, lambda c: c.get_device(args.name))
    if args.json:
        _print_json(device)
    else:
        _show_device(device)
    return 0


def _remove(args: argparse.Namespace) -> int:
    result = _run(args, lambda c: c.remove_device(args.name))
    if args.json:
        _print_json(result)
    else:
        print(f"removed {result['deleted']}")
    return 0


def _set_security(args: argparse.Namespace) -> int:
    device = _run(args, lambda c: c.update_device(args.name, security_mode=args.mode))
    if args.json:
        _print_json(device)
    else:
        print(f"{device['name']}: security mode {device['security_mode']} "
              f"(config version {device['config_version']}); the phone is reset to apply it")
    return 0
