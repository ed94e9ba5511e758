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
from ccmsec.demo import DemoContext, STEPS, step_up


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
    # --attach starts nothing: every other step runs against the running cluster through what the
    # command line has from outside it (the administration API, the published authenticated ports,
    # the context's cli identity; for the failover, the Docker engine the cluster runs on). A step
    # that cannot be done from where it runs says why (ccmsec.demo).
    steps = [(t, s) for t, s in STEPS if not (attach and s is step_up)]
    if attach:
        print(f"--attach: the running cluster of {data}/run/endpoints.json; nothing is started or stopped")
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
                   help="walk the checklist on a cluster that is already running: a local `ccmsec up` "
                        "cluster (--data), a compose cluster through a context from `compose client-bundle` "
                        "(the failover step uses the docker command), or inside compose's `cli` container; "
                        "start and stop nothing")
    p.set_defaults(func=_run)
