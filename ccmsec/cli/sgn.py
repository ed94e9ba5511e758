"""`ccmsec sgn show|verify FILE`: print and check any signed file (`*.sgn`), ours or another tool's.

A `.sgn` names its signer only by subject, issuer and serial; the certificate that verifies it
comes from the user: `--cert FILE` (PEM, possibly several, or DER) or `--ctl CTLFile.tlv`, whose
TFTP and CCM+TFTP records are the only certificates a phone accepts for signed files (AUTH-5).
The CTL itself is checked first (signed by one of its own tokens).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ccmsec.cli.common import CliError, add_data_option, add_json_option, json_output, print_json
from ccmsec.formats.ctl import (
    CtlFormatError,
    Role,
    SignatureError,
    dn_string,
    header_lines,
    parse_ctl,
    serial_bytes,
    verify_ctl,
)
from ccmsec.formats.sgn import MAX_SGN_SIZE, SignedFile, parse_sgn, verify_sgn
from ccmsec.textsafe import shown

MAX_CERT_FILE = 1024 * 1024
PREVIEW_BYTES = 2048
# Roles whose certificate may sign files a phone downloads (AUTH-5).
FILE_SIGNER_ROLES = (Role.TFTP, Role.CCM_TFTP)


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("sgn", help="print and verify signed files (*.sgn)")
    add_data_option(group)
    actions = group.add_subparsers(dest="sgn_command", metavar="ACTION")
    actions.required = True

    show = actions.add_parser("show", help="print a .sgn file's header and payload; verify it "
                                           "when --cert or --ctl is given")
    _common(show)
    add_json_option(show)
    show.add_argument("--payload", action="store_true",
                      help="print the payload too (text; binary payloads are summarised)")
    show.add_argument("--extract", type=Path, metavar="OUT",
                      help="write the payload (the original file) to OUT")
    show.set_defaults(func=cmd_show)

    verify = actions.add_parser("verify", help="verify a .sgn file's signature (exit 0 if valid)")
    _common(verify)
    verify.set_defaults(func=cmd_verify)


def _common(p: argparse.ArgumentParser) -> None:
    add_data_option(p)
    p.add_argument("file", type=Path, metavar="FILE", help="a signed file, e.g. SEP….cnf.xml.sgn")
    p.add_argument("--cert", type=Path, action="append", default=[], metavar="CERT",
                   help="a certificate that may have signed it (PEM or DER; repeatable)")
    p.add_argument("--ctl", type=Path, metavar="CTLFILE",
                   help="take the TFTP certificates of this CTLFile.tlv, as a phone does")
    p.add_argument("--name", metavar="NAME",
                   help="the name the file was requested under; the signed name must match (AUTH-5)")


# --- reading inputs ----------------------------------------------------------------------------------

def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise CliError(f"{path}: {size} bytes is too large for {what} (limit {limit} bytes)")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # grew while we read it
            raise CliError(f"{path}: too large for {what} (limit {limit} bytes)")
        return data
    except IsADirectoryError:
        raise CliError(f"{path} is a directory, not {what}") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def _load_signed(path: Path) -> SignedFile:
    data = _read(path, MAX_SGN_SIZE, "a signed file")
    try:
        return parse_sgn(data)
    except CtlFormatError as exc:
        raise CliError(f"{path}: not a valid signed (.sgn) file: {exc}") from None


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, or the one in a DER file."""
    raw = _read(path, MAX_CERT_FILE, "a certificate file")
    try:
        if b"-----BEGIN" in raw:
            certs = x509.load_pem_x509_certificates(raw)
        else:
            certs = [x509.load_der_x509_certificate(raw)]
        for cert in certs:  # the parser is lazy: make a damaged certificate fail here
            cert.subject, cert.serial_number, cert.public_key()
    except Exception as exc:  # any parser failure means "not a certificate file"
        raise CliError(f"{path}: not a PEM or DER certificate ({exc})") from None
    if not certs:
        raise CliError(f"{path}: no certificate in it")
    return certs


@dataclass(frozen=True)
class Candidate:
    certificate: x509.Certificate
    origin: str  # where it came from, for the report


def _candidates(args: argparse.Namespace) -> tuple[list[Candidate], list]:
    """The certificates that may verify the file, and the CTL records that may not (other roles)."""
    found = [Candidate(c, str(p)) for p in args.cert for c in load_certificates(p)]
    others: list = []
    if args.ctl:
        raw = _read(args.ctl, 64 * 1024, "a CTL file")
        try:
            ctl = parse_ctl(raw)
            verify_ctl(ctl)
        except CtlFormatError as exc:
            raise CliError(f"{args.ctl}: not a valid CTL file: {exc}") from None
        except SignatureError as exc:
            raise CliError(f"{args.ctl}: the CTL itself does not verify: {exc}") from None
        found += [Candidate(r.certificate, f"{args.ctl} ({r.role.label} record)")
                  for r in ctl.records_for_role(*FILE_SIGNER_ROLES)]
        others = [r for r in ctl.records if r.role not in FILE_SIGNER_ROLES]
    return found, others


def _same_serial(signed: SignedFile, cert: x509.Certificate) -> bool:
    return (signed.header.signer_serial.lstrip(b"\x00")
            == serial_bytes(cert.serial_number).lstrip(b"\x00"))


def check(signed: SignedFile, args: argparse.Namespace) -> str:
    """Verify against the given certificates; returns a one-line verdict or raises CliError."""
    if args.name is not None and signed.header.file_name != args.name:
        raise CliError(f"{args.file}: signed under the name '{shown(signed.header.file_name)}', not "
                       f"'{shown(args.name)}'; a phone refuses it (AUTH-5)")
    candidates, not_file_signers = _candidates(args)
    matching = [c for c in candidates if _same_serial(signed, c.certificate)]
    if not matching:
        serial = signed.header.signer_serial.hex()
        listed_elsewhere = [r for r in not_file_signers
                            if r.serial.lstrip(b"\x00") == signed.header.signer_serial.lstrip(b"\x00")]
        if listed_elsewhere:
            raise CliError(f"{args.file}: signed by {signed.header.signer_name} (serial {serial}), "
                           f"which the CTL lists as {listed_elsewhere[0].role.label}, not as a TFTP "
                           "server; a phone refuses it (AUTH-5)")
        given = ", ".join(f"{c.origin}: serial {c.certificate.serial_number:x}" for c in candidates)
        raise CliError(f"{args.file}: signed by {signed.header.signer_name} (serial {serial}); "
                       f"none of the given certificates has that serial ({given or 'none given'})")
    errors = []
    for cand in matching:
        try:
            verify_sgn(signed, cand.certificate)
        except SignatureError as exc:
            errors.append(str(exc))
            continue
        return f"valid (signed by {dn_string(cand.certificate.subject)}, from {cand.origin})"
    raise CliError(f"{args.file}: signature verification FAILED: {'; '.join(errors)}")


# --- commands ------------------------------------------------------------------------------------------

def _describe_payload(payload: bytes) -> list[str]:
    return [f"Payload:           {len(payload)} bytes",
            f"Payload SHA-256:   {hashlib.sha256(payload).hexdigest()}"]


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def cmd_show(args: argparse.Namespace) -> int:
    signed = _load_signed(args.file)
    if json_output(args):
        from ccmsec.formats.ctl import header_dict

        answer = {"file": str(args.file), "header": header_dict(signed.header),
                  "payload_bytes": len(signed.payload),
                  "payload_sha256": hashlib.sha256(signed.payload).hexdigest(),
                  "signature": {"checked": False}}
        if args.cert or args.ctl:
            answer["signature"] = {"checked": True, "valid": True, "result": check(signed, args)}
        print_json(answer)
        return 0
    lines = header_lines(signed.header)
    if signed.header.file_name != args.file.name:
        lines[0] += f"   (the file on disk is named {args.file.name})"
    sys.stdout.write("\n".join(lines + _describe_payload(signed.payload)) + "\n")
    if args.payload:
        body = signed.payload[:PREVIEW_BYTES]
        if _is_text(body):
            print("\n" + body.decode("utf-8").rstrip("\n"))
            if len(signed.payload) > PREVIEW_BYTES:
                print(f"… ({len(signed.payload) - PREVIEW_BYTES} more bytes; use --extract)")
        else:
            print(f"\n(binary payload; first bytes {signed.payload[:16].hex()}; use --extract)")
    if args.extract:
        from ccmsec.fsutil import atomic_write

        try:
            atomic_write(args.extract, signed.payload)
        except OSError as exc:
            raise CliError(f"cannot write {args.extract}: {exc.strerror or exc}") from None
        print(f"payload written to {args.extract}")
    if not args.cert and not args.ctl:
        print("\nSignature:         not checked (give --cert FILE or --ctl CTLFile.tlv)")
        return 0
    sys.stdout.flush()
    print(f"\nSignature:         {check(signed, args)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if not args.cert and not args.ctl:
        raise CliError("give the certificate to verify with: --cert FILE (PEM or DER) or "
                       "--ctl CTLFile.tlv (its TFTP entries)")
    signed = _load_signed(args.file)
    print(f"{args.file}: {check(signed, args)}")
    return 0

