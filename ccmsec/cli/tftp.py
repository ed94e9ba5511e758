"""`ccmsec tftp ...`: the cluster's signing TFTP server.

    ccmsec tftp ls [--devices] [--path P] [--json]   what the server serves (and what it signs)
    ccmsec tftp get NAME [-o FILE] [--blksize N]       a real TFTP download (RFC 1350 + options)
    ccmsec tftp resign [DEVICE...|--all]              sign device configs again now
    ccmsec tftp cert [-o FILE]                        the TFTP signing certificate (CERT-5), DER
    ccmsec tftp clusters [--add NAME --path P [--alternate A]]   clusters sharing the server (MODE-6)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from ccmsec.cli.common import (
    EXIT_USAGE, CliError, add_data_option, add_json_option, data_dir, json_output, print_json,
    proto_json, seconds,
)
from ccmsec.domain import ClusterMode
from ccmsec.textsafe import shown

ROLE = "tftp-signer"


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("tftp", help="the signing TFTP server: list, download, re-sign")
    add_data_option(group)
    actions = group.add_subparsers(dest="tftp_command", metavar="ACTION")
    actions.required = True

    ls = actions.add_parser("ls", help="list served files (signed = also served as NAME.sgn)")
    add_data_option(ls)
    ls.add_argument("--devices", action="store_true", help="include one SEP<MAC>.cnf.xml per device")
    ls.add_argument("--path", default="", help="another cluster's TFTP path (MODE-6 shared server)")
    add_json_option(ls)
    ls.set_defaults(func=cmd_ls)

    get = actions.add_parser("get", help="download a file over TFTP, as a phone does")
    add_data_option(get)
    get.add_argument("name", metavar="NAME", help="e.g. SEP001122334455.cnf.xml.sgn or CTLFile.tlv")
    get.add_argument("-o", "--output", type=Path, help="write here (default: standard output)")
    get.add_argument("--blksize", type=int, help="ask for this block size (RFC 2348)")
    get.add_argument("--timeout", type=seconds, default=2.0, help="seconds per retransmission")
    get.set_defaults(func=cmd_get)

    resign = actions.add_parser("resign", help="sign device configurations again now (mixed mode)")
    add_data_option(resign)
    resign.add_argument("devices", nargs="*", metavar="DEVICE")
    resign.add_argument("--all", action="store_true", help="every device config and static file")
    resign.set_defaults(func=cmd_resign)

    cert = actions.add_parser("cert", help="the TFTP signing certificate (CERT-5)")
    add_data_option(cert)
    cert.add_argument("-o", "--output", type=Path, help="write the DER certificate here")
    add_json_option(cert)
    cert.set_defaults(func=cmd_cert)

    clusters = actions.add_parser("clusters", help="clusters sharing this TFTP server (MODE-6)")
    add_data_option(clusters)
    clusters.add_argument("--add", metavar="NAME", help="register another cluster")
    clusters.add_argument("--path", help="its TFTP path")
    clusters.add_argument("--alternate", default="", help="its alternate TFTP path")
    clusters.add_argument("--mode", choices=ClusterMode.choices(), default=ClusterMode.NON_SECURE.value,
                          help="its security mode (must equal this cluster's)")
    add_json_option(clusters)
    clusters.set_defaults(func=cmd_clusters)


def _endpoint(args) -> tuple[Path, dict]:
    from ccmsec.cluster.state import read_endpoints

    data = data_dir(args)
    endpoints = read_endpoints(data)
    if not endpoints or ROLE not in endpoints.get("services", {}):
        raise CliError(f"no running cluster found in {data} (start it with `ccmsec up --data {data}`)")
    return data, endpoints["services"][ROLE]


def _call(args, method: str, request):
    """One unary call to the tftp-signer over mutual TLS; errors become one CLI line."""
    import grpc

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import tftp_signer_pb2_grpc

    data, svc = _endpoint(args)

    async def run():
        async with secure_channel(client_identity(data), svc["host"], svc["grpc_port"], ROLE) as channel:
            stub = tftp_signer_pb2_grpc.TftpSignerStub(channel)
            return await getattr(stub, method)(request, timeout=120)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        raise CliError(f"tftp-signer: {exc.details() or exc.code().name}",
                       details={"grpc_status": exc.code().name}) from None


def cmd_ls(args) -> int:
    from ccmsec_proto import tftp_signer_pb2

    reply = _call(args, "ListFiles", tftp_signer_pb2.ListFilesRequest(cluster_path=args.path,
                                                                      include_devices=args.devices))
    if json_output(args):
        print(json.dumps({"cluster_path": reply.cluster_path, "mode": ClusterMode.proto_text(reply.mode),
                          "caching": reply.caching,
                          "files": [{"name": f.name, "size": f.size, "signed": f.signed, "kind": f.kind}
                                    for f in reply.files]}, indent=2))
        return 0
    print(f"TFTP path {reply.cluster_path}  mode {ClusterMode.proto_text(reply.mode)}  "
          f"caching {'on' if reply.caching else 'off'}")
    width = max([len(f.name) for f in reply.files] + [4])
    print(f"{'NAME':{width}}  {'SIZE':>8}  SIGNED  KIND")
    for f in reply.files:
        print(f"{f.name:{width}}  {f.size:>8}  {'yes' if f.signed else 'no':6}  {f.kind}")
    return 0


def cmd_get(args) -> int:
    from ccmsec.aio.tftp import TftpError, tftp_get
    from ccmsec.wire.tftp import MAX_BLKSIZE, MIN_BLKSIZE

    if args.blksize is not None and not MIN_BLKSIZE <= args.blksize <= MAX_BLKSIZE:
        raise CliError(f"--blksize must be {MIN_BLKSIZE}..{MAX_BLKSIZE}")
    if not args.name or not args.name.isascii() or "\0" in args.name:
        raise CliError(f"TFTP file names are ASCII text, not '{shown(args.name)}'", EXIT_USAGE)
    _, svc = _endpoint(args)
    port = svc.get("tftp_port", 69)
    try:
        data = asyncio.run(tftp_get(svc["host"], port, args.name, blksize=args.blksize,
                                    tsize=True, timeout=args.timeout))
    except TftpError as exc:
        raise CliError(f"TFTP {svc['host']}:{port} {args.name}: error {exc.code}: {exc.message}") from None
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        from ccmsec.fsutil import atomic_write

        try:
            atomic_write(args.output, data)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
        print(f"{args.name}: {len(data)} bytes -> {args.output}", file=sys.stderr)
    return 0


def cmd_resign(args) -> int:
    from ccmsec_proto import tftp_signer_pb2

    if not args.all and not args.devices:
        raise CliError("name the devices to re-sign, or use --all")
    if args.all and args.devices:
        raise CliError("give devices or --all, not both")
    reply = _call(args, "Resign", tftp_signer_pb2.ResignRequest(devices=args.devices, all=args.all))
    print(f"signed {reply.signed} file(s) in {reply.seconds:.3f} s"
          + ("" if reply.signed else " (nothing to sign: is the cluster in mixed mode?)"))
    return 0


def cmd_cert(args) -> int:
    from ccmsec_proto import common_pb2

    cert = _call(args, "GetSigningCertificate", common_pb2.Empty())
    if args.output is not None:
        from ccmsec.fsutil import atomic_write

        try:
            atomic_write(args.output, cert.der)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
    if json_output(args):
        print_json({k: v for k, v in proto_json(cert).items() if k != "der"})
        return 0
    print(f"subject      {cert.subject}\nserial       {cert.serial}\nsha256       {cert.fingerprint_sha256}\n"
          f"dns / ip     {cert.dns_name} / {cert.ipv4}")
    return 0


def cmd_clusters(args) -> int:
    from ccmsec_proto import common_pb2, tftp_signer_pb2

    if args.add:
        if not args.path:
            raise CliError("--add needs --path")
        mode = ClusterMode.parse(args.mode).to_proto()
        reply = _call(args, "AddSharedCluster", tftp_signer_pb2.SharedCluster(
            name=args.add, tftp_path=args.path, alternate_path=args.alternate, mode=mode))
    else:
        reply = _call(args, "ListSharedClusters", common_pb2.Empty())
    if json_output(args):
        print_json([{"name": c.name, "tftp_path": c.tftp_path, "alternate_path": c.alternate_path or None,
                     "mode": ClusterMode.proto_text(c.mode, "unspecified")} for c in reply.clusters])
        return 0
    for c in reply.clusters:
        alt = f" (alternate {c.alternate_path})" if c.alternate_path else ""
        print(f"{c.name:12} {c.tftp_path}{alt}  {ClusterMode.proto_text(c.mode, 'unspecified')}")
    return 0


async def demo_step(ctx) -> None:
    """`ccmsec demo` step (AUTH-1, AUTH-3, CERT-5): real TFTP downloads from the tftp-signer."""
    from cryptography import x509

    from ccmsec import firmware
    from ccmsec.aio.tftp import TftpError, tftp_get
    from ccmsec.formats.sgn import parse_sgn, verify_sgn

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import common_pb2, tftp_signer_pb2_grpc

    from ccmsec.demo import NotHere, tftp_endpoint

    svc = ctx.endpoints["services"][ROLE]
    # The signer's certificate from the signer itself (mutual TLS), not from a file: the same from
    # the local runner's data folder as from compose's `cli` container (demo --attach).
    async with secure_channel(client_identity(ctx.data), svc["host"], svc["grpc_port"], ROLE) as channel:
        reply = await tftp_signer_pb2_grpc.TftpSignerStub(channel).GetSigningCertificate(common_pb2.Empty(),
                                                                                        timeout=30)
    try:
        host, port = await tftp_endpoint(ctx)   # through a context: the container's address (see there)
    except NotHere as exc:  # no Docker engine to ask for that address
        ctx.say(f"not run from here: {exc}")
        return
    cert = x509.load_der_x509_certificate(reply.der)
    ctx.say(f"TFTP certificate (CERT-5) {cert.subject.rfc4514_string()} serial {cert.serial_number:x}")
    default = await tftp_get(host, port, "XMLDefault.cnf.xml", blksize=1428)
    ctx.say(f"XMLDefault.cnf.xml: {len(default)} bytes from {host}:{port}")
    load = firmware.load_name("7970")
    image = await tftp_get(host, port, firmware.image_filename(load), blksize=1428)
    info = firmware.verify_image(image, cert, load)
    ctx.say(f"firmware {firmware.image_filename(load)}: {len(image)} bytes, signature valid (AUTH-1), "
            f"models {','.join(info.models)}")
    try:
        signed = parse_sgn(await tftp_get(host, port, "RingList.xml.sgn"))
        verify_sgn(signed, cert)
        ctx.say("RingList.xml.sgn: signed by the TFTP certificate (mixed mode, AUTH-3)")
    except TftpError as exc:
        ctx.say(f"RingList.xml.sgn: TFTP error {exc.code} ({exc.message}) — non-secure mode signs nothing (AUTH-3)")
