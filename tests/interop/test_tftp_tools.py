"""Real TFTP clients (curl, atftp, tftp-hpa) fetch byte-identical files from our server, and
tshark decodes the exchange without finding anything malformed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
from pathlib import Path

import pytest

from ccmsec.aio.tftp import TftpServer, tftp_get

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

FILES = {
    "SEP001122334455.cnf.xml": os.urandom(1700),
    "exact1428": os.urandom(1428 * 3),
    "big.bin": os.urandom(200_000),
    "empty": b"",
    "notes.txt": b"first line\nsecond line\r\nlone cr\r and more\n",
}


async def resolve(filename, client):
    return FILES.get(filename)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


@pytest.fixture
async def server():
    async with TftpServer("127.0.0.1", 0, resolve, timeout=0.5, retries=5) as srv:
        yield srv


async def run(*argv: str, timeout: float = 20, merge_stderr: bool = True) -> tuple[int, bytes]:
    stderr = asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.DEVNULL
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=stderr, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{argv[0]} did not finish within {timeout}s")
    return proc.returncode, out


# No empty file for curl: curl 7.88 fails any zero-byte TFTP download with "getpeername() failed"
# (tftpd-hpa gets the same), so that case would test curl, not us.
@pytest.mark.parametrize("blksize", [None, 8, 512, 1428, 65464])
@pytest.mark.parametrize("name", ["SEP001122334455.cnf.xml", "exact1428", "big.bin"])
async def test_curl_fetches_identical_files(server, tmp_path, name, blksize):
    curl = need("curl")
    host, port = server.address
    out = tmp_path / "out"
    args = [curl, "-sS", "--max-time", "15", "-o", str(out)]
    if blksize:
        args += ["--tftp-blksize", str(blksize)]
    rc, log = await run(*args, f"tftp://{host}:{port}/{name}")
    assert rc == 0, log
    assert out.read_bytes() == FILES[name]


async def test_curl_sees_not_found(server, tmp_path):
    curl = need("curl")
    host, port = server.address
    rc, log = await run(curl, "-sS", "--max-time", "10", "-o", str(tmp_path / "x"), f"tftp://{host}:{port}/nope")
    assert rc == 68, log  # CURLE_TFTP_NOTFOUND: curl decoded our error 1


@pytest.mark.parametrize(
    "options",
    [[], ["blksize 1428"], ["tsize"], ["windowsize 4"], ["blksize 1024", "tsize", "windowsize 8"], ["blksize 8", "windowsize 16"]],
)
@pytest.mark.parametrize("name", ["SEP001122334455.cnf.xml", "big.bin", "empty"])
async def test_atftp_fetches_identical_files(server, tmp_path, name, options):
    atftp = need("atftp")
    host, port = server.address
    out = tmp_path / "out"
    args = [atftp, "-g", "-r", name, "-l", str(out)]
    for option in options:
        args += ["--option", option]
    rc, log = await run(*args, host, str(port))
    assert rc == 0, log
    assert out.read_bytes() == FILES[name]


@pytest.mark.parametrize(
    ("name", "mode"),
    [("SEP001122334455.cnf.xml", "binary"), ("exact1428", "binary"), ("empty", "binary"),
     ("notes.txt", "binary"), ("notes.txt", "ascii")],  # netascii only makes sense for text
)
async def test_tftp_hpa_fetches_identical_files(server, tmp_path, name, mode):
    tftp = need("tftp")
    host, port = server.address
    out = tmp_path / "out"
    rc, log = await run(tftp, "-m", mode, host, str(port), "-c", "get", name, str(out))
    assert rc == 0 and b"Error" not in log, log
    assert out.read_bytes() == FILES[name]


async def test_tftp_hpa_write_refused(server, tmp_path):
    tftp = need("tftp")
    host, port = server.address
    src = tmp_path / "upload"
    src.write_bytes(b"evil")
    rc, log = await run(tftp, "-m", "binary", host, str(port), "-c", "put", str(src), "SEP001122334455.cnf.xml")
    assert b"writes are not allowed" in log
    assert FILES["SEP001122334455.cnf.xml"] != b"evil"


# --- tshark -------------------------------------------------------------------------------------

TSHARK_HOST = "127.0.0.69"


def _bindable(host: str, port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


async def test_tshark_decodes_transfers_without_malformed_packets(tmp_path: Path):
    tshark = need("tshark")
    # tshark decodes TFTP on port 69 by itself; elsewhere it needs a decode-as hint.
    port = 69 if _bindable(TSHARK_HOST, 69) else 0
    pcap = tmp_path / "tftp.pcapng"
    capture = await asyncio.create_subprocess_exec(
        tshark, "-i", "lo", "-f", f"udp and host {TSHARK_HOST}", "-w", str(pcap), "-a", "duration:30",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        started = await asyncio.wait_for(_wait_capturing(capture), 15)
        if not started:
            pytest.skip("tshark could not capture on lo (no privileges?)")
        async with TftpServer(TSHARK_HOST, port, resolve, timeout=0.5) as srv:
            host, real_port = srv.address
            assert await tftp_get(host, real_port, "SEP001122334455.cnf.xml") == FILES["SEP001122334455.cnf.xml"]
            assert await tftp_get(host, real_port, "big.bin", blksize=1428, windowsize=8, tsize=True) == FILES["big.bin"]
            assert await tftp_get(host, real_port, "empty", blksize=512) == b""
            with pytest.raises(Exception):
                await tftp_get(host, real_port, "missing")
            await asyncio.sleep(0.5)  # let the last packets reach the capture
    finally:
        if capture.returncode is None:
            capture.send_signal(signal.SIGINT)  # stop only the capture we started
            try:
                await asyncio.wait_for(capture.wait(), 10)
            except asyncio.TimeoutError:
                capture.kill()
                await capture.wait()
    decode = [] if real_port == 69 else ["-d", f"udp.port=={real_port},tftp"]
    rc, malformed = await run(tshark, "-r", str(pcap), *decode, "-Y", "_ws.malformed || _ws.expert.severity >= error",
                              merge_stderr=False)
    assert rc == 0 and malformed.strip() == b"", malformed
    rc, opcodes = await run(tshark, "-r", str(pcap), *decode, "-Y", "tftp", "-T", "fields", "-e", "tftp.opcode",
                           merge_stderr=False)
    seen = {int(line) for line in opcodes.split() if line.strip().isdigit()}
    assert {1, 3, 4, 5, 6} <= seen, opcodes[:500]  # RRQ, DATA, ACK, ERROR, OACK all decoded


async def _wait_capturing(proc) -> bool:
    while True:
        line = await proc.stderr.readline()
        if not line:
            return False
        if b"Capture started" in line or b"Capturing on" in line:
            # "Capturing on" can come before dumpcap really listens; wait for the second line.
            if b"Capturing on" in line:
                try:
                    await asyncio.wait_for(proc.stderr.readline(), 2)
                except asyncio.TimeoutError:
                    pass
            # Keep draining stderr so tshark never blocks on a full pipe.
            asyncio.ensure_future(proc.stderr.read())
            await asyncio.sleep(0.3)
            return True
