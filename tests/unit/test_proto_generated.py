"""The one generated contracts package must match the .proto files it is generated from."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_proto_files():
    result = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_import_the_shared_package_not_a_copy():
    copies = [p for p in (ROOT / "services").rglob("*_pb2*.py")]
    assert copies == [], f"generated stubs copied into services: {copies}"
