"""`ccmsec capf ...`: activate CAPF (CHK-2), schedule LSC operations, follow them, set parameters,
and the offline-CA mode (set-ca, export-csrs, import-certs).

Talks to the capf service over gRPC with mutual TLS (the CLI's client certificate from DATA/pki).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sys
from pathlib import Path

import grpc

from ccmsec.cli.common import (
    EXIT_NOT_READY, CliError, add_data_option, add_json_option, data_dir, int_in, json_output,
    print_json,
)
from ccmsec.domain import CapfAuthMode, CapfOperation, DomainError
from ccmsec.cluster.state import read_endpoints
from ccmsec.textsafe import shown

KEYS = ("rsa1024", "rsa2048", "rsa4096", "ec256")
CALL_TIMEOUT = 15.0
_RELATIVE = re.compile(r"^\+(\d{1,6})([mhd])$")
CERT_SUFFIXES = (".crt", ".pem", ".cer", ".der")
MAX_IMPORT_FILES = 1000
MAX_CERT_FILE = 64 * 1024
IMPORT_REFUSED_EXIT = 5


def parse_deadline(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """--by: YYYY-MM-DD (end of that day, UTC), an ISO date-time (UTC unless it names a zone),
    or +N followed by m, h or d (from now)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    m = _RELATIVE.match(text.strip())
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now + dt.timedelta(**{unit: int(m.group(1))})
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            day = dt.date.fromisoformat(text.strip())
            return dt.datetime.combine(day, dt.time(23, 59, 59), dt.timezone.utc)
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"bad --by date '{shown(text)}': use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][+HH:MM] "
                       "or +N followed by m, h or d") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _endpoint(args) -> tuple[Path, str, int]:
    d = data_dir(args)
    endpoints = read_endpoints(d)
    try:
        svc = endpoints["services"]["capf"]
        return d, svc["host"], int(svc["grpc_port"])
    except (TypeError, KeyError, ValueError):
        raise CliError(f"no running cluster found in {d} (start one with: ccmsec up -d --data {d})") from None


def _call(args, method: str, request):
    """One unary call to ccmsec.v1.Capf/<method>; gRPC errors become one-line CliErrors."""
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import capf_pb2_grpc

    d, host, port = _endpoint(args)

    async def run():
        ident = client_identity(d)
        async with secure_channel(ident, host, port, "capf") as channel:
            stub = capf_pb2_grpc.CapfStub(channel)
            return await getattr(stub, method)(request, timeout=CALL_TIMEOUT)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        # CAPF answered, but call control (its device look-ups) did not: CAPF's words, not "unreachable"
        relayed = "devices' owner" in (exc.details() or "")
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not relayed:
            raise CliError(f"cannot reach the capf service at {host}:{port} ({exc.code().name.lower()}); "
                           f"is the cluster up? (ccmsec status --data {d})") from None
        raise CliError(exc.details() or exc.code().name,
                       details={"grpc_status": exc.code().name}) from None
    except OSError as exc:
        raise CliError(f"cannot use the cluster credentials in {d}: {exc}") from None


def _when(unix: int) -> str:
    if not unix:
        return "-"
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _json(message) -> str:
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2)


def _name(cls, number: int) -> str:
    try:
        return cls.from_proto(number).value
    except DomainError:
        return f"?{number}"


def _print_operations(ops, as_json: bool, reply=None) -> None:
    if as_json:
        print(_json(reply))
        return
    rows = [[str(o.id), o.schedule.device, _name(CapfOperation, o.schedule.operation),
             _name(CapfAuthMode, o.schedule.auth_mode),
             o.schedule.key_type, o.state, _when(o.schedule.deadline_unix), _when(o.updated_unix), o.reason or "-"]
            for o in ops]
    print(_table(rows, ["ID", "DEVICE", "OPERATION", "AUTH", "KEY", "STATE", "DEADLINE", "UPDATED", "REASON"]))


# --- commands -----------------------------------------------------------------------------------

def _schedule(args) -> int:
    from ccmsec_proto import capf_pb2

    if args.auth == "string" and not args.auth_string:
        raise CliError("--auth string needs --auth-string DIGITS (4 to 10 digits the user types on the phone)")
    if args.auth != "string" and args.auth_string:
        raise CliError(f"--auth-string only goes with --auth string, not --auth {args.auth}")
    if args.auth_string and not re.fullmatch(r"\d{4,10}", args.auth_string):
        raise CliError("--auth-string must be 4 to 10 digits")
    deadline = parse_deadline(args.by) if args.by else None
    if deadline is not None and deadline <= dt.datetime.now(dt.timezone.utc):
        raise CliError(f"--by {args.by} is in the past ({deadline.isoformat()})")
    op_enum = CapfOperation.parse(args.op).to_proto()
    auth_enum = CapfAuthMode.parse(args.auth).to_proto()
    request = capf_pb2.CapfSchedule(device=args.device, operation=op_enum, auth_mode=auth_enum,
                                    auth_string=args.auth_string or "", key_type=args.key,
                                    deadline_unix=int(deadline.timestamp()) if deadline else 0)
    state = _call(args, "ScheduleOperation", request)
    if args.json:
        print(_json(state))
    else:
        print(f"scheduled CAPF {args.op} for {args.device} (operation {state.id}, auth {args.auth}, "
              f"key {state.schedule.key_type}, deadline {_when(state.schedule.deadline_unix)})")
    return 0


def _status(args) -> int:
    from ccmsec_proto import capf_pb2

    reply = _call(args, "GetOperations", capf_pb2.CapfStatusRequest(device=args.device or "", limit=args.limit))
    _print_operations(reply.operations, args.json, reply)
    return 0


def _activate(args) -> int:
    from ccmsec_proto import ctl_provider_pb2

    st = _call(args, "Activate", ctl_provider_pb2.ActivateRequest(active=not args.off))
    print(f"CAPF service {'activated' if st.activated else 'deactivated'} on {st.node}")
    if st.activated:
        print(_ctl_advice(args))
    return 0


def _ctl_advice(args) -> str:
    """What the CTL means for CAPF now (CHK-2): phones authenticate CAPF only through the CTL's
    CAPF entry, so say whether the current CTL lists this CAPF certificate — from the CTL
    Provider's current CTL and CAPF's own certificate, not from a guess."""
    from cryptography import x509

    from ccmsec.cli.ctl import _call_provider
    from ccmsec.formats.ctl import CtlFormatError, Role, parse_ctl
    from ccmsec_proto import common_pb2

    update = "`ccmsec ctl update --token NAME --token NAME --mode mixed`"
    try:
        current = _call_provider(args, "GetCurrentCtl", common_pb2.Empty())
    except CliError as exc:
        return f"could not read the current CTL ({exc}); the CTL must list CAPF (CHK-2)"
    if not current.present:
        return (f"no CTL yet: the CTL client ({update}, CHK-6) will list this CAPF certificate, "
                "so phones can authenticate CAPF")
    ours = x509.load_der_x509_certificate(_call(args, "GetCapfCertificate", common_pb2.Empty()).der)
    try:
        listed = [r.certificate for r in parse_ctl(current.ctl).records_for_role(Role.CAPF)]
    except CtlFormatError as exc:
        return f"the current CTL (version {current.version}) cannot be read: {exc}"
    if ours in listed:
        return (f"the current CTL (version {current.version}) already lists this CAPF certificate; "
                "no CTL update is needed")
    return (f"the current CTL (version {current.version}) does not list this CAPF certificate: "
            f"run the CTL client again ({update}) so phones can authenticate CAPF (CHK-2)")


def _log(args) -> int:
    from ccmsec_proto import capf_pb2

    reply = _call(args, "GetIssuedLog", capf_pb2.CapfStatusRequest(device=args.device or "", limit=args.limit))
    if args.json:
        print(_json(reply))
        return 0
    rows = [[_when(e.at_unix), e.device, str(e.operation_id or "-"), e.operation, e.outcome,
             e.certificate.serial or "-", (e.certificate.fingerprint_sha256 or "-")[:16]]
            for e in reply.entries]
    print(_table(rows, ["TIME", "DEVICE", "OP-ID", "OPERATION", "OUTCOME", "SERIAL", "SHA256"]))
    return 0


def _parse_pairs(args) -> dict[str, str]:
    return {args.name: args.value}


def _set_param(args) -> int:
    from ccmsec_proto import capf_pb2

    from ccmsec.cli.common import service_pids_before_change, wait_for_restarts

    method = "SetEnterpriseParameters" if args.enterprise else "SetServiceParameters"
    before = service_pids_before_change(args)
    reply = _call(args, method, capf_pb2.CapfParametersRequest(values=_parse_pairs(args)))
    scope = "enterprise" if args.enterprise else "service"
    print(f"CAPF {scope} parameter {args.name} = {args.value}")
    for ev in reply.events:
        print(f"published {ev}")
    if reply.delivery_pending:  # committed; its events wait for NATS (issue 9 §4)
        print("pending delivery: the value is saved and its events are queued; the event bus is "
              "unreachable, and they are sent as soon as it is back")
        return 0
    wait_for_restarts(args, before, reply.events)  # RST-8 restarts CAPF
    return 0


def _params(args) -> int:
    from ccmsec_proto import common_pb2

    reply = _call(args, "GetParameters", common_pb2.Empty())
    if args.json:
        print(_json(reply))
        return 0
    rows = [["service", k, v] for k, v in sorted(reply.service.items())]
    rows += [["enterprise", k, v] for k, v in sorted(reply.enterprise.items())]
    print(_table(rows, ["SCOPE", "NAME", "VALUE"]))
    return 0


def _cert(args) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from ccmsec.fsutil import atomic_write
    from ccmsec_proto import common_pb2

    msg = _call(args, "GetCapfCertificate", common_pb2.Empty())
    pem = x509.load_der_x509_certificate(msg.der).public_bytes(serialization.Encoding.PEM)
    if args.out:
        atomic_write(args.out, pem)
    if json_output(args):  # what the certificate is, as `tftp cert --json` (the PEM: --out FILE)
        from ccmsec.cli.common import proto_json

        print_json({k: v for k, v in proto_json(msg).items() if k != "der"})
    elif args.out:
        print(f"wrote the CAPF certificate ({msg.fingerprint_sha256[:16]}…) to {args.out}")
    else:
        sys.stdout.write(pem.decode())
    return 0


def _check(args) -> int:
    from ccmsec_proto import common_pb2

    reply = _call(args, "CheckLscs", common_pb2.Empty())
    if json_output(args):
        print_json({"installed": list(reply.installed), "missing": list(reply.missing)})
        return EXIT_NOT_READY if reply.missing else 0
    for d in reply.installed:
        print(f"ok       {d}")
    for d in reply.missing:
        print(f"MISSING  {d}: no LSC installed (schedule: ccmsec capf schedule {d} --op install ...)")
    print(f"CHK-8: {len(reply.installed)} of {len(reply.installed) + len(reply.missing)} devices that need "
          "an LSC have one")
    return 0 if not reply.missing else EXIT_NOT_READY  # answered, not in the wanted state


def _set_ca(args) -> int:
    from ccmsec_proto import capf_pb2

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    if len(data) > MAX_CERT_FILE:
        raise CliError(f"{args.file} is {len(data)} bytes; a CA certificate file is at most {MAX_CERT_FILE}")
    cert = _call(args, "SetThirdPartyCa", capf_pb2.ThirdPartyCaRequest(certificate=data))
    print(f"third-party LSC CA set: {cert.subject} (sha256 {cert.fingerprint_sha256[:16]}…); "
          "kept by CAPF (DATA/capf/lsc-third-party-ca.crt); call control asks CAPF for it")
    return 0


def _export_csrs(args) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from ccmsec.fsutil import atomic_write
    from ccmsec_proto import common_pb2

    reply = _call(args, "ExportCsrs", common_pb2.Empty())
    out: Path = args.dir
    if out.exists() and not out.is_dir():
        raise CliError(f"{out} exists and is not a directory")
    for entry in reply.csrs:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", entry.device) or entry.device.startswith("."):
            raise CliError(f"refusing to write a file for the device name '{shown(entry.device)}'")
        pem = x509.load_der_x509_csr(entry.csr_der).public_bytes(serialization.Encoding.PEM)
        atomic_write(out / f"{entry.device}.csr", pem)
        print(f"wrote {out / (entry.device + '.csr')} (operation {entry.operation_id})")
    print(f"{len(reply.csrs)} CSR(s) awaiting the third-party CA")
    return 0


def _import_certs(args) -> int:
    from ccmsec_proto import capf_pb2

    src: Path = args.dir
    if not src.is_dir():
        raise CliError(f"{src} is not a directory")
    paths = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in CERT_SUFFIXES)
    if not paths:
        raise CliError(f"no certificate files ({', '.join(CERT_SUFFIXES)}) in {src}")
    if len(paths) > MAX_IMPORT_FILES:
        raise CliError(f"{len(paths)} files in {src}; at most {MAX_IMPORT_FILES} per import")
    files = []
    for path in paths:
        if path.stat().st_size > MAX_CERT_FILE:
            raise CliError(f"{path} is larger than a certificate file ({MAX_CERT_FILE} bytes at most)")
        files.append(capf_pb2.CertificateFile(name=path.name, data=path.read_bytes()))
    reply = _call(args, "ImportCertificates", capf_pb2.CertificateImportRequest(files=files))
    if args.json:
        print(_json(reply))
    refused = 0
    for r in reply.results:
        if r.accepted:
            line = (f"imported {r.name}: {r.device} (operation {r.operation_id}, serial {r.certificate.serial}, "
                    f"sha256 {r.certificate.fingerprint_sha256[:16]}…)")
        else:
            refused += 1
            line = f"REFUSED  {r.name}: {r.reason}"
        if not args.json:
            print(line)
    if not args.json:
        print(f"{len(reply.results) - refused} imported, {refused} refused")
    return IMPORT_REFUSED_EXIT if refused else 0


def register(sub) -> None:
    parser = sub.add_parser("capf", help="CAPF: activate it, schedule LSC operations, follow them")
    add_data_option(parser)
    actions = parser.add_subparsers(dest="capf_command", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("schedule", help="schedule an LSC install/upgrade/delete/troubleshoot for a phone")
    add_data_option(p)
    p.add_argument("device")
    p.add_argument("--op", required=True, choices=CapfOperation.choices())
    p.add_argument("--auth", required=True, choices=CapfAuthMode.choices(), help="how the phone proves itself")
    p.add_argument("--auth-string", help="4 to 10 digits the user types on the phone (with --auth string)")
    p.add_argument("--key", default="", choices=KEYS, help="key the phone generates (default: enterprise parameter)")
    p.add_argument("--by", help="deadline: YYYY-MM-DD, ISO date-time, or +N(m|h|d)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print JSON (errors too, as a JSON object on stderr)")
    p.set_defaults(func=_schedule)

    p = actions.add_parser("status", help="pending, completed and failed operations with reasons")
    add_data_option(p)
    p.add_argument("device", nargs="?")
    p.add_argument("--limit", type=int_in(1), default=1000)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print JSON (errors too, as a JSON object on stderr)")
    p.set_defaults(func=_status)

    p = actions.add_parser("activate", help="activate the CAPF service on the publisher (CHK-2)")
    add_data_option(p)
    p.add_argument("--off", action="store_true", help="deactivate instead")
    p.set_defaults(func=_activate)

    p = actions.add_parser("log", help="the issued-certificate log (issuance, install, fetch, delete)")
    add_data_option(p)
    p.add_argument("device", nargs="?")
    p.add_argument("--limit", type=int_in(1), default=1000)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print JSON (errors too, as a JSON object on stderr)")
    p.set_defaults(func=_log)

    p = actions.add_parser("set-param", help="set a CAPF service (RST-8) or enterprise (RST-6) parameter")
    add_data_option(p)
    p.add_argument("name")
    p.add_argument("value")
    p.add_argument("--enterprise", action="store_true", help="an enterprise parameter (resets every device)")
    p.add_argument("--no-wait", action="store_true",
                   help="return at once instead of waiting until CAPF serves again (RST-8)")
    p.set_defaults(func=_set_param)

    p = actions.add_parser("params", help="show the CAPF parameters")
    add_data_option(p)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print JSON (errors too, as a JSON object on stderr)")
    p.set_defaults(func=_params)

    p = actions.add_parser("cert", help="print (or --out FILE) the CAPF certificate (PEM)")
    add_data_option(p)
    p.add_argument("--out", type=Path)
    add_json_option(p)
    p.set_defaults(func=_cert)

    p = actions.add_parser("check", help="CHK-8: do the phones that need an LSC have one? (exit 3 "
                                         "when one lacks it)")
    add_data_option(p)
    add_json_option(p)
    p.set_defaults(func=_check)

    p = actions.add_parser("set-ca", help="offline CA: import the third-party CA certificate that signs LSCs")
    add_data_option(p)
    p.add_argument("file", type=Path, help="the CA certificate (PEM or DER)")
    p.set_defaults(func=_set_ca)

    p = actions.add_parser("export-csrs", help="offline CA: write <device>.csr (PEM) for each phone awaiting the CA")
    add_data_option(p)
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_export_csrs)

    p = actions.add_parser("import-certs", help="offline CA: import the CA-signed certificates (*.crt, *.pem, "
                                                "*.cer, *.der) from DIR (exit 5 if any is refused)")
    add_data_option(p)
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print JSON (errors too, as a JSON object on stderr)")
    p.set_defaults(func=_import_certs)
