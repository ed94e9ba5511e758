"""The event bus and the signing TFTP server failing under load.

* NATS killed (kill -9) before a reset-all is committed (CHK-13), and kept down (the supervisor is
  paused) while the request is answered: the reply says "pending delivery", no phone resets while
  the bus is down — the event waits in the owner's outbox, not in JetStream — and once NATS is
  started again every phone reboots exactly once (call control's SCCP Reset and phone-sim's event
  for the same change count once), and the event's outbox row shows it failed while NATS was down
  and was published after it came back (a fire-and-forget publisher fails the test: checked);
* tftp-signer killed (kill -9) while it re-signs every file, with clients fetching the whole time:
  no truncated or unsigned file is ever served — every file a client gets verifies against the
  CTL's TFTP certificate — and serving resumes once the supervisor has restarted it.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time

import pytest
import pytest_asyncio

from ccmsec.adminclient import AdminClient, discover
from ccmsec.aio.tftp import tftp_get
from ccmsec.cluster.runner import supervisor_pid
from ccmsec.formats.cnfxml import parse_cnf_xml
from ccmsec.formats.ctl import Role, parse_ctl
from ccmsec.formats.sgn import parse_sgn, verify_sgn
from tests.chaos.conftest import Report, now, record, start_cluster, stop_cluster, until

pytestmark = [pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]

SIM_PHONES = 10
DEVICES = [f"SEP0000000C{i:04X}" for i in range(1, 301)]   # enough that a re-sign takes a while


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster():
    c = await asyncio.to_thread(start_cluster, "ccmsec-chaos-bus-", 0)
    try:
        yield c
    finally:
        await asyncio.to_thread(stop_cluster, c)


async def _boots(c) -> dict[str, tuple[int, str]]:
    return {p.name: (p.boots, p.state) for p in await c.phones()}


async def test_nats_killed_during_a_reset_all_every_reset_once_CHK_13(cluster):
    c = cluster
    res = await asyncio.to_thread(c.cli, "phones", "add", "--count", str(SIM_PHONES), "--model", "7960",
                                  "--name-prefix", "SEP0CB05")
    assert res.returncode == 0, res.stderr
    with AdminClient(discover(c.data)) as admin:
        for name in re.findall(r"^(SEP[0-9A-F]{12})", res.stdout, re.M):
            admin.add_device(name, "7960")
    res = await asyncio.to_thread(c.cli, "phones", "boot", "--all", "--wait", "--timeout", "120")
    assert res.returncode == 0 and f"{SIM_PHONES}/{SIM_PHONES} settled" in res.stdout, res.stdout
    before = await _boots(c)
    assert all(state == "registered" for _, state in before.values())
    # Kill NATS before the reset-all is committed and keep it down while the request is answered:
    # the supervisor is paused so it cannot restart NATS, so the event cannot reach JetStream and
    # must wait in the owner's outbox (a NATS killed only after the reply would already hold it).
    sup = supervisor_pid(c.data)
    assert sup, "no supervisor recorded for the chaos cluster"
    os.kill(sup, signal.SIGSTOP)
    try:
        nats_pid = c.signal("nats", signal.SIGKILL)
        await until(lambda: not _running(nats_pid), "NATS gone", 10)
        with AdminClient(discover(c.data)) as admin:
            reply = await asyncio.to_thread(admin.reset_all)
        assert reply.get("delivery") == "pending", reply     # committed, not yet delivered
        assert reply.get("targeted") == SIM_PHONES, reply
        await asyncio.sleep(3)
        during = await _boots(c)
        early = [n for n in before if during[n][0] != before[n][0]]
        assert not early, f"phones reset while NATS was down (the event did not wait): {early}"
    finally:
        os.kill(sup, signal.SIGCONT)          # the supervisor starts NATS again
    started, resumed_at = now(), time.time()
    done: dict[str, float] = {}

    async def all_back() -> bool:
        for name, (boots, state) in (await _boots(c)).items():
            if boots > before[name][0] and state == "registered" and name not in done:
                done[name] = now() - started
        return len(done) == len(before)
    await until(all_back, "every phone reset and registered again", 90)
    await asyncio.sleep(3)                   # a late redelivery would show as a second boot now
    after = await _boots(c)
    twice = [n for n in before if after[n][0] > before[n][0] + 1]
    lost = [n for n in before if after[n][0] == before[n][0]]
    record(Report("NATS kill -9 before reset-all commit", len(done), sorted(done.values()),
                  events_lost=len(lost), note=f"request {reply.get('request_id', '?')[:8]}; "
                                              f"{len(twice)} phone(s) reset twice"))
    assert not lost and not twice, (lost, twice)
    # The reset reached the phones from the owner's outbox: its row failed while NATS was down and
    # was published again after NATS came back. (nats-py's reconnect buffer alone also delivers it
    # after a short outage, so without this a fire-and-forget publisher passed the test too; the
    # outbox is what keeps it across the owner's restart or a longer outage.)
    row = _outbox_row(c.data, "device.reset")
    assert row is not None, "no device.reset in the outbox"
    attempts, sent_at, created_at = row
    assert created_at < resumed_at and sent_at is not None and sent_at >= resumed_at - 0.5, row
    assert attempts >= 2, f"the reset was never retried from the outbox: {row}"


def _outbox_row(data, kind: str) -> tuple[int, float | None, float] | None:
    """(attempts, sent_at, created_at) as epoch seconds of the newest outbox row of `kind`."""
    import datetime as dt
    import sqlite3

    from ccmsec.cluster.databases import database_path

    def epoch(value):
        if value is None:
            return None
        t = dt.datetime.fromisoformat(value)
        return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()
    # the outbox of call control's nodes is in callmanager's own database (ccmsec.cluster.databases)
    with sqlite3.connect(f"file:{database_path(data, 'callmanager')}?mode=ro", uri=True, timeout=10) as db:
        got = db.execute("SELECT attempts, sent_at, created_at FROM event_outbox WHERE kind = ? "
                         "ORDER BY seq DESC LIMIT 1", (kind,)).fetchone()
    return None if got is None else (got[0], epoch(got[1]), epoch(got[2]))


def _running(pid: int) -> bool:
    """False once `pid` is gone or a zombie (its parent, the paused supervisor, cannot reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _ctl_and_signer(c) -> tuple[bytes, object]:
    svc = c.endpoints["services"]["tftp-signer"]
    data = await tftp_get(svc["host"], svc["tftp_port"], "CTLFile.tlv", timeout=1, retries=3)
    ctl = parse_ctl(data)
    tftp = [r.certificate for r in ctl.records if r.role in (Role.TFTP, Role.CCM_TFTP)]
    assert tftp, "the CTL names no TFTP certificate"
    return data, tftp[0]


async def test_tftp_signer_killed_while_re_signing_serves_nothing_half_signed_AUTH_5(cluster, tmp_path):
    c = cluster
    pw = tmp_path / "pw"
    pw.write_text("chaos-token-password\n")
    for name in ("t1", "t2"):
        res = await asyncio.to_thread(c.cli, "token", "create", "--name", name, "--password-file", str(pw))
        assert res.returncode == 0, res.stderr
    assert (await asyncio.to_thread(c.cli, "ctl", "provider", "activate")).returncode == 0
    res = await asyncio.to_thread(c.cli, "ctl", "update", "--token", "t1", "--token", "t2", "--mode", "mixed",
                                  "--password-file", str(pw), "-q", timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    with AdminClient(discover(c.data)) as admin:
        for name in DEVICES:
            admin.add_device(name, "7960")
    _, signer = await until_value(lambda: _ctl_and_signer(c), 60)
    svc = c.endpoints["services"]["tftp-signer"]
    stats = {"good": 0, "failed": 0, "bad": []}
    stop = asyncio.Event()
    last_good = {"at": 0.0}

    async def fetcher(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            name = f"{rnd.choice(DEVICES)}.cnf.xml.sgn"
            try:
                data = await tftp_get(svc["host"], svc["tftp_port"], name, timeout=0.5, retries=1)
            except Exception:
                stats["failed"] += 1          # not served (the server is down): allowed
                await asyncio.sleep(0.05)
                continue
            try:
                signed = parse_sgn(data)
                verify_sgn(signed, signer)
                assert signed.header.file_name == name
                parse_cnf_xml(signed.payload)
                stats["good"] += 1
                last_good["at"] = now()
            except Exception as exc:          # truncated, unsigned or wrongly signed: never allowed
                stats["bad"].append(f"{name}: {exc}")

    tasks = [asyncio.create_task(fetcher(i)) for i in range(4)]
    try:
        await until(lambda: stats["good"] >= 20, "files served before the fault", 30)
        interrupted = False
        # Kill it while a re-sign of every file is running. Several full re-signs at once keep the
        # signing pool busy past the kill; on an idle machine even four finished within 0.2 s, so each
        # attempt kills sooner after they were sent.
        for delay in (0.2, 0.1, 0.05, 0.03, 0.02):
            await until_value(lambda: _ctl_and_signer(c), 90)
            resigns = [asyncio.create_task(_resign_all(c)) for _ in range(8)]
            await asyncio.sleep(delay)
            killed = now()
            c.signal("tftp-signer", signal.SIGKILL)
            interrupted = not all(await asyncio.gather(*resigns))   # cut mid-way
            if interrupted:
                break
        assert interrupted, "the re-sign always finished before the kill; nothing was interrupted"
        good_before = stats["good"]
        await until(lambda: stats["good"] >= good_before + 20 and last_good["at"] > killed,
                    "signed files served again", 90)
        took = last_good["at"] - killed
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    record(Report("tftp-signer kill -9 while re-signing", 1, [took], events_lost=len(stats["bad"]),
                  note=f"{stats['good']} files verified, {stats['failed']} fetches not answered"))
    assert not stats["bad"], stats["bad"][:5]


async def _resign_all(c) -> bool:
    """`TftpSigner/Resign` of every file as the CLI sends it; False when it did not complete."""
    import grpc

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import tftp_signer_pb2, tftp_signer_pb2_grpc

    svc = c.endpoints["services"]["tftp-signer"]
    async with secure_channel(client_identity(c.data), svc["host"], svc["grpc_port"], "tftp-signer") as ch:
        try:
            await tftp_signer_pb2_grpc.TftpSignerStub(ch).Resign(tftp_signer_pb2.ResignRequest(all=True), timeout=60)
            return True
        except grpc.aio.AioRpcError:
            return False


async def until_value(factory, timeout: float):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            return await factory()
        except Exception:
            if loop.time() > end:
                raise
            await asyncio.sleep(0.5)
