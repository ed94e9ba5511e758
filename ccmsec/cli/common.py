"""Shared CLI plumbing: the --data option, errors, password input."""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

import platformdirs


class CliError(Exception):
    """A user-facing error: printed as one line, exit code non-zero, never a traceback."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


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


def data_dir(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "data", None) or default_data_dir()).expanduser().resolve()


def read_password(args: argparse.Namespace, prompt: str = "Token password: ") -> str:
    """--password-file FILE for scripts, otherwise an interactive prompt."""
    pw_file = getattr(args, "password_file", None)
    if pw_file:
        try:
            return Path(pw_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise CliError(f"cannot read password file {pw_file}: {exc.strerror}") from None
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise CliError("no password given (use --password-file FILE when not interactive)") from None
