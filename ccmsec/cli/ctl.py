"""`ccmsec ctl ...`: certificate trust lists.

The group is built from `SUBCOMMANDS`: each entry is a function `(actions) -> None` that adds one
subcommand to the `ctl` group. Add `ctl update` by appending its registrar here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from ccmsec.cli.common import CliError, add_data_option
from ccmsec.formats.ctl import CtlFormatError, SignatureError, format_ctl, parse_ctl, verify_ctl


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
    show.set_defaults(func=cmd_show)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_show]


def cmd_show(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        ctl_file = parse_ctl(data)
    except CtlFormatError as exc:
        raise CliError(f"{args.file}: not a valid CTL file: {exc}") from None
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
