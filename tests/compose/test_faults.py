"""Issue 12's faults against the compose cluster (one bring-up for all of them): a load of phone-sim
phones configured *encrypted* that got their LSCs through CAPF at boot, in a device pool whose
CallManager group is the publisher then `callmanager-sub1` and whose SRST reference is secured
(SRST-2), two of the pairs in encrypted calls (lock icon, SRTP both ways). Each test injects one
fault with Docker and checks that the phones converge and nothing is lost:

* PostgreSQL killed and started again, twice, while phones enrol over CAPF and an administrator
  adds devices and lines through the published administration API → every acknowledged change
  kept, no operation left half done, every phone registered encrypted with a valid LSC;
* `docker network disconnect` of the serving node (the publisher) → noticed by missed keepalives,
  every phone on the subscriber, the calls keep their SRTP media; reconnected → the phones return
  after the stable period;
* every call-control node killed → every phone on the secured SRST over TLS with its LSC, the
  calls keep their media, the fallback notice shown; the nodes started again → fail-back after the
  stable period;
* NATS killed (and started again) right after a reset-all was accepted → every phone reset exactly
  once (JetStream keeps the event on its volume);
* tftp-signer killed while it re-signs every file, with clients inside the cluster's network
  fetching the whole time → no truncated or unsigned file is ever served, serving resumes.

Each prints a `compose fault …` line (time to converge median and worst, calls dropped, events
lost); docs/survivability.md and docs/performance.md hold the figures of the last run.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest
from cryptography import x509

from ccmsec.adminclient import AdminClient, AdminClientError, discover
from ccmsec.cluster import compose
from tests.compose.conftest import FAILOVER_SETTINGS, ROOT, SUBSCRIBERS
from tests.compose.test_cluster import wait_until
from tests.lsccheck import lsc_problem

# bring-up, mixed mode, the enrolled load and five faults on a loaded 2-core machine
pytestmark = pytest.mark.timeout(1500)

KEEPALIVE = float(FAILOVER_SETTINGS["CCMSEC_SCCP_KEEPALIVE"])
STABLE = float(FAILOVER_SETTINGS["CCMSEC_PHONE_FAILBACK_STABLE"])
PREFIX = "SEP0FA"          # this module's phones (phone-sim names them PREFIX + a counter)
LOAD_PHONES = 8            # encrypted, LSCs through CAPF; the first four hold two calls
ENROL_PHONES = 4           # more, enrolling while the database goes away
OUTAGES = (0.0, 8.0)       # PostgreSQL killed as the phones boot and this many s after (3 s down each)
POOL, REFERENCE = "FAULTS-POOL", "FAULTS-SRST"
TOKEN_PASSWORD = "compose-faults-token-password\n"
SUB = SUBSCRIBERS[0]
REPORTS: list[str] = []


@dataclass
class Figures:
    scenario: str
    converge: dict[str, float] = field(default_factory=dict)
    calls: int = 0
    dropped: int = 0
    lost: int = 0
    note: str = ""

    def line(self) -> str:
        times = list(self.converge.values())
        med = f"{statistics.median(times):6.2f}" if times else "   n/a"
        worst = f"{max(times):6.2f}" if times else "   n/a"
        return (f"compose fault {self.scenario:<48} phones {len(times):>2}  converge median {med} s  "
                f"worst {worst} s  calls {self.calls} dropped {self.dropped}  events lost {self.lost}"
                + (f"  ({self.note})" if self.note else ""))


def report(capsys, fig: Figures) -> Figures:
    REPORTS.append(fig.line())
    with capsys.disabled():  # the figures belong in the suite's output, pass or not
        print("\n" + fig.line())
    return fig


class Load:
    """The phones of this module, reached through phone-sim's published gRPC port (the `cli`
    identity of `compose client-bundle`)."""

    def __init__(self, cluster):
        import grpc

        from ccmsec_proto import phone_sim_pb2_grpc

        self.c = cluster
        self.bundle = json.loads(cluster.cli("compose", "client-bundle").stdout)
        ident = self.bundle["identity"]
        self.creds = grpc.ssl_channel_credentials(root_certificates=self.bundle["ca"].encode(),
                                                  private_key=ident["tls.key"].encode(),
                                                  certificate_chain=ident["tls.crt"].encode())
        self.channel = self.grpc_channel("phone-sim")
        self.sim = phone_sim_pb2_grpc.PhoneSimStub(self.channel)
        self.names: list[str] = []
        self.numbers: dict[str, str] = {}
        self.pairs: list[tuple[str, str]] = []
        self.ca, self.password = cluster.fetch_admin_credentials()

    def grpc_channel(self, role: str):
        import grpc

        port = self.c.ports[compose.publish_variable(role, "grpc_port")]
        return grpc.secure_channel(f"127.0.0.1:{port}", self.creds,
                                   options=[("grpc.ssl_target_name_override", role)])

    def admin(self, timeout: float = 30) -> AdminClient:
        return AdminClient(discover(self.c.workdir, url=self.c.admin_url(), cafile=self.ca,
                                    password=self.password.read_text().strip()), timeout=timeout)

    # --- phone-sim -----------------------------------------------------------------------------
    def phones(self, names=None) -> dict:
        from ccmsec_proto import phone_sim_pb2

        wanted = set(names or self.names)
        reply = self.sim.ListPhones(phone_sim_pb2.PhoneSelector(all=True), timeout=20)
        return {p.name: p for p in reply.phones if p.name in wanted}

    def add_phones(self, count: int, model: str = "7960") -> list[str]:
        from ccmsec_proto import phone_sim_pb2

        added = self.sim.AddPhones(phone_sim_pb2.AddPhonesRequest(count=count, model=model, name_prefix=PREFIX),
                                   timeout=60)
        return [p.name for p in added.phones]

    def boot(self, names) -> None:
        from ccmsec_proto import phone_sim_pb2

        self.sim.BootPhones(phone_sim_pb2.PhoneSelector(names=list(names)), timeout=60)

    def act(self, name: str, action: str, number: str = ""):
        from ccmsec_proto import phone_sim_pb2

        return self.sim.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=name, action=action, number=number,
                                                                     wait_seconds=3), timeout=30)

    def calls(self, names) -> dict:
        from ccmsec_proto import phone_sim_pb2

        return {n: self.sim.GetPhoneCalls(phone_sim_pb2.PhoneName(name=n), timeout=20) for n in names}

    # --- where the phones are ------------------------------------------------------------------
    def node(self, service: str) -> set[str]:
        """A node as phones name it: its compose name, or its address now."""
        try:
            return {service, self.c.address(service)}
        except Exception:  # noqa: BLE001 — disconnected or not running: by name only
            return {service}

    def where(self, names=None) -> dict[str, str]:
        return {n: (p.registered_with.rsplit(":", 1)[0] if p.state == "registered" else "")
                for n, p in self.phones(names).items()}

    def converge(self, service: str, since: float, timeout: float, what: str, names=None,
                 seen: dict[str, float] | None = None) -> dict[str, float]:
        """Seconds from `since` until each phone (of `names`, default all) is first seen registered
        with `service` (polled every 0.2 s; filled into `seen` as they come)."""
        names = list(names or self.names)
        seen = {} if seen is None else seen
        deadline = time.monotonic() + timeout
        host = self.node(service)
        last: dict[str, str] = {}
        rounds = 0
        while len(seen) < len(names):
            rounds += 1
            if rounds % 25 == 0:  # a node started again may come back on another address
                host |= self.node(service)
            try:
                last = self.where(names)
            except Exception:  # noqa: BLE001 — phone-sim busy: ask again
                last = last or {}
            for name, at in last.items():
                if at in host and name not in seen:
                    seen[name] = time.monotonic() - since
            if time.monotonic() > deadline:
                missing = {n: last.get(n, "?") for n in names if n not in seen}
                try:
                    detail = "; ".join(f"{p.name} {p.state} {p.last_failure}: {p.last_failure_reason} "
                                       f"[{' | '.join(p.history[-5:])}]"
                                       for p in list(self.phones(list(missing)[:2]).values()))
                except Exception as exc:  # noqa: BLE001
                    detail = repr(exc)
                raise AssertionError(f"{what}: {len(missing)} phone(s) not on {service} within {timeout:.0f} s: "
                                     f"{missing}; {detail}")
            time.sleep(0.2)
        return seen

    def wrong(self, service: str, names=None) -> list[str]:
        """Phones not registered with `service` encrypted, presenting their LSC (CERT-2)."""
        host = self.node(service)
        out = []
        for p in self.phones(names).values():
            shown = (p.state, p.registered_with.rsplit(":", 1)[0] in host, p.transport, p.certificate_in_use)
            if shown != ("registered", True, "encrypted", "LSC"):
                out.append(f"{p.name} {p.state} {p.registered_with} {p.transport} {p.certificate_in_use}")
        return out

    # --- calls ---------------------------------------------------------------------------------
    @property
    def callers(self) -> list[str]:
        return [n for pair in self.pairs for n in pair]

    def calls_up(self) -> None:
        for a, b in self.pairs:
            wait_until(lambda: all(r.ready and r.registered_with for r in self.calls((a, b)).values()),
                       60, f"{a} and {b} ready to call", step=0.5)
            self.act(a, "dial", self.numbers[b])
            wait_until(lambda: any(c.ringing or c.state == "ring-in" for c in self.calls((b,))[b].calls),
                       60, f"{b} ringing", step=0.5)
            self.act(b, "answer")
        wait_until(lambda: all(any(c.state == "connected" and c.icon == "lock" for c in r.calls)
                               and r.media.srtp_both_ways for r in self.calls(self.callers).values()),
                   60, "every call connected, lock icon, SRTP both ways", step=0.5)
        before = self.received()
        wait_until(lambda: all(v - before[n] >= 25 for n, v in self.received().items()), 60,
                   "audio in every call", step=0.5)

    def received(self) -> dict[str, int]:
        return {n: r.media.received for n, r in self.calls(self.callers).items()}

    def dropped(self, before: dict[str, int], timeout: float = 20) -> int:
        """Calls whose SRTP audio did not keep flowing both ways after the fault: 25 more packets
        on both ends (half a second of audio) and SRTP both ways, within `timeout`."""
        deadline = time.monotonic() + timeout
        flowing: set[tuple[str, str]] = set()
        while time.monotonic() < deadline and len(flowing) < len(self.pairs):
            replies = self.calls(self.callers)
            for a, b in self.pairs:
                if all(replies[n].media.received - before[n] >= 25 and replies[n].media.srtp_both_ways
                       for n in (a, b)):
                    flowing.add((a, b))
            time.sleep(0.5)
        return len(self.pairs) - len(flowing)

    def hang_up_all(self) -> None:
        for a, _ in self.pairs:
            self.act(a, "hangup")
        wait_until(lambda: all(not r.calls and r.media.streams == 0 for r in self.calls(self.callers).values()),
                   60, "calls cleared on both ends after hang-up", step=0.5)


def _cli_with_password(cluster, *args: str, timeout: float = 300) -> str:
    proc = cluster.dc("run", "--rm", "-T", "-e", "CCMSEC_ADMIN_TIMEOUT=120", "cli", *args, "--password-file", "-",
                      timeout=timeout, input=TOKEN_PASSWORD)
    return proc.stdout


def _admin_answers(ld: Load) -> bool:
    with ld.admin(timeout=10) as api:
        return api.list_devices() is not None


def _enrol(ld: Load, names: list[str], first_number: int) -> None:
    """Devices as an administrator configures them: encrypted, in the pool, a line, an LSC to
    install through CAPF (null authentication) at the next boot."""
    with ld.admin() as api:
        for i, name in enumerate(names):
            api.add_device(name, "7960", "encrypted")
            api.set_device_pool(name, POOL)
            api.capf_schedule(name, "install", "null", key_type="ec256")
            ld.numbers[name] = str(first_number + i)
            api.add_line(ld.numbers[name], name)


@pytest.fixture(scope="module")
def load(cluster):
    """Mixed mode (two tokens in the `cli` container, CTL Provider and CAPF activated, the CTL
    client), a secured SRST reference and a pool (publisher, subscriber, that SRST), then
    LOAD_PHONES encrypted phones enrolled through CAPF, all on the publisher."""
    c = cluster
    for token in ("t1", "t2"):
        _cli_with_password(c, "token", "create", "--name", token)
    for args in (("ctl", "provider", "activate"), ("capf", "activate")):
        c.cli(*args)
    started = {node: c.inspect(node)["State"]["StartedAt"] for node in ("callmanager", "tftp-signer")}
    _cli_with_password(c, "ctl", "update", "--token", "t1", "--token", "t2", "--mode", "mixed", "-q",
                       "--timeout", "60", timeout=400)
    # call control and tftp-signer restart for the new mode (RST-3, RST-4): their processes exit and
    # the restart policy starts the containers again
    wait_until(lambda: all(c.inspect(n)["State"]["StartedAt"] != at for n, at in started.items()), 240,
               "callmanager and tftp-signer restarted for mixed mode")
    c.wait_healthy()
    ld = Load(c)
    wait_until(lambda: _admin_answers(ld), 180, "the administration API answering")
    with ld.admin(timeout=60) as api:
        api.add_srst_reference(REFERENCE, "srst", sccp_port=2000, sccp_tls_port=2443, credentials_port=2445)
        # SRST-2 before any device is in the pool: fallback over TLS too, and nobody to reset
        assert api.srst_security(REFERENCE, True)["secure"]
        api.add_pool(POOL, ["callmanager", SUB], srst=REFERENCE)
    ld.names = ld.add_phones(LOAD_PHONES)
    assert len(ld.names) == LOAD_PHONES
    _enrol(ld, ld.names, 5801)
    ld.pairs = [(ld.names[0], ld.names[1]), (ld.names[2], ld.names[3])]
    ld.boot(ld.names)
    try:
        wait_until(lambda: not ld.wrong("callmanager"), 420, "every phone encrypted with its LSC on the publisher",
                   step=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {ld.wrong('callmanager')}") from None
    time.sleep(2 * KEEPALIVE)  # SRST's directory refresh has seen every device and its LSC trust
    try:
        yield ld
    finally:
        ld.channel.close()
        if REPORTS:
            print("\ncompose fault figures (keepalive %g s, stable period %g s):\n  %s"
                  % (KEEPALIVE, STABLE, "\n  ".join(REPORTS)))


# --- the database --------------------------------------------------------------------------------

class ConfigWriter(threading.Thread):
    """An administrator adding devices and lines the whole time; remembers what was acknowledged."""

    def __init__(self, ld: Load):
        super().__init__(daemon=True)
        self.ld = ld
        self.stop = threading.Event()
        self.devices: list[str] = []
        self.lines: list[tuple[str, str]] = []
        self.refused = 0
        self.last_refusal = ""

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            name, dn = f"SEP0FB0{n:08X}", f"{78000 + n}"
            try:
                with self.ld.admin(timeout=10) as api:
                    api.add_device(name, "7960")
                    self.devices.append(name)
                    api.add_line(dn, name)
                    self.lines.append((dn, name))
            except (AdminClientError, OSError) as exc:
                self.refused += 1  # not acknowledged (error or no answer): allowed
                self.last_refusal = str(exc)[:300]
                time.sleep(0.5)
            time.sleep(0.05)


def _psql(cluster, sql: str) -> list[list[str]]:
    """As the bootstrap user, with every owner's schema on the path (ccmsec/db/roles.py)."""
    from ccmsec.db.roles import DB_ROLES, pg_role

    path = ", ".join(pg_role(r) for r in DB_ROLES)
    out = cluster.exec("postgres", "psql", "-q", "-U", compose.PG_BOOTSTRAP_USER, "-d", compose.PG_DATABASE,
                       "-At", "-F", "\t", "-c", f"SET search_path TO {path}; {sql}").stdout
    return [row.split("\t") for row in out.splitlines() if row]


def test_database_restarted_during_capf_enrolments_and_config_changes(cluster, load, capsys):
    ld = load
    names = ld.add_phones(ENROL_PHONES)
    _enrol(ld, names, 5901)
    writer = ConfigWriter(ld)
    writer.start()
    downs: list[float] = []
    try:
        wait_until(lambda: len(writer.devices) >= 3 or writer.last_refusal, 60,
                   "changes acknowledged before the fault", step=0.5)
        assert len(writer.devices) >= 1, f"the administrator's changes are refused: {writer.last_refusal}"
        # PostgreSQL killed (no checkpoint: WAL recovery) as the phones are booted, so their boots
        # (signed files, CAPF) meet it away and are retried; killed again OUTAGES[1] s later,
        # whatever enrolment or change is in progress then
        done: dict[str, float] = {}  # polled from the boot on, across the outages
        before_fault: list[str] = []
        for n, at in enumerate(OUTAGES):
            if n:
                time.sleep(max(0.0, booted + at - time.monotonic()))
            down = time.monotonic()
            cluster.docker("kill", cluster.container("postgres"))
            if n == 0:
                ld.boot(names)
                booted = time.monotonic()
                poller = threading.Thread(target=lambda: ld.converge(
                    "callmanager", booted, 400, "enrolling phones on the publisher", names, seen=done), daemon=True)
                poller.start()
            time.sleep(3)
            cluster.docker("start", cluster.container("postgres"))
            wait_until(lambda: cluster.health("postgres") == "healthy", 120, "postgres healthy", step=0.5)
            downs.append(time.monotonic() - down)
            if n == 0:
                before_fault = sorted(name for name, t in dict(done).items() if t <= down - booted + 3)
        acked = len(writer.devices)
        wait_until(lambda: not ld.wrong("callmanager", names), 300,
                   "enrolling phones registered encrypted with their LSC after the restarts", step=0.5)
        poller.join(60)
        assert len(done) == len(names), f"registrations not seen by the poll: {sorted(done)}"
        wait_until(lambda: len(writer.devices) >= acked + 3, 90, "changes acknowledged again", step=0.5)
    finally:
        writer.stop.set()
        writer.join(30)
    with ld.admin(timeout=60) as api:
        devices = {d["name"] for d in api.list_devices()}
        lines = {(ln.get("dn"), ln.get("device")) for ln in api.lines()}
    lost = [d for d in writer.devices if d not in devices] + [f"{dn}@{d}" for dn, d in writer.lines
                                                               if (dn, d) not in lines]
    capf = x509.load_pem_x509_certificate(cluster.file("capf", "/data/pki/capf.crt").encode())
    phones = ld.phones(names)
    problems = [f"{n}: LSC {why}" for n in names if (why := lsc_problem(phones[n].lsc.der, n, capf))]
    in_list = ",".join(f"'{n}'" for n in names)
    ops = _psql(cluster, f"SELECT device_name, state, coalesce(issued_fingerprint, '') FROM capf_operations "
                         f"WHERE device_name IN ({in_list}) ORDER BY id")
    for n in names:
        mine = [(state, fp) for dev, state, fp in ops if dev == n]
        if mine != [("done", hashlib.sha256(phones[n].lsc.der).hexdigest())]:
            problems.append(f"{n}: operations {mine}")
    half = [row for row in _psql(cluster, "SELECT device_name, state FROM capf_operations") if row[1] == "in_progress"]
    # the load that was there all along is still on the publisher, encrypted with its LSC
    wait_until(lambda: not ld.wrong("callmanager"), 180, "the load back on the publisher")
    ld.names += names
    fig = report(capsys, Figures(
        "PostgreSQL killed x2 during CAPF enrolments", done, lost=len(lost) + len(problems) + len(half),
        note=f"killed at +{OUTAGES[0]:g} s and +{OUTAGES[1]:g} s after the boot, away {', '.join(f'{d:.1f}' for d in downs)} s "
             f"(kill to healthy); {len(before_fault)} phone(s) registered while it was first away; "
             f"{len(writer.devices)} changes acknowledged, {writer.refused} refused while it was away; "
             f"converge from the boot"))
    assert len(writer.devices) > 0 and downs
    assert not before_fault, f"registered before the database was back, never needed it: {before_fault}"
    assert not lost, f"acknowledged changes lost: {lost[:10]}"
    assert not half, f"operations left half done: {half}"
    assert not problems, problems
    assert fig.lost == 0


# --- call control: a network cut, every node killed -----------------------------------------------

def test_network_disconnect_of_the_serving_node_noticed_by_keepalive(cluster, load, capsys):
    ld = load
    net = f"{cluster.project}_default"
    cm = cluster.container("callmanager")
    ld.calls_up()
    before = ld.received()
    cut = time.monotonic()
    cluster.docker("network", "disconnect", net, cm)
    try:
        # the third unanswered keepalive is seen when the fourth is due, the cut falls anywhere in
        # an interval: up to 5 keepalives, then TLS registrations of the whole load
        moved = ld.converge(SUB, cut, 5 * KEEPALIVE + 30, "failover from the disconnected publisher")
        dropped = ld.dropped(before)
        wrong = ld.wrong(SUB)
    finally:
        cluster.docker("network", "connect", "--alias", "callmanager", net, cm)
    reconnected = time.monotonic()
    ld.hang_up_all()
    back = ld.converge("callmanager", reconnected, 180 + STABLE, "fail-back after the network is back")
    report(capsys, Figures("network disconnect publisher -> subscriber", moved, calls=len(ld.pairs),
                           dropped=dropped, lost=len(ld.names) - len(moved),
                           note=f"keepalive {KEEPALIVE:g} s"))
    report(capsys, Figures("network reconnect -> fail-back to the publisher", back, lost=len(ld.names) - len(back),
                           note=f"stable period {STABLE:g} s, from the reconnect"))
    assert wrong == [], wrong
    assert dropped == 0, "the calls keep their SRTP media when the node's network goes"
    assert min(moved.values()) >= KEEPALIVE - 1, f"moved before a keepalive could be missed: {moved}"
    assert min(back.values()) >= STABLE, f"fail-back before the stable period: {back}"
    assert ld.wrong("callmanager") == []


# --- the bus -------------------------------------------------------------------------------------

def test_nats_killed_during_a_reset_all_every_reset_once(cluster, load, capsys):
    ld = load
    wait_until(lambda: not ld.wrong("callmanager"), 120, "the load on the publisher")
    before = {n: p.boots for n, p in ld.phones().items()}
    nats = cluster.container("nats")
    done: dict[str, float] = {}
    stop = threading.Event()

    went_down: set[str] = set()  # reset seen: phone-sim counts the boot before the phone drops
    #                              its registration, so "registered" alone could be the old one
    quick: set[str] = set()       # reset and back between two polls (not timed)

    def all_back() -> bool:
        for name, p in ld.phones().items():
            if p.boots > before[name] and p.state != "registered":
                went_down.add(name)
            elif p.boots > before[name] and p.state == "registered" and p.transport == "encrypted" \
                    and name not in done:
                if name in went_down:
                    done[name] = time.monotonic() - started
                elif time.monotonic() - started > 60:
                    quick.add(name)
        return len(done) + len(quick) == len(before)

    def poll() -> None:  # from the reset on, so the times are the phones' own
        while not stop.is_set() and not all_back():
            time.sleep(0.2)
    with ld.admin(timeout=60) as api:
        started = time.monotonic()
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        reply = api.reset_all()
    cluster.docker("kill", nats)  # the bus dies while the reset is delivered
    killed = time.monotonic() - started
    time.sleep(1)
    cluster.docker("start", nats)
    try:
        wait_until(lambda: len(done) + len(quick) == len(before), 300, "every phone reset and registered again",
                   step=0.5)
    finally:
        stop.set()
        time.sleep(2 * KEEPALIVE)  # a late redelivery would show as a second boot now
        after = {n: p.boots for n, p in ld.phones().items()}
        twice = [n for n in before if after[n] > before[n] + 1]
        lost = [n for n in before if after[n] == before[n]]
        report(capsys, Figures("NATS killed during reset-all", done, lost=len(lost) + len(twice),
                               note=f"NATS killed {killed:.1f} s after the reset was sent, started 1 s later; "
                                    f"{len(twice)} reset twice; {len(quick)} back between two polls, not timed"))
    assert not lost and not twice, (lost, twice)
    cluster.wait_healthy()


# --- the signing TFTP server ---------------------------------------------------------------------

FETCHER = r'''
import asyncio, json, random, sys, threading, time
from ccmsec.aio.tftp import tftp_get
from ccmsec.formats.cnfxml import parse_cnf_xml
from ccmsec.formats.ctl import Role, parse_ctl
from ccmsec.formats.sgn import parse_sgn, verify_sgn

names = json.loads(sys.argv[1])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
stats = {"good": 0, "failed": 0, "bad": [], "good_at": []}

async def signer():
    while True:
        try:
            ctl = parse_ctl(await tftp_get("tftp-signer", 69, "CTLFile.tlv", timeout=1, retries=3))
            return [r.certificate for r in ctl.records if r.role in (Role.TFTP, Role.CCM_TFTP)][0]
        except Exception:
            await asyncio.sleep(0.5)

async def fetcher(seed, cert, t0):
    rnd = random.Random(seed)
    while not stop.is_set():
        name = f"{rnd.choice(names)}.cnf.xml.sgn"
        try:
            data = await tftp_get("tftp-signer", 69, name, timeout=0.5, retries=1)
        except Exception:
            stats["failed"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            signed = parse_sgn(data)
            verify_sgn(signed, cert)
            assert signed.header.file_name == name, signed.header.file_name
            parse_cnf_xml(signed.payload)
            stats["good"] += 1
            stats["good_at"].append(round(time.time(), 2))
        except Exception as exc:
            stats["bad"].append(f"{name}: {exc!r}"[:300])

async def main():
    cert = await signer()
    print("READY", flush=True)
    await asyncio.gather(*(fetcher(i, cert, time.time()) for i in range(4)))
    stats["good_at"] = stats["good_at"][-2000:]
    print("RESULT " + json.dumps(stats), flush=True)

asyncio.run(main())
'''


def _resign(ld: Load, count: int):
    """`count` Resign-all calls sent at once to tftp-signer's published gRPC port; futures."""
    from ccmsec_proto import tftp_signer_pb2, tftp_signer_pb2_grpc

    channel = ld.grpc_channel("tftp-signer")
    stub = tftp_signer_pb2_grpc.TftpSignerStub(channel)
    return channel, [stub.Resign.future(tftp_signer_pb2.ResignRequest(all=True), timeout=120) for _ in range(count)]


def test_tftp_signer_killed_while_re_signing_serves_nothing_half_signed(cluster, load, capsys):
    import grpc

    ld = load
    with ld.admin(timeout=60) as api:
        existing = [d["name"] for d in api.list_devices()]
    # more files, so that a re-sign of all of them takes a while (bounded: 90 s of additions);
    # four administrators at once: one after the other they took most of this test's time
    more: list[str] = []
    deadline = time.monotonic() + 90
    todo = list(range(max(0, 150 - len(existing))))

    def add_some(share: list[int]) -> None:
        with ld.admin(timeout=60) as api:
            for i in share:
                if time.monotonic() > deadline:
                    return
                try:
                    api.add_device(f"SEP0FC0{i:08X}", "7960")
                    more.append(f"SEP0FC0{i:08X}")
                except AdminClientError:
                    pass  # not acknowledged: not in the sample either
    adders = [threading.Thread(target=add_some, args=(todo[k::4],), daemon=True) for k in range(4)]
    for t in adders:
        t.start()
    for t in adders:
        t.join(120)
    devices = existing + sorted(more)
    sample = json.dumps(devices[:: max(1, len(devices) // 200)])
    proc = subprocess.Popen(
        ["docker-compose", "-p", cluster.project, "--env-file", str(cluster.env_file), "-f",
         str(ROOT / "docker-compose.yml"), "--project-directory", str(ROOT), "run", "--rm", "-T",
         "--entrypoint", "python", "cli", "-c", FETCHER, sample],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    interrupted = False
    attempts = 0
    killed = time.monotonic()
    try:
        ready = proc.stdout.readline()  # the fetcher has the signer's certificate from the CTL
        if ready.strip() != "READY":
            proc.kill()
            raise AssertionError(f"the fetcher did not start: {ready} {proc.stderr.read()[-2000:]}")
        time.sleep(5)  # files served before the fault
        for delay in (0.3, 0.15, 0.05, 0.0, 0.0):
            attempts += 1
            wait_until(lambda: cluster.health("tftp-signer") == "healthy", 180, "tftp-signer healthy", step=0.5)
            channel, futures = _resign(ld, 8)
            time.sleep(delay)
            killed = time.monotonic()
            killed_wall = time.time()
            cluster.docker("kill", cluster.container("tftp-signer"))
            outcomes = []
            for f in futures:
                try:
                    f.result(timeout=120)
                    outcomes.append(True)
                except grpc.RpcError:
                    outcomes.append(False)
            channel.close()
            cluster.docker("start", cluster.container("tftp-signer"))
            if not all(outcomes):
                interrupted = True
                break
        assert interrupted, "the re-sign always finished before the kill; nothing was interrupted"
        wait_until(lambda: cluster.health("tftp-signer") == "healthy", 180, "tftp-signer healthy again", step=0.5)
        time.sleep(5)  # served again for a while
    finally:
        try:
            out, err = proc.communicate(input="", timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    result = next((line for line in out.splitlines() if line.startswith("RESULT ")), None)
    assert result, f"the fetcher gave no result: {out[-2000:]} {err[-2000:]}"
    stats = json.loads(result.removeprefix("RESULT "))
    after = [t for t in stats["good_at"] if t > killed_wall]
    took = (min(after) - killed_wall) if after else float("nan")
    report(capsys, Figures("tftp-signer killed while re-signing", {"fetchers": took} if after else {},
                           lost=len(stats["bad"]),
                           note=f"{len(devices)} devices; kill {attempts} landed mid-re-sign; {stats['good']} files "
                                f"verified, {stats['failed']} fetches not answered; converge = first verified "
                                f"file after the kill"))
    assert not stats["bad"], stats["bad"][:5]
    assert after, "no signed file served after the tftp-signer came back"


# --- every call-control node at once (last: the heaviest fault) -----------------------------

def test_every_call_control_node_killed_all_on_srst_then_back(cluster, load, capsys):
    ld = load
    ld.calls_up()
    before = ld.received()
    killed = time.monotonic()
    for node in ("callmanager", SUB):
        cluster.docker("kill", cluster.container(node))
    try:
        try:
            on_srst = ld.converge("srst", killed, 60 + 3 * KEEPALIVE, "every phone on SRST")
        except AssertionError as exc:
            logs = cluster.dc("logs", "--tail", "25", "srst", check=False).stdout[-3000:]
            raise AssertionError(f"{exc}\nsrst's log:\n{logs}") from None
        dropped = ld.dropped(before)
        wrong = ld.wrong("srst")
        notified = [n for n, r in ld.calls(ld.names).items() if any("Fallback" in t for t in r.notifications)]
        ld.hang_up_all()
    finally:
        started = time.monotonic()
        for node in ("callmanager", SUB):
            cluster.docker("start", cluster.container(node))
    back = ld.converge("callmanager", started, 300 + STABLE, "fail-back to the publisher")
    report(capsys, Figures("every node killed -> secured SRST", on_srst, calls=len(ld.pairs), dropped=dropped,
                           lost=len(ld.names) - len(on_srst)))
    report(capsys, Figures("nodes started again -> fail-back to the publisher", back,
                           lost=len(ld.names) - len(back), note="from docker start"))
    assert wrong == [], wrong
    assert notified, "phones on SRST are told they are in fallback"
    assert dropped == 0, "the calls keep their SRTP media when every node goes"
    assert min(back.values()) >= STABLE, f"fail-back before the stable period: {back}"
    cluster.wait_healthy()
    assert ld.wrong("callmanager") == []
