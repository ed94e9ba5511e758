"""`ccmsec compose render [--check] [--output FILE]`: docker-compose.yml and Dockerfiles from the topology."""

from __future__ import annotations

import sys
from pathlib import Path

from ccmsec.cli.common import CliError
from ccmsec.cluster import compose
from ccmsec.fsutil import atomic_write


def project_root() -> Path:
    """The checkout this ccmsec package comes from, else the current directory."""
    here = Path(compose.__file__).resolve().parents[2]
    if (here / "pyproject.toml").exists() and (here / "services").is_dir():
        return here
    return Path.cwd()


def _render(args) -> int:
    root = (args.root or project_root()).resolve()
    to_stdout = args.output is not None and str(args.output) == "-"
    compose_path = None if args.output is None or to_stdout else args.output.resolve()
    problems = compose.validate_compose(compose.render_compose())
    if problems:  # the topology itself is wrong: say so rather than write a broken file
        raise CliError("rendered compose file has problems: " + "; ".join(problems))
    if args.check:
        stale = compose.stale_files(root, compose_path)
        if stale:
            raise CliError("generated files are out of date (run `ccmsec compose render`): " + ", ".join(stale))
        print("generated files are up to date")
        return 0
    if to_stdout:
        sys.stdout.write(compose.render_compose())
        return 0
    for rel, text in compose.rendered_files().items():
        path = compose_path if (rel == "docker-compose.yml" and compose_path) else root / rel
        try:
            if path.exists() and path.read_text() == text:
                continue
            atomic_write(path, text.encode())
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
        print(f"wrote {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("compose", help="docker-compose.yml and Dockerfiles rendered from the topology")
    csub = p.add_subparsers(dest="compose_command", metavar="ACTION")
    csub.required = True
    r = csub.add_parser("render", help="write docker-compose.yml, services/*/Dockerfile and .dockerignore")
    r.add_argument("--check", action="store_true",
                   help="write nothing; fail if a committed file differs from the rendered one")
    r.add_argument("--output", type=Path, default=None,
                   help="compose file to write or check (default: ROOT/docker-compose.yml; '-' = stdout)")
    r.add_argument("--root", type=Path, default=None,
                   help="project root holding services/ (default: this checkout)")
    r.set_defaults(func=_render)
