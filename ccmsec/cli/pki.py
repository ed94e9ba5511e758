"""`ccmsec pki issue|show`: give one service (or client) its own identity folder.

`ccmsec up` does this for every service of a local cluster. In compose, a one-shot init step that
alone holds the cluster CA runs `ccmsec pki issue` once per container, into a folder only that
container mounts (as CCMSEC_IDENTITY_DIR), so no container ever sees the CA key or another's key.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ccmsec.cli.common import CliError, add_data_option, add_json_option, data_dir, json_output, print_json


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("pki", help="issue service and client identities from the cluster CA")
    add_data_option(group)
    actions = group.add_subparsers(dest="pki_command", metavar="ACTION")
    actions.required = True
    issue = actions.add_parser(
        "issue", help="issue ROLE/NODE's certificate and key into --out (the CA stays in DATA/pki)")
    add_data_option(issue)
    issue.add_argument("--role", required=True, help="service role, or cli / admin-api")
    issue.add_argument("--node", help="instance name (default: the role)")
    issue.add_argument("--out", type=Path, required=True, help="the identity folder to write (0700)")
    issue.add_argument("--dns", action="append", default=[], metavar="NAME",
                       help="extra DNS name the server certificate carries (repeatable)")
    issue.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                       help="IP address the server certificate carries (repeatable)")
    issue.set_defaults(func=cmd_issue)
    show = actions.add_parser("show", help="the identity an identity folder holds")
    show.add_argument("folder", type=Path)
    add_json_option(show)
    show.set_defaults(func=cmd_show)


def cmd_issue(args: argparse.Namespace) -> int:
    import ipaddress

    from ccmsec.cluster import pki
    from ccmsec.runtime.identity import CLIENT_ROLES, IdentityError, admin_api_identity_dir

    role, node = args.role, args.node or args.role
    for address in args.ip:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise CliError(f"--ip {address!r} is not an IP address") from None
    d = data_dir(args)
    try:
        if role == "cli":
            held = pki.issue_client_identity(d, node, out_dir=args.out)
        elif role in CLIENT_ROLES:
            held = pki.issue_identity(d, role, node, args.out, dns=[node, "localhost", *args.dns],
                                      ips=args.ip)
        else:
            held = pki.issue_service_identity(d, role, node, out_dir=args.out, dns=args.dns, ips=args.ip)
    except IdentityError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"{held.identity.uri} -> {held.folder} ({held.cert_path.name}, {held.key_path.name} 0600, "
          f"{held.ca_path.name})")
    if role == "callmanager":
        print(f"{'spiffe://ccmsec/admin-api/' + node} -> {admin_api_identity_dir(held.folder)} "
              "(the HTTPS administration API inside callmanager)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from cryptography import x509

    from ccmsec.runtime.identity import IdentityError, load_identity

    try:
        held = load_identity(args.folder)
    except IdentityError as exc:
        raise CliError(str(exc)) from None
    cert = x509.load_pem_x509_certificate(held.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if json_output(args):
        print_json({"identity": str(held.identity), "uri": held.identity.uri,
                    "names": san.get_values_for_type(x509.DNSName),
                    "addresses": [str(a) for a in san.get_values_for_type(x509.IPAddress)],
                    "not_after": cert.not_valid_after_utc.isoformat()})
        return 0
    print(f"identity: {held.identity} ({held.identity.uri})")
    print(f"names:    {', '.join(san.get_values_for_type(x509.DNSName)) or '-'}")
    print(f"addresses: {', '.join(str(a) for a in san.get_values_for_type(x509.IPAddress)) or '-'}")
    print(f"valid until: {cert.not_valid_after_utc:%Y-%m-%d}")
    return 0
