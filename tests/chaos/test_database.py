"""The database restarted during CAPF enrolments and configuration changes (CHK-7).

The cluster runs on PostgreSQL — a private server this test starts, crashes (`pg_ctl stop -m
immediate`: every connection cut, no checkpoint, recovery from the write-ahead log on start) and
stops itself, on its own port; never the machine's shared server. The load:

* phone-sim phones configured *authenticated* with a CAPF install (null authentication) scheduled,
  booted together: they enrol over CAPF (3804) while the database goes away, twice;
* an administrator adding devices and their lines through the HTTPS administration API the whole
  time: each change the API acknowledged (2xx) is a committed change.

Checked afterwards, straight in the database and on the phones:

* every acknowledged change is there (device and line), none is half there;
* every phone ends registered over TLS with a valid LSC (issued by the cluster's CAPF for its own
  name) and its operation is `done`, tied to exactly that certificate, recorded `installed`;
* no half-issued certificate: no operation left `in_progress`, every certificate row of an
  enrolment is the one the phone holds — a session cut after issuance gets the same certificate
  again (compare-and-set on the operation), never a second one.

A second test takes CAPF's part of the database away (its certificate table renamed out of the
way: every CAPF look-up fails in PostgreSQL itself, so each session ends with reason 7) while
phones with a CAPF install boot — TFTP and call control go on, as when CAPF alone loses its
database — and puts it back: the phones, registered without an LSC meanwhile, visit CAPF again
with back-off and jitter and end registered over TLS with a valid LSC, without a boot by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from cryptography import x509

from ccmsec.adminclient import AdminClient, AdminClientError, discover
from tests.chaos.conftest import Report, now, record, start_cluster, stop_cluster, until
from tests.chaos.postgres import PostgresUnavailable, PrivatePostgres
from tests.lsccheck import lsc_problem

pytestmark = [pytest.mark.timeout(600), pytest.mark.asyncio(loop_scope="module")]

PHONES = 8
OUTAGES = (0.6, 6.0)      # seconds after the boot at which the database crashes
DOWN_FOR = 3.0            # seconds it stays down each time


@pytest.fixture(scope="module")
def postgres():
    try:
        pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="ccmsec-chaos-pg-")))
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))   # the chaos suite needs it: CI installs it (.ci/run)
    pg.init()
    try:
        yield pg
    finally:
        pg.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(postgres):
    saved = os.environ.get("CCMSEC_DATABASE_URL")
    os.environ["CCMSEC_DATABASE_URL"] = postgres.url   # inherited by the supervisor and services
    try:
        c = await asyncio.to_thread(start_cluster, "ccmsec-chaos-db-", 0)
    finally:
        if saved is None:
            os.environ.pop("CCMSEC_DATABASE_URL", None)
        else:
            os.environ["CCMSEC_DATABASE_URL"] = saved
    try:
        yield c
    finally:
        await asyncio.to_thread(stop_cluster, c)


class ConfigWriter(threading.Thread):
    """An administrator adding devices and lines the whole time; remembers what was acknowledged."""

    def __init__(self, data: Path):
        super().__init__(daemon=True)
        self.data = data
        self.stop = threading.Event()
        self.devices: list[str] = []          # acknowledged device additions
        self.lines: list[tuple[str, str]] = []  # acknowledged (dn, device)
        self.refused: list[str] = []          # not acknowledged (error or no answer): allowed

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            name, dn = f"SEP0DBC{n:08X}", f"{77000 + n}"
            try:
                with AdminClient(discover(self.data), timeout=10) as admin:
                    admin.add_device(name, "7960")
                    self.devices.append(name)
                    admin.add_line(dn, name)
                    self.lines.append((dn, name))
            except (AdminClientError, OSError) as exc:
                self.refused.append(f"{name}: {exc}")
            time.sleep(0.05)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mixed(cluster, tmp_path_factory):
    """The cluster in mixed mode (two tokens) with CAPF active: phones can enrol."""
    c = cluster
    pw = tmp_path_factory.mktemp("tokens") / "pw"
    pw.write_text("chaos-token-password\n")
    for name in ("t1", "t2"):
        res = await asyncio.to_thread(c.cli, "token", "create", "--name", name, "--password-file", str(pw))
        assert res.returncode == 0, res.stderr
    for args in (("ctl", "provider", "activate"), ("capf", "activate")):
        res = await asyncio.to_thread(c.cli, *args)
        assert res.returncode == 0, res.stdout + res.stderr
    res = await asyncio.to_thread(c.cli, "ctl", "update", "--token", "t1", "--token", "t2", "--mode", "mixed",
                                  "--password-file", str(pw), "-q", timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    return c


async def _enrolling_phones(c, count: int, prefix: str) -> list[str]:
    """`count` phone-sim 7960s configured authenticated, a CAPF install (null auth) scheduled."""
    res = await asyncio.to_thread(c.cli, "phones", "add", "--count", str(count), "--model", "7960",
                                  "--name-prefix", prefix)
    assert res.returncode == 0, res.stderr
    names = re.findall(r"^(SEP[0-9A-F]{12})", res.stdout, re.M)
    assert len(names) == count, res.stdout
    with AdminClient(discover(c.data)) as admin:
        for name in names:
            admin.add_device(name, "7960", "authenticated")
            admin.capf_schedule(name, "install", "null", key_type="ec256")
    return names


async def test_database_restarted_during_capf_enrolments_and_config_changes_CHK_7(mixed, postgres):
    c = mixed
    names = await _enrolling_phones(c, PHONES, "SEP0DB05")

    writer = ConfigWriter(c.data)
    writer.start()
    outages: list[float] = []
    try:
        await until(lambda: len(writer.devices) >= 3, "configuration changes acknowledged before the fault", 60)
        res = await asyncio.to_thread(c.cli, "phones", "boot", *names)
        assert res.returncode == 0, res.stdout + res.stderr
        booted = now()
        for at in OUTAGES:
            await asyncio.sleep(max(0.0, booted + at - now()))
            outages.append(await asyncio.to_thread(postgres.restart_after, DOWN_FOR))
        restored = now()
        acked_at_restore = len(writer.devices)
        done: dict[str, float] = {}

        async def all_enrolled() -> bool:
            for p in await c.phones():
                if p.state == "registered" and p.transport == "authenticated" and p.lsc.der and p.name not in done:
                    done[p.name] = now() - restored
            return len(done) == PHONES
        try:
            await until(all_enrolled, "every phone registered over TLS with an LSC after the restarts", 180)
        except AssertionError as exc:
            states = "; ".join(f"{p.name} {p.state} {p.transport or '-'} boots {p.boots} LSC {bool(p.lsc.der)} "
                               f"{p.last_failure_reason}" for p in await c.phones() if p.name not in done)
            db = await asyncpg.connect(postgres.url)
            try:
                ops = [tuple(r) for r in await db.fetch(
                    "SELECT device_name, state, failed_attempts, reason, issued_fingerprint IS NOT NULL "
                    "FROM capf_operations ORDER BY id")]
            finally:
                await db.close()
            raise AssertionError(f"{exc}: {states}; operations {ops}") from None
        await until(lambda: len(writer.devices) >= acked_at_restore + 3, "changes acknowledged again", 60)
    finally:
        writer.stop.set()
        await asyncio.to_thread(writer.join, 30)

    # --- every committed change kept ---------------------------------------------------------
    db = await asyncpg.connect(postgres.url)
    try:
        devices = {r["name"] for r in await db.fetch("SELECT name FROM devices")}
        lines = {(r["dn"], r["device"]) for r in await db.fetch("SELECT dn, device FROM lines")}
        ops = await db.fetch("SELECT id, device_name, state, issued_fingerprint FROM capf_operations "
                             "WHERE device_name = ANY($1::text[])", names)
        certs = await db.fetch("SELECT operation_id, device_name, fingerprint_sha256, outcome, der "
                               "FROM capf_certificates WHERE device_name = ANY($1::text[])", names)
    finally:
        await db.close()
    lost = [d for d in writer.devices if d not in devices] + [f"{dn}@{d}" for dn, d in writer.lines if (dn, d) not in lines]
    # A device acknowledged without its line is allowed only when adding the line was refused.
    capf_cert = x509.load_pem_x509_certificate((c.data / "pki" / "capf.crt").read_bytes())
    phones = {p.name: p for p in await c.phones()}
    problems: list[str] = []
    for name in names:
        lsc = phones[name].lsc.der
        why = lsc_problem(lsc, name, capf_cert)
        if why:
            problems.append(f"{name}: LSC {why}")
        fingerprint = hashlib.sha256(lsc).hexdigest()
        mine = [o for o in ops if o["device_name"] == name]
        if [o["state"] for o in mine] != ["done"] or mine[0]["issued_fingerprint"] != fingerprint:
            problems.append(f"{name}: operations {[(o['state'], o['issued_fingerprint']) for o in mine]}")
        rows = [r for r in certs if r["device_name"] == name]
        if [(r["fingerprint_sha256"], r["outcome"], bytes(r["der"])) for r in rows] != [(fingerprint, "installed", lsc)]:
            problems.append(f"{name}: certificate rows {[(r['fingerprint_sha256'][:12], r['outcome']) for r in rows]}")
    half = [o for o in ops if o["state"] == "in_progress"]
    # How many boots the outages cost: a phone whose CAPF session or registration was cut retries
    # (back-off with jitter) — more than the two boots of an undisturbed enrolment.
    retried = sum(1 for name in names if phones[name].boots > 2
                  or any("fail" in h for h in phones[name].history))
    report = record(Report(
        "PostgreSQL crash x2 during CAPF enrolments", PHONES, sorted(done.values()),
        events_lost=len(lost) + len(problems),
        note=f"down {', '.join(f'{o:.1f}' for o in outages)} s; {retried} phone(s) retried; "
             f"{len(writer.devices)} changes acknowledged, {len(writer.refused)} refused while it was away"))
    assert outages and len(writer.devices) > 0
    assert not lost, f"acknowledged changes lost: {lost[:10]}"
    assert not half, f"operations left half done: {half}"
    assert not problems, problems
    assert report.events_lost == 0


CAPF_AWAY_PHONES = 4


async def _capf_store(url: str, away: bool) -> None:
    """Take CAPF's certificate table out of (or back into) the database: every CAPF look-up and
    issuance then fails in PostgreSQL itself, while TFTP and call control, which never read it,
    go on. (With the whole database down the phones would not get past TFTP to reach CAPF.)"""
    db = await asyncpg.connect(url)
    try:
        if away:
            await db.execute("ALTER TABLE capf_certificates RENAME TO capf_certificates_away")
        else:
            await db.execute("ALTER TABLE capf_certificates_away RENAME TO capf_certificates")
    finally:
        await db.close()


async def test_capf_database_unavailable_while_phones_boot_they_enrol_once_it_is_back_LATER_7(mixed, postgres):
    """LATER-7 / CHK-7: CAPF cannot use its database while phones with a CAPF install boot: it ends
    their sessions with reason 7. The phones come up without the LSC (on SRST or on call control,
    wherever their unsecured registration is taken) and visit CAPF again with back-off and jitter;
    once CAPF's database is back every phone ends registered over TLS with a valid LSC, its
    operation done and tied to exactly that certificate — no boot by hand."""
    c = mixed
    names = await _enrolling_phones(c, CAPF_AWAY_PHONES, "SEP0DB07")
    await _capf_store(postgres.url, away=True)
    down_at = now()
    try:
        res = await asyncio.to_thread(c.cli, "phones", "boot", *names)
        assert res.returncode == 0, res.stdout + res.stderr

        async def refused_and_retrying() -> bool:
            phones = [p for p in await c.phones() if p.name in names]
            return all(any("end reason 7" in h for h in p.history)
                       and any("visiting CAPF again" in h for h in p.history) for p in phones)
        try:
            await until(refused_and_retrying, "every phone hearing reason 7 and visiting CAPF again", 150)
        except AssertionError as exc:
            states = "; ".join(f"{p.name} {p.state} {p.last_failure}: {p.last_failure_reason} "
                               f"{list(p.history)[-4:]}" for p in await c.phones() if p.name in names)
            raise AssertionError(f"{exc}: {states}") from None
        phones = [p for p in await c.phones() if p.name in names]
        assert all(not p.lsc.der for p in phones), "no LSC can be issued while CAPF's database is away"
        registered_without = sum(1 for p in phones if p.state == "registered")
        boots_before = {p.name: p.boots for p in phones}
    finally:
        await _capf_store(postgres.url, away=False)
    back = now()
    done: dict[str, float] = {}

    async def all_enrolled() -> bool:
        for p in await c.phones():
            if (p.name in names and p.state == "registered" and p.transport == "authenticated"
                    and p.lsc.der and p.name not in done):
                done[p.name] = now() - back
        return len(done) == CAPF_AWAY_PHONES
    try:
        await until(all_enrolled, "every phone registered over TLS with its LSC once CAPF's database is back", 180)
    except AssertionError as exc:
        states = "; ".join(f"{p.name} {p.state} {p.transport or '-'} LSC {bool(p.lsc.der)} "
                           f"{list(p.history)[-4:]}" for p in await c.phones() if p.name in names and p.name not in done)
        raise AssertionError(f"{exc}: {states}") from None
    phones = {p.name: p for p in await c.phones() if p.name in names}
    capf_cert = x509.load_pem_x509_certificate((c.data / "pki" / "capf.crt").read_bytes())
    db = await asyncpg.connect(postgres.url)
    try:
        ops = await db.fetch("SELECT device_name, state, issued_fingerprint FROM capf_operations "
                             "WHERE device_name = ANY($1::text[])", names)
    finally:
        await db.close()
    problems = [f"{n}: LSC {why}" for n in names if (why := lsc_problem(phones[n].lsc.der, n, capf_cert))]
    for n in names:
        mine = [(o["state"], o["issued_fingerprint"]) for o in ops if o["device_name"] == n]
        if mine != [("done", hashlib.sha256(phones[n].lsc.der).hexdigest())]:
            problems.append(f"{n}: operations {mine}")
    report = record(Report(
        "CAPF database away while phones boot", CAPF_AWAY_PHONES, sorted(done.values()),
        events_lost=len(problems),
        note=f"away {back - down_at:.1f} s; {registered_without} registered without an LSC meanwhile; "
             f"boots while away {sorted(boots_before.values())}, after {sorted(p.boots for p in phones.values())}"))
    assert not problems, problems
    assert report.events_lost == 0
