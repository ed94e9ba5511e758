"""`ccmsec token create|list|show`: the main path as real subprocesses, errors through `main()`.

The CLI starts slowly (it imports every command group), so the subprocess invocations run
concurrently in two rounds (creation, then inspection) inside one module fixture.
"""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from ccmsec.cli.main import main
from ccmsec.pki.tokens import MAX_PASSWORD_FAILURES, TokenLockedError, TokenPasswordError, open_token


def run(*args, data_dir, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "ccmsec.cli.main", *args, "--data", str(data_dir)],
                          capture_output=True, text=True, timeout=60,
                          **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))


def _round(calls: dict) -> dict:
    """case -> (args, data_dir) or (args, data_dir, text piped to stdin)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {case: pool.submit(run, *call[0], data_dir=call[1],
                                     stdin=call[2] if len(call) > 2 else None)
                   for case, call in calls.items()}
        return {case: f.result() for case, f in futures.items()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data = tmp_path_factory.mktemp("tokcli")
    (data / "pw").write_text("s3cret\n")
    pw = str(data / "pw")
    results = _round({
        "create": (("token", "create", "--name", "token1", "--password-file", pw), data),
        "no_password": (("token", "create", "--name", "t3"), data),
        "piped": (("token", "create", "--name", "piped"), data, "p1ped-secret\n"),
    })
    results |= _round({
        "list": (("token", "list"), data),
        "show": (("token", "show", "token1"), data),
    })
    return data, results


def in_process(capsys, *args):
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_uses_data_dir_and_password_file(env):
    data, results = env
    created = results["create"]
    assert created.returncode == 0, created.stderr
    assert "created token token1" in created.stdout
    assert (data / "tokens" / "token1.p12").exists()
    assert (data / "pki" / "manufacturer-ca.crt").exists()
    # The token opens with the password from the file (trailing newline stripped).
    assert open_token(data / "tokens", "token1", "s3cret").name == "token1"


def test_piped_password_is_read_without_any_python_warning(env):
    data, results = env
    piped = results["piped"]
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == "", piped.stderr  # no GetPassWarning, no echo warning, no prompt
    assert open_token(data / "tokens", "piped", "p1ped-secret").name == "piped"


def test_list_and_show(env):
    _, results = env
    listed = results["list"]
    assert listed.returncode == 0 and "token1" in listed.stdout
    assert "CN=SAST-token1" in listed.stdout
    shown = results["show"]
    assert shown.returncode == 0
    assert "Subject:     CN=SAST-token1" in shown.stdout
    assert "Issuer:      CN=ccmsec Manufacturing CA" in shown.stdout
    assert "SHA-256:" in shown.stdout and "ok (0/15" in shown.stdout


def test_no_password_when_not_interactive_is_a_clear_error(env):
    _, results = env
    result = results["no_password"]
    assert result.returncode == 1 and "password" in result.stderr
    assert "Traceback" not in result.stderr


def test_custom_dir_duplicate_unknown_and_locked(tmp_path, capsys):
    (tmp_path / "pw").write_text("pw")
    store = tmp_path / "elsewhere"
    create = ("token", "create", "--name", "t2", "--password-file", str(tmp_path / "pw"),
              "--dir", str(store), "--data", str(tmp_path))
    assert in_process(capsys, *create)[0] == 0
    assert (store / "t2.p12").exists() and not (tmp_path / "tokens").exists()
    code, _, err = in_process(capsys, *create)
    assert code == 1 and "already exists" in err
    code, _, err = in_process(capsys, "token", "show", "nope", "--dir", str(store))
    assert code == 1 and "no token 'nope'" in err
    code, _, err = in_process(capsys, "token", "create", "--name", "../x", "--password-file",
                              str(tmp_path / "pw"), "--data", str(tmp_path))
    assert code == 1 and "invalid token name" in err
    for _ in range(MAX_PASSWORD_FAILURES):
        try:
            open_token(store, "t2", "wrong")
        except (TokenPasswordError, TokenLockedError):
            pass
    code, out, _ = in_process(capsys, "token", "show", "t2", "--dir", str(store))
    assert code == 0 and "State:       LOCKED" in out


def test_chk4_two_tokens_each_with_its_own_password_make_a_ctl_one_does_not(tmp_path, capsys):
    """CHK-4: the administrator holds at least two security tokens and their passwords. Made with
    `ccmsec token create`, each opens only with its own password; the CTL client refuses one token
    (CTL-1) and builds, from the two, a CTL listing both as SAST records, signed by either."""
    import time

    from ccmsec.ctlclient import CtlClientError, check_tokens
    from ccmsec.formats.ctl import Role, build_ctl, parse_ctl, record_from_certificate, verify_ctl

    passwords = {"sast1": "first-s3cret", "sast2": "second-s3cret"}
    for name, password in passwords.items():
        (tmp_path / f"{name}.pw").write_text(password + "\n")
        code, out, err = in_process(capsys, "token", "create", "--name", name, "--password-file",
                                    str(tmp_path / f"{name}.pw"), "--data", str(tmp_path))
        assert code == 0 and f"created token {name}" in out, err
    code, out, _ = in_process(capsys, "token", "list", "--data", str(tmp_path))
    assert code == 0 and "CN=SAST-sast1" in out and "CN=SAST-sast2" in out
    tokens = {n: open_token(tmp_path / "tokens", n, p) for n, p in passwords.items()}
    with pytest.raises(TokenPasswordError):
        open_token(tmp_path / "tokens", "sast2", passwords["sast1"])   # each its own password
    with pytest.raises(CtlClientError, match="CTL-1: the CTL client needs at least two security tokens"):
        check_tokens(["sast1"], None)
    for signer in tokens:
        assert check_tokens(list(tokens), signer) == signer
        records = [record_from_certificate(t.certificate, Role.TOKEN) for t in tokens.values()]
        ctl = parse_ctl(build_ctl(records, tokens[signer], int(time.time())))
        assert verify_ctl(ctl).certificate == tokens[signer].certificate
        assert sorted(r.certificate.subject.rfc4514_string() for r in ctl.records if r.role is Role.TOKEN) \
            == ["O=ccmsec,OU=SAST,CN=SAST-sast1", "O=ccmsec,OU=SAST,CN=SAST-sast2"]
