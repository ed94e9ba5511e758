"""CAPF installs per second, through the running capf service, against a plain TLS baseline.

Ours: a local cluster (`ccmsec up`), devices added through the HTTPS administration API, CAPF
activated and N installs scheduled over gRPC, then N phones (another process, each phone on its
own loopback address, keys generated before the clock starts as a phone does on its own CPU)
enrol over TLS on the CAPF port: handshake with the CAPF certificate, auth request/response,
look-up in the publisher database, key-generate exchange, LSC signed with the real CAPF key,
issuance recorded, store request/response, completion recorded, end session. The capf service
runs as deployed, with its `acceptor_processes` (default: one per core).

Baseline, same run: a plain TLS server (asyncio + uvloop, `ssl`), as many processes on one
port (SO_REUSEPORT) as CAPF has acceptors, doing per connection the same handshake with the same
certificate and key, reading the phone's public key and answering with one certificate signed
by the same CAPF key (`ccmsec.pki.lsc.issue_lsc`, the LSC profile). The same phone process drives
it with the same TLS context, addresses and concurrency.

    uv run python bench/capf_issue.py --quick        # 200 phones, one run each
    uv run python bench/capf_issue.py                # 1000 phones, three runs each: median and range
    uv run python bench/capf_issue.py --acceptors 0  # the service process serves the port itself
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.aio.capf import capf_client_run, capf_phone_ssl_context
from ccmsec.wire.capf import CapfPhoneSession, KeySpec, PhoneCredentials, Reason, spki_der

PHONE_TIMEOUT = 60.0
T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s, load {os.getloadavg()[0]:5.2f}] {text}", flush=True)


def _loop_runner():
    try:
        import uvloop
        return uvloop.run
    except ImportError:  # pragma: no cover
        return asyncio.run


def _source(i: int) -> str:
    """Each phone its own loopback address (phones are not behind one NAT)."""
    return f"127.77.{i // 250}.{i % 250 + 1}"


# ---------------------------------------------------------------------------------------------
# The phones (their own process)


def phones_process(conn, mode: str, host: str, port: int, capf_pem: bytes, devices: list[str], key: str,
                   concurrency: int, driver: str = "asyncio") -> None:
    capf_cert = x509.load_pem_x509_certificate(capf_pem)
    spec = KeySpec.parse(key)
    keys = [spec.generate() for _ in devices]
    conn.send("ready")
    while (command := conn.recv()) == "go":
        if driver == "threads":
            conn.send(_drive_threads(mode, host, port, capf_cert, devices, keys, concurrency))
        else:
            conn.send(_loop_runner()(_drive(mode, host, port, capf_cert, devices, keys, concurrency)))


def _drive_threads(mode, host, port, capf_cert, devices, keys, concurrency):
    """Phones as threads on blocking sockets: the TLS handshake runs in C without the GIL, so
    the load generator takes less of the machine the server runs on. The same sans-IO phone
    session as phone-sim's asyncio client."""
    from ccmsec.wire.capf import KeyGenerationRequested
    ctx = capf_phone_ssl_context(capf_cert)
    errors: list[str] = []

    def capf_phone(i: int) -> bool:
        phone = PhoneCredentials(devices[i], capf_certificate=capf_cert, pending_key=keys[i])
        session = CapfPhoneSession(phone, timeout=PHONE_TIMEOUT)
        with socket.create_connection((host, port), timeout=PHONE_TIMEOUT, source_address=(_source(i), 0)) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            session.start(time.monotonic())
            while not session.finished:
                data = tls.recv(16384)
                now = time.monotonic()
                events = session.receive_data(data, now) if data else session.receive_eof(now)
                for event in events:
                    if isinstance(event, KeyGenerationRequested):
                        session.key_generated(event.spec.generate(), now)
                out = session.data_to_send()
                if out:
                    tls.sendall(out)
        return session.end_reason == Reason.OK and phone.lsc_cert is not None

    def baseline_phone(i: int) -> bool:
        with socket.create_connection((host, port), timeout=PHONE_TIMEOUT, source_address=(_source(i), 0)) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            request = devices[i].encode() + b"\0" + spki_der(keys[i].public_key())
            tls.sendall(struct.pack(">H", len(request)) + request)
            head = b""
            while len(head) < 2:
                head += tls.recv(2 - len(head))
            (size,) = struct.unpack(">H", head)
            body = b""
            while len(body) < size:
                chunk = tls.recv(size - len(body))
                if not chunk:
                    raise ConnectionError("closed early")
                body += chunk
            cert = x509.load_der_x509_certificate(body)
            return cert.public_key().public_numbers() == keys[i].public_key().public_numbers()

    one = capf_phone if mode == "capf" else baseline_phone

    def guarded(i: int) -> bool:
        try:
            return one(i)
        except Exception as exc:
            errors.append(repr(exc))
            return False

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(guarded, range(len(devices))))
    return time.perf_counter() - start, sum(results), errors[:3]


async def _drive(mode, host, port, capf_cert, devices, keys, concurrency) -> tuple[float, int, list[str]]:
    ctx = capf_phone_ssl_context(capf_cert)
    gate = asyncio.Semaphore(concurrency)
    errors: list[str] = []

    async def capf_phone(i: int) -> bool:
        phone = PhoneCredentials(devices[i], capf_certificate=capf_cert, pending_key=keys[i])
        async with gate:
            reason = await capf_client_run(host, port, ctx, CapfPhoneSession(phone, timeout=PHONE_TIMEOUT),
                                           timeout=PHONE_TIMEOUT, local_addr=(_source(i), 0))
        return reason == Reason.OK and phone.lsc_cert is not None

    async def baseline_phone(i: int) -> bool:
        async with gate:
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host,
                                                           local_addr=(_source(i), 0))
            try:
                request = devices[i].encode() + b"\0" + spki_der(keys[i].public_key())
                writer.write(struct.pack(">H", len(request)) + request)
                (size,) = struct.unpack(">H", await reader.readexactly(2))
                cert = x509.load_der_x509_certificate(await reader.readexactly(size))
                return cert.public_key().public_numbers() == keys[i].public_key().public_numbers()
            finally:
                writer.close()

    one = capf_phone if mode == "capf" else baseline_phone

    async def guarded(i: int) -> bool:
        try:
            return await one(i)
        except Exception as exc:  # counted, and the first few shown: a benchmark must not hide failures
            errors.append(repr(exc))
            return False

    start = time.perf_counter()
    results = await asyncio.gather(*(guarded(i) for i in range(len(devices))))
    return time.perf_counter() - start, sum(results), errors[:3]


# ---------------------------------------------------------------------------------------------
# The baseline server (its own processes, one port)


def baseline_server_process(conn, host: str, port: int, pki: str) -> None:
    from ccmsec.pki.ca import load_pair
    from ccmsec.pki.lsc import issue_lsc

    capf = load_pair(Path(pki) / "capf.crt", Path(pki) / "capf.key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(Path(pki) / "capf.crt"), str(Path(pki) / "capf.key"))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (size,) = struct.unpack(">H", await reader.readexactly(2))
            device, _, spki = (await reader.readexactly(size)).partition(b"\0")
            cert = issue_lsc(capf, device.decode(), spki).public_bytes(serialization.Encoding.DER)
            writer.write(struct.pack(">H", len(cert)) + cert)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, host, port, ssl=ctx, reuse_port=True, backlog=1024)
        conn.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        server.close()

    _loop_runner()(main())


# ---------------------------------------------------------------------------------------------
# The cluster side


def start_cluster(data: Path, devices: list[str], acceptors: int | None) -> dict:
    from ccmsec.adminclient import AdminClient, discover
    from ccmsec.cluster import runner

    say(f"starting a local cluster in {data} ...")
    runner.up(data, quiet=True)
    import json

    endpoints = json.loads((data / "run" / "endpoints.json").read_text())
    asyncio.run(_configure_capf(data, endpoints, acceptors))
    say(f"adding {len(devices)} devices through the administration API ...")

    def add(chunk: list[str]) -> None:
        # A long timeout: on a loaded shared machine (load 25) one add took over the default and the
        # whole run was lost; a retry could add a device twice.
        with AdminClient(discover(data), timeout=180) as admin:
            for name in chunk:
                admin.add_device(name, "7960")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(add, [devices[i::8] for i in range(8)]))
    asyncio.run(_schedule(data, endpoints, devices))
    return endpoints


async def _capf_stub(data: Path, endpoints: dict):
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import capf_pb2_grpc

    svc = endpoints["services"]["capf"]
    channel = secure_channel(client_identity(data), svc["host"], svc["grpc_port"], "capf")
    return channel, capf_pb2_grpc.CapfStub(channel)


async def _configure_capf(data: Path, endpoints: dict, acceptors: int | None) -> None:
    from ccmsec_proto import capf_pb2, common_pb2, ctl_provider_pb2

    channel, stub = await _capf_stub(data, endpoints)
    async with channel:
        await stub.Activate(ctl_provider_pb2.ActivateRequest(active=True), timeout=10)
        if acceptors is not None:
            await stub.SetServiceParameters(capf_pb2.CapfParametersRequest(
                values={"acceptor_processes": str(acceptors)}), timeout=10)  # RST-8: CAPF restarts
            await asyncio.sleep(2)
        deadline = time.monotonic() + 90
        while True:
            try:
                status = await stub.Status(common_pb2.Empty(), timeout=3)
                running = int(status.details.get("capf_acceptor_processes", "0"))
                if status.activated and (acceptors is None or running == acceptors):
                    return
            except Exception:  # noqa: BLE001 - restarting
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the capf service did not come back with the asked acceptor processes")
            await asyncio.sleep(0.5)


async def _schedule(data: Path, endpoints: dict, devices: list[str]) -> None:
    from ccmsec.domain import CapfAuthMode, CapfOperation
    from ccmsec_proto import capf_pb2

    say(f"scheduling {len(devices)} installs over gRPC ...")
    channel, stub = await _capf_stub(data, endpoints)
    gate = asyncio.Semaphore(16)

    async def one(name: str) -> None:
        async with gate:
            await stub.ScheduleOperation(capf_pb2.CapfSchedule(
                device=name, operation=CapfOperation.INSTALL.to_proto(), auth_mode=CapfAuthMode.NULL.to_proto(),
                key_type="ec256"), timeout=30)

    async with channel:
        await asyncio.gather(*(one(n) for n in devices))


def capf_status(data: Path, endpoints: dict) -> dict[str, str]:
    async def ask() -> dict[str, str]:
        from ccmsec_proto import common_pb2
        channel, stub = await _capf_stub(data, endpoints)
        async with channel:
            return dict((await stub.Status(common_pb2.Empty(), timeout=10)).details)
    return asyncio.run(ask())


def capf_acceptors(data: Path, endpoints: dict) -> int:
    return int(capf_status(data, endpoints).get("capf_acceptor_processes", "0"))


def store_rounds(data: Path, endpoints: dict) -> tuple[int, int] | None:
    """(database rounds, look-ups and writes they carried) so far, if the service says."""
    details = capf_status(data, endpoints)
    if "capf_store_rounds" not in details:
        return None
    return int(details["capf_store_rounds"]), int(details["capf_store_round_items"])


def wait_quiet(limit: float = 30.0) -> bool:
    """Let the cluster's reaction to what came before (schedules, installs: signed
    configurations, events) finish, so that neither side pays for the other's aftermath."""
    def busy() -> tuple[int, int]:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        t0, i0 = busy()
        time.sleep(1.0)
        t1, i1 = busy()
        if (i1 - i0) / max(1, t1 - t0) > 0.6:
            return True
    say(f"the machine did not get quiet (less than 60 % idle) within {limit:.0f} s; measuring anyway")
    return False


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_ROLES = (("ccmsec_capf.acceptor", "acceptors"), ("ccmsec_capf", "capf"), ("ccmsec_callmanager", "callmanager"),
          ("ccmsec_tftp_signer", "tftp-signer"))


def cpu_by_role(roots: dict[int, str]) -> dict[str, float]:
    """CPU seconds used so far by every process under `roots` (pid -> role of the tree: the
    cluster's supervisor, the phones, the baseline servers), by role: the capf service, its
    acceptors, call control, tftp-signer, the rest of the cluster, phones, baseline servers.
    Only this run's processes: other users' work on the machine is not in it."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    out: dict[str, float] = {}
    for pid in stats:
        node, role = pid, None
        while node > 1 and role is None:
            role = roots.get(node)
            node = stats.get(node, (0, 0.0))[0]
        if role is None:
            continue
        if role == "cluster":
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            role = next((name for marker, name in _ROLES if marker in cmd), "cluster (other)")
        out[role] = out.get(role, 0.0) + stats[pid][1]
    return out


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 phones, one run of each")
    parser.add_argument("--phones", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=64, help="phones in flight at once")
    parser.add_argument("--acceptors", type=int, default=None,
                        help="set the capf service's acceptor_processes (default: the service's own default)")
    parser.add_argument("--runs", type=int, default=None, help="runs of each (default 3, 1 with --quick)")
    parser.add_argument("--phone-driver", choices=("asyncio", "threads"), default="asyncio",
                        help="phones as asyncio tasks (phone-sim's client) or as threads on blocking sockets")
    args = parser.parse_args()
    phones = max(10, min(args.phones or (200 if args.quick else 1000), 4000))
    runs = args.runs or (1 if args.quick else 3)
    if not os.path.exists("/proc/stat"):
        raise SystemExit("this benchmark needs Linux (/proc, SO_REUSEPORT, loopback addresses)")

    data = Path(tempfile.mkdtemp(prefix="ccmsec-bench-capf-"))
    ctx = multiprocessing.get_context("spawn")
    procs = []
    try:
        load_before = os.getloadavg()
        # Fresh devices for every CAPF run (an operation installs once); the baseline takes the
        # names of the same run's phones (it needs no device).
        devices = [f"SEP{0xB0000000 + i:012X}" for i in range(phones * runs)]
        endpoints = start_cluster(data, devices, args.acceptors)
        acceptors = capf_acceptors(data, endpoints)
        capf_svc = endpoints["services"]["capf"]
        capf_pem = (data / "pki" / "capf.crt").read_bytes()

        # Baseline servers: as many processes as CAPF serves its port with (at least one).
        base_host = capf_svc["host"]
        base_port = free_port(base_host)
        for _ in range(max(1, acceptors)):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=baseline_server_process, args=(theirs, base_host, base_port, str(data / "pki")),
                               daemon=True)
            proc.start()
            procs.append((proc, ours))
            if not ours.poll(30) or ours.recv() != "ready":
                raise SystemExit("baseline server did not start")

        from ccmsec.cluster import runner
        roots = {runner.supervisor_pid(data) or 0: "cluster", **{proc.pid: "baseline servers" for proc, _ in procs}}
        # The cluster's own aftermath of the set-up (tftp-signer building and signing a configuration
        # for each new device, its owners answering) is neither side's: wait for it, longer than
        # between phases.
        say("waiting for the cluster to finish reacting to the set-up ...")
        wait_quiet(240.0)
        results: dict[str, list[float]] = {"capf": [], "baseline": []}
        loads: list[float] = []
        for run in range(runs):
            # Alternate which side goes first, so that neither always runs on a warmer or
            # busier machine.
            for mode in (("capf", "baseline") if run % 2 == 0 else ("baseline", "capf")):
                chunk = devices[run * phones:(run + 1) * phones]
                wait_quiet()
                rounds_before = store_rounds(data, endpoints) if mode == "capf" else None
                say(f"run {run + 1} {mode:8}: starting")
                port = int(capf_svc["capf_port"]) if mode == "capf" else base_port
                host = capf_svc["host"]
                ours, theirs = ctx.Pipe()
                phone_proc = ctx.Process(target=phones_process, args=(theirs, mode, host, port, capf_pem, chunk,
                                                                      "ec256", args.concurrency, args.phone_driver),
                                         daemon=True)
                phone_proc.start()
                if not ours.poll(120) or ours.recv() != "ready":
                    raise SystemExit("phone process did not get ready")
                before = cpu_by_role({**roots, phone_proc.pid: "phones"})
                ours.send("go")
                if not ours.poll(PHONE_TIMEOUT * 4):
                    raise SystemExit(f"{mode} run did not finish")
                elapsed, ok, errors = ours.recv()
                after = cpu_by_role({**roots, phone_proc.pid: "phones"})
                ours.send("stop")
                phone_proc.join(10)
                rate = ok / elapsed if elapsed else 0.0
                results[mode].append(rate)
                loads.append(os.getloadavg()[0])
                say(f"run {run + 1} {mode:8}: {ok}/{phones} in {elapsed:6.2f} s = {rate:7.1f}/s"
                    + (f"  errors: {errors}" if errors else ""))
                used = {role: after[role] - before.get(role, 0.0) for role in after}
                say(f"run {run + 1} {mode:8}: CPU ms per {'install' if mode == 'capf' else 'connection'}: "
                    + ", ".join(f"{role} {1000 * t / max(1, ok):.2f}" for role, t in sorted(used.items())
                                if t > 0.00005 * max(1, ok)))
                if rounds_before is not None and (rounds_after := store_rounds(data, endpoints)) is not None:
                    n, items = rounds_after[0] - rounds_before[0], rounds_after[1] - rounds_before[1]
                    say(f"run {run + 1} capf    : the single writer ran {n} database rounds for {items} "
                        f"look-ups and writes ({items / max(1, n):.1f} per round, {n / max(1, ok):.2f} per install)")
                if ok != phones:
                    raise SystemExit(f"{mode}: only {ok} of {phones} phones succeeded")
        load_after = os.getloadavg()
    finally:
        for proc, pipe in procs:
            try:
                pipe.send("stop")
            except (BrokenPipeError, OSError):
                pass
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        from ccmsec.cluster import runner
        runner.down(data, quiet=True)
        shutil.rmtree(data, ignore_errors=True)

    ours, base = statistics.median(results["capf"]), statistics.median(results["baseline"])
    ratios = [c / b for c, b in zip(results["capf"], results["baseline"]) if b]

    def span(values: list[float], fmt: str) -> str:
        return f"{min(values):{fmt}}–{max(values):{fmt}}" if len(values) > 1 else f"{values[0]:{fmt}}"

    print(f"phones={phones} per run, concurrency={args.concurrency} phone-key=ec256 capf-key=rsa2048 "
          f"acceptor_processes={acceptors} cpus={os.cpu_count()} runs={runs} (median, range over runs)")
    print(f"load average (1 min) before {load_before[0]:.2f}, after each phase {span(loads, '.2f')}, "
          f"after {load_after[0]:.2f}")
    print(f"ours:     {ours:8.1f} CAPF installs/s through the capf service (TLS 3804, SQLite, events)"
          f"  [{span(results['capf'], '.1f')}]")
    print(f"baseline: {base:8.1f} plain TLS connections/s, each one handshake + one LSC signature, "
          f"{max(1, acceptors)} process(es)  [{span(results['baseline'], '.1f')}]")
    print(f"ratio:    {ours / base if base else 0.0:8.3f} (of the medians; per run {span(ratios, '.3f')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
