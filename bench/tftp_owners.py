"""The owners the tftp-signer asks (issue 9 §5), for benches that run the TFTP server alone: call
control's, CAPF's and the CTL Provider's real servicers behind the real authorization gate on
mutual TLS (tests/tftpowners.py), in a process of their own, on the bench's database, at the
addresses given — until terminated.

    python bench/tftp_owners.py DATA_DIR '{"callmanager": "127.0.0.85", "capf": "127.0.0.86", "ctl-provider": "127.0.0.87"}'
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.tftpowners import tftp_owners  # noqa: E402


async def main(data: Path, peers: dict[str, str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with tftp_owners(data, f"sqlite+aiosqlite:///{data / 'ccmsec.db'}", peers=peers):
        print("owners serving", flush=True)
        await stop.wait()


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(Path(sys.argv[1]), json.loads(sys.argv[2])))
