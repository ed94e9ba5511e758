"""CALL-1 and CALL-2 on the running cluster with phone-sim phones booted the whole secure way.

The cluster goes to mixed mode as an administrator would take it there (CAPF and the CTL Provider
activated, two tokens, the CTL client: CHK-1…CHK-6), then the demo's fleet boots through TFTP and
CAPF and registers in the mode configured for each phone (`ccmsec.demo.step_secure_fleet`): a 7970
and a 7940 encrypted (TLS with AES, LSCs), a 7960 authenticated (TLS with NULL cipher) and a 7912
non-secure (2000). The phones call each other through the PhoneSim gRPC API as users would, and
what each phone DISPLAYS for each call is checked, with call control's own view:

* CALL-1: encrypted ↔ encrypted shows the lock on both phones; encrypted ↔ authenticated the
  shield; encrypted ↔ non-secure nothing — the lowest of the participants.
* CALL-2: the status is re-computed on every change and the phones follow it: on hold the call
  plays music on hold, a never-secure source (CALL-3), and resume brings the lock back; a transfer
  of an encrypted call to the non-secure phone leaves both remaining phones with no icon; an ad hoc
  conference that adds the non-secure phone goes through the conference bridge and nobody shows the
  lock, and once the non-secure member hangs up the two encrypted phones are a direct call again and
  show the lock again.

Mixed mode leaves a CTL behind (phones that hold it then ask for signed files only), so the test
runs on a cluster of its own rather than the shared session cluster.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from ccmsec import demo
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec_proto import callmanager_pb2_grpc, common_pb2
from ccmsec_proto import phone_sim_pb2, phone_sim_pb2_grpc
from ccmsec.cluster.runner import cluster_pids
from tests.conftest import run_cli
from tests.waits import until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ENC_A, AUTH, ENC_C, PLAIN = 0, 1, 2, 3           # DEMO_FLEET order: 7970, 7960, 7940, 7912
NUMBER = {i: demo.fleet_number(i) for i in range(4)}


@pytest.fixture(scope="module")
def own_cluster():
    data = Path(tempfile.mkdtemp(prefix="ccmsec-e2e-callsec-"))
    result = run_cli("up", "-d", "--data", str(data), timeout=240)
    if result.returncode != 0:
        run_cli("down", "--data", str(data))
        pytest.fail(f"ccmsec up failed: {result.stderr}")
    yield {"data": data}
    res = run_cli("down", "--data", str(data))
    left = cluster_pids(data)
    shutil.rmtree(data, ignore_errors=True)
    assert res.returncode == 0, res.stderr
    assert left == [], f"processes left after ccmsec down: {left}"


def test_call_security_status_shown_by_phone_sim_phones_of_each_mode_follows_every_change(own_cluster):
    data = own_cluster["data"]
    said: list[str] = []
    ctx = demo.DemoContext(data, out=said.append)

    async def scenario():
        # --- mixed mode the administrator's way, then the fleet boots securely -------------------
        await demo.step_capf_activate(ctx)
        await demo.step_ctl_provider_activate(ctx)
        demo.step_tokens(ctx)
        await demo.step_ctl_client(ctx)
        await demo.step_secure_fleet(ctx)
        services = ctx.endpoints["services"]
        sim, cm = services["phone-sim"], services["callmanager"]
        ident = client_identity(data)
        async with secure_channel(ident, sim["host"], sim["grpc_port"], "phone-sim") as sim_ch, \
                secure_channel(ident, cm["host"], cm["grpc_port"], "callmanager") as cm_ch:
            phones = phone_sim_pb2_grpc.PhoneSimStub(sim_ch)
            calls = callmanager_pb2_grpc.CallManagerStub(cm_ch)
            fleet = sorted((p for p in (await phones.ListPhones(phone_sim_pb2.PhoneSelector(), timeout=10)).phones
                            if p.name.startswith("SEP0DE7")), key=lambda p: p.name)
            assert [(p.model, p.transport) for p in fleet] == [
                ("7970", "encrypted"), ("7960", "authenticated"), ("7940", "encrypted"), ("7912", "non-secure")]
            name = {i: p.name for i, p in enumerate(fleet)}

            async def display(i):
                return await phones.GetPhoneCalls(phone_sim_pb2.PhoneName(name=name[i]), timeout=10)

            async def act(i, action, number=""):
                return await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(
                    name=name[i], action=action, number=number, wait_seconds=5), timeout=30)

            async def icons(i, state="connected"):
                return [c.icon for c in (await display(i)).calls if c.state == state]

            async def shows(i, icon, state="connected", what=""):
                async def check():
                    return await icons(i, state) == [icon]
                try:
                    await until(check, f"{name[i]} showing {icon!r} on its {state} call {what}", 30)
                except AssertionError:
                    raise AssertionError(f"{name[i]} shows {(await display(i)).calls}") from None

            async def state(i, wanted):
                return any(c.state == wanted for c in (await display(i)).calls)

            async def idle(i):
                return not (await display(i)).calls

            async def view_of(*indexes):
                devices = {name[i] for i in indexes}
                for c in (await calls.ListCalls(common_pb2.Empty(), timeout=10)).calls:
                    if devices <= {lg.device for lg in c.legs if lg.state in ("connected", "hold")}:
                        return c
                return None

            async def connect(a, b):
                await until(lambda: _ready(display, a), f"lines on {name[a]}", 60)
                await act(a, "dial", NUMBER[b])
                await until(lambda: state(b, "ring-in"), f"{name[b]} ringing")
                await act(b, "answer")
                await until(lambda: state(a, "connected"), f"{name[a]} connected")

            async def clear(*indexes):
                for i in indexes:
                    while (await display(i)).calls:
                        await act(i, "hangup")
                        await asyncio.sleep(0.5)
                for i in indexes:
                    await until(lambda i=i: idle(i), f"{name[i]} idle")

            # --- CALL-1: the lowest participant decides what both phones show -----------------
            for other, icon, status in ((ENC_C, "lock", "encrypted"), (AUTH, "shield", "authenticated"),
                                        (PLAIN, "none", "non-secure")):
                await connect(ENC_A, other)
                await shows(ENC_A, icon, what=f"(CALL-1, with the {status} phone)")
                await shows(other, icon, what="(CALL-1)")
                view = await until(lambda other=other: view_of(ENC_A, other), "call control's view")
                assert view.status == status and view.rule.startswith("CALL-"), view
                await clear(ENC_A, other)

            # --- CALL-2 on hold: music on hold (CALL-3) while held, the lock back on resume -----
            await connect(ENC_A, ENC_C)
            await shows(ENC_A, "lock")
            await shows(ENC_C, "lock")
            await act(ENC_A, "hold")
            await until(lambda: state(ENC_A, "hold"), "the call held")
            await shows(ENC_C, "none", what="(CALL-2: music on hold is never secure, CALL-3)")
            held = await until(lambda: view_of(ENC_A, ENC_C), "the held call")
            assert "music on hold" in held.resources and held.status == "non-secure", held
            await act(ENC_A, "resume")
            await shows(ENC_A, "lock", what="(CALL-2: resumed)")
            await shows(ENC_C, "lock", what="(CALL-2: resumed)")

            # --- CALL-2 on transfer: the encrypted call handed to the non-secure phone ----------
            await act(ENC_A, "transfer")                       # consultation: C is held
            await until(lambda: state(ENC_A, "hold"), "C held for the consultation")
            await act(ENC_A, "dial", NUMBER[PLAIN])
            await until(lambda: state(PLAIN, "ring-in"), "the non-secure phone ringing")
            await act(PLAIN, "answer")
            await until(lambda: state(ENC_A, "connected"), "the consultation connected")
            await act(ENC_A, "transfer")                       # complete: C ↔ the non-secure phone
            await until(lambda: idle(ENC_A), "the transferring phone out of both calls")
            await shows(ENC_C, "none", what="(CALL-2: transferred to a non-secure phone)")
            await shows(PLAIN, "none")
            moved = await until(lambda: view_of(ENC_C, PLAIN), "the transferred call")
            assert moved.status == "non-secure" and name[ENC_A] not in {lg.device for lg in moved.legs}
            await clear(ENC_C, PLAIN)

            # --- CALL-2 on conference: a non-secure member, then back to the lock ---------------
            await connect(ENC_A, ENC_C)
            await shows(ENC_A, "lock")
            await shows(ENC_C, "lock")
            await act(ENC_A, "conference")
            await until(lambda: state(ENC_A, "hold"), "C held while the member is called")
            await act(ENC_A, "dial", NUMBER[PLAIN])
            await until(lambda: state(PLAIN, "ring-in"), "the non-secure member ringing")
            await act(PLAIN, "answer")
            await until(lambda: state(ENC_A, "connected"), "the member answered")
            await act(ENC_A, "conference")                     # join: through the bridge
            for i in (ENC_A, ENC_C, PLAIN):
                await shows(i, "none", what="(CALL-2/CALL-3: conference bridge, a non-secure member)")
            bridged = await until(lambda: view_of(ENC_A, ENC_C, PLAIN), "the conference")
            assert bridged.status == "non-secure" and "conference bridge" in bridged.resources, bridged
            await act(PLAIN, "hangup")                         # two encrypted phones remain
            await until(lambda: idle(PLAIN), "the member gone")
            await shows(ENC_A, "lock", what="(CALL-2: the bridge and the non-secure member left)")
            await shows(ENC_C, "lock")
            back = await until(lambda: view_of(ENC_A, ENC_C), "the direct call again")
            assert back.status == "encrypted" and "conference bridge" not in back.resources, back
            await clear(ENC_A, ENC_C)

    asyncio.run(scenario())


async def _ready(display, i) -> bool:
    reply = await display(i)
    return reply.ready and bool(reply.lines)
