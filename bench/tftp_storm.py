"""TFTP configuration storm: N phones fetch their SEP<MAC>.cnf.xml at once.

Compares our asyncio TFTP server (`ccmsec.aio.tftp.TftpServer`) with Debian's tftpd-hpa
serving the same files, fetched by the same client (`ccmsec.aio.tftp.tftp_get`) in the same
run, so the only difference is the server. Each server runs in its own process on its own
loopback address; the bench starts both and stops them by PID.

Run (from the repository root):

    uv run python bench/tftp_storm.py --quick          # 300 phones, < 60 s
    uv run python bench/tftp_storm.py                  # 2000 phones
    uv run python bench/tftp_storm.py --phones 5000 --concurrency 128 --rounds 3

Options: --phones N, --concurrency K (fetches in flight, default 64), --rounds R (best of R,
servers interleaved), --blksize B (default: none, i.e. RFC 1350's 512), --uvloop (use uvloop for
the client and our server). Prints both rates (fetches/s), the ratio ours/tftpd-hpa, and
failures. Our server answers from an in-memory copy of the files, as the tftp-signer's cache
does; tftpd-hpa reads them from the (page-cached) directory and forks per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ccmsec.domain import CapfAuthMode, CapfOperation, DeviceSecurityMode  # noqa: E402
from ccmsec.aio.tftp import TftpServer, tftp_get  # noqa: E402
from ccmsec.formats.cnfxml import (  # noqa: E402
    CallManagerMember, CapfSettings, DeviceConfig, Hardening, SrstInfo,
)

OUR_HOST = "127.0.0.71"
HPA_HOST = "127.0.0.72"
TFTPD = "/usr/sbin/in.tftpd"
TIME_LIMIT = 120.0  # seconds per storm, a hard bound


def make_configs(directory: Path, phones: int) -> list[str]:
    names = []
    cert = os.urandom(64)  # stands in for the SRST certificate; keeps files at ~1.5-2 KB
    for i in range(phones):
        config = DeviceConfig(
            device_name=f"SEP{0x001122000000 + i:012X}",
            model="Cisco 7970",
            security_mode=DeviceSecurityMode.ENCRYPTED,
            call_managers=(CallManagerMember("10.0.0.1"), CallManagerMember("10.0.0.2")),
            srst=SrstInfo("Enable", ("10.0.9.1",), (2000,), True, cert),
            capf_auth_mode=CapfAuthMode.STRING,
            capf=CapfSettings("10.0.0.1", operation=CapfOperation.INSTALL, auth_string=f"{100000 + i}"),
            cert_hash=f"{i:032x}",
            load_information="TERM70.7-0-1-0s",
            hardening=Hardening.all_off(),
        )
        (directory / config.filename).write_bytes(config.to_xml())
        names.append(config.filename)
    return names


def free_port(host: str) -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((host, 0))
        return probe.getsockname()[1]
    finally:
        probe.close()


# --- our server, in its own process ---------------------------------------------------------


async def serve(host: str, directory: Path) -> None:
    files = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}

    async def resolve(filename: str, client: tuple[str, int]) -> bytes | None:
        return files.get(filename)

    async with TftpServer(host, 0, resolve, max_sessions=1024) as server:
        print(f"ready {server.address[1]}", flush=True)
        # Runs until the parent closes our stdin (or kills us by PID).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# --- the storm ------------------------------------------------------------------------------


async def storm(host: str, port: int, names: list[str], concurrency: int, blksize: int | None) -> tuple[float, int]:
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def phone(name: str) -> None:
        nonlocal failures
        async with gate:
            try:
                await tftp_get(host, port, name, blksize=blksize, timeout=1.0, retries=5)
            except Exception:
                failures += 1

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(phone(n) for n in names)), TIME_LIMIT)
    return time.perf_counter() - start, failures


async def wait_ready(host: str, port: int, name: str) -> None:
    for _ in range(50):
        try:
            await tftp_get(host, port, name, timeout=0.1, retries=1)
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server on {host}:{port} never answered")


async def main(args: argparse.Namespace) -> int:
    if not Path(TFTPD).exists():
        print(f"{TFTPD} not found (apt-get install tftpd-hpa); cannot run the baseline", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="tftp-storm-"))
    workdir.chmod(0o755)  # tftpd-hpa drops to its own user and must read the files
    ours = hpa = None
    try:
        names = make_configs(workdir, args.phones)
        sizes = [(workdir / n).stat().st_size for n in names[:50]]
        ours_cmd = [sys.executable, __file__, "--serve", OUR_HOST, str(workdir)] + (["--uvloop"] if args.uvloop else [])
        ours = subprocess.Popen(ours_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = ours.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError("our server failed to start")
        our_port = int(line[1])
        hpa_port = free_port(HPA_HOST)
        hpa = subprocess.Popen(
            [TFTPD, "--foreground", "--listen", "--address", f"{HPA_HOST}:{hpa_port}", "--secure", str(workdir)],
            stdin=subprocess.DEVNULL,
        )
        await wait_ready(OUR_HOST, our_port, names[0])
        await wait_ready(HPA_HOST, hpa_port, names[0])

        print(f"{args.phones} phones, {min(sizes)}-{max(sizes)} byte configs, {args.concurrency} in flight, "
              f"blksize {args.blksize or 512}, best of {args.rounds}")
        best = {"ccmsec": float("inf"), "tftpd-hpa": float("inf")}
        failed = {"ccmsec": 0, "tftpd-hpa": 0}
        for _ in range(args.rounds):
            for label, host, port in (("ccmsec", OUR_HOST, our_port), ("tftpd-hpa", HPA_HOST, hpa_port)):
                elapsed, failures = await storm(host, port, names, args.concurrency, args.blksize)
                best[label] = min(best[label], elapsed)
                failed[label] += failures
        ours_rate = args.phones / best["ccmsec"]
        hpa_rate = args.phones / best["tftpd-hpa"]
        print(f"ccmsec TftpServer : {ours_rate:8.0f} configs/s  ({best['ccmsec']:.2f} s, {failed['ccmsec']} failed)")
        print(f"tftpd-hpa baseline: {hpa_rate:8.0f} configs/s  ({best['tftpd-hpa']:.2f} s, {failed['tftpd-hpa']} failed)")
        print(f"ratio ccmsec/tftpd-hpa: {ours_rate / hpa_rate:.2f}")
        return 0 if failed["ccmsec"] == 0 else 1
    finally:
        for proc in (ours, hpa):
            if proc is not None and proc.poll() is None:
                proc.terminate()  # only the processes this bench started, by their PID
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="300 phones")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--blksize", type=int, default=None)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--serve", nargs=2, metavar=("HOST", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.phones = 300
    if args.rounds is None:
        args.rounds = 2 if args.quick else 1
    if not 1 <= args.phones <= 100_000 or not 1 <= args.concurrency <= 1024:
        parser.error("phones must be 1..100000 and concurrency 1..1024")
    return args


def run(coro_factory, use_uvloop: bool) -> int:
    if use_uvloop:
        import uvloop

        return uvloop.run(coro_factory())
    return asyncio.run(coro_factory())


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        host, directory = arguments.serve
        run(lambda: serve(host, Path(directory)), arguments.uvloop)
        sys.exit(0)
    sys.exit(run(lambda: main(arguments), arguments.uvloop))
