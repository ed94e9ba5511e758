"""Runs one phone: the boot sequence over real sockets, registration, and the life after it.

`PhoneRunner` owns one `Phone` (the decisions), its web server, its SCCP connection and one task.
Boot: TFTP `CTLFile.tlv` → `SEP<MAC>.cnf.xml[.sgn]` (or `XMLDefault.cnf.xml[.sgn]`) → hardening
(DEV-4) → the signed firmware image when the load changed (AUTH-1) → CAPF when an operation is
announced (then a reset, as the real phone does) → SCCP registration on 2000, or on 2443 over TLS
when AUTH-6 allows it.

Offline CA: when CAPF answers the phone's CSR with "retry later", the phone stays in state `capf`
(last failure `capf-pending`, "waiting for the CA to sign the CSR"), keeps its pending key, waits
the server's delay (capped by `Network.capf_max_wait`) without holding a boot slot, and boots
again; at most `Network.capf_retry_attempts` times per power-on or reset, then it waits for the
next boot. LSCs from the CAs `lsc_issuers()` names (the third-party CA) are stored like CAPF's. Once registered the task keeps the connection (keepalives run in
`ccmsec.aio.sccp`), re-runs the boot on an SCCP Reset (0x009F), and re-registers, a bounded number
of times, when call control goes away.

Boots are idempotent per request time: `request_boot(t)` does nothing when a boot already started
at or after `t`, so a device-reset event and the SCCP Reset that call control sends for the same
change cause one boot, not two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from cryptography import x509

from ccmsec.domain import DeviceSecurityMode
from ccmsec.aio.capf import capf_client_enroll, capf_phone_ssl_context
from ccmsec.aio.sccp import (
    STREAM_LIMIT,
    ConnectionDropped,
    SccpConnectError,
    SccpPhoneConnection,
    SccpRegistrationRejected,
)
from ccmsec.aio.tftp import TftpError, TftpTimeoutError, tftp_get
from ccmsec.pki.tls import enable_keylog, peer_is_one_of, sccp_phone_context
from ccmsec.wire.capf import CapfProtocolError
from ccmsec.wire.sccp import (
    CapabilitiesRes,
    KeepAliveTimeout,
    MediaCapability,
    Register,
    ResetRequested,
    SccpPhoneSession,
)
from ccmsec.wire.tftp import ERR_FILE_NOT_FOUND

from ccmsec_phone_sim.phone import CTL_FILE, BootFailure, Phone, State, firmware_file_name
from ccmsec_phone_sim.webserver import PhoneWebServer

log = logging.getLogger("ccmsec.phone-sim")

MAX_CHAINED_BOOTS = 3  # CAPF resets the phone; bound the chain if the config keeps asking


@dataclass
class Network:
    """Where the phone finds its TFTP server and how patient it is."""

    tftp_host: str
    tftp_port: int
    bind_host: str = "127.0.0.1"
    tftp_timeout: float = 1.0
    tftp_retries: int = 4
    capf_timeout: float = 30.0
    sccp_timeout: float = 10.0
    reregister_attempts: int = 30
    reregister_backoff: float = 0.5
    capf_max_wait: float = 3600.0   # cap on CAPF's retry-later delay (offline CA)
    capf_retry_attempts: int = 5    # automatic CAPF re-visits per power-on / reset
    keylog_file: str | None = None  # diagnostic: NSS key log for SCCP/TLS


class _NotFound(Exception):
    pass


class PhoneRunner:
    def __init__(self, phone: Phone, net: Network, *, slots: asyncio.Semaphore | None = None,
                 on_change: Callable[[Phone], None] | None = None,
                 lsc_issuers: Callable[[], Sequence[x509.Certificate]] | None = None):
        self.phone = phone
        self.net = net
        self.lsc_issuers = lsc_issuers or (lambda: ())
        self.waiting_for_ca = False  # parked in `capf` until CAPF's retry-later delay has passed
        self._capf_retry_after: int | None = None
        self.slots = slots or asyncio.Semaphore(1)
        self.on_change = on_change or (lambda p: None)
        self.web = PhoneWebServer(net.bind_host, self._page)
        self.generation = 0
        self.boot_started_wall = 0.0
        self._task: asyncio.Task | None = None
        self._conn: SccpPhoneConnection | None = None

    # --- control ----------------------------------------------------------------------------------
    @property
    def booting(self) -> bool:
        return (self._task is not None and not self._task.done() and not self.waiting_for_ca
                and self.phone.state not in (State.REGISTERED, State.FAILED, State.OFF))

    async def request_boot(self, requested_at: float | None = None) -> bool:
        """Boot (or reboot) unless a boot already started at or after `requested_at` (wall time)."""
        requested_at = time.time() if requested_at is None else requested_at
        if self.generation and self.boot_started_wall >= requested_at:
            return False
        await self.stop()
        self.boot_started_wall = time.time()  # claim the request before the task runs
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"phone {self.phone.name}")
        return True

    async def stop(self, *, power_off: bool = False) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close_connection()
        if power_off:
            await self.web.stop()
            self.phone.web_address = ""
            if self.phone.state is not State.OFF:
                self.phone.enter(State.OFF)
                self._changed()

    async def wait(self, timeout: float) -> None:
        """Until the phone is registered or failed (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.booting or (self._task and self.phone.state is State.OFF)):
            await asyncio.sleep(0.05)

    # --- the phone's life -------------------------------------------------------------------------
    async def _run(self) -> None:
        chained = capf_visits = 0
        while True:
            self.generation += 1
            self.boot_started_wall = time.time()
            self.phone.boots += 1
            await self._close_connection()
            async with self.slots:
                outcome = await self._boot_once()
            if outcome == "reboot" and chained < MAX_CHAINED_BOOTS:
                chained += 1
                continue
            if outcome == "capf-wait":
                capf_visits += 1
                if capf_visits > self.net.capf_retry_attempts:
                    self._note(f"CAPF still waiting for the CA after {capf_visits} visits; "
                               "trying again on the next boot")
                    self._changed()
                    return
                await self._wait_for_ca()
                continue
            if outcome != "registered":
                return
            chained = 0
            why = await self._stay_registered()
            if why != "reset":
                return

    async def _boot_once(self) -> str:
        p = self.phone
        try:
            await self.web.stop()  # the phone restarts: its web server comes back with the config
            p.web_address = ""
            p.clear_failure()  # failures of earlier boots are history, not this boot's state
            self._enter(State.DOWNLOADING_CTL)
            await self._load_ctl()
            self._enter(State.DOWNLOADING_CONFIG)
            await self._load_config()
            await self._apply_hardening()
            if p.firmware_wanted():
                self._enter(State.DOWNLOADING_FIRMWARE)
                await self._load_firmware()
            if p.capf_operation() != "none":
                self._enter(State.CAPF)
                if await self._run_capf():
                    self._note("CAPF changed the LSC; resetting")
                    return "reboot"
                if self._capf_retry_after is not None:
                    return "capf-wait"
            self._enter(State.REGISTERING)
            await self._register()
            self._enter(State.REGISTERED)
            return "registered"
        except BootFailure as failure:  # fatal ones only reach here
            p.record_failure(failure)
            self._enter(State.FAILED)
            log.info("phone %s failed: %s", p.name, failure)
            return "failed"

    def _enter(self, state: State) -> None:
        self.phone.enter(state)
        self._changed()

    def _note(self, text: str) -> None:
        self.phone.history.append(f"{time.strftime('%H:%M:%S')} {text}")

    def _changed(self) -> None:
        try:
            self.on_change(self.phone)
        except Exception:  # persistence trouble must not stop a phone
            log.exception("phone %s: change listener failed", self.phone.name)

    def _soft_failure(self, failure: BootFailure) -> None:
        self.phone.record_failure(failure)
        self._changed()
        log.info("phone %s: %s", self.phone.name, failure)

    # --- TFTP -------------------------------------------------------------------------------------
    async def _get(self, name: str) -> bytes:
        host, port = self.phone.tftp_address((self.net.tftp_host, self.net.tftp_port))
        try:
            return await tftp_get(host, port, name, blksize=1428,
                                  bind_host=self.net.bind_host, timeout=self.net.tftp_timeout,
                                  retries=self.net.tftp_retries, max_size=16 * 1024 * 1024)
        except TftpTimeoutError:
            raise BootFailure("tftp-unreachable", f"no answer from TFTP {host}:{port} for {name}") from None
        except TftpError as exc:
            if exc.code == ERR_FILE_NOT_FOUND:
                raise _NotFound(name) from None
            raise BootFailure("tftp-error", f"{name}: {exc}") from None
        except OSError as exc:
            raise BootFailure("tftp-unreachable", f"{name}: {exc}") from None

    async def _load_ctl(self) -> None:
        try:
            data = await self._get(CTL_FILE)
        except _NotFound:
            return  # no CTL offered (non-secure cluster): a phone keeps whatever it holds
        try:
            self.phone.accept_ctl(data)
        except BootFailure as failure:
            self._soft_failure(failure)

    async def _load_config(self) -> None:
        tried = []
        for name in self.phone.config_file_names():
            try:
                data = await self._get(name)
            except _NotFound:
                tried.append(name)
                continue
            self.phone.accept_config(name, data)  # fatal BootFailure on refusal (AUTH-5)
            return
        raise BootFailure("config-missing", f"no configuration file on TFTP (tried {', '.join(tried)})")

    async def _load_firmware(self) -> None:
        load = self.phone.firmware_wanted()
        name = firmware_file_name(load)
        try:
            data = await self._get(name)
            self.phone.accept_firmware(load, data)
            self._note(f"running image {load}")
        except _NotFound:
            self._soft_failure(BootFailure("firmware-missing", f"AUTH-1: image {name} not on TFTP; "
                                                               f"still running {self.phone.firmware}"))
        except BootFailure as failure:
            if failure.fatal:
                raise
            self._soft_failure(failure)

    # --- hardening (DEV-4) ------------------------------------------------------------------------
    async def _apply_hardening(self) -> None:
        if self.phone.web_server_enabled:
            await self.web.start()
            self.phone.web_address = self.web.address
        else:
            await self.web.stop()
            self.phone.web_address = ""

    def _page(self) -> str:
        p = self.phone
        return (f"Device name: {p.name}\nModel: {p.model}\nMAC: {p.mac}\nImage: {p.firmware}\n"
                f"State: {p.state.value}\n")

    # --- CAPF -------------------------------------------------------------------------------------
    async def _run_capf(self) -> bool:
        """Run the announced CAPF operation; True when the LSC changed (the phone then resets).
        A retry-later answer sets `_capf_retry_after` (the boot then parks, see `_run`)."""
        p = self.phone
        self._capf_retry_after = None
        try:
            p.check_capf_possible()
        except BootFailure as failure:
            self._soft_failure(failure)
            return False
        capf = p.config.capf
        creds = p.capf_credentials(self._third_party_issuers())
        try:
            host, port = p.capf_address()
            # One session per visit: the wait between visits happens in _run, outside the boot slot.
            (session,) = await capf_client_enroll(
                host, port, capf_phone_ssl_context(creds.capf_certificate), creds,
                timeout=self.net.capf_timeout, max_sessions=1, local_addr=(self.net.bind_host, 0))
        except BootFailure as failure:
            self._soft_failure(failure)
            return False
        except (CapfProtocolError, TimeoutError, ConnectionError, OSError, ssl.SSLError) as exc:
            p.pending_capf_key = creds.pending_key  # a reconnect presents the same key
            self._soft_failure(BootFailure("capf-failed", f"CAPF {host}:{port} ({capf.operation}): {exc}"))
            return False
        changed = p.take_capf_result(creds)  # keeps the pending key when the CA has not answered
        reason = session.end_reason
        if session.retry_after is not None:
            self._capf_retry_after = session.retry_after
            self._note(f"CAPF {capf.operation}: CSR with CAPF, retry later ({', '.join(session.history)})")
            self._soft_failure(p.capf_pending(session.retry_after))
            return changed
        if p.last_failure == "capf-pending":  # the CA answered: no longer waiting
            p.last_failure = p.last_failure_reason = ""
        self._note(f"CAPF {capf.operation}: end reason {reason} ({', '.join(session.history)})")
        if reason not in (0, 1):
            self._soft_failure(BootFailure("capf-failed", f"CAPF {capf.operation} ended with reason "
                                                          f"{reason} ({', '.join(session.history)})"))
        self._changed()
        return changed

    def _third_party_issuers(self) -> list[x509.Certificate]:
        try:
            return list(self.lsc_issuers())
        except Exception as exc:  # an unreadable CA file must not stop the phone; CAPF LSCs still work
            log.warning("phone %s: LSC issuers unavailable: %s", self.phone.name, exc)
            return []

    async def _wait_for_ca(self) -> None:
        """Sleep CAPF's retry-later delay (capped), holding no boot slot, still in state capf."""
        delay = min(float(self._capf_retry_after or 0), self.net.capf_max_wait)
        self._note(f"waiting {delay:g} s for the CA before visiting CAPF again")
        self.waiting_for_ca = True
        self._changed()
        try:
            await asyncio.sleep(delay)
        finally:
            self.waiting_for_ca = False

    # --- SCCP -------------------------------------------------------------------------------------
    async def _register(self) -> None:
        p = self.phone
        plan = p.sccp_plan()
        if not plan.secure and "AUTH-6" in plan.reason:
            self._note(plan.reason)
        ccm_certs = p.trust.callmanager_certificates()
        ctx = None
        if plan.secure:
            kind, _ = p.tls_identity()
            ctx = sccp_phone_context(plan.mode, ccm_certs, lsc=p.lsc, mic=p.mic)
            if self.net.keylog_file:
                enable_keylog(ctx, self.net.keylog_file)
        problems = []
        for host, port in p.call_control_addresses(plan.secure):
            try:
                conn = await self._connect(host, port, ctx, ccm_certs if plan.secure else None,
                                           encrypted=plan.mode is DeviceSecurityMode.ENCRYPTED)
            except SccpConnectError as exc:
                problems.append(str(exc))
                continue
            try:
                await conn.wait_registered(self.net.sccp_timeout)
            except SccpRegistrationRejected as exc:
                await conn.close()
                raise BootFailure("registration-rejected",
                                  f"call control {host}:{port} refused {p.name}: {exc}") from None
            except (SccpConnectError, TimeoutError) as exc:
                await conn.close()
                problems.append(f"{host}:{port}: {exc or 'no answer to Register'}")
                continue
            self._conn = conn
            p.registered_with = f"{host}:{port}"
            p.transport = plan.mode.value
            p.certificate_in_use = p.tls_identity()[0] if plan.secure else ""
            return
        raise BootFailure("registration-failed", "; ".join(problems) or "no call control in the configuration")

    async def _connect(self, host: str, port: int, ctx: ssl.SSLContext | None,
                       pinned, *, encrypted: bool) -> SccpPhoneConnection:
        """TCP or TLS from the phone's own address; AUTH-2: the server certificate must be one of
        the CTL's CallManager entries (the context already refuses anything not chaining to them)."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host, port, ssl=ctx, server_hostname="" if ctx else None, limit=STREAM_LIMIT,
                local_addr=(self.net.bind_host, 0)), self.net.sccp_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            raise SccpConnectError(f"cannot connect to call control {host}:{port}: {exc!r}") from None
        ssl_object = writer.get_extra_info("ssl_object")
        if pinned is not None and (ssl_object is None or not peer_is_one_of(ssl_object, pinned)):
            writer.close()
            raise SccpConnectError(f"AUTH-2: call control {host}:{port} presented a certificate that is "
                                   "not a CallManager entry of the CTL")
        local_ip = writer.get_extra_info("sockname")[0]
        register = Register(self.phone.name, ip_address=local_ip, device_type=self.phone.info.device_type)
        caps = CapabilitiesRes((MediaCapability(4, 40), MediaCapability(2, 40)), encryption_capable=encrypted)
        return SccpPhoneConnection(SccpPhoneSession(register, caps), reader, writer)

    async def _stay_registered(self) -> str:
        """Keep the registration; "reset" when call control resets the phone, "gone" otherwise."""
        while True:
            event = await self._next_connection_event()
            if isinstance(event, ResetRequested):
                self._note(f"SCCP Reset ({event.reset_type.name.lower()}) from call control")
                return "reset"
            self._note(f"lost call control: {getattr(event, 'reason', 'keepalive timeout')}")
            if not await self._reregister():
                return "gone"

    async def _next_connection_event(self) -> object:
        conn = self._conn
        kinds = (ResetRequested, ConnectionDropped, KeepAliveTimeout)
        while True:
            try:
                return await conn.next_event(kinds, timeout=5.0)
            except TimeoutError:
                if conn._closed.is_set() and conn.events.empty():  # closed without a reason event
                    return ConnectionDropped(self.phone.name, "connection closed")

    async def _reregister(self) -> bool:
        await self._close_connection()
        self._enter(State.REGISTERING)
        delay = self.net.reregister_backoff
        last = None
        for _ in range(self.net.reregister_attempts):
            try:
                async with self.slots:
                    await self._register()
                if self.phone.last_failure.startswith("registration"):
                    self.phone.clear_failure()  # registered again: that failure is over
                self._enter(State.REGISTERED)
                return True
            except BootFailure as failure:
                last = failure
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        self.phone.record_failure(last or BootFailure("registration-failed", "call control lost"))
        self._enter(State.FAILED)
        return False

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.phone.registered_with = ""
        self.phone.transport = ""
        self.phone.certificate_in_use = ""
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
