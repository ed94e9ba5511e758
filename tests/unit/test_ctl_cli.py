"""`ccmsec ctl show FILE`: the main outcomes as real subprocesses, the rest through `main()`.

The CLI starts slowly (it imports every command group), so the subprocess cases run concurrently
in one module fixture and each test checks one outcome.
"""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from ccmsec.cli.main import main
from ccmsec.formats.ctl import Role, build_ctl, record_from_certificate
from ccmsec.pki.ca import create_ca, issue_with_new_key, name
from ccmsec.pki.tokens import FileSigner

TS = 1_700_000_000


def run(*args, data_dir):
    return subprocess.run([sys.executable, "-m", "ccmsec.cli.main", *args, "--data", str(data_dir)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctlcli")
    ca = create_ca(name("CA"))
    token = FileSigner.from_issued(issue_with_new_key(ca, name("SAST-cli")))
    cm = issue_with_new_key(ca, name("cm1")).cert
    good = build_ctl([record_from_certificate(token.certificate, Role.TOKEN),
                      record_from_certificate(cm, Role.CCM_TFTP, "cm1", "127.0.0.1")], token, TS)
    tampered = bytearray(good)
    tampered[-20] ^= 0xFF  # inside the last record's certificate
    bad_signature = bytearray(good)
    bad_signature[good.index(b"\x0c\x01\x00") + 10] ^= 0x01  # a byte of the signature itself
    files = {
        "good": good, "tampered": bytes(tampered), "bad_signature": bytes(bad_signature),
        "truncated": good[:-100], "foreign": b"<device/>",
    }
    for case, content in files.items():
        (tmp / f"{case}.tlv").write_bytes(content)
    cases = ["good", "tampered", "truncated", "foreign"]
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {c: pool.submit(run, "ctl", "show", str(tmp / f"{c}.tlv"), data_dir=tmp)
                   for c in cases}
        done = {c: f.result() for c, f in futures.items()}
    done["dir"] = tmp
    return done


def in_process(capsys, *args):
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_prints_header_records_and_valid_signature(results):
    result = results["good"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Signer Name:       CN=SAST-cli;OU=ccmsec;O=ccmsec" in out
    assert "SAST (0)" in out and "CCM+TFTP (2)" in out and "127.0.0.1" in out
    assert "SHA-256:" in out and "SHA-1:" in out
    assert "Signature:         valid (signed by token CN=SAST-cli" in out


def test_show_tampered_file_fails_naming_the_problem(results):
    result = results["tampered"]
    assert result.returncode == 1
    assert "signature verification FAILED" in result.stderr or "not a valid CTL" in result.stderr
    assert "Traceback" not in result.stderr


def test_show_bad_signature_fails(results, capsys):
    code, out, err = in_process(capsys, "ctl", "show", str(results["dir"] / "bad_signature.tlv"))
    assert code == 1 and "Record 2 of 2" in out
    assert "signature verification FAILED: bad signature" in err


@pytest.mark.parametrize("case", ["truncated", "foreign"])
def test_show_truncated_or_foreign_file_fails(results, case):
    result = results[case]
    assert result.returncode == 1 and "not a valid CTL file" in result.stderr
    assert "Traceback" not in result.stderr


def test_show_missing_file_fails(results, capsys):
    code, _, err = in_process(capsys, "ctl", "show", str(results["dir"] / "absent.tlv"))
    assert code == 1 and "cannot read" in err


def test_show_no_verify_lists_without_checking(results, capsys):
    code, out, _ = in_process(capsys, "ctl", "show", "--no-verify",
                              str(results["dir"] / "bad_signature.tlv"))
    assert code == 0 and "not checked" in out
