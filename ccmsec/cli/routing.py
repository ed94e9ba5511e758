"""`ccmsec routing speed-dial|forward|region|assign`: speed dials, call forward busy / no answer and
codec regions (CALL-9) — what call control gives a phone when it registers (gRPC to callmanager,
through its one write path, audited). A change applies at the phone's next registration;
`ccmsec device reset NAME` applies it now."""

from __future__ import annotations

import argparse

from ccmsec.cli.common import CliError, add_data_option
from ccmsec.cli.device import _grpc_call

NOTE = "applies when the phone registers next (`ccmsec device reset NAME` to apply it now)"


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


def _speed_dial(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    if not 1 <= args.index <= 42:
        raise CliError("the speed dial index is 1..42")
    out = _grpc_call(args, lambda stub: stub.SetSpeedDial(pb.SpeedDialSetting(
        device=args.device, index=args.index, number=args.number, label=args.label), timeout=10))
    what = f"= {out.number}" + (f" ({out.label})" if out.label else "") if out.number else "removed"
    print(f"{out.device}: speed dial {out.index} {what}; {NOTE}")
    return 0


def _forward(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    out = _grpc_call(args, lambda stub: stub.SetLineForward(pb.LineForwardSetting(
        dn=args.dn, busy=args.busy, no_answer=args.no_answer), timeout=10))
    print(f"{out.dn}: forward busy {out.busy or '-'}, no answer {out.no_answer or '-'} "
          f"(on {', '.join(out.devices)}); {NOTE}")
    return 0


def _region(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    out = _grpc_call(args, lambda stub: stub.SetRegion(pb.RegionSetting(name=args.name, wideband=args.wideband),
                                                       timeout=10))
    print(f"region {out.name}: wideband codec {'allowed' if out.wideband else 'not used'} "
          f"({len(out.devices)} phone(s)); {NOTE}")
    return 0


def _assign(args: argparse.Namespace) -> int:
    from ccmsec_proto import callmanager_pb2 as pb

    out = _grpc_call(args, lambda stub: stub.SetDeviceRegion(pb.DeviceRegionSetting(
        device=args.device, region=args.region), timeout=10))
    print(f"{out.device}: region {out.region or 'none'}; {NOTE}")
    return 0
