"""The steps of `ccmsec demo`, in the order of the source document's checklist.

Each step is a function of a DemoContext; later features add their steps to STEPS.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ccmsec.cluster import runner
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


def step_up(ctx: DemoContext) -> None:
    rows = runner.up(ctx.data, quiet=True)
    for line in runner.format_rows(rows).splitlines():
        ctx.say(line)


async def step_health(ctx: DemoContext) -> None:
    from ccmsec.runtime.grpcio import check_health
    from ccmsec.runtime.identity import client_identity

    ident = client_identity(ctx.data)
    for role, svc in ctx.endpoints["services"].items():
        t0 = time.perf_counter()
        state = await check_health(ident, svc["host"], svc["grpc_port"], role)
        ctx.say(f"{role:13} {state} over mutual TLS ({(time.perf_counter() - t0) * 1000:.1f} ms)")
        if state != "SERVING":
            raise runner.RunnerError(f"{role} is {state}")


async def step_event_round_trip(ctx: DemoContext) -> None:
    from ccmsec.runtime.bus import EventBus, make_event
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec_proto import common_pb2, events_pb2

    bus = EventBus(ctx.endpoints["nats_url"], "ccmsec-demo")
    await bus.connect()
    event = make_event("device.reset", "ccmsec-demo",
                       device_reset=events_pb2.DeviceReset(devices=["SEPDEMO00000001"], kind=events_pb2.RESET,
                                                           reason="demo round trip"))
    seq = await bus.publish(event)
    await bus.close()
    ctx.say(f"published durable event {event.kind} id={event.id[:12]}… (stream sequence {seq})")
    ident = client_identity(ctx.data)
    svc = ctx.endpoints["services"]["callmanager"]
    deadline = time.monotonic() + 20
    async with secure_channel(ident, svc["host"], svc["grpc_port"], "callmanager") as ch:
        status = ch.unary_unary("/ccmsec.v1.CallManager/Status",
                                request_serializer=common_pb2.Empty.SerializeToString,
                                response_deserializer=common_pb2.ServiceStatus.FromString)
        while time.monotonic() < deadline:
            st = await status(common_pb2.Empty(), timeout=3)
            if st.details.get("last_event_id") == event.id:
                ctx.say(f"callmanager handled it (events handled: {st.details.get('events_handled')})")
                return
            await asyncio.sleep(0.2)
    raise runner.RunnerError("callmanager did not handle the demo event within 20 s")


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


STEPS: list[tuple[str, Callable]] = [
    ("Start the cluster: NATS and eight services, each on its own loopback address", step_up),
    ("Health of every service over mutual TLS", step_health),
    ("One durable event through NATS JetStream", step_event_round_trip),
    ("Activate the CAPF service on the publisher (CHK-2)", step_capf_activate),
]
