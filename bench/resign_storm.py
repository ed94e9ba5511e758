"""Re-signing storm: every device configuration signed again after a cluster-wide change.

Ours: the tftp-signer's real path — ask every device (and pending CAPF operations, pools, the mode)
of its owners (issue 9 §5: call control's, CAPF's and the CTL Provider's real servicers on mutual TLS,
tests/tftpowners.py, over a migrated SQLite publisher database), build each SEP<MAC>.cnf.xml, sign it as a `.sgn` in the process
pool (every core) and keep it in the signed-file store (caching on: memory; `--disk`: caching off,
files written atomically). Baseline, same run, same cores, same pool size: raw RSA-2048 PKCS#1 v1.5
signatures (SHA-1) over payloads of the same size with `cryptography` — the cost floor of signing.

    uv run python bench/resign_storm.py --quick      # 1,000 devices, < 60 s
    uv run python bench/resign_storm.py              # 10,000 devices
    uv run python bench/resign_storm.py --disk       # caching off (signed files on disk)

Prints both rates (files/s), the ratio ours/raw and the wall time of the storm.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "services" / "tftp-signer"))

from ccmsec.formats.ctl import Digest  # noqa: E402
from ccmsec.pki.servercert import ensure_server_certificate  # noqa: E402
from ccmsec.pki.tokens import FileSigner  # noqa: E402

TIME_LIMIT = 300.0


def raw_sign_batch(signer: FileSigner, payloads: list[bytes]) -> int:
    for payload in payloads:
        signer.sign(payload, Digest.SHA1)
    return len(payloads)


async def raw_rate(signer: FileSigner, payloads: list[bytes], workers: int, chunk: int) -> float:
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, raw_sign_batch, signer, []) for _ in range(workers)))
        started = time.perf_counter()
        chunks = [payloads[i:i + chunk] for i in range(0, len(payloads), chunk)]
        done = await asyncio.wait_for(asyncio.gather(
            *(loop.run_in_executor(pool, raw_sign_batch, signer, c) for c in chunks)), TIME_LIMIT)
        elapsed = time.perf_counter() - started
    assert sum(done) == len(payloads)
    return len(payloads) / elapsed


async def ours(data: Path, devices: int, disk: bool, workers: int, chunk: int):
    from sqlalchemy import insert

    from ccmsec.db.devices import Device, set_setting, utcnow
    from ccmsec.runtime.database import open_database
    from ccmsec.runtime.identity import service_identity
    from ccmsec_tftp_signer.content import ClusterEndpoints
    from ccmsec_tftp_signer.devicefiles import ChangeDetector
    from ccmsec_tftp_signer.files import TftpContent
    from tests.tftpowners import tftp_owners
    from ccmsec_tftp_signer.layout import ClusterPath, Layout
    from ccmsec_tftp_signer.signing import SignedStore, SigningPool

    engine, db = await open_database(f"sqlite+aiosqlite:///{data / 'ccmsec.db'}")
    now = utcnow()
    rows = [{"name": f"SEP{0x00AA00000000 + i:012X}", "model": ("7970", "7960", "7940")[i % 3],
             "security_mode": ("encrypted", "authenticated", "non-secure")[i % 3], "description": "",
             "device_pool": None, "web_access": i % 2 == 0, "pc_port": True, "settings_access": True,
             "garp": i % 5 != 0, "voice_vlan_access": True, "config_version": 1,
             "created_at": now, "updated_at": now} for i in range(devices)]
    async with db() as s, s.begin():
        for i in range(0, len(rows), 1000):
            await s.execute(insert(Device), rows[i:i + 1000])
        await set_setting(s, "security_mode", "mixed")
    issued = ensure_server_certificate(data / "servers" / "tftp-signer", "tftp-signer", ip="127.0.0.1")
    signer = FileSigner.from_issued(issued)
    pool = SigningPool(signer, workers=workers, chunk=chunk)
    endpoints = ClusterEndpoints(callmanagers=("127.0.0.5",), capf_host="127.0.0.3", srst_host="127.0.0.8")
    store = SignedStore(pool, data / "tftp", caching=not disk)
    from ccmsec.db.commits import WATCHED, counter_path

    detector = ChangeDetector(engine, [counter_path(data, role) for role in WATCHED])
    try:
        async with tftp_owners(data, f"sqlite+aiosqlite:///{data / 'ccmsec.db'}") as owners:
            reads = owners.reads(service_identity(data, "tftp-signer", "tftp-signer", "127.0.0.1"))
            content = TftpContent(data / "tftp", Layout(ClusterPath("local", "cluster1")), reads, endpoints,
                                  store, signer, detector)
            await pool.warm_up()
            started = time.perf_counter()
            count = await asyncio.wait_for(content.resign_devices(None, force=True), TIME_LIMIT)
            elapsed = time.perf_counter() - started
            sample = content.devices.xml(rows[0]["name"])
            await owners.close_reads()
    finally:
        detector.close()
        pool.close()
        await engine.dispose()
    assert count == devices, (count, devices)
    return count / elapsed, elapsed, signer, sample


async def main_async(args) -> int:
    devices = 1000 if args.quick and args.devices is None else (args.devices or 10_000)
    workers = args.workers or os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="resign-storm-") as tmp:
        rate, elapsed, signer, sample = await ours(Path(tmp), devices, args.disk, workers, args.chunk)
        payloads = [sample[:-8] + f"{i:08d}".encode() for i in range(devices)]
        raw = await raw_rate(signer, payloads, workers, args.chunk)
    mode = "caching off (disk)" if args.disk else "caching on (memory)"
    print(f"re-sign storm: {devices} device configs, {workers} worker processes, {mode}")
    print(f"  ours  (owners asked + cnf.xml + .sgn + store): {rate:10.1f} files/s  ({elapsed:.2f} s)")
    print(f"  raw RSA-2048 PKCS#1 v1.5 SHA-1 signatures: {raw:10.1f} sig/s")
    print(f"  ratio ours/raw: {rate / raw:.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 devices")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--disk", action="store_true", help="caching off: signed files written to disk")
    parser.add_argument("--workers", type=int, help="signing processes (default: every core)")
    parser.add_argument("--chunk", type=int, default=50, help="files per pool task")
    args = parser.parse_args()
    if args.devices is not None and not 1 <= args.devices <= 100_000:
        parser.error("--devices must be 1..100000")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
