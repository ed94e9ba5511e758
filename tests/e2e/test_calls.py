"""Issue 10/11 on the running cluster: phone-sim phones place and take calls through the PhoneSim
gRPC API and the CLI (`ccmsec phones dial|answer|hold|resume|hangup|calls`), with real G.711 audio
over UDP; call control lists and streams every call with its status (gRPC ListCalls/WatchCalls,
`ccmsec calls [watch]`, HTTPS `GET /api/v1/calls`); an application drives a CTI port
(`ccmsec calls cti`), which makes the call non-secure (CALL-3). Bad cases: unknown phone, unknown
action, a phone that is not registered, a softkey the display does not offer, an unknown CTI port.

The phones here are configured non-secure, so the test holds in whatever mode other tests left the
session's cluster; the encrypted and authenticated modes through phone-sim are in
tests/e2e/test_calls_security.py (and the demo), with the wire proof in
tests/integration/test_media_secure_calls.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
import pytest

from ccmsec.adminclient import AdminClient, discover
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec_proto import callmanager_pb2 as cm_pb
from ccmsec_proto import callmanager_pb2_grpc, common_pb2, phone_sim_pb2, phone_sim_pb2_grpc
from tests.waits import until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

A, B, OFF = "SEP00CA11E00001", "SEP00CA11E00002", "SEP00CA11E00003"
DN = {A: "5101", B: "5102", OFF: "5103"}


async def _cli(cluster, *args, timeout=60):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ccmsec.cli.main", *args, "--data", str(cluster["data"]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def test_phone_sim_phones_call_each_other_and_every_interface_shows_the_status(cluster):
    data, services = cluster["data"], cluster["endpoints"]["services"]
    sim, cm = services["phone-sim"], services["callmanager"]
    with AdminClient(discover(data)) as admin:
        known = {d["name"] for d in admin.list_devices()}
        for name, model in ((A, "7960"), (B, "7970"), (OFF, "7940")):
            if name not in known:
                admin.add_device(name, model, "non-secure")
                admin.add_line(DN[name], name)

    async def scenario():
        ident = client_identity(data)
        async with secure_channel(ident, sim["host"], sim["grpc_port"], "phone-sim") as sim_ch, \
                secure_channel(ident, cm["host"], cm["grpc_port"], "callmanager") as cm_ch:
            phones = phone_sim_pb2_grpc.PhoneSimStub(sim_ch)
            calls = callmanager_pb2_grpc.CallManagerStub(cm_ch)
            for name, model in ((A, "7960"), (B, "7970"), (OFF, "7940")):
                await phones.AddPhones(phone_sim_pb2.AddPhonesRequest(count=1, model=model, name_prefix=name),
                                       timeout=60)
            await phones.BootPhones(phone_sim_pb2.PhoneSelector(names=[A, B]), timeout=30)

            async def registered():
                got = (await phones.ListPhones(phone_sim_pb2.PhoneSelector(names=[A, B]), timeout=10)).phones
                return all(p.state == "registered" for p in got)
            await until(registered, "registration of both phones", 90)

            async def display(name):
                return await phones.GetPhoneCalls(phone_sim_pb2.PhoneName(name=name), timeout=10)

            await until(lambda: _ready_with_line(display, A), "A's lines", 20)
            await until(lambda: _ready_with_line(display, B), "B's lines", 20)

            # --- bad cases: clear refusals, nothing changes -------------------------------------
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name="SEP00CA11E0FFFF", action="dial",
                                                                          number="5102"), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=A, action="explode"), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown action" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:   # OFF was never booted
                await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=OFF, action="dial",
                                                                          number="5101"), timeout=10)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "not registered" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:   # nothing rings: no Answer softkey
                await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=B, action="answer"), timeout=10)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert not [c for c in (await calls.ListCalls(common_pb2.Empty(), timeout=10)).calls
                        if A in {lg.device for lg in c.legs}]

            # --- a watcher sees the whole call (CLI over WatchCalls) ---------------------------
            watch = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ccmsec.cli.main", "calls", "watch", "--timeout", "300",
                "--data", str(data), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

            async def watching():   # the watcher's stream is open before the call starts
                status = await calls.Status(common_pb2.Empty(), timeout=10)
                return int(status.details.get("call_watchers", "0")) >= 1
            await until(watching, "the CLI watcher attached", 60)

            # --- A dials B through the CLI, B answers through the CLI --------------------------
            code, out, err_text = await _cli(cluster, "phones", "dial", A, DN[B])
            assert code == 0, out + err_text
            await until(lambda: _has_call(display, B, "ring-in"), "B ringing")
            code, out, err_text = await _cli(cluster, "phones", "answer", B)
            assert code == 0, out + err_text
            await until(lambda: _has_call(display, A, "connected"), "A connected")
            await until(lambda: _has_call(display, B, "connected"), "B connected")

            # real audio both ways: RTP (non-secure phones get no keys), nothing refused
            async def talking():
                a, b = await display(A), await display(B)
                return a.media.received >= 25 and b.media.received >= 25 and (a, b)
            a, b = await until(talking, "audio both ways", 20)
            for reply in (a, b):
                assert reply.media.streams >= 1 and not reply.media.srtp_both_ways
                assert reply.media.refused_authentication == reply.media.refused_replay == 0
                (call,) = reply.calls
                assert call.state == "connected" and call.icon == "none"   # CALL-1 as displayed

            # --- call control's view: gRPC, CLI and HTTPS agree --------------------------------
            (view,) = [c for c in (await calls.ListCalls(common_pb2.Empty(), timeout=10)).calls
                       if {lg.device for lg in c.legs} == {A, B}]
            assert view.status == "non-secure" and view.rule.startswith("CALL-1") and view.phase == "connected"
            assert {lg.shown for lg in view.legs} == {"none"} and view.codec.startswith("g711")
            code, out, err_text = await _cli(cluster, "calls", "--json")
            assert code == 0, err_text
            (row,) = [c for c in json.loads(out) if {lg["device"] for lg in c["legs"]} == {A, B}]
            assert row["status"] == "non-secure" and str(row["id"]) == str(view.id)
            code, out, err_text = await _cli(cluster, "calls", "watch", "--table", "--timeout", "3")
            assert code == 0 and "call(s) in progress" in out and "non-secure" in out, out + err_text
            assert f"{A}({DN[A]} connected none)" in out
            # for scripts: one JSON object per event and line, the calls in progress first
            code, out, err_text = await _cli(cluster, "calls", "watch", "--json", "--timeout", "3")
            assert code == 0, out + err_text
            events = [json.loads(line) for line in out.splitlines()]
            (mine,) = [e for e in events if {lg["device"] for lg in e["call"]["legs"]} == {A, B}]
            assert mine["kind"] == "existing" and mine["call"]["status"] == "non-secure"
            with AdminClient(discover(data)) as admin:
                (api_row,) = admin.calls(device=A)
                spec = admin._call("GET", "/api/v1/openapi.json")
            # the OpenAPI document describes this real call (issue 16: typed answers)
            import jsonschema

            jsonschema.Draft202012Validator({"$ref": "#/components/schemas/Call",
                                             "components": spec["components"]}).validate(api_row)
            assert api_row["id"] == view.id and api_row["status"] == "non-secure"
            assert {lg["shown"] for lg in api_row["legs"]} == {"none"}

            # the HTTPS event stream (Server-Sent Events) starts with the calls in progress
            frame = await asyncio.to_thread(_first_sse_frame, data, A)
            assert frame["kind"] == "existing" and frame["call"]["status"] == "non-secure"
            assert {lg["shown"] for lg in frame["call"]["legs"]} == {"none"}

            # --- hold: B hears music on hold (CALL-3 resource), resume brings it back -----------
            code, out, err_text = await _cli(cluster, "phones", "hold", A)
            assert code == 0, out + err_text
            await until(lambda: _has_call(display, A, "hold"), "A holding")

            async def moh():
                got = [c for c in (await calls.ListCalls(common_pb2.Empty())).calls if c.id == view.id]
                return got and "music on hold" in got[0].resources
            await until(moh, "music on hold in the call")
            code, out, err_text = await _cli(cluster, "phones", "resume", A)
            assert code == 0, out + err_text
            await until(lambda: _has_call(display, A, "connected"), "A resumed")
            code, out, err_text = await _cli(cluster, "phones", "hangup", B)
            assert code == 0, out + err_text
            await until(lambda: _no_calls(display, A), "A cleared")

            # --- an application's CTI port calls A: never secure (CALL-3) ----------------------
            code, out, err_text = await _cli(cluster, "calls", "cti", "CTI7000", "dial", DN[A])
            assert code == 0, out + err_text
            await until(lambda: _has_call(display, A, "ring-in"), "A ringing from the CTI port")
            await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=A, action="answer"), timeout=10)
            await until(lambda: _has_call(display, A, "connected"), "A connected to the CTI port")

            async def cti_call():
                got = [c for c in (await calls.ListCalls(common_pb2.Empty())).calls
                       if "CTI7000" in {lg.device for lg in c.legs} and c.phase == "connected"]
                return got
            (cti_view,) = await until(cti_call, "the CTI call connected")
            assert cti_view.status == "non-secure" and cti_view.rule.startswith("CALL-3")
            code, out, err_text = await _cli(cluster, "calls", "cti", "CTI9999", "hangup")
            assert code != 0 and "no CTI port" in err_text
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await calls.DriveCtiPort(cm_pb.CtiRequest(port="CTI7000", action="explode"), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            code, out, err_text = await _cli(cluster, "calls", "cti", "CTI7000", "hangup")
            assert code == 0, out + err_text
            await until(lambda: _no_calls(display, A), "A cleared after the CTI hang-up")

            # the watcher saw every call, created to ended, with its status
            out, err_b = await asyncio.wait_for(_stop(watch), 30)
            text = out.decode()
            assert "created" in text and "updated" in text and "ended" in text, text + err_b.decode()
            assert f"{DN[A]} -> {DN[B]}" in text and "status non-secure" in text
            assert "CTI7000" in text

            # the phone's own display shows both calls ended; GetPhoneCalls on the phone answers
            code, out, err_text = await _cli(cluster, "phones", "calls", A)
            assert code == 0 and "no calls" in out and "audio:" in out, out + err_text

    asyncio.run(scenario())


def _first_sse_frame(data, device: str, timeout: float = 20.0) -> dict:
    """Read GET /api/v1/calls/events until a frame names `device`; the stream is then closed."""
    import httpx

    from ccmsec.adminclient import tls_context

    endpoint = discover(data)
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=endpoint.url, verify=tls_context(endpoint.cafile), timeout=timeout,
                      auth=(endpoint.username, endpoint.password)) as client:
        with client.stream("GET", "/api/v1/calls/events") as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    body = json.loads(line[len("data: "):])
                    if any(lg["device"] == device for lg in body.get("call", {}).get("legs", [])):
                        return body
                assert time.monotonic() < deadline, "no frame naming the device"
    raise AssertionError("the event stream ended without a frame naming the device")


async def _stop(proc):
    """End the watcher (its --timeout is a safety net) and collect what it printed."""
    await asyncio.sleep(1.0)
    if proc.returncode is None:
        try:
            proc.terminate()
        except ProcessLookupError:   # it ended by itself meanwhile
            pass
    return await proc.communicate()


async def _ready_with_line(display, name):
    reply = await display(name)
    return reply.ready and reply.lines


async def _has_call(display, name, state):
    reply = await display(name)
    return any(c.state == state for c in reply.calls)


async def _no_calls(display, name):
    return not (await display(name)).calls


def test_extension_mobility_login_at_the_phone_brings_the_users_line_and_keeps_the_devices_mode(cluster):
    """DEV-2 on the running cluster, as a user does it: `ccmsec mobility add` and `mobility pin`
    (administrator), then the user logs in AT THE PHONE — `ccmsec phones login NAME USER` drives
    the phone-sim phone, which sends user id and PIN to call control on its own SCCP connection;
    call control checks the PIN, stores the login and restarts the phone, which registers again
    with the user's line and keeps its own (non-secure) status; logout at the phone brings its
    lines back. Bad cases: wrong PIN and unknown user (same answer on the display), a second login
    on the same phone, logout with nobody logged in."""
    data, services = cluster["data"], cluster["endpoints"]["services"]
    sim = services["phone-sim"]
    em_phone, caller = "SEP00CA11E00004", "SEP00CA11E00005"
    with AdminClient(discover(data)) as admin:
        known = {d["name"] for d in admin.list_devices()}
        for name, dn in ((em_phone, "5104"), (caller, "5105")):
            if name not in known:
                admin.add_device(name, "7970", "non-secure")
                admin.add_line(dn, name)

    async def scenario():
        async with secure_channel(client_identity(data), sim["host"], sim["grpc_port"], "phone-sim") as ch:
            phones = phone_sim_pb2_grpc.PhoneSimStub(ch)
            have = {p.name for p in (await phones.ListPhones(phone_sim_pb2.PhoneSelector(), timeout=10)).phones}
            for name in (em_phone, caller):
                if name not in have:
                    await phones.AddPhones(phone_sim_pb2.AddPhonesRequest(count=1, model="7970", name_prefix=name),
                                           timeout=60)
            await phones.BootPhones(phone_sim_pb2.PhoneSelector(names=[em_phone, caller]), timeout=30)

            async def display(name):
                return await phones.GetPhoneCalls(phone_sim_pb2.PhoneName(name=name), timeout=10)

            async def lines_are(name, numbers):
                reply = await display(name)
                return reply.ready and [li.number for li in reply.lines] == numbers
            await until(lambda: lines_are(em_phone, ["5104"]), "the phone's own line", 90)
            await until(lambda: lines_are(caller, ["5105"]), "the caller's line", 90)

            code, out, err = await _cli(cluster, "mobility", "add", "alice-e2e", "5190", "--name", "Alice")
            assert code == 0 or "exists" in err, out + err
            pin, wrong = data / "alice-e2e.pin", data / "wrong-e2e.pin"
            pin.write_text("4711\n")
            wrong.write_text("0000\n")
            pin.chmod(0o600)
            code, out, err = await _cli(cluster, "mobility", "pin", "alice-e2e", "--pin-file", str(pin))
            assert code == 0 and "PIN set" in out, out + err
            for user, pin_file in (("nobody-e2e", pin), ("alice-e2e", wrong)):
                code, out, err = await _cli(cluster, "phones", "login", em_phone, user, "--pin-file", str(pin_file))
                assert code != 0 and "refused: wrong user id or PIN" in err, out + err
            assert [li.number for li in (await display(em_phone)).lines] == ["5104"]   # nothing changed
            code, out, err = await _cli(cluster, "phones", "login", em_phone, "alice-e2e", "--pin-file", str(pin))
            assert code == 0 and "logged in: line 5190" in out, out + err
            await until(lambda: lines_are(em_phone, ["5190"]), "the user's line after the restart", 60)
            code, out, err = await _cli(cluster, "phones", "login", em_phone, "alice-e2e", "--pin-file", str(pin))
            assert code != 0 and "log out first" in err, out + err
            code, out, err = await _cli(cluster, "mobility", "list", "--json")
            assert code == 0 and {"user_id": "alice-e2e", "logged_in_to": em_phone}.items() <= next(
                u for u in json.loads(out) if u["user_id"] == "alice-e2e").items()

            # the user's number rings on the device they logged in to, with that device's status
            await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=caller, action="dial", number="5190"),
                                     timeout=20)
            await until(lambda: _has_call(display, em_phone, "ring-in"), "the user's line ringing")
            await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=em_phone, action="answer"), timeout=20)
            await until(lambda: _has_call(display, caller, "connected"), "connected")
            assert [c.icon for c in (await display(em_phone)).calls] == ["none"]   # its own mode (DEV-2)
            await phones.PhoneAction(phone_sim_pb2.PhoneActionRequest(name=caller, action="hangup"), timeout=20)
            await until(lambda: _no_calls(display, em_phone), "cleared")

            code, out, err = await _cli(cluster, "phones", "logout", em_phone)
            assert code == 0, out + err
            await until(lambda: lines_are(em_phone, ["5104"]), "its own line back", 60)
            code, out, err = await _cli(cluster, "phones", "logout", em_phone)
            assert code != 0 and "refused: nobody is logged in" in err, out + err
            # routing configuration from the command line (speed dial, forward, CALL-9 region)
            for args, expect in ((("routing", "region", "e2e-wide", "--wideband"), "wideband codec allowed"),
                                 (("routing", "assign", caller, "e2e-wide"), "region e2e-wide"),
                                 (("routing", "speed-dial", caller, "1", "5104", "--label", "EM"), "= 5104 (EM)"),
                                 (("routing", "forward", "5104", "--no-answer", "5105"), "no answer 5105")):
                code, out, err = await _cli(cluster, *args)
                assert code == 0 and expect in out, out + err
            code, out, err = await _cli(cluster, "routing", "forward", "5999", "--busy", "5104")
            assert code != 0 and "no line has directory number 5999" in err
            # each change went through the one write path, audited with its actor (issue 9 §5)
            with AdminClient(discover(data)) as admin:
                audited = {(e["action"], e["target"]) for e in admin.audit(limit=200)
                           if e["outcome"] == "ok" and "via grpc" in (e.get("detail") or "")}
            assert {("speed_dial.set", caller), ("line_forward.set", "5104")} <= audited
            with AdminClient(discover(data)) as admin:
                at_phone = {(e["actor"], e["action"], e["target"]) for e in admin.audit(limit=200)
                            if e["outcome"] == "ok" and "via sccp" in (e.get("detail") or "")}
            assert {(f"phone/{em_phone}", "mobility.login", em_phone),
                    (f"phone/{em_phone}", "mobility.logout", em_phone)} <= at_phone

    asyncio.run(scenario())
