"""`ccmsec token create|list|show`: software security tokens (SAST) that sign the CTL."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from ccmsec.cli.common import (
    CliError, add_data_option, add_json_option, data_dir, json_output, print_json, read_password,
)
from ccmsec.formats.ctl import dn_string
from ccmsec.pki.tokens import (
    MAX_PASSWORD_FAILURES,
    TokenError,
    TokenInfo,
    create_software_token,
    ensure_manufacturer_ca,
    list_tokens,
    token_info,
)


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("token", help="security tokens that sign the CTL")
    add_data_option(group)
    actions = group.add_subparsers(dest="token_command", metavar="ACTION")
    actions.required = True

    create = actions.add_parser("create", help="create a software token (RSA 2048, PKCS#12)")
    add_data_option(create)
    create.add_argument("--name", required=True, help="token name, e.g. token1")
    create.add_argument("--password-file", type=Path,
                        help="read the token password from this file, - for standard input "
                             "(default: prompt)")
    _add_dir_option(create)
    create.set_defaults(func=cmd_create)

    listing = actions.add_parser("list", help="list the tokens")
    add_data_option(listing)
    _add_dir_option(listing)
    add_json_option(listing)
    listing.set_defaults(func=cmd_list)

    show = actions.add_parser("show", help="show one token's certificate and lock state")
    add_data_option(show)
    show.add_argument("name", metavar="NAME")
    _add_dir_option(show)
    add_json_option(show)
    show.set_defaults(func=cmd_show)


def _add_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, help="token directory (default: DATA/tokens)")


def _token_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir) if getattr(args, "dir", None) else data_dir(args) / "tokens"


def cmd_create(args: argparse.Namespace) -> int:
    password = read_password(args, "New token password: ")
    if not password:
        raise CliError("the token password must not be empty")
    try:
        ca = ensure_manufacturer_ca(data_dir(args) / "pki")
        token = create_software_token(_token_dir(args), args.name, password, ca)
    except TokenError as exc:
        raise CliError(str(exc)) from None
    cert = token.certificate
    print(f"created token {token.name} in {_token_dir(args)}")
    print(f"  subject: {dn_string(cert.subject)}")
    print(f"  serial:  {cert.serial_number:x}")
    print(f"  SHA-256: {cert.fingerprint(hashes.SHA256()).hex()}")
    return 0


def _state(info: TokenInfo) -> str:
    if info.locked:
        return "LOCKED"
    return f"ok ({info.failures}/{MAX_PASSWORD_FAILURES} failed attempts)"


def token_dict(info: TokenInfo) -> dict:
    cert = info.certificate
    return {"name": info.name, "locked": info.locked, "failed_attempts": info.failures,
            "max_failed_attempts": MAX_PASSWORD_FAILURES, "subject": dn_string(cert.subject),
            "issuer": dn_string(cert.issuer), "serial": f"{cert.serial_number:x}",
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "sha1": cert.fingerprint(hashes.SHA1()).hex(),
            "sha256": cert.fingerprint(hashes.SHA256()).hex()}


def cmd_list(args: argparse.Namespace) -> int:
    try:
        tokens = list_tokens(_token_dir(args))
    except TokenError as exc:
        raise CliError(str(exc)) from None
    if json_output(args):
        print_json([token_dict(info) for info in tokens])
        return 0
    if not tokens:
        print(f"no tokens in {_token_dir(args)}")
        return 0
    print(f"{'NAME':<20} {'SERIAL':<42} {'STATE':<28} SUBJECT")
    for info in tokens:
        print(f"{info.name:<20} {info.certificate.serial_number:<42x} {_state(info):<28} "
              f"{dn_string(info.certificate.subject)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    try:
        info = token_info(_token_dir(args), args.name)
    except TokenError as exc:
        raise CliError(str(exc)) from None
    if json_output(args):
        print_json(token_dict(info))
        return 0
    cert = info.certificate
    print(f"Token:       {info.name}")
    print(f"State:       {_state(info)}")
    print(f"Subject:     {dn_string(cert.subject)}")
    print(f"Issuer:      {dn_string(cert.issuer)}")
    print(f"Serial:      {cert.serial_number:x}")
    print(f"Valid from:  {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    print(f"Valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    print(f"SHA-1:       {cert.fingerprint(hashes.SHA1()).hex()}")
    print(f"SHA-256:     {cert.fingerprint(hashes.SHA256()).hex()}")
    return 0
