"""Structured JSON logs: one object per line, with the service and node on every record.

Every line a service writes to its standard error is JSON:
- Python logging goes through `JsonFormatter`;
- anything else written to `sys.stderr`/`sys.stdout` (a stray print, a traceback of a crash) is
  wrapped line by line into a record with logger `stderr`/`stdout`;
- output of native code written straight to file descriptor 2 — gRPC core (`E0000 ... file.cc:12]
  message`) and absl — is read from a pipe and wrapped into records with logger `grpc.core`
  (level taken from the line's I/W/E/F prefix) or `native`. NATS client output is Python logging
  (logger `nats`), already JSON.

A trace id ties the lines of one piece of work together across processes: it lives in a context
variable, rides gRPC calls as metadata `x-ccmsec-trace-id` (client interceptor in
`ccmsec.runtime.grpcio`, server side in `ccmsec.runtime.authz`), events as the NATS header
`Ccmsec-Trace-Id` (`ccmsec.runtime.bus`) and administration API requests as `X-Request-Id`;
every record logged while it is set has `"trace_id"`.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import io
import itertools
import json
import logging
import os
import re
import sys
import threading
import time

_RESERVED = set(vars(logging.makeLogRecord({})))

TRACE_METADATA_KEY = "x-ccmsec-trace-id"   # gRPC metadata keys are lower case
TRACE_HEADER = "Ccmsec-Trace-Id"           # NATS message header
REQUEST_ID_HEADER = "X-Request-Id"         # administration API (HTTP)
_TRACE = contextvars.ContextVar("ccmsec_trace_id", default="")
TRACE_ID = _TRACE   # for the per-call hot path (`authz`): set/reset (a str or a LazyTraceId)
_TRACE_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_LINE = 16 * 1024  # a wrapped foreign line longer than this is cut


def _trace_prefix() -> str:
    return os.urandom(8).hex()


# A trace id is a per-process random prefix and a counter (32 hex digits like a uuid4's): unique
# across processes without drawing 16 random bytes per gRPC call (uuid4 was a quarter of the
# runtime's per-call cost, docs/performance.md). A forked child draws its own prefix.
_TRACE_PREFIX = _trace_prefix()
_TRACE_SEQ = itertools.count(1)


def _reseed_trace_ids() -> None:
    global _TRACE_PREFIX, _TRACE_SEQ
    _TRACE_PREFIX, _TRACE_SEQ = _trace_prefix(), itertools.count(1)


os.register_at_fork(after_in_child=_reseed_trace_ids)


def new_trace_id() -> str:
    return f"{_TRACE_PREFIX}{next(_TRACE_SEQ) & 0xFFFFFFFFFFFFFFFF:016x}"


def clean_trace_id(value) -> str:
    """A trace id from outside (metadata, header) if it is a sane token, else "" (never logged raw)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    value = str(value or "").strip()
    return value if _TRACE_RE.fullmatch(value) else ""


class LazyTraceId:
    """A trace id found only when something reads it (a log line, an event, an outgoing call) —
    most gRPC calls never do, and reading a call's metadata costs ~20 us (docs/performance.md).
    `find` returns the caller's id or ""; `fallback` is the id to use then (made up front, so two
    threads reading at once agree)."""

    __slots__ = ("_find", "_value")

    def __init__(self, find, fallback: str):
        self._find, self._value = find, fallback

    def value(self) -> str:
        find = self._find
        if find is not None:
            self._find = None
            try:
                found = find()
            except Exception:   # the call's metadata is gone: keep the fallback
                found = ""
            if found:
                self._value = found
        return self._value


def _resolved(trace) -> str:
    return trace if type(trace) is str else trace.value()


def current_trace_id() -> str:
    return _resolved(_TRACE.get())


@contextlib.contextmanager
def bind_trace_id(trace_id: str | None = None):
    """Run a block under `trace_id` (a new one when None)."""
    token = _TRACE.set(trace_id or new_trace_id())
    try:
        yield current_trace_id()
    finally:
        try:
            _TRACE.reset(token)
        except ValueError:  # an async generator closed from another context: nothing to undo there
            pass


def _ts(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, node: str):
        super().__init__()
        self.service, self.node = service, node

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": _ts(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "node": self.node,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace = _resolved(_TRACE.get())
        if trace:
            doc["trace_id"] = trace
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


# gRPC core / absl: "E0000 00:00:1700000000.123456   42 file.cc:12] text" (also "E1130 12:00:00...")
_NATIVE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]]+)\] ?(.*)$")
_NATIVE_LEVEL = {"I": "info", "W": "warning", "E": "error", "F": "critical"}


class _LineWrapper:
    """Turns raw text lines into JSON records and writes them to a binary stream."""

    def __init__(self, out, service: str, node: str):
        self.out, self.service, self.node = out, service, node
        self.lock = threading.Lock()

    def record(self, line: str, logger: str, level: str = "info", **extra) -> None:
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + "…"
        doc = {"ts": _ts(time.time()), "level": level, "service": self.service, "node": self.node,
               "logger": logger, "msg": line, **extra}
        self.write((json.dumps(doc, ensure_ascii=False) + "\n").encode())

    def native(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if line.startswith("{") and line.endswith("}"):
            try:  # a child process of ours (pool worker) logging JSON already: pass it on as is
                json.loads(line)
                self.write((line + "\n").encode())
                return
            except ValueError:
                pass
        m = _NATIVE.match(line)
        if m:
            self.record(m.group(3), "grpc.core", _NATIVE_LEVEL[m.group(1)], source=m.group(2))
        else:
            self.record(line, "native", "warning")

    def write(self, data: bytes) -> None:
        with self.lock:
            try:
                self.out.write(data)
                self.out.flush()
            except (OSError, ValueError):
                pass


class _JsonTextStream(io.TextIOBase):
    """sys.stderr / sys.stdout replacement: complete lines become JSON records at once (so a crash's
    traceback is never lost in a buffer)."""

    def __init__(self, wrapper: _LineWrapper, logger: str, level: str):
        self.wrapper, self.logger, self.level = wrapper, logger, level
        self._buf = ""
        self._block: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.wrapper.record(line, self.logger, self.level)
        if len(self._buf) > MAX_LINE:
            self.wrapper.record(self._buf, self.logger, self.level)
            self._buf = ""
        return len(text)

    def flush(self) -> None:
        if self._buf:
            self.wrapper.record(self._buf, self.logger, self.level)
            self._buf = ""

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("JSON log stream has no file descriptor")


class _NativeStderr:
    """File descriptor 2 redirected into a pipe; a thread wraps what native code writes there."""

    def __init__(self, wrapper: _LineWrapper):
        self.wrapper = wrapper
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._reader = os.fdopen(read_fd, "rb", buffering=0)
        self.thread = threading.Thread(target=self._pump, name="native-stderr", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = self._reader.read(65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                self.wrapper.native(line.decode("utf-8", "replace"))
            if len(pending) > MAX_LINE:
                self.wrapper.native(pending.decode("utf-8", "replace"))
                pending = b""
        if pending:
            self.wrapper.native(pending.decode("utf-8", "replace"))

    def close(self) -> None:
        """At exit: close our end of fd 2 and let the thread write what is left."""
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            return
        self.thread.join(timeout=1.0)


class _WrapperHandler(logging.Handler):
    """Logging records, written under the same lock as the wrapped foreign lines."""

    def __init__(self, wrapper: _LineWrapper):
        super().__init__()
        self.wrapper = wrapper

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.wrapper.write((self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:
            self.handleError(record)


_CAPTURE: dict = {}


def json_log_fd() -> int | None:
    """The file descriptor this process's JSON records go to when it captures its standard error
    (`setup_logging(capture=True)`), else None. A child process that writes JSON records itself
    (and captures its own fd 2) can be given this as its standard error: its lines then go
    straight out, rather than through our capture pipe, where each line costs this process a
    read, a JSON check and a write (the capf service paid that for every install an acceptor
    process logged)."""
    wrapper = _CAPTURE.get("wrapper")
    return wrapper.out.fileno() if wrapper is not None else None


def setup_logging(service: str, node: str, level: str = "INFO", *, capture: bool = False) -> None:
    """JSON records on standard error. With `capture` (services, the supervisor): everything else
    written to standard error or output, native code's included, becomes JSON records too."""
    if capture and "wrapper" not in _CAPTURE:
        out = os.fdopen(os.dup(2), "wb", buffering=0)
        wrapper = _LineWrapper(out, service, node)
        _CAPTURE["wrapper"] = wrapper
        # Native code (gRPC core) writes to fd 2 directly; Python code through sys.stderr/stdout.
        _CAPTURE["native"] = _NativeStderr(wrapper)
        sys.stderr = _JsonTextStream(wrapper, "stderr", "error")
        sys.stdout = _JsonTextStream(wrapper, "stdout", "info")
    if "wrapper" in _CAPTURE:
        handler: logging.Handler = _WrapperHandler(_CAPTURE["wrapper"])
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "nats", "aiosqlite", "alembic", "sqlalchemy", "uvicorn.access", "hpack"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
