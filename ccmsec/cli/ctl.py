"""`ccmsec ctl ...`: certificate trust lists.

The group is built from `SUBCOMMANDS`: each entry is a function `(actions) -> None` that adds one
subcommand to the `ctl` group. Add `ctl update` by appending its registrar here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from ccmsec.cli.common import (
    CliError, add_data_option, add_json_option, add_wait_option, json_output, print_json, proto_json,
    int_in, seconds, service_pids_before_change, wait_for_restarts,
)
from ccmsec.domain import ClusterMode
from ccmsec.formats.ctl import (
    CtlFormatError, SignatureError, ctl_dict, format_ctl, parse_ctl, verify_ctl,
)
from ccmsec.textsafe import shown


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("ctl", help="certificate trust lists (CTLFile.tlv)")
    add_data_option(group)
    actions = group.add_subparsers(dest="ctl_command", metavar="ACTION")
    actions.required = True
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(actions)


def add_show(actions: argparse._SubParsersAction) -> None:
    show = actions.add_parser("show", help="print a CTL file and verify its signature")
    add_data_option(show)
    show.add_argument("file", type=Path, metavar="FILE", help="a CTLFile.tlv")
    show.add_argument("--no-verify", action="store_true",
                      help="only list the contents, do not check the signature")
    add_json_option(show)
    show.set_defaults(func=cmd_show)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_show]


def cmd_show(args: argparse.Namespace) -> int:
    from ccmsec.formats.ctl import MAX_CTL_SIZE

    try:
        with open(args.file, "rb") as fh:  # bounded: a device or a huge file is not a trust list
            data = fh.read(MAX_CTL_SIZE + 1)
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    if len(data) > MAX_CTL_SIZE:
        raise CliError(f"{args.file}: not a valid CTL file: over {MAX_CTL_SIZE} bytes; trust lists "
                       f"must stay under {MAX_CTL_SIZE} bytes")
    try:
        ctl_file = parse_ctl(data)
    except CtlFormatError as exc:
        raise CliError(f"{args.file}: not a valid CTL file: {exc}") from None
    if json_output(args):
        return _show_json(args, ctl_file)
    sys.stdout.write(format_ctl(ctl_file))
    if args.no_verify:
        print("\nSignature:         not checked")
        return 0
    try:
        signer = verify_ctl(ctl_file)
    except SignatureError as exc:
        sys.stdout.flush()
        raise CliError(f"{args.file}: signature verification FAILED: {exc}") from None
    print(f"\nSignature:         valid (signed by token {signer.subject})")
    return 0


def _show_json(args: argparse.Namespace, ctl_file) -> int:
    listing = ctl_dict(ctl_file)
    if args.no_verify:
        listing["signature"] = {"checked": False}
    else:
        try:
            signer = verify_ctl(ctl_file)
        except SignatureError as exc:
            raise CliError(f"{args.file}: signature verification FAILED: {exc}",
                           details={"ctl": listing}) from None
        listing["signature"] = {"checked": True, "valid": True, "signer": signer.subject}
    print_json(listing)
    return 0


# --- `ctl update` (the CTL client), `ctl provider ...`, `ctl tftp-clusters ...` --------------------
def _grpc_target(args: argparse.Namespace, role: str):
    from ccmsec.cluster.state import read_endpoints
    from ccmsec.cli.common import data_dir

    endpoints = read_endpoints(data_dir(args))
    if not endpoints or role not in endpoints.get("services", {}):
        raise CliError(f"no running cluster in {data_dir(args)} (start it with `ccmsec up -d`)")
    return endpoints["services"][role]


def _call_provider(args: argparse.Namespace, method: str, request):
    """One CtlProvider RPC from the command line; gRPC errors become one-line CliErrors."""
    import asyncio

    import grpc

    from ccmsec.cli.common import data_dir
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import ctl_provider_pb2_grpc

    svc = _grpc_target(args, "ctl-provider")

    async def call():
        ident = client_identity(data_dir(args))
        async with secure_channel(ident, svc["host"], svc["grpc_port"], "ctl-provider") as ch:
            return await getattr(ctl_provider_pb2_grpc.CtlProviderStub(ch), method)(request, timeout=30)

    try:
        return asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        details = {"grpc_status": exc.code().name}
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CliError(f"the ctl-provider service is not reachable: {exc.details()}",
                           details=details) from None
        raise CliError(exc.details() or exc.code().name, details=details) from None


def add_update(actions: argparse._SubParsersAction) -> None:
    update = actions.add_parser(
        "update", help="the CTL client: build, sign and publish CTLFile.tlv (CHK-6)",
        description="Collect the servers' certificates from the CTL Provider (TLS 2444), build "
                    "CTLFile.tlv with one record per token and per server, sign it with one "
                    "token, publish it through the TFTP service and set the cluster mode.")
    add_data_option(update)
    update.add_argument("--token", action="append", required=True, dest="tokens", metavar="NAME",
                        help="a security token to list (give at least two: CTL-1)")
    update.add_argument("--sign-with", metavar="NAME", help="the token that signs (default: the first)")
    update.add_argument("--mode", choices=ClusterMode.choices(),
                        help="set the cluster security mode (default: leave it as it is)")
    update.add_argument("--password-file", type=Path, metavar="FILE",
                        help="signing token's password (one line), or one line per --token in order; "
                             "- = standard input")
    update.add_argument("--new-trust", action="store_true",
                        help="allow a signing token that is not in the current CTL (CTL-2)")
    update.add_argument("--digest", choices=("sha1", "sha256", "sha512"), default="sha1",
                        help="signature digest (default sha1, what the phones of the period read)")
    update.add_argument("--provider", metavar="HOST:PORT",
                        help="CTL Provider TLS address (default: the cluster's, port from its settings)")
    update.add_argument("--token-dir", type=Path, help="token directory (default: DATA/tokens)")
    update.add_argument("--output", "-o", type=Path, help="also write the CTL to this file")
    update.add_argument("--quiet", "-q", action="store_true", help="do not print the trust list")
    update.add_argument("--timeout", type=seconds, default=5.0, help="network timeout in seconds")
    add_wait_option(update)
    update.set_defaults(func=cmd_update)


def _provider_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CliError(f"--provider '{shown(text)}': expected HOST:PORT")
    return host, int(port)


def cmd_update(args: argparse.Namespace) -> int:
    import asyncio

    from ccmsec.cli.common import data_dir, read_password
    from ccmsec.ctlclient import CtlClientError, UpdateOptions, check_tokens, read_password_file, run_update
    from ccmsec.formats.ctl import Digest
    from ccmsec.fsutil import atomic_write

    options = UpdateOptions(
        tokens=args.tokens, sign_with=args.sign_with, mode=args.mode, new_trust=args.new_trust,
        digest={"sha1": Digest.SHA1, "sha256": Digest.SHA256, "sha512": Digest.SHA512}[args.digest],
        provider=_provider_address(args.provider) if args.provider else None,
        token_dir=args.token_dir, timeout=args.timeout)
    try:
        signer = check_tokens(options.tokens, options.sign_with)
        if args.password_file:
            password = read_password_file(args.password_file, options.tokens, signer)
        else:
            def password() -> str:
                return read_password(argparse.Namespace(), f"Password of token {signer}: ")
        before = service_pids_before_change(args)
        result = asyncio.run(run_update(data_dir(args), options, password))
    except CtlClientError as exc:
        raise CliError(str(exc)) from None
    if args.output:
        try:
            atomic_write(args.output, result.ctl)
        except OSError as exc:  # the CTL is committed already; only the local copy failed
            raise CliError(f"CTL committed, but writing {args.output} failed: "
                           f"{exc.strerror or exc}") from None
    if not args.quiet:
        sys.stdout.write(format_ctl(parse_ctl(result.ctl)))
        print()
    print(f"CTL version {result.version} published to {result.published_path or 'TFTP'} "
          f"(sha256 {result.sha256}), signed by token {signer}")
    print(f"cluster security mode: {result.mode}"
          + (f" (was {result.previous_mode})" if result.mode != result.previous_mode else " (unchanged)"))
    for event in result.events:
        print(f"  event: {event}")
    if result.delivery_pending:  # committed; its events wait for NATS (issue 9 §4)
        print("pending delivery: the CTL and mode are saved and their resets are queued; the event "
              "bus is unreachable, and they are sent as soon as it is back")
        return 0
    wait_for_restarts(args, before, result.events)
    return 0


def add_provider(actions: argparse._SubParsersAction) -> None:
    provider = actions.add_parser("provider", help="the CTL Provider service (CHK-1, CHK-3)")
    add_data_option(provider)
    sub = provider.add_subparsers(dest="provider_command", metavar="ACTION")
    sub.required = True
    activate = sub.add_parser("activate", help="activate the CTL Provider (CHK-1)")
    add_data_option(activate)
    activate.add_argument("--off", action="store_true", help="deactivate it instead")
    activate.set_defaults(func=cmd_provider_activate)
    show = sub.add_parser("show", help="activation and TLS port")
    add_data_option(show)
    add_json_option(show)
    show.set_defaults(func=cmd_provider_show)
    port = sub.add_parser("port", help="set the TLS port (needs a CTL Provider restart: RST-7)")
    add_data_option(port)
    port.add_argument("port", type=int_in(1, 65535), metavar="PORT")
    add_wait_option(port)
    port.set_defaults(func=cmd_provider_port)
    alias = actions.add_parser("provider-port", help="same as `ctl provider port PORT` (RST-7)")
    add_data_option(alias)
    alias.add_argument("port", type=int_in(1, 65535), metavar="PORT")
    add_wait_option(alias)
    alias.set_defaults(func=cmd_provider_port)
    certs = sub.add_parser("certificates", help="the server certificates the provider would answer")
    add_data_option(certs)
    add_json_option(certs)
    certs.set_defaults(func=cmd_provider_certificates)


def cmd_provider_activate(args: argparse.Namespace) -> int:
    from ccmsec_proto import ctl_provider_pb2

    status = _call_provider(args, "Activate", ctl_provider_pb2.ActivateRequest(active=not args.off))
    print(f"CTL Provider on {status.node}: {'activated' if status.activated else 'deactivated'}")
    return 0


def cmd_provider_show(args: argparse.Namespace) -> int:
    from ccmsec_proto import common_pb2

    st = _call_provider(args, "GetProviderSettings", common_pb2.Empty())
    if json_output(args):
        print_json(proto_json(st))
        return 0
    print(f"activated:      {'yes' if st.activated else 'no (CHK-1)'}")
    print(f"listening on:   {st.host}:{st.listening_port}")
    print(f"configured port: {st.configured_port}"
          + ("" if st.configured_port == st.listening_port else "  (restart pending: RST-7)"))
    return 0


def cmd_provider_port(args: argparse.Namespace) -> int:
    from ccmsec_proto import ctl_provider_pb2

    before = service_pids_before_change(args)
    reply = _call_provider(args, "SetProviderPort", ctl_provider_pb2.SetProviderPortRequest(port=args.port))
    print(f"CTL Provider TLS port set to {reply.port} (listening on {reply.listening_port})")
    for event in reply.events:
        print(f"  event: {event}")
    if not reply.events:
        print("  unchanged; nothing to restart")
    if reply.delivery_pending:  # committed; its restart waits for NATS (issue 9 §4)
        print("pending delivery: the port is saved and its restart is queued; the event bus is "
              "unreachable, and it is sent as soon as it is back")
        return 0
    wait_for_restarts(args, before, reply.events)
    return 0


def cmd_provider_certificates(args: argparse.Namespace) -> int:
    from ccmsec.formats.ctl import Role
    from ccmsec_proto import common_pb2

    reply = _call_provider(args, "GetServerCertificates", common_pb2.Empty())
    if json_output(args):
        print_json(proto_json(reply))
        return 0
    for cert in reply.certificates:
        print(f"{Role(cert.role).label:<6} {cert.dns_name:<14} {cert.ipv4:<15} {cert.subject}  "
              f"sha256={cert.fingerprint_sha256[:16]}…")
    return 0


def add_tftp_clusters(actions: argparse._SubParsersAction) -> None:
    group = actions.add_parser("tftp-clusters", help="clusters sharing the TFTP server (MODE-6)")
    add_data_option(group)
    sub = group.add_subparsers(dest="tftp_clusters_command", metavar="ACTION")
    sub.required = True
    listing = sub.add_parser("list", help="the registry")
    add_data_option(listing)
    add_json_option(listing)
    listing.set_defaults(func=cmd_tftp_clusters_list)
    add = sub.add_parser("add", help="register another cluster using the same TFTP server")
    add_data_option(add)
    add.add_argument("cluster_id", metavar="ID")
    add.add_argument("--path", required=True, help="its TFTP path")
    add.add_argument("--alternate", default="", help="its alternate TFTP path")
    add.add_argument("--mode", required=True, choices=ClusterMode.choices())
    add.set_defaults(func=cmd_tftp_clusters_add)
    remove = sub.add_parser("remove", help="forget a cluster")
    add_data_option(remove)
    remove.add_argument("cluster_id", metavar="ID")
    remove.set_defaults(func=cmd_tftp_clusters_remove)


def _print_clusters(reply) -> None:
    print(f"{'CLUSTER':<16} {'TFTP PATH':<16} {'ALTERNATE':<16} MODE")
    for c in reply.clusters:
        mark = " (this cluster)" if c.cluster_id == reply.local_cluster_id else ""
        print(f"{c.cluster_id:<16} {c.tftp_path:<16} {c.alternate_path or '-':<16} "
              f"{ClusterMode.proto_text(c.mode)}{mark}")


def cmd_tftp_clusters_list(args: argparse.Namespace) -> int:
    from ccmsec_proto import common_pb2

    reply = _call_provider(args, "ListTftpClusters", common_pb2.Empty())
    if json_output(args):
        print_json(proto_json(reply))
        return 0
    _print_clusters(reply)
    return 0


def cmd_tftp_clusters_add(args: argparse.Namespace) -> int:
    from ccmsec_proto import ctl_provider_pb2

    mode = ClusterMode.parse(args.mode).to_proto()
    _print_clusters(_call_provider(args, "RegisterTftpCluster", ctl_provider_pb2.TftpCluster(
        cluster_id=args.cluster_id, tftp_path=args.path, alternate_path=args.alternate, mode=mode)))
    return 0


def cmd_tftp_clusters_remove(args: argparse.Namespace) -> int:
    from ccmsec_proto import ctl_provider_pb2

    _print_clusters(_call_provider(args, "RemoveTftpCluster",
                                   ctl_provider_pb2.RemoveTftpClusterRequest(cluster_id=args.cluster_id)))
    return 0


SUBCOMMANDS += [add_update, add_provider, add_tftp_clusters]
