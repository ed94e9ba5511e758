"""`ccmsec srst add|list|show|remove|secure|unsecure`: SRST references through the HTTPS
administration API, and security on them (CHK-10, SRST-2, CERT-6, RST-5)."""

from __future__ import annotations

import argparse

from ccmsec.cli.device import _connection_options, _print_json, _run, format_table

LIST_COLUMNS = [("NAME", "name"), ("HOST", "host"), ("SCCP", "sccp_port"), ("TLS", "sccp_tls_port"),
                ("CREDENTIALS", "credentials_port"), ("SECURE", "secure"),
                ("CERTIFICATE SHA-256", "certificate_sha256")]


def register(subparsers) -> None:
    common = _connection_options()
    parser = subparsers.add_parser("srst", help="SRST references and their security (CHK-10)")
    sub = parser.add_subparsers(dest="srst_command", metavar="ACTION")
    sub.required = True

    add = sub.add_parser("add", parents=[common], help="define an SRST reference (device pools name it)")
    add.add_argument("name")
    add.add_argument("--host", required=True, help="the SRST router's address")
    add.add_argument("--sccp-port", type=int, default=2000)
    add.add_argument("--tls-port", type=int, default=2443)
    add.add_argument("--credentials-port", type=int, default=2445,
                     help="the router's credentials service (TLS), where its certificate is fetched")
    add.set_defaults(func=_add)

    lst = sub.add_parser("list", parents=[common], help="list SRST references")
    lst.set_defaults(func=_list)

    show = sub.add_parser("show", parents=[common], help="one reference, its pools and dependent devices")
    show.add_argument("name")
    show.set_defaults(func=_show)

    remove = sub.add_parser("remove", parents=[common], help="remove a reference no pool uses")
    remove.add_argument("name")
    remove.set_defaults(func=_remove)

    secure = sub.add_parser(
        "secure", parents=[common],
        help="configure security: fetch the router's certificate (port 2445), store it (CERT-6), "
             "put it in the dependent phones' configuration and reset them (RST-5)")
    secure.add_argument("name")
    secure.add_argument("--accept-sha256", default="",
                        help="confirm a certificate that differs from the stored one (its fingerprint)")
    secure.set_defaults(func=_secure)

    unsecure = sub.add_parser("unsecure", parents=[common],
                              help="remove security from the reference (the dependent phones reset)")
    unsecure.add_argument("name")
    unsecure.set_defaults(func=_unsecure)


def _add(args: argparse.Namespace) -> int:
    ref = _run(args, lambda c: c.add_srst_reference(
        args.name, args.host, sccp_port=args.sccp_port, sccp_tls_port=args.tls_port,
        credentials_port=args.credentials_port))
    if args.json:
        _print_json(ref)
    else:
        print(f"SRST reference {ref['name']}: {ref['host']} (SCCP {ref['sccp_port']}, TLS "
              f"{ref['sccp_tls_port']}, credentials {ref['credentials_port']}); not secure yet — "
              f"`ccmsec srst secure {ref['name']}` fetches its certificate")
    return 0


def _list(args: argparse.Namespace) -> int:
    refs = _run(args, lambda c: c.srst_references())
    if args.json:
        _print_json(refs)
    else:
        print(format_table(refs, LIST_COLUMNS) if refs else "no SRST references")
    return 0


def _show(args: argparse.Namespace) -> int:
    ref = _run(args, lambda c: c.srst_reference(args.name))
    if args.json:
        _print_json(ref)
        return 0
    for key in ("name", "host", "sccp_port", "sccp_tls_port", "credentials_port", "secure",
                "certificate_sha256", "certificate_subject", "secured_at"):
        value = ref.get(key)
        print(f"{key:<20} {'-' if value in (None, '') else value}")
    print(f"{'pools':<20} {', '.join(ref['pools']) or '-'}")
    print(f"{'devices':<20} {', '.join(ref['devices']) or '-'}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    _run(args, lambda c: c.remove_srst_reference(args.name))
    print(f"SRST reference {args.name} removed")
    return 0


def _report(args: argparse.Namespace, result: dict) -> None:
    if args.json:
        _print_json(result)
        return
    if result["secure"]:
        print(f"SRST reference {result['name']} is secure: certificate sha256 "
              f"{result['certificate_sha256']} stored (CERT-6)")
    else:
        print(f"SRST reference {result['name']} is not secure")
    devices = result.get("reset") or []
    if devices:
        print(f"reset {len(devices)} dependent device(s) (RST-5): {', '.join(devices)}")
    else:
        print("nothing changed for the dependent devices" if result.get("devices")
              else "no device depends on this reference")


def _secure(args: argparse.Namespace) -> int:
    _report(args, _run(args, lambda c: c.srst_security(args.name, True, args.accept_sha256)))
    return 0


def _unsecure(args: argparse.Namespace) -> int:
    _report(args, _run(args, lambda c: c.srst_security(args.name, False)))
    return 0
