"""Untrusted input quoted in a message is escaped and bounded (ccmsec/textsafe.py), and the
`ccmsec` command's errors pass through it: a 100 kB name or one with terminal escapes and newlines
reaches stderr as one short, printable line (real subprocesses, as a user runs the command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ccmsec.textsafe import MESSAGE_LIMIT, SHOWN_LIMIT, UnsafeText, bounded, checked_text, fitted, shown

HUGE = "A" * 100_000
NASTY = "SEP\x1b[2J\x1b]0;owned\x07\nFAKE LOG LINE\r\u202e\x00"


def test_ordinary_text_is_unchanged():
    assert shown("SEP001122334455") == "SEP001122334455"
    assert bounded("no device named SEP001122334455 — see docs/rules.md → DEV-3") == \
        "no device named SEP001122334455 — see docs/rules.md → DEV-3"


def test_control_and_non_ascii_are_escaped():
    assert shown(NASTY) == "SEP\\x1b[2J\\x1b]0;owned\\x07\\nFAKE LOG LINE\\r\\u202e\\x00"
    assert shown("caf\u00e9 \U0001f600") == "caf\\xe9 \\U0001f600"
    assert shown(b"\x00\xffok") == "\\x00\\xffok"
    assert bounded("caf\u00e9\x1b\n") == "caf\u00e9\\x1b\\n"  # printable non-ASCII kept


def test_long_input_is_cut_with_a_marker():
    assert shown(HUGE) == "A" * SHOWN_LIMIT + f"...({100_000 - SHOWN_LIMIT} more characters)"
    assert bounded(HUGE) == "A" * MESSAGE_LIMIT + f"...({100_000 - MESSAGE_LIMIT} more characters)"
    # the limit counts the escaped text: an escape is never split
    assert shown("\x00" * 100, limit=10) == "\\x00\\x00...(98 more characters)"


def test_bounded_counts_kept_non_ascii_by_its_utf8_bytes():
    """gRPC percent-encodes every non-ASCII byte of a status message: 1,024 kept CJK characters or
    emoji were 9-12 kB on the wire, past the 8 kB soft limit, so the refusal failed the call."""
    for ch in ("\u4e2d", "\U0001f600", "\u00e9"):
        text = bounded(ch * 100_000)
        assert text.startswith(ch) and "more characters)" in text
        assert len(text.encode("utf-8")) <= MESSAGE_LIMIT + 40, (ch, len(text.encode("utf-8")))
    assert bounded("\u00e9" * 512) == "\u00e9" * 512  # fits: unchanged


async def test_a_bounded_refusal_quoting_wide_characters_reaches_the_grpc_client():
    import grpc

    from ccmsec.runtime.servicer import abort

    async def refuse(request, context):
        await abort(context, grpc.StatusCode.NOT_FOUND, "no phone named " + "\U0001f600" * 100_000)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.T", {"M": grpc.unary_unary_rpc_method_handler(refuse)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(10):  # past the soft limit gRPC refuses at random; past the hard one always
                try:
                    await channel.unary_unary("/t.T/M")(b"")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()[:200]
                    assert exc.details().startswith("no phone named \U0001f600")
    finally:
        await server.stop(None)


def test_fitted_keeps_the_marker_within_the_size():
    assert fitted("u" * 64, 64) == "u" * 64
    assert fitted("\x1b", 64) == "\\x1b"
    for n in (65, 1000, 10**7):
        text = fitted("u" * n, 64)
        assert len(text) <= 64 and text.startswith("u" * 30) and "more characters" in text, text


def test_anything_else_is_shown_by_its_str():
    assert shown({"k": 1}) == "{'k': 1}"

    class Broken:
        def __str__(self):
            raise RuntimeError

    assert shown(Broken()) == "<Broken>"


def _ccmsec(*args: str, tmp) -> tuple[int, str]:
    env = {**os.environ, "CCMSEC_CONFIG_DIR": str(tmp / "config")}
    env.pop("CCMSEC_CONTEXT", None)
    done = subprocess.run([sys.executable, "-m", "ccmsec.cli.main", *args], capture_output=True,
                          timeout=45, env=env, stdin=subprocess.DEVNULL)
    return done.returncode, done.stderr.decode(errors="replace")


def test_cli_error_quoting_a_huge_or_nasty_argument_is_one_bounded_printable_line(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    data = ["--data", str(tmp_path / "data")]
    nasty = NASTY.rstrip("\x00")  # no NUL in a command line
    cases = [(bad, json_flag, cmd) for bad in (HUGE, nasty) for json_flag in ((), ("--json",))
             # `--ip` is quoted back by the command; `ctl show` quotes its file name
             for cmd in (["pki", "issue", "--role", "tftp", "--out", str(tmp_path / "id"), "--ip", bad],
                         ["ctl", "show", str(tmp_path / bad)])]
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda c: _ccmsec(*c[1], *c[2], *data, tmp=tmp_path), cases))
    for (bad, json_flag, cmd), (rc, err) in zip(cases, runs):
        assert rc in (1, 2), err
        assert "Traceback" not in err, err
        assert err.count("\n") == 1 and err.endswith("\n"), err[:300]
        assert len(err) < MESSAGE_LIMIT + 200, len(err)
        assert all(" " <= c <= "~" for c in err[:-1]), repr(err[:300])
        text = json.loads(err)["error"] if json_flag else err
        if bad is HUGE:
            assert "more characters)" in text, text[:300]
            if "--ip" in cmd:  # the value is cut, the explanation after it stays
                assert text.rstrip().endswith("more characters)' is not an IP address"), text[-200:]
        else:
            assert "\\x1b[2J" in text and "\\nFAKE LOG LINE" in text, text


# --- checked_text: free text on the way in (a device's description, a line's label) ---------------

def test_checked_text_keeps_ordinary_text_of_any_script():
    for text in ("", "Lobby", "受付の電話", "会議室\u3000A", "Café — 2ᵉ", "no\u00a0break", "🙂", "x" * 128):
        assert checked_text("description", text, 128) == text
    assert checked_text("label", "Main line #1 ~", 40, ascii_only=True) == "Main line #1 ~"


@pytest.mark.parametrize("char", ["\x1b", "\n", "\r", "\t", "\x00", "\x07", "\x7f", "\x85", "\x9b",
                                  "\u202e", "\u202a", "\u2066", "\u200b", "\u200e", "\ufeff", "\u00ad",
                                  "\u2028", "\u2029", "\ud800", "\ue000", "\U0010ffff"])
def test_checked_text_refuses_control_and_format_characters_naming_the_field(char):
    with pytest.raises(UnsafeText) as info:
        checked_text("description", f"desk{char}x", 128)
    assert info.value.field == "description"
    message = str(info.value)
    assert message.startswith("description: ") and f"U+{ord(char):04X}" in message
    assert "at position 5" in message and message.isprintable()


def test_checked_text_bounds_the_length_and_takes_only_text():
    with pytest.raises(UnsafeText, match=r"^description: 129 characters, at most 128 allowed$"):
        checked_text("description", "東" * 129, 128)
    for value in (None, 3, b"desk", ["desk"]):
        with pytest.raises(UnsafeText, match="^description: must be text"):
            checked_text("description", value, 128)


def test_checked_text_ascii_only_refuses_what_skinny_cannot_carry():
    for text in ("本線", "Café", "\u00a0"):
        with pytest.raises(UnsafeText, match="^label: .*printable ASCII only"):
            checked_text("label", text, 40, ascii_only=True)
