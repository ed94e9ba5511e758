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
next boot. LSCs from the CAs `lsc_issuers()` names (the third-party CA) are stored like CAPF's.

CAPF away: when the CAPF session cannot be held (no connection, a timeout) or ends with reason 7
(e.g. CAPF could not reach its database), the phone registers without the LSC as before, but
visits CAPF again while registered, after the boot back-off with jitter (`retry_delay`), until
CAPF completes (or says nothing is scheduled / the device is unknown); once the LSC changed it
resets — never in the middle of a call — and registers with it.

Once registered the task keeps the connection (keepalives run in
`ccmsec.aio.sccp`), re-runs the boot on an SCCP Reset (0x009F), and re-registers, a bounded number
of times, when call control goes away.

Boots are idempotent per request time: `request_boot(t)` does nothing when a boot already started
at or after `t`, so a device-reset event and the SCCP Reset that call control sends for the same
change cause one boot, not two. Requests and `stop` hold one lock: two at once start one task. A
request cancelled while stopping the old task leaves that task the phone's (stopped later).
"""

from __future__ import annotations

import asyncio
import inspect
import contextlib
import logging
import random
import ssl
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from cryptography import x509

from ccmsec.domain import DeviceSecurityMode
from ccmsec.aio.capf import capf_client_enroll, capf_phone_ssl_context
from ccmsec.aio.sccp_failover import FailoverPhone, open_streams
from ccmsec.aio.tasks import cancel_and_wait
from ccmsec.aio.tftp import TftpError, TftpTimeoutError, tftp_get
from ccmsec.pki.tls import enable_keylog, sccp_phone_context
from ccmsec.wire.capf import CapfProtocolError
from ccmsec.wire.sccp import CapabilitiesRes, MediaCapability, Register
from ccmsec.wire.sccp_failover import FailoverSettings, Target, TargetKind, targets_from_config
from ccmsec.wire.tftp import ERR_FILE_NOT_FOUND, ERR_NOT_DEFINED

from ccmsec_phone_sim.calls import phone_audio
from ccmsec_phone_sim.phone import CTL_FILE, BootFailure, Phone, State, firmware_file_name
from ccmsec_phone_sim.webserver import PhoneWebServer

log = logging.getLogger("ccmsec.phone-sim")

MAX_CHAINED_BOOTS = 3  # CAPF resets the phone; bound the chain if the config keeps asking
# Failures a later boot may not meet (a server down, a network away): the boot is retried.
TRANSIENT_FAILURES = {"tftp-unreachable", "tftp-server-error", "registration-failed",
                      "registration-rejected", "config-missing"}


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
    # A boot that cannot reach TFTP, CAPF or any call-control node (nor SRST) is retried after a
    # back-off doubling from `boot_retry_base` to `boot_retry_max`, scaled by a random factor in
    # [1 - retry_jitter, 1], so a fleet does not come back in lock-step. 0 attempts = forever.
    boot_retry_base: float = 1.0
    boot_retry_max: float = 60.0
    boot_retry_attempts: int = 0
    retry_jitter: float = 0.5
    # Failover (LATER-7): fail-back after a higher node answered this long; probes of higher
    # nodes every `probe_interval`; KeepAlive on the standby connection every `standby_interval`.
    failback_stable: float = 120.0
    probe_interval: float = 10.0
    standby_interval: float = 30.0


class _NotFound(Exception):
    pass


class PhoneRunner:
    def __init__(self, phone: Phone, net: Network, *, slots: asyncio.Semaphore | None = None,
                 on_change: Callable[[Phone], None] | None = None,
                 lsc_issuers: Callable[[], Sequence[x509.Certificate] | Awaitable[Sequence[x509.Certificate]]] | None = None):
        self.phone = phone
        self.net = net
        self.lsc_issuers = lsc_issuers or (lambda: ())
        self.waiting_for_ca = False  # parked in `capf` until CAPF's retry-later delay has passed
        self._capf_retry_after: int | None = None
        self._capf_again = False     # the last CAPF visit failed for the moment: visit it again
        self._capf_visits_again = 0  # such visits since the boot (the back-off doubles with each)
        self.slots = slots or asyncio.Semaphore(1)
        self.on_change = on_change or (lambda p: None)
        self.web = PhoneWebServer(net.bind_host, self._page)
        self.generation = 0
        self.boot_started_wall = 0.0
        self._task: asyncio.Task | None = None
        self._control = asyncio.Lock()  # request_boot / stop: one owner of `_task` at a time
        self.closed = False
        self.failover: FailoverPhone | None = None
        self._stopping: asyncio.Future | None = None  # the stop of the last connection, until it ends
        self.retry_at = 0.0  # wall time of the next automatic boot after a transient failure
        # The phone's voice on every call (issue 11): G.711, SRTP when call control gives keys.
        self.audio = phone_audio(phone.name)

    # --- control ----------------------------------------------------------------------------------
    @property
    def booting(self) -> bool:
        return (self._task is not None and not self._task.done() and not self.waiting_for_ca
                and self.phone.state not in (State.REGISTERED, State.FAILED, State.OFF))

    async def request_boot(self, requested_at: float | None = None) -> bool:
        """Boot (or reboot) unless a boot already started at or after `requested_at` (wall time)."""
        requested_at = time.time() if requested_at is None else requested_at
        # One request at a time: two at once (an event and a gRPC reset) each stopped the phone
        # and each started a task, the first one then running unowned beside the second.
        async with self._control:
            if self.closed or (self.generation and self.boot_started_wall >= requested_at):
                return False
            await self._stop()
            self.boot_started_wall = time.time()  # claim the request before the task runs
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"phone {self.phone.name}")
            return True

    async def stop(self, *, power_off: bool = False) -> None:
        async with self._control:
            await self._stop(power_off=power_off)

    async def close(self) -> None:
        """Stop for good (the simulator shuts down): a boot requested later — a reset event still
        being handled — is refused rather than leave a task running after the shutdown."""
        async with self._control:
            self.closed = True
            await self._stop()
        await self.web.stop()

    async def _stop(self, *, power_off: bool = False) -> None:
        task, self._task = self._task, None
        if task is not None:
            try:
                await cancel_and_wait(task)
            except asyncio.CancelledError:
                # Our caller was cancelled (a gRPC reset's deadline) after one cancel of the task,
                # which 3.11's wait_for may swallow: it stays the phone's task, so the next stop,
                # reset or close ends it, rather than running on with nobody to stop it.
                if not task.done() and self._task is None:
                    self._task = task
                raise
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
        chained = capf_visits = retries = 0
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
            if outcome == "failed" and self.phone.last_failure in TRANSIENT_FAILURES:
                retries += 1
                attempts = self.net.boot_retry_attempts
                if attempts and retries > attempts:
                    self._note(f"gave up after {attempts} boot attempts; boot it again by hand")
                    self._changed()
                    return
                await self._wait_retry(retries)
                continue
            if outcome != "registered":
                return
            chained = retries = 0
            why = await self._stay_registered()
            if why not in ("reset", "lsc"):
                return

    def retry_delay(self, retries: int) -> float:
        """Back-off with jitter before boot attempt `retries` + 1 (issue: never failed for good)."""
        n = self.net
        # The exponent is capped: retrying for ever (boot_retry_attempts 0), 2 ** 1024 attempts on
        # is too large for a float and the OverflowError ended the phone's task.
        delay = min(n.boot_retry_max, n.boot_retry_base * 2 ** min(max(0, retries - 1), 64))
        return delay * (1 - n.retry_jitter * random.random())

    async def _wait_retry(self, retries: int) -> None:
        delay = self.retry_delay(retries)
        self.retry_at = time.time() + delay
        self._note(f"{self.phone.last_failure}: booting again in {delay:.1f} s (attempt {retries + 1})")
        self._changed()
        try:
            await asyncio.sleep(delay)
        finally:
            self.retry_at = 0.0

    async def _boot_once(self) -> str:
        p = self.phone
        try:
            await self.web.stop()  # the phone restarts: its web server comes back with the config
            p.web_address = ""
            p.clear_failure()  # failures of earlier boots are history, not this boot's state
            self._capf_again, self._capf_visits_again = False, 0
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
        except Exception as exc:  # noqa: BLE001 — never a dead task with the phone stuck mid-boot
            p.record_failure(BootFailure("internal-error", f"{type(exc).__name__}: {exc}"))
            self._enter(State.FAILED)
            log.error("phone %s failed: unexpected %s: %s", p.name, type(exc).__name__, exc)
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
            if exc.code == ERR_NOT_DEFINED:   # "server busy", "internal error" (its database away): for now
                raise BootFailure("tftp-server-error", f"{name}: {exc}") from None
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
            try:
                await self.web.start()
            except OSError as exc:  # e.g. out of file descriptors: the phone works without it
                self._soft_failure(BootFailure("web-server-failed", f"the web server did not start: {exc}",
                                               fatal=False))
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
        creds = p.capf_credentials(await self._third_party_issuers())
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
            self._capf_again = True   # CAPF away or cut off: later, not never
            self._soft_failure(BootFailure("capf-failed", f"CAPF {host}:{port} ({capf.operation}): {exc}"))
            return False
        changed = p.take_capf_result(creds)  # keeps the pending key when the CA has not answered
        reason = session.end_reason
        # Reason 7: CAPF could not complete (its database away, a store error; also a refused
        # credential, which CAPF counts until the operation fails and then says reason 0).
        self._capf_again = (reason == 7 and not changed) or session.retry_after is not None
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

    async def _third_party_issuers(self) -> list[x509.Certificate]:
        try:
            issuers = self.lsc_issuers()
            if inspect.isawaitable(issuers):  # phone-sim asks CAPF
                issuers = await issuers
            return list(issuers)
        except Exception as exc:  # an unanswered question must not stop the phone; CAPF LSCs still work
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
    @property
    def calling(self):
        """The display and calls of the registered phone (`ccmsec.aio.sccp_calling.CallingPhone`)."""
        return self.failover.calling if self.failover is not None else None

    def _targets(self, plan) -> list[Target]:
        """Call control in the configuration's order (or the overrides), then the SRST reference
        (LATER-7, SRST-1): over TLS when the phone is secure and the reference too (CERT-6)."""
        p = self.phone
        secure = plan.secure
        if p.call_control:
            targets = [Target(h, port, TargetKind.CALL_CONTROL, secure)
                       for h, port in p.call_control_addresses(secure)][:3]
            srst = p.config.srst if p.config else None
            return targets + [t for t in targets_from_config((), srst, secure=secure,
                                                            srst_secure_allowed=self._srst_certificate() is not None)]
        members = p.config.call_managers if p.config else ()
        return targets_from_config(members, p.config.srst if p.config else None, secure=secure,
                                   srst_secure_allowed=self._srst_certificate() is not None)

    def _srst_certificate(self) -> x509.Certificate | None:
        srst = self.phone.config.srst if self.phone.config else None
        if srst is None or not srst.is_secure or not srst.certificate:
            return None
        try:
            return x509.load_der_x509_certificate(srst.certificate)
        except ValueError:
            return None

    async def _register(self) -> None:
        p = self.phone
        plan = p.sccp_plan()
        if not plan.secure and "AUTH-6" in plan.reason:
            self._note(plan.reason)
        targets = self._targets(plan)
        if not targets:
            raise BootFailure("registration-failed", "no call control in the configuration")
        ccm_certs = p.trust.callmanager_certificates()
        contexts: dict[bool, ssl.SSLContext] = {}

        def context(srst_cert) -> ssl.SSLContext:
            pins = [srst_cert] if srst_cert is not None else ccm_certs
            ctx = sccp_phone_context(plan.mode, pins, lsc=p.lsc, mic=p.mic)
            if self.net.keylog_file:
                enable_keylog(ctx, self.net.keylog_file)
            return ctx

        async def connect(target: Target):
            if not target.secure:
                return await open_streams(target, ssl_context=None, bind_host=self.net.bind_host,
                                          timeout=self.net.sccp_timeout)
            srst = target.kind is TargetKind.SRST
            srst_cert = self._srst_certificate() if srst else None
            if srst not in contexts:
                contexts[srst] = context(srst_cert)
            # AUTH-2: call control must be a CallManager entry of the CTL; CERT-6: SRST must be the
            # certificate of the configuration file.
            return await open_streams(target, ssl_context=contexts[srst], bind_host=self.net.bind_host,
                                      pinned=[srst_cert] if srst else ccm_certs, timeout=self.net.sccp_timeout)

        n = self.net
        caps = CapabilitiesRes((MediaCapability(4, 40), MediaCapability(2, 40)),
                               encryption_capable=plan.mode is DeviceSecurityMode.ENCRYPTED)
        failover = FailoverPhone(
            p.name, targets, connect,
            lambda ip: Register(p.name, ip_address=ip, device_type=p.info.device_type),
            bind_host=n.bind_host, capabilities=caps, standby_interval=n.standby_interval,
            on_media=self.audio.hook,
            register_timeout=n.sccp_timeout, on_change=self._failover_changed,
            settings=FailoverSettings(stable_period=n.failback_stable, probe_interval=n.probe_interval,
                                      retry_base=n.reregister_backoff, retry_max=max(n.reregister_backoff, 5.0),
                                      jitter=n.retry_jitter))
        failover.plan = plan  # type: ignore[attr-defined]
        failover.start()
        done = asyncio.get_running_loop().create_task(failover.wait_registered(3600))
        passed = asyncio.get_running_loop().create_task(failover.pass_failed.wait())
        try:
            await asyncio.wait({done, passed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (done, passed):
                task.cancel()
        if not failover.registered:
            await failover.stop()
            if failover.rejections:
                label, text = failover.rejections[-1]
                raise BootFailure("registration-rejected", f"call control {label} refused {p.name}: "
                                                           f"registration rejected: {text}")
            raise BootFailure("registration-failed", "; ".join(failover.problems) or "nobody answered")
        self.failover = failover
        self._show_registration()
        failed = [e for e in failover.events if e.kind == "attempt-failed"]
        if failed:  # the user sees why the phone is not on its first node (e.g. in SRST fallback)
            self._note(f"registered with {failover.active.label} after {failed[-1].target} failed: "
                       f"{failed[-1].detail}")
            log.info("phone %s registered with %s after %s failed: %s", p.name, failover.active.label,
                     failed[-1].target, failed[-1].detail)

    def _show_registration(self) -> None:
        p, failover = self.phone, self.failover
        target = failover.active if failover is not None else None
        if target is None:
            p.registered_with = p.transport = p.certificate_in_use = p.registered_address = ""
            p.registered_port = 0
            return
        plan = failover.plan  # type: ignore[attr-defined]
        p.registered_with = f"{target.host}:{target.port}"
        p.registered_address = (failover.conn.peer_host if failover.conn is not None else None) or ""
        p.registered_port = target.port   # the port that connection reached
        p.transport = plan.mode.value if target.secure else DeviceSecurityMode.NON_SECURE.value
        p.certificate_in_use = p.tls_identity()[0] if target.secure else ""
        p.fallback = target.kind is TargetKind.SRST

    def _failover_changed(self) -> None:
        failover = self.failover
        if failover is None:
            return
        was = self.phone.registered_with
        self._show_registration()
        now = self.phone.registered_with
        if was != now:
            if now:
                if self.phone.last_failure.startswith("registration"):
                    self.phone.clear_failure()
                where = "SRST (fallback)" if self.phone.fallback else now
                self._note(f"registered with {where}")
                self._enter(State.REGISTERED)
            else:
                last = next((e for e in reversed(failover.events) if e.kind in ("loss", "fail-back")), None)
                if last is not None and last.kind == "loss":
                    self._note(f"lost call control {last.target}: {last.detail}")
                self._enter(State.REGISTERING)
        self._changed()

    async def _stay_registered(self) -> str:
        """Registered somewhere (the failover phone moves between nodes by itself); "reset" when
        call control resets the phone, "lsc" when a later CAPF visit installed the LSC."""
        failover = self.failover
        if failover is None:
            return "gone"
        reset = asyncio.get_running_loop().create_task(failover.reset_requested.wait())
        try:
            while self._capf_again and not reset.done():
                if await self._capf_visit_again(failover, reset):
                    return "lsc"
            await reset
        finally:
            reset.cancel()
        self._note(f"SCCP Reset ({failover.reset_type.name.lower()}) from call control")
        return "reset"

    async def _capf_visit_again(self, failover: FailoverPhone, reset: asyncio.Task) -> bool:
        """One more CAPF visit after the back-off, while registered; True when the LSC changed
        and the phone, out of any call, should reset to register with it."""
        self._capf_visits_again += 1
        delay = self.retry_delay(self._capf_visits_again)
        if self._capf_retry_after is not None:   # offline CA: its own delay
            delay = min(float(self._capf_retry_after), self.net.capf_max_wait)
        self._note(f"{self.phone.last_failure or 'capf-failed'}: visiting CAPF again in {delay:.1f} s "
                   f"(attempt {self._capf_visits_again + 1})")
        self._changed()
        await asyncio.wait({reset}, timeout=delay)
        if reset.done():
            return False
        async with self.slots:
            changed = await self._run_capf()
        if not changed:
            return False
        self._capf_again = False
        self._note("CAPF changed the LSC; resetting once no call is up")
        while failover.in_call and not reset.done():
            await asyncio.wait({reset}, timeout=0.5)   # never reset in the middle of a call
        return True

    async def _close_connection(self) -> None:
        failover, self.failover = self.failover, None
        self.phone.registered_with = self.phone.registered_address = ""
        self.phone.registered_port = 0
        self.phone.transport = ""
        self.phone.certificate_in_use = ""
        self.phone.fallback = False
        if failover is not None:
            # Its own task, awaited through a shield: a caller cancelled meanwhile (a gRPC reset's
            # deadline) cut the stop short and left the connection registered with call control,
            # its keepalives and failover task running, owned by nobody. The stop is bounded.
            self._stopping = asyncio.ensure_future(failover.stop())
            self._stopping.add_done_callback(lambda f: f.cancelled() or f.exception())
        stopping = self._stopping
        if stopping is not None:  # also one a cancelled caller left: a new boot waits for it
            with contextlib.suppress(Exception):
                await asyncio.shield(stopping)
            if self._stopping is stopping:
                self._stopping = None
