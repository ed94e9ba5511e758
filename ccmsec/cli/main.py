"""The `ccmsec` command. Each command group lives in its own module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

from ccmsec.cli.common import CliError, add_data_option

# Command-group modules under ccmsec.cli; each defines register(subparsers).
GROUPS = ["cluster", "demo", "device", "token", "ctl", "sgn", "tls", "mode", "tftp", "phones", "capf", "events", "compose", "line", "pool", "srst", "pki", "media"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccmsec", description="ccmsec cluster security plane")
    add_data_option(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in GROUPS:
        try:
            module = importlib.import_module(f"ccmsec.cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ccmsec.cli.{group}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"ccmsec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ccmsec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
