"""CHK-5: the CTL client is installed with the project as the `ccmsec ctl` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_chk5_ctl_client_installed_as_console_script():
    script = Path(sys.executable).parent / "ccmsec"
    assert script.exists(), "the ccmsec console script is not installed"
    res = subprocess.run([str(script), "ctl", "update", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for option in ("--token", "--password-file", "--mode", "--new-trust"):
        assert option in res.stdout, option


def test_chk5_ctl_client_refuses_missing_tokens_clearly(tmp_path):
    script = Path(sys.executable).parent / "ccmsec"
    res = subprocess.run([str(script), "ctl", "update", "--data", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and res.stderr.strip()
