"""LSC issuance rate: N phones enrolling concurrently over real TLS against the CAPF server.

Ours:      whole CAPF installs per second (TLS handshake, auth, key-gen exchange, LSC signing,
           store-certificate, every SQLite transaction of the operations store).
Baseline:  raw `cryptography` certificate signing per second for the same key type, same run.
The CAPF certificate is the service's: RSA-2048 by default (`ensure_capf_ca`), so each handshake
and each LSC costs an RSA-2048 signature, as in the running capf service.
The phones run in a separate process and generate their keys before the clock starts: a real
phone generates its key and does its half of TLS on its own CPU, so those costs are not the
server's. The server side is what the capf service runs, on uvloop like the service.

    uv run python bench/capf_issue.py --quick          # 40 phones
    uv run python bench/capf_issue.py                  # 200 phones
    uv run python bench/capf_issue.py --key rsa2048 --pool 2
    uv run python bench/capf_issue.py --capf-key ec256   # an EC CAPF certificate instead
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from ccmsec.aio.capf import CapfServer, capf_client_run, capf_phone_ssl_context, capf_server_ssl_context
from ccmsec.db.capf import SqlCapfStore, schedule_operation
from ccmsec.pki.ca import name
from ccmsec.pki.lsc import LscIssuer, ensure_capf_ca, issuing_pool
from ccmsec.runtime.database import open_database
from ccmsec.wire.capf import CapfPhoneSession, KeySpec, PhoneCredentials, Reason


def raw_signing_rate(capf, keys, seconds: float) -> float:
    """Bare CertificateBuilder + sign with the CAPF key: the floor any issuer must pay."""
    now = dt.datetime.now(dt.timezone.utc)
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline and count < 100_000:
        (
            x509.CertificateBuilder()
            .subject_name(name(f"SEP{count:012X}")).issuer_name(capf.cert.subject)
            .public_key(keys[count % len(keys)].public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=365))
            .sign(capf.key, hashes.SHA256())
        )
        count += 1
    return count / (time.perf_counter() - start)


def _phones_process(host: str, port: int, capf_pem: bytes, devices: list[str], key: str, conn) -> None:
    """The phones, in their own process (a real phone enrolls on its own CPU): keys and TLS
    client work are theirs. Generates the keys, says ready, waits for go, enrolls all at once."""
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    capf_cert = x509.load_pem_x509_certificate(capf_pem)
    spec = KeySpec.parse(key)
    keys = [spec.generate() for _ in devices]
    conn.send("ready")
    conn.recv()

    async def run() -> tuple[float, int]:
        ctx = capf_phone_ssl_context(capf_cert)
        sessions = [CapfPhoneSession(PhoneCredentials(d, capf_certificate=capf_cert, pending_key=k))
                    for d, k in zip(devices, keys)]
        start = time.perf_counter()
        async with asyncio.timeout(55):
            reasons = await asyncio.gather(*(capf_client_run(host, port, ctx, s, timeout=50) for s in sessions),
                                           return_exceptions=True)
        return time.perf_counter() - start, sum(1 for r in reasons if r == Reason.OK)

    conn.send(runner(run()))


async def enroll_all(pki: Path, capf, phones: int, pool: int, db_url: str, inline_keys=None) -> tuple[float, int]:
    """The server side as the capf service runs it (SqlCapfStore over the migrated publisher DB,
    LscIssuer, CapfServer); the phones in another process unless inline_keys are given."""
    engine, factory = await open_database(db_url)  # the services' engine: WAL, alembic upgrade heads
    devices = [f"SEP{i:012X}" for i in range(phones)]
    for d in devices:
        await schedule_operation(factory, d, "install", key_type=args.key)
    issuer = LscIssuer(capf, executor=issuing_pool(capf, pool)) if pool else LscIssuer(capf)
    server = CapfServer("127.0.0.1", 0, capf_server_ssl_context(pki / "capf.crt", pki / "capf.key"),
                        SqlCapfStore(factory), issuer, session_timeout=60, max_connections=phones + 8)
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        if inline_keys is not None:
            phone_ctx = capf_phone_ssl_context(capf.cert)
            sessions = [CapfPhoneSession(PhoneCredentials(d, capf_certificate=capf.cert, pending_key=inline_keys[i]))
                        for i, d in enumerate(devices)]
            start = time.perf_counter()
            async with asyncio.timeout(55):
                reasons = await asyncio.gather(*(
                    capf_client_run("127.0.0.1", server.port, phone_ctx, s, timeout=50) for s in sessions),
                    return_exceptions=True)
            return time.perf_counter() - start, sum(1 for r in reasons if r == Reason.OK)
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_phones_process, args=("127.0.0.1", server.port, capf.pem, devices,
                                                         args.key, theirs), daemon=True)
        proc.start()
        try:
            if not await loop.run_in_executor(None, ours.poll, 50) or ours.recv() != "ready":
                raise SystemExit("phone process did not get ready")
            ours.send("go")
            if not await loop.run_in_executor(None, ours.poll, 58):
                raise SystemExit("phone process did not finish in time")
            return ours.recv()
        finally:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    finally:
        await server.close()
        issuer.close()
        await engine.dispose()


def main() -> int:
    global args
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 phones instead of 200")
    parser.add_argument("--phones", type=int, default=None)
    parser.add_argument("--key", default="ec256", choices=["ec256", "rsa1024", "rsa2048"])
    parser.add_argument("--capf-key", default="rsa2048", choices=["rsa2048", "ec256"],
                        help="the CAPF certificate's key (the service creates RSA-2048)")
    parser.add_argument("--pool", type=int, default=0, help="sign in a process pool of N workers (0: inline)")
    parser.add_argument("--phones-inline", action="store_true",
                        help="run the phones' TLS in the server's process too (the old, pessimistic set-up)")
    args = parser.parse_args()
    phones = args.phones or (40 if args.quick else 200)
    phones = max(1, min(phones, 1000))

    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        capf = ensure_capf_ca(pki, key_kind=args.capf_key)
        spec = KeySpec.parse(args.key)
        keys = [spec.generate() for _ in range(min(phones, 200))]
        baseline = raw_signing_rate(capf, keys, 2.0 if args.quick else 4.0)
        try:
            import uvloop  # the services run on uvloop (ccmsec.runtime.service.run_service)
            runner = uvloop.run
        except ImportError:  # pragma: no cover
            runner = asyncio.run
        inline = [spec.generate() for _ in range(phones)] if args.phones_inline else None
        elapsed, ok = runner(enroll_all(pki, capf, phones, args.pool,
                                        f"sqlite+aiosqlite:///{Path(tmp) / 'ccmsec.db'}", inline))
    ours = ok / elapsed if elapsed else 0.0
    print(f"phones={phones} key={args.key} capf-key={args.capf_key} pool={args.pool} installed={ok}/{phones} in {elapsed:.2f}s")
    print(f"ours:     {ours:10.1f} LSC installs/s over TLS (end to end, SQLite store, {'phones in-process' if args.phones_inline else 'phones in another process'})")
    print(f"baseline: {baseline:10.1f} raw cryptography certificate signings/s (CAPF {args.capf_key} key, phone key {args.key})")
    print(f"ratio:    {ours / baseline if baseline else 0.0:10.3f}")
    return 0 if ok == phones else 1


if __name__ == "__main__":
    sys.exit(main())
