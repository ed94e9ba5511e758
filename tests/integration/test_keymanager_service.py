"""The keymanager service as a real process (real NATS, SQLite, gRPC over mutual TLS): two
independent key sets per call for the common suite (ENC-4), clear refusals, nothing of a key in
its logs even at DEBUG (ENC-5)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from ccmsec.media.keys import from_proto
from ccmsec.media.srtp import SrtpSuite
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.cluster.pki import issue_service_identity
from ccmsec.runtime.identity import client_identity, service_identity
from ccmsec_proto import common_pb2, keymanager_pb2, keymanager_pb2_grpc
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)


KEYMANAGER_METRICS: dict[int, str] = {}  # gRPC port -> the same process's /metrics


def call_keys(port: int) -> dict[tuple[str, str], float]:
    """ccmsec_call_keys_total as the running service's /metrics endpoint shows it (issue 16)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(KEYMANAGER_METRICS[port], timeout=10) as reply:
        text = reply.read().decode()
    return {(s.labels["suite"], s.labels["outcome"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "ccmsec_call_keys_total"}


@pytest.fixture
def keymanager(tmp_path, nats_server):
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "CCMSEC_SERVICE": "keymanager", "CCMSEC_DATA_DIR": str(tmp_path),
           "CCMSEC_HOST": "127.0.0.1", "CCMSEC_GRPC_PORT": str(port), "CCMSEC_METRICS_PORT": str(metrics_port),
           "CCMSEC_NATS_URL": nats_server, "CCMSEC_LOG_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"}
    service_identity(tmp_path, "keymanager", "keymanager", "127.0.0.1")  # what `ccmsec up` issues
    log = open(tmp_path / "keymanager.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "ccmsec_keymanager"], env=env, stdout=log, stderr=log)
    try:
        # the caller is call control: the only role the policy lets ask for keys
        ident = issue_service_identity(tmp_path, "callmanager", "cc-test", "127.0.0.1",
                                       out_dir=tmp_path / "cc-test")
        deadline = time.monotonic() + 30
        while '"msg": "serving"' not in (tmp_path / "keymanager.log").read_text():
            assert proc.poll() is None, (tmp_path / "keymanager.log").read_text()
            assert time.monotonic() < deadline, "keymanager did not start"
            time.sleep(0.05)
        KEYMANAGER_METRICS[port] = f"http://127.0.0.1:{metrics_port}/metrics"
        yield ident, port, proc, tmp_path / "keymanager.log"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


async def test_enc4_enc5_two_fresh_sets_per_call_and_no_key_in_the_log(keymanager):
    ident, port, proc, logfile = keymanager
    seen = []
    async with secure_channel(ident, "127.0.0.1", port, "keymanager") as channel:
        stub = keymanager_pb2_grpc.KeyManagerStub(channel)
        for n in range(5):
            reply = await stub.GenerateCallKeys(keymanager_pb2.CallKeysRequest(call_id=f"call-{n}"))
            a, b = from_proto(reply.a_to_b), from_proto(reply.b_to_a)
            assert reply.call_id == f"call-{n}"
            assert a.suite is b.suite is SrtpSuite.AES_CM_128_HMAC_SHA1_80  # the default suite
            assert a.key != b.key and a.salt != b.salt
            seen += [a, b]
        gcm = await stub.GenerateCallKeys(keymanager_pb2.CallKeysRequest(
            call_id="gcm", caller_suites=[common_pb2.AEAD_AES_128_GCM, common_pb2.AES_CM_128_HMAC_SHA1_32],
            callee_suites=[common_pb2.AES_CM_128_HMAC_SHA1_32, common_pb2.AEAD_AES_128_GCM]))
        assert from_proto(gcm.a_to_b).suite is SrtpSuite.AEAD_AES_128_GCM
        seen.append(from_proto(gcm.a_to_b))
        # call control's pool asks ahead: one request, keys for 64 calls, every set fresh
        batch = await stub.GenerateCallKeys(keymanager_pb2.CallKeysRequest(call_id="pool-1", calls=64))
        pairs = [batch, *batch.more]
        assert len(pairs) == 64 and all(p.call_id == "pool-1" for p in pairs) and not any(p.more for p in pairs[1:])
        seen += [from_proto(k) for p in pairs for k in (p.a_to_b, p.b_to_a)]
        assert len({k.key for k in seen}) == len(seen)  # never the same key twice
        status = await stub.Status(common_pb2.Empty())
        assert status.details["calls_keyed"] == "70"
    counted = call_keys(port)
    assert counted[("AES_CM_128_HMAC_SHA1_80", "issued")] == 69 and counted[("AEAD_AES_128_GCM", "issued")] == 1
    assert counted[("AEAD_AES_256_GCM", "issued")] == 0 and counted[("none", "refused")] == 0
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    text = logfile.read_text()
    assert "call keyed" in text and "call-3" in text  # DEBUG logging was really on
    for k in seen:
        for form in (k.key.hex(), k.salt.hex(), base64.b64encode(k.key_and_salt).decode(),
                     base64.b64encode(k.key).decode()[:16], repr(k.key)[2:20]):
            assert form not in text, "a key reached the log (ENC-5)"


async def test_enc4_refusals_are_clear(keymanager):
    ident, port, _, _ = keymanager
    async with secure_channel(ident, "127.0.0.1", port, "keymanager") as channel:
        stub = keymanager_pb2_grpc.KeyManagerStub(channel)
        cases = [
            (keymanager_pb2.CallKeysRequest(), grpc.StatusCode.INVALID_ARGUMENT, "call_id"),
            (keymanager_pb2.CallKeysRequest(call_id="x" * 129), grpc.StatusCode.INVALID_ARGUMENT, "call_id"),
            (keymanager_pb2.CallKeysRequest(call_id="c", caller_suites=[common_pb2.AES_CM_128_HMAC_SHA1_32],
                                            callee_suites=[common_pb2.AEAD_AES_128_GCM]),
             grpc.StatusCode.FAILED_PRECONDITION, "share no SRTP suite"),
            (keymanager_pb2.CallKeysRequest(call_id="c", suite=common_pb2.AEAD_AES_256_GCM,
                                            caller_suites=[common_pb2.AES_CM_128_HMAC_SHA1_80]),
             grpc.StatusCode.FAILED_PRECONDITION, "not supported by both ends"),
            (keymanager_pb2.CallKeysRequest(call_id="c", suite=3), grpc.StatusCode.FAILED_PRECONDITION,
             "unsupported SRTP suite 3"),
            (keymanager_pb2.CallKeysRequest(call_id="c", calls=65), grpc.StatusCode.INVALID_ARGUMENT,
             "calls must be 1..64 per request, not 65"),
        ]
        for request, code, words in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GenerateCallKeys(request)
            assert err.value.code() == code and words in err.value.details()
    counted = call_keys(port)  # refusals are counted, and nothing counted as issued
    assert counted[("none", "invalid")] == 3 and counted[("none", "refused")] == 3
    assert sum(v for (_, outcome), v in counted.items() if outcome == "issued") == 0


async def test_gw4_a_caller_without_a_cluster_certificate_is_refused(keymanager, tmp_path_factory):
    """The gRPC port needs a client certificate from this cluster's CA (CHK-12 / GW-4)."""
    _, port, _, _ = keymanager
    stranger = client_identity(tmp_path_factory.mktemp("other-cluster"))
    async with secure_channel(stranger, "127.0.0.1", port, "keymanager") as channel:
        stub = keymanager_pb2_grpc.KeyManagerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GenerateCallKeys(keymanager_pb2.CallKeysRequest(call_id="c"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_enc5_only_call_control_may_ask_for_keys(keymanager):
    """The administrator's own certificate (and any other role) is refused by the policy."""
    ident, port, _, logfile = keymanager
    from ccmsec.cluster.pki import issue_service_identity
    data = logfile.parent
    for caller in (client_identity(data),
                   issue_service_identity(data, "phone-sim", "phone-sim", "127.0.0.1", out_dir=data / "ps"),
                   issue_service_identity(data, "srtp-gateway", "gw", "127.0.0.1", out_dir=data / "gw")):
        async with secure_channel(caller, "127.0.0.1", port, "keymanager") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await keymanager_pb2_grpc.KeyManagerStub(channel).GenerateCallKeys(
                    keymanager_pb2.CallKeysRequest(call_id="c"), timeout=5)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
