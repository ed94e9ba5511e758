"""Generate the one Python package of contracts from the .proto files.

    uv run python proto/generate.py            # regenerate in place
    uv run python proto/generate.py --check    # exit 1 if the committed code is out of date

Every service imports `ccmsec_proto`; nothing is copied into the services.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "ccmsec_proto"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted((HERE / PACKAGE).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{HERE}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(HERE)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / PACKAGE).glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = sorted((HERE / PACKAGE).glob("*_pb2*.py*"))
        if args.check:
            names_fresh = {p.name for p in fresh}
            names_committed = {p.name for p in committed}
            stale = sorted(names_fresh ^ names_committed)
            stale += [p.name for p in fresh
                      if p.name in names_committed and not filecmp.cmp(p, HERE / PACKAGE / p.name, shallow=False)]
            if stale:
                print("generated code is out of date with the .proto files: " + ", ".join(stale))
                print("run: uv run python proto/generate.py")
                return 1
            print(f"{len(fresh)} generated files up to date")
            return 0
        for old in committed:
            old.unlink()
        for p in fresh:
            shutil.copy2(p, HERE / PACKAGE / p.name)
        print(f"wrote {len(fresh)} files to {HERE / PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
