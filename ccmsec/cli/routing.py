"""`ccmsec routing speed-dial|forward|region|assign|softkeys`: speed dials, call forward busy / no
answer, codec regions (CALL-9) and softkey sets — through callmanager's one write path, audited.
Routing changes apply to the next call at once (call control follows `config.changed`); a softkey
set is part of what the phone's display is built with, so it applies when the phone registers
next (`ccmsec device reset NAME --restart` to apply it now)."""

from __future__ import annotations

import argparse

from ccmsec.cli.common import CliError, add_data_option
from ccmsec.cli.device import _connection_options, _grpc_call, _run

NOTE = "applies to the next call"
PENDING_NOTE = ("pending delivery: saved, and applies to the next call on this node; the event bus is "
                "unreachable, and the other call-control nodes get it as soon as it is back")
SOFTKEY_NOTE = "applies when the phone registers next (`ccmsec device reset NAME --restart` to apply it now)"


def register(subparsers) -> None:
    parser = subparsers.add_parser("routing", help="speed dials, call forward, codec regions (CALL-9)")
    sub = parser.add_subparsers(dest="routing_command", metavar="ACTION")
    sub.required = True
    sd = sub.add_parser("speed-dial", help="set (or, without NUMBER, remove) a phone's speed dial")
    add_data_option(sd)
    sd.add_argument("device")
    sd.add_argument("index", type=int, help="button 1..42")
    sd.add_argument("number", nargs="?", default="")
    sd.add_argument("--label", default="")
    sd.set_defaults(func=_speed_dial)
    fw = sub.add_parser("forward", help="call forward busy / no answer of a directory number "
                                        "(neither option: remove both)")
    add_data_option(fw)
    fw.add_argument("dn")
    fw.add_argument("--busy", default="", metavar="NUMBER")
    fw.add_argument("--no-answer", default="", metavar="NUMBER")
    fw.set_defaults(func=_forward)
    rg = sub.add_parser("region", help="create or change a codec region (CALL-9)")
    add_data_option(rg)
    rg.add_argument("name")
    wide = rg.add_mutually_exclusive_group(required=True)
    wide.add_argument("--wideband", dest="wideband", action="store_true",
                      help="the wideband codec may be used between its phones")
    wide.add_argument("--no-wideband", dest="wideband", action="store_false")
    rg.set_defaults(func=_region)
    assign = sub.add_parser("assign", help="put a phone in a region (no REGION: none)")
    add_data_option(assign)
    assign.add_argument("device")
    assign.add_argument("region", nargs="?", default="")
    assign.set_defaults(func=_assign)
    sk = sub.add_parser("softkeys", parents=[_connection_options()],
                        help="the softkey set of a phone or a device pool (HTTPS admin API; "
                             "no SET: remove the assignment; --list: the sets)")
    target = sk.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", default="", metavar="NAME")
    target.add_argument("--pool", default="", metavar="POOL")
    target.add_argument("--list", action="store_true", help="list the softkey sets and their keys")
    sk.add_argument("softkey_set", nargs="?", default="", metavar="SET")
    sk.set_defaults(func=_softkeys)


def _note(out) -> str:
    """Issue 9 §4: a change whose config.changed is not acknowledged yet is not reported done."""
    return PENDING_NOTE if out.delivery_pending else NOTE


def _speed_dial(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    if not 1 <= args.index <= 42:
        raise CliError("the speed dial index is 1..42")
    out = _grpc_call(args, lambda stub: stub.SetSpeedDial(pb.SpeedDialSetting(
        device=args.device, index=args.index, number=args.number, label=args.label), timeout=10))
    what = f"= {out.number}" + (f" ({out.label})" if out.label else "") if out.number else "removed"
    print(f"{out.device}: speed dial {out.index} {what}; {_note(out)}")
    return 0


def _forward(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    out = _grpc_call(args, lambda stub: stub.SetLineForward(pb.LineForwardSetting(
        dn=args.dn, busy=args.busy, no_answer=args.no_answer), timeout=10))
    print(f"{out.dn}: forward busy {out.busy or '-'}, no answer {out.no_answer or '-'} "
          f"(on {', '.join(out.devices)}); {_note(out)}")
    return 0


def _region(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    out = _grpc_call(args, lambda stub: stub.SetRegion(pb.RegionSetting(name=args.name, wideband=args.wideband),
                                                       timeout=10))
    print(f"region {out.name}: wideband codec {'allowed' if out.wideband else 'not used'} "
          f"({len(out.devices)} phone(s)); {_note(out)}")
    return 0


def _assign(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    out = _grpc_call(args, lambda stub: stub.SetDeviceRegion(pb.DeviceRegionSetting(
        device=args.device, region=args.region), timeout=10))
    print(f"{out.device}: region {out.region or 'none'}; {_note(out)}")
    return 0


def _softkeys(args: argparse.Namespace) -> int:
    if args.list:
        for row in _run(args, lambda client: client.softkey_sets()):
            print(f"{row['name']:10} {' '.join(row['softkeys'])}")
        return 0
    out = _run(args, lambda client: client.set_softkeys(args.softkey_set, device=args.device, pool=args.pool))
    target = f"device {out['device']}" if out.get("device") else f"pool {out['pool']}"
    print(f"{target}: softkey set {out['softkey_set'] or 'none (its pool, else standard)'} "
          f"({len(out['devices'])} phone(s)); {SOFTKEY_NOTE}")
    return 0
