"""`ccmsec phones add|boot|reset|list|show|factory-reset|set-auth-string|set-servers`: the simulated phones;
`ccmsec phones dial|answer|hangup|hold|resume|transfer|conference|barge|cbarge|digits|forward-all|calls`:
a user at a registered phone placing and taking calls (issue 10), and what its display shows.

Talks to the phone-sim service over gRPC with mutual TLS (the CLI's client certificate).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

from ccmsec.cli.common import (
    CliError, add_data_option, add_json_option, data_dir, int_in, json_output, print_json, proto_json,
    seconds,
)

ROLE = "phone-sim"
# Where a boot ends; "capf" counts once the phone is parked waiting for an offline CA (not booting).
SETTLED = ("registered", "failed", "off", "capf")


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("phones", help="simulated phones (TFTP, CAPF, SCCP)")
    add_data_option(group)
    actions = group.add_subparsers(dest="phones_command", metavar="ACTION")
    actions.required = True

    add = actions.add_parser("add", help="manufacture simulated phones (7970s get a MIC)")
    add_data_option(add)
    add.add_argument("--count", type=int_in(1), default=1)
    add.add_argument("--model", required=True, help="7970, 7960, 7940, 7912, 7910, 7905G, 7902")
    names = add.add_mutually_exclusive_group()
    names.add_argument("--name-prefix", default="", help="e.g. SEP0011 (names continue with hex digits)")
    names.add_argument("--name", metavar="SEP…",
                       help="one phone with exactly this name (e.g. a device already added with "
                            "`ccmsec device add`)")
    add.set_defaults(func=cmd_add)

    for verb, helptext in (("boot", "power on / boot phones"), ("reset", "reset powered phones")):
        p = actions.add_parser(verb, help=helptext)
        add_data_option(p)
        p.add_argument("names", nargs="*", metavar="NAME")
        p.add_argument("--all", action="store_true", help="every phone")
        p.add_argument("--wait", action="store_true", help="show progress until every phone settles")
        p.add_argument("--timeout", type=seconds, default=120.0, help="with --wait: give up after SECONDS")
        p.set_defaults(func=cmd_boot if verb == "boot" else cmd_reset)

    listing = actions.add_parser("list", help="phones and their state")
    add_data_option(listing)
    add_json_option(listing)
    listing.set_defaults(func=cmd_list)

    show = actions.add_parser("show", help="one phone: state, files, trust list, certificates, failures")
    add_data_option(show)
    show.add_argument("name", metavar="NAME")
    add_json_option(show)
    show.set_defaults(func=cmd_show)

    fr = actions.add_parser("factory-reset", help="clear CTL and LSC (never the MIC)")
    add_data_option(fr)
    fr.add_argument("names", nargs="+", metavar="NAME")
    fr.set_defaults(func=cmd_factory_reset)

    settings = actions.add_parser("settings", help="open a phone's Settings menu (locked when "
                                                   "settings access is disabled: DEV-4)")
    add_data_option(settings)
    settings.add_argument("name", metavar="NAME")
    settings.set_defaults(func=cmd_settings)

    auth = actions.add_parser("set-auth-string", help="type the CAPF authentication string on a phone")
    add_data_option(auth)
    auth.add_argument("name", metavar="NAME")
    auth.add_argument("digits", metavar="DIGITS")
    auth.set_defaults(func=cmd_set_auth_string)

    servers = actions.add_parser(
        "set-servers", help="point phones at other TFTP / CAPF / call-control servers (e.g. not ours)",
        description="From the next boot on, the phones fetch files from --tftp, enrol with --capf and "
                    "register with --call-control instead of the cluster's servers and the addresses "
                    "their configuration file names. Addresses are HOST[:PORT]. --clear goes back.")
    add_data_option(servers)
    servers.add_argument("names", nargs="*", metavar="NAME")
    servers.add_argument("--all", action="store_true", help="every phone")
    servers.add_argument("--tftp", default="", metavar="HOST[:PORT]", help="TFTP server (port 69 by default)")
    servers.add_argument("--capf", default="", metavar="HOST[:PORT]", help="CAPF server (port 3804 by default)")
    servers.add_argument("--call-control", action="append", default=[], metavar="HOST[:PORT]",
                         help="call control, up to 3 in order (port 2443 over TLS, 2000 without)")
    servers.add_argument("--clear", action="store_true", help="forget every override first")
    servers.set_defaults(func=cmd_set_servers)

    # --- calls: a user at the phone (issue 10) ---------------------------------------------------
    for verb, helptext, number in CALL_ACTIONS:
        p = actions.add_parser(verb, help=helptext)
        add_data_option(p)
        p.add_argument("name", metavar="NAME")
        if number == "required":
            p.add_argument("number", metavar="NUMBER")
        elif number == "optional":
            p.add_argument("number", metavar="NUMBER", nargs="?", default="")
        p.add_argument("--call", type=int_in(0), default=0, metavar="REF", help="the call reference (default: "
                       "the call the action obviously means)")
        p.add_argument("--line", type=int_in(0), default=0, help="line button (default: the first)")
        p.add_argument("--wait", type=float, default=2.0, metavar="SECONDS",
                       help="wait up to SECONDS (max 10) for call control to answer")
        p.set_defaults(func=cmd_call_action, action_name=verb)
    login = actions.add_parser("login", help="extension mobility: USER logs in at the phone with their PIN; "
                                             "the phone asks call control over its own connection and "
                                             "restarts with the user's line, keeping its own security mode (DEV-2)")
    add_data_option(login)
    login.add_argument("name", metavar="NAME")
    login.add_argument("user", metavar="USER")
    login.add_argument("--pin-file", dest="password_file", type=Path, metavar="FILE",
                       help="file holding the PIN, - for standard input (default: prompt)")
    login.set_defaults(func=cmd_mobility, action_name="login")
    logout = actions.add_parser("logout", help="extension mobility: the user logs out at the phone (it "
                                               "restarts with its own lines)")
    add_data_option(logout)
    logout.add_argument("name", metavar="NAME")
    logout.set_defaults(func=cmd_mobility, action_name="logout", user="")
    calls = actions.add_parser("calls", help="a phone's display: lines, calls with their lock / shield, "
                                             "and its audio counters")
    add_data_option(calls)
    calls.add_argument("name", metavar="NAME")
    add_json_option(calls)
    calls.set_defaults(func=cmd_calls)


CALL_ACTIONS = (
    ("dial", "go off-hook and dial a number (en bloc)", "required"),
    ("digits", "press keypad digits (in a call or while dialling)", "required"),
    ("off-hook", "lift the handset (dial tone)", None),
    ("on-hook", "put the handset down", None),
    ("answer", "answer the ringing call", None),
    ("hangup", "end the call (or decline a ringing one)", None),
    ("hold", "put the connected call on hold (the other side hears music on hold)", None),
    ("resume", "resume the held call", None),
    ("transfer", "Transfer: first press starts a consultation, second press completes it", None),
    ("conference", "Confrn: first press starts a consultation, second press joins everyone", None),
    ("barge", "barge into the call on a shared line (CALL-4…7)", None),
    ("cbarge", "cBarge into the call on a shared line, through the bridge (CALL-8)", None),
    ("forward-all", "set call forward all to NUMBER (no number: cancel)", "optional"),
)


# --- plumbing ----------------------------------------------------------------------------------------

def _call(args: argparse.Namespace, method: str, request, timeout: float = 60.0):
    import grpc

    from ccmsec.cluster.state import read_endpoints
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import phone_sim_pb2_grpc

    data = data_dir(args)
    endpoints = read_endpoints(data)
    if not endpoints or ROLE not in endpoints.get("services", {}):
        raise CliError(f"no running cluster in {data} (start it with `ccmsec up -d --data {data}`)")
    svc = endpoints["services"][ROLE]

    async def run():
        async with secure_channel(client_identity(data), svc["host"], svc["grpc_port"], ROLE) as ch:
            return await getattr(phone_sim_pb2_grpc.PhoneSimStub(ch), method)(request, timeout=timeout)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        raise CliError(f"phone-sim: {exc.details() or exc.code().name}",
                       details={"grpc_status": exc.code().name}) from None


def _selector(args: argparse.Namespace):
    from ccmsec_proto import phone_sim_pb2

    if not args.names and not args.all:
        raise CliError("name one or more phones, or use --all")
    return phone_sim_pb2.PhoneSelector(names=args.names, all=args.all)


def _row(p) -> str:
    failure = f"  last failure: {p.last_failure}" if p.last_failure else ""
    via = f" via {p.registered_with} ({p.transport})" if p.registered_with else ""
    return f"{p.name}  {p.model:6} {p.state:21}{via}{failure}"


def _summary(phones) -> str:
    counts = Counter(p.state for p in phones)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def _wait(args: argparse.Namespace, names: list[str], started: dict[str, int]) -> int:
    from ccmsec_proto import phone_sim_pb2

    deadline = time.monotonic() + args.timeout
    last = ""
    while True:
        phones = _call(args, "ListPhones", phone_sim_pb2.PhoneSelector(names=names)).phones
        # Settled: a new boot has begun since the request and has reached an end state.
        done = [p for p in phones if p.boots > started.get(p.name, 0) and p.state in SETTLED and not p.booting]
        line = f"  {len(done)}/{len(phones)} settled: {_summary(phones)}"
        if line != last:
            print(line, flush=True)
            last = line
        if len(done) == len(phones):
            failed = [p for p in phones if p.state != "registered"]
            for p in failed:
                print(f"  {p.name}: {p.state} — {p.last_failure}: {p.last_failure_reason}")
            return 1 if failed else 0
        if time.monotonic() > deadline:
            late = [p.name for p in phones if p not in done]
            raise CliError(f"{len(late)} phone(s) not settled after {args.timeout:.0f} s: {', '.join(late[:10])}")
        time.sleep(0.5)


def _boot_or_reset(args: argparse.Namespace, method: str) -> int:
    from ccmsec_proto import phone_sim_pb2

    selector = _selector(args)
    before = _call(args, "ListPhones", phone_sim_pb2.PhoneSelector(names=args.names) if args.names
                   else phone_sim_pb2.PhoneSelector()).phones
    started = {p.name: p.boots for p in before}
    reply = _call(args, method, selector)
    names = [p.name for p in reply.phones]
    print(f"{method.removesuffix('Phones').lower()}: {len(names)} phone(s)")
    if not args.wait or not names:
        return 0
    return _wait(args, names, started)


# --- commands ----------------------------------------------------------------------------------------

def cmd_add(args: argparse.Namespace) -> int:
    from ccmsec_proto import phone_sim_pb2

    if args.name and args.count != 1:
        raise CliError("--name makes one phone; leave out --count or use --name-prefix")
    reply = _call(args, "AddPhones", phone_sim_pb2.AddPhonesRequest(
        count=args.count, model=args.model, name_prefix=args.name or args.name_prefix), timeout=300)
    for p in reply.phones:
        print(f"{p.name}  {p.model}  MAC {p.mac}" + ("  MIC" if p.HasField("mic") else ""))
    _note_unknown_devices(args, list(reply.phones))
    return 0


def _note_unknown_devices(args: argparse.Namespace, phones: list) -> None:
    """A phone is only half the story: call control must know the device too (MODE-4). Say so,
    and how to add it, for each new phone call control does not know."""
    from ccmsec.adminclient import AdminClient, AdminClientError, discover

    try:
        with AdminClient(discover(data_dir(args))) as client:
            known = {d["name"] for d in client.list_devices()}
            mode = client.cluster().get("security_mode", "")
    except (AdminClientError, OSError, KeyError, TypeError) as exc:
        print(f"note: could not ask call control which devices it knows ({exc}); a phone must "
              "be added there too: `ccmsec device add NAME --model MODEL`", file=sys.stderr)
        return
    unknown = [p for p in phones if p.name not in known]
    if not unknown:
        return
    what = ("in mixed mode they cannot register (MODE-4: auto-registration is off)"
            if mode == "mixed" else
            "in this non-secure cluster they auto-register as non-secure devices; to choose "
            "their security mode, add them first")
    print(f"note: call control does not know {len(unknown)} of these phone(s) as devices; {what}. "
          "Add them with:", file=sys.stderr)
    from ccmsec.domain import ClusterMode, DeviceSecurityMode
    from ccmsec.policy.devices import model_supports

    for p in unknown[:20]:
        secure = mode == ClusterMode.MIXED.value and model_supports(
            p.model, DeviceSecurityMode.ENCRYPTED.value)  # DEV-3
        wanted = DeviceSecurityMode.ENCRYPTED if secure else DeviceSecurityMode.NON_SECURE
        print(f"  ccmsec device add {p.name} --model {p.model} --security {wanted.value}",
              file=sys.stderr)
    if len(unknown) > 20:
        print(f"  … and {len(unknown) - 20} more", file=sys.stderr)


def cmd_boot(args: argparse.Namespace) -> int:
    return _boot_or_reset(args, "BootPhones")


def cmd_reset(args: argparse.Namespace) -> int:
    return _boot_or_reset(args, "ResetPhones")


def cmd_list(args: argparse.Namespace) -> int:
    from ccmsec_proto import phone_sim_pb2

    phones = _call(args, "ListPhones", phone_sim_pb2.PhoneSelector()).phones
    if json_output(args):
        print_json([proto_json(p) for p in phones])
        return 0
    if not phones:
        print("no phones (add some with `ccmsec phones add --count N --model MODEL`)")
        return 0
    for p in phones:
        print(_row(p))
    print(f"{len(phones)} phone(s): {_summary(phones)}")
    return 0


def _cert_line(label: str, c) -> str:
    return f"  {label:5} {c.subject}  issuer {c.issuer}  serial {c.serial}  SHA-256 {c.fingerprint_sha256[:16]}…"


def cmd_show(args: argparse.Namespace) -> int:
    from ccmsec_proto import common_pb2, phone_sim_pb2

    p = _call(args, "GetPhone", phone_sim_pb2.PhoneName(name=args.name))
    if json_output(args):
        print_json(proto_json(p))
        return 0
    from ccmsec.domain import DeviceSecurityMode

    mode = DeviceSecurityMode.proto_text(p.security_mode) if p.security_mode else "-"
    print(f"{p.name}  model {p.model}  MAC {p.mac}")
    print(f"  state: {p.state}{' (booting)' if p.booting else ''}   boots: {p.boots}   image: {p.firmware}")
    print(f"  security mode (config): {mode}   transport: {p.transport or '-'}"
          f"   registered with: {p.registered_with or '-'}   presents: {p.certificate_in_use or '-'}")
    print(f"  web server: {p.web_address or 'off (connection refused)'}")
    if p.pc_port:
        print(f"  PC port: {p.pc_port}")
        print(f"  gratuitous ARP: {p.garp}")
    if p.tftp_server or p.capf_server or p.call_control:
        print(f"  servers (overrides): TFTP {p.tftp_server or '-'}   CAPF {p.capf_server or '-'}"
              f"   call control {' '.join(p.call_control) or '-'}")
    if p.settings:
        print("  settings in force: " + ", ".join(f"{k}={v}" for k, v in sorted(p.settings.items())))
    print("  files held: " + (", ".join(p.files) or "none"))
    print(f"  certificates:")
    print(_cert_line("MIC", p.mic) if p.HasField("mic") else "  MIC   none")
    print(_cert_line("LSC", p.lsc) if p.HasField("lsc") else "  LSC   none")
    if p.trust_list:
        print(f"  trust list (CTL SHA-256 {p.ctl_sha256[:16]}…):")
        for c in p.trust_list:
            print(f"    {common_pb2.CertificateRole.Name(c.role):13} {c.subject}  serial {c.serial}")
    else:
        print("  trust list: none (no CTL)")
    if p.last_failure:
        print(f"  last failure: {p.last_failure}: {p.last_failure_reason}")
    if p.history:
        print("  history:")
        for line in p.history[-12:]:
            print(f"    {line}")
    return 0


def cmd_factory_reset(args: argparse.Namespace) -> int:
    from ccmsec_proto import phone_sim_pb2

    reply = _call(args, "FactoryReset", phone_sim_pb2.PhoneSelector(names=args.names))
    for p in reply.phones:
        print(f"{p.name}: factory reset (CTL and LSC cleared; MIC {'kept' if p.HasField('mic') else 'none'})")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """DEV-4: what a user sees pressing Settings — or that the menu is locked."""
    from ccmsec_proto import phone_sim_pb2

    menu = _call(args, "OpenSettings", phone_sim_pb2.PhoneName(name=args.name))
    width = max((len(e.label) for e in menu.entries), default=0)
    print(f"{menu.name} settings")
    for entry in menu.entries:
        print(f"  {entry.label.ljust(width)}  {entry.value}")
    return 0


def cmd_set_auth_string(args: argparse.Namespace) -> int:
    from ccmsec_proto import phone_sim_pb2

    p = _call(args, "SetAuthString", phone_sim_pb2.SetAuthStringRequest(name=args.name, auth_string=args.digits))
    print(f"{p.name}: CAPF authentication string set")
    return 0


def cmd_set_servers(args: argparse.Namespace) -> int:
    from ccmsec_proto import phone_sim_pb2

    if not (args.tftp or args.capf or args.call_control or args.clear):
        raise CliError("give --tftp, --capf or --call-control (or --clear)")
    reply = _call(args, "SetServers", phone_sim_pb2.SetServersRequest(
        phones=_selector(args), tftp=args.tftp, capf=args.capf, call_control=args.call_control, clear=args.clear))
    for p in reply.phones:
        print(f"{p.name}: TFTP {p.tftp_server or 'cluster'}, CAPF {p.capf_server or 'from its configuration'}, "
              f"call control {' '.join(p.call_control) or 'from its configuration'} (from its next boot)")
    return 0


# --- `ccmsec demo` step (the lead adds it to ccmsec.demo.STEPS) -------------------------------------

async def demo_step_phones(ctx) -> None:
    """Two non-secure 7960s are manufactured, boot through TFTP and register with call control."""
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import phone_sim_pb2, phone_sim_pb2_grpc

    svc = ctx.endpoints["services"][ROLE]
    async with secure_channel(client_identity(ctx.data), svc["host"], svc["grpc_port"], ROLE) as ch:
        stub = phone_sim_pb2_grpc.PhoneSimStub(ch)
        added = await stub.AddPhones(phone_sim_pb2.AddPhonesRequest(count=2, model="7960",
                                                                    name_prefix="SEP0DE70"), timeout=60)
        names = [p.name for p in added.phones]
        ctx.say(f"manufactured {', '.join(names)} (7960: no MIC, LSC-capable)")
        await stub.BootPhones(phone_sim_pb2.PhoneSelector(names=names), timeout=10)
        deadline = time.monotonic() + 60
        while True:
            phones = (await stub.ListPhones(phone_sim_pb2.PhoneSelector(names=names), timeout=10)).phones
            if all(p.boots and p.state in SETTLED and not p.booting for p in phones):
                break
            if time.monotonic() > deadline:
                raise CliError("phones did not settle within 60 s: " + _summary(phones))
            await asyncio.sleep(0.3)
    for p in phones:
        ctx.say(_row(p) + (f" ({p.last_failure_reason})" if p.last_failure else ""))
        ctx.say(f"  files: {', '.join(p.files) or 'none'}; image {p.firmware}")


# --- calls ------------------------------------------------------------------------------------------

def _print_calls(reply) -> None:
    where = f" via {reply.registered_with} ({reply.transport})" if reply.registered_with else " not registered"
    lines = ", ".join(f"{li.instance}: {li.number}" + (f" {li.label}" if li.label else "") for li in reply.lines)
    print(f"{reply.name}{where}; lines: {lines or '-' if reply.ready else 'not shown yet'}")
    for c in reply.calls:
        extra = "".join(f"  {k} {v}" for k, v in (("tone", c.tone), ("prompt", c.prompt)) if v)
        print(f"  call {c.reference} line {c.line}: {c.state:16} {c.calling or '?'} -> {c.called or '?'}  "
              f"[{c.icon}]{'  RINGING' if c.ringing else ''}{extra}")
        print(f"      softkeys: {', '.join(c.softkeys) or '-'}")
    if not reply.calls:
        print("  no calls")
    m = reply.media
    print(f"  audio: {m.streams} stream(s) open, SRTP both ways: {'yes' if m.srtp_both_ways else 'no'}; "
          f"sent {m.sent}, received {m.received}, lost {m.lost}, refused {m.refused_authentication} "
          f"(authentication) + {m.refused_replay} (replay), malformed {m.malformed}")
    for note in reply.notifications:
        print(f"  notice: {note}")
    for ended in reply.ended:
        print(f"  ended: {ended}")


def cmd_call_action(args: argparse.Namespace) -> int:
    from ccmsec_proto import phone_sim_pb2

    if args.call < 0 or args.line < 0 or not 0 <= args.wait <= 10:
        raise CliError("--call and --line must not be negative, --wait is 0..10 seconds")
    reply = _call(args, "PhoneAction", phone_sim_pb2.PhoneActionRequest(
        name=args.name, action=args.action_name, number=getattr(args, "number", ""),
        call_reference=args.call, line=args.line, wait_seconds=args.wait or 0.01), timeout=30)
    _print_calls(reply)
    return 0


def cmd_mobility(args: argparse.Namespace) -> int:
    """Extension mobility as a user does it: at the phone. The phone sends the login (user id and
    PIN) or logout to call control over its own registered connection; call control answers on
    the display and restarts the phone."""
    from ccmsec.cli.common import read_password
    from ccmsec_proto import phone_sim_pb2

    pin = read_password(args, prompt="PIN: ") if args.action_name == "login" else ""
    reply = _call(args, "PhoneAction", phone_sim_pb2.PhoneActionRequest(
        name=args.name, action=args.action_name, number=args.user, pin=pin, wait_seconds=10), timeout=30)
    answer = next((n for n in reversed(reply.notifications) if n.startswith("Extension mobility")), "")
    if not answer:
        raise CliError(f"{args.name}: call control did not answer the {args.action_name} within 10 s")
    if "refused:" in answer:
        raise CliError(f"{args.name}: {answer}")
    print(f"{args.name}: {answer}; the phone restarts and registers again "
          f"(`ccmsec phones calls {args.name}` shows its lines)")
    return 0


def cmd_calls(args: argparse.Namespace) -> int:
    from ccmsec_proto import phone_sim_pb2

    reply = _call(args, "GetPhoneCalls", phone_sim_pb2.PhoneName(name=args.name))
    if json_output(args):
        print_json(proto_json(reply))
    else:
        _print_calls(reply)
    return 0
