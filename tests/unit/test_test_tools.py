"""The outside tools the default suite's tests need are ones `scripts/test` checks for (and, with
CCMSEC_INSTALL_TOOLS=1 as CI runs it, installs): a test that skips when its tool is missing must
not be skipped silently in CI for want of a package nobody asked for."""

from __future__ import annotations

import re

from tests.conftest import ROOT

# Needed to run the suite at all, or checked under another name on the same line of scripts/test.
ALWAYS_THERE = {"bash", "uv", "gcc"}
DEFAULT_SUITE = ("unit", "integration", "interop")  # what `scripts/test` runs (e2e, chaos, … are steps of their own)


def test_every_tool_a_default_suite_test_looks_for_is_checked_by_scripts_test():
    """A test that looks a tool up (`shutil.which("ip")`) and skips without it: scripts/test must
    check for that tool, so CI installs it — tests/integration/test_tftp_link_local.py needs `ip`
    (iproute2) and `unshare`, absent from slim images, and was skipped in CI."""
    wanted: dict[str, str] = {}
    for folder in DEFAULT_SUITE:
        for path in sorted((ROOT / "tests" / folder).rglob("*.py")):
            for tool in re.findall(r"shutil\.which\(\"([A-Za-z0-9._-]+)\"\)", path.read_text()):
                wanted.setdefault(tool, str(path.relative_to(ROOT)))
    assert "ip" in wanted and "openssl" in wanted  # the scan finds the look-ups
    script = (ROOT / "scripts" / "test").read_text()
    checked = set(re.findall(r"command -v ([A-Za-z0-9._-]+)", script))
    missing = {tool: where for tool, where in wanted.items() if tool not in checked | ALWAYS_THERE}
    assert not missing, f"scripts/test does not check for (nor install) these tools: {missing}"
