"""The main job: `ccmsec demo` walks the checklist end to end on a fresh cluster and leaves nothing.

Proves the whole secure path across services (CHK-1 … CHK-9): CTL Provider and CAPF activated, two
tokens, a signed CTL, mixed mode, signed TFTP files, LSCs through CAPF, and phones of each model
registered in the mode configured for them (DEV-1, AUTH-2, AUTH-6, CERT-2, ENC-1, AUTH-7).
"""

from __future__ import annotations

import re

import pytest

from ccmsec.cluster.runner import cluster_pids
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e


def test_demo_walks_the_checklist_and_stops_the_cluster(tmp_path):
    data = tmp_path / "demo"
    res = run_cli("demo", "--data", str(data), timeout=600)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in out + res.stderr
    assert "ccmsec demo finished" in out and "cluster stopped" in out
    # trust anchors (CHK-1, CHK-4, CHK-6)
    assert "activated, TLS on" in out
    assert re.search(r"cluster security mode: non-secure -> mixed", out)
    assert "signature valid" in out and "Role:            SAST" in out
    # signed files (AUTH-1, AUTH-3)
    assert "signature valid (AUTH-1)" in out
    assert "RingList.xml.sgn: signed by the TFTP certificate" in out
    # every phone registered in its configured mode, TLS phones with their LSC (CERT-2)
    assert re.search(r"7970\s+registered encrypted\s+via \S+:2443 presenting LSC", out)
    assert re.search(r"7960\s+registered authenticated via \S+:2443 presenting LSC", out)
    assert re.search(r"7940\s+registered encrypted\s+via \S+:2443 presenting LSC", out)
    assert re.search(r"7912\s+registered non-secure\s+via \S+:2000 presenting no certificate", out)
    assert "4 device(s) registered" in out
    # phone-sim phones of each mode call each other; both phones and call control agree (CALL-1, CALL-2)
    assert re.search(r"7970 \(encrypted\) calls 7940 \(encrypted\): the phones show 'lock' / 'lock'; "
                     r"call control: encrypted \(CALL-1\); audio on 7970: SRTP both ways yes, received \d+, refused 0", out)
    assert re.search(r"7970 \(encrypted\) calls 7960 \(authenticated\): the phones show 'shield' / 'shield'; "
                     r"call control: authenticated \(CALL-1\); audio on 7970: SRTP both ways no", out)
    assert re.search(r"7970 \(encrypted\) calls 7912 \(non-secure\): the phones show 'none' / 'none'; "
                     r"call control: non-secure \(CALL-\d\); audio on 7970: SRTP both ways no", out)
    # supplementary services with the fleet (CALL-2, CALL-3, CALL-9): hold plays music on hold as
    # plain RTP in a G.711 law, the call non-secure while held and encrypted again on resume; a
    # consultative transfer leaves the two others connected, each display naming the other;
    # a conference with the non-secure phone goes through the bridge, each leg with its law
    assert re.search(r"7970 calls 7940: both show 'lock'; call control: encrypted \(CALL-1\)", out)
    assert re.search(r"7970 presses Hold: 7940 shows 'none', hears music on hold in g711[ua] \(.*\) as plain RTP: "
                     r"SRTP both ways no, received [1-9]\d* packets, refused 0; call control: non-secure "
                     r"\(CALL-3\), resources music on hold; legs: 7970 g711[ua], 7940 g711[ua]", out)
    assert re.search(r"7970 presses Resume: both show 'lock' again; call control: encrypted \(CALL-1\), "
                     r"resources none; audio on 7940: SRTP both ways yes", out)
    assert re.search(r"Transfer again: 7970 is idle; 7940 shows 4101->4102 'shield', 7960 shows 4102->4101 "
                     r"'shield'; call control: connected 7940 \(4102\) and 7960 \(4101\), authenticated", out)
    assert re.search(r"Conference again: 7940 shows \S+ 'Conference' 'none', 7960 shows \S+ 'Conference' 'none', "
                     r"7912 shows \S+ 'Conference' 'none'; call control: non-secure \(CALL-3\), resources "
                     r"conference bridge; legs: 7940 g711[ua], 7960 g711[ua], 7912 g711[ua]", out)
    # encrypted calls (ENC-2…5, GW-1): the lock, SRTP both ways, and the proof from the wire
    assert re.search(r"call 4001 -> 4002: \S+ shows 'lock'; media SRTP both ways: True; .* refused 0", out)
    assert re.search(r"through the SRTP gateway to the echo 5550102: \S+ shows 'lock'; media SRTP both ways: True", out)
    if "wire capture skipped" not in out:   # dumpcap needs the capture privilege (CI runs as root)
        streams = re.findall(r"(\d+) SRTP packets; (\d+) authenticate and decrypt under the "
                             r"AES_CM_128_HMAC_SHA1_80 key signalled for this stream, (\d+) refused", out)
        assert len(streams) >= 3 and all(a == b and c == "0" for a, b, c in streams), streams
    # LATER-7: the serving node killed, every phone (secure ones over TLS: the subscriber is in the
    # CTL) on the subscriber, then back on the publisher after the stable period
    assert re.search(r"kill -9 \d+ \(the publisher callmanager, serving every phone\)", out)
    moved = re.findall(r"(SEP\w+) on the subscriber (\S+)\s+([\d.]+) s after the kill", out)
    back = re.findall(r"(SEP\w+) back on the publisher (\S+)\s+([\d.]+) s after the kill", out)
    assert len(moved) == 4 and len(back) == 4, out[-2500:]
    assert {m[1] for m in moved} == {"encrypted", "authenticated", "non-secure"}
    assert all(float(b[2]) >= 8 for b in back), back   # not before the stable period
    assert cluster_pids(data) == [], "the demo must stop every process it started"


def test_demo_attach_to_a_running_local_cluster_runs_every_step(tmp_path):
    """`demo --attach` on a `ccmsec up` cluster starts and stops nothing and skips nothing: the
    encrypted calls with their proof from the wire, the failover of the serving node and back.
    The bad case: a data folder with no running cluster is refused with one line."""
    data = tmp_path / "attached"
    env = {"CCMSEC_PHONE_FAILBACK_STABLE": "8", "CCMSEC_PHONE_PROBE_INTERVAL": "2"}
    up = run_cli("up", "-d", "--subscribers", "1", "--data", str(data), env=env, timeout=300)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    try:
        res = run_cli("demo", "--attach", "--data", str(data), timeout=600)
        out = res.stdout
        assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
        assert "Traceback" not in out + res.stderr and "not run from here" not in out
        assert "nothing is started or stopped" in out and "Start the cluster" not in out
        assert "callmanager handled it" in out                     # the event bus round trip
        assert re.search(r"outboxes of all \d+ services: every event published, none set aside", out)
        assert "cluster security mode: non-secure -> mixed" in out
        assert "4 device(s) registered" in out
        assert re.search(r"Transfer again: 7970 is idle; 7940 shows 4101->4102 'shield'", out)
        assert re.search(r"Conference again: .*call control: non-secure \(CALL-3\), resources conference bridge", out)
        assert re.search(r"call 4001 -> 4002: \S+ shows 'lock'; media SRTP both ways: True; .* refused 0", out)
        assert re.search(r"through the SRTP gateway to the echo 5550102: \S+ shows 'lock'", out)
        if "wire capture skipped" not in out:
            streams = re.findall(r"(\d+) SRTP packets; (\d+) authenticate and decrypt", out)
            assert len(streams) >= 3 and all(a == b for a, b in streams), streams
            audio = re.findall(r"plaintext audio in (\d+) of (\d+) packets; decrypted back to the audio sent: (\w+)", out)
            assert len(audio) >= 3 and all(p == "0" and same == "yes" for p, _n, same in audio), audio
        assert re.search(r"kill -9 \d+ \(the publisher callmanager", out)
        assert len(re.findall(r"SEP\w+ on the subscriber", out)) == 4
        back = re.findall(r"SEP\w+ back on the publisher \S+\s+([\d.]+) s after the kill", out)
        assert len(back) == 4 and all(float(b) >= 8 for b in back), back
        assert len(cluster_pids(data)) > 0, "--attach must leave the cluster running"
        # issue 13: right after the fail-back a fleet phone's reset completes — phone-sim reboots it
        # for the same event and was first in two of two runs by hand (the publisher just restarted),
        # so the node found it gone; --wait ran to its timeout with 0/1 back before
        reset = run_cli("device", "reset", "SEP0DE700000001", "--wait", "--timeout", "60", "--data", str(data),
                        timeout=120)
        assert reset.returncode == 0 and "complete: every targeted device is back (1)" in reset.stdout, \
            reset.stdout + reset.stderr
    finally:
        run_cli("down", "--data", str(data), timeout=120)
    refused = run_cli("demo", "--attach", "--data", str(tmp_path / "nothing-here"), timeout=60)
    assert refused.returncode != 0 and "no running cluster described in" in refused.stderr
    assert "Traceback" not in refused.stderr
