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
from ccmsec.demo import DemoContext, STEPS, step_encrypted_calls, step_failover, step_up


def _run(args) -> int:
    keep = args.keep
    if getattr(args, "data", None) or getattr(args, "attach", False):
        from ccmsec.cli.common import data_dir

        data = data_dir(args)
        temporary = False
    else:
        data = Path(tempfile.mkdtemp(prefix="ccmsec-demo-"))
        temporary = True
    print(f"ccmsec demo: cluster data in {data}")
    started = time.monotonic()
    ctx = DemoContext(data=data, out=print)
    attach = getattr(args, "attach", False)
    ctx.notes["attach"] = attach
    if attach and not ctx.endpoints.get("services"):
        raise CliError(f"--attach: no running cluster described in {data}/run/endpoints.json")
    # --attach walks what the command line can do from outside the cluster; the encrypted-calls
    # step signs its callers' LSCs with the CAPF CA key of the local cluster's data directory,
    # which a container holding only its own identity does not have (DEPLOY-1), and proves them
    # with a loopback capture; the failover step kills a process of the local runner.
    local_only = {step_up, step_encrypted_calls, step_failover}
    steps = [(t, s) for t, s in STEPS if not (attach and s in local_only)]
    if attach:
        print("--attach: skipping the steps that need the local cluster's own files: "
              + "; ".join(t for t, s in STEPS if s in local_only))
    try:
        for number, (title, step) in enumerate(steps, 1):
            print(f"\n[{number}/{len(steps)}] {title}")
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
        if not keep and not attach:
            try:
                runner.down(data, quiet=True)
            except runner.RunnerError as exc:
                print(f"warning: {exc}")
            if temporary:
                shutil.rmtree(data, ignore_errors=True)
    print(f"\nccmsec demo finished in {time.monotonic() - started:.1f}s"
          + ("" if attach else f"; cluster left running from {data}" if keep else "; cluster stopped"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole product end to end on embedded defaults")
    add_data_option(p)
    p.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    p.add_argument("--attach", action="store_true",
                   help="walk the checklist on a cluster that is already running (its endpoints in "
                        "DATA/run/endpoints.json, e.g. compose's `cli` container); start and stop nothing")
    p.set_defaults(func=_run)
