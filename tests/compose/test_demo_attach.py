"""`ccmsec demo --attach` from the host against the compose cluster, through a named context made
from `compose client-bundle` (the administration API, the published authenticated ports, the
command line's own `cli` identity) and the Docker engine the cluster runs on — the way a user
outside the cluster runs it (issue 13). Every step runs from the host: the bus round trip through
NATS's published port with the context's `cli` nkey; the encrypted calls — phone to phone and to
the SRTP gateway's echo, that call's media on the host's address on the project's bridge —
proved from the wire (dumpcap on loopback and that bridge, keys from the
TLS-decrypted SCCP, libsrtp); the serving call-control node is `docker kill`ed and started again.
The published NATS port refuses whoever has no known nkey.

A cluster of its own (this module's compose project): the demo changes the cluster's mode and
kills its publisher, which the other modules' tests must not see."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from ccmsec.cluster import compose
from tests.compose.conftest import FAILOVER_SETTINGS
from tests.conftest import run_cli

pytestmark = pytest.mark.timeout(1500)


def test_demo_attach_from_the_host_through_a_context_runs_every_step(cluster, tmp_path, capsys):
    bundle = cluster.cli("compose", "client-bundle").stdout
    env = {"CCMSEC_CONFIG_DIR": str(tmp_path / "config"), "CCMSEC_CONTEXT": "compose-demo",
           "CCMSEC_DATA_DIR": "", "CCMSEC_ADMIN_TIMEOUT": "120"}
    added = run_cli("context", "add", "compose-demo", "--client-bundle", "-", env=env, input=bundle)
    assert added.returncode == 0, added.stderr
    res = run_cli("demo", "--attach", env=env, timeout=1200)
    out = res.stdout
    assert res.returncode == 0, out[-5000:] + res.stderr[-3000:]
    assert "Traceback" not in out + res.stderr
    with capsys.disabled():  # the proof and the failover figures belong in the suite's output
        keep = [ln for ln in out.splitlines() if re.search(r"^\[\d+/|not run from here|LSC installed|shows 'lock'|"
                                                           r"SRTP packets|plaintext audio|docker (kill|start)|"
                                                           r"(on the subscriber|back on the publisher) .* after|"
                                                           r"SRTP gateway|TFTP from the host|finished in", ln)]
        print("\ncompose demo --attach from the host:\n" + "\n".join(keep))
    data = tmp_path / "config" / "contexts" / "compose-demo" / "cluster"
    assert f"cluster data in {data}" in out and "nothing is started or stopped" in out

    # every step ran from the host, the bus round trip too: NATS's published port, the cli nkey
    skipped = re.findall(r"not run from here: (.*)", out)
    assert not skipped, skipped
    nats_port = cluster.ports[compose.NATS_PUBLISH_VARIABLE]
    assert (f"connected to NATS at nats://127.0.0.1:{nats_port} (published port) with the cli identity's nkey"
            in out), out[-5000:]
    assert re.search(r"published durable event device\.reset id=\S+ \(stream sequence \d+\)", out)
    assert re.search(r"callmanager handled it \(events handled: \d+\)", out)
    assert re.search(r"outboxes of all \d+ services: every event published, none set aside", out)
    for role in ("ctl-provider", "capf", "tftp-signer", "callmanager", "keymanager", "srtp-gateway",
                 "srst", "phone-sim"):
        assert re.search(rf"{role}\s+SERVING over mutual TLS", out), role
    assert "cluster security mode: non-secure -> mixed" in out                       # CHK-6
    assert "signature valid (AUTH-1)" in out                                          # TFTP step
    assert "RingList.xml.sgn: signed by the TFTP certificate" in out
    assert re.search(r"fetched CTLFile.tlv back over TFTP \(\d+ bytes, same file\)", out)
    assert "TFTP from the host: the tftp-signer container's address" in out
    assert re.search(r"7970\s+registered encrypted\s+via \S+:2443 presenting LSC", out)  # CHK-8/9
    assert re.search(r"7912\s+registered non-secure\s+via \S+:2000 presenting no certificate", out)
    assert re.search(r"7970 \(encrypted\) calls 7940 \(encrypted\): the phones show 'lock' / 'lock'", out)
    # hold / transfer / conference through phone-sim's and call control's published gRPC ports
    assert re.search(r"7970 presses Hold: 7940 shows 'none', .* call control: non-secure \(CALL-3\), "
                     r"resources music on hold", out)
    assert re.search(r"Transfer again: 7970 is idle; 7940 shows 4101->4102 'shield'", out)
    assert re.search(r"Conference again: .*call control: non-secure \(CALL-3\), resources conference bridge", out)

    # encrypted calls of phones in this process: LSCs through CAPF's published port, call control
    # through its published SCCP/TLS port, media between the two phones proved from the wire
    assert len(re.findall(r"LSC installed through CAPF at 127\.0\.0\.1:\d+", out)) == 2, out[-5000:]
    assert re.search(r"call 4001 -> 4002: \S+ shows 'lock'; media SRTP both ways: True; .* refused 0", out)
    # the host's own phone calls the gateway's echo: its media on the host's address on the project's
    # bridge (the network's gateway, which the gateway's container reaches), not phone-sim's phone
    net = cluster.inspect("srtp-gateway")["NetworkSettings"]["Networks"][f"{cluster.project}_default"]
    bridge_ip, gateway_ip = net["Gateway"], net["IPAddress"]
    assert f"the gateway call's media is on {bridge_ip}: this host's address on the cluster's bridge" in out
    assert "no call through the SRTP gateway from these phones" not in out and "from phone-sim's" not in out
    gw = re.search(r"call through the SRTP gateway to the echo 5550102: \S+ shows '(\w+)'; media SRTP both ways: "
                   r"(\w+); sent \d+, received (\d+), lost \d+, refused (\d+)", out)
    assert gw and gw.group(1) == "lock" and gw.group(2) == "True" and int(gw.group(3)) >= 50 and gw.group(4) == "0", \
        out[-4000:]
    assert "wire capture skipped" not in out, "dumpcap and tshark are needed (scripts/compose-test installs them)"
    assert re.search(r"on the wire \(dumpcap on lo and br-\w+", out), out[-4000:]
    streams = re.findall(r"(\S+):\d+ -> (\S+):\d+: (\d+) SRTP packets; (\d+) authenticate and decrypt under the "
                         r"\S+ key signalled for this stream, (\d+) refused", out)
    assert len(streams) >= 4 and all(a == b != "0" and r == "0" for _s, _d, a, b, r in streams), streams
    # both directions of the gateway call are on the host's capture (the bridge) and authenticate
    assert {(s, d) for s, d, *_ in streams} >= {(bridge_ip, gateway_ip), (gateway_ip, bridge_ip)}, streams
    audio = re.findall(r"plaintext audio in (\d+) of (\d+) packets; decrypted back to the audio sent: (\w+)", out)
    assert len(audio) >= 3 and all(p == "0" and same == "yes" for p, _n, same in audio), out[-4000:]
    # the stream the host's phone sent to the gateway: no plaintext audio, decrypted back to what was sent
    to_gw = re.search(rf"{re.escape(bridge_ip)}:\d+ -> {re.escape(gateway_ip)}:\d+: \d+ SRTP packets.*\n\s+"
                      r"plaintext audio in (\d+) of (\d+) packets; decrypted back to the audio sent: (\w+)", out)
    assert to_gw and to_gw.group(1) == "0" and int(to_gw.group(2)) >= 50 and to_gw.group(3) == "yes", out[-4000:]

    # failover: docker kill of the publisher's container, every phone on the subscriber, docker
    # start, every phone back — not before the stable period of the env file
    assert re.search(r"docker kill \w+ \(compose project " + re.escape(cluster.project), out), out[-3000:]
    assert len(re.findall(r"SEP\w+ on the subscriber", out)) == 4
    assert re.search(r"docker start \w+", out)
    stable = float(FAILOVER_SETTINGS["CCMSEC_PHONE_FAILBACK_STABLE"])
    back = re.findall(r"SEP\w+ back on the publisher \S+\s+([\d.]+) s after the kill", out)
    assert len(back) == 4 and all(float(b) >= stable for b in back), back
    assert f"answered for {stable:g} s" in out
    # right after the fail-back, from the host: a reset of a fleet phone completes (issue 13: phone-sim
    # reboots it for the same event and can be first — the just restarted publisher then finds it gone;
    # its registering again is its coming back, not a --wait to the timeout with 0/1 back)
    regs = run_cli("device", "registrations", "SEP0DE700000001", "--json", env=env, timeout=60)
    assert regs.returncode == 0 and json.loads(regs.stdout)[0]["server"] == "callmanager", regs.stdout + regs.stderr
    reset = run_cli("device", "reset", "SEP0DE700000001", "--wait", "--timeout", "120", env=env, timeout=300)
    assert reset.returncode == 0 and "complete: every targeted device is back (1)" in reset.stdout, \
        reset.stdout + reset.stderr
    with capsys.disabled():
        print("device reset SEP0DE700000001 --wait right after the fail-back:\n" + reset.stdout.strip())
    cluster.wait_healthy()   # attached: the demo left the cluster running, the publisher started again

    # the proof repeats from the files the demo left in the context's folder — and the bad case:
    # without the TLS key log (the keys are only in the encrypted signalling) nothing decrypts
    pcap, keylog, port = re.search(r"`ccmsec media verify (\S+) --keylog (\S+) --sccp-port (\d+)`", out).groups()
    assert pcap == str(data / "media.pcapng") and keylog == str(data / "demo-sccp-keys.log")  # lo and the bridge
    seen = run_cli("media", "verify", pcap, "--keylog", keylog, "--sccp-port", port, env=env, timeout=300)
    assert seen.returncode == 0 and re.search(r"\b(?:[4-9]|\d\d+) of \d+ streams SRTP under signalled keys; 0 with refused",
                                               seen.stdout), seen.stdout[-2000:] + seen.stderr
    blind = run_cli("media", "verify", pcap, "--sccp-port", port, env=env, timeout=300)
    assert "authenticate and decrypt" not in blind.stdout and re.search(
        r"\b0 of \d+ streams SRTP under signalled keys", blind.stdout), blind.stdout[-2000:] + blind.stderr



def test_demo_attach_failover_without_docker_says_why(cluster, tmp_path, monkeypatch):
    """The bad case of the failover step: where there is no `docker` command (e.g. inside compose's
    `cli` container), the step says why and what to do instead of failing or pretending."""
    import asyncio

    from ccmsec import contexts
    from ccmsec.demo import DemoContext, step_failover

    monkeypatch.setenv("CCMSEC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("CCMSEC_CONTEXT", "nodocker")

    contexts.save_bundle("nodocker", json.loads(cluster.cli("compose", "client-bundle").stdout))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    lines: list[str] = []
    ctx = DemoContext(data=contexts.load("nodocker").cluster_dir, out=lines.append)
    ctx.notes["attach"] = True
    asyncio.run(asyncio.wait_for(step_failover(ctx), 600))
    text = "\n".join(lines)
    assert "not run from here: no `docker` command here. The failover needs" in text, text
    assert "docker kill" not in text and "on the subscriber" not in text


def test_published_nats_port_refuses_every_connection_without_a_known_nkey(cluster):
    """BUS-1 on the published port: no credentials, a token, a user and password, an nkey NATS does
    not know — each refused by the server (authorization violation); the bundle's cli nkey gets in
    (so the refusals are the server's answer, not an unreachable port)."""
    import nats
    import nkeys

    url = f"nats://127.0.0.1:{cluster.ports[compose.NATS_PUBLISH_VARIABLE]}"
    stranger = nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER).decode()
    cli_seed = json.loads(cluster.cli("compose", "client-bundle").stdout)["identity"]["nats.nk"].strip()

    async def attempt(**auth) -> str:
        said = []

        async def heard(exc):
            said.append(str(exc))
        try:
            nc = await nats.connect(servers=[url], connect_timeout=10, allow_reconnect=False,
                                    max_reconnect_attempts=0, error_cb=heard, **auth)
        except Exception as exc:  # nats-py's own errors: what the server said
            return f"refused: {type(exc).__name__} {exc} {said}"
        await nc.close()
        return "CONNECTED"

    cases = {"no credentials": {}, "a token": {"token": "guess"},
             "a user and password": {"user": "cli", "password": "cli"},
             "an nkey NATS does not know": {"nkeys_seed_str": stranger}}
    def run(**auth) -> str:  # nats-py retries a refused TCP connection forever: bound it
        async def bounded():
            try:
                return await asyncio.wait_for(attempt(**auth), 30)
            except asyncio.TimeoutError:
                return "no answer from the server within 30 s"
        return asyncio.run(bounded())

    for what, auth in cases.items():
        answer = run(**auth)
        assert answer.startswith("refused:") and "authorization" in answer.lower(), (what, answer)
    assert run(nkeys_seed_str=cli_seed) == "CONNECTED"
