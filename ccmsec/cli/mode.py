"""`ccmsec mode show|set`: the cluster security mode (MODE-1..3, MODE-5).

`set` goes through the CTL Provider with the CTL client's rules: mixed needs a CTL (MODE-5), the
MODE-6 registry must agree, and the change emits the RST-3 events. To publish a new CTL and switch
in one go, use `ccmsec ctl update --mode mixed`.
"""

from __future__ import annotations

import argparse

from ccmsec.cli.common import (
    add_data_option, add_json_option, add_wait_option, json_output, print_json,
    service_pids_before_change, wait_for_restarts,
)
from ccmsec.cli.ctl import _call_provider
from ccmsec.domain import ClusterMode

_name = ClusterMode.proto_text


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("mode", help="cluster security mode (non-secure | mixed)")
    add_data_option(group)
    actions = group.add_subparsers(dest="mode_command", metavar="ACTION")
    actions.required = True
    show = actions.add_parser("show", help="the cluster security mode and the current CTL")
    add_data_option(show)
    add_json_option(show)
    show.set_defaults(func=cmd_show)
    set_ = actions.add_parser("set", help="switch the cluster security mode (RST-3)")
    add_data_option(set_)
    set_.add_argument("mode", choices=ClusterMode.choices())
    add_wait_option(set_)
    set_.set_defaults(func=cmd_set)


def cmd_show(args: argparse.Namespace) -> int:
    from ccmsec_proto import common_pb2

    reply = _call_provider(args, "GetSecurityMode", common_pb2.Empty())
    if json_output(args):
        print_json({"security_mode": _name(reply.mode), "ctl_present": reply.ctl_present,
                    "ctl_version": reply.ctl_version if reply.ctl_present else None})
        return 0
    print(f"cluster security mode: {_name(reply.mode)}")
    print(f"CTL: {'version ' + str(reply.ctl_version) if reply.ctl_present else 'none (MODE-5)'}")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from ccmsec_proto import ctl_provider_pb2

    mode = ClusterMode.parse(args.mode).to_proto()
    before = service_pids_before_change(args)
    reply = _call_provider(args, "SetSecurityMode", ctl_provider_pb2.SecurityModeRequest(mode=mode))
    if reply.mode == reply.previous:
        print(f"cluster security mode already {_name(reply.mode)}; nothing changed")
        return 0
    print(f"cluster security mode: {_name(reply.previous)} -> {_name(reply.mode)}")
    for event in reply.events:
        print(f"  event: {event}")
    if reply.delivery_pending:  # committed; its events wait for NATS (issue 9 §4)
        print("pending delivery: the mode is saved and its resets are queued; the event bus is "
              "unreachable, and they are sent as soon as it is back")
        return 0
    wait_for_restarts(args, before, reply.events)
    return 0
