"""Bad input to the `ccmsec` command is a clear error with its exit code, never a traceback, a hang
or something half-saved: arguments that are not UTF-8, password files and client bundles that are
not text or are huge, malformed API URLs, timeouts that never expire, a device file given as a
trust list, TFTP names that are not ASCII.

Real subprocesses (the command as a user runs it), started concurrently in one module fixture;
none needs a running cluster: each is refused before anything is reached or written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ccmsec.pki.ca import create_ca, name

NOT_UTF8 = b"SEP\xff\xfe"


def _run(args, stdin: bytes | None, env: dict):
    cmd = [sys.executable, "-m", "ccmsec.cli.main", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=45, env=env,
                              **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))
    except subprocess.TimeoutExpired:
        return None  # a hang: the assertions say which case
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import os

    tmp = tmp_path_factory.mktemp("badinput")
    data = tmp / "data"
    data.mkdir(mode=0o700)
    ca = tmp / "ca.crt"
    ca.write_bytes(create_ca(name("CA")).pem)
    (tmp / "pw").write_text("the-password\n")
    (tmp / "pw-latin1").write_bytes(b"caf\xe9\n")
    (tmp / "pw-huge").write_bytes(b"x" * (1024 * 1024))
    (tmp / "bundle-latin1").write_bytes(b'{"format": "caf\xe9"}')
    (tmp / "a-file").write_bytes(b"not a folder")
    for folder, text in (("torn", b"\xff{"), ("foreign", b"[1, 2]")):
        (tmp / folder / "run").mkdir(parents=True)
        for fname in ("state.json", "endpoints.json"):
            (tmp / folder / "run" / fname).write_bytes(text)
    env = {**os.environ, "CCMSEC_CONFIG_DIR": str(tmp / "config")}
    env.pop("CCMSEC_CONTEXT", None)
    env.pop("CCMSEC_DATA_DIR", None)
    d = ["--data", str(data)]
    api = ["--url", "https://127.0.0.1:9", "--ca-file", str(ca), "--password-file", str(tmp / "pw")]
    calls = {
        "arg_not_utf8": (["device", "show", NOT_UTF8, *api, *d], None),
        "arg_not_utf8_json": (["--json", "device", "show", NOT_UTF8, *api, *d], None),
        "url_malformed": (["device", "list", *api[2:], "--url", "https://[::1", *d], None),
        "pw_latin1": (["token", "create", "--name", "t1", "--password-file", str(tmp / "pw-latin1"), *d], None),
        "pw_huge": (["token", "create", "--name", "t2", "--password-file", str(tmp / "pw-huge"), *d], None),
        "pw_stdin_latin1": (["token", "create", "--name", "t3", "--password-file", "-", *d], b"caf\xe9\n"),
        "ctx_url_malformed": (["context", "add", "c1", "--url", "https://[::1", "--ca-file", str(ca),
                               "--password-file", str(tmp / "pw")], None),
        "ctx_url_port": (["context", "add", "c2", "--url", "https://127.0.0.1:99999", "--ca-file", str(ca),
                          "--password-file", str(tmp / "pw")], None),
        "ctx_bundle_latin1": (["context", "add", "c3", "--client-bundle", str(tmp / "bundle-latin1")], None),
        "reset_timeout_nan": (["device", "reset", "SEP001122334455", "--wait", "--timeout", "nan", *d], None),
        "boot_timeout_negative": (["phones", "boot", "--all", "--wait", "--timeout", "-5", *d], None),
        "watch_timeout_nan": (["calls", "watch", "--timeout", "nan", *d], None),
        "watch_timeout_negative": (["calls", "watch", "--timeout", "-1", *d], None),
        "ctl_show_device": (["ctl", "show", "/dev/zero", *d], None),
        "tftp_get_not_ascii": (["tftp", "get", "caf\u00e9.cnf.xml", *d], None),
    }
    huge = "99999999999999999999"  # over any int32 field of a gRPC request
    for case, cmd in (("line_index", ["line", "add", "1000", "--device", "SEP001122334455", "--index", huge]),
                      ("phones_count", ["phones", "add", "--model", "7970", "--count", huge]),
                      ("phones_call", ["phones", "dial", "SEP001122334455", "1000", "--call", huge]),
                      ("phones_line", ["phones", "hangup", "SEP001122334455", "--line", huge]),
                      ("capf_limit", ["capf", "log", "--limit", huge]),
                      ("capf_limit_negative", ["capf", "status", "--limit", "-1"]),
                      ("ctl_port", ["ctl", "provider", "port", huge]),
                      ("ctl_port_alias", ["ctl", "provider-port", "70000"])):
        calls[f"int_{case}"] = ([*cmd, *d], None)
    for folder in ("a-file", "torn", "foreign"):  # --data that holds no readable cluster state
        for cmd in (["status"], ["down"], ["restart", "callmanager"], ["phones", "list"],
                    ["device", "registrations"], ["capf", "status"], ["mode", "show"]):
            calls[f"data_{folder}_{'_'.join(cmd)}"] = ([*cmd, "--data", str(tmp / folder)], None)
    # Two per core: more at once only share the same cores and stretch each command towards the
    # hang limit on a busy machine (each command imports the CLI, ~2 s of CPU there).
    with ThreadPoolExecutor(2 * (os.cpu_count() or 1)) as pool:
        futures = {case: pool.submit(_run, args, stdin, env) for case, (args, stdin) in calls.items()}
        out = {case: f.result() for case, f in futures.items()}
    out["tmp"], out["data"] = tmp, data
    return out


def _refused(results, case: str, code: int, words: str) -> str:
    result = results[case]
    assert result is not None, f"{case}: the command hung"
    rc, out, err = result
    assert "Traceback" not in err, f"{case}: {err}"
    assert rc == code, f"{case}: exit {rc}: {err}"
    assert words in err, f"{case}: {err}"
    assert err.count("\n") <= 1 or err.startswith("usage:"), f"{case}: {err}"
    return err


def test_an_argument_that_is_not_utf8_is_a_usage_error(results):
    err = _refused(results, "arg_not_utf8", 2, "is not valid UTF-8 text")
    assert r"b'SEP\xff\xfe'" in err
    rc, out, err = results["arg_not_utf8_json"]
    assert out == "" and json.loads(err)["exit_code"] == 2 and "UTF-8" in json.loads(err)["error"]


def test_a_malformed_api_url_is_refused_in_one_line(results):
    _refused(results, "url_malformed", 1, "is not a valid URL")


def test_password_files_and_stdin_that_are_not_a_password(results):
    _refused(results, "pw_latin1", 1, "is not UTF-8 text")
    _refused(results, "pw_huge", 1, "bytes: not a password")
    _refused(results, "pw_stdin_latin1", 1, "not UTF-8 text")
    tokens = results["data"] / "tokens"
    assert not tokens.exists() or list(tokens.iterdir()) == []  # nothing half-made


def test_context_add_saves_only_a_usable_url_and_a_text_bundle(results):
    _refused(results, "ctx_url_malformed", 1, "is not a valid URL")
    _refused(results, "ctx_url_port", 1, "is not a valid URL")
    _refused(results, "ctx_bundle_latin1", 1, "not UTF-8 text")
    contexts = results["tmp"] / "config" / "contexts"
    assert not contexts.exists() or list(contexts.iterdir()) == []


def test_a_timeout_that_never_expires_or_is_negative_is_a_usage_error(results):
    _refused(results, "reset_timeout_nan", 2, "argument --timeout")
    _refused(results, "boot_timeout_negative", 2, "argument --timeout")
    _refused(results, "watch_timeout_nan", 2, "argument --timeout")      # 0 is "until Ctrl-C"; nan is not
    _refused(results, "watch_timeout_negative", 2, "argument --timeout")


def test_ctl_show_of_an_endless_file_is_bounded(results):
    _refused(results, "ctl_show_device", 1, "not a valid CTL file")


def test_tftp_names_are_ascii(results):
    _refused(results, "tftp_get_not_ascii", 2, "ASCII")


def test_the_seconds_type():
    import argparse

    from ccmsec.cli.common import seconds

    assert seconds("2.5") == 2.5
    for bad in ("nan", "inf", "-1", "0", "abc", "1e9"):
        with pytest.raises(argparse.ArgumentTypeError):
            seconds(bad)
    from ccmsec.cli.common import seconds_or_zero

    assert seconds_or_zero("0") == 0.0 and seconds_or_zero("2.5") == 2.5
    for bad in ("nan", "inf", "-1", "-0.5", "abc", "1e9"):
        with pytest.raises(argparse.ArgumentTypeError):
            seconds_or_zero(bad)


def test_stdin_password_with_undecodable_bytes(monkeypatch):
    """The C locale decodes standard input with surrogateescape: the bytes come as surrogates."""
    import io

    from ccmsec.cli.common import CliError, read_password

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9\n"), encoding="utf-8",
                                                       errors="surrogateescape"))
    with pytest.raises(CliError, match="not UTF-8"):
        read_password(argparse_namespace(password_file=Path("-")))


def argparse_namespace(**kw):
    import argparse

    return argparse.Namespace(**kw)


def test_data_folder_without_readable_state_is_no_cluster(results):
    """--data naming a file, or a run/state.json and endpoints.json torn (not UTF-8) or not a JSON
    object: every command says there is no cluster there (down: nothing to stop)."""
    cases = [case for case in results if case.startswith("data_")]
    assert len(cases) == 21
    for case in cases:
        rc, out, err = results[case]
        assert "Traceback" not in err, f"{case}: {err}"
        if case.endswith("_down"):
            assert rc == 0 and "no cluster running" in out, f"{case}: {out} {err}"
        else:
            assert rc == 1 and "cluster" in err and err.count("\n") == 1, f"{case}: {err}"


def test_numbers_a_request_cannot_hold_are_usage_errors(results):
    """Before: `line add --index 99999999999999999999` (and --count, --call, --line, --limit, the
    CTL Provider port) reached the protobuf request and ended in its ValueError traceback."""
    cases = [case for case in results if case.startswith("int_")]
    assert len(cases) == 8
    for case in cases:
        rc, out, err = results[case]
        assert "Traceback" not in err and rc == 2, f"{case}: {err}"
        assert "give a number from" in err, f"{case}: {err}"


def test_media_verify_names_a_key_log_that_is_no_regular_file(tmp_path, monkeypatch, capsys):
    """`media verify --keylog /dev/zero` (a device) said "no such file"; it says what is wrong."""
    from ccmsec.cli.main import main
    from ccmsec.media import capture

    monkeypatch.setattr(capture, "capture_available", lambda: None)  # the tools are not what is tested
    pcap = tmp_path / "media.pcap"
    pcap.write_bytes(b"\xd4\xc3\xb2\xa1")
    assert main(["media", "verify", str(pcap), "--keylog", "/dev/zero"]) == 1
    assert "key log /dev/zero: not a regular file" in capsys.readouterr().err
    assert main(["media", "verify", str(pcap), "--keylog", str(tmp_path / "missing.log")]) == 1
    assert "missing.log: no such file" in capsys.readouterr().err
