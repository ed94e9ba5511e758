"""SRTP relay through the running srtp-gateway service versus raw libsrtp, same machine, same run.

Ours:      the gateway service as call control and phones reach it — its own process (uvloop, as
           every service runs), NATS, its identity, gRPC over mutual TLS for CreateConnection with
           SRTP keys (the bench presents a call-control certificate), the cluster in mixed mode
           learnt from the call manager (GW-4). Each call is a phone leg to the echo number: the
           phone sends SRTP G.711 every 20 ms; the gateway authenticates, decrypts, re-originates
           and encrypts each packet back (both directions of the call are SRTP, one libsrtp
           unprotect + protect per relayed packet).
Baseline:  a raw libsrtp (pylibsrtp) loop doing protect + unprotect of the same 172-byte packets.
Ratio:     gateway relays per second of its CPU time / raw pairs per second of one core.
Calls per core: relays per CPU-second / 50 (a G.711 call relays 50 packets a second each way).

The phones run in this process. Their packets are protected before the clock starts (a real phone
encrypts on its own CPU) and what comes back is authenticated and decrypted after the run, so
loss counts only packets that came back and passed libsrtp. Each phone's socket is read by polling
every 50 ms rather than on a wake-up per datagram (see `Phone`), so the kernel does not charge
the waking of this process to the gateway's `sendto`. Steps raise the number of concurrent
calls; each step reports loss, and the figure kept is the largest step with loss < 0.1 %.

    uv run python bench/srtp_gateway.py --quick     # 100 and 200 calls, 3 s each
    uv run python bench/srtp_gateway.py             # 200 … 1200 calls, 5 s each
    CCMSEC_RELAY_CORE=python uv run python bench/srtp_gateway.py   # the relay's Python path
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pylibsrtp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccmsec.cluster.pki import issue_service_identity  # noqa: E402
from ccmsec.db.devices import SETTING_CTL_VERSION, SETTING_SECURITY_MODE, set_setting  # noqa: E402
from ccmsec.formats.sdp import audio_session, parse_sdp  # noqa: E402
from ccmsec.media.keys import to_proto  # noqa: E402
from ccmsec.media.packetiser import Packetiser  # noqa: E402
from ccmsec.media.srtp import MasterKey, SrtpReceiver, SrtpRefused, SrtpSender  # noqa: E402
from ccmsec.runtime.database import open_database  # noqa: E402
from ccmsec.runtime.grpcio import secure_channel  # noqa: E402
from ccmsec.runtime.identity import load_identity  # noqa: E402
from ccmsec_proto import common_pb2, srtp_gateway_pb2 as pb  # noqa: E402
from ccmsec_proto import srtp_gateway_pb2_grpc  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from registration_storm import wait_port, stop_processes  # noqa: E402  (the benches' service helpers)

ECHO = "5550102"
PAYLOAD = bytes(range(160))


def raw_libsrtp_rate(seconds: float, sessions: int = 1) -> float:
    """protect + unprotect pairs per CPU-second of this process: the floor of any SRTP relay in
    this language. CPU time, like the gateway's figure, so load from other processes on a shared
    machine does not tilt the ratio. `sessions` > 1 cycles the packets through that many
    sender/receiver pairs, as a relay of that many calls must (diagnostic: the working set)."""
    pairs = []
    for _ in range(sessions):
        key = MasterKey.generate()
        pairs.append((pylibsrtp.Session(pylibsrtp.Policy(key.key_and_salt, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)),
                      pylibsrtp.Session(pylibsrtp.Policy(key.key_and_salt, pylibsrtp.Policy.SSRC_ANY_INBOUND))))
    header = bytearray(struct.pack("!BBHII", 0x80, 0, 0, 0, 0x1234))
    count, start, cpu0 = 0, time.perf_counter(), time.process_time()
    end = start + seconds
    while True:
        for _ in range(max(1, 1000 // sessions)):
            seq = count // sessions
            struct.pack_into("!HI", header, 2, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF)
            for tx, rx in pairs:
                rx.unprotect(tx.protect(bytes(header) + PAYLOAD))
            count += sessions
        if time.perf_counter() >= end or count >= 5_000_000:
            break
    return count / (time.process_time() - cpu0)


def _free_port(host="127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cluster:
    """NATS, call control and the gateway as processes on their own loopback addresses."""

    def __init__(self, data: Path):
        self.data = data
        self.procs: list[subprocess.Popen] = []
        base = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
        self.nats_host, self.cm_host, self.gw_host = f"{base}.1", f"{base}.5", f"{base}.7"
        self.ctl_host = f"{base}.3"

    def _spawn(self, args, log, env=None) -> subprocess.Popen:
        out = open(self.data / log, "w")
        proc = subprocess.Popen(args, stdout=out, stderr=out, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _env(self, role, host) -> dict:
        return {**os.environ, "CCMSEC_SERVICE": role, "CCMSEC_DATA_DIR": str(self.data), "CCMSEC_HOST": host,
                "CCMSEC_NATS_URL": f"nats://{self.nats_host}:4222", "CCMSEC_METRICS_PORT": "0",
                "CCMSEC_PEERS": f'{{"callmanager": "{self.cm_host}", "srtp-gateway": "{self.gw_host}", '
                                f'"ctl-provider": "{self.ctl_host}"}}',
                "CCMSEC_SCCP_PORT": str(_free_port(host)), "CCMSEC_SCCP_TLS_PORT": str(_free_port(host)),
                "CCMSEC_ADMIN_PORT": str(_free_port(host)), "CCMSEC_LOG_LEVEL": "WARNING",
                "CCMSEC_GATEWAY_LINES": "4096"}

    async def start(self) -> None:
        nats = str(Path(sys.executable).parent / "nats-server")
        self._spawn([nats, "-a", self.nats_host, "-p", "4222", "-js", "-sd", str(self.data / "nats")], "nats.log")
        wait_port(self.nats_host, 4222)
        # mixed mode with a CTL, as the CTL client leaves the cluster (GW-4 needs it): the mode is
        # ctl-provider's (it owns it; call control follows it and the gateway asks call control)
        engine, db = await open_database(f"sqlite+aiosqlite:///{self.data / 'ccmsec.db'}")
        async with db() as session, session.begin():
            await set_setting(session, SETTING_CTL_VERSION, "1")
            await set_setting(session, SETTING_SECURITY_MODE, "mixed")
        await engine.dispose()
        issue_service_identity(self.data, "ctl-provider", "ctl-provider", self.ctl_host)
        issue_service_identity(self.data, "callmanager", "callmanager", self.cm_host)
        issue_service_identity(self.data, "srtp-gateway", "srtp-gateway", self.gw_host)
        # the bench acts as call control, so it presents a call-control identity of its own
        self.cc_ident_dir = self.data / "bench-call-control"
        issue_service_identity(self.data, "callmanager", "bench-cc", "127.0.0.1", out_dir=self.cc_ident_dir)
        # and the administration path's, to read the gateway's Status (which packet path it runs)
        self.cli_ident_dir = self.data / "bench-cli"
        issue_service_identity(self.data, "cli", "bench-cli", "127.0.0.1", out_dir=self.cli_ident_dir)
        self._spawn([sys.executable, "-m", "ccmsec_ctl_provider"], "ctl-provider.log",
                    self._env("ctl-provider", self.ctl_host))
        wait_port(self.ctl_host, 50051, 90)
        self._spawn([sys.executable, "-m", "ccmsec_callmanager"], "callmanager.log", self._env("callmanager", self.cm_host))
        self.gateway = self._spawn([sys.executable, "-m", "ccmsec_srtp_gateway"], "gateway.log",
                                   self._env("srtp-gateway", self.gw_host))
        wait_port(self.cm_host, 50051, 90)
        wait_port(self.gw_host, 50051, 90)

    def stop(self) -> None:
        stop_processes(self.procs)


class Phone:
    """One call's phone: a plain non-blocking UDP socket that nobody waits on. What the gateway
    sends back is collected by polling every POLL seconds, not by a wake-up per datagram: on
    loopback the sender's `sendto` delivers into the receiving socket, and a receiver asleep in
    epoll would be woken from inside the gateway's system call and charged to the gateway's CPU
    (a real phone is another machine; its wake-ups are its own)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.received: list[bytes] = []

    def collect(self) -> int:
        got = 0
        while True:
            try:
                self.received.append(self.sock.recv(2048))
            except (BlockingIOError, InterruptedError):
                return got
            got += 1


POLL = 0.05   # 2.5 packets per call between polls: far below the socket buffer's room


async def run_step(stub, gw_host, calls: int, seconds: float, gateway_pid: int, plain: bool = False) -> dict:
    loop = asyncio.get_running_loop()
    legs = []
    frames = int(seconds * 50)
    for n in range(calls):
        up, down = (None, None) if plain else (MasterKey.generate(), MasterKey.generate())
        phone = Phone()
        host, port = phone.sock.getsockname()[:2]
        reply = await stub.CreateConnection(pb.CreateConnectionRequest(
            endpoint="aaln/S1/SU0/$@gw1", call_id=f"{n + 1:X}", dialled_number=ECHO, srtp=not plain,
            send_key=to_proto(down) if down else None, remote_sdp=audio_session(host, port, key=up).to_text()))
        audio = parse_sdp(reply.local_sdp).audio()
        pk = Packetiser(0)
        protect = SrtpSender(up).protect if up else (lambda rtp: rtp)
        packets = [protect(pk.packet(PAYLOAD).to_bytes()) for _ in range(frames)]
        legs.append((phone, (gw_host, audio.port), packets, down, reply.connection_id))
    cpu0, t0 = _cpu_seconds(gateway_pid), time.perf_counter()
    due = next_poll = loop.time()
    for i in range(frames):
        for phone, remote, packets, _, _ in legs:
            try:
                phone.sock.sendto(packets[i], remote)
            except BlockingIOError:
                pass     # counted as lost: it never came back
        if loop.time() >= next_poll:
            for phone, *_ in legs:
                phone.collect()
            next_poll += POLL
        due += 0.02
        await asyncio.sleep(max(0.0, due - loop.time()))
    wall = time.perf_counter() - t0
    # the last echoes: poll until nothing more arrives for 0.5 s (at most 10 s)
    end = loop.time() + 10
    quiet_since = loop.time()
    while loop.time() < end and loop.time() - quiet_since < 0.5:
        if sum(phone.collect() for phone, *_ in legs):
            quiet_since = loop.time()
        await asyncio.sleep(POLL)
    # the gateway's CPU until its last echo (a gateway behind works through its backlog here)
    cpu, busy = _cpu_seconds(gateway_pid) - cpu0, max(wall, time.perf_counter() - t0 - 0.5)
    sent = back = refused = 0
    for phone, _, packets, down, conn_id in legs:
        receiver = SrtpReceiver(down) if down else None
        for datagram in phone.received:
            try:
                if receiver is not None:
                    receiver.unprotect(datagram)
                back += 1
            except SrtpRefused:
                refused += 1
        sent += len(packets)
        phone.sock.close()
    await stub.DeleteConnection(pb.DeleteConnectionRequest(endpoint="*@gw1"))
    relays = back  # each packet back = one unprotect + one protect in the gateway
    return {"calls": calls, "sent": sent, "back": back, "refused": refused,
            "loss": 1 - back / sent if sent else 0.0, "wall": wall, "cpu": cpu, "busy": busy,
            "relays_per_cpu_s": relays / cpu if cpu > 0 else 0.0, "relays_per_s": relays / wall}


async def main(args) -> int:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    data = Path(tempfile.mkdtemp(prefix="ccmsec-bench-gw-"))
    cluster = Cluster(data)
    try:
        await cluster.start()
        ident = load_identity(cluster.cc_ident_dir)
        async with secure_channel(ident, cluster.gw_host, 50051, "srtp-gateway") as channel:
            stub = srtp_gateway_pb2_grpc.SrtpGatewayStub(channel)
            await stub.AuditEndpoint(pb.AuditEndpointRequest(endpoint="*@gw1"), timeout=30, wait_for_ready=True)
            async with secure_channel(load_identity(cluster.cli_ident_dir), cluster.gw_host, 50051,
                                      "srtp-gateway") as admin:
                status = await srtp_gateway_pb2_grpc.SrtpGatewayStub(admin).Status(common_pb2.Empty(), timeout=10)
            path = status.details.get("relay_path", "?")
            baseline = raw_libsrtp_rate(args.baseline_seconds)
            print(f"load: {os.getloadavg()[0]:.2f} (1-min load average before the run; {os.cpu_count()} cores)")
            print(f"gateway relay packet path: {path} (CCMSEC_RELAY_CORE={os.environ.get('CCMSEC_RELAY_CORE', 'auto')})")
            print(f"raw libsrtp protect+unprotect: {baseline:,.0f} pairs per CPU-second")
            results = []
            for calls in args.steps:
                r = await run_step(stub, cluster.gw_host, calls, args.seconds, cluster.gateway.pid, args.plain)
                results.append(r)
                r["real_time"] = r["relays_per_s"] >= 0.95 * calls * 50
                print(f"{calls:5d} calls: sent {r['sent']:7d}  back {r['back']:7d}  loss {100 * r['loss']:6.3f} %  "
                      f"gateway CPU {100 * r['cpu'] / r['busy']:5.1f} %  relays/s {r['relays_per_s']:8,.0f} "
                      f"({r['relays_per_s'] / 50:,.0f} calls in real time{'' if r['real_time'] else ', behind'})  "
                      f"relays per CPU-second {r['relays_per_cpu_s']:8,.0f}")
            baseline_after = raw_libsrtp_rate(args.baseline_seconds)
            base = (baseline + baseline_after) / 2
            # a step holds when nothing was lost and the packets kept the 20 ms pace
            good = [r for r in results if r["loss"] < 0.001 and r["real_time"]]
            best = max(good, key=lambda r: r["calls"]) if good else None
            measured = [r for r in results if r["cpu"] > 0.2]
            top = max(measured, key=lambda r: r["relays_per_cpu_s"], default=None)
            per_core = top["relays_per_cpu_s"] if top else 0.0
            # the same raw loop through as many session pairs as that step's calls (the gateway
            # holds two libsrtp sessions per call): how much of the gap is the working set
            wide = raw_libsrtp_rate(args.baseline_seconds, top["calls"]) if top else 0.0
            print(f"raw libsrtp after the steps: {baseline_after:,.0f} pairs per CPU-second")
            print(f"ratio (gateway relays / raw pairs, both per CPU-second): {per_core / base:.2f}  (aim >= 0.3)")
            print(f"G.711 calls per core: {per_core / 50:,.0f}  (aim >= 1000)")
            if top:
                print(f"diagnostic: raw libsrtp cycling through {top['calls']} session pairs: {wide:,.0f} pairs per "
                      f"CPU-second; the gateway's relays against it: {per_core / wide:.2f}")
            if best:
                print(f"largest step in real time with loss < 0.1 %: {best['calls']} concurrent calls "
                      f"({100 * best['loss']:.3f} % loss)")
            else:
                print("no step kept real time with loss < 0.1 %")
        return 0
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"kept {data}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 400, 800, 1200])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--baseline-seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="steps 100 200, 3 s each")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    parser.add_argument("--plain", action="store_true",
                        help="diagnostic: RTP legs (GW-2) instead of SRTP, to see what SRTP itself costs")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seconds, args.baseline_seconds = [100, 200], 3.0, 2.0
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
