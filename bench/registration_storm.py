"""Registration storm: N encrypted phones register with the callmanager service over mutual TLS,
then an administrator's reset-all makes every phone re-register; compared with the raw mutual-TLS
handshake rate of Python `ssl` (same certificates, same server context, same client loop) in the
same run.

    uv run python bench/registration_storm.py                  # 2000 phones
    uv run python bench/registration_storm.py --quick          # 200 phones
    uv run python bench/registration_storm.py --phones 10000   # issue 15's figure

Ours is the callmanager service as deployed and as phones reach it (`python -m
ccmsec_callmanager`, uvloop, as every service runs): its own process on its own loopback address,
NATS with JetStream, its service identity, its SQLite database (migrated by the service), the
cluster mode learnt from the running ctl-provider (mixed with a CTL, set in the database as
ctl-provider — the mode's owner — would have it), capf and keymanager running (the service asks
them as deployed), its SCCP TLS port and its ccmserver.cer (the
certificate the phones pin is the one the service made and presents). The devices (encrypted
7970s) are rows of callmanager's devices table written before the service starts, as the
end-to-end tests add them. Reset-all is the administrator's path: `ResetDevices(all)` over gRPC
with a `cli` identity (what `ccmsec device reset --all` sends), committed with its audit row in the
service's outbox and delivered back to call control through NATS; the count of registrations is
the service's `Status` ("registered"). Phones share one RSA key (each has its own LSC): key
generation is not what is measured.

Baseline: a bare asyncio TLS server in a child process with the same server context (the service's
ccmserver.cer and key, the same phone-certificate issuers), on the same loopback address, while
the cluster stands idle; each client handshakes, sends one SCCP-sized message and gets one back.
It runs with the service's garbage-collection policy (ccmsec/runtime/gcpolicy.py), as this process
does for the phones: the same runtime settings on both sides of the comparison.

Besides the rates it prints the CPU time each side spent per connection (the server process from
/proc/<pid>/stat, the client — this process, which drives every phone — from
`time.process_time`), for the baseline and for ours: both sides share the machine's cores, so a
rate is bounded by the busier one, and these lines say which side that was and what the service
itself costs per registration. The 1-minute load average before the run is printed first.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import resource
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services" / "callmanager"))

HOST = "127.0.0.1"       # where the phones connect from
BACK_LIMIT = 600.0
GRPC_PORT = 50051


def rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _raise_fd_limit() -> None:
    """The services do not raise their own limit: they inherit this one (10,000 phones need
    10,000 descriptors in callmanager and as many here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _run(coro):
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def load_line() -> str:
    return f"load: {os.getloadavg()[0]:.2f} (1-min load average before the run; {os.cpu_count()} cores)"


def phone_name(i: int) -> str:
    return f"SEP{i:012X}"


# -- the cluster -----------------------------------------------------------------------------------

def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited ({proc.returncode}) before listening on {host}:{port}")
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {host}:{port} after {timeout:.0f} s")


class Cluster:
    """NATS, ctl-provider, capf, keymanager and callmanager as processes on their own loopback
    addresses, as bench/srtp_gateway.py runs them: callmanager as deployed asks ctl-provider for
    the mode, CAPF for a third-party CA and keymanager for call keys (without them it retries and
    logs every second or two, which is not the deployed service either)."""

    def __init__(self, data: Path):
        self.data = data
        self.procs: list[subprocess.Popen] = []
        base = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
        self.nats_host, self.ctl_host, self.capf_host, self.cm_host, self.km_host = (
            f"{base}.1", f"{base}.3", f"{base}.4", f"{base}.5", f"{base}.9")
        self.sccp_tls_port = _free_port(self.cm_host)
        self.cli_ident_dir = data / "bench-cli"
        self.callmanager: subprocess.Popen | None = None

    def _spawn(self, args, log, env=None) -> subprocess.Popen:
        out = open(self.data / log, "w")
        proc = subprocess.Popen(args, stdout=out, stderr=out, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _env(self, role: str, host: str) -> dict:
        peers = {"callmanager": self.cm_host, "ctl-provider": self.ctl_host, "keymanager": self.km_host,
                 "capf": self.capf_host}
        return {**os.environ, "CCMSEC_SERVICE": role, "CCMSEC_DATA_DIR": str(self.data), "CCMSEC_HOST": host,
                "CCMSEC_NATS_URL": f"nats://{self.nats_host}:4222", "CCMSEC_METRICS_PORT": "0",
                "CCMSEC_PEERS": "{" + ", ".join(f'"{k}": "{v}"' for k, v in peers.items()) + "}",
                "CCMSEC_SCCP_PORT": str(_free_port(host)),
                "CCMSEC_SCCP_TLS_PORT": str(self.sccp_tls_port if role == "callmanager" else _free_port(host)),
                "CCMSEC_ADMIN_PORT": str(_free_port(host)), "CCMSEC_CAPF_PORT": str(_free_port(host)),
                "CCMSEC_LOG_LEVEL": "WARNING"}

    def start_nats(self) -> None:
        nats = str(Path(sys.executable).parent / "nats-server")
        self._spawn([nats, "-a", self.nats_host, "-p", "4222", "-js", "-sd", str(self.data / "nats")], "nats.log")
        wait_port(self.nats_host, 4222)

    def start_services(self) -> None:
        from ccmsec.cluster.pki import issue_service_identity

        # the administration path's identity (ccmsec CLI): reset-all, Status, ListCalls
        issue_service_identity(self.data, "cli", "bench-cli", "127.0.0.1", out_dir=self.cli_ident_dir)
        # ctl-provider first (the mode), capf before callmanager (it makes the CAPF CA the phones'
        # LSCs come from), keymanager (call keys)
        for role, module, host in (("ctl-provider", "ccmsec_ctl_provider", self.ctl_host),
                                   ("capf", "ccmsec_capf", self.capf_host),
                                   ("keymanager", "ccmsec_keymanager", self.km_host)):
            issue_service_identity(self.data, role, role, host)
            proc = self._spawn([sys.executable, "-m", module], f"{role}.log", self._env(role, host))
            wait_port(host, GRPC_PORT, 90, proc)
        issue_service_identity(self.data, "callmanager", "callmanager", self.cm_host)
        self.callmanager = self._spawn([sys.executable, "-m", "ccmsec_callmanager"], "callmanager.log",
                                       self._env("callmanager", self.cm_host))
        wait_port(self.cm_host, GRPC_PORT, 90, self.callmanager)
        wait_port(self.cm_host, self.sccp_tls_port, 90, self.callmanager)

    @property
    def pid(self) -> int:
        assert self.callmanager is not None
        return self.callmanager.pid

    def admin_channel(self):
        from ccmsec.runtime.grpcio import secure_channel
        from ccmsec.runtime.identity import load_identity

        return secure_channel(load_identity(self.cli_ident_dir), self.cm_host, GRPC_PORT, "callmanager")

    async def status(self, channel) -> dict[str, str]:
        from ccmsec_proto import callmanager_pb2_grpc, common_pb2

        reply = await callmanager_pb2_grpc.CallManagerStub(channel).Status(common_pb2.Empty(), timeout=30)
        return dict(reply.details)

    async def wait_mixed(self, timeout: float = 60.0) -> dict[str, str]:
        """Until call control follows ctl-provider's mixed mode (it refuses encrypted phones before)."""
        end = time.monotonic() + timeout
        details: dict[str, str] = {}
        async with self.admin_channel() as ch:
            while time.monotonic() < end:
                try:
                    details = await self.status(ch)
                    if details.get("cluster_mode") == "mixed":
                        return details
                except Exception:  # noqa: BLE001 — not serving yet
                    pass
                await asyncio.sleep(0.2)
        raise SystemExit(f"callmanager never followed ctl-provider's mixed mode: {details.get('cluster_mode')!r} "
                         f"(logs in {self.data})")

    def server_certificate(self) -> Path:
        return self.data / "servers" / "callmanager" / "ccmserver.cer"

    def stop(self) -> None:
        stop_processes(self.procs)


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each service (last started first), then wait; kill what does not stop in 10 s."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def finish(cluster: "Cluster | None", data: Path, keep: bool) -> None:
    """Stop the cluster; keep its data directory (and logs) only when asked."""
    if cluster is not None:
        cluster.stop()
    if keep:
        print(f"kept {data}")
    else:
        shutil.rmtree(data, ignore_errors=True)


def prepare(data: Path, n: int) -> None:
    """Before the services start: the cluster in mixed mode with a CTL as ctl-provider (the mode's
    owner) keeps it, and N encrypted 7970s in callmanager's devices table."""
    from ccmsec.db.devices import SETTING_CTL_VERSION, SETTING_SECURITY_MODE, Device, set_setting
    from ccmsec.runtime.database import open_database

    async def db():
        engine, sm = await open_database(f"sqlite+aiosqlite:///{data / 'ccmsec.db'}")
        async with sm() as session, session.begin():
            await set_setting(session, SETTING_CTL_VERSION, "1")
            await set_setting(session, SETTING_SECURITY_MODE, "mixed")
            session.add_all([Device(name=phone_name(i), model="7970", security_mode="encrypted")
                             for i in range(n)])
        await engine.dispose()
    _run(db())


def start_cluster(data: Path, n: int, prepare_db=prepare) -> Cluster:
    cluster = Cluster(data)
    try:
        cluster.start_nats()
        prepare_db(data, n)
        cluster.start_services()
        _run(cluster.wait_mixed())
    except BaseException:
        cluster.stop()
        raise
    return cluster


def phone_contexts(data: Path, n: int) -> list[ssl.SSLContext]:
    """Each phone trusts the ccmserver.cer the running service made and presents (its CTL entry)
    and carries an LSC from the cluster's CAPF CA."""
    from cryptography import x509

    from ccmsec.pki.ca import Issued, load_pair, new_key
    from ccmsec.pki.lsc import issue_lsc
    from ccmsec.pki.tls import sccp_phone_context

    ccm = x509.load_der_x509_certificate((data / "servers" / "callmanager" / "ccmserver.cer").read_bytes())
    capf = load_pair(data / "pki" / "capf.crt", data / "pki" / "capf.key")
    key = new_key()
    return [sccp_phone_context("encrypted", [ccm], lsc=Issued(issue_lsc(capf, phone_name(i),
                                                                         key.public_key()), key))
            for i in range(n)]


# -- the baseline server -------------------------------------------------------------------------

def raw_tls_process(data: str, host: str, port_q, cmd_conn) -> None:
    """Child: a bare asyncio TLS server with the service's server context (its ccmserver.cer and
    key as load_pki reads them, the same issuers); each client handshakes, sends one SCCP-sized
    message and gets one back."""
    _raise_fd_limit()
    from ccmsec_callmanager.callcontrol import load_pki
    from ccmsec.pki.tls import sccp_server_context

    identity, trust = load_pki(Path(data), "callmanager", host)   # the files the service made
    ctx = sccp_server_context(identity, [trust.capf, trust.manufacturer])

    async def main():
        async def handle(reader, writer):
            try:
                await reader.read(4096)
                writer.write(b"\0" * 40)
                await writer.drain()
                await reader.read(4096)
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()
        server = await asyncio.start_server(handle, host, 0, ssl=ctx, backlog=1024)
        # The service's garbage-collection policy here too (ccmsec/runtime/gcpolicy.py): the same
        # work with the same runtime settings — measured, it saves the bare server ~0.1 ms a handshake.
        from ccmsec.runtime import gcpolicy
        gcpolicy.tune_for_long_lived_connections()
        port_q.put(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, cmd_conn.recv)
        server.close()
        cmd_conn.send("stopped")
    _run(main())


class RawServer:
    def __init__(self, data: Path, host: str):
        ctx = mp.get_context("spawn")
        self.host = host
        self.port_q = ctx.Queue()
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=raw_tls_process, args=(str(data), host, self.port_q, child_conn),
                                daemon=True)
        self.proc.start()
        self.port = self.port_q.get(timeout=60)

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid)

    def stop(self):
        try:
            self.conn.send("stop")
            self.conn.recv()
        except (EOFError, OSError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def raw_baseline(data: Path, host: str, contexts, concurrency: int) -> dict:
    raw = RawServer(data, host)
    try:
        cpu0, client0 = cpu_seconds(raw.proc.pid), time.process_time()
        rate = _run(raw_handshakes(host, raw.port, contexts, concurrency))
        n = len(contexts)
        return {"rate": rate, "cpu_ms": (cpu_seconds(raw.proc.pid) - cpu0) / n * 1000,
                "client_ms": (time.process_time() - client0) / n * 1000}
    finally:
        raw.stop()


# -- clients -------------------------------------------------------------------------------------

async def raw_handshakes(host: str, port: int, contexts, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    held = []

    async def one(ctx):
        async with sem:
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="")
            writer.write(b"\0" * 64)
            await writer.drain()
            await reader.readexactly(40)
            held.append(writer)  # keep it open, as a registered phone would

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in contexts))
    elapsed = time.perf_counter() - start
    for w in held:
        w.close()
    return len(contexts) / elapsed


async def reset_all(channel):
    """What `ccmsec device reset --all` sends: ResetDevices(all) to the publisher."""
    from ccmsec_proto import callmanager_pb2 as pb, callmanager_pb2_grpc

    return await callmanager_pb2_grpc.CallManagerStub(channel).ResetDevices(pb.ResetDevicesRequest(all=True),
                                                                             timeout=60)


async def reset_progress(channel, request_id: str):
    from ccmsec_proto import callmanager_pb2 as pb, callmanager_pb2_grpc

    return await callmanager_pb2_grpc.CallManagerStub(channel).GetResetProgress(
        pb.ResetProgressRequest(request_id=request_id), timeout=30)


async def storm(cluster: Cluster, contexts, concurrency: int) -> dict:
    from ccmsec.aio.sccp import connect_phone
    from ccmsec.wire import sccp as s

    host, port, pid = cluster.cm_host, cluster.sccp_tls_port, cluster.pid
    sem = asyncio.Semaphore(concurrency)
    first = asyncio.Event()
    registered = [0]
    back = [0]
    n = len(contexts)
    back_all = asyncio.Event()

    async def register(i, ctx):
        async with sem:
            phone = await connect_phone(host, port, s.Register(phone_name(i), HOST, device_type=30006),
                                        ssl_context=ctx)
            await phone.wait_registered(60)
        return phone

    async def life(i, ctx):
        phone = await register(i, ctx)
        registered[0] += 1
        if registered[0] == n:
            first.set()
        await phone.next_event(s.ResetRequested, timeout=BACK_LIMIT + 120)
        await phone.close()
        phone = await register(i, ctx)
        back[0] += 1
        if back[0] == n:
            back_all.set()
        return phone

    async with cluster.admin_channel() as admin:
        await asyncio.sleep(1.0)   # the service settles after start (ctl-provider's answer, key pool)
        cpu0, client0 = cpu_seconds(pid), time.process_time()
        start = time.perf_counter()
        tasks = [asyncio.create_task(life(i, c)) for i, c in enumerate(contexts)]
        await asyncio.wait_for(first.wait(), BACK_LIMIT)
        reg_time = time.perf_counter() - start
        reg_cpu, reg_client = cpu_seconds(pid) - cpu0, time.process_time() - client0
        print(f"ours:     {n} phones registered in {reg_time:.2f} s = {n / reg_time:.1f}/s (reset-all next)",
              flush=True)
        await asyncio.sleep(0.5)
        registered_before = (await cluster.status(admin)).get("registered", "?")
        cpu1 = cpu_seconds(pid)
        t_reset = time.perf_counter()
        reply = await reset_all(admin)
        try:
            await asyncio.wait_for(back_all.wait(), BACK_LIMIT)
        except asyncio.TimeoutError:
            print(f"reset-all: only {back[0]} of {n} phones back after {BACK_LIMIT:.0f} s", flush=True)
            raise
        back_time = time.perf_counter() - t_reset
        back_cpu = cpu_seconds(pid) - cpu1
        # the service's own account, before the phones hang up
        progress = await reset_progress(admin, reply.request_id)
        for _ in range(50):
            if progress.complete:
                break
            await asyncio.sleep(0.1)
            progress = await reset_progress(admin, reply.request_id)
        in_registry = (await cluster.status(admin)).get("registered", "?")
        phones = await asyncio.gather(*tasks)
        for p in phones:
            await p.close()
    return {"rate": n / reg_time, "seconds": reg_time, "targeted": reply.targeted,
            "reset_sent": progress.reset_sent, "progress_back": progress.back, "complete": progress.complete,
            "back_seconds": back_time, "registered_before": registered_before,
            "in_registry": in_registry, "cpu_ms": reg_cpu / n * 1000, "back_cpu_ms": back_cpu / n * 1000,
            "client_ms": reg_client / n * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 phones")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and the services' logs")
    args = parser.parse_args()
    n = 200 if args.quick else args.phones
    _raise_fd_limit()   # before the services are spawned: they inherit it
    # This process is the instrument: it holds every phone's connection, and its full collections
    # walked them 24 times (7.6 s) in a 10,000-phone run, most in our phase (its heap is larger
    # then) — so they are spaced out as in the service (ccmsec/runtime/gcpolicy.py), for both
    # phases alike. The baseline's server applies the service's own policy (raw_tls_process).
    gc.set_threshold(*gc.get_threshold()[:2], 100)
    print(load_line(), flush=True)
    data = Path(tempfile.mkdtemp(prefix="ccmsec-storm-"))
    cluster = None
    try:
        t0 = time.perf_counter()
        cluster = start_cluster(data, n)
        contexts = phone_contexts(data, n)
        print(f"setup: callmanager service up (pid {cluster.pid}, mixed mode from ctl-provider); "
              f"{n} encrypted 7970s with LSCs in {time.perf_counter() - t0:.1f} s", flush=True)
        raw = raw_baseline(data, cluster.cm_host, contexts, args.concurrency)
        print(f"baseline: raw Python ssl mutual-TLS handshakes (+1 message): {raw['rate']:8.1f} /s", flush=True)
        result = _run(storm(cluster, contexts, args.concurrency))
    finally:
        finish(cluster, data, args.keep)

    ratio = result["rate"] / raw["rate"]
    print(f"baseline: raw Python ssl mutual-TLS handshakes (+1 message): {raw['rate']:8.1f} /s")
    print(f"ours:     encrypted SCCP registrations with the callmanager service: {result['rate']:8.1f} /s "
          f"({n} phones in {result['seconds']:.2f} s; the service's Status said {result['registered_before']} "
          f"registered)")
    print(f"ratio:    {ratio:.2f} (aim >= 0.85)")
    # Both sides share the machine's cores: the rate is bounded by the busier one, so its CPU
    # per connection says which side limits a run (one client process drives every phone).
    print(f"server CPU per connection: raw ssl {raw['cpu_ms']:.2f} ms; callmanager service "
          f"{result['cpu_ms']:.2f} ms per registration, {result['back_cpu_ms']:.2f} ms per re-registration "
          f"after the reset (reset-all included)")
    print(f"client CPU per connection: raw ssl {raw['client_ms']:.2f} ms; phones {result['client_ms']:.2f} ms "
          f"per registration")
    print(f"reset-all: Reset sent to {result['reset_sent']} phones; every phone back after "
          f"{result['back_seconds']:.2f} s (ResetDevices(all) targeted {result['targeted']}; the service counts "
          f"{result['progress_back']} back, complete: {str(result['complete']).lower()}; registered then: "
          f"{result['in_registry']}) (aim for 10,000 phones: < 30 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
