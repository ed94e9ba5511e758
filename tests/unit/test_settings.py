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
