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
    AdminApiError,
    AdminClient,
    AdminClientError,
    discover,
)
from ccmsec.cli.common import CliError, add_data_option, data_dir, read_password, seconds
from ccmsec.textsafe import bounded

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
                        help="file holding the password, - for standard input (default for admin: "
                             "DATA/admin-password)")
    parent.add_argument("--ca-file", type=Path,
                        help="certificate to verify the API with (default: DATA/pki/cluster-ca.crt "
                             "or DATA/callmanager/https.crt)")
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print JSON (errors too, as a JSON object on stderr)")
    return parent


def register(subparsers) -> None:
    common = _connection_options()
    parser = subparsers.add_parser("device", help="add, list, show, remove phones; set their security")
    sub = parser.add_subparsers(dest="device_command", metavar="ACTION")
    sub.required = True

    add = sub.add_parser("add", parents=[common], help="add a phone")
    add.add_argument("name", help="SEP + 12 hex digits (the MAC), or [A-Za-z0-9_-]{1,15}")
    add.add_argument("--model", required=True, choices=DEVICE_MODELS)
    add.add_argument("--security", default=SECURITY_MODES[0], choices=SECURITY_MODES)
    add.add_argument("--description", default="",
                     help="free text, any script, up to 128 characters; no control characters "
                          "(newline, escape sequences, bidi overrides)")
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

    harden = sub.add_parser(
        "harden", parents=[common], help="phone hardening (CHK-11, DEV-4; the phone is reset, RST-2)",
        description="Switch a phone's features on or off. The settings go into its configuration "
                    "file and the phone obeys them after the reset that follows (RST-2). With no "
                    "option, --all-off: everything off, the hardened phone.")
    harden.add_argument("name")
    harden.add_argument("--all-off", action="store_true",
                        help="switch every feature below off (the default when none is given)")
    for flag, field, what in HARDENING_OPTIONS:
        harden.add_argument(f"--{flag}", choices=("on", "off"), dest=field, help=what)
    harden.set_defaults(func=_harden)

    register_call_control(sub)  # call control (gRPC): registrations, reset, set-pool


def _client(args: argparse.Namespace) -> AdminClient:
    password = None
    if args.password_file or (args.user and args.user != "admin"):
        password = read_password(args, prompt="Password: ")
    try:
        endpoint = discover(data_dir(args), url=args.url, username=args.user, password=password,
                            cafile=args.ca_file)
        return AdminClient(endpoint)
    except AdminClientError as exc:
        raise api_error(exc) from None


def api_error(exc: AdminClientError) -> CliError:
    """An API client error as the CLI's error (under --json: the HTTP status and rule ID too)."""
    details = {}
    if isinstance(exc, AdminApiError):
        details = {"http_status": exc.status, "rule": exc.rule}
    return CliError(str(exc), details=details)


def _run(args: argparse.Namespace, call):
    with _client(args) as client:
        try:
            return call(client)
        except AdminClientError as exc:
            raise api_error(exc) from None


def _print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _cell(value) -> str:
    # escaped: a description or name is whatever someone stored, and it goes to a terminal
    return "-" if value is None or value == "" else bounded(str(value), 4096)


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
              f"(config version {device['config_version']}); {_reset_wording(device)}")
    return 0


PENDING_DELIVERY = ("pending delivery: the change is saved and its reset is queued; the event bus "
                    "is unreachable, and the phone is reset as soon as it is back")


def _reset_wording(device: dict, rule: str = "") -> str:
    """Issue 9 §4: a change is never reported done while its reset was not delivered."""
    if device.get("delivery") == "pending":
        return PENDING_DELIVERY
    return "the phone is reset to apply it" + (f" ({rule})" if rule else "")


# DEV-4: option, API field, what it switches.
HARDENING_OPTIONS = (
    ("web", "web_access", "the phone's web server"),
    ("pc-port", "pc_port", "the PC port (off: a PC plugged into the phone gets no link)"),
    ("settings", "settings_access", "the Settings menu on the phone"),
    ("garp", "garp", "accepting gratuitous ARP"),
    ("voice-vlan", "voice_vlan_access", "access to the voice VLAN from the PC port"),
    ("span", "span_to_pc_port", "mirroring the phone's traffic to the PC port"),
)


def _harden(args: argparse.Namespace) -> int:
    changes = {field: getattr(args, field) == "on" for _, field, _ in HARDENING_OPTIONS
               if getattr(args, field) is not None}
    if args.all_off or not changes:
        changes = {field: False for _, field, _ in HARDENING_OPTIONS} | changes
    device = _run(args, lambda c: c.update_device(args.name, **changes))
    if args.json:
        _print_json(device)
        return 0
    print(f"{device['name']}: hardening (config version {device['config_version']}); "
          f"{_reset_wording(device, 'RST-2')}")
    for flag, field, what in HARDENING_OPTIONS:
        print(f"  {flag:<11} {'on ' if device[field] else 'off'}  {what}")
    return 0


# --- call control over gRPC: registrations, resets, device pool (callmanager service) -----------

REGISTRATION_COLUMNS = [("DEVICE", "device"), ("MODEL", "model"), ("MODE", "mode"),
                        ("SERVER", "server"), ("ADDRESS", "address"), ("PORT", "transport_port"),
                        ("CERT", "certificate_kind"), ("SINCE", "since"), ("NAT", "nat")]


def register_call_control(sub) -> None:
    """`device registrations`, `device reset`, `device set-pool` (gRPC to callmanager)."""
    regs = sub.add_parser("registrations", help="who is registered where, in which mode, with "
                                                "which certificate")
    add_data_option(regs)
    regs.add_argument("name", nargs="?", help="only this device")
    regs.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print JSON (errors too, as a JSON object on stderr)")
    regs.set_defaults(func=_registrations)

    reset = sub.add_parser("reset", help="send SCCP Reset to phones (names, --all, or --server)")
    add_data_option(reset)
    reset.add_argument("names", nargs="*", metavar="NAME")
    reset.add_argument("--all", action="store_true", help="every phone in the cluster (CHK-13)")
    reset.add_argument("--server", help="every phone registered to this call-control node: callmanager or callmanager-subK (RST-9)")
    reset.add_argument("--restart", action="store_true",
                       help="restart the phone application (Reset type 2) instead of a reset")
    reset.add_argument("--wait", action="store_true",
                       help="follow progress until every phone is back (or --timeout)")
    reset.add_argument("--timeout", type=seconds, default=120.0, help="seconds to wait (default 120)")
    reset.set_defaults(func=_reset)

    pool = sub.add_parser("set-pool", help="put a phone in a device pool")
    add_data_option(pool)
    pool.add_argument("name")
    pool.add_argument("pool")
    pool.set_defaults(func=_set_pool)


def _grpc_call(args: argparse.Namespace, call):
    """Run `call(stub)` against the callmanager service; gRPC errors become CliError."""
    import asyncio

    import grpc

    from ccmsec.cluster.state import read_endpoints
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import callmanager_pb2_grpc

    data = data_dir(args)
    endpoints = read_endpoints(data)
    if not endpoints or "callmanager" not in endpoints.get("services", {}):
        raise CliError(f"no running cluster in {data} (start it with `ccmsec up`)")
    svc = endpoints["services"]["callmanager"]

    async def run():
        async with secure_channel(client_identity(data), svc["host"], svc["grpc_port"],
                                  "callmanager") as channel:
            return await call(callmanager_pb2_grpc.CallManagerStub(channel))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        raise CliError(f"callmanager: {exc.details() or exc.code().name}",
                       details={"grpc_status": exc.code().name}) from None


def _registration_rows(reply) -> list[dict]:
    import datetime as _dt

    from ccmsec.domain import DeviceSecurityMode

    rows = []
    for r in reply.registrations:
        rows.append({
            "device": r.device, "model": r.model,
            "mode": DeviceSecurityMode.proto_text(r.mode),  # the one converter
            "server": r.server, "address": r.address, "reported_address": r.reported_address,
            "transport_port": r.transport_port, "cipher": r.cipher,
            "certificate_kind": r.certificate_kind,
            "certificate_fingerprint": r.certificate_fingerprint,
            "since": _dt.datetime.fromtimestamp(r.since_unix, _dt.timezone.utc).isoformat(),
            "nat_suspected": r.nat_suspected, "nat": "MODE-7" if r.nat_suspected else "",
        })
    return rows


def _registrations(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    reply = _grpc_call(args, lambda stub: stub.GetRegistrations(
        pb.RegistrationsRequest(device=args.name or ""), timeout=10))
    rows = _registration_rows(reply)
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no registered devices")
    else:
        print(format_table(rows, REGISTRATION_COLUMNS))
    return 0


def _reset(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from ccmsec_proto import callmanager_pb2 as pb

    if sum([bool(args.names), args.all, bool(args.server)]) != 1:
        raise CliError("give device names, or --all, or --server NODE (exactly one)")
    request = pb.ResetDevicesRequest(devices=args.names, all=args.all, server=args.server or "",
                                     restart=args.restart)

    async def run(stub):
        reply = await stub.ResetDevices(request, timeout=10)
        what = "restart" if args.restart else "reset"
        print(f"{what} requested for {reply.targeted} device(s) (request {reply.request_id})",
              flush=True)
        if reply.delivery_pending:  # committed, not yet acknowledged by the bus (issue 9 §4)
            print(f"pending delivery: the {what} is queued; the event bus is unreachable, and the "
                  "phones get it as soon as it is back", flush=True)
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.timeout
        last = None
        while True:
            p = await stub.GetResetProgress(pb.ResetProgressRequest(request_id=reply.request_id),
                                            timeout=10)
            line = f"  {p.reset_sent}/{p.targeted} reset sent, {p.back}/{p.targeted} back"
            if line != last:
                print(line, flush=True)
                last = line
            if p.complete:
                print(f"complete: every targeted device is back ({p.targeted})")
                return 0
            if time.monotonic() > deadline:
                print(f"not back after {args.timeout:g} s: {', '.join(p.not_back)}")
                return 3
            await asyncio.sleep(0.5)

    return _grpc_call(args, run)


def _set_pool(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    reply = _grpc_call(args, lambda stub: stub.SetDevicePool(
        pb.SetDevicePoolRequest(device=args.name, pool=args.pool), timeout=10))
    print(f"{reply.device}: device pool {reply.pool}")
    return 0
