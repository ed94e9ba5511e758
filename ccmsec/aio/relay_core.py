"""The relay's C packet path (`relay_core.c`): built with the machine's C compiler when a gateway
starts, loaded through cffi's ABI mode, or not at all — then the relay runs its Python path.

Why C: per relayed packet the Python path costs ~26–34 µs here (one `recv_into`, two libsrtp
calls through cffi, header work, one `sendto`, all through the interpreter); the kernel and
libsrtp need ~14 µs of it. The C path does the same steps with the same counters and refusals
and leaves everything unusual to Python (see relay_core.c).

`CCMSEC_RELAY_CORE` chooses: `auto` (default: C when it builds, else Python, saying why),
`c` (C or the gateway does not start), `python` (never build it).
No Python headers are needed: only `cc` (or `$CC`) and the C library's headers.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cffi

from ccmsec.media.srtp import _REASON_BY_STATUS, MAX_SRTP_PACKET, Refusal, _ffi as srtp_ffi, _lib as srtp_lib
from ccmsec.media.rtp import MAX_PACKET

log = logging.getLogger("ccmsec.media")

SOURCE = Path(__file__).with_name("relay_core.c")
CHOICES = ("auto", "c", "python")
BUILD_TIMEOUT = 120.0
_REASON_CODE = {Refusal.AUTHENTICATION: 0, Refusal.REPLAY: 1, Refusal.MALFORMED: 2}


class RelayCoreUnavailable(RuntimeError):
    """The C path was required (`CCMSEC_RELAY_CORE=c`) and could not be built or loaded."""


@dataclass
class RelayCore:
    ffi: cffi.FFI
    lib: object
    config: object      # struct relay_config *, kept alive with what it points to
    _keep: tuple

    def address(self, cdata_of_srtp) -> int:
        return int(srtp_ffi.cast("uintptr_t", cdata_of_srtp))


def _declarations(source: str) -> str:
    begin = source.index("/* RELAY_CDEF_BEGIN */") + len("/* RELAY_CDEF_BEGIN */")
    return source[begin:source.index("/* RELAY_CDEF_END */")]


def choice() -> str:
    value = os.environ.get("CCMSEC_RELAY_CORE", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"CCMSEC_RELAY_CORE={value!r}: use one of {', '.join(CHOICES)}")
    return value


def build(source: Path = SOURCE) -> tuple[RelayCore | None, str]:
    """Compile and load the C path; (core, "") or (None, why not)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "no C compiler (cc) on this machine"
    text = source.read_text()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ccmsec-relay-") as tmp:
        library = Path(tmp) / "relay_core.so"
        try:
            done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)],
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{compiler} could not run: {exc}"
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["(no message)"])[0]
            return None, f"{compiler} failed: {first[:300]}"
        ffi = cffi.FFI()
        ffi.cdef(_declarations(text))
        try:
            lib = ffi.dlopen(str(library))   # mapped now: the file may go with the directory
        except OSError as exc:
            return None, f"the built library would not load ({exc}); is {tmp} on a noexec mount?"
    reasons = bytes(_REASON_CODE[r] for r in _REASON_BY_STATUS)
    table = ffi.new("uint8_t[]", reasons)
    config = ffi.new("struct relay_config *")
    config.protect = ffi.cast("relay_srtp_fn", int(srtp_ffi.cast("uintptr_t", srtp_ffi.addressof(srtp_lib, "srtp_protect"))))
    config.unprotect = ffi.cast("relay_srtp_fn",
                                int(srtp_ffi.cast("uintptr_t", srtp_ffi.addressof(srtp_lib, "srtp_unprotect"))))
    config.reason_by_status = table
    config.statuses = len(reasons)
    config.max_srtp_packet = MAX_SRTP_PACKET
    config.max_rtp_packet = MAX_PACKET
    log.info("relay packet path: C", extra={"built_in_ms": round(1000 * (time.monotonic() - started))})
    return RelayCore(ffi, lib, config, (table,)), ""


_loaded: tuple[RelayCore | None, str] | None = None


def load(wanted: str | None = None) -> RelayCore | None:
    """The C path for this process as `wanted` (default: `CCMSEC_RELAY_CORE`) asks — built once —
    or None for Python's path. Blocks while the compiler runs (~0.3 s): call it off the loop."""
    global _loaded
    wanted = choice() if wanted is None else wanted
    if wanted not in CHOICES:
        raise ValueError(f"relay core {wanted!r}: use one of {', '.join(CHOICES)}")
    if wanted == "python":
        return None
    if _loaded is None:
        _loaded = build()
        if _loaded[0] is None:
            log.warning("relay packet path: Python (the C path did not build: %s)", _loaded[1])
    core, why = _loaded
    if core is None and wanted == "c":
        raise RelayCoreUnavailable(f"CCMSEC_RELAY_CORE=c but the relay's C path is unavailable: {why}")
    return core
