"""Authenticated events (issue 9 §3; BUS-1…BUS-4): the attacks of the issue replayed against a real
nats-server running the configuration `ccmsec up` renders, each refused — and the legitimate path
still delivered.

* BUS-1: no anonymous connection; each identity connects with its own nkey seed.
* BUS-2: a user publishes only under its own role's prefix, only the kinds the table gives it.
* BUS-3: a consumer drops (and counts, and logs without the payload) an event whose publisher may
  not send it, or whose envelope disagrees with its subject.
* BUS-4: no service may delete, reconfigure or purge the stream, or delete a consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import nats
import pytest

from ccmsec.cluster.pki import issue_client_identity, issue_service_identity, nats_admin_seed_path
from ccmsec.runtime.bus import PUBLISHER, STREAM, BusError, EventBus, make_event, read_seed, subject_for
from ccmsec.runtime.bus_policy import PUBLISHERS, RESTART_TARGETS, user_permissions
from ccmsec.runtime.metrics import EVENTS_REFUSED
from ccmsec_proto import events_pb2
from tests.conftest import start_secured_nats, stop_process

pytestmark = pytest.mark.timeout(120)

ROLES = ("callmanager", "phone-sim", "srtp-gateway", "ctl-provider")


@pytest.fixture
def bus_cluster(tmp_path):
    """Identity folders as `ccmsec up` issues them, and NATS with their users."""
    folders = {}
    for role in ROLES:
        issue_service_identity(tmp_path, role, role, "127.0.0.1")
        folders[role] = tmp_path / "identities" / "services" / role
    issue_client_identity(tmp_path, "cli")
    folders["cli"] = tmp_path / "identities" / "clients" / "cli"
    url, proc = start_secured_nats(tmp_path, list(folders.values()), tmp_path / "js")
    try:
        yield {"url": url, "folders": folders, "data": tmp_path}
    finally:
        stop_process(proc)


def _bus(c, role: str, name: str | None = None, *, as_role: str | None = None) -> EventBus:
    """What a process running as `role` holds: that identity folder's seed (and, to forge, another
    role's subjects with `as_role`)."""
    return EventBus(c["url"], name or role, role=as_role or role, seed=read_seed(c["folders"][role]),
                    connect_timeout=5)


def _operator(c) -> EventBus:
    return EventBus(c["url"], "operator", seed=nats_admin_seed_path(c["data"]).read_bytes().strip(),
                    connect_timeout=5)


def _reset(devices=("SEP000000000001",), reason="the payload") -> events_pb2.Event:
    return make_event("device.reset", "test", device_reset=events_pb2.DeviceReset(
        devices=list(devices), kind=events_pb2.RESET, rule="RST-1", reason=reason))


def test_seed_files_are_private_and_per_identity_BUS_1(bus_cluster):
    """BUS-1: every identity folder holds its own seed, 0600; the server config only public keys."""
    seeds = {role: read_seed(folder) for role, folder in bus_cluster["folders"].items()}
    assert len(set(seeds.values())) == len(seeds)
    for folder in bus_cluster["folders"].values():
        assert (folder / "nats.nk").stat().st_mode & 0o077 == 0
    conf = next(bus_cluster["data"].glob("nats-*.conf")).read_text()
    assert not any(seed.decode() in conf for seed in seeds.values())
    (bus_cluster["folders"]["cli"] / "nats.nk").chmod(0o644)
    with pytest.raises(BusError, match="readable by others"):
        read_seed(bus_cluster["folders"]["cli"])


async def test_anonymous_connection_is_refused_BUS_1(bus_cluster):
    """BUS-1 / issue 9 §3: "any local process could publish on NATS (no credentials)" — no more."""
    with pytest.raises(BusError, match="authorization violation"):
        await EventBus(bus_cluster["url"], "anonymous", role="callmanager", connect_timeout=3).connect()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(bus_cluster["url"], allow_reconnect=False, connect_timeout=2)


async def test_a_seed_the_server_does_not_know_is_refused_BUS_1(bus_cluster, tmp_path):
    from ccmsec.cluster.pki import ensure_nats_seed

    ensure_nats_seed(tmp_path / "stranger")
    stranger = EventBus(bus_cluster["url"], "stranger", role="callmanager",
                        seed=read_seed(tmp_path / "stranger"), connect_timeout=3)
    with pytest.raises(BusError, match="not a user of this server"):
        await stranger.connect()


async def test_phone_sim_credentials_cannot_publish_device_reset_BUS_2(bus_cluster):
    """BUS-2 / issue 9 §3: phone-sim's credentials publishing `device.reset` are refused by the
    server, and so are srtp-gateway's restarting a service; the refusal is a clear error."""
    phone_sim = _bus(bus_cluster, "phone-sim")
    gateway = _bus(bus_cluster, "srtp-gateway")
    await phone_sim.connect()
    await gateway.connect()
    try:
        started = time.monotonic()
        with pytest.raises(BusError, match=r"NATS refused to let phone-sim publish "
                                           r"ccmsec\.phone-sim\.device\.reset: .*[Pp]ermissions [Vv]iolation"):
            await phone_sim.publish(_reset())
        # said at the server's refusal, not after the 5 s acknowledgement timeout
        assert time.monotonic() - started < 4.5
        with pytest.raises(BusError, match="permissions violation"):
            await gateway.publish(make_event("service.restart", "x", service_restart=events_pb2.ServiceRestart(
                role="callmanager")), target="callmanager")
        # what each may send still goes: a refused-call report
        seq = await phone_sim.publish(make_event("access.denied", "phone-sim",
                                                 access_denied=events_pb2.AccessDenied(method="/x/Y")))
        assert seq > 0
    finally:
        await phone_sim.close()
        await gateway.close()


async def test_a_forged_subject_under_another_role_is_refused_BUS_2(bus_cluster):
    """BUS-2: phone-sim's credentials publishing on callmanager's prefix
    (`ccmsec.callmanager.device.reset`) are refused: the subject proves the publisher."""
    forger = _bus(bus_cluster, "phone-sim", "forger", as_role="callmanager")
    await forger.connect()
    try:
        with pytest.raises(BusError, match=r"ccmsec\.callmanager\.device\.reset.*[Pp]ermissions [Vv]iolation"):
            await forger.publish(_reset())
    finally:
        await forger.close()


async def test_no_service_may_delete_or_reconfigure_the_stream_BUS_4(bus_cluster):
    """BUS-4 / issue 9 §3: deleting the CCMSEC stream "through the JetStream API" with a service's
    credentials — even callmanager's — is refused; so are update, purge and consumer deletion.
    The stream and its messages are still there afterwards."""
    from nats.js.api import StreamConfig

    cm = _bus(bus_cluster, "callmanager")
    await cm.connect()
    try:
        seq = await cm.publish(_reset())
        attempts = {
            "delete": cm.js.delete_stream(STREAM),
            "update": cm.js.update_stream(StreamConfig(name=STREAM, subjects=["ccmsec.>"], max_msgs=1)),
            "purge": cm.js.purge_stream(STREAM),
        }
        for what, attempt in attempts.items():
            # the server drops it: no API answer (ended at its refusal, not the 5 s timeout)
            asked = time.monotonic()
            with pytest.raises(nats.errors.TimeoutError):
                await cm._or_refused(attempt, f"$JS.API.STREAM.{what.upper()}.{STREAM}", asked)
            assert cm._refusal(f"$JS.API.STREAM.{what.upper()}.{STREAM}", asked), what
        await cm.subscribe(subject_for("device.reset"), "callmanager-device-reset", _noop)
        asked = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await cm._or_refused(cm.js.delete_consumer(STREAM, "callmanager-device-reset"),
                                 f"$JS.API.CONSUMER.DELETE.{STREAM}.callmanager-device-reset", asked)
        assert cm._refusal(f"$JS.API.CONSUMER.DELETE.{STREAM}.callmanager-device-reset", asked)
        info = await cm.js.stream_info(STREAM)
        assert info.state.messages >= 1 and info.state.last_seq >= seq
        assert (await cm.js.consumer_info(STREAM, "callmanager-device-reset")).name == "callmanager-device-reset"
    finally:
        await cm.close()


async def _noop(event) -> None:
    return None


def test_the_table_and_the_server_permissions_agree_BUS_2():
    """BUS-2: each role's publish allow-list is exactly its prefix and the kinds the table gives it."""
    for role in ("callmanager", "phone-sim", "cli", "ctl-provider", "capf", "keymanager"):
        allowed = [s for s in user_permissions(role, role, "UKEY")["publish"]["allow"] if s.startswith("ccmsec.")]
        kinds = {k for k, roles in PUBLISHERS.items() if role in roles}
        assert all(s.startswith(f"ccmsec.{role}.") for s in allowed)
        restart = f"ccmsec.{role}.service.restart."
        assert {"service.restart" if s.startswith(restart) else s.split(".", 2)[2] for s in allowed} == kinds
        assert {s.removeprefix(restart) for s in allowed if s.startswith(restart)} == RESTART_TARGETS.get(role, set())
        deny = user_permissions(role, role, "UKEY")["publish"]["deny"]
        assert "$JS.API.STREAM.DELETE.>" in deny and "$JS.API.STREAM.UPDATE.>" in deny
    assert PUBLISHERS["device.reset"] >= {"callmanager"} and "phone-sim" not in PUBLISHERS["device.reset"]


async def test_an_event_from_a_publisher_not_allowed_to_send_it_is_dropped_and_counted_BUS_3(bus_cluster, caplog):
    """BUS-3 / issue 9 §3: a consumer knows who published each event and drops (and counts) one
    from a publisher not allowed to send it — here events that reach the stream anyway: published
    by the bus operator on phone-sim's prefix, and an `access.denied` (which phone-sim may send)
    whose envelope says `device.reset`, and a restart whose body names another service than its
    subject. The payload is never logged. A legitimate reset after them is handled."""
    c = bus_cluster
    consumer, operator, phone_sim, cli = (_bus(c, "callmanager", "consumer"), _operator(c),
                                          _bus(c, "phone-sim"), _bus(c, "cli"))
    for b in (consumer, operator, phone_sim, cli):
        await b.connect()
    handled: list[tuple[str, str]] = []
    refused: list[tuple[str, str, str]] = []

    async def handler(event):
        handled.append((event.id, PUBLISHER.get()))

    before = {(k, p): EVENTS_REFUSED.labels(k, p)._value.get()
              for k, p in (("device.reset", "phone-sim"), ("access.denied", "phone-sim"),
                           ("service.restart", "cli"))}
    try:
        for kind, name in (("device.reset", "device-reset"), ("access.denied", "access-denied"),
                           ("service.restart", "restart")):
            await consumer.subscribe(subject_for(kind), f"callmanager-{name}", handler,
                                     on_refused=lambda *a: refused.append(a))
        with caplog.at_level(logging.WARNING, logger="ccmsec.bus"):
            sneaked = _reset(reason="SECRET-PAYLOAD-1")
            await operator.js.publish("ccmsec.phone-sim.device.reset", sneaked.SerializeToString())
            disguised = _reset(reason="SECRET-PAYLOAD-2")
            await phone_sim.js.publish("ccmsec.phone-sim.access.denied", disguised.SerializeToString())
            mismatched = make_event("service.restart", "cli", service_restart=events_pb2.ServiceRestart(
                role="callmanager", reason="SECRET-PAYLOAD-3"))
            await cli.publish(mismatched, target="capf")
            legit = _reset()
            await _bus_publish(c, "callmanager", legit)
            for _ in range(100):
                if len(refused) >= 3 and handled:
                    break
                await asyncio.sleep(0.05)
    finally:
        for b in (consumer, operator, phone_sim, cli):
            await b.close()
    assert handled == [(legit.id, "callmanager")]
    assert sorted(r[:2] for r in refused) == [("cli", "service.restart"), ("phone-sim", "access.denied"),
                                              ("phone-sim", "device.reset")]
    for (kind, publisher), value in before.items():
        assert EVENTS_REFUSED.labels(kind, publisher)._value.get() == value + 1, (kind, publisher)
    text = caplog.text
    assert "phone-sim may not publish device.reset" in text
    assert "differs from its subject" in text and "sent on the subject of 'capf'" in text
    assert "SECRET-PAYLOAD" not in text


async def _bus_publish(c, role: str, event, target: str | None = None) -> None:
    bus = _bus(c, role, f"{role}-publisher")
    await bus.connect()
    try:
        await bus.publish(event, target)
    finally:
        await bus.close()


async def test_each_role_publishes_what_the_table_gives_it_BUS_2(bus_cluster):
    """The legitimate path: call control's reset, the CTL Provider's mode change, the CLI's restart."""
    got = []

    async def handler(event):
        got.append((event.kind, PUBLISHER.get()))

    consumer = _bus(bus_cluster, "srtp-gateway", "consumer")
    await consumer.connect()
    try:
        for kind, name in (("device.reset", "device-reset"), ("mode.changed", "mode"), ("service.restart", "restart")):
            await consumer.subscribe(subject_for(kind), f"srtp-gateway-{name}", handler)
        await _bus_publish(bus_cluster, "callmanager", _reset())
        await _bus_publish(bus_cluster, "ctl-provider", make_event("mode.changed", "ctl-provider"))
        cli = _bus(bus_cluster, "cli")
        await cli.connect()
        await cli.publish(make_event("service.restart", "cli", service_restart=events_pb2.ServiceRestart(
            role="srst", rule="CHK-14")), target="srst")
        await cli.close()
        for _ in range(100):
            if len(got) == 3:
                break
            await asyncio.sleep(0.05)
    finally:
        await consumer.close()
    assert sorted(got) == [("device.reset", "callmanager"), ("mode.changed", "ctl-provider"),
                           ("service.restart", "cli")]


def test_pki_nats_config_renders_a_configuration_nats_server_accepts_BUS_1(tmp_path):
    """`ccmsec pki nats-config` (what compose's init step runs): the folders' users, no seed in it."""
    import subprocess

    from tests.conftest import nats_binary, run_cli

    for role in ("callmanager", "capf"):
        assert run_cli("pki", "issue", "--data", str(tmp_path), "--role", role,
                       "--out", str(tmp_path / "ids" / role)).returncode == 0
    res = run_cli("pki", "nats-config", "--data", str(tmp_path), "--out", str(tmp_path / "nats.conf"),
                  "--listen", "127.0.0.1:4299", "--store", str(tmp_path / "js"),
                  str(tmp_path / "ids" / "callmanager"), str(tmp_path / "ids" / "capf"))
    assert res.returncode == 0, res.stderr
    assert "callmanager/callmanager, capf/capf" in res.stdout and "no anonymous user" in res.stdout
    text = (tmp_path / "nats.conf").read_text()
    assert (tmp_path / "ids" / "capf" / "nats.nk").read_text().strip() not in text
    check = subprocess.run([nats_binary(), "-c", str(tmp_path / "nats.conf"), "-t"], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    bad = run_cli("pki", "nats-config", "--data", str(tmp_path), "--out", str(tmp_path / "x.conf"),
                  str(tmp_path / "nowhere"))
    assert bad.returncode != 0 and "no identity in" in bad.stderr and "Traceback" not in bad.stderr


async def _until(condition, seconds: float = 20.0) -> bool:
    """Wait on a condition (never a fixed sleep): the machine may be slow."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _public_key(c, role: str) -> str:
    from ccmsec.runtime.bus import public_key_of_seed

    return public_key_of_seed(read_seed(c["folders"][role]))


async def test_a_role_cannot_create_or_bind_another_roles_durable_consumer_BUS_6(bus_cluster):
    """BUS-6 / issue 9 §3: phone-sim's credentials may not create callmanager's durable consumer
    (and so take the resets meant for call control), nor bind it once call control made it, nor
    create a consumer under a name of its own choosing, nor ack call control's deliveries — each a
    clear error. The legitimate path: each binds its own node's declared consumer and both get the
    reset the CTL Provider publishes."""
    from nats.js.errors import NotFoundError

    c = bus_cluster
    cm, phone_sim, ctl, operator = (_bus(c, "callmanager"), _bus(c, "phone-sim"), _bus(c, "ctl-provider"),
                                    _operator(c))
    for b in (cm, phone_sim, ctl, operator):
        await b.connect()
    got: dict[str, list[str]] = {"callmanager": [], "phone-sim": []}
    try:
        # Before call control made it: phone-sim may not create it under call control's name.
        with pytest.raises(BusError, match=r"NATS refused to let phone-sim bind consumer "
                                           r"callmanager-device-reset .*[Pp]ermissions [Vv]iolation"):
            await phone_sim.subscribe(subject_for("device.reset"), "callmanager-device-reset", _noop)
        with pytest.raises(NotFoundError):
            await operator.js.consumer_info(STREAM, "callmanager-device-reset")
        # Nor under a name that is nobody's: only declared names, only its own node's.
        with pytest.raises(BusError, match="NATS refused to let phone-sim bind consumer phone-sim-anything"):
            await phone_sim.subscribe(subject_for("device.reset"), "phone-sim-anything", _noop)

        async def record(role):
            async def handler(event):
                got[role].append(event.id)
            return handler

        await cm.subscribe(subject_for("device.reset"), "callmanager-device-reset", await record("callmanager"))
        await phone_sim.subscribe(subject_for("device.reset"), "phone-sim-device-reset", await record("phone-sim"))
        # Once it exists: binding it (its info names the delivery inbox) is refused too.
        with pytest.raises(BusError, match="NATS refused to let phone-sim bind consumer callmanager-device-reset"):
            await phone_sim.subscribe(subject_for("device.reset"), "callmanager-device-reset", _noop)
        asked = time.monotonic()  # this request's own refusal, not the bind's above
        with pytest.raises(nats.errors.TimeoutError):  # dropped unanswered: ended at its refusal
            await phone_sim._or_refused(phone_sim.js.consumer_info(STREAM, "callmanager-device-reset", timeout=5),
                                        f"$JS.API.CONSUMER.INFO.{STREAM}.callmanager-device-reset", asked)
        assert phone_sim._refusal(f"$JS.API.CONSUMER.INFO.{STREAM}.callmanager-device-reset", asked)
        # A forged ack of call control's delivery is refused by the server.
        await phone_sim.nc.publish(f"$JS.ACK.{STREAM}.callmanager-device-reset.1.1.1.1.1.0", b"+ACK")
        assert await _until(lambda: phone_sim._refusal(f"$JS.ACK.{STREAM}.callmanager-device-reset", 0.0))

        reset = _reset()
        await ctl.publish(reset)
        assert await _until(lambda: got["callmanager"] == [reset.id] and got["phone-sim"] == [reset.id]), got
        info = await operator.js.consumer_info(STREAM, "callmanager-device-reset")
        assert info.config.deliver_subject.startswith(f"_INBOX.{_public_key(c, 'callmanager')}.")
    finally:
        for b in (cm, phone_sim, ctl, operator):
            await b.close()


async def test_a_role_cannot_receive_on_another_roles_inbox_BUS_6(bus_cluster):
    """BUS-6 / issue 9 §3: phone-sim's credentials may not subscribe to callmanager's inbox (where
    its JetStream API replies, publish acks and push deliveries arrive) nor to every inbox
    (`_INBOX.>`); what call control receives there meanwhile reaches call control alone. A client
    with phone-sim's seed but the default `_INBOX` prefix gets no JetStream reply at all: the
    server lets each user receive only on `_INBOX.<its own public key>`."""
    c = bus_cluster
    cm, phone_sim = _bus(c, "callmanager"), _bus(c, "phone-sim")
    await cm.connect()
    await phone_sim.connect()
    stolen: list[str] = []

    async def steal(msg):
        stolen.append(msg.subject)

    cm_inbox = f"_INBOX.{_public_key(c, 'callmanager')}"
    try:
        for pattern in (f"{cm_inbox}.>", "_INBOX.>"):
            await phone_sim.nc.subscribe(pattern, cb=steal)
            assert await _until(lambda: phone_sim._refusal(f'subscription to "{pattern}"', 0.0)), pattern
        # call control's own traffic on its inbox still works, and nobody else sees it
        got = []

        async def handler(event):
            got.append(event.id)

        await cm.subscribe(subject_for("device.reset"), "callmanager-device-reset", handler)
        await cm.js.stream_info(STREAM)
        reset = _reset()
        seq = await cm.publish(reset)
        assert seq > 0
        assert await _until(lambda: got == [reset.id])
        await phone_sim.nc.flush()
        assert stolen == []
        # the legitimate path for phone-sim: its own inbox
        assert (await phone_sim.js.stream_info(STREAM)).config.name == STREAM
    finally:
        await cm.close()
        await phone_sim.close()

    raw = await nats.connect(c["url"], nkeys_seed_str=read_seed(c["folders"]["phone-sim"]).decode(),
                             allow_reconnect=False, connect_timeout=5)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await raw.jetstream(timeout=2).stream_info(STREAM)
    finally:
        await raw.close()


def test_every_role_may_bind_only_its_own_nodes_declared_consumers_BUS_6():
    """BUS-6: the rendered permissions name each declared consumer of the node (and its one spare
    name), no wildcard over consumers, and receive only on the user's own inbox."""
    from ccmsec.runtime.bus_policy import CONSUMERS, durable_name

    for role, names in CONSUMERS.items():
        perms = user_permissions(role, "node-a", "UKEYA")
        consumer_api = [s for s in perms["publish"]["allow"] if s.startswith(("$JS.API.CONSUMER.", "$JS.ACK."))
                        and not s.startswith("$JS.API.CONSUMER.NAMES.")]
        mentioned = {t for s in consumer_api for t in s.split(".") if t.startswith("node-a-")}
        assert mentioned == {durable_name("node-a", n) + sfx for n in names for sfx in ("", "-2")}, role
        assert not any(s.endswith(f".{STREAM}.>") or f".{STREAM}.*" in s for s in consumer_api), role
        assert perms["subscribe"]["allow"] == ["ccmsec.>", "_INBOX.UKEYA.>"], role
    assert "device-reset" in CONSUMERS["phone-sim"] and "access-denied" not in CONSUMERS["phone-sim"]
    with pytest.raises(ValueError, match="not an nkey public key"):
        user_permissions("callmanager", "cm", "U.>")


async def test_a_stream_recreated_with_a_subject_transform_lets_no_forged_event_through_BUS_2(bus_cluster, caplog):
    """BUS-2/BUS-5: any service may create the stream when it is missing. phone-sim, the least
    trusted role, made it with a transform from its own `access.denied` to the CLI's restart of
    callmanager: what it published was stored — and delivered — as `ccmsec.cli.service.restart.
    callmanager`, which the subject check lets through, and nothing said the stream was wrong.
    Now the stream counts as drifted (DEGRADED) and no event from it is handled."""
    from nats.js.api import SubjectTransform

    from ccmsec.runtime.bus import stream_config

    c = bus_cluster
    cm, operator, phone_sim = _bus(c, "callmanager"), _operator(c), _bus(c, "phone-sim")
    for b in (cm, operator, phone_sim):
        await b.connect()
    handled, refused = [], []

    async def handler(event):
        handled.append(event.id)

    try:
        await cm.subscribe(subject_for("service.restart", "callmanager"), "callmanager-restart", handler,
                           on_refused=lambda *a: refused.append(a))
        assert await cm.check() == ""
        await operator.js.delete_stream(STREAM)   # lost (BUS-5) ...
        forged_config = stream_config()           # ... and phone-sim is first to make it again
        forged_config.subject_transform = SubjectTransform(
            src="ccmsec.phone-sim.access.denied", dest="ccmsec.cli.service.restart.callmanager")
        await phone_sim.js.add_stream(forged_config)
        forged = make_event("service.restart", "cli", service_restart=events_pb2.ServiceRestart(
            role="callmanager", rule="CHK-14", reason="forged"))
        await phone_sim.js.publish("ccmsec.phone-sim.access.denied", forged.SerializeToString())
        stored = await operator.js.get_last_msg(STREAM, "ccmsec.cli.service.restart.callmanager")
        assert stored.data == forged.SerializeToString()  # the attack works on the server
        with caplog.at_level(logging.WARNING, logger="ccmsec.bus"):
            reason = await cm.check()                     # the consumer is bound again ...
            for _ in range(60):
                if refused or handled:
                    break
                await asyncio.sleep(0.05)
            again = await cm.check()
    finally:
        for b in (cm, operator, phone_sim):
            await b.close()
    assert handled == []
    assert refused and refused[0][:2] == ("cli", "service.restart")
    assert "subject_transform" in reason and "subject_transform" in again and "bus operator" in again
    assert "cannot be trusted" in caplog.text


async def test_a_role_restarts_only_what_its_changes_require_BUS_2(bus_cluster):
    """`service.restart.<target>` is allowed per target: call control — whose changes restart no
    service — may restart none (any callmanager node, subscribers too, could restart the CTL
    Provider or CAPF at will), CAPF only itself (RST-8); the CLI any. The server refuses the rest,
    and a consumer drops one that reaches the stream anyway."""
    c = bus_cluster
    cm, operator, consumer = _bus(c, "callmanager"), _operator(c), _bus(c, "ctl-provider", "consumer")
    for b in (cm, operator, consumer):
        await b.connect()
    handled, refused = [], []

    async def handler(event):
        handled.append(event.id)

    try:
        await consumer.subscribe(subject_for("service.restart", "ctl-provider"), "ctl-provider-restart",
                                 handler, on_refused=lambda *a: refused.append(a))
        restart = make_event("service.restart", "callmanager", service_restart=events_pb2.ServiceRestart(
            role="ctl-provider", rule="RST-7"))
        with pytest.raises(BusError, match="permissions violation"):
            await cm.publish(restart, target="ctl-provider")
        await operator.js.publish("ccmsec.capf.service.restart.ctl-provider", restart.SerializeToString())
        legit = make_event("service.restart", "ctl-provider", service_restart=events_pb2.ServiceRestart(
            role="ctl-provider", rule="RST-7"))
        await _bus_publish(c, "ctl-provider", legit, target="ctl-provider")
        for _ in range(100):
            if handled and refused:
                break
            await asyncio.sleep(0.05)
    finally:
        for b in (cm, operator, consumer):
            await b.close()
    assert handled == [legit.id]
    assert [r[:2] for r in refused] == [("capf", "service.restart")] and "may not restart" in refused[0][2]


async def _swap_stream_and_forge(operator: EventBus, phone_sim: EventBus) -> events_pb2.Event:
    """The stream swapped for one with a transform from phone-sim's `access.denied` to the CLI's
    restart of callmanager, and a forged restart published through it at once."""
    from nats.js.api import SubjectTransform

    from ccmsec.runtime.bus import stream_config

    await operator.js.delete_stream(STREAM)
    forged_config = stream_config()
    forged_config.subject_transform = SubjectTransform(
        src="ccmsec.phone-sim.access.denied", dest="ccmsec.cli.service.restart.callmanager")
    await phone_sim.js.add_stream(forged_config)
    forged = make_event("service.restart", "cli", service_restart=events_pb2.ServiceRestart(
        role="callmanager", rule="CHK-14", reason="forged"))
    await phone_sim.js.publish("ccmsec.phone-sim.access.denied", forged.SerializeToString())
    return forged


async def test_a_consumer_bound_after_a_stream_swap_handles_no_forged_event_before_a_check_BUS_2(bus_cluster):
    """BUS-2/BUS-5: the stream's settings were judged when the bus connected (and at each check,
    every 2 s); a consumer bound in between — a service subscribing after its set-up, or a check
    rebinding a lost consumer just after it judged the stream — was bound to whatever stream was
    there then. Swapped for one with a transform, its forged event was handled before the next
    check. Now a consumer handles nothing until it is proven bound to the stream that was judged."""
    c = bus_cluster
    operator, phone_sim = _operator(c), _bus(c, "phone-sim")
    cm = _bus(c, "callmanager")
    for b in (cm, operator, phone_sim):
        await b.connect()            # cm judged the stream: trusted
    handled, refused = [], []

    async def handler(event):
        handled.append(event.id)

    try:
        # 1. Swapped between connect and subscribe (a service's set-up takes its time).
        forged = await _swap_stream_and_forge(operator, phone_sim)
        await cm.subscribe(subject_for("service.restart", "callmanager"), "callmanager-restart", handler,
                           on_refused=lambda *a: refused.append(a))
        for _ in range(40):
            if handled or refused:
                break
            await asyncio.sleep(0.05)
        assert handled == [] and [r[:2] for r in refused] == [("cli", "service.restart")], forged.id
    finally:
        for b in (cm, operator, phone_sim):
            await b.close()


async def test_a_stream_swapped_while_a_check_rebinds_a_consumer_lets_no_forged_event_through_BUS_2(bus_cluster):
    """The same swap landing inside a check, between its judgement of the stream and its rebinding
    of the consumer the swap deleted: the consumer is bound to the swapped stream, and the forged
    event must not be handled (it was, until the next check)."""
    from ccmsec.runtime.bus import stream_config

    c = bus_cluster
    operator, phone_sim = _operator(c), _bus(c, "phone-sim")
    cm = _bus(c, "callmanager")
    for b in (cm, operator, phone_sim):
        await b.connect()
    handled, refused = [], []

    async def handler(event):
        handled.append(event.id)

    try:
        await cm.subscribe(subject_for("service.restart", "callmanager"), "callmanager-restart", handler,
                           on_refused=lambda *a: refused.append(a))
        assert await cm.check() == ""
        await operator.js.delete_stream(STREAM)          # lost; cm's next check finds it missing ...
        real_ensure = cm.ensure_stream
        swapped = []

        async def ensure_then_swapped():
            made = await real_ensure()                   # ... and makes it again, trusted ...
            # ... then, before the rebind, the swap
            swapped.append(await _swap_stream_and_forge(operator, phone_sim))
            return made

        cm.ensure_stream = ensure_then_swapped
        await cm.check()
        cm.ensure_stream = real_ensure
        for _ in range(40):
            if handled or refused:
                break
            await asyncio.sleep(0.05)
        assert swapped and handled == []
        assert refused and refused[0][:2] == ("cli", "service.restart")
        assert "subject_transform" in await cm.check()
        # the operator restores the stream: events are handled again
        await operator.js.delete_stream(STREAM)
        await operator.js.add_stream(stream_config())
        await cm.check()
        assert await cm.check() == ""
        legit = make_event("service.restart", "cli", service_restart=events_pb2.ServiceRestart(
            role="callmanager", rule="CHK-14"))
        await _bus_publish(c, "cli", legit, target="callmanager")
        assert await _until(lambda: handled == [legit.id])
    finally:
        for b in (cm, operator, phone_sim):
            await b.close()


async def test_a_stream_put_right_in_place_is_trusted_again_by_a_consumer_proven_on_it_BUS_2(bus_cluster):
    """A consumer proven on a stream with a subject transform keeps that judgement with its
    binding. When the bus operator removes the transform by updating the stream in place (the same
    stream: the consumer stays bound), the check found nothing wrong any more, yet the binding's
    old judgement dropped - terminated - every event for good until the service restarted."""
    from nats.js.api import SubjectTransform

    from ccmsec.runtime.bus import stream_config

    c = bus_cluster
    operator, cm = _operator(c), _bus(c, "callmanager")
    await operator.connect()
    handled, refused = [], []

    async def handler(event):
        handled.append(event.id)

    try:
        await operator.js.delete_stream(STREAM)
        transformed = stream_config()
        transformed.subject_transform = SubjectTransform(src="ccmsec.nobody.>", dest="ccmsec.nobody2.>")
        await operator.js.add_stream(transformed)
        await cm.connect()
        await cm.subscribe(subject_for("service.restart", "callmanager"), "callmanager-restart", handler,
                           on_refused=lambda *a: refused.append(a))
        assert "subject_transform" in await cm.check()
        await operator.js.update_stream(stream_config())        # put right, in place
        assert await cm.check() == ""
        legit = make_event("service.restart", "cli", service_restart=events_pb2.ServiceRestart(
            role="callmanager", rule="CHK-14"))
        await _bus_publish(c, "cli", legit, target="callmanager")
        assert await _until(lambda: handled or refused, 10)
        assert handled == [legit.id] and refused == []
    finally:
        for b in (cm, operator):
            await b.close()
