"""`ccmsec tls show | legacy on|off`: the cluster's TLS settings for the phone listeners (LATER-8).

The CTL Provider owns the setting; callmanager (SCCP 2443) and capf (CAPF 3804) read it when
they start, so a change restarts them — this command waits until they serve again.
"""

from __future__ import annotations

import argparse
import sys

from ccmsec.cli.common import (
    add_data_option, add_json_option, add_wait_option, json_output, print_json,
    service_pids_before_change, wait_for_restarts,
)

RISK = ("legacy TLS lets phones of the source's era in with TLS 1.0 (AES128-SHA, NULL-SHA). "
        "TLS 1.0 has known weaknesses (CBC with predictable IVs, MD5/SHA-1 in its handshake); an "
        "attacker on the path may be able to recover or tamper with signalling that later TLS "
        "versions would protect. Enable it only while such phones remain, and turn it off after.")


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("tls", help="TLS of the phone listeners: legacy TLS 1.0 (LATER-8)")
    add_data_option(group)
    actions = group.add_subparsers(dest="tls_command", metavar="ACTION")
    actions.required = True
    show = actions.add_parser("show", help="the cluster's TLS settings")
    add_data_option(show)
    add_json_option(show)
    show.set_defaults(func=cmd_show)
    legacy = actions.add_parser(
        "legacy", help="allow TLS 1.0 on SCCP 2443 and CAPF 3804 (restarts callmanager and capf)",
        description=RISK)
    add_data_option(legacy)
    legacy.add_argument("state", choices=("on", "off"))
    add_wait_option(legacy)
    legacy.set_defaults(func=cmd_legacy)


def cmd_show(args: argparse.Namespace) -> int:
    from ccmsec.cli.ctl import _call_provider
    from ccmsec_proto import common_pb2

    reply = _call_provider(args, "GetClusterTls", common_pb2.Empty())
    if json_output(args):
        print_json({"legacy_tls": reply.legacy_tls})
        return 0
    print(f"legacy TLS (TLS 1.0 on 2443 and 3804): {'on' if reply.legacy_tls else 'off'}")
    return 0


def cmd_legacy(args: argparse.Namespace) -> int:
    from ccmsec.cli.ctl import _call_provider
    from ccmsec_proto import ctl_provider_pb2

    enable = args.state == "on"
    before = service_pids_before_change(args)
    reply = _call_provider(args, "SetClusterTls", ctl_provider_pb2.ClusterTlsSettings(legacy_tls=enable))
    if not reply.events:
        print(f"legacy TLS already {args.state}; nothing changed")
        return 0
    print(f"legacy TLS {args.state}: SCCP 2443 and CAPF 3804 "
          + ("also accept TLS 1.0 (AES128-SHA, NULL-SHA)" if enable else "accept TLS 1.2 only"))
    if enable:
        print(f"warning: {RISK}", file=sys.stderr)
    for event in reply.events:
        print(f"  event: {event}")
    if reply.delivery_pending:  # committed; its restarts wait for NATS (issue 9 §4)
        print("pending delivery: the setting is saved and its restarts are queued; the event bus "
              "is unreachable, and they are sent as soon as it is back")
        return 0
    wait_for_restarts(args, before, reply.events)
    return 0
