"""The tftp-signer service as phones reach it, against tftpd-hpa serving the same files.

Ours: the tftp-signer service in its own process, as deployed (`python -m ccmsec_tftp_signer`):
the migrated SQLite publisher database with N devices (mixed mode), NATS JetStream for its events,
its resolver and its signing pool; the owners it asks for the mode, the devices and the CAPF
operations (issue 9 §5: CtlProvider/GetSecurityMode, CallManager/GetDeviceConfigs,
Capf/GetPendingOperations) are their real servicers on mutual TLS in a process of their own
(bench/tftp_owners.py). Every phone fetches its own `SEP<MAC>.cnf.xml.sgn`; then the
`CTLFile.tlv` and a firmware image. Baseline, same run: Debian's tftpd-hpa (`/usr/sbin/in.tftpd`)
serving byte-identical copies of the same files (fetched from ours first) from a directory, to the
same client (`ccmsec.aio.tftp.tftp_get`, uvloop, K in flight), rounds alternating.

Then, from a change committed to its new signed file served:
- one device: UPDATE one device row (and publish `config.changed`, as callmanager does after a
  commit), then fetch its `.sgn` until the new content arrives;
- every device: UPDATE all N rows in one transaction (and `config.changed` all), then every phone
  fetches its file until it has the new content; the time until the last one has it.

    uv run python bench/tftp_service.py --quick            # 1,000 devices
    uv run python bench/tftp_service.py                    # 10,000 devices
    uv run python bench/tftp_service.py --devices 2000 --rounds 3 --concurrency 64

Prints both rates, the ratios and the change-to-served times. Load average printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from ccmsec import firmware  # noqa: E402
from ccmsec.aio.tftp import tftp_get  # noqa: E402

HOST = "127.0.0.81"      # the tftp-signer
HPA_HOST = "127.0.0.82"  # tftpd-hpa
TFTPD = "/usr/sbin/in.tftpd"
TIME_LIMIT = 300.0
TFTP_PATH = "cluster1"


def free_port(host: str, kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def device_name(i: int) -> str:
    return f"SEP{0x0A0B00000000 + i:012X}"


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- set-up ---------------------------------------------------------------------------------------

async def populate(data: Path, devices: int) -> None:
    """The publisher database as callmanager and the CTL client leave it: N devices, mixed mode."""
    from sqlalchemy import insert

    from ccmsec.db.devices import Device, set_setting
    from ccmsec.runtime.database import open_database

    engine, db = await open_database(f"sqlite+aiosqlite:///{data / 'ccmsec.db'}")
    try:
        async with db() as session, session.begin():
            await set_setting(session, "security_mode", "mixed")
            await set_setting(session, "ctl_version", "1")
            rows = [{"name": device_name(i), "model": "7970", "security_mode": "encrypted", "config_version": 1,
                     "description": f"bench phone {i}"} for i in range(devices)]
            for i in range(0, len(rows), 1000):
                await session.execute(insert(Device), rows[i:i + 1000])
    finally:
        await engine.dispose()


def write_ctl(data: Path) -> None:
    """A real trust list (two tokens and the TFTP certificate), as the CTL client publishes it."""
    from ccmsec.formats.ctl import Role, build_ctl, record_from_certificate
    from ccmsec.pki.ca import create_ca, issue_with_new_key
    from ccmsec.pki.ca import name as dn
    from ccmsec.pki.servercert import ensure_server_certificate
    from ccmsec.pki.tokens import FileSigner

    tftp = ensure_server_certificate(data / "servers" / "tftp-signer", "tftp-signer", ip=HOST)
    tokens = [issue_with_new_key(create_ca(dn(f"bench token{i}")), dn(f"SAST{i}")) for i in range(2)]
    records = [record_from_certificate(t.cert, Role.TOKEN) for t in tokens]
    records.append(record_from_certificate(tftp.cert, Role.TFTP, "tftp-signer", HOST))
    folder = data / "tftp" / TFTP_PATH
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "CTLFile.tlv").write_bytes(build_ctl(records, FileSigner(tokens[0].cert, tokens[0].key),
                                                   int(time.time())))


def start_nats(data: Path) -> tuple[subprocess.Popen, str]:
    port = free_port("127.0.0.1")
    binary = str(Path(sys.executable).parent / "nats-server")
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data / "nats")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("nats-server did not start")


OWNERS = {"callmanager": "127.0.0.85", "capf": "127.0.0.86", "ctl-provider": "127.0.0.87"}


def start_owners(data: Path) -> subprocess.Popen:
    log = open(data / "owners.log", "ab")
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "tftp_owners.py"), str(data), json.dumps(OWNERS)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    line = proc.stdout.readline()  # "owners serving" once they listen
    if b"serving" not in line:
        proc.kill()
        raise RuntimeError(f"the owners did not start: see {data / 'owners.log'}")
    return proc


def start_service(data: Path, nats_url: str, tftp_port: int, grpc_port: int) -> subprocess.Popen:
    from ccmsec.runtime.identity import service_identity

    service_identity(data, "tftp-signer", "tftp-signer", HOST)  # as `ccmsec up` issues it before start
    env = dict(os.environ, CCMSEC_SERVICE="tftp-signer", CCMSEC_NODE="tftp-signer", CCMSEC_DATA_DIR=str(data),
               CCMSEC_HOST=HOST, CCMSEC_NATS_URL=nats_url, CCMSEC_TFTP_PORT=str(tftp_port),
               CCMSEC_GRPC_PORT=str(grpc_port), CCMSEC_METRICS_PORT="0", CCMSEC_TFTP_PATH=TFTP_PATH,
               CCMSEC_PEERS=json.dumps(OWNERS),
               CCMSEC_LOG_LEVEL="WARNING")
    log = open(data / "tftp-signer.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "ccmsec_tftp_signer"], env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log)


async def status(data: Path, grpc_port: int) -> dict[str, str]:
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import common_pb2, tftp_signer_pb2_grpc

    channel = secure_channel(client_identity(data, "bench"), HOST, grpc_port, "tftp-signer")
    try:
        reply = await tftp_signer_pb2_grpc.TftpSignerStub(channel).Status(common_pb2.Empty(), timeout=10)
        return dict(reply.details)
    finally:
        await channel.close()


async def wait_signed(data: Path, grpc_port: int, proc: subprocess.Popen, devices: int) -> float:
    started = time.monotonic()
    while time.monotonic() - started < TIME_LIMIT:
        if proc.poll() is not None:
            raise RuntimeError(f"tftp-signer exited ({proc.returncode}): see {data / 'tftp-signer.log'}")
        try:
            details = await status(data, grpc_port)
            if int(details.get("files_signed", "0")) >= devices:
                return time.monotonic() - started
        except Exception:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError("the service did not sign every device configuration in time")


# --- the client -----------------------------------------------------------------------------------

async def storm(host: str, port: int, names: list[str], concurrency: int, blksize: int | None,
                keep: dict | None = None) -> tuple[float, int]:
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def phone(name: str) -> None:
        nonlocal failures
        async with gate:
            try:
                data = await tftp_get(host, port, name, blksize=blksize, timeout=1.0, retries=5)
                if keep is not None:
                    keep[name] = data
            except Exception:
                failures += 1

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(phone(n) for n in names)), TIME_LIMIT)
    return time.perf_counter() - start, failures


RETRIES = {"timeouts": 0, "unavailable": 0}


async def until_new(port: int, name: str, old: bytes, blksize: int | None) -> bytes:
    """Fetch until the new file arrives. A transfer that timed out (the phone's request while its
    file was queued for signing, or either side descheduled too long on a loaded machine) is asked
    again, as a phone does; counted."""
    from ccmsec.aio.tftp import TftpError

    while True:
        try:
            data = await tftp_get(HOST, port, name, blksize=blksize, timeout=1.0, retries=5)
        except TftpError as exc:
            if "server busy" in str(exc):
                await asyncio.sleep(0.2)  # a phone told "busy" comes back a little later
            elif "not available now" in str(exc):
                RETRIES["unavailable"] += 1  # an owner did not answer in time: the phone asks again
                await asyncio.sleep(0.2)
                continue
            elif "timed out" not in str(exc):
                raise
            RETRIES["timeouts"] += 1
            continue
        if data != old:
            return data


def commit_change(db_file: Path, where: str) -> float:
    """Commit a hardening change as another process of callmanager would (its engine: the owner's
    commit counter, which tftp-signer's version check reads — ccmsec/db/commits.py); returns the
    time of the commit."""
    import sqlalchemy as sa

    from ccmsec.db.commits import counter_path, install_commit_counter

    engine = sa.create_engine(f"sqlite:///{db_file}", connect_args={"timeout": 30})
    counter = install_commit_counter(engine, counter_path(db_file.parent, "callmanager"))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE devices SET web_access = 1 - web_access, "
                                 "config_version = config_version + 1 " + where)
        return time.perf_counter()
    finally:
        engine.dispose()
        counter.close()


async def announce(bus, devices: list[str] | None) -> None:
    """config.changed, as callmanager publishes it after its commit."""
    from ccmsec.runtime.bus import make_event
    from ccmsec_proto import events_pb2

    body = events_pb2.ConfigChanged(devices=devices or [], all=devices is None)
    await bus.publish(make_event("config.changed", "callmanager", config_changed=body))


async def main(args: argparse.Namespace) -> int:
    if not Path(TFTPD).exists():
        print(f"{TFTPD} not found (apt-get install tftpd-hpa): no baseline", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tftp-service-"))
    data, hpa_dir = work / "data", work / "hpa"
    data.mkdir()
    hpa_dir.mkdir()
    work.chmod(0o755)
    hpa_dir.chmod(0o755)  # tftpd-hpa drops to its own user and must read the files
    procs: list[subprocess.Popen] = []
    try:
        print(f"load before: {load()}  (1/5/15-min averages, {os.cpu_count()} cores)")
        t = time.monotonic()
        await populate(data, args.devices)
        write_ctl(data)
        nats, nats_url = start_nats(data)
        procs.append(nats)
        procs.append(start_owners(data))
        tftp_port, grpc_port = free_port(HOST, socket.SOCK_DGRAM), free_port(HOST)
        service = start_service(data, nats_url, tftp_port, grpc_port)
        procs.append(service)
        built = await wait_signed(data, grpc_port, service, args.devices)
        print(f"{args.devices} devices in the database ({time.monotonic() - t:.1f} s set-up); the service "
              f"built and signed every configuration {built:.1f} s after start")

        configs = [f"{device_name(i)}.cnf.xml.sgn" for i in range(args.devices)]
        image = firmware.image_filename(firmware.load_name("7970"))
        files: dict[str, bytes] = {}
        elapsed, failed = await storm(HOST, tftp_port, configs + ["CTLFile.tlv", image], args.concurrency,
                                      args.blksize, files)
        if failed:
            raise RuntimeError(f"{failed} files could not be fetched from the service")
        for name, content in files.items():
            (hpa_dir / name).write_bytes(content)
        hpa_port = free_port(HPA_HOST, socket.SOCK_DGRAM)
        hpa = subprocess.Popen([TFTPD, "--foreground", "--listen", "--address", f"{HPA_HOST}:{hpa_port}",
                                "--secure", str(hpa_dir)], stdin=subprocess.DEVNULL)
        procs.append(hpa)
        for _ in range(50):
            try:
                await tftp_get(HPA_HOST, hpa_port, "CTLFile.tlv", timeout=0.2, retries=1)
                break
            except Exception:
                await asyncio.sleep(0.1)

        sizes = sorted(len(files[n]) for n in configs)
        cases = [("device configs (own SEP<MAC>.cnf.xml.sgn)", configs),
                 ("CTLFile.tlv", ["CTLFile.tlv"] * min(args.devices, args.ctl_fetches)),
                 (f"firmware {image} ({len(files[image]) // 1024} KiB)", [image] * args.firmware_fetches)]
        print(f"client: {args.concurrency} in flight, blksize {args.blksize or 512}, best of {args.rounds} "
              f"alternating rounds; configs {sizes[0]}-{sizes[-1]} bytes, CTL {len(files['CTLFile.tlv'])} bytes")
        ok = True
        for label, names in ([] if args.change_only else cases):
            best = {"ours": float("inf"), "hpa": float("inf")}
            failures = {"ours": 0, "hpa": 0}
            for _ in range(args.rounds):
                for who, host, port in (("ours", HOST, tftp_port), ("hpa", HPA_HOST, hpa_port)):
                    keep: dict | None = {} if who == "ours" else None
                    spent, bad = await storm(host, port, names, args.concurrency, args.blksize, keep)
                    best[who] = min(best[who], spent)
                    failures[who] += bad
                    if keep is not None and any(keep[n] != files[n] for n in keep):
                        raise RuntimeError("the service served different bytes within one run")
            ours, theirs = len(names) / best["ours"], len(names) / best["hpa"]
            print(f"{label}: {len(names)} fetches  tftp-signer {ours:7.0f}/s  tftpd-hpa {theirs:7.0f}/s  "
                  f"ratio {ours / theirs:.2f}  (failed: {failures['ours']} / {failures['hpa']})  load {load()}")
            ok = ok and failures["ours"] == 0

        # --- change committed -> new signed file served -------------------------------------------
        from ccmsec.runtime.bus import EventBus

        db_file = data / "ccmsec.db"
        bus = EventBus(nats_url, "bench", role="callmanager")  # as callmanager announces it
        await bus.connect()
        try:
            one = configs[len(configs) // 2]
            committed = commit_change(db_file, f"WHERE name = '{one[:15]}'")
            await announce(bus, [one[:15]])
            await asyncio.wait_for(until_new(tftp_port, one, files[one], args.blksize), 30)
            print(f"one device: change committed -> its new signed file served in "
                  f"{(time.perf_counter() - committed) * 1000:.1f} ms (the first request after the commit)")
            await asyncio.sleep(2)
            current = dict(files)
            current[one] = await tftp_get(HOST, tftp_port, one, blksize=args.blksize)
            gate = asyncio.Semaphore(args.concurrency)

            async def phone(name: str) -> None:
                async with gate:
                    await until_new(tftp_port, name, current[name], args.blksize)
            committed = commit_change(db_file, "")
            await announce(bus, None)
            await asyncio.wait_for(asyncio.gather(*(phone(n) for n in configs)), TIME_LIMIT)
            spent = time.perf_counter() - committed
        finally:
            await bus.close()
        print(f"all {args.devices} devices: change committed -> every new signed file served in {spent:.2f} s "
              f"({args.devices / spent:.0f} files/s, every phone fetching at once; {RETRIES['timeouts']} "
              f"requests timed out and {RETRIES['unavailable']} were refused 'not available now' (an owner "
              f"slow to answer) and were asked again)  load {load()}")
        # What bounds that: RSA signing. The raw rate, same key, same payload size, same pool size.
        sys.path.insert(0, str(REPO / "bench"))
        from resign_storm import raw_rate

        from ccmsec.pki.servercert import ensure_server_certificate
        from ccmsec.pki.tokens import FileSigner

        signer = FileSigner.from_issued(ensure_server_certificate(data / "servers" / "tftp-signer", "tftp-signer",
                                                                  ip=HOST))
        from ccmsec.formats.sgn import parse_sgn

        payload = parse_sgn(files[configs[0]]).payload
        raw = await raw_rate(signer, [payload] * args.devices, os.cpu_count() or 2, 50)
        print(f"raw RSA-2048 signatures of the same size, same pool size, now: {raw:.0f}/s -> "
              f"{args.devices / raw:.2f} s for {args.devices}  load {load()}")
        details = await status(data, grpc_port)
        print("service: " + ", ".join(f"{k}={details.get(k)}" for k in (
            "cache_hits", "cache_misses", "files_signed", "revalidations", "revalidation_seconds",
            "version_checks", "device_builds", "point_reads", "point_batches", "owner_snapshots", "owner_failures")))
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):  # only what this bench started, by PID
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="1,000 devices, one round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--blksize", type=int, default=None)
    parser.add_argument("--ctl-fetches", type=int, default=2000)
    parser.add_argument("--firmware-fetches", type=int, default=100)
    parser.add_argument("--change-only", action="store_true", help="only the change-to-served times")
    args = parser.parse_args()
    if args.quick:
        args.devices = 1000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if not 1 <= args.devices <= 100_000 or not 1 <= args.concurrency <= 512:
        parser.error("devices must be 1..100000 and concurrency 1..512")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    import uvloop

    sys.exit(uvloop.run(main(arguments)))
