"""Every child dies with its service: the tftp-signer's signing-pool workers (which hold the
signing key) exit when the service process is killed with SIGKILL — nothing closes their job
queue then, so without a watch they would live on as orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SERVICE = textwrap.dedent("""
    import asyncio, os, sys
    from ccmsec.pki.ca import create_ca, issue_with_new_key, name
    from ccmsec.pki.tokens import FileSigner
    from ccmsec_tftp_signer.signing import SigningPool

    async def main():
        signer = FileSigner.from_issued(issue_with_new_key(create_ca(name("CA")), name("tftp")))
        pool = SigningPool(signer, workers=2)
        await pool.warm_up()
        signed = await pool.sign_many([(f"f{i}", b"x" * 100) for i in range(120)], 1_700_000_000)
        assert len(signed) == 120
        print("ready", flush=True)
        await asyncio.sleep(120)

    asyncio.run(main())
""")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_signing_pool_workers_exit_when_the_service_is_killed():
    proc = subprocess.Popen([sys.executable, "-c", SERVICE], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = [p for p in children_of(proc.pid)
                   if "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
        assert len(workers) >= 2, children_of(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while any(alive(w) for w in workers):
            assert time.monotonic() < deadline, [w for w in workers if alive(w)]
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
