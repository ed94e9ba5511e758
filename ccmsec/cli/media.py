"""`ccmsec media verify CAPTURE`: check a capture of calls on the wire (ENC-2, ENC-4, ENC-5).

Capture signalling and media together (e.g. `dumpcap -i lo -P -w calls.pcap -f "tcp port 2443
or udp"`) while the phones run with `SSLKEYLOGFILE` set, then give the key log: the command
decrypts the SCCP, takes the master values of every StartMediaTransmission (where a phone sends)
and OpenReceiveChannel (where a phone receives) and checks that every media packet sent to that
address authenticates and decrypts under them with libsrtp. Streams
no key was signalled for are listed as plain RTP.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ccmsec.cli.common import CliError

MAX_CAPTURE = 512 * 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("media", help="verify encrypted media in a capture")
    actions = group.add_subparsers(dest="media_command", metavar="ACTION")
    actions.required = True
    verify = actions.add_parser("verify", help="decrypt a capture's SRTP with the keys its SCCP carried")
    verify.add_argument("capture", type=Path, metavar="CAPTURE", help="a pcap/pcapng file (signalling and media)")
    verify.add_argument("--keylog", type=Path, metavar="FILE",
                        help="NSS key log of the SCCP/TLS connections (SSLKEYLOGFILE); without it only "
                             "clear SCCP on the port is read")
    verify.add_argument("--sccp-port", type=int, default=2443, metavar="PORT",
                        help="the SCCP port in the capture (default 2443; 2000 for clear SCCP)")
    verify.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from ccmsec.media.capture import CaptureError, capture_available, read_datagrams, verify_capture

    why = capture_available()
    if why:
        raise CliError(f"cannot read captures: {why}")
    for path, what in ((args.capture, "capture"), (args.keylog, "key log")):
        if path is not None and not path.is_file():  # a folder, a device (/dev/zero) or nothing there
            raise CliError(f"{what} {path}: " + ("not a regular file" if path.exists() else "no such file"))
    if args.capture.stat().st_size > MAX_CAPTURE:
        raise CliError(f"{args.capture}: larger than {MAX_CAPTURE // (1024 * 1024)} MiB")
    if not 1 <= args.sccp_port <= 65535:
        raise CliError(f"--sccp-port {args.sccp_port} is not a port number")
    try:
        reports = verify_capture(args.capture, sccp_port=args.sccp_port, keylog=args.keylog,
                                 media=read_datagrams(args.capture))
    except CaptureError as exc:
        raise CliError(str(exc)) from None
    if not reports:
        print("no UDP media in the capture")
        return 1
    bad = 0
    for r in reports:
        print(r.line())
        if r.srtp and r.refused:
            bad += 1
    srtp = sum(r.srtp for r in reports)
    print(f"{srtp} of {len(reports)} streams SRTP under signalled keys; {bad} with refused packets")
    return 1 if bad else 0
