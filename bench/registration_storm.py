"""Registration storm: N encrypted phones register with call control over mutual TLS, then a
reset-all makes every phone re-register; compared with the raw mutual-TLS handshake rate of
Python `ssl` (same certificates, same server context, same client loop) in the same run.

    uv run python bench/registration_storm.py            # 2000 phones
    uv run python bench/registration_storm.py --quick    # 200 phones

Call control runs in its own process (as the service does) with a migrated SQLite database and
the real registration path: TLS handshake, Register, device lookup, decision (certificate
classification and CN check), RegisterAck, registry + batched database mirror.
Phones share one RSA key (each has its own LSC): key generation is not what is measured.

Besides the rates it prints the CPU time each side spent per connection (the server process from
/proc, the client — this process, which drives every phone — from `time.process_time`), for the
baseline and for ours: both sides share the machine's cores, so a rate is bounded by the busier
one, and these lines say which side that was and what call control itself costs per
registration.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services" / "callmanager"))

HOST = "127.0.0.1"
BACK_LIMIT = 600.0


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _run(coro):
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


# -- setup ---------------------------------------------------------------------------------------

def prepare(data: Path, n: int) -> None:
    """PKI, database with N encrypted 7970s, cluster in mixed mode with a CTL."""
    from ccmsec.db.devices import SETTING_CTL_VERSION, SETTING_SECURITY_MODE, Device, set_setting
    from ccmsec.runtime.database import open_database
    from ccmsec_callmanager.callcontrol import load_pki

    load_pki(data, "callmanager", HOST)

    async def db():
        engine, sm = await open_database(f"sqlite:///{data / 'ccmsec.db'}")
        async with sm() as session, session.begin():
            await set_setting(session, SETTING_CTL_VERSION, "1")
            await set_setting(session, SETTING_SECURITY_MODE, "mixed")
            session.add_all([Device(name=phone_name(i), model="7970", security_mode="encrypted")
                             for i in range(n)])
        await engine.dispose()
    _run(db())


def phone_name(i: int) -> str:
    return f"SEP{i:012X}"


def phone_contexts(data: Path, n: int) -> list[ssl.SSLContext]:
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


# -- server processes ----------------------------------------------------------------------------

def callcontrol_process(data: str, port_q, cmd_conn) -> None:
    """Child: call control on free ports; answers 'reset', 'count', 'rss', 'stop' on cmd_conn."""
    _raise_fd_limit()
    from ccmsec.runtime.database import open_database
    from ccmsec_callmanager.callcontrol import CallControl, CallControlConfig
    from ccmsec_callmanager.cluster_state import ClusterState, ClusterStateFollower

    async def main():
        engine, sm = await open_database(f"sqlite:///{Path(data) / 'ccmsec.db'}")
        cc = CallControl(CallControlConfig("callmanager", HOST, 0, 0, Path(data)), sm,
                         # mixed with a CTL, as the CTL Provider (the mode's owner) would say
                         cluster_state=ClusterStateFollower.fixed(ClusterState("mixed", True, 1)))
        await cc.start()
        port_q.put((cc.plain.port, cc.tls.port, _rss_kb()))
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, cmd_conn.recv)
            if cmd == "reset":
                names = cc.registry.names()
                cmd_conn.send(await cc.reset(names))
            elif cmd == "count":
                cmd_conn.send(len(cc.registry.entries))
            elif cmd == "rss":
                import gc
                gc.collect()
                cmd_conn.send(_rss_kb())
            elif cmd == "stop":
                await cc.close()
                await engine.dispose()
                cmd_conn.send("stopped")
                return
    _run(main())


def raw_tls_process(data: str, port_q, cmd_conn) -> None:
    """Child: a bare asyncio TLS server with the same context; each client handshakes, sends
    one SCCP-sized message and gets one back."""
    _raise_fd_limit()
    from ccmsec_callmanager.callcontrol import load_pki
    from ccmsec.pki.tls import sccp_server_context

    identity, trust = load_pki(Path(data), "callmanager", HOST)
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
        server = await asyncio.start_server(handle, HOST, 0, ssl=ctx, backlog=1024)
        port_q.put((server.sockets[0].getsockname()[1], 0, _rss_kb()))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, cmd_conn.recv)
        server.close()
        cmd_conn.send("stopped")
    _run(main())


class Child:
    def __init__(self, target, data: Path):
        ctx = mp.get_context("spawn")
        self.port_q = ctx.Queue()
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(str(data), self.port_q, child_conn), daemon=True)
        self.proc.start()
        self.plain_port, self.tls_port, self.rss_start = self.port_q.get(timeout=60)

    def ask(self, cmd):
        self.conn.send(cmd)
        return self.conn.recv()

    def stop(self):
        try:
            self.ask("stop")
        except (EOFError, OSError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# -- clients -------------------------------------------------------------------------------------

async def raw_handshakes(port: int, contexts, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    held = []

    async def one(ctx):
        async with sem:
            reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname="")
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


async def storm(port: int, contexts, concurrency: int, child: Child) -> dict:
    from ccmsec.aio.sccp import connect_phone
    from ccmsec.wire import sccp as s

    sem = asyncio.Semaphore(concurrency)
    first = asyncio.Event()
    registered = [0]
    back = [0]
    n = len(contexts)
    back_all = asyncio.Event()

    async def register(i, ctx):
        async with sem:
            phone = await connect_phone(HOST, port, s.Register(phone_name(i), HOST, device_type=30006),
                                        ssl_context=ctx)
            await phone.wait_registered(60)
        return phone

    async def life(i, ctx):
        phone = await register(i, ctx)
        registered[0] += 1
        if registered[0] == n:
            first.set()
        await phone.next_event(s.ResetRequested, timeout=600)
        await phone.close()
        phone = await register(i, ctx)
        back[0] += 1
        if back[0] == n:
            back_all.set()
        return phone

    cpu0, client0 = cpu_seconds(child.proc.pid), time.process_time()
    start = time.perf_counter()
    tasks = [asyncio.create_task(life(i, c)) for i, c in enumerate(contexts)]
    await asyncio.wait_for(first.wait(), 600)
    reg_time = time.perf_counter() - start
    reg_cpu, reg_client = cpu_seconds(child.proc.pid) - cpu0, time.process_time() - client0
    print(f"ours:     {n} phones registered in {reg_time:.2f} s = {n / reg_time:.1f}/s (reset-all next)", flush=True)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.5)
    t_reset = time.perf_counter()
    sent = await loop.run_in_executor(None, child.ask, "reset")
    try:
        await asyncio.wait_for(back_all.wait(), BACK_LIMIT)
    except asyncio.TimeoutError:
        print(f"reset-all: only {back[0]} of {n} phones back after {BACK_LIMIT:.0f} s", flush=True)
        raise
    back_time = time.perf_counter() - t_reset
    back_cpu = cpu_seconds(child.proc.pid) - cpu0 - reg_cpu
    in_registry = await loop.run_in_executor(None, child.ask, "count")  # before the phones hang up
    phones = await asyncio.gather(*tasks)
    for p in phones:
        await p.close()
    return {"rate": n / reg_time, "seconds": reg_time, "reset_sent": sent, "back_seconds": back_time,
            "in_registry": in_registry, "cpu_ms": reg_cpu / n * 1000, "back_cpu_ms": back_cpu / n * 1000,
            "client_ms": reg_client / n * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 phones")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    args = parser.parse_args()
    n = 200 if args.quick else args.phones
    _raise_fd_limit()
    data = Path(tempfile.mkdtemp(prefix="ccmsec-storm-"))
    try:
        t0 = time.perf_counter()
        prepare(data, n)
        contexts = phone_contexts(data, n)
        print(f"setup: {n} encrypted 7970s with LSCs in {time.perf_counter() - t0:.1f} s")

        raw = Child(raw_tls_process, data)
        try:
            cpu0, client0 = cpu_seconds(raw.proc.pid), time.process_time()
            raw_rate = _run(raw_handshakes(raw.plain_port, contexts, args.concurrency))
            raw_cpu_ms = (cpu_seconds(raw.proc.pid) - cpu0) / n * 1000
            raw_client_ms = (time.process_time() - client0) / n * 1000
        finally:
            raw.stop()
        print(f"baseline: raw Python ssl mutual-TLS handshakes (+1 message): {raw_rate:8.1f} /s", flush=True)

        cc = Child(callcontrol_process, data)
        try:
            result = _run(storm(cc.tls_port, contexts, args.concurrency, cc))
        finally:
            cc.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)

    ratio = result["rate"] / raw_rate
    print(f"baseline: raw Python ssl mutual-TLS handshakes (+1 message): {raw_rate:8.1f} /s")
    print(f"ours:     encrypted SCCP registrations over mutual TLS:     {result['rate']:8.1f} /s "
          f"({n} phones in {result['seconds']:.2f} s)")
    print(f"ratio:    {ratio:.2f} (aim >= 0.85)")
    # Both sides share the machine's cores: the rate is bounded by the busier one, so its CPU
    # per connection says which side limits a run (one client process drives every phone).
    print(f"server CPU per connection: raw ssl {raw_cpu_ms:.2f} ms; call control {result['cpu_ms']:.2f} ms "
          f"per registration, {result['back_cpu_ms']:.2f} ms per re-registration after the reset")
    print(f"client CPU per connection: raw ssl {raw_client_ms:.2f} ms; phones {result['client_ms']:.2f} ms "
          f"per registration")
    print(f"reset-all: Reset sent to {result['reset_sent']} phones; every phone back after "
          f"{result['back_seconds']:.2f} s (in the registry then: {result['in_registry']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
