"""The fleet: every simulated phone of this service, persisted in DATA/phone-sim/phones.json.

The file holds each phone's keys and certificates (MIC, LSC), its CTL and its configuration, so a
restart of the service keeps what the phones hold. It is written atomically, at most every
`save_interval` seconds while phones change, and once more on close — after the background write
in progress, if any, has ended (a worker thread cannot be cancelled). That final save is not cut
by the shutdown's per-step budget (a cancel waits for it), only by its own limit (`close`'s
`save_limit`, FINAL_SAVE_LIMIT by default), with an error logged then. Every write runs in a
daemon thread of its own, never in the loop's default executor: `asyncio.run` and the interpreter
wait at exit for every executor thread, so a write cut by the limit kept the process alive until
it ended (unbounded on a stuck disk) — a daemon thread does not hold the exit. The write is atomic,
so a process that exits during it leaves the last complete store (and a partial temporary,
`.phones.json.*`, which the next load removes). Boots run at most
`max_concurrent_boots` at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from ccmsec.fsutil import atomic_write, private_dir
from ccmsec.pki.ca import Issued
from ccmsec.pki.tokens import issue_mic

from ccmsec_phone_sim.boot import Network, PhoneRunner
from ccmsec_phone_sim.models import ModelError, check_name, model_info, names_with_prefix
from ccmsec_phone_sim.phone import Phone, State
from ccmsec.textsafe import shown

log = logging.getLogger("ccmsec.phone-sim")

MAX_ADD = 5000
MAX_PHONES = 20000
FILE_VERSION = 1
# The most close waits for the final save of the store (`CCMSEC_PHONE_STORE_SAVE_LIMIT` in the
# service): a fleet of MAX_PHONES with their keys is written in a few seconds, so this is ample.
FINAL_SAVE_LIMIT = 120.0


def in_daemon_thread(fn: Callable[..., object], *args) -> asyncio.Future:
    """`fn(*args)` in a daemon thread of its own; its outcome as a future of the running loop.
    Unlike `asyncio.to_thread` (the default executor, joined by `asyncio.run` and at interpreter
    exit) the process does not wait for it when it exits."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, exc) -> None:
        if future.done():   # cancelled meanwhile (a limit ran out): nobody waits for it
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, exc = fn(*args), None
        except BaseException as error:   # noqa: BLE001 - handed to the loop, not swallowed
            result, exc = None, error
        with contextlib.suppress(RuntimeError):   # the loop has closed: the process is ending
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=run, name="phone store write", daemon=True).start()
    return future


class FleetError(ValueError):
    """A request the fleet cannot carry out (unknown phone, bad count, bad auth string…)."""


class Fleet:
    def __init__(self, folder: Path, net: Network, *, max_concurrent_boots: int = 50,
                 manufacturer_ca: Callable[[], Issued] | None = None,
                 image_anchors: Callable[[], list[x509.Certificate]] | None = None,
                 lsc_issuers: Callable[[], object] | None = None,  # list, or awaitable list (CAPF asked)
                 mic_key_kind: str = "rsa2048", save_interval: float = 0.5):
        self.folder = Path(folder)
        self.path = self.folder / "phones.json"
        self.net = net
        self.slots = asyncio.Semaphore(max_concurrent_boots)
        self._manufacturer_ca = manufacturer_ca
        self._image_anchors = image_anchors or (lambda: [])
        # Offline CA: issuers besides CAPF whose LSCs phones store (the third-party CA).
        self._lsc_issuers = lsc_issuers or (lambda: [])
        self.mic_key_kind = mic_key_kind
        self.save_interval = save_interval
        self.runners: dict[str, PhoneRunner] = {}
        self._dirty = asyncio.Event()
        self._saver: asyncio.Task | None = None
        # The background save's write, in a worker thread: cancelling the saver cannot stop a
        # thread, so close waits for this one before its own final write (see close).
        self._writing: asyncio.Future | None = None
        # One manufacture at a time: names are chosen before the MICs are made (off-loop), and
        # two requests choosing meanwhile took the same names, the second replacing the first's.
        self._adding = asyncio.Lock()
        self.closing = False  # close has begun: boots are refused from now on

    # --- persistence ------------------------------------------------------------------------------
    def load(self) -> list[Phone]:
        """Phones from phones.json, powered off (the caller decides which to boot again). First the
        temporaries of writes that never ended are removed (see remove_leftover_writes)."""
        self.remove_leftover_writes()
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FleetError(f"{self.path}: unreadable phone store: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("phones", []), list):
            raise FleetError(f"{self.path}: unreadable phone store: not a list of phones")
        restored = []
        for item in doc.get("phones", []):
            if not isinstance(item, dict):
                log.error("phone store: skipping an entry that is not a phone")
                continue
            try:
                phone = Phone.from_dict(item)
            # One bad entry must not lose the fleet; a field of the wrong JSON type (a number
            # where a PEM is) is an AttributeError, a key of an unknown kind UnsupportedAlgorithm.
            except (ValueError, KeyError, TypeError, AttributeError, UnsupportedAlgorithm) as exc:
                log.error("phone store: skipping %s: %s", item.get("name", "?"), exc)
                continue
            self.runners[phone.name] = self._runner(phone)
            restored.append(phone)
        return restored

    def remove_leftover_writes(self) -> int:
        """Remove `.phones.json.XXXXXXXX`, the temporaries of writes that never reached their rename: a
        final save cut by its limit goes on in a daemon thread, which the process's exit ends
        mid-write, so its partial file (private keys in it) was left for ever, one more at each
        such exit. Run before any save of this process starts (load, at start): none is its own."""
        removed = 0
        # Only atomic_write's own names: mkstemp's 8 characters after the prefix — never an
        # editor's `.phones.json.swp` or an operator's `.phones.json.bak` beside the store.
        ours = re.compile(re.escape(f".{self.path.name}.") + r"[a-z0-9_]{8}")
        for tmp in sorted(self.folder.glob(f".{self.path.name}.*")):
            if not ours.fullmatch(tmp.name):
                continue
            try:
                tmp.unlink()
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("phone store: cannot remove the unfinished write %s: %s", tmp, exc)
        if removed:
            log.warning("phone store: removed %d unfinished write(s) (%s.*) a previous run left",
                        removed, self.folder / f".{self.path.name}")
        return removed

    def save(self, runners: list[PhoneRunner] | None = None) -> None:
        """Write the store. `runners`: a list taken on the event loop when this runs in a worker
        thread, since the loop may add phones to `self.runners` meanwhile."""
        runners = list(self.runners.values()) if runners is None else runners
        doc = {"version": FILE_VERSION, "phones": [r.phone.to_dict() for r in runners]}
        # Private keys and CAPF auth strings: owner-only file in an owner-only folder.
        private_dir(self.folder)
        atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode(), mode=0o600)

    def start(self) -> None:
        self._saver = asyncio.get_running_loop().create_task(self._save_loop(), name="phone store saver")

    async def close(self, save_limit: float = FINAL_SAVE_LIMIT) -> None:
        """Close every phone, then write the store once more. The final save is not given up when
        close is cancelled (the shutdown's budget for a step ran out while phones were closing, or
        while a slow background write was still going): it runs to its end, up to `save_limit`
        seconds, and the cancel is raised after it. Cut short, it says so (the store then holds
        the last complete save: writes are atomic, never a partial file)."""
        self.closing = True
        try:
            for runner in list(self.runners.values()):
                await runner.close()  # a boot requested meanwhile (reset event, restore) is refused
            saver, self._saver = self._saver, None
            if saver is not None:
                saver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await saver
        finally:
            if self._saver is not None:  # cancelled while phones closed: the saver stops too
                self._saver.cancel()
                self._saver = None
            await self._final_save(save_limit)

    async def _final_save(self, limit: float) -> None:
        loop = asyncio.get_running_loop()

        async def write() -> None:
            # A save the saver had started goes on in its thread after the cancel; written after
            # the final save below, its older snapshot of the fleet would be the store (phones lost).
            writing, self._writing = self._writing, None
            if writing is not None:
                try:
                    await writing
                except Exception as exc:  # the final save below writes the whole fleet anyway
                    log.error("cannot save the phone store: %s", exc)
            await in_daemon_thread(self.save, list(self.runners.values()))

        started = loop.time()
        job = loop.create_task(write(), name="phone store final save")
        cancelled = False
        while not job.done():
            left = started + limit - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait({job}, timeout=left)
            except asyncio.CancelledError:
                cancelled = True  # the save outlives the cancel (up to the limit); raised below
        if not job.done():
            # A write already in its (daemon) thread goes on atomically while the process lives
            # and does not hold its exit: the file is the old store or the whole new one.
            job.cancel()
            log.error("phone store: the final save did not finish within %g s "
                      "(CCMSEC_PHONE_STORE_SAVE_LIMIT); %s holds the last complete save",
                      limit, self.path)
        elif job.cancelled() or job.exception() is not None:
            log.error("cannot save the phone store: %s",
                      "cancelled" if job.cancelled() else job.exception())
        else:
            log.info("phone store saved on close", extra={"phones": len(self.runners),
                                                           "seconds": round(loop.time() - started, 3)})
        if cancelled:
            raise asyncio.CancelledError

    async def _save_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self._writing = in_daemon_thread(self.save, list(self.runners.values()))
            try:
                await asyncio.shield(self._writing)  # a cancel (close) leaves the write to close
            except Exception as exc:  # keep saving later changes whatever went wrong this time
                log.error("cannot save the phone store: %s", exc)
                self._dirty.set()
            await asyncio.sleep(self.save_interval)

    def _changed(self, phone: Phone) -> None:
        self._dirty.set()

    def _runner(self, phone: Phone) -> PhoneRunner:
        return PhoneRunner(phone, self.net, slots=self.slots, on_change=self._changed,
                           lsc_issuers=self._lsc_issuers)

    # --- manufacture ------------------------------------------------------------------------------
    async def add(self, count: int, model: str, name_prefix: str = "") -> list[Phone]:
        async with self._adding:
            return await self._add(count, model, name_prefix)

    async def _add(self, count: int, model: str, name_prefix: str) -> list[Phone]:
        if not 1 <= count <= MAX_ADD:
            raise FleetError(f"count must be 1..{MAX_ADD}, got {count}")
        if len(self.runners) + count > MAX_PHONES:
            raise FleetError(f"the simulator holds at most {MAX_PHONES} phones")
        try:
            info = model_info(model)
            names = names_with_prefix(name_prefix or "SEP00AA", count, set(self.runners))
        except ModelError as exc:
            raise FleetError(str(exc)) from None
        anchors = list(self._image_anchors())
        mca = None
        if info.has_mic:
            if self._manufacturer_ca is None:
                raise FleetError(f"model {info.model} needs a MIC but no manufacturer CA is configured")
            mca = await asyncio.to_thread(self._manufacturer_ca)
        phones = []
        for name in names:
            # CERT-1: the MIC is made once, here, by the manufacturer; keys are generated off-loop.
            mic = await asyncio.to_thread(issue_mic, mca, name, self.mic_key_kind) if mca else None
            phone = Phone(name=name, model=info.model, mic=mic, image_anchors=anchors)
            phone.history.append(f"{time.strftime('%H:%M:%S')} manufactured"
                                 + (" with a MIC" if mic else ""))
            self.runners[name] = self._runner(phone)
            phones.append(phone)
        self._dirty.set()
        return phones

    # --- selection and control --------------------------------------------------------------------
    def select(self, names: Iterable[str] = (), all_: bool = False) -> list[PhoneRunner]:
        names = list(names)
        if all_:
            return list(self.runners.values())
        if not names:
            raise FleetError("name at least one phone, or select all")
        missing = [n for n in names if n not in self.runners]
        if missing:
            raise FleetError(f"unknown phone(s): {', '.join(shown(n) for n in missing[:5])}")
        return [self.runners[n] for n in dict.fromkeys(names)]

    async def boot(self, runners: Iterable[PhoneRunner], requested_at: float | None = None) -> int:
        started = 0
        for runner in runners:
            started += await runner.request_boot(requested_at)
        return started

    async def factory_reset(self, runners: Iterable[PhoneRunner]) -> None:
        """DEV-4: clear the CTL and the LSC (never the MIC — CERT-1); the phone stays off."""
        for runner in runners:
            await runner.stop(power_off=True)
            runner.phone.factory_reset()
            runner.phone.history.append(f"{time.strftime('%H:%M:%S')} factory reset")
        self._dirty.set()

    def set_auth_string(self, name: str, digits: str) -> Phone:
        if not re.fullmatch(r"[0-9]{4,10}", digits or ""):
            raise FleetError("the CAPF authentication string is 4 to 10 digits")
        try:
            check_name(name)
        except ModelError as exc:
            raise FleetError(str(exc)) from None
        (runner,) = self.select([name])
        runner.phone.auth_string = digits
        self._dirty.set()
        return runner.phone

    def set_servers(self, runners: Iterable[PhoneRunner], *, tftp: str = "", capf: str = "",
                    call_control: Iterable[str] = (), clear: bool = False) -> list[PhoneRunner]:
        """Point phones at other servers from their next boot on; empty values keep a setting.
        Every address is checked before any phone changes (FleetError names the bad one)."""
        runners = list(runners)
        call_control = list(call_control)
        changes = dict(tftp=tftp or None, capf=capf or None, call_control=call_control or None, clear=clear)
        if not clear and not (tftp or capf or call_control):
            raise FleetError("give --tftp, --capf or --call-control (or --clear)")
        probe = Phone(name="SEP000000000000", model="7960")
        try:
            probe.set_servers(**changes)
        except ValueError as exc:
            raise FleetError(str(exc)) from None
        for runner in runners:
            runner.phone.set_servers(**changes)
            shown = ", ".join(f"{k} {v}" for k, v in (("TFTP", runner.phone.tftp_server),
                                                       ("CAPF", runner.phone.capf_server),
                                                       ("call control", " ".join(runner.phone.call_control))) if v)
            runner.phone.history.append(f"{time.strftime('%H:%M:%S')} servers: {shown or 'the cluster defaults'}")
        self._dirty.set()
        return runners

    def counts(self) -> dict[str, int]:
        return dict(Counter(r.phone.state.value for r in self.runners.values()))

    def powered(self) -> list[PhoneRunner]:
        return [r for r in self.runners.values() if r.phone.state is not State.OFF]
