"""`ccmsec demo`: run the product end to end on embedded defaults and say what happened.

The demo walks the security checklist of the source document in order, on a fresh local cluster in
a temporary data directory (or --data DIR), and stops the cluster at the end unless --keep.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from ccmsec.cli.common import CliError, add_data_option
from ccmsec.cluster import runner
from ccmsec.demo import DemoContext, STEPS


def _run(args) -> int:
    keep = args.keep
    if getattr(args, "data", None):
        data = Path(args.data).expanduser().resolve()
        temporary = False
    else:
        data = Path(tempfile.mkdtemp(prefix="ccmsec-demo-"))
        temporary = True
    print(f"ccmsec demo: cluster data in {data}")
    started = time.monotonic()
    ctx = DemoContext(data=data, out=print)
    try:
        for number, (title, step) in enumerate(STEPS, 1):
            print(f"\n[{number}/{len(STEPS)}] {title}")
            t0 = time.monotonic()
            try:
                result = step(ctx)
                if asyncio.iscoroutine(result):
                    asyncio.run(result)
            except (runner.RunnerError, CliError):
                raise
            except Exception as exc:  # a step's failure is one readable line, not a traceback
                raise CliError(f"demo step {number} ({title}) failed: {exc}") from None
            print(f"    done in {time.monotonic() - t0:.1f}s")
    except runner.RunnerError as exc:
        raise CliError(str(exc)) from None
    finally:
        if not keep:
            try:
                runner.down(data, quiet=True)
            except runner.RunnerError as exc:
                print(f"warning: {exc}")
            if temporary:
                shutil.rmtree(data, ignore_errors=True)
    print(f"\nccmsec demo finished in {time.monotonic() - started:.1f}s"
          + (f"; cluster left running from {data}" if keep else "; cluster stopped"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole product end to end on embedded defaults")
    add_data_option(p)
    p.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    p.set_defaults(func=_run)
