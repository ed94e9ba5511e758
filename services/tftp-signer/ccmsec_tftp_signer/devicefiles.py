"""Device configurations built when they change, not when they are requested.

`DeviceFiles` is a read cache of other owners' state (issue 9 §5): what every `SEP<MAC>.cnf.xml`
is built from (the device with its hardening, pool and the pool's SRST reference — call control's;
its pending CAPF operation — CAPF's) and the cluster's security mode (the CTL Provider's), asked of
the owners over gRPC (owners.py), never read from their tables; plus the XML built from those
inputs. A TFTP read request is then a dictionary look-up, after one version check:

- **Version check** (`ChangeDetector`): before answering, the server asks whether any owner
  committed since its copy was validated — reading no table and no owner's database: on SQLite
  the owners' commit counters (ccmsec/db/commits.py: ctl-provider's, callmanager's and capf's, one
  `pread` each, a few microseconds, no thread hand-off), which each owner's engine writes before
  and after every commit; on PostgreSQL the WAL insert position (`pg_current_wal_lsn()`), which
  every commit advances. Unchanged: the copy is exact (no owner can
  have changed its state without a commit), serve it. Changed: the owners are asked again
  (`OwnerReads.snapshot`: the three at once, every device streamed in pages), the answers compared
  by value with what each file was built from, and the files whose inputs differ dropped before
  answering; a request for one device meanwhile asks the owners for that device alone (requests
  arriving together share one question naming all their devices). So a
  committed change is visible to the very next request, whether or not an event arrived, and a
  file built from older inputs is never served.
- **Change events** (`config.changed` from call control and CAPF, `mode.changed`, `ctl.updated`)
  and a once-a-second poll run the same check and then build and sign what changed ahead of the
  phones (`catch_up` in files.py), so the phone's request finds the signed file ready. A lost event
  costs only time: the next poll or request sees the change through the version check.
- **Owners away**: a question an owner does not answer (`OwnersUnavailable`) fails the request
  that needed it with a clear TFTP error (never a stale or guessed file) and records `problem`
  (the service reports DEGRADED with it); the poll asks again every second until they answer.

Inputs are compared by value, not by `config_version`: an owner that changes a row without bumping
its version is still seen. Only the validated token is trusted, never elapsed time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ccmsec.db.commits import CommitCounters
from ccmsec.domain import ClusterMode
from ccmsec_tftp_signer.content import ClusterEndpoints, DeviceInputs, build_device_config, inputs_from_owners
from ccmsec_tftp_signer.owners import OwnerReads, OwnersUnavailable

log = logging.getLogger("ccmsec.tftp-signer")


class ChangeDetector:
    """`token()` changes whenever an owner committed since the last call could have seen it;
    equal tokens mean no owner committed in between.

    `counters`: the owners' commit counter files (ccmsec/db/commits.py), used when this service's
    own database is SQLite — then each owner has a database of its own that this service may not
    open (the local runner), or they share one file (a test in one process), and either way every
    owner engine writes its counter around each commit. On PostgreSQL: the WAL position."""

    def __init__(self, engine: AsyncEngine, counters=()):
        self.engine = engine
        self.kind = engine.dialect.name
        self._counters: CommitCounters | None = None
        if self.kind == "sqlite" and counters:
            self._counters = CommitCounters(counters)
        self.checks = 0

    async def token(self) -> object:
        self.checks += 1
        if self._counters is not None:
            return self._counters.token()
        if self.kind == "postgresql":
            async with self.engine.connect() as conn:
                return await conn.scalar(text("SELECT pg_current_wal_lsn()"))
        return object()  # unknown database: never equal, so every request re-validates

    def close(self) -> None:
        if self._counters is not None:
            self._counters.close()
            self._counters = None


class _Batch:
    def __init__(self):
        self.names: set[str] = set()
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()


@dataclass
class Built:
    inputs: DeviceInputs
    xml: bytes


class DeviceFiles:
    def __init__(self, owners: OwnerReads, endpoints: ClusterEndpoints, detector: ChangeDetector | None):
        self.owners = owners
        self.endpoints = endpoints
        self.detector = detector
        self.mode: ClusterMode = ClusterMode.NON_SECURE  # meaningful once `known`
        self.known = False                 # the owners answered once
        self.problem = ""                  # why the owners' state is not known now ("" when it is)
        self.inputs: dict[str, DeviceInputs] = {}
        self.built: dict[str, Built] = {}
        self.dirty: set[str] = set()       # changed since the last catch_up took them
        self.mode_changed = False
        self._validated: object = None
        self._check: asyncio.Future | None = None
        self._check_token: object = None
        self.revalidations = 0
        self.revalidation_seconds = 0.0
        self.builds = 0
        self._tasks: set[asyncio.Task] = set()
        self._full: asyncio.Future | None = None  # the background full snapshot after a commit
        self._batch: _Batch | None = None     # requests' devices waiting to be asked together
        self._batch_lock = asyncio.Lock()     # one batch asked at a time; the next one gathers
        self.point_reads = 0
        self.point_batches = 0
        self.owner_failures = 0

    async def _token(self) -> object:
        return await self.detector.token() if self.detector is not None else object()

    # --- freshness ----------------------------------------------------------------------------
    async def current(self) -> None:
        """Return once the copy reflects every commit made before this call (OwnersUnavailable
        when an owner cannot answer: never a stale copy)."""
        while True:
            token = await self._token()
            if token == self._validated and self._validated is not None:
                return
            running, running_token = self._check, self._check_token
            if running is None or running.done():
                running = self._check = asyncio.ensure_future(self._revalidate(token))
                running_token = self._check_token = token
            # Wait for it either way; a failed question fails this request too (never stale).
            await asyncio.shield(running)
            if running_token == token:
                return
            # It started before our token was read: its answers may predate a commit we must see.

    def _failed(self, exc: OwnersUnavailable) -> None:
        self.owner_failures += 1
        if str(exc) != self.problem:
            log.warning("owners not answering; device files and signing wait for them (asked again "
                        "every second): %s", exc)
        self.problem = str(exc)

    async def _revalidate(self, token: object) -> None:
        started = time.perf_counter()
        old = self.inputs
        try:
            answer = await self.owners.snapshot(None)
        except OwnersUnavailable as exc:
            self._failed(exc)
            raise
        fresh = inputs_from_owners(answer.devices, answer.operations, old)
        changed = [name for name, item in fresh.items() if old.get(name) is not item]
        for name in old.keys() - fresh.keys():
            self.built.pop(name, None)
            changed.append(name)
        for name in changed:
            self.built.pop(name, None)
        self.inputs = fresh
        if answer.mode is not self.mode or not self.known:
            self.mode_changed = True
        if self.problem:
            log.info("owners answering again", extra={"was": self.problem})
        self.mode, self.known, self.problem = answer.mode, True, ""
        self.dirty.update(changed)
        self._validated = token
        self.revalidations += 1
        self.revalidation_seconds += time.perf_counter() - started

    # --- files --------------------------------------------------------------------------------
    async def config(self, name: str) -> tuple[ClusterMode, bytes | None]:
        """(cluster mode, SEP<MAC>.cnf.xml of `name` or None), reflecting every commit made before
        this call. Nothing committed since the copy was validated: from memory. Otherwise the
        owners are asked about this one device (and the mode) at once, while the full snapshot
        is asked in the background for everyone else."""
        token = await self._token()
        if token == self._validated and self._validated is not None:
            return self.mode, self.xml(name)
        if self._validated is None:
            await self.current()
            return self.mode, self.xml(name)
        if self._full is None or self._full.done():
            # everyone else's files: the full snapshot and compare
            self._full = self._background(self.current())
        self.point_reads += 1
        answer = await self._ask_about(name)
        mine = [d for d in answer.devices if d.name == name]
        found = inputs_from_owners(mine, answer.operations, self.inputs).get(name)
        return answer.mode, None if found is None else self._xml_of(found)

    async def _ask_about(self, name: str):
        """The owners' answer about `name` (and the mode), asked after this call began. Requests
        arriving together share one question (one RPC per owner naming all their devices): a
        batch gathers while the previous one is being answered and is asked when it is done, so
        64 phones asking at once cost a few questions, not 64 × 3."""
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            self._background(self._ask_batch(batch))
        batch.names.add(name)
        return await asyncio.shield(batch.answer)

    async def _ask_batch(self, batch: "_Batch") -> None:
        async with self._batch_lock:
            if self._batch is batch:
                self._batch = None  # from now on new requests gather in the next batch
            self.point_batches += 1
            try:
                answer = await self.owners.snapshot(sorted(batch.names))
            except OwnersUnavailable as exc:
                self._failed(exc)
                batch.answer.set_exception(exc)
                batch.answer.exception()  # retrieved: every waiter gets it
                return
            except BaseException as exc:
                batch.answer.set_exception(exc if isinstance(exc, Exception) else OwnersUnavailable(str(exc)))
                batch.answer.exception()
                raise
            batch.answer.set_result(answer)

    def _background(self, coro) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("device inputs not asked again: %s", task.exception())

    def xml(self, name: str) -> bytes | None:
        """The current SEP<MAC>.cnf.xml of device `name` (call `current()` first), or None."""
        inputs = self.inputs.get(name)
        if inputs is None:
            return None
        return self._xml_of(inputs)

    def _xml_of(self, inputs: DeviceInputs) -> bytes:
        name = inputs.name
        built = self.built.get(name)
        if built is not None and (built.inputs is inputs or built.inputs == inputs):
            return built.xml
        config = build_device_config(inputs.device, inputs.capf, inputs.pool, self.endpoints)
        xml = config.to_xml()
        self.built[name] = Built(inputs, xml)
        self.builds += 1
        return xml

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    def take_dirty(self) -> tuple[list[str], bool]:
        names, mode = sorted(self.dirty), self.mode_changed
        self.dirty = set()
        self.mode_changed = False
        return names, mode

    def stats(self) -> dict[str, str]:
        return {"devices": str(len(self.inputs)), "device_files_built": str(len(self.built)),
                "device_builds": str(self.builds), "revalidations": str(self.revalidations),
                "revalidation_seconds": f"{self.revalidation_seconds:.3f}",
                "version_checks": str(self.detector.checks if self.detector else 0),
                "point_reads": str(self.point_reads), "point_batches": str(self.point_batches),
                "owner_snapshots": str(self.owners.asked),
                "owner_failures": str(self.owner_failures)}
