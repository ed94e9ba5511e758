"""What scripts rely on in the `ccmsec` command (issue 16): --version, exit codes in --help and
the README, shell completion, --json output and JSON errors, `--password-file -`.

Real subprocesses (the command as a user runs it), started concurrently in one module fixture
because each start imports every command group; completion runs in a real bash.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import ccmsec
from ccmsec.formats.ctl import Role, build_ctl, record_from_certificate
from ccmsec.pki.ca import create_ca, issue_with_new_key, name
from ccmsec.pki.tokens import FileSigner

ROOT = Path(__file__).resolve().parents[2]
TS = 1_700_000_000


def run(*args, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "ccmsec.cli.main", *args], capture_output=True,
                          text=True, timeout=90,
                          **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))


def _round(calls: dict) -> dict:
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {case: pool.submit(run, *args, stdin=stdin) for case, (args, stdin) in calls.items()}
        return {case: f.result() for case, f in futures.items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    data = tmp_path_factory.mktemp("clijson")
    data.chmod(0o700)
    ca = create_ca(name("CA"))
    token = FileSigner.from_issued(issue_with_new_key(ca, name("SAST-json")))
    cm = issue_with_new_key(ca, name("cm1")).cert
    good = build_ctl([record_from_certificate(token.certificate, Role.TOKEN),
                      record_from_certificate(cm, Role.CCM_TFTP, "cm1", "127.0.0.1")], token, TS)
    (data / "CTLFile.tlv").write_bytes(good)
    bad = bytearray(good)
    bad[good.index(b"\x0c\x01\x00") + 10] ^= 0x01  # a byte of the signature
    (data / "bad.tlv").write_bytes(bytes(bad))
    from cryptography.hazmat.primitives.serialization import Encoding

    from ccmsec.formats.sgn import sign_file

    (data / "RingList.xml.sgn").write_bytes(sign_file(b"<list/>", "RingList.xml.sgn", token, TS))
    (data / "signer.pem").write_bytes(token.certificate.public_bytes(Encoding.PEM))
    d = ("--data", str(data))
    out = _round({
        "version": (("--version",), None),
        "help": (("--help",), None),
        "completion": (("completion", "bash"), None),
        "completion_zsh": (("completion", "zsh"), None),
        "create_stdin": (("token", "create", "--name", "piped", "--password-file", "-", *d),
                         "from-stdin-secret\n"),
        "create_stdin_empty": (("token", "create", "--name", "empty", "--password-file", "-", *d), ""),
        "ctl_json": (("ctl", "show", str(data / "CTLFile.tlv"), "--json", *d), None),
        "ctl_bad_json": (("ctl", "show", str(data / "bad.tlv"), "--json", *d), None),
        "usage_json": (("--json", "token", "frobnicate", *d), None),
        "usage_text": (("token", "frobnicate", *d), None),
        "status_json": (("status", "--json", *d), None),
        "mode_json_no_cluster": (("mode", "show", "--json", *d), None),
        "pki_issue": (("pki", "issue", "--role", "keymanager", "--out", str(data / "km"), *d), None),
        "sgn_json": (("sgn", "show", str(data / "RingList.xml.sgn"), "--cert", str(data / "signer.pem"),
                      "--json", *d), None),
    })
    out |= _round({
        "list_json": (("token", "list", "--json", *d), None),
        "list_json_first": (("--json", "token", "list", *d), None),
        "show_json": (("token", "show", "piped", "--json", *d), None),
        "show_missing_json": (("token", "show", "nope", "--json", *d), None),
        "pki_json": (("pki", "show", str(data / "km"), "--json"), None),
    })
    out["data"] = data
    return out


def test_version_is_the_package_version(results):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert ccmsec.__version__ == project["version"]
    r = results["version"]
    assert r.returncode == 0 and r.stdout.strip() == f"ccmsec {project['version']}"


def test_the_command_starts_without_the_libraries_only_some_commands_use():
    """Every `ccmsec` start imports every command group; SQLAlchemy (no command uses it; it came
    in through compose's database roles) and httpx (only the administration API's commands) were
    half of that start, paid by every command a script runs. The bad case: the same look, after
    importing what does use them (the database layer, an API call's client), names both."""
    loaded = "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'httpx'}))"
    probe = "\n".join([
        "import sys", "from pathlib import Path", "from ccmsec.cli.main import build_parser",
        "build_parser()", loaded,
        "import ccmsec.runtime.database, ccmsec.adminclient as a",
        "try: a.discover(Path('/'), url='https://[::1')",  # the URL check is httpx's
        "except a.AdminConfigError: pass", loaded])
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "['httpx', 'sqlalchemy']"]


def _exit_table(text: str) -> list[tuple[str, str]]:
    block = text[text.index("exit codes:"):]
    return re.findall(r"^\s*`?(\d{1,3})`?\s*\|?\s*(\S.*?)\s*\|?\s*$", block, re.M)[:6]


def test_exit_codes_are_in_help_and_in_the_readme(results):
    r = results["help"]
    assert r.returncode == 0
    codes = [code for code, _ in _exit_table(r.stdout)]
    assert codes == ["0", "1", "2", "3", "4", "130"]
    readme = (ROOT / "README.md").read_text()
    assert "Exit codes" in readme
    for code in codes:
        assert re.search(rf"^\| `{code}` \|", readme, re.M), f"exit code {code} not in README.md"


def test_exit_codes_as_documented(results):
    assert results["usage_text"].returncode == 2
    assert results["status_json"].returncode == 1  # no cluster here: refused with a reason
    assert results["ctl_bad_json"].returncode == 1


def _complete(script: str, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    program = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMPREPLY=(); "
               "_ccmsec; printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.split("\n") if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_completes_commands_options_and_choices(results):
    r = results["completion"]
    assert r.returncode == 0, r.stderr
    script = r.stdout
    assert "complete -o default" in script and "-F _ccmsec ccmsec" in script
    assert _complete(script, "ccmsec", "dev") == ["device"]
    assert "set-security" in _complete(script, "ccmsec", "device", "")
    assert _complete(script, "ccmsec", "device", "add", "--mo") == ["--model"]
    assert "7970" in _complete(script, "ccmsec", "device", "add", "--model", "")
    assert _complete(script, "ccmsec", "mode", "set", "") == ["non-secure", "mixed"]
    assert _complete(script, "ccmsec", "--data", "/tmp/x", "token", "l") == ["list"]
    assert "--json" in _complete(script, "ccmsec", "status", "--")
    assert _complete(script, "ccmsec", "ctl", "show", "") == []  # a file: the shell's own completion


def _complete_zsh(script: str, home: Path, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    # bashcompinit runs the function in sh emulation (0-based arrays); zsh itself then filters the
    # candidates by the typed prefix, so here they come unfiltered.
    program = (f"{script}\nemulate -L sh; setopt kshglob noshglob braceexpand\n"
               f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMPREPLY=(); _ccmsec; "
               "printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=30,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and not done.stderr, done.stderr
    return [w for w in done.stdout.split("\n") if w]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh (.ci/run installs it)")
def test_zsh_completion_through_bashcompinit(results, tmp_path):
    r = results["completion_zsh"]
    assert r.returncode == 0, r.stderr
    script = r.stdout
    assert "bashcompinit" in script
    words = _complete_zsh(script, tmp_path, "ccmsec", "device", "")
    assert "set-security" in words and not any(w.startswith("-") for w in words)
    assert _complete_zsh(script, tmp_path, "ccmsec", "mode", "set", "") == ["non-secure", "mixed"]
    assert "--json" in _complete_zsh(script, tmp_path, "ccmsec", "status", "--")
    assert "7970" in _complete_zsh(script, tmp_path, "ccmsec", "device", "add", "--model", "")


def test_password_file_dash_reads_standard_input(results):
    r = results["create_stdin"]
    assert r.returncode == 0, r.stderr
    from ccmsec.pki.tokens import open_token

    opened = open_token(results["data"] / "tokens", "piped", "from-stdin-secret")
    assert opened.name == "piped"
    empty = results["create_stdin_empty"]
    assert empty.returncode == 1 and "no password given on standard input" in empty.stderr
    assert "Traceback" not in empty.stderr


def test_token_list_and_show_json(results):
    for case in ("list_json", "list_json_first"):
        r = results[case]
        assert r.returncode == 0, r.stderr
        (token,) = json.loads(r.stdout)
        assert token["name"] == "piped" and token["locked"] is False
        assert re.fullmatch(r"[0-9a-f]{64}", token["sha256"])
    shown = json.loads(results["show_json"].stdout)
    assert shown["name"] == "piped" and shown["subject"].startswith("CN=SAST-piped")


def test_ctl_show_json_lists_records_and_the_signature(results):
    r = results["ctl_json"]
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    assert [rec["role"] for rec in listing["records"]] == [Role.TOKEN.label, Role.CCM_TFTP.label]
    assert listing["records"][1]["ipv4"] == "127.0.0.1"
    assert listing["header"]["timestamp"] == TS
    assert listing["signature"] == {"checked": True, "valid": True,
                                    "signer": listing["records"][0]["subject"]}


def test_sgn_and_pki_show_json(results):
    r = results["sgn_json"]
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["header"]["file_name"] == "RingList.xml.sgn" and shown["payload_bytes"] == 7
    assert shown["signature"]["checked"] and shown["signature"]["valid"]
    assert results["pki_issue"].returncode == 0, results["pki_issue"].stderr
    identity = json.loads(results["pki_json"].stdout)
    assert identity["uri"] == "spiffe://ccmsec/keymanager/keymanager" and "keymanager" in identity["names"]


HIDE_SRST = """
import sys
class Hide:  # the environment as if the ccmsec_srst package were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "ccmsec_srst" or name.startswith("ccmsec_srst."):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, Hide())
from ccmsec.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_up_names_a_missing_service_package_before_doing_anything(tmp_path):
    data = tmp_path / "cluster"
    done = subprocess.run([sys.executable, "-c", HIDE_SRST, "up", "-d", "--data", str(data)],
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "missing: Python package ccmsec_srst (role srst)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not data.exists()  # nothing written, nothing started


def _json_error(r) -> dict:
    assert r.stdout == ""
    error = json.loads(r.stderr)
    assert error["exit_code"] == r.returncode
    return error


def test_errors_are_json_under_json(results):
    bad = _json_error(results["ctl_bad_json"])
    assert "signature verification FAILED" in bad["error"]
    usage = _json_error(results["usage_json"])
    assert usage["exit_code"] == 2 and "frobnicate" in usage["error"]
    missing = _json_error(results["show_missing_json"])
    assert "nope" in missing["error"]
    for case in ("status_json", "mode_json_no_cluster"):
        error = _json_error(results[case])
        assert error["exit_code"] == 1 and "cluster" in error["error"]
    assert not results["usage_text"].stderr.startswith("{")  # plain text without --json


def test_an_identity_of_another_ca_is_a_one_line_error_not_a_traceback(tmp_path, capsys):
    """The command line's `cli` identity was issued by another cluster CA, and this folder holds
    only the CA certificate (no key to issue a new identity): gRPC commands say so in one line."""
    import json as _json

    from ccmsec.cli.main import main
    from ccmsec.runtime.identity import client_identity

    other, data = tmp_path / "other", tmp_path / "data"
    client_identity(other)  # the identity and the CA of another cluster
    client_identity(data)
    (data / "pki" / "cluster-ca.key").unlink()  # this folder cannot issue
    shutil.copytree(other / "identities", data / "identities", dirs_exist_ok=True)
    (data / "run").mkdir()
    (data / "run" / "endpoints.json").write_text(_json.dumps(
        {"services": {"capf": {"host": "127.0.0.1", "grpc_port": 9}}}))
    assert main(["capf", "status", "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ccmsec: error: the command line's identity:") and "cluster-ca.key" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert main(["capf", "status", "--data", str(data), "--json"]) == 1
    reply = _json.loads(capsys.readouterr().err)
    assert reply["exit_code"] == 1 and "identity" in reply["error"]


# The words that name a read command (it shows, lists or checks; changes nothing).
READ_VERBS = {"list", "show", "status", "check", "clusters", "ls", "cert", "certificates", "params",
              "log", "registrations", "calls", "watch", "softkeys"}
# Read in the issue's own words (issue 16), each of which must take --json.
NAMED_READS = {"status", "mode show", "token list", "token show", "phones list", "phones show",
               "ctl show", "tftp clusters"}


def _leaves(parser, path=()):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), {o for a in parser._actions for o in a.option_strings}
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaves(sub, (*path, name))


def test_every_read_command_takes_json():
    """Walks the real parser: a read command added without --json fails here (`tls show`,
    `capf check`, `capf cert` and `calls watch` did)."""
    from ccmsec.cli.main import build_parser

    leaves = dict(_leaves(build_parser()))
    assert NAMED_READS <= set(leaves)
    reads = {path for path in leaves if path.split()[-1] in READ_VERBS} | NAMED_READS
    assert {"tls show", "capf check", "capf cert", "calls watch", "calls list"} <= reads
    missing = sorted(path for path in reads if "--json" not in leaves[path])
    assert missing == [], f"read commands without --json: {missing}"


def test_calls_watch_refuses_json_with_table(capsys):
    from ccmsec.cli.main import main

    assert main(["calls", "watch", "--json", "--table", "--data", "/nonexistent"]) == 2
    error = json.loads(capsys.readouterr().err)
    assert error["exit_code"] == 2 and "--table" in error["error"]
