"""The `ccmsec` command. Each command group lives in its own module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ccmsec.runtime.logs import bind_trace_id, clean_trace_id
from ccmsec.textsafe import bounded
from ccmsec.cli.common import (
    EXIT_CODES_HELP,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    add_data_option,
    error_json,
)

# Command-group modules under ccmsec.cli; each defines register(subparsers).
GROUPS = ["cluster", "demo", "device", "token", "ctl", "sgn", "tls", "mode", "tftp", "phones", "capf", "events", "compose", "line", "pool", "srst", "pki", "media", "calls", "mobility", "routing", "outbox", "completion", "context"]


def version() -> str:
    """The installed distribution's version (the source tree's when run uninstalled)."""
    from importlib import metadata

    try:
        return metadata.version("ccmsec")
    except metadata.PackageNotFoundError:
        from ccmsec import __version__

        return __version__


class _Version(argparse._VersionAction):
    """`--version`, looked up when asked for: importlib.metadata is ~5 % of every start."""

    def __call__(self, parser, namespace, values, option_string=None):
        self.version = f"ccmsec {version()}"
        super().__call__(parser, namespace, values, option_string)


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as JSON objects on stderr when --json is on the command line."""

    json_errors = False

    def error(self, message: str):  # type: ignore[override]
        message = bounded(message)  # argparse quotes the bad argument whole
        if Parser.json_errors:
            print(error_json(f"{self.prog}: {message}", EXIT_USAGE), file=sys.stderr)
            sys.exit(EXIT_USAGE)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ccmsec", description="ccmsec cluster security plane",
                    epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="JSON output from read commands; errors of any command as a JSON "
                             "object on stderr")
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


def _undecodable_argument(argv: list[str], exc: UnicodeEncodeError) -> str | None:
    """The command-line argument (shown as its bytes) whose undecodable bytes caused `exc`, if any."""
    culprit = exc.object[exc.start:exc.end] if isinstance(exc.object, str) else ""
    if not culprit or not all("\udc80" <= ch <= "\udcff" for ch in culprit):
        return None
    for arg in argv:
        if culprit in arg:
            shown = repr(os.fsencode(arg))
            return shown if len(shown) <= 80 else shown[:77] + "..."
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    Parser.json_errors = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    try:
        # One trace id per command (or the caller's, CCMSEC_TRACE_ID): its gRPC calls and API
        # requests carry it, so the services' log lines for it can be found (docs/operations.md).
        with bind_trace_id(clean_trace_id(os.environ.get("CCMSEC_TRACE_ID")) or None):
            return int(args.func(args) or 0)
    except CliError as exc:
        # escaped and bounded: a message may quote a server's answer or the command line's input
        message = bounded(str(exc))
        if args.json:
            print(error_json(message, exc.exit_code, exc.details), file=sys.stderr)
        else:
            print(f"ccmsec: error: {message}", file=sys.stderr)
        return exc.exit_code
    except UnicodeEncodeError as exc:
        # An argument that is not UTF-8 (the shell passed bytes Python could only keep as
        # surrogates) reached a name, a URL or a message that must be text: a usage error.
        bad = _undecodable_argument(argv, exc)
        if bad is None:
            raise
        message = f"argument {bad} is not valid UTF-8 text"
        if args.json:
            print(error_json(message, EXIT_USAGE), file=sys.stderr)
        else:
            print(f"ccmsec: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        # the command line's own TLS identity cannot be loaded or issued (e.g. it belongs to
        # another cluster CA and this folder has no CA key to issue a new one): one line, no
        # traceback. Imported here: the identity module pulls in `cryptography`, which
        # `--version` and `--help` should not pay for.
        from ccmsec.runtime.identity import IdentityError

        if not isinstance(exc, IdentityError):
            raise
        message = f"the command line's identity: {exc}"
        if args.json:
            print(error_json(message, EXIT_ERROR, None), file=sys.stderr)
        else:
            print(f"ccmsec: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ccmsec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
