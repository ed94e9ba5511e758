"""Pure parts of the administration API: names, DEV-3/MODE-5 checks, body parsing, CLI helpers."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from ccmsec import adminclient
from ccmsec.cli.device import format_table
from ccmsec.db import devices as db_devices
from ccmsec.db.devices import InvalidDeviceName, validate_device_name
from ccmsec_callmanager.admin.auth import FailureThrottle, _hasher
from ccmsec_callmanager.admin.device_rules import RuleViolation, check_device_change
from ccmsec_callmanager.admin.devices import DeviceCreate, DevicePatch
from ccmsec_callmanager.admin.errors import ApiError, read_json

SECURE = ("7970", "7960", "7940")
_LOOP = asyncio.new_event_loop()  # one loop for all examples: asyncio.run per example is slow


def _run(coro):
    return _LOOP.run_until_complete(coro)


IMAGE_ONLY = ("7912", "7910", "7905G", "7902")


# --- device names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["SEP001122334455", "SEPABCDEF012345", "lab-7912", "X", "a_b-C9",
                                  "Z" * 15])
def test_valid_device_names(name):
    assert validate_device_name(name) == name


@pytest.mark.parametrize("name,why", [
    ("", "empty"), ("SEP00112233445G", "SEP"), ("sep001122334455", "SEP"),
    ("SEP0011223344", "SEP"), ("SEP0011223344556", "long"), ("A" * 16, "long"),
    ("bad name", "only"), ("a/b", "only"), ("é", "only"), ("a\n", "only"),
])
def test_invalid_device_names_are_refused_with_a_reason(name, why):
    with pytest.raises(InvalidDeviceName, match=why):
        validate_device_name(name)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_device_name_any_text_is_valid_or_a_clean_error(name):
    try:
        assert validate_device_name(name) == name
    except InvalidDeviceName as exc:
        assert str(exc)


# --- DEV-3 / MODE-5 -------------------------------------------------------------------------------

@pytest.mark.parametrize("model", IMAGE_ONLY)
@pytest.mark.parametrize("mode", ["authenticated", "encrypted"])
def test_dev3_image_only_models_cannot_be_authenticated_or_encrypted(model, mode):
    with pytest.raises(RuleViolation) as exc:
        check_device_change(model, mode, web_access=True, cluster_mode="mixed", ctl_exists=True)
    assert exc.value.rule == "DEV-3" and model in exc.value.reason


@pytest.mark.parametrize("model", SECURE + IMAGE_ONLY)
def test_dev3_non_secure_is_fine_for_every_model(model):
    check_device_change(model, "non-secure", web_access=True, cluster_mode="non-secure",
                        ctl_exists=False)


@pytest.mark.parametrize("model", SECURE)
@pytest.mark.parametrize("mode", ["authenticated", "encrypted"])
def test_mode5_secure_modes_refused_without_ctl_allowed_with_it(model, mode):
    with pytest.raises(RuleViolation) as exc:
        check_device_change(model, mode, web_access=True, cluster_mode="non-secure", ctl_exists=False)
    assert exc.value.rule == "MODE-5"
    check_device_change(model, mode, web_access=True, cluster_mode="mixed", ctl_exists=True)


def test_mode3_secure_device_needs_a_mixed_mode_cluster():
    with pytest.raises(RuleViolation) as exc:
        check_device_change("7970", "authenticated", web_access=True, cluster_mode="non-secure",
                            ctl_exists=True)
    assert exc.value.rule == "MODE-3"


@pytest.mark.parametrize("model", IMAGE_ONLY)
def test_dev3_web_server_disable_only_on_models_that_can(model):
    with pytest.raises(RuleViolation, match="web server") as exc:
        check_device_change(model, "non-secure", web_access=False, cluster_mode="non-secure",
                            ctl_exists=False)
    assert exc.value.rule == "DEV-3"
    for secure in SECURE:
        check_device_change(secure, "non-secure", web_access=False, cluster_mode="non-secure",
                            ctl_exists=False)


# --- request bodies -----------------------------------------------------------------------------

def _request(body: bytes, content_type: str = "application/json") -> Request:
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [
        (b"content-type", content_type.encode())], "query_string": b""}
    return Request(scope, receive)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_read_json_any_bytes_gives_a_model_or_a_4xx(raw):
    for model in (DeviceCreate, DevicePatch):
        try:
            _run(read_json(_request(raw), model))
        except ApiError as exc:
            assert 400 <= exc.status < 500 and exc.error


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "model", "security_mode", "description",
                                        "device_pool", "web_access", "garp", "extra"]),
                       json_values | st.sampled_from(["SEP001122334455", "7970", "encrypted"]),
                       max_size=8))
def test_fuzz_device_bodies_validate_or_refuse_cleanly(data):
    for model in (DeviceCreate, DevicePatch):
        try:
            parsed = _run(read_json(_request(json.dumps(data).encode()), model))
        except ApiError as exc:
            assert exc.status == 422 and exc.error
        else:
            if model is DeviceCreate:
                validate_device_name(parsed.name)


def test_patch_rejects_explicit_null_except_for_device_pool():
    parsed = _run(read_json(_request(b'{"device_pool": null}'), DevicePatch))
    assert parsed.model_fields_set == {"device_pool"} and parsed.device_pool is None
    for field in ("security_mode", "web_access", "description"):
        with pytest.raises(ApiError, match=field):
            _run(read_json(_request(json.dumps({field: None}).encode()), DevicePatch))


def test_non_json_content_type_is_415():
    with pytest.raises(ApiError) as exc:
        _run(read_json(_request(b"a=b", "text/plain"), DeviceCreate))
    assert exc.value.status == 415


# --- accounts -------------------------------------------------------------------------------------

def test_production_password_hasher_is_argon2id_with_library_defaults():
    assert _hasher.hash("x" * 12).startswith("$argon2id$v=19$m=65536,t=3,p=4$")


def test_failure_throttle_blocks_after_limit_and_forgets_after_window():
    throttle = FailureThrottle(limit=2, window=0.05)
    throttle.check("a")
    throttle.failed("a")
    throttle.failed("a")
    with pytest.raises(ApiError) as exc:
        throttle.check("a")
    assert exc.value.status == 429
    throttle.check("b")  # other addresses unaffected
    time.sleep(0.06)
    throttle.check("a")


def test_failure_throttle_memory_is_bounded():
    throttle = FailureThrottle(limit=2, window=60, max_addresses=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) <= 100


# --- client / CLI helpers ------------------------------------------------------------------------

def test_client_vocabulary_matches_the_database():
    assert adminclient.DEVICE_MODELS == db_devices.DEVICE_MODELS
    assert adminclient.SECURITY_MODES == db_devices.SECURITY_MODES
    assert adminclient.HARDENING_FIELDS == db_devices.HARDENING_FIELDS


def test_format_table_aligns_columns():
    text = format_table([{"a": "x", "b": None}, {"a": "longer", "b": 7}], [("A", "a"), ("BEE", "b")])
    assert text.splitlines() == ["A       BEE", "x       -", "longer  7"]


def test_discover_refuses_missing_or_unsafe_settings(tmp_path):
    with pytest.raises(adminclient.AdminConfigError, match="endpoints.json"):
        adminclient.discover(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "endpoints.json").write_text("{not json")
    with pytest.raises(adminclient.AdminConfigError, match="cannot read"):
        adminclient.discover(tmp_path)
    (tmp_path / "run" / "endpoints.json").write_text(json.dumps({"admin_url": "http://x"}))
    with pytest.raises(adminclient.AdminConfigError, match="https://"):
        adminclient.discover(tmp_path)
    (tmp_path / "run" / "endpoints.json").write_text(json.dumps({"admin_url": "https://x:1"}))
    with pytest.raises(adminclient.AdminConfigError, match="admin-password"):
        adminclient.discover(tmp_path)
    with pytest.raises(adminclient.AdminConfigError, match="password-file"):
        adminclient.discover(tmp_path, username="ops")
    (tmp_path / "admin-password").write_text("pw\n")
    with pytest.raises(adminclient.AdminConfigError, match="https.crt"):
        adminclient.discover(tmp_path)
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "cluster-ca.crt").write_text("x")
    endpoint = adminclient.discover(tmp_path)
    assert (endpoint.url, endpoint.username, endpoint.password) == ("https://x:1", "admin", "pw")
    assert endpoint.cafile == tmp_path / "pki" / "cluster-ca.crt"


# --- CERT-4 certificate lifecycle ------------------------------------------------------------

def test_cert4_self_signed_without_an_identity_and_never_issued_from_the_cluster_ca(tmp_path):
    """Standalone, the API signs its own HTTPS certificate; even with a cluster CA key lying in
    DATA/pki it never issues from it (only the runner does, as the `admin-api` identity)."""
    from cryptography import x509

    from ccmsec.pki import ca as pki
    from ccmsec_callmanager.admin import ensure_https_certificate

    ca = pki.create_ca(pki.name("cluster CA"))
    pki.save_pair(ca, tmp_path / "pki" / "cluster-ca.crt", tmp_path / "pki" / "cluster-ca.key")
    cert_path, key_path = ensure_https_certificate(tmp_path, "127.0.0.1")
    first = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert first.issuer == first.subject
    assert (key_path.stat().st_mode & 0o777) == 0o600
    assert ensure_https_certificate(tmp_path, "127.0.0.1") == (cert_path, key_path)
    assert x509.load_pem_x509_certificate(cert_path.read_bytes()) == first  # kept
    key_path.write_bytes(pki.key_to_pem(pki.new_key("ec256")))  # key no longer matches
    ensure_https_certificate(tmp_path, "127.0.0.1")
    second = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert second != first and second.issuer == second.subject


def test_cert4_https_certificate_is_the_admin_api_identity_when_issued(tmp_path):
    from ccmsec.runtime.identity import service_identity
    from ccmsec_callmanager.admin import ensure_https_certificate

    service_identity(tmp_path, "callmanager", "callmanager", "127.0.0.1")
    from ccmsec.runtime.identity import load_identity

    admin = load_identity(tmp_path / "identities" / "services" / "callmanager" / "admin-api")
    assert str(admin.identity) == "admin-api/callmanager"
    assert ensure_https_certificate(tmp_path, "127.0.0.1", admin) == (admin.cert_path, admin.key_path)
    assert not (tmp_path / "callmanager" / "https.crt").exists()
