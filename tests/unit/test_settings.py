"""Service settings: peers given by name (compose) resolve to addresses; literals stay as they are."""

from ccmsec.runtime.settings import ServiceSettings, resolve_host


def test_peer_literal_address_is_returned_as_is(tmp_path):
    s = ServiceSettings(service="keymanager", data_dir=tmp_path, peers={"tftp-signer": "127.5.6.4"})
    assert s.peer_host("tftp-signer") == "127.5.6.4"


def test_peer_name_resolves_to_an_address(tmp_path):
    s = ServiceSettings(service="keymanager", data_dir=tmp_path, peers={"callmanager": "localhost"})
    assert s.peer_host("callmanager") == "127.0.0.1"


def test_unresolvable_name_is_returned_unchanged():
    assert resolve_host("no-such-host.invalid") == "no-such-host.invalid"
    assert resolve_host("a..b") == "a..b"  # not even a valid name: still no exception


def test_bad_json_in_a_json_valued_variable_is_one_clear_line(tmp_path, monkeypatch):
    """CCMSEC_PEERS / CCMSEC_CALL_CONTROL_NODES that are not JSON: pydantic-settings raises its own
    error before validation — it escaped load_settings, so a service start was a traceback."""
    import pytest

    from ccmsec.runtime.settings import SettingsError, load_settings

    monkeypatch.setenv("CCMSEC_SERVICE", "keymanager")
    monkeypatch.setenv("CCMSEC_DATA_DIR", str(tmp_path))
    for name, value in (("CCMSEC_PEERS", "{bad"), ("CCMSEC_CALL_CONTROL_NODES", "[1.2.3.4")):
        monkeypatch.setenv(name, value)
        with pytest.raises(SettingsError, match=f"^bad settings: {name}: not valid JSON$"):
            load_settings()
        monkeypatch.delenv(name)
