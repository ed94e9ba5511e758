"""Call-control nodes failing under load (LATER-7, SRST-1): a local cluster with a publisher and a
subscriber (`ccmsec up --subscribers 1`), phone-sim phones registered through their
configuration (publisher, subscriber, then SRST), and phones of the test's own — the same
`FailoverPhone` phone-sim runs — in calls with real audio, one of them behind a fault proxy.

* kill -9 of the node serving the phones → all on the subscriber at once; calls keep their media;
  the node comes back (the supervisor restarts it) → the phones return after the stable period;
* the node hung (SIGSTOP) → noticed by missed keepalives; SIGCONT → fail-back;
* every node killed → all on SRST, then back;
* the path to the node cut (fault proxy swallowing everything) → noticed by missed keepalives.
"""

from __future__ import annotations

import asyncio
import re
import signal

import pytest
import pytest_asyncio

from ccmsec.adminclient import AdminClient, discover
from ccmsec.aio.media import PortAudio
from ccmsec.aio.sccp_failover import FailoverPhone, open_streams
from ccmsec.media import tones
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec.wire.sccp_failover import FailoverSettings, Target, TargetKind
from tests.chaos.conftest import Report, now, record, start_cluster, stop_cluster, until
from tests.faultproxy import FaultProxy

pytestmark = [pytest.mark.timeout(240), pytest.mark.asyncio(loop_scope="module")]

SIM_PHONES = 12
STABLE = 4.0
CALLERS = {"SEP0000000CA001": "6001", "SEP0000000CA002": "6002",
           "SEP0000000CA003": "6003", "SEP0000000CA004": "6004"}
PAIRS = [("SEP0000000CA001", "SEP0000000CA002"), ("SEP0000000CA003", "SEP0000000CA004")]
CUT = "SEP0000000CA005"   # behind the fault proxy


class Load:
    def __init__(self, cluster):
        self.c = cluster
        self.pub, self.sub = cluster.host("callmanager"), cluster.host("callmanager-sub1")
        self.srst = cluster.host("srst")
        self.sccp = cluster.port("callmanager", "sccp_port")
        self.srst_port = cluster.port("srst", "sccp_port")
        self.audio: dict[str, PortAudio] = {}
        self.phones: dict[str, FailoverPhone] = {}
        self.proxy: FaultProxy | None = None

    def targets(self, first: Target | None = None) -> list[Target]:
        return [first or Target(self.pub, self.sccp), Target(self.sub, self.sccp),
                Target(self.srst, self.srst_port, TargetKind.SRST)]

    def phone(self, name: str, targets: list[Target]) -> FailoverPhone:
        src = tones.tone(300 + 50 * len(self.phones))

        def on_media(what, port):
            if what == "open":
                self.audio[name] = PortAudio(port, src.frame)

        async def connect(target):
            return await open_streams(target, ssl_context=None, bind_host="127.0.0.1", timeout=2)
        p = FailoverPhone(name, targets, connect, lambda ip: s.Register(name, ip, device_type=7),
                          bind_host="127.0.0.1", on_media=on_media, standby_interval=1.0,
                          register_timeout=3, probe_timeout=1, preserved_media_timeout=3,
                          settings=FailoverSettings(stable_period=STABLE, probe_interval=1.0,
                                                    retry_base=0.3, retry_max=2.0))
        p.start()
        self.phones[name] = p
        return p

    async def sim_hosts(self) -> dict[str, str]:
        return {p.name: p.registered_with.split(":")[0] if p.state == "registered" else ""
                for p in await self.c.phones()}

    def own_hosts(self) -> dict[str, str]:
        return {n: (p.active.host if p.registered and p.active else "") for n, p in self.phones.items()
                if n != CUT}

    async def converge(self, host: str, started: float, timeout: float, *, own=True) -> list[float]:
        """Seconds from `started` until each phone is registered with `host`."""
        done: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            hosts = await self.sim_hosts()
            if own:
                hosts.update(self.own_hosts())
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

    async def calls_up(self) -> None:
        for a, b in PAIRS:
            pa, pb = self.phones[a], self.phones[b]
            await until(lambda: pa.calling and pb.calling and pa.calling.display.ready
                        and pb.calling.display.ready, "phones ready", 30)
            if pa.in_call:
                continue
            pa.calling.act(pa.calling.display.dial, CALLERS[b])
            await until(lambda: any(c.state == CS.RING_IN for c in pb.calling.display.calls.values()),
                        "ringing", 15)
            pb.calling.act(pb.calling.display.answer)
        await until(lambda: all(n in self.audio and self.audio[n].counters()["received"] >= 10
                                for n in CALLERS), "audio in every call", 15)

    def received(self) -> dict[str, int]:
        return {n: self.audio[n].counters()["received"] for n in CALLERS}

    async def media_survived(self, before: dict[str, int]) -> int:
        """Calls whose audio did not keep flowing (both directions) after the fault."""
        await asyncio.sleep(1.5)
        after = self.received()
        dropped = 0
        for a, b in PAIRS:
            if after[a] - before[a] < 25 or after[b] - before[b] < 25:   # 50 packets/s each way
                dropped += 1
        return dropped

    def hang_up_all(self) -> None:
        for a, _ in PAIRS:
            self.phones[a].hang_up()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def load():
    cluster = await asyncio.to_thread(start_cluster, "ccmsec-chaos-nodes-")
    ld = Load(cluster)
    try:
        with AdminClient(discover(cluster.data)) as admin:
            for name, dn in {**CALLERS, CUT: "6005"}.items():
                admin.add_device(name, "7960")
                admin.add_line(dn, name)
        res = await asyncio.to_thread(cluster.cli, "phones", "add", "--count", str(SIM_PHONES), "--model",
                                      "7960", "--name-prefix", "SEP0CA05")
        assert res.returncode == 0, res.stderr
        # Devices first, as an administrator does: an auto-registered phone would run its first
        # boot on XMLDefault.cnf.xml, which names no SRST reference.
        with AdminClient(discover(cluster.data)) as admin:
            for name in re.findall(r"^(SEP[0-9A-F]{12})", res.stdout, re.M):
                admin.add_device(name, "7960")
        res = await asyncio.to_thread(cluster.cli, "phones", "boot", "--all", "--wait", "--timeout", "120")
        assert res.returncode == 0 and f"{SIM_PHONES}/{SIM_PHONES} settled" in res.stdout, res.stdout + res.stderr
        for name in CALLERS:
            ld.phone(name, ld.targets())
        ld.proxy = await FaultProxy((ld.pub, ld.sccp)).start()
        ld.phone(CUT, ld.targets(Target("127.0.0.1", ld.proxy.port)))
        await ld.converge(ld.pub, now(), 60)
        await asyncio.sleep(4)   # SRST's directory refresh has seen the auto-registered phones
        yield ld
    finally:
        for p in ld.phones.values():
            await p.stop()
        if ld.proxy is not None:
            await ld.proxy.close()
        await asyncio.to_thread(stop_cluster, cluster)


async def _back_on_publisher(ld: Load, scenario: str, started: float) -> None:
    times = await ld.converge(ld.pub, started, 60)
    report = record(Report(f"{scenario}: fail-back", len(times), times,
                           events_lost=SIM_PHONES + len(CALLERS) - len(times), note=f"stable period {STABLE:g} s"))
    assert report.events_lost == 0
    assert min(times) >= STABLE, "fail-back only after the stable period"


async def test_kill_9_of_the_serving_node_LATER_7(load):
    ld = load
    await ld.calls_up()
    before = ld.received()
    started = now()
    ld.c.signal("callmanager", signal.SIGKILL)
    times = await ld.converge(ld.sub, started, 20)
    dropped = await ld.media_survived(before)
    assert all(ld.phones[a].preserved or ld.phones[a].in_call for a, _ in PAIRS)
    report = record(Report("kill -9 serving node -> subscriber", len(times), times,
                           calls=len(PAIRS), calls_dropped=dropped,
                           events_lost=SIM_PHONES + len(CALLERS) - len(times)))
    ld.hang_up_all()
    await until(lambda: not any(p.in_call for p in ld.phones.values()), "calls cleared after hang-up", 10)
    assert report.calls_dropped == 0 and report.events_lost == 0
    assert report.worst < 5.0, "a reset connection is noticed at once"
    await _back_on_publisher(ld, "kill -9", started)


async def test_hung_node_is_noticed_by_keepalive_LATER_7(load):
    ld = load
    started = now()
    ld.c.signal("callmanager", signal.SIGSTOP)
    try:
        times = await ld.converge(ld.sub, started, 30)
    finally:
        ld.c.signal("callmanager", signal.SIGCONT)
    resumed = now()
    report = record(Report("SIGSTOP serving node -> subscriber", len(times), times,
                           events_lost=SIM_PHONES + len(CALLERS) - len(times), note="keepalive 1 s"))
    assert report.events_lost == 0
    assert min(times) >= 2.0, "noticed by missed keepalives, not at once"
    await _back_on_publisher(ld, "SIGSTOP", resumed)


async def test_every_node_killed_all_on_srst_then_back_SRST_1(load):
    ld = load
    started = now()
    ld.c.signal("callmanager", signal.SIGKILL)
    ld.c.signal("callmanager-sub1", signal.SIGKILL)
    times = await ld.converge(ld.srst, started, 30)
    report = record(Report("every node killed -> SRST", len(times), times,
                           events_lost=SIM_PHONES + len(CALLERS) - len(times)))
    assert report.events_lost == 0
    notified = [p for p in ld.phones.values() if p.calling and p.calling.display.notifications]
    assert notified, "phones on SRST are told they are in fallback"
    await _back_on_publisher(ld, "every node killed", started)


async def test_network_cut_is_noticed_by_keepalive_LATER_7(load):
    ld = load
    phone = ld.phones[CUT]
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
