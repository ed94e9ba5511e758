"""Call-control nodes failing under an encrypted load (LATER-7, SRST-1): a local cluster in mixed
mode with a publisher and a subscriber (`ccmsec up --subscribers 1`), phone-sim phones configured
*encrypted* that got their LSCs through CAPF at boot, in a device pool whose CallManager group is
publisher, subscriber and whose SRST reference is secured (SRST-2: the router's certificate in
their configuration) — so every hop, fallback included, is SCCP over TLS with the LSC. Four of
them hold two encrypted calls (lock icon, SRTP both ways); one more phone, the test's own
non-secure `FailoverPhone`, sits behind a fault proxy.

* kill -9 of the node serving the phones → all on the subscriber at once, still encrypted with
  the LSC; the calls keep their SRTP media; the node comes back (the supervisor restarts it) → the
  idle phones return after the stable period, the phones in calls only once they hung up;
* the node hung (SIGSTOP) → noticed by missed keepalives, calls keep their media; SIGCONT → back;
* every node killed → all on the secured SRST over TLS, calls keep their media, fallback notice;
* the path to the node cut (fault proxy swallowing everything) → noticed by missed keepalives.
"""

from __future__ import annotations

import asyncio
import re
import signal

import pytest
import pytest_asyncio

from ccmsec.adminclient import AdminClient, discover
from ccmsec.aio.sccp_failover import FailoverPhone, open_streams
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_failover import FailoverSettings, Target, TargetKind
from ccmsec_proto import phone_sim_pb2, phone_sim_pb2_grpc
from tests.chaos.conftest import Report, now, record, start_cluster, stop_cluster, until
from tests.faultproxy import FaultProxy

pytestmark = [pytest.mark.timeout(480), pytest.mark.asyncio(loop_scope="module")]

SIM_PHONES = 16          # all encrypted, LSCs through CAPF; the first four call
STABLE = 4.0
CUT = "SEP0000000CA005"  # the test's own non-secure phone behind the fault proxy
POOL, REFERENCE = "CHAOS-POOL", "CHAOS-SRST"
PASSWORD = "chaos-token-password\n"


class Load:
    def __init__(self, cluster):
        self.c = cluster
        self.pub, self.sub = cluster.host("callmanager"), cluster.host("callmanager-sub1")
        self.srst = cluster.host("srst")
        self.sccp = cluster.port("callmanager", "sccp_port")
        self.srst_port = cluster.port("srst", "sccp_port")
        self.names: list[str] = []
        self.numbers: dict[str, str] = {}
        self.pairs: list[tuple[str, str]] = []
        self.cut: FailoverPhone | None = None
        self.proxy: FaultProxy | None = None

    # --- phone-sim over its gRPC API -------------------------------------------------------------
    def _channel(self):
        svc = self.c.endpoints["services"]["phone-sim"]
        return secure_channel(client_identity(self.c.data), svc["host"], svc["grpc_port"], "phone-sim")

    async def act(self, name: str, action: str, number: str = "") -> phone_sim_pb2.PhoneCallsReply:
        async with self._channel() as ch:
            return await phone_sim_pb2_grpc.PhoneSimStub(ch).PhoneAction(
                phone_sim_pb2.PhoneActionRequest(name=name, action=action, number=number, wait_seconds=3),
                timeout=15)

    async def calls(self, names) -> dict[str, phone_sim_pb2.PhoneCallsReply]:
        async with self._channel() as ch:
            stub = phone_sim_pb2_grpc.PhoneSimStub(ch)
            return {n: await stub.GetPhoneCalls(phone_sim_pb2.PhoneName(name=n), timeout=10) for n in names}

    @property
    def callers(self) -> list[str]:
        return [n for pair in self.pairs for n in pair]

    # --- where the phones are --------------------------------------------------------------------
    async def hosts(self) -> dict[str, str]:
        hosts = {p.name: p.registered_with.split(":")[0] if p.state == "registered" else ""
                 for p in await self.c.phones()}
        if self.cut is not None:   # through the proxy it is on the publisher
            active = self.cut.active if self.cut.registered else None
            hosts[CUT] = "" if active is None else self.pub if active.port == self.proxy.port else active.host
        return hosts

    async def converge(self, host: str, started: float, timeout: float, *, among=None) -> list[float]:
        """Seconds from `started` until each phone (of `among`, default all) is registered with `host`."""
        done: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            hosts = await self.hosts()
            if among is not None:
                hosts = {n: h for n, h in hosts.items() if n in among}
            for name, where in hosts.items():
                if where == host and name not in done:
                    done[name] = now() - started
            if len(done) == len(hosts):
                return sorted(done.values())
            if loop.time() > deadline:
                missing = sorted(set(hosts) - set(done))
                raise AssertionError(f"{len(missing)} phone(s) not on {host} after {timeout} s: "
                                     f"{missing[:5]} ({ {m: hosts[m] for m in missing[:5]} })")
            await asyncio.sleep(0.2)

    async def status_wrong(self, host: str) -> list[str]:
        """What the phones show that is not right once on `host`: every phone-sim phone registered
        there encrypted, presenting its LSC (CERT-2)."""
        wrong = []
        for p in await self.c.phones():
            shown = (p.state, p.registered_with.split(":")[0], p.transport, p.certificate_in_use)
            if shown != ("registered", host, "encrypted", "LSC"):
                wrong.append(f"{p.name} {shown}")
        return wrong

    # --- calls -----------------------------------------------------------------------------------
    async def calls_up(self) -> None:
        for a, b in self.pairs:
            async def ready():
                replies = await self.calls((a, b))
                return all(r.ready and r.registered_with for r in replies.values())
            await until(ready, "phones ready to call", 30)
            await self.act(a, "dial", self.numbers[b])

            async def ringing():
                return any(c.ringing for c in (await self.calls((b,)))[b].calls)
            await until(ringing, "ringing", 15)
            await self.act(b, "answer")

        async def encrypted_and_talking():
            replies = await self.calls(self.callers)
            return all(any(c.state == "connected" and c.icon == "lock" for c in r.calls)
                       and r.media.streams >= 1 and r.media.srtp_both_ways for r in replies.values())
        await until(encrypted_and_talking, "every call connected, lock icon, SRTP both ways", 20)
        before = await self.received()
        await until(lambda: self._flowing(before), "audio in every call", 15)

    async def received(self) -> dict[str, int]:
        return {n: r.media.received for n, r in (await self.calls(self.callers)).items()}

    async def _flowing(self, before: dict[str, int], packets: int = 10) -> bool:
        after = await self.received()
        return all(after[n] - before[n] >= packets for n in self.callers)

    async def media_survived(self, before: dict[str, int]) -> int:
        """Calls whose SRTP audio did not keep flowing both ways after the fault."""
        await asyncio.sleep(1.5)
        replies = await self.calls(self.callers)
        dropped = 0
        for a, b in self.pairs:
            for n in (a, b):
                m = replies[n].media
                if m.received - before[n] < 25 or not m.srtp_both_ways or m.streams < 1:   # 50 packets/s
                    dropped += 1
                    break
        return dropped

    async def hang_up_all(self) -> None:
        for a, _ in self.pairs:
            await self.act(a, "hangup")

        async def cleared():
            return all(r.media.streams == 0 and not r.calls for r in (await self.calls(self.callers)).values())
        try:
            await until(cleared, "calls cleared on both ends after hang-up", 20)
        except AssertionError as exc:
            left = {n: (r.media.streams, [(c.state, c.calling, c.called) for c in r.calls])
                    for n, r in (await self.calls(self.callers)).items()}
            raise AssertionError(f"{exc}: (streams, calls) {left}") from None


async def _mixed_mode(cluster, pw) -> None:
    for name in ("t1", "t2"):
        res = await asyncio.to_thread(cluster.cli, "token", "create", "--name", name, "--password-file", str(pw))
        assert res.returncode == 0, res.stderr
    for args in (("ctl", "provider", "activate"), ("capf", "activate")):
        res = await asyncio.to_thread(cluster.cli, *args)
        assert res.returncode == 0, res.stdout + res.stderr
    res = await asyncio.to_thread(cluster.cli, "ctl", "update", "--token", "t1", "--token", "t2", "--mode", "mixed",
                                  "--password-file", str(pw), "-q", timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def load(tmp_path_factory):
    cluster = await asyncio.to_thread(start_cluster, "ccmsec-chaos-nodes-")
    ld = Load(cluster)
    try:
        pw = tmp_path_factory.mktemp("tokens") / "pw"
        pw.write_text(PASSWORD)
        await _mixed_mode(cluster, pw)
        res = await asyncio.to_thread(cluster.cli, "phones", "add", "--count", str(SIM_PHONES), "--model",
                                      "7960", "--name-prefix", "SEP0CA05")
        assert res.returncode == 0, res.stderr
        ld.names = re.findall(r"^(SEP[0-9A-F]{12})", res.stdout, re.M)
        assert len(ld.names) == SIM_PHONES, res.stdout
        ld.pairs = [(ld.names[0], ld.names[1]), (ld.names[2], ld.names[3])]
        srst = cluster.endpoints["services"]["srst"]
        with AdminClient(discover(cluster.data)) as admin:
            admin.add_srst_reference(REFERENCE, srst["host"], sccp_port=srst["sccp_port"],
                                     sccp_tls_port=srst["sccp_tls_port"], credentials_port=srst["srst_cert_port"])
            # SRST-2 before any device is in the pool: fallback over TLS too, and nobody to reset.
            assert admin.srst_security(REFERENCE, True)["secure"]
            admin.add_pool(POOL, [ld.pub, ld.sub], srst=REFERENCE)
            for i, name in enumerate(ld.names):
                # Devices first, as an administrator does: encrypted, in the pool, an LSC to install.
                admin.add_device(name, "7960", "encrypted")
                admin.set_device_pool(name, POOL)
                admin.capf_schedule(name, "install", "null", key_type="ec256")
                if name in ld.callers:
                    ld.numbers[name] = f"600{i + 1}"
                    admin.add_line(ld.numbers[name], name)
            admin.add_device(CUT, "7960")
            admin.add_line("6005", CUT)
        res = await asyncio.to_thread(cluster.cli, "phones", "boot", "--all")
        assert res.returncode == 0, res.stdout + res.stderr

        async def enrolled():
            return (len(await ld.status_wrong(ld.pub)) == 0)
        try:
            await until(enrolled, "every phone registered encrypted with its LSC on the publisher", 240)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {(await ld.status_wrong(ld.pub))[:5]}") from None
        ld.proxy = await FaultProxy((ld.pub, ld.sccp)).start()
        ld.cut = FailoverPhone(
            CUT, [Target("127.0.0.1", ld.proxy.port), Target(ld.sub, ld.sccp),
                  Target(ld.srst, ld.srst_port, TargetKind.SRST)],
            lambda target: open_streams(target, ssl_context=None, bind_host="127.0.0.1", timeout=2),
            lambda ip: s.Register(CUT, ip, device_type=7), bind_host="127.0.0.1", standby_interval=1.0,
            register_timeout=3, probe_timeout=1,
            settings=FailoverSettings(stable_period=STABLE, probe_interval=1.0, retry_base=0.3, retry_max=2.0))
        ld.cut.start()
        await until(lambda: ld.cut.registered, "the proxied phone registered", 60)
        await asyncio.sleep(4)   # SRST's directory refresh has seen every device and its LSC trust
        yield ld
    finally:
        if ld.cut is not None:
            await ld.cut.stop()
        if ld.proxy is not None:
            await ld.proxy.close()
        await asyncio.to_thread(stop_cluster, cluster)


def _lost(ld: Load, times: list[float]) -> int:
    return SIM_PHONES + 1 - len(times)


async def _back_on_publisher(ld: Load, scenario: str, started: float) -> None:
    times = await ld.converge(ld.pub, started, 60)
    report = record(Report(f"{scenario}: fail-back", len(times), times, events_lost=_lost(ld, times),
                           note=f"stable period {STABLE:g} s"))
    assert report.events_lost == 0
    assert min(times) >= STABLE, "fail-back only after the stable period"
    assert await ld.status_wrong(ld.pub) == []


async def _fault_with_calls(ld: Load, scenario: str, fault, host: str, timeout: float, note: str = ""):
    """Calls up, the fault, convergence on `host`; the calls' media must keep flowing and the
    status be right there. Returns (report, when the fault happened)."""
    await ld.calls_up()
    before = await ld.received()
    started = now()
    fault()
    times = await ld.converge(host, started, timeout)
    dropped = await ld.media_survived(before)
    wrong = await ld.status_wrong(host)
    report = record(Report(scenario, len(times), times, calls=len(ld.pairs), calls_dropped=dropped,
                           events_lost=_lost(ld, times), note=note))
    assert report.calls_dropped == 0, "calls keep their SRTP media when the node goes"
    assert report.events_lost == 0 and wrong == [], wrong
    return report, started


async def test_kill_9_of_the_serving_node_LATER_7(load):
    ld = load
    report, started = await _fault_with_calls(
        ld, "kill -9 serving node -> subscriber (encrypted)", lambda: ld.c.signal("callmanager", signal.SIGKILL),
        ld.sub, 20)
    assert report.worst < 5.0, "a reset connection is noticed at once"
    # Never in the middle of a call: the idle phones return once the restarted node has answered
    # for the stable period, the phones in (preserved) calls stay until they hang up.
    idle = [n for n in ld.names if n not in ld.callers] + [CUT]
    await ld.converge(ld.pub, started, 60, among=idle)
    await asyncio.sleep(1.5)   # a few more probe rounds, well past the callers' stable period
    stayed = {n: h for n, h in (await ld.hosts()).items() if n in ld.callers}
    assert set(stayed.values()) == {ld.sub}, f"a phone failed back in the middle of a call: {stayed}"
    await ld.hang_up_all()
    await _back_on_publisher(ld, "kill -9", started)


async def test_hung_node_is_noticed_by_keepalive_LATER_7(load):
    ld = load
    try:
        report, _ = await _fault_with_calls(
            ld, "SIGSTOP serving node -> subscriber (encrypted)", lambda: ld.c.signal("callmanager", signal.SIGSTOP),
            ld.sub, 30, note="keepalive 1 s")
    finally:
        ld.c.signal("callmanager", signal.SIGCONT)
    resumed = now()
    assert min(report.converge_s) >= 2.0, "noticed by missed keepalives, not at once"
    await ld.hang_up_all()
    await _back_on_publisher(ld, "SIGSTOP", resumed)


async def test_every_node_killed_all_on_srst_then_back_SRST_1(load):
    ld = load

    def kill_both():
        ld.c.signal("callmanager", signal.SIGKILL)
        ld.c.signal("callmanager-sub1", signal.SIGKILL)
    _, started = await _fault_with_calls(ld, "every node killed -> secured SRST (encrypted)", kill_both, ld.srst, 30)
    # Every phone that fell back to SRST shows the fallback notice, not just one of them (the
    # test's own proxied phone is bare SCCP with no display and is left out).
    on_srst = [n for n, h in (await ld.hosts()).items() if h == ld.srst and n in ld.names]
    assert sorted(on_srst) == sorted(ld.names), f"not every simulated phone is on SRST: {on_srst}"
    silent = [n for n, r in (await ld.calls(on_srst)).items()
              if not any("Fallback" in t for t in r.notifications)]
    assert not silent, f"phones on SRST not told they are in fallback: {silent}"
    await ld.hang_up_all()
    await _back_on_publisher(ld, "every node killed", started)


async def test_network_cut_is_noticed_by_keepalive_LATER_7(load):
    ld = load
    phone = ld.cut
    await until(lambda: phone.registered and phone.active.port == ld.proxy.port, "cut phone on the publisher", 30)
    started = now()
    ld.proxy.blackhole()
    took = await until(lambda: phone.registered and phone.active.host == ld.sub, "failover of the cut phone", 20)
    record(Report("network cut (proxy) -> subscriber", 1, [took], note="keepalive 1 s"))
    loss = [e for e in phone.events if e.kind == "loss"][-1]
    assert "keepalive" in loss.detail and took >= 2.0
    ld.proxy.restore()
    back = await until(lambda: phone.registered and phone.active.port == ld.proxy.port, "fail-back through the proxy", 30)
    record(Report("network cut: fail-back", 1, [now() - started], note=f"restored after {took:.1f} s"))
    assert back >= STABLE
