"""`ccmsec ctl update|provider|tftp-clusters` and `ccmsec mode` refusals that need no cluster."""

from __future__ import annotations

import pytest

from ccmsec.cli.main import main


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_ctl1_update_with_one_token_is_refused_before_anything_else(tmp_path, capsys):
    code, err = _run(capsys, "ctl", "update", "--data", str(tmp_path), "--token", "t1")
    assert code == 1 and "CTL-1" in err and "at least two" in err


def test_update_signer_must_be_one_of_the_tokens(tmp_path, capsys):
    code, err = _run(capsys, "ctl", "update", "--data", str(tmp_path), "--token", "a", "--token", "b",
                     "--sign-with", "c")
    assert code == 1 and "CTL-1: the signing token 'c'" in err


def test_update_unknown_token_is_named(tmp_path, capsys):
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    code, err = _run(capsys, "ctl", "update", "--data", str(tmp_path), "--token", "a", "--token", "b",
                     "--password-file", str(pw))
    assert code == 1 and "no token 'a'" in err


@pytest.mark.parametrize("value", ["nohost", "h:0", "h:70000", ":44"])
def test_update_bad_provider_address(tmp_path, capsys, value):
    code, err = _run(capsys, "ctl", "update", "--data", str(tmp_path), "--token", "a", "--token", "b",
                     "--provider", value)
    assert code == 1 and "expected HOST:PORT" in err


@pytest.mark.parametrize("argv", [["mode", "show"], ["mode", "set", "mixed"], ["ctl", "provider", "show"],
                                  ["ctl", "tftp-clusters", "list"], ["ctl", "provider-port", "2445"]])
def test_commands_without_a_running_cluster_say_so(tmp_path, capsys, argv):
    code, err = _run(capsys, *argv, "--data", str(tmp_path))
    assert code == 1 and "no running cluster" in err


def test_mode_set_only_accepts_the_two_cluster_modes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["mode", "set", "secure", "--data", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err
