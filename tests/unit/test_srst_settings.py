"""The SRST router's settings: a bad entry in CCMSEC_SRST_CREDENTIALS_ALLOW is a clear settings
error (the service exits 2 with one line) — it was accepted, then `ipaddress` raised ValueError
while the service started and the process died with a traceback."""

from __future__ import annotations

import pytest

from ccmsec.runtime.settings import SettingsError, load_settings
from ccmsec_srst.main import SrstSettings


def test_credentials_allow_takes_addresses_and_networks(tmp_path):
    s = load_settings(SrstSettings, service="srst", data_dir=tmp_path,
                      srst_credentials_allow=("10.1.0.0/16", "127.0.0.5", "fd00::/8"))
    assert s.srst_credentials_allow == ("10.1.0.0/16", "127.0.0.5", "fd00::/8")


@pytest.mark.parametrize("bad", ["callmanager", "10.1.0.0/33", "10.1.0.0/16 "])
def test_a_bad_credentials_allow_entry_is_a_settings_error(tmp_path, bad):
    with pytest.raises(SettingsError, match="CCMSEC_SRST_CREDENTIALS_ALLOW.*not an address or a CIDR"):
        load_settings(SrstSettings, service="srst", data_dir=tmp_path, srst_credentials_allow=("10.0.0.0/8", bad))


def test_the_env_var_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.setenv("CCMSEC_SRST_CREDENTIALS_ALLOW", '["not-a-net"]')
    with pytest.raises(SettingsError, match="'not-a-net' is not an address"):
        load_settings(SrstSettings, service="srst", data_dir=tmp_path)
