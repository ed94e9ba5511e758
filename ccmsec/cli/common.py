"""Shared CLI plumbing: the --data and --json options, errors, exit codes, password input."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

import platformdirs
from ccmsec.textsafe import shown

MAX_PASSWORD = 1024  # bytes read from a pipe; longer input is not a password
MAX_PASSWORD_FILE = 64 * 1024  # bytes of a --password-file; a bigger file is not a password file


# Exit codes (the same table is printed by `ccmsec --help` and in README.md):
EXIT_OK = 0           # done; or saved and "pending delivery" (the bus is down: its resets are
                      # queued in the owner's outbox and go out once it is back — issue 9 §4)
EXIT_ERROR = 1        # refused or failed: the message (or under --json the error object) says why
EXIT_USAGE = 2        # the command line itself is wrong (unknown command or option, bad value)
EXIT_NOT_READY = 3    # answered, but not in the wanted state: `status` with a service not serving,
                      # `device reset --wait` with phones not back in time, `capf check` with a
                      # phone that lacks its LSC
EXIT_DEGRADED = 4     # `status`: every service runs, one or more DEGRADED (event stream or
                      # consumer lost; the reason is printed) — BUS-5
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES_HELP = """exit codes:
  0    done (or saved and "pending delivery": the bus is down, its resets follow once it is back)
  1    refused or failed (the error says why; under --json a JSON object on stderr)
  2    usage error (unknown command or option, bad value)
  3    not in the wanted state (status: a service not serving; reset --wait: phones not back;
       capf check: a phone lacks its LSC)
  4    status: every service runs, one or more DEGRADED (event stream or consumer lost)
  130  interrupted"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit code non-zero, never a traceback.

    `details` (e.g. the rule ID and HTTP status of an API refusal) go into the JSON error object
    under --json."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR, details: dict | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.details = details or {}


def error_json(message: str, exit_code: int, details: dict | None = None) -> str:
    """The JSON error object written to standard error under --json."""
    return json.dumps({"error": message, "exit_code": exit_code, **(details or {})}, sort_keys=True)


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """--json on a read command (also accepted before the command: `ccmsec --json status`)."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON (errors too, as a JSON object on stderr)")


def json_output(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


MAX_SECONDS = 86_400.0


def seconds(text: str) -> float:
    """argparse type of a --timeout: a finite number of seconds, 0 < value <= one day (`nan` would
    never expire and a negative one would give up before trying)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a number of seconds") from None
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"'{shown(text)}': give a number of seconds above 0, at most {MAX_SECONDS:g}")
    return value


def seconds_or_zero(text: str) -> float:
    """argparse type of a --timeout where 0 means "no limit" (`calls watch`): 0, or `seconds`."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass
    return seconds(text)


INT32_MAX = 2**31 - 1  # the largest int32 a gRPC request field holds (bigger: protobuf's ValueError)


def int_in(low: int, high: int = INT32_MAX):
    """argparse type of a whole number in low..high, so that no number reaches a request that
    cannot hold it (`--index 99999999999999999999` was a protobuf traceback)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text}: give a number from {low} to {high}")
        return value

    parse.__name__ = "number"
    return parse


def default_data_dir() -> Path:
    env = os.environ.get("CCMSEC_DATA_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("ccmsec")) / "cluster"


def add_data_option(parser: argparse.ArgumentParser) -> None:
    """Every command that works on a local cluster takes the same --data DIR."""
    parser.add_argument(
        "--data", type=Path, default=argparse.SUPPRESS,
        help=f"cluster data directory (default: $CCMSEC_DATA_DIR or {default_data_dir()})",
    )


def data_dir(args: argparse.Namespace, *, local: bool = False) -> Path:
    """--data; else $CCMSEC_DATA_DIR; else, unless `local` (the local runner's own commands), the
    context in use when it was made from a client bundle (its `cluster/` folder: the cli identity
    and the published ports of a compose cluster); else the default folder."""
    given = getattr(args, "data", None)
    if not given and not local and not os.environ.get("CCMSEC_DATA_DIR"):
        from ccmsec import contexts

        try:
            ctx = contexts.active()
        except contexts.ContextError as exc:
            raise CliError(str(exc)) from None
        if ctx is not None and ctx.reaches_grpc:
            return ctx.cluster_dir
    return Path(given or default_data_dir()).expanduser().resolve()


def _stdin_text(password: str) -> str:
    """Standard input decoded with surrogateescape (C locale) keeps bytes that are not UTF-8 as
    surrogates, which no password can hold: refused here, not as a traceback later."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError("the password read from standard input is not UTF-8 text") from None
    return password


def _read_stdin_password() -> str:
    try:
        line = sys.stdin.readline(MAX_PASSWORD + 2)
    except UnicodeDecodeError:
        raise CliError("the password read from standard input is not UTF-8 text") from None
    if not line:
        raise CliError("no password given on standard input")
    password = line.rstrip("\r\n")
    if len(password) > MAX_PASSWORD:
        raise CliError(f"the password read from standard input is over {MAX_PASSWORD} characters")
    return _stdin_text(password)


def read_password(args: argparse.Namespace, prompt: str = "Token password: ") -> str:
    """--password-file FILE for scripts (`-` = the first line of standard input), otherwise an
    interactive prompt."""
    pw_file = getattr(args, "password_file", None)
    if pw_file is not None and str(pw_file) == "-":
        return _read_stdin_password()
    if pw_file:
        try:
            with open(pw_file, "rb") as fh:
                raw = fh.read(MAX_PASSWORD_FILE + 1)
        except OSError as exc:
            raise CliError(f"cannot read password file {pw_file}: {exc.strerror}") from None
        if len(raw) > MAX_PASSWORD_FILE:
            raise CliError(f"password file {pw_file} is over {MAX_PASSWORD_FILE} bytes: not a password")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CliError(f"password file {pw_file} is not UTF-8 text") from None
        return text.rstrip("\r\n")
    if not sys.stdin.isatty():
        # Piped or redirected: read one line quietly. getpass would warn that it cannot hide
        # the echo and print its prompt to the terminal, though nothing is typed there.
        try:
            line = sys.stdin.readline(MAX_PASSWORD + 2)
        except UnicodeDecodeError:
            raise CliError("the password read from standard input is not UTF-8 text") from None
        if not line:
            raise CliError("no password given (use --password-file FILE when not interactive)")
        password = line.rstrip("\r\n")
        if len(password) > MAX_PASSWORD:
            raise CliError(f"the password read from standard input is over {MAX_PASSWORD} characters")
        return _stdin_text(password)
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise CliError("no password given (use --password-file FILE when not interactive)") from None


# --- changes that restart services -----------------------------------------------------------------
RESTART_WAIT_TIMEOUT = 120.0


def add_wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true",
                        help="return at once instead of waiting until the services the change "
                             "restarts serve again")


def service_pids_before_change(args: argparse.Namespace) -> dict[str, int] | None:
    """Read before a change that may restart services, so that `wait_for_restarts` can tell the
    new processes from the old. None when no local cluster is running here."""
    from ccmsec.cluster import runner

    try:
        return runner.service_pids(data_dir(args))
    except Exception:  # no state yet, unreadable state: nothing to wait for
        return None


def wait_for_restarts(args: argparse.Namespace, before: dict[str, int] | None, events) -> None:
    """Wait, with progress, until every service the change restarted serves again, so the next
    command does not meet a closed port. Nothing to do with --no-wait or without a local cluster."""
    import asyncio

    from ccmsec.cluster import runner

    roles = runner.restarted_roles(events)
    if not roles or before is None or getattr(args, "no_wait", False):
        return
    try:
        asyncio.run(runner.wait_restarted(data_dir(args), roles, before,
                                          timeout=RESTART_WAIT_TIMEOUT, progress=True))
    except runner.RunnerError as exc:
        raise CliError(f"the change is made, but {exc}") from None


def proto_json(message) -> dict:
    """A protobuf reply as JSON-ready values (field names as in the .proto, defaults included)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)
