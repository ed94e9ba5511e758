"""`ccmsec context add|use|list|show|remove`: named clusters for the command line (ccmsec.contexts).

A context is the administration API's address, the cluster CA certificate that verifies it and the
credentials (the password file 0600). With one in use, the administration commands (`device`,
`line`, `pool`, `srst`, `mode` …) go to that cluster instead of the local runner's. A context added
from a compose cluster's client bundle (`--client-bundle`) carries the command line's own `cli`
identity (and its NATS nkey) and the published gRPC and NATS ports as well, so `phones`, `capf`,
`ctl`, `tftp` … reach that cluster's services too (mutual TLS), and the demo its event bus.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ccmsec.cli.common import CliError, read_password


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("context", help="named clusters (administration API address, CA, credentials)")
    actions = group.add_subparsers(dest="context_command", metavar="ACTION")
    actions.required = True
    add = actions.add_parser("add", help="add or replace a context")
    add.add_argument("name")
    add.add_argument("--url", help="administration API, e.g. https://127.0.0.1:8443 (default: the bundle's)")
    add.add_argument("--ca-file", type=Path, help="the cluster CA certificate (PEM)")
    add.add_argument("--client-bundle", metavar="FILE",
                     help="a compose cluster's bundle ('-': standard input), from `docker-compose run "
                          "--rm -T cli compose client-bundle`: CA, admin password, the cli identity "
                          "(and its NATS nkey) and the published ports — the gRPC and bus commands "
                          "then reach it too")
    add.add_argument("--user", default="admin")
    add.add_argument("--password-file", help="file holding the password ('-': standard input)")
    add.add_argument("--use", action="store_true", help="also make it the context in use")
    add.set_defaults(func=_add)
    use = actions.add_parser("use", help="the context the next commands use (--none: the local cluster)")
    use.add_argument("name", nargs="?")
    use.add_argument("--none", action="store_true")
    use.set_defaults(func=_use)
    lst = actions.add_parser("list", help="every context; * marks the one in use")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)
    show = actions.add_parser("show", help="one context (never its password)")
    show.add_argument("name", nargs="?")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)
    rm = actions.add_parser("remove", help="forget a context and its credentials")
    rm.add_argument("name")
    rm.set_defaults(func=_remove)


def _errors(fn):
    from ccmsec import contexts

    def run(args):
        try:
            return fn(args, contexts)
        except contexts.ContextError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"{exc.filename or ''}: {exc.strerror or exc}") from None
    return run


@_errors
def _add(args, contexts) -> int:
    if args.client_bundle is not None:
        return _add_bundle(args, contexts)
    if args.url is None or args.ca_file is None:
        raise CliError("give --url and --ca-file (or --client-bundle)")
    try:
        with open(args.ca_file, "rb") as fh:
            ca_pem = fh.read(contexts.MAX_FILE + 1)
    except OSError as exc:
        raise CliError(f"cannot read {args.ca_file}: {exc.strerror}") from None
    if len(ca_pem) > contexts.MAX_FILE:
        raise CliError(f"{args.ca_file} is larger than {contexts.MAX_FILE} bytes")
    password = read_password(args, prompt=f"Password of {args.user}: ")
    ctx = contexts.save(args.name, args.url, ca_pem, password, args.user)
    if args.use:
        contexts.use(ctx.name)
    print(f"context {ctx.name}: {ctx.url} as {ctx.user} (credentials in {ctx.folder}, 0600)"
          + (" — in use" if args.use else ""))
    return 0


def _add_bundle(args, contexts) -> int:
    import sys

    if args.ca_file is not None or args.password_file is not None:
        raise CliError("--client-bundle carries the CA and the password: give neither --ca-file nor --password-file")
    source = sys.stdin if args.client_bundle == "-" else open(args.client_bundle, encoding="utf-8")
    try:
        with source:
            raw = source.read(4 * contexts.MAX_FILE + 1)
    except UnicodeDecodeError:
        raise CliError("the client bundle is not UTF-8 text (make it with `docker-compose run --rm -T "
                       "cli compose client-bundle`)") from None
    if len(raw) > 4 * contexts.MAX_FILE:
        raise CliError("the client bundle is too large")
    try:
        bundle = json.loads(raw)
    except ValueError:
        raise CliError("the client bundle is not JSON (make it with `docker-compose run --rm -T cli "
                       "compose client-bundle`)") from None
    ctx = contexts.save_bundle(args.name, bundle, url=args.url)
    if args.use:
        contexts.use(ctx.name)
    print(f"context {ctx.name}: {ctx.url} as {ctx.user}, gRPC with the cli identity (credentials in "
          f"{ctx.folder}, 0600)" + (" — in use" if args.use else ""))
    return 0


@_errors
def _use(args, contexts) -> int:
    if args.none == bool(args.name):
        raise CliError("give a context name, or --none for the local cluster")
    contexts.use(None if args.none else args.name)
    print(f"using context {args.name}" if args.name else "using the local cluster (no context)")
    return 0


@_errors
def _list(args, contexts) -> int:
    current = contexts.current_name()
    rows = [contexts.load(n) for n in contexts.names()]
    if args.json:
        print(json.dumps([{"name": c.name, "url": c.url, "user": c.user, "current": c.name == current}
                          for c in rows]))
        return 0
    for c in rows:
        print(f"{'*' if c.name == current else ' '} {c.name:20} {c.url:32} {c.user}")
    if not rows:
        print("no contexts (add one with `ccmsec context add`)")
    return 0


@_errors
def _show(args, contexts) -> int:
    name = args.name or contexts.current_name()
    if not name:
        raise CliError("no context in use; name one")
    c = contexts.load(name)
    doc = {"name": c.name, "url": c.url, "user": c.user, "ca_file": str(c.cafile),
           "password_file": str(c.password_file), "current": name == contexts.current_name(),
           "grpc": str(c.cluster_dir) if c.reaches_grpc else None}
    print(json.dumps(doc) if args.json else "\n".join(f"{k}: {v}" for k, v in doc.items()))
    return 0


@_errors
def _remove(args, contexts) -> int:
    contexts.remove(args.name)
    print(f"context {args.name} removed")
    return 0
