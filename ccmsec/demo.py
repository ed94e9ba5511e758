"""The steps of `ccmsec demo`, in the order of the source document's checklist.

Each step is a function of a DemoContext; later features add their steps to STEPS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ccmsec.cluster import runner
from ccmsec.domain import CapfAuthMode, CapfOperation, ClusterMode, DeviceSecurityMode
from ccmsec.cluster.state import read_endpoints


@dataclass
class DemoContext:
    data: Path
    out: Callable[[str], None] = print
    notes: dict = field(default_factory=dict)

    @property
    def endpoints(self) -> dict:
        return read_endpoints(self.data) or {}

    def say(self, text: str) -> None:
        self.out("    " + text)


# The demo's cluster: a publisher and one subscriber (LATER-7), so that its last step can kill the
# node serving the phones. Phones return to the publisher after DEMO_STABLE_PERIOD seconds of it
# answering (120 s by default: a demo would wait that long for nothing).
DEMO_SUBSCRIBERS = 1
DEMO_PHONE_SETTINGS = {"CCMSEC_PHONE_FAILBACK_STABLE": "8", "CCMSEC_PHONE_PROBE_INTERVAL": "2"}


ATTACH_RESTART_TIMEOUT = 240.0


def service_nodes(ctx: DemoContext) -> list[tuple[str, str, str, int]]:
    """(node, role, host, gRPC port) of every service: from the local runner's topology, or with
    `--attach` from the cluster's endpoints (e.g. compose's `cli` container, where hosts are the
    compose service names)."""
    if ctx.notes.get("attach"):
        return [(node, node, svc["host"], svc["grpc_port"]) for node, svc in ctx.endpoints["services"].items()]
    return [(i.node, i.role, i.host, i.ports["grpc_port"]) for i in runner.cluster_for(ctx.data).instances]


async def _health(ctx: DemoContext, timeout: float = 1.5) -> dict[str, str]:
    from ccmsec.runtime.grpcio import check_health
    from ccmsec.runtime.identity import client_identity

    if not ctx.notes.get("attach"):
        return await runner.health_states(runner.cluster_for(ctx.data))
    ident = client_identity(ctx.data)
    states = {}
    for node, role, host, port in service_nodes(ctx):
        try:
            states[node] = await check_health(ident, host, port, role, timeout)
        except Exception:
            states[node] = "UNREACHABLE"
    return states


def step_up(ctx: DemoContext) -> None:
    for name, value in DEMO_PHONE_SETTINGS.items():
        os.environ.setdefault(name, value)   # inherited by the cluster this process starts
    rows = runner.up(ctx.data, quiet=True, subscribers=DEMO_SUBSCRIBERS)
    for line in runner.format_rows(rows).splitlines():
        ctx.say(line)


async def step_health(ctx: DemoContext) -> None:
    from ccmsec.runtime.grpcio import check_health
    from ccmsec.runtime.identity import client_identity

    import grpc

    ident = client_identity(ctx.data)
    for node, role, host, port in service_nodes(ctx):
        t0 = time.perf_counter()
        for attempt in range(3):
            try:
                state = await check_health(ident, host, port, role)
                break
            except grpc.aio.AioRpcError as exc:
                # a handshake through a published port can fail once on a loaded machine: ask again
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                    raise
                await asyncio.sleep(1.0)
        ctx.say(f"{node:16} {state} over mutual TLS ({(time.perf_counter() - t0) * 1000:.1f} ms)")
        if state != "SERVING":
            raise runner.RunnerError(f"{node} is {state}")


async def step_event_round_trip(ctx: DemoContext) -> None:
    import grpc

    from ccmsec.runtime.bus import EventBus, make_event
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import common_pb2, events_pb2

    if not ctx.endpoints.get("nats_url"):
        # a context from a client bundle of a cluster that did not publish NATS yet
        ctx.say("not run from here: this context has no event bus address (its client bundle predates "
                "the published NATS port); add the context again from a new `compose client-bundle`")
        return
    bus = EventBus.for_cli(ctx.data, ctx.endpoints["nats_url"], "ccmsec-demo")
    await bus.connect()
    if through_context(ctx):  # the published port admits only known nkeys (BUS-1)
        ctx.say(f"connected to NATS at {ctx.endpoints['nats_url']} (published port) with the cli "
                "identity's nkey from the context")
    event = make_event("device.reset", "ccmsec-demo",
                       device_reset=events_pb2.DeviceReset(devices=["SEPDEMO00000001"], kind=events_pb2.RESET,
                                                           reason="demo round trip"))
    seq = await bus.publish(event)  # a round trip of the bus itself, no stored change: no outbox
    await bus.close()
    ctx.say(f"published durable event {event.kind} id={event.id[:12]}… (stream sequence {seq})")
    ident = client_identity(ctx.data)
    svc = ctx.endpoints["services"]["callmanager"]
    deadline = time.monotonic() + 20
    async with secure_channel(ident, svc["host"], svc["grpc_port"], "callmanager") as ch:
        status = ch.unary_unary("/ccmsec.v1.CallManager/Status",
                                request_serializer=common_pb2.Empty.SerializeToString,
                                response_deserializer=common_pb2.ServiceStatus.FromString)
        last = ""
        while time.monotonic() < deadline:
            try:
                st = await status(common_pb2.Empty(), timeout=3)
            except grpc.aio.AioRpcError as exc:
                # a slow or refused handshake on a loaded machine: ask again until the deadline
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                last = f" (last answer: {exc.code().name})"
            else:
                if st.details.get("last_event_id") == event.id:
                    ctx.say(f"callmanager handled it (events handled: {st.details.get('events_handled')})")
                    await _set_aside_events(ctx)
                    return
            await asyncio.sleep(0.2)
    raise runner.RunnerError(f"callmanager did not handle the demo event within 20 s{last}")


async def _set_aside_events(ctx: DemoContext) -> None:
    """Each service's outbox, asked through the service (`ccmsec outbox list`): the events NATS
    refused for good and that wait for an operator."""
    import grpc

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import outbox_pb2, outbox_pb2_grpc

    ident, totals = client_identity(ctx.data), {}
    for node, role, host, port in service_nodes(ctx):
        async with secure_channel(ident, host, port, role) as channel:
            for attempt in range(3):
                try:
                    reply = await outbox_pb2_grpc.OutboxStub(channel).ListSetAside(
                        outbox_pb2.ListSetAsideRequest(limit=1), timeout=10)
                    totals[node] = reply.total
                    break
                except grpc.aio.AioRpcError as exc:  # a slow handshake on a loaded machine: again
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                        raise
                    await asyncio.sleep(1.0)
    held = {node: n for node, n in totals.items() if n}
    if held:
        ctx.say("events set aside (refused for good by NATS): " + ", ".join(f"{n} on {node}" for node, n in
                                                                             sorted(held.items())))
    else:
        ctx.say(f"outboxes of all {len(totals)} services: every event published, none set aside "
                "(`ccmsec outbox list SERVICE` would show them)")


async def step_capf_activate(ctx: DemoContext) -> None:
    """CHK-2: activate CAPF on the publisher before the CTL client runs."""
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import capf_pb2_grpc, common_pb2, ctl_provider_pb2

    svc = ctx.endpoints["services"]["capf"]
    async with secure_channel(client_identity(ctx.data), svc["host"], svc["grpc_port"], "capf") as ch:
        stub = capf_pb2_grpc.CapfStub(ch)
        before = await stub.Status(common_pb2.Empty(), timeout=5)
        st = await stub.Activate(ctl_provider_pb2.ActivateRequest(active=True), timeout=5)
        cert = await stub.GetCapfCertificate(common_pb2.Empty(), timeout=5)
    ctx.say(f"CAPF was {'active' if before.activated else 'not activated'}; now activated={st.activated} "
            f"on {svc['host']}:{svc['capf_port']}")
    ctx.say(f"CAPF certificate {cert.subject} sha256 {cert.fingerprint_sha256[:16]}…")
    if st.details.get("note"):
        ctx.say(st.details["note"])


# --- issue 3: trust anchors (CHK-1, CHK-4, CHK-6) -------------------------------------------------
DEMO_TOKENS = ("token1", "token2")


async def step_ctl_provider_activate(ctx: DemoContext) -> None:
    """CHK-1: activate the CTL Provider; show what it answers over TLS."""
    from ccmsec.ctlclient import fetch_server_certificates, provider_port, provider_ssl_context
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import common_pb2, ctl_provider_pb2, ctl_provider_pb2_grpc

    ident = client_identity(ctx.data)
    svc = ctx.endpoints["services"]["ctl-provider"]
    async with secure_channel(ident, svc["host"], svc["grpc_port"], "ctl-provider") as ch:
        stub = ctl_provider_pb2_grpc.CtlProviderStub(ch)
        before = await stub.Status(common_pb2.Empty(), timeout=5)
        await stub.Activate(ctl_provider_pb2.ActivateRequest(active=True), timeout=5)
        settings = await stub.GetProviderSettings(common_pb2.Empty(), timeout=5)
    ctx.say(f"CTL Provider was {'active' if before.activated else 'not activated (CHK-1)'}; now "
            f"activated, TLS on {settings.host}:{settings.listening_port}")
    ctx_tls = provider_ssl_context(ident.ca_path, ident.cert_path, ident.key_path)
    # A provider bound to every address (in a container) is reached at the service's own address
    # and the endpoints' port (from the host: the published one).
    host = svc["host"] if settings.host in ("0.0.0.0", "::", "") else settings.host
    port = provider_port(settings, svc)
    if (host, port) != (settings.host, settings.listening_port):
        ctx.say(f"reached at {host}:{port}")
    for server in await fetch_server_certificates(host, port, ctx_tls):
        ctx.say(f"  {server.role.label:<5} {server.dns_name:<12} {server.ipv4 or '-':<15} "
                f"{server.certificate.subject.rfc4514_string()}")


def step_tokens(ctx: DemoContext) -> None:
    """CHK-4: two software security tokens from the manufacturer CA (password in a 0600 file)."""
    import secrets

    from ccmsec.formats.ctl import dn_string
    from ccmsec.fsutil import atomic_write
    from ccmsec.pki.tokens import TokenExistsError, create_software_token, ensure_manufacturer_ca, token_info

    pw_file = ctx.data / "demo-token-password"
    if not pw_file.exists():
        atomic_write(pw_file, (secrets.token_urlsafe(12) + "\n").encode(), mode=0o600)
    password = pw_file.read_text().strip()
    ca = ensure_manufacturer_ca(ctx.data / "pki")
    for name in DEMO_TOKENS:
        try:
            cert = create_software_token(ctx.data / "tokens", name, password, ca).certificate
            verb = "created"
        except TokenExistsError:
            cert = token_info(ctx.data / "tokens", name).certificate
            verb = "kept"
        ctx.say(f"{verb} token {name}: {dn_string(cert.subject)} serial {cert.serial_number:x}")
    ctx.notes["token_password_file"] = pw_file
    ctx.say(f"token password in {pw_file} (mode 0600)")


async def step_ctl_client(ctx: DemoContext) -> None:
    """CHK-6: the CTL client builds, signs and publishes CTLFile.tlv and switches to mixed mode."""
    from ccmsec.aio.tftp import tftp_get
    from ccmsec.ctlclient import CtlClientError, UpdateOptions, run_update
    from ccmsec.formats.ctl import format_ctl, parse_ctl, verify_ctl

    password = (ctx.notes.get("token_password_file") or ctx.data / "demo-token-password").read_text().strip()
    pids_before = _pids(ctx)
    try:
        result = await run_update(ctx.data, UpdateOptions(tokens=list(DEMO_TOKENS), mode=ClusterMode.MIXED),
                                  password)
    except CtlClientError as exc:
        raise runner.RunnerError(f"CTL client: {exc}") from None
    ctx.say(f"CTL version {result.version} signed by {DEMO_TOKENS[0]}, sha256 {result.sha256[:16]}…, "
            f"published to {result.published_path}")
    ctx.say(f"cluster security mode: {result.previous_mode} -> {result.mode}")
    for event in result.events:
        ctx.say(f"  event {event}")
    await wait_restarted(ctx, ("callmanager", "tftp-signer"), pids_before)
    ctx.say("callmanager and tftp-signer restarted (RST-3, RST-4) and serve again")
    try:
        tftp_host, tftp_port = await tftp_endpoint(ctx)
    except NotHere as exc:
        ctx.say(f"CTLFile.tlv not fetched back over TFTP: not from here: {exc}")
        tftp_host, served = None, result.ctl
    else:
        served = None
    deadline = time.monotonic() + 30
    while served is None:  # the tftp-signer restarts after a CTL update (RST-4)
        try:
            served = await tftp_get(tftp_host, tftp_port, "CTLFile.tlv", timeout=0.5, retries=2)
        except Exception:
            if time.monotonic() > deadline:
                raise runner.RunnerError("CTLFile.tlv could not be fetched back over TFTP") from None
            await asyncio.sleep(0.3)
    ctl_file = parse_ctl(served)
    signer = verify_ctl(ctl_file)
    if tftp_host is not None:
        ctx.say(f"fetched CTLFile.tlv back over TFTP ({len(served)} bytes, "
                f"{'same file' if served == result.ctl else 'DIFFERENT FILE'}); signature valid ({signer.subject})")
    else:
        ctx.say(f"the CTL file published: signature valid ({signer.subject})")
    ctx.say("")
    for line in format_ctl(ctl_file).splitlines():
        ctx.say(line)


# --- issues 4-6: phones boot the whole secure way (CHK-7 … CHK-9, CHK-13) -------------------------
# (model, device security mode, CAPF authentication for an LSC install or None)
DEMO_FLEET = (
    ("7970", DeviceSecurityMode.ENCRYPTED, CapfAuthMode.MIC),      # has a MIC; its LSC then takes precedence
    ("7960", DeviceSecurityMode.AUTHENTICATED, CapfAuthMode.NULL),  # no MIC: needs an LSC before TLS
    ("7940", DeviceSecurityMode.ENCRYPTED, CapfAuthMode.STRING),   # the administrator's string, keyed in
    ("7912", DeviceSecurityMode.NON_SECURE, None),                 # image authentication only (DEV-3)
)
DEMO_AUTH_STRING = "24680"


def fleet_number(index: int) -> str:
    """The directory number of the demo fleet's phone number `index` (DEMO_FLEET order)."""
    return f"41{index:02d}"


def _pids(ctx: DemoContext) -> dict[str, int]:
    from ccmsec.cluster.state import read_state

    return {role: int(info.get("pid") or 0)
            for role, info in ((read_state(ctx.data) or {}).get("children") or {}).items()}


async def wait_restarted(ctx: DemoContext, roles, before: dict[str, int], timeout: float = 60.0) -> None:
    """Wait until each role runs in a new process (a restart event was handled) and all serve."""
    if ctx.notes.get("attach"):
        # No process ids from outside the cluster: watch each role leave SERVING (its old process
        # stops; compose's restart policy starts a new one), then wait until all serve again.
        down: set[str] = set()
        until = time.monotonic() + 30.0
        while time.monotonic() < until and not set(roles) <= down:
            states = await _health(ctx, timeout=1.0)
            down |= {r for r in roles if states.get(r) != "SERVING"}
            await asyncio.sleep(0.3)
        await wait_all_serving(ctx, timeout)
        return
    deadline = time.monotonic() + timeout
    while True:
        now = _pids(ctx)
        if all(now.get(r) and now.get(r) != before.get(r) for r in roles):
            break
        if time.monotonic() > deadline:
            raise runner.RunnerError(f"{', '.join(roles)} did not restart within {timeout:.0f}s")
        await asyncio.sleep(0.2)
    await wait_all_serving(ctx, timeout)


async def wait_all_serving(ctx: DemoContext, timeout: float = 60.0) -> None:
    """After RST-3/RST-4 restarts, wait until every service answers SERVING again."""
    if ctx.notes.get("attach"):
        timeout = max(timeout, ATTACH_RESTART_TIMEOUT)  # a container restart is a process start and more
    deadline = time.monotonic() + timeout
    while True:
        states = await _health(ctx)
        waiting = sorted(r for r, st in states.items() if st != "SERVING")
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise runner.RunnerError(f"services not serving again after {timeout:.0f}s: {', '.join(waiting)}")
        await asyncio.sleep(0.3)


async def step_secure_fleet(ctx: DemoContext) -> None:
    """Devices configured per mode, LSCs scheduled, phones boot: CTL, signed config, CAPF, SCCP."""
    await wait_all_serving(ctx)
    from ccmsec.adminclient import AdminClient, discover
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import capf_pb2, capf_pb2_grpc, phone_sim_pb2, phone_sim_pb2_grpc

    ident = client_identity(ctx.data)
    sim, capf = ctx.endpoints["services"]["phone-sim"], ctx.endpoints["services"]["capf"]
    async with secure_channel(ident, sim["host"], sim["grpc_port"], "phone-sim") as sim_ch, \
            secure_channel(ident, capf["host"], capf["grpc_port"], "capf") as capf_ch:
        phones = phone_sim_pb2_grpc.PhoneSimStub(sim_ch)
        capf_stub = capf_pb2_grpc.CapfStub(capf_ch)
        names: dict[str, tuple[str, str, str | None]] = {}
        for index, (model, mode, auth) in enumerate(DEMO_FLEET):
            added = await phones.AddPhones(phone_sim_pb2.AddPhonesRequest(
                count=1, model=model, name_prefix=f"SEP0DE7{index}"), timeout=60)
            names[added.phones[0].name] = (model, mode, auth)
        with AdminClient(discover(ctx.data)) as admin:
            for index, (name, (model, mode, _)) in enumerate(names.items()):
                admin.add_device(name, model, mode)
                admin.add_line(fleet_number(index), name)   # the phones call each other later
                ctx.say(f"device {name} ({model}) configured {mode} through the HTTPS admin API (CHK-9), "
                        f"line {fleet_number(index)}")
        for name, (model, mode, auth) in names.items():
            if auth is None:
                continue
            await capf_stub.ScheduleOperation(capf_pb2.CapfSchedule(
                device=name, operation=CapfOperation.INSTALL.to_proto(), auth_mode=auth.to_proto(),
                auth_string=DEMO_AUTH_STRING if auth is CapfAuthMode.STRING else "", key_type="ec256"), timeout=10)
            if auth is CapfAuthMode.STRING:
                await phones.SetAuthString(phone_sim_pb2.SetAuthStringRequest(
                    name=name, auth_string=DEMO_AUTH_STRING), timeout=10)
            ctx.say(f"CAPF install scheduled for {name}, authenticated by {auth} (CHK-7)")
        await phones.BootPhones(phone_sim_pb2.PhoneSelector(names=list(names)), timeout=30)
        deadline = time.monotonic() + 120
        while True:
            states = (await phones.ListPhones(phone_sim_pb2.PhoneSelector(names=list(names)),
                                              timeout=10)).phones
            wanted = {p.name: names[p.name][1] for p in states}
            done = [p for p in states if p.state == "registered" and p.transport == wanted[p.name]]
            if len(done) == len(states):
                break
            if time.monotonic() > deadline:
                summary = "; ".join(f"{p.name} {p.state} {p.transport or '-'} {p.last_failure_reason}"
                                    f" (recent: {' | '.join(p.history[-6:])})" for p in states)
                raise runner.RunnerError(f"phones did not all register as configured: {summary}")
            await asyncio.sleep(0.5)
    for p in sorted(states, key=lambda p: p.name):
        lsc = "LSC" if p.lsc.der else "no LSC"
        ctx.say(f"{p.name} {p.model:5} registered {p.transport:13} via {p.registered_with} "
                f"presenting {p.certificate_in_use or 'no certificate'} ({lsc}); files: {len(p.files)}; "
                f"image {p.firmware}")


async def step_registry(ctx: DemoContext) -> None:
    """The registry as call control sees it: where, since when, in which mode, with which certificate."""
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import callmanager_pb2, callmanager_pb2_grpc, common_pb2

    svc = ctx.endpoints["services"]["callmanager"]
    async with secure_channel(client_identity(ctx.data), svc["host"], svc["grpc_port"], "callmanager") as ch:
        stub = callmanager_pb2_grpc.CallManagerStub(ch)
        mode = await stub.GetClusterMode(common_pb2.Empty(), timeout=5)
        regs = (await stub.GetRegistrations(callmanager_pb2.RegistrationsRequest(), timeout=5)).registrations
    ctx.say(f"cluster security mode {ClusterMode.proto_text(mode.mode)}; "
            f"{len(regs)} device(s) registered")
    for r in sorted(regs, key=lambda r: r.device):
        mode_name = DeviceSecurityMode.proto_text(r.mode)
        cert = f"{r.certificate_kind} {r.certificate_fingerprint[:16]}…" if r.certificate_kind else "-"
        ctx.say(f"{r.device:16} {r.model:5} {mode_name:13} from {r.address:21} certificate {cert}"
                + ("  (MODE-7: NAT suspected)" if r.nat_suspected else ""))


# Calls between the fleet's phones through phone-sim: (caller, callee) indexes into DEMO_FLEET.
FLEET_CALLS = ((0, 2), (0, 1), (0, 3))   # encrypted-encrypted, encrypted-authenticated, encrypted-non-secure


async def step_fleet_calls(ctx: DemoContext) -> None:
    """The booted phones call each other through phone-sim, as users would (PhoneSim/PhoneAction),
    and each call's status is shown as both phones display it and as call control computed it."""
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import callmanager_pb2_grpc, common_pb2, phone_sim_pb2, phone_sim_pb2_grpc

    ident = client_identity(ctx.data)
    sim, cm = ctx.endpoints["services"]["phone-sim"], ctx.endpoints["services"]["callmanager"]
    async with secure_channel(ident, sim["host"], sim["grpc_port"], "phone-sim") as sim_ch, \
            secure_channel(ident, cm["host"], cm["grpc_port"], "callmanager") as cm_ch:
        phones = phone_sim_pb2_grpc.PhoneSimStub(sim_ch)
        calls = callmanager_pb2_grpc.CallManagerStub(cm_ch)
        fleet = await _fleet_phones(phones)

        display = _display_of(phones)

        def until(check, what: str, timeout: float = 15.0):
            return _until(check, what, step="calls", timeout=timeout)

        def act(name: str, action: str, number: str = ""):
            return phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=name, action=action, number=number),
                                      timeout=20)

        for caller_i, callee_i in FLEET_CALLS:
            a, b = fleet[caller_i], fleet[callee_i]
            await until(lambda: _ready(display, a.name), f"lines on {a.name}")
            await act(a.name, "dial", fleet_number(callee_i))
            await until(lambda: _in_state(display, b.name, "ring-in"), f"ringing on {b.name}")
            await act(b.name, "answer")
            before = (await display(a.name)).media.received
            await until(lambda: _in_state(display, a.name, "connected"), f"{a.name} connected")
            await until(lambda: _received_since(display, a.name, before, 25), f"audio on {a.name}")
            shown_a, shown_b = await display(a.name), await display(b.name)
            view = next((c for c in (await calls.ListCalls(common_pb2.Empty(), timeout=10)).calls
                         if {lg.device for lg in c.legs} == {a.name, b.name}), None)
            icon_a, icon_b = shown_a.calls[0].icon, shown_b.calls[0].icon
            m = shown_a.media
            ctx.say(f"{a.model} ({a.transport}) calls {b.model} ({b.transport}): the phones show "
                    f"'{icon_a}' / '{icon_b}'; call control: {view.status if view else '?'} "
                    f"({view.rule if view else '?'}); audio on {a.model}: SRTP both ways "
                    f"{'yes' if m.srtp_both_ways else 'no'}, received {m.received}, refused "
                    f"{m.refused_authentication + m.refused_replay}")
            await act(a.name, "hangup")
            await until(lambda: _idle(display, b.name), f"{b.name} cleared")
    ctx.say("the same from the command line: `ccmsec phones dial NAME NUMBER`, `ccmsec phones answer "
            "NAME`, `ccmsec phones calls NAME`, `ccmsec calls watch`")


# The supplementary services with the fleet: (holder, held) for hold; the held party is then
# transferred to the transfer target, and the two of them conference in the member.
SERVICES_HOLD = (0, 2)        # the encrypted 7970 holds its call with the encrypted 7940
SERVICES_TRANSFER_TO = 1      # the 7970 transfers the 7940 to the authenticated 7960
SERVICES_CONFERENCE_WITH = 3  # the 7940 adds the non-secure 7912: three on the conference bridge


def _leg_codecs(view) -> str:
    return ", ".join(f"{lg.model or lg.device} {lg.codec or '?'}" for lg in view.legs
                     if lg.state in ("connected", "hold"))


async def step_call_services(ctx: DemoContext) -> None:
    """Hold with music on hold, consultative transfer and an ad hoc conference with the fleet's
    phones through phone-sim (PhoneSim/PhoneAction: the softkeys a user presses), each state as the
    phones display it and as call control's call view has it (status and rule, resources, the
    codec of each leg: CALL-1, CALL-2, CALL-3, CALL-9)."""
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import callmanager_pb2_grpc, common_pb2, phone_sim_pb2, phone_sim_pb2_grpc
    from ccmsec.calls.model import call_status_name
    from ccmsec.policy.calls import CallSecurityLevel

    encrypted_call = call_status_name(CallSecurityLevel.ENCRYPTED)
    non_secure_call = call_status_name(CallSecurityLevel.NON_SECURE)

    ident = client_identity(ctx.data)
    sim, cm = ctx.endpoints["services"]["phone-sim"], ctx.endpoints["services"]["callmanager"]
    async with secure_channel(ident, sim["host"], sim["grpc_port"], "phone-sim") as sim_ch, \
            secure_channel(ident, cm["host"], cm["grpc_port"], "callmanager") as cm_ch:
        phones = phone_sim_pb2_grpc.PhoneSimStub(sim_ch)
        calls = callmanager_pb2_grpc.CallManagerStub(cm_ch)
        fleet = await _fleet_phones(phones)
        name = {i: p.name for i, p in enumerate(fleet)}
        model = {i: p.model for i, p in enumerate(fleet)}

        display = _display_of(phones)

        def until(check, what: str, timeout: float = 15.0):
            return _until(check, what, step="call services", timeout=timeout)

        async def act(i: int, action: str, number: str = ""):
            return await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(
                name=name[i], action=action, number=number), timeout=20)

        async def call_in(i: int, state: str):
            return next((c for c in (await display(name[i])).calls if c.state == state), None)

        async def shows(i: int, icon: str, state: str = "connected"):
            async def check():
                c = await call_in(i, state)
                return c if c is not None and c.icon == icon else None
            return await until(check, f"'{icon}' on {model[i]}'s {state} call")

        async def view_of(*indexes: int, status: str = "", resource: str = ""):
            async def check():
                wanted = {name[i] for i in indexes}
                for c in (await calls.ListCalls(common_pb2.Empty(), timeout=10)).calls:
                    legs = {lg.device for lg in c.legs if lg.state in ("connected", "hold")}
                    if legs == wanted and (not status or c.status == status) and \
                            (not resource or resource in c.resources):
                        return c
                return None
            return await until(check, f"call of {', '.join(model[i] for i in indexes)} in call control's view"
                               + (f" ({status})" if status else ""))

        async def connect(a: int, b: int):
            await until(lambda: _ready(display, name[a]), f"lines on {model[a]}")
            await act(a, "dial", fleet_number(b))
            await until(lambda: _in_state(display, name[b], "ring-in"), f"ringing on {model[b]}")
            await act(b, "answer")
            await until(lambda: _in_state(display, name[a], "connected"), f"{model[a]} connected")

        def party(i: int, c) -> str:
            """The number the phone's call shows that is not its own line's: who it talks to."""
            own = fleet_number(i)
            return c.called if c.calling == own else c.calling

        holder, held = SERVICES_HOLD
        target, member = SERVICES_TRANSFER_TO, SERVICES_CONFERENCE_WITH
        try:
            # --- hold with music on hold (CALL-3, CALL-9), resume -------------------------------
            await connect(holder, held)
            await shows(holder, "lock")
            await shows(held, "lock")
            before = await view_of(holder, held, status=encrypted_call)
            ctx.say(f"{model[holder]} calls {model[held]}: both show 'lock'; call control: {before.status} "
                    f"({before.rule}), codec {before.codec}")
            await act(holder, "hold")
            await until(lambda: call_in(holder, "hold"), f"the call on hold on {model[holder]}")
            await shows(held, "none")
            moh = await view_of(holder, held, status=non_secure_call, resource="music on hold")
            start = (await display(name[held])).media
            await until(lambda: _received_since(display, name[held], start.received, 25),
                        f"music on hold heard on {model[held]}")
            m = (await display(name[held])).media
            held_leg = next(lg for lg in moh.legs if lg.device == name[held])
            ctx.say(f"{model[holder]} presses Hold: {model[held]} shows 'none', hears music on hold in "
                    f"{held_leg.codec} (its leg in call control's view) as plain RTP: SRTP both ways "
                    f"{'yes' if m.srtp_both_ways else 'no'}, received {m.received - start.received} packets, "
                    f"refused {m.refused_authentication + m.refused_replay}; call control: {moh.status} "
                    f"({moh.rule}), resources {', '.join(moh.resources)}; legs: {_leg_codecs(moh)}")
            await act(holder, "resume")
            await shows(holder, "lock")
            await shows(held, "lock")
            back = await view_of(holder, held, status=encrypted_call)
            start = (await display(name[held])).media
            await until(lambda: _received_since(display, name[held], start.received, 10),
                        f"audio on {model[held]} after resume")
            m = (await display(name[held])).media
            ctx.say(f"{model[holder]} presses Resume: both show 'lock' again; call control: {back.status} "
                    f"({back.rule}), resources {', '.join(back.resources) or 'none'}; audio on {model[held]}: "
                    f"SRTP both ways {'yes' if m.srtp_both_ways else 'no'}")

            # --- consultative transfer: the held party to the target ----------------------------
            await act(holder, "transfer")                    # the call with `held` goes on hold
            await until(lambda: call_in(holder, "hold"), f"{model[held]} held for the consultation")
            await act(holder, "dial", fleet_number(target))
            await until(lambda: _in_state(display, name[target], "ring-in"), f"ringing on {model[target]}")
            await act(target, "answer")
            await until(lambda: _in_state(display, name[holder], "connected"), "the consultation connected")
            await act(holder, "transfer")                    # complete: held <-> target
            await until(lambda: _idle(display, name[holder]), f"{model[holder]} out of both calls")

            async def talks_to(i: int, other: int):
                c = await call_in(i, "connected")
                return c if c is not None and party(i, c) == fleet_number(other) else None
            shown_held = await until(lambda: talks_to(held, target), f"{model[held]} showing {model[target]}")
            shown_target = await until(lambda: talks_to(target, held), f"{model[target]} showing {model[held]}")
            moved = await view_of(held, target)
            ctx.say(f"{model[holder]} presses Transfer, dials {fleet_number(target)} ({model[target]}), "
                    f"which answers, Transfer again: {model[holder]} is idle; {model[held]} shows "
                    f"{shown_held.calling}->{shown_held.called} '{shown_held.icon}', {model[target]} shows "
                    f"{shown_target.calling}->{shown_target.called} '{shown_target.icon}'; call control: "
                    f"connected {' and '.join(sorted(f'{lg.model} ({lg.dn})' for lg in moved.legs))}, "
                    f"{moved.status} ({moved.rule}), codec {moved.codec}")

            # --- ad hoc conference: the non-secure phone joins (CALL-3, CALL-9) -----------------
            await act(held, "conference")
            await until(lambda: call_in(held, "hold"), f"{model[target]} held while the member is called")
            await act(held, "dial", fleet_number(member))
            await until(lambda: _in_state(display, name[member], "ring-in"), f"ringing on {model[member]}")
            await act(member, "answer")
            await until(lambda: _in_state(display, name[held], "connected"), "the member connected")
            await act(held, "conference")                    # join: through the conference bridge
            members = (held, target, member)
            for i in members:
                await shows(i, "none")

                async def conference_shown(i=i):
                    c = await call_in(i, "connected")
                    return c if c is not None and c.prompt == "Conference" else None
                # The non-secure member shows 'none' before it joins: wait for the bridge's screen too.
                await until(conference_shown, f"'Conference' on {model[i]}")
            bridged = await view_of(*members, status=non_secure_call, resource="conference bridge")
            shown = {i: await call_in(i, "connected") for i in members}
            ctx.say(f"{model[held]} presses Conference, dials {fleet_number(member)} ({model[member]}), which "
                    "answers, Conference again: " + ", ".join(
                        f"{model[i]} shows {shown[i].calling or '-'}->{shown[i].called or '-'} '{shown[i].prompt}' "
                        f"'{shown[i].icon}'" for i in members)
                    + f"; call control: {bridged.status} ({bridged.rule}), resources {', '.join(bridged.resources)}; "
                    f"legs: {_leg_codecs(bridged)}")
        finally:
            for i in range(len(fleet)):
                for _ in range(4):
                    if not (await display(name[i])).calls:
                        break
                    try:
                        await act(i, "hangup")
                    except Exception:
                        await asyncio.sleep(0.2)
        for i in range(len(fleet)):
            await until(lambda i=i: _idle(display, name[i]), f"{model[i]} cleared")
    ctx.say("the same from the command line: `ccmsec phones hold|resume|transfer|conference NAME`, "
            "`ccmsec phones calls NAME`, `ccmsec calls`")


async def _fleet_phones(phones) -> list:
    """The demo fleet's phones in phone-sim, by name; all of them or a RunnerError."""
    from ccmsec_proto import phone_sim_pb2

    fleet = sorted((p for p in (await phones.ListPhones(phone_sim_pb2.PhoneSelector(), timeout=10)).phones
                    if p.name.startswith("SEP0DE7")), key=lambda p: p.name)
    if len(fleet) != len(DEMO_FLEET):
        raise runner.RunnerError(f"expected the {len(DEMO_FLEET)} fleet phones, found {len(fleet)}")
    return fleet


def _display_of(phones):
    """What a phone of phone-sim shows (its calls and media counters), asked by device name."""
    from ccmsec_proto import phone_sim_pb2

    async def display(device: str):
        return await phones.GetPhoneCalls(phone_sim_pb2.PhoneName(name=device), timeout=10)
    return display


async def _until(check, what: str, *, step: str, timeout: float = 15.0):
    """Poll `check` until it gives something, or a RunnerError naming the demo step and what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise runner.RunnerError(f"demo {step}: no {what} within {timeout:g} s")
        await asyncio.sleep(0.2)


async def _ready(display, name: str) -> bool:
    reply = await display(name)
    return reply.ready and bool(reply.lines)


async def _in_state(display, name: str, state: str) -> bool:
    return any(c.state == state for c in (await display(name)).calls)


async def _received_since(display, name: str, before: int, count: int) -> bool:
    return (await display(name)).media.received - before >= count


async def _idle(display, name: str) -> bool:
    return not (await display(name)).calls


DEMO_CALLERS = (("SEP0DE7CA1100A1", "4001"), ("SEP0DE7CA1100B1", "4002"))


def local_runner(ctx: DemoContext) -> bool:
    """True when the data folder is the local runner's (its supervisor's state names the processes
    and the cluster's keys are here); False for a cluster reached from outside (--attach through a
    context or inside compose's `cli` container)."""
    return bool(_pids(ctx)) or not ctx.notes.get("attach")


def through_context(ctx: DemoContext) -> bool:
    """True when the data folder is the `cluster/` folder of the context in use (a compose cluster
    reached from the host through its published ports, `compose client-bundle`)."""
    from ccmsec import contexts

    try:
        active = contexts.active()
    except contexts.ContextError:
        return False
    return active is not None and active.cluster_dir.resolve() == Path(ctx.data).resolve()


async def tftp_endpoint(ctx: DemoContext) -> tuple[str, int]:
    """Where this command line downloads TFTP files from. Through a context: the tftp-signer
    container's own address on the cluster's network, asked of the Docker engine — a published UDP
    port cannot carry a transfer back (the server answers each transfer from a new port, RFC 1350,
    which the port's forwarding does not send back to the host)."""
    svc = ctx.endpoints["services"]["tftp-signer"]
    if not through_context(ctx):
        return svc["host"], svc["tftp_port"]
    from ccmsec.cluster.topology import spec

    port = next(p.number for p in spec("tftp-signer").ports if p.name == "tftp_port")
    if "tftp_address" not in ctx.notes:
        try:
            project = await asyncio.to_thread(compose_project, ctx)
            cid = await asyncio.to_thread(_compose_container, project, "tftp-signer")
            nets = (await asyncio.to_thread(_docker_json, "inspect", cid))[0]["NetworkSettings"]["Networks"] or {}
            address = next(n["IPAddress"] for n in nets.values() if n.get("IPAddress"))
        except (NotHere, StopIteration, KeyError, IndexError) as exc:
            raise NotHere(f"TFTP cannot be reached from here: the published UDP port {svc['host']}:"
                           f"{svc['tftp_port']} does not carry a transfer back (each transfer answers from a "
                           f"new port), and the container's address is unknown ({exc or 'no address'})") from None
        ctx.notes["tftp_address"] = address
        ctx.say(f"TFTP from the host: the tftp-signer container's address on the cluster's network "
                f"({address}:{port}, from the Docker engine) — a published UDP port does not carry a "
                "TFTP transfer back (each transfer answers from a new port, RFC 1350)")
    return ctx.notes["tftp_address"], port


async def _gateway_relay_path(ctx: DemoContext) -> str:
    """Which packet path relayed the gateway call (the srtp-gateway's `Status`)."""
    import grpc

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import common_pb2, srtp_gateway_pb2_grpc

    gw = ctx.endpoints["services"]["srtp-gateway"]
    try:
        async with secure_channel(client_identity(ctx.data), gw["host"], gw["grpc_port"], "srtp-gateway") as ch:
            status = await srtp_gateway_pb2_grpc.SrtpGatewayStub(ch).Status(common_pb2.Empty(), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return f"  (the gateway's relay path is unknown: Status said {exc.code().name})"
    path = status.details.get("relay_path", "")
    if path == "c":
        return ("  the gateway relayed it on its C packet path (libsrtp called from C, no interpreter per "
                "packet; CCMSEC_RELAY_CORE)")
    return ("  the gateway relayed it on its Python packet path (no C compiler where it runs, or "
            "CCMSEC_RELAY_CORE=python)")


async def _gateway_call_in_phone_sim(ctx: DemoContext, number: str = "5550102") -> None:
    """The call through the SRTP gateway from outside the cluster: the fleet's encrypted 7970 in
    phone-sim (inside the cluster's network) calls the gateway's echo; what it shows and the audio
    it got back (its counters: SRTP both ways, packets received and refused). Not on this capture:
    that phone's keys stay in phone-sim."""
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import phone_sim_pb2, phone_sim_pb2_grpc

    sim = ctx.endpoints["services"]["phone-sim"]
    async with secure_channel(client_identity(ctx.data), sim["host"], sim["grpc_port"], "phone-sim") as ch:
        phones = phone_sim_pb2_grpc.PhoneSimStub(ch)
        fleet = sorted((p for p in (await phones.ListPhones(phone_sim_pb2.PhoneSelector(), timeout=10)).phones
                        if p.name.startswith("SEP0DE7") and p.model == "7970" and p.state == "registered"),
                       key=lambda p: p.name)
        if not fleet:
            raise runner.RunnerError("no registered 7970 of the fleet in phone-sim for the gateway call")
        name = fleet[0].name

        async def display(n: str):
            return await phones.GetPhoneCalls(phone_sim_pb2.PhoneName(name=n), timeout=10)

        async def until(check, what: str, timeout: float = 30.0):
            deadline = time.monotonic() + timeout
            while not await check():
                if time.monotonic() > deadline:
                    raise runner.RunnerError(f"gateway call from phone-sim: no {what} within {timeout:g} s")
                await asyncio.sleep(0.2)

        before = (await display(name)).media.received
        await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=name, action="dial", number=number), timeout=20)
        try:
            await until(lambda: _in_state(display, name, "connected"), "connected call")
            await until(lambda: _received_since(display, name, before, 50), "echoed audio")
            shown = await display(name)
            m = shown.media
            ctx.say(f"call through the SRTP gateway to the echo {number} from phone-sim's {name} (7970, "
                    f"encrypted, inside the cluster's network): shows '{shown.calls[0].icon}'; SRTP both ways "
                    f"{'yes' if m.srtp_both_ways else 'no'}; received {m.received - before} echoed, refused "
                    f"{m.refused_authentication + m.refused_replay} (its keys stay in phone-sim: not on this capture)")
        finally:
            await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=name, action="hangup"), timeout=20)
            await until(lambda: _idle(display, name), "cleared call")


async def _host_media_on_bridge(ctx: DemoContext) -> tuple[str, str]:
    """(address, interface): this host's own address on the compose project's bridge network (the
    network's gateway, asked of the Docker engine), where the SRTP gateway's container can send
    media to the phones here, and the bridge's interface, where dumpcap sees that media. The
    traffic stays on the project's own network."""
    import socket

    project = await asyncio.to_thread(compose_project, ctx)
    cid = await asyncio.to_thread(_compose_container, project, "srtp-gateway")
    if not cid:
        raise NotHere(f"compose project {project} has no srtp-gateway container")
    nets = (await asyncio.to_thread(_docker_json, "inspect", cid))[0]["NetworkSettings"]["Networks"] or {}
    name, info = next(((n, i) for n, i in nets.items() if i.get("Gateway")), (None, None))
    if name is None:
        raise NotHere("the srtp-gateway container is on no network with a gateway address")
    net = (await asyncio.to_thread(_docker_json, "network", "inspect", name))[0]
    if net.get("Driver") != "bridge":
        raise NotHere(f"network {name} is a {net.get('Driver')} network, not a bridge of this machine")
    iface = (net.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{net['Id'][:12]}"
    address = info["Gateway"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:  # a remote engine's (or a VM's) bridge is no address of this machine
            probe.bind((address, 0))
        except OSError:
            raise NotHere(f"{address} (the bridge of {name}) is not an address of this machine: "
                          "the Docker engine runs elsewhere") from None
    return address, iface


async def _callmanager_certificates(ctx: DemoContext) -> list:
    """Call control's certificates (publisher and subscribers) as the CTL Provider lists them over
    TLS: what a phone finds in its CTL and pins (AUTH-6)."""
    from ccmsec.ctlclient import fetch_server_certificates, provider_port, provider_ssl_context
    from ccmsec.formats.ctl import Role
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import common_pb2, ctl_provider_pb2_grpc

    ident = client_identity(ctx.data)
    svc = ctx.endpoints["services"]["ctl-provider"]
    async with secure_channel(ident, svc["host"], svc["grpc_port"], "ctl-provider") as ch:
        settings = await ctl_provider_pb2_grpc.CtlProviderStub(ch).GetProviderSettings(common_pb2.Empty(), timeout=10)
    host = svc["host"] if settings.host in ("0.0.0.0", "::", "") else settings.host
    servers = await fetch_server_certificates(host, provider_port(settings, svc),
                                              provider_ssl_context(ident.ca_path, ident.cert_path, ident.key_path))
    certs = [srv.certificate for srv in servers if srv.role in (Role.CCM, Role.CCM_TFTP)]
    if not certs:
        raise runner.RunnerError("the CTL Provider lists no call-control certificate (AUTH-6)")
    ctx.say("call control's certificates from the CTL Provider: "
            + ", ".join(srv.dns_name for srv in servers if srv.role in (Role.CCM, Role.CCM_TFTP)))
    return certs


async def _enrol_through_capf(ctx: DemoContext, names: list[str]) -> list:
    """An LSC for each phone of this process through the CAPF protocol (TLS to CAPF's port, the
    administrator's authentication string), as a phone gets one: CAPF's CA key stays in CAPF."""
    from ccmsec.aio.capf import capf_client_enroll, capf_phone_ssl_context
    from ccmsec.pki.ca import Issued
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec.wire.capf import PhoneCredentials
    from ccmsec_proto import capf_pb2, capf_pb2_grpc, common_pb2
    from cryptography import x509

    svc = ctx.endpoints["services"]["capf"]
    async with secure_channel(client_identity(ctx.data), svc["host"], svc["grpc_port"], "capf") as ch:
        stub = capf_pb2_grpc.CapfStub(ch)
        capf_cert = x509.load_der_x509_certificate((await stub.GetCapfCertificate(common_pb2.Empty(), timeout=10)).der)
        for name in names:
            await stub.ScheduleOperation(capf_pb2.CapfSchedule(
                device=name, operation=CapfOperation.INSTALL.to_proto(), auth_mode=CapfAuthMode.STRING.to_proto(),
                auth_string=DEMO_AUTH_STRING, key_type="ec256"), timeout=10)
    issued = []
    for name in names:
        creds = PhoneCredentials(device_name=name, auth_string=DEMO_AUTH_STRING, auth_mode=CapfAuthMode.STRING,
                                 capf_certificate=capf_cert)
        sessions = await capf_client_enroll(svc["host"], svc["capf_port"], capf_phone_ssl_context(capf_cert), creds,
                                            timeout=60, max_sessions=1)
        if creds.lsc_cert is None:
            last = sessions[-1]
            raise runner.RunnerError(f"CAPF at {svc['host']}:{svc['capf_port']} installed no LSC for {name} "
                                     f"(end reason {last.end_reason}; {', '.join(last.history)})")
        ctx.say(f"{name}: LSC installed through CAPF at {svc['host']}:{svc['capf_port']} "
                f"(authentication string), issued by {creds.lsc_cert.issuer.rfc4514_string()}")
        issued.append(Issued(creds.lsc_cert, creds.lsc_key))
    return issued


async def step_encrypted_calls(ctx: DemoContext) -> None:
    """Two encrypted desk phones call each other and the SRTP gateway's echo; the capture shows
    SRTP that decrypts only with the keys read from the TLS-decrypted signalling."""
    from ccmsec.adminclient import AdminClient, discover
    from ccmsec.aio.media import PhoneAudio
    from ccmsec.aio.sccp import connect_phone
    from ccmsec.aio.sccp_calling import CallingPhone
    from ccmsec.media.capture import (CaptureError, LoopbackCapture, audio_proof, capture_available,
                                      verify_capture)
    from ccmsec.pki import tls
    from ccmsec.pki.ca import Issued, load_pair, new_key
    from ccmsec.pki.lsc import issue_lsc
    from ccmsec.pki.servercert import CERT_FILE
    from ccmsec.wire import sccp as s
    from cryptography import x509

    await wait_all_serving(ctx)
    cm = ctx.endpoints["services"]["callmanager"]
    with AdminClient(discover(ctx.data)) as admin:
        for name, dn in DEMO_CALLERS:
            admin.add_device(name, "7970", "encrypted")
            admin.add_line(dn, name)
    ctx.say("desk phones " + ", ".join(f"{n} ({dn})" for n, dn in DEMO_CALLERS) + " configured encrypted")
    if local_runner(ctx):
        # Their LSCs come from the cluster's CAPF CA (the fleet above got theirs through the CAPF protocol).
        capf = load_pair(ctx.data / "pki" / "capf.crt", ctx.data / "pki" / "capf.key")
        ccm_certs = [x509.load_der_x509_certificate(
            (ctx.data / "servers" / "callmanager" / CERT_FILE).read_bytes())]
        key = new_key("ec256")
        lscs = [Issued(issue_lsc(capf, name, key.public_key()), key) for name, _ in DEMO_CALLERS]
    else:
        # From outside the cluster (--attach, no CA key here): each phone enrols through the CAPF
        # protocol like the fleet, and trusts call control's certificates the CTL Provider lists.
        ccm_certs = await _callmanager_certificates(ctx)
        lscs = await _enrol_through_capf(ctx, [name for name, _ in DEMO_CALLERS])
    keylog = ctx.data / "demo-sccp-keys.log"
    media_host, interfaces, bpf = None, ("lo",), f"(host {cm['host']} and tcp port {cm['sccp_tls_port']}) or udp"
    gateway_here, no_bridge = local_runner(ctx), None
    if not gateway_here and through_context(ctx):
        # From the host: the gateway call's media on this host's address on the compose project's
        # bridge, which the SRTP gateway's container reaches (127.0.0.1 is its own). Phone to phone
        # stays on 127.0.0.1: Docker masquerades the bridge address's packets that leave by
        # another interface (lo), so the capture would show another source.
        try:
            media_host, bridge = await _host_media_on_bridge(ctx)
        except (NotHere, runner.RunnerError, KeyError, IndexError, ValueError) as exc:
            no_bridge = str(exc) or type(exc).__name__
        else:
            gateway_here, interfaces = True, ("lo", bridge)
            bpf = (f"(host {cm['host']} and tcp port {cm['sccp_tls_port']}) or "
                   f"(udp and (host 127.0.0.1 or host {media_host}))")
            ctx.say(f"the gateway call's media is on {media_host}: this host's address on the cluster's "
                    f"bridge network ({bridge}, asked of the Docker engine), which the SRTP gateway's container "
                    "reaches; phone to phone on 127.0.0.1; signalling to call control's published port")
    cap = None
    why = capture_available()
    if why is None:
        try:
            cap = LoopbackCapture(bpf=bpf, directory=ctx.data, interfaces=interfaces)
            await asyncio.to_thread(cap.start)
        except CaptureError as exc:
            cap, why = None, str(exc)
    phones, audio = [], []
    try:
        for index, (name, _) in enumerate(DEMO_CALLERS):
            ctxt = tls.enable_keylog(tls.sccp_phone_context("encrypted", ccm_certs, lsc=lscs[index]), keylog)
            conn = await connect_phone(cm["host"], cm["sccp_tls_port"], s.Register(name, "127.0.0.1", device_type=30006),
                                       ssl_context=ctxt, pinned_ccm_certificates=ccm_certs)
            conn.session.capabilities = s.CapabilitiesRes((s.MediaCapability(4),), encryption_capable=True)
            sound = PhoneAudio(440.0 + 220 * index, keep_sent=True)
            phone = CallingPhone(conn, bind_host="127.0.0.1", on_media=sound.hook)
            await phone.wait_ready()
            phones.append(phone)
            audio.append(sound)
        a, b = phones

        async def talk(callee, number: str, label: str) -> None:
            before = [x.totals()["received"] for x in audio]
            a.act(a.display.dial, number)
            if callee is not None:
                await callee.wait_for(lambda d: any(c.ringing for c in d.calls.values()), what="ringing")
                callee.act(callee.display.answer)
            await a.wait_for(lambda d: any(c.icon in ("lock", "shield", "none") and c.state_name == "connected"
                                           for c in d.calls.values()), what="the connected call")
            deadline = time.monotonic() + 10
            while audio[0].totals()["received"] - before[0] < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            icon = next(c.icon for c in a.display.calls.values())
            t = audio[0].totals()
            ctx.say(f"{label}: {a.name} shows '{icon}'; media SRTP both ways: {audio[0].srtp_both_ways}; "
                    f"sent {t['sent']}, received {t['received']}, lost {t['lost']}, refused {t['refused']}")
            a.act(a.display.hang_up)
            await a.wait_for(lambda d: not d.calls, what="the call cleared")
        await talk(b, DEMO_CALLERS[1][1], f"call {DEMO_CALLERS[0][1]} -> {DEMO_CALLERS[1][1]}")
        if gateway_here:
            if media_host:
                a.media_on(media_host)
            await talk(None, "5550102", "call through the SRTP gateway to the echo 5550102")
            ctx.say(await _gateway_relay_path(ctx))
        else:
            ctx.say("no call through the SRTP gateway from these phones: they send and receive their "
                    "media on 127.0.0.1, which the gateway's container cannot reach"
                    + (f" (no address on the cluster's bridge network: {no_bridge})" if no_bridge else
                       " (inside the cluster's network, not a context's host)")
                    + "; phone to phone, the media goes between the two phones here while call control keys it")
            await _gateway_call_in_phone_sim(ctx)
    finally:
        if cap is not None:
            await asyncio.to_thread(cap.stop)
        for phone in phones:
            await phone.close()
    if cap is None:
        ctx.say(f"wire capture skipped: {why}")
        return
    datagrams = await asyncio.to_thread(cap.datagrams)
    reports = await asyncio.to_thread(verify_capture, cap.path, sccp_port=cm["sccp_tls_port"], keylog=keylog,
                                      media=datagrams)
    where = "" if local_runner(ctx) else f", call control reached at {cm['host']}:{cm['sccp_tls_port']}"
    on = "loopback" if interfaces == ("lo",) else " and ".join(interfaces)
    ctx.say(f"on the wire (dumpcap on {on}{where}; keys read from the SCCP decrypted with the TLS key log):")
    sent = {src: payloads for sound in audio for src, payloads in sound.sent_from.items()}
    # the streams of these phones' calls (to or from their media ports); other UDP on loopback
    # (another program's) is counted, not listed
    ours = [r for r in reports if r.src in sent or r.dst in sent]
    if len(ours) < len(reports):
        ctx.say(f"  ({len(reports) - len(ours)} other UDP stream(s) on {on}, not these phones' calls: not listed)")
    for r in sorted(ours, key=lambda r: (not r.srtp, r.src)):
        ctx.say("  " + r.line())
        if r.src in sent:  # a stream these phones sent: the audio itself is known
            captured = [d.payload for d in datagrams if (d.src, d.dst) == (r.src, r.dst)]
            ctx.say("    " + audio_proof(r, captured, sent[r.src]))
    raw = cap.path.read_bytes()
    ctx.say(f"capture {cap.path.name}: {len(raw)} bytes; `ccmsec media verify {cap.path} --keylog {keylog} "
            f"--sccp-port {cm['sccp_tls_port']}` repeats this check")


class _LocalNodes:
    """The local runner's call-control nodes: `kill -9` of the publisher's process; its supervisor
    starts it again."""

    def __init__(self, ctx: DemoContext):
        services = ctx.endpoints["services"]
        self.ctx = ctx
        self.labels = {services["callmanager"]["host"]: PUBLISHER, services["callmanager-sub1"]["host"]: SUBSCRIBER,
                       services["srst"]["host"]: "SRST"}
        self.stable = DEMO_PHONE_SETTINGS["CCMSEC_PHONE_FAILBACK_STABLE"]

    def label(self, host: str) -> str:
        return self.labels.get(host, host or "nowhere")

    def kill(self) -> str:
        from ccmsec.cluster.state import read_state

        pid = int(((read_state(self.ctx.data) or {}).get("children") or {}).get("callmanager", {}).get("pid") or 0)
        if not pid:
            raise runner.RunnerError("the publisher's process is not known")
        os.kill(pid, signal.SIGKILL)
        return f"kill -9 {pid} (the publisher callmanager, serving every phone)"

    async def start(self) -> str | None:
        return None  # the supervisor restarts it

    def back_timeout(self) -> float:
        return 120.0


class _ComposeNodes:
    """A compose cluster's call-control containers, through the Docker engine the user runs it
    with: `docker kill` of the publisher's container, then `docker start` (a killed container is
    not restarted by the restart policy: the operator starts it)."""

    def __init__(self, ctx: DemoContext, project: str):
        self.ctx, self.project = ctx, project
        self.containers = {svc: _compose_container(project, svc) for svc in ("callmanager", "callmanager-sub1",
                                                                              "srst", "phone-sim")}
        missing = [svc for svc in ("callmanager", "callmanager-sub1", "phone-sim") if not self.containers[svc]]
        if missing:
            raise NotHere(f"compose project {project} has no {' or '.join(missing)} container "
                           "(the failover needs the publisher and a subscriber, `compose render --subscribers 1`)")
        env = _docker_json("inspect", self.containers["phone-sim"])[0]["Config"].get("Env") or []
        self.stable = next((e.split("=", 1)[1] for e in env if e.startswith("CCMSEC_PHONE_FAILBACK_STABLE=")
                            and e.split("=", 1)[1]), "120")
        self.labels: dict[str, str] = {}
        self.refresh()

    def refresh(self) -> None:
        """Container addresses on the cluster's networks (a container started again may come back
        on another one)."""
        for svc, label in (("callmanager", PUBLISHER), ("callmanager-sub1", SUBSCRIBER), ("srst", "SRST")):
            if self.containers[svc]:
                nets = _docker_json("inspect", self.containers[svc])[0]["NetworkSettings"]["Networks"] or {}
                for net in nets.values():
                    if net.get("IPAddress"):
                        self.labels[net["IPAddress"]] = label
                self.labels[svc] = label  # phones that name the node instead of its address

    def label(self, host: str) -> str:
        if host and host not in self.labels:
            self.refresh()
        return self.labels.get(host, host or "nowhere")

    def kill(self) -> str:
        _docker("kill", self.containers["callmanager"])
        return f"docker kill {self.containers['callmanager'][:12]} (compose project {self.project}: the publisher " \
               "callmanager, serving every phone)"

    async def start(self) -> str | None:
        await asyncio.to_thread(_docker, "start", self.containers["callmanager"])
        self.refresh()
        return f"docker start {self.containers['callmanager'][:12]} (a killed container is not restarted by the policy)"

    def back_timeout(self) -> float:
        return float(self.stable) + ATTACH_RESTART_TIMEOUT  # the container's start, then the stable period


PUBLISHER, SUBSCRIBER = "publisher callmanager", "subscriber callmanager-sub1"


class NotHere(Exception):
    """A step that cannot be done from where this command runs; the message says why."""


def _docker(*args: str, timeout: float = 120) -> str:
    import subprocess

    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise NotHere("no `docker` command here") from None
    except subprocess.TimeoutExpired:
        raise runner.RunnerError(f"docker {args[0]} did not answer within {timeout:g} s") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        if "permission denied" in why.lower() or "cannot connect to the docker daemon" in why.lower():
            raise NotHere(f"no access to the Docker engine ({why})")
        raise runner.RunnerError(f"docker {' '.join(args[:2])} failed: {why}")
    return proc.stdout


def _docker_json(*args: str) -> list:
    import json

    return json.loads(_docker(*args))


def _compose_container(project: str, service: str) -> str:
    out = _docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}",
                  "--filter", f"label=com.docker.compose.service={service}").split()
    return out[0] if out else ""


def compose_project(ctx: DemoContext) -> str:
    """The compose project whose container publishes the administration API this command line
    uses (its endpoints; a context from `compose client-bundle`) — asked of the Docker engine."""
    svc = ctx.endpoints["services"]["callmanager"]
    port = svc.get("admin_port")
    if not port:
        raise NotHere("the endpoints name no administration API port")
    for cid in _docker("ps", "-q", "--filter", f"publish={port}/tcp").split():
        info = _docker_json("inspect", cid)[0]
        labels = info["Config"].get("Labels") or {}
        bindings = (info["HostConfig"].get("PortBindings") or {}).values()
        if labels.get("com.docker.compose.project") and any(
                str(b.get("HostPort")) == str(port) and b.get("HostIp", "") in ("", "0.0.0.0", svc["host"])
                for bound in bindings for b in (bound or [])):
            return labels["com.docker.compose.project"]
    raise NotHere(f"no compose container of this Docker engine publishes {svc['host']}:{port} "
                   "(the administration API of this context)")


async def step_failover(ctx: DemoContext) -> None:
    """LATER-7: kill the call-control node serving the phones; they move to the subscriber at once
    (their connections are reset; a standby connection is already open), the node is started again
    (by the local runner's supervisor; in compose, `docker start`), and the phones return once it
    has answered for the stable period."""
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import phone_sim_pb2, phone_sim_pb2_grpc

    await wait_all_serving(ctx)
    services = ctx.endpoints["services"]
    try:
        if local_runner(ctx):
            if "callmanager-sub1" not in services:
                raise NotHere("this cluster runs no call-control subscriber (`ccmsec up --subscribers 1`)")
            nodes = _LocalNodes(ctx)
        else:
            nodes = _ComposeNodes(ctx, await asyncio.to_thread(compose_project, ctx))
    except NotHere as exc:
        ctx.say(f"not run from here: {exc}. The failover needs to stop and start a call-control node: "
                "run `ccmsec demo --attach` on the machine whose Docker engine runs the cluster, with a "
                "context from `compose client-bundle` (docs/compose.md)")
        return
    sim = services["phone-sim"]
    async with secure_channel(client_identity(ctx.data), sim["host"], sim["grpc_port"], "phone-sim") as ch:
        stub = phone_sim_pb2_grpc.PhoneSimStub(ch)

        async def where() -> dict[str, tuple[str, str]]:
            phones = (await stub.ListPhones(phone_sim_pb2.PhoneSelector(all=True), timeout=10)).phones
            return {p.name: (nodes.label(p.registered_with.rsplit(":", 1)[0]) if p.state == "registered" else
                             "nowhere", p.transport) for p in phones}

        async def until_all_on(node: str, since: float, timeout: float) -> dict[str, float]:
            seen: dict[str, float] = {}
            deadline = time.monotonic() + timeout
            while True:
                for name, (at, _) in (await where()).items():
                    if at == node and name not in seen:
                        seen[name] = time.monotonic() - since
                if len(seen) == len(fleet):
                    return seen
                if time.monotonic() > deadline:
                    late = {n: at for n, (at, _) in (await where()).items() if n not in seen}
                    raise runner.RunnerError(f"phones not on the {node} after {timeout:.0f}s: {late}")
                await asyncio.sleep(0.2)

        fleet = list(await where())
        await until_all_on(PUBLISHER, time.monotonic(), 60)
        now = await where()
        for name in sorted(now):
            ctx.say(f"{name} registered {now[name][1]:13} with the {now[name][0]}")
        killed = time.monotonic()
        ctx.say(await asyncio.to_thread(nodes.kill))
        moved = await until_all_on(SUBSCRIBER, killed, 60)
        now = await where()
        for name in sorted(moved):
            ctx.say(f"{name} on the subscriber {now[name][1]:13} {moved[name]:5.2f} s after the kill")
        started = await nodes.start()
        if started:
            ctx.say(started)
        back = await until_all_on(PUBLISHER, killed, nodes.back_timeout())
        ctx.say(f"{'the publisher started again' if started else 'the supervisor restarted the publisher'}; "
                f"the phones came back after it had answered for {nodes.stable} s (the stable period; 120 s "
                "by default):")
        now = await where()
        for name in sorted(back):
            ctx.say(f"{name} back on the publisher {now[name][1]:13} {back[name]:5.2f} s after the kill")


async def _tftp_demo_step(ctx: DemoContext) -> None:
    from ccmsec.cli.tftp import demo_step

    await demo_step(ctx)


STEPS: list[tuple[str, Callable]] = [
    ("Start the cluster: NATS, eight services and a call-control subscriber, each on its own loopback address",
     step_up),
    ("Health of every service over mutual TLS", step_health),
    ("One durable event through NATS JetStream", step_event_round_trip),
    ("Activate the CTL Provider service (CHK-1)", step_ctl_provider_activate),
    ("Activate the CAPF service on the publisher (CHK-2)", step_capf_activate),
    ("Two security tokens (CHK-4)", step_tokens),
    ("CTL client: build, sign and publish CTLFile.tlv; switch to mixed mode (CHK-6)", step_ctl_client),
    ("TFTP server: signing certificate, signed firmware, .sgn in mixed mode (CERT-5, AUTH-1, AUTH-3)",
     _tftp_demo_step),
    ("Phones of each model boot the secure way: CTL, signed config, CAPF LSC, SCCP per mode (CHK-8, CHK-9)",
     step_secure_fleet),
    ("The registry as call control sees it", step_registry),
    ("Calls between the phones of each mode through phone-sim, each call's status as the phones show it "
     "(CALL-1, CALL-2)", step_fleet_calls),
    ("Hold with music on hold, consultative transfer and a conference with the fleet's phones: what they "
     "show and call control's view (CALL-2, CALL-3, CALL-9)", step_call_services),
    ("Encrypted calls phone to phone and through the SRTP gateway, proved on the wire (ENC-2…5, GW-1)",
     step_encrypted_calls),
    ("The node serving the phones is killed: they move to the subscriber and come back (LATER-7)",
     step_failover),
]

