"""`ccmsec device ...` run as a real subprocess against the API served over HTTPS."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys

from tests.integration.test_admin_support import (  # noqa: F401  (fixtures)
    READONLY_PASSWORD,
    cheap_argon2,
    device_resets,
    stack,
)

SEP = "SEP00AABBCCDDEE"


async def ccmsec(stack, *args: str, data=None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CCMSEC_DATA_DIR"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ccmsec.cli.main", "--data", str(data or stack.data_dir), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)  # generous: the machine is shared
    return proc.returncode, out.decode(), err.decode()


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("ccmsec: error: "), err
    return lines[0]


async def test_cli_device_lifecycle_with_table_and_json_output(stack):
    stack.write_endpoints()
    rc, out, err = await ccmsec(stack, "device", "add", SEP, "--model", "7970",
                                "--description", "front desk")
    assert rc == 0, err
    assert SEP in out
    rc, out, err = await ccmsec(stack, "device", "add", "lab-7912", "--model", "7912", "--pool", "LAB")
    assert rc == 1 and "no device pool named LAB (HTTP 404)" in one_line_error(err)  # nothing added
    assert (await stack.admin().post("/api/v1/pools", json={"name": "LAB", "cm_group": ["cm1"]})).status_code == 201
    await ccmsec(stack, "device", "add", "lab-7912", "--model", "7912", "--pool", "LAB")
    rc, out, _ = await ccmsec(stack, "device", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "MODEL", "SECURITY", "POOL", "VERSION", "DESCRIPTION"]
    assert [line.split()[0] for line in lines[1:]] == [SEP, "lab-7912"]
    # aligned: every column starts at the same offset on every line
    starts = {re.search(r"\s{2,}(\S)", line).start(1) for line in lines}
    assert len(starts) == 1, out
    rc, out, _ = await ccmsec(stack, "device", "list", "--json")
    assert [d["name"] for d in json.loads(out)] == [SEP, "lab-7912"]
    rc, out, _ = await ccmsec(stack, "device", "show", SEP)
    assert "front desk" in out and "non-secure" in out
    rc, out, _ = await ccmsec(stack, "device", "remove", "lab-7912")
    assert rc == 0 and "removed lab-7912" in out
    rc, out, _ = await ccmsec(stack, "device", "list", "--json")
    assert [d["name"] for d in json.loads(out)] == [SEP]


async def test_cli_set_security_mode5_then_allowed_and_dev3_refusal_names_rules(stack):
    stack.write_endpoints()
    await ccmsec(stack, "device", "add", SEP, "--model", "7970")
    rc, out, err = await ccmsec(stack, "device", "set-security", SEP, "encrypted")
    assert rc != 0 and out == ""
    assert "MODE-5" in one_line_error(err)
    await stack.set_ctl_present()
    rc, out, err = await ccmsec(stack, "device", "set-security", SEP, "encrypted", "--json")
    assert rc == 0, err
    assert json.loads(out)["security_mode"] == "encrypted"
    assert device_resets(stack.events) == [([SEP], "RST-1", "reset")]
    rc, _, err = await ccmsec(stack, "device", "add", "SEP0000000000AA", "--model", "7902",
                              "--security", "authenticated")
    assert rc != 0 and "DEV-3" in one_line_error(err)


async def test_cli_errors_are_one_line_without_traceback(stack, tmp_path):
    from ccmsec.pki import ca as pki

    stack.write_endpoints()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    bad = tmp_path / "bad-pw"
    bad.write_text("wrong\n")
    ro = tmp_path / "ro-pw"
    ro.write_text(READONLY_PASSWORD + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other.crt"
    other.write_bytes(pki.create_ca(pki.name("other")).pem)
    cases = [  # (arguments, data dir, what the one-line error must say); run side by side
        (["list", "--url", f"https://127.0.0.1:{dead}"], None, "unreachable"),
        (["list", "--password-file", str(bad)], None, "401"),
        (["add", SEP, "--model", "7970", "--user", "viewer", "--password-file", str(ro)], None, "403"),
        (["show", "SEP000000000001"], None, "404"),
        (["add", "bad/name", "--model", "7970"], None, "422"),
        (["list"], empty, "endpoints.json"),
        (["list", "--ca-file", str(other)], None, "verify"),
        (["list", "--url", "http://127.0.0.1:1"], None, "https://"),
    ]
    results = await asyncio.gather(*(ccmsec(stack, "device", *args, data=data)
                                     for args, data, _ in cases))
    for (args, _, expected), (rc, out, err) in zip(cases, results):
        assert rc != 0 and out == "", (args, out, err)
        assert expected in one_line_error(err), (args, err)
    rc, out, _ = await ccmsec(stack, "device", "list", "--user", "viewer", "--password-file", str(ro))
    assert rc == 0 and out.strip() == "no devices"


async def test_cli_device_add_with_a_control_character_in_the_description_is_refused(stack):
    """The API refuses control characters in a description at input (`ccmsec/textsafe.py`
    `checked_text`): `device add --description` gets one printable error line naming the field,
    and no device is added. Japanese text goes through unchanged."""
    stack.write_endpoints()
    rc, out, err = await ccmsec(stack, "device", "add", SEP, "--model", "7970",
                                "--description", "lobby\x1b[2J\nFAKE")
    assert rc != 0 and out == "", (out, err)
    line = one_line_error(err)
    assert "description: control character \\x1b (U+001B)" in line and "\x1b" not in err, err
    rc, out, _ = await ccmsec(stack, "device", "list")
    assert rc == 0 and out.strip() == "no devices"
    rc, out, err = await ccmsec(stack, "device", "add", SEP, "--model", "7970", "--description", "受付の電話")
    assert rc == 0, err
    rc, out, err = await ccmsec(stack, "device", "show", SEP)
    assert rc == 0 and "受付の電話" in out, (out, err)


async def test_cli_tables_escape_what_was_stored(stack):
    """A description may hold anything when it was stored before input was checked (or by hand in
    the database): `device list` and `device show` print its control characters escaped, so it
    cannot drive the reader's terminal."""
    from sqlalchemy import update

    from ccmsec.db.devices import Device
    stack.write_endpoints()
    r = await stack.admin().post("/api/v1/devices", json={"name": SEP, "model": "7970"})
    assert r.status_code == 201, r.text
    async with stack.sessionmaker() as session, session.begin():  # SQL, below the model's check
        await session.execute(update(Device.__table__).where(Device.__table__.c.name == SEP).values(
            description="lobby\x1b[2J\x1b]0;owned\x07\nFAKE"))
    for cmd in (["device", "list"], ["device", "show", SEP]):
        rc, out, err = await ccmsec(stack, *cmd)
        assert rc == 0, err
        assert "\x1b" not in out and "\x07" not in out, repr(out)
        assert "lobby\\x1b[2J\\x1b]0;owned\\x07\\nFAKE" in out, out
