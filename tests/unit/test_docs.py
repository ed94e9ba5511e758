"""The project explains itself: every rule ID it uses is in docs/rules.md, and nothing points
outside the repository for its documentation."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULE_ID = re.compile(r"\b(MODE|DEV|CALL|CERT|AUTH|CTL|ENC|GW|SRST|RST|CHK|LATER)-(\d+)\b")
TEXT_SUFFIXES = {".py", ".md", ".proto", ".toml", ".sh", ".yml", ".yaml", ".txt", ".cfg", ".ini", ""}


def _project_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = []
    for line in out.splitlines():
        path = ROOT / line
        if path.suffix in TEXT_SUFFIXES and path.is_file() and "_pb2" not in path.name \
                and path.name != "uv.lock":
            files.append(path)
    return files


def _explained() -> set[str]:
    text = (ROOT / "docs" / "rules.md").read_text()
    # A rule is explained where it heads a table row: "| MODE-4 | …".
    return {m.group(1) for m in re.finditer(r"^\| ((?:[A-Z]+)-\d+) \|", text, re.M)}


def test_every_rule_id_used_is_explained_in_docs_rules_md():
    explained = _explained()
    used: dict[str, str] = {}
    for path in _project_files():
        for match in RULE_ID.finditer(path.read_text(errors="replace")):
            used.setdefault(match.group(0), str(path.relative_to(ROOT)))
    missing = {rule: where for rule, where in used.items() if rule not in explained}
    assert not missing, f"rule IDs used but not explained in docs/rules.md: {missing}"
    assert len(explained) >= 78  # the whole catalogue (77 rules) and LATER-8, not a handful


def test_nothing_points_outside_the_project():
    offenders = []
    for path in _project_files():
        text = path.read_text(errors="replace")
        # wire-formats / security-rules: the starting documents' names, not files of this project
        for needle in ("../shared/", "/work/shared", "shared/docs/", "shared/seed/", "wire-formats",
                       "security-rules.md"):
            if needle in text and path.name != "test_docs.py":
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


def test_declared_python_versions_are_the_ones_ci_installs_and_tests():
    """Issue 16: the supported Python versions are declared (metadata) and tested in CI. The
    classifiers, `requires-python`, the versions `.ci/run` requires scripts/test-install to find,
    and docs/installing.md name the same versions — a version declared but not tested (or tested
    but not declared) fails here."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [c.rsplit(" :: ", 1)[1] for c in project["classifiers"]
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert declared and declared == sorted(declared, key=lambda v: int(v.split(".")[1]))
    assert project["requires-python"] == f">={declared[0]}"
    ci = re.search(r'CCMSEC_INSTALL_REQUIRE="([^"]+)"', (ROOT / ".ci" / "run").read_text())
    assert ci and ci.group(1).split() == declared
    docs = (ROOT / "docs" / "installing.md").read_text()
    assert f'CCMSEC_INSTALL_REQUIRE="{" ".join(declared)}"' in docs
    listed = ", ".join(declared[:-1]) + f" and {declared[-1]}"
    assert f"Python {listed} are declared" in docs


def _command_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted(ROOT.glob("services/*/README.md")),
            *sorted(ROOT.glob("services/*/*/admin/README.md"))]


def test_every_command_the_docs_name_exists():
    """`ccmsec WORD …` in README.md and the docs names a real command: walks the real parser, so a
    command renamed or never written fails here (docs/capf.md pointed to a `ccmsec audit`)."""
    import argparse

    from ccmsec.cli.main import build_parser

    def subcommands(parser) -> dict:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices
        return {}

    top = build_parser()
    wrong = []
    for doc in _command_docs():
        for span in re.findall(r"`(ccmsec [^`]+)`", doc.read_text()):
            words = re.match(r"ccmsec((?: [a-z][a-z0-9-]*)*)(?=$|[ |\[])", span)
            parser, path = top, ["ccmsec"]
            for word in (words.group(1).split() if words else []):
                choices = subcommands(parser)
                if not choices:
                    break  # a leaf: the rest are its arguments
                if word not in choices:
                    wrong.append(f"{doc.relative_to(ROOT)}: `{span}`: no command {' '.join(path)} {word}")
                    break
                parser, path = choices[word], [*path, word]
    assert wrong == [], "\n".join(wrong)
