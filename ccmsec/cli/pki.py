"""`ccmsec pki issue|show|nats-config`: give one service (or client) its own identity folder, and
the event bus the users those folders hold.

`ccmsec up` does this for every service of a local cluster. In compose, a one-shot init step that
alone holds the cluster CA runs `ccmsec pki issue` once per container, into a folder only that
container mounts (as CCMSEC_IDENTITY_DIR), so no container ever sees the CA key or another's key.
The folder of a service or of `cli` also gets `nats.nk`, its own NATS nkey seed (BUS-1); then
`ccmsec pki nats-config --out nats.conf FOLDER...` renders the NATS server's configuration with
one user per folder (public keys and role permissions only, no anonymous user) for the NATS
container to mount.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ccmsec.cli.common import CliError, add_data_option, add_json_option, data_dir, json_output, print_json
from ccmsec.textsafe import shown


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
    conf = actions.add_parser(
        "nats-config", help="render the NATS server configuration for these identity folders "
                            "(one nkey user each, permissions by role, no anonymous user)")
    add_data_option(conf)
    conf.add_argument("folders", nargs="+", type=Path, metavar="FOLDER",
                      help="identity folders issued by `ccmsec pki issue` (services and cli)")
    conf.add_argument("--out", type=Path, required=True, help="the configuration file to write")
    conf.add_argument("--listen", default="0.0.0.0:4222", help="HOST:PORT NATS listens on")
    conf.add_argument("--store", default="/data/jetstream", help="JetStream store directory (server side)")
    conf.add_argument("--name", default="ccmsec", help="server name")
    conf.set_defaults(func=cmd_nats_config)
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
            raise CliError(f"--ip '{shown(address)}' is not an IP address") from None
    d = data_dir(args, local=True)
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
    seed = held.folder / "nats.nk"
    print(f"{held.identity.uri} -> {held.folder} ({held.cert_path.name}, {held.key_path.name} 0600, "
          f"{held.ca_path.name}" + (f", {seed.name} 0600" if seed.is_file() else "") + ")")
    if role == "callmanager":
        print(f"{'spiffe://ccmsec/admin-api/' + node} -> {admin_api_identity_dir(held.folder)} "
              "(the HTTPS administration API inside callmanager)")
    return 0


def cmd_nats_config(args: argparse.Namespace) -> int:
    from ccmsec.cluster import pki
    from ccmsec.fsutil import atomic_write
    from ccmsec.runtime.identity import IdentityError

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--listen '{shown(args.listen)}' is not HOST:PORT")
    try:
        text = pki.nats_config(data_dir(args, local=True), args.folders, listen=args.listen, store_dir=args.store,
                               server_name=args.name)
    except IdentityError as exc:
        raise CliError(str(exc)) from None
    try:
        # Public keys and permissions only: readable by the NATS container's user.
        atomic_write(args.out, text.encode(), mode=0o644)
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    users = [pki.bus_user_of(f) for f in args.folders]
    print(f"{args.out}: NATS on {args.listen}, users " + ", ".join(f"{u.role}/{u.node}" for u in users)
          + f" and the bus operator (seed {pki.nats_admin_seed_path(data_dir(args, local=True))}); no anonymous user")
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
