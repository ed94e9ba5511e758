"""What the CTL Provider does with a trust list the CTL client hands over, and with the cluster
security mode — the server half of `ccmsec ctl update` and `ccmsec mode set`.

ctl-provider owns the cluster mode, the CTL and the shared-TFTP registry (issue 9 §5): it is the
only writer of `cluster_settings`, `ctl_files`, `ctl_take_backs` and `tftp_clusters`. One
ctl-provider process runs per cluster (`_serial` and the start-up take-back rely on it). The signed files are
tftp-signer's: the CTL reaches them only through `TftpSigner/PublishFile` (no write into its
folder). Call control, the gateway and the TFTP server follow the mode through `mode.changed`.

Commit (CHK-6), in this order so nothing is half done:
  1. the file parses and verifies, lists at least two tokens (CTL-1) and is signed by a token of
     the current CTL, no older than it (a phone refuses an older CTL as a replay), unless the
     administrator asked for new trust (CTL-2);
  2. MODE-6: this cluster's TFTP path and target mode fit the registry of clusters sharing the TFTP
     server;
  3. the tftp-signer publishes it atomically (PublishFile; refused or unreachable: nothing else
     changes and the commit is refused);
  4. one transaction records it (`ctl_files`, `cluster_settings.ctl_version` — MODE-5 reads that)
     and, when asked, the new cluster mode (MODE-2); if that transaction fails, or the commit is
     cancelled (shutdown, the client gone) once the file went to the signer and before its record
     landed, the recorded CTL is published again (the phones must not download a CTL the cluster
     did not record) — on cancellation shielded, then the CancelledError goes on. Each publish
     carries a fresh generation and the take-back names it (`takes_back`): the signer refuses
     that publish if it arrives after the take-back (still in flight when the commit was
     cancelled), so a late PublishFile cannot put the unrecorded CTL back; a PublishFile that got
     no answer (deadline exceeded, connection lost) is taken back the same way. The cluster's
     first CTL (none recorded to put back) is taken back by a withdraw (`withdraw`): the signer
     removes CTLFile.tlv, serves none, and refuses that publish alike. A take-back that itself got
     no answer may still land — after the next commit's publish, it would put back (or withdraw)
     a CTL over the one recorded since —, so every later publish (take-backs included) names it
     in `takes_back` (a list) too: the signer then refuses it, or it was already writing and the
     publish wins. They are a set, not one: each take-back is stored in `ctl_take_backs` before
     it is sent — a second unanswered take-back in a row, or a restart, forgets none; a database
     that has not stored it within TAKE_BACK_STORE_WAIT (1 s) does not hold it up: it is sent,
     and stored once the database answers — and
     removed once the signer answered a publish naming it (with the next record, for a commit's
     publish). At most MAX_UNSETTLED_TAKE_BACKS (64) are kept: beyond, that many take-backs in a
     row got no answer, and the oldest is dropped with a warning.
     Write-ahead intent: before a commit's PublishFile is sent its generation is stored in
     `ctl_take_backs` (kind `publish`; not storable: the commit is refused, nothing sent), and the
     record's transaction removes it; until then — and, the record failed, until a publish naming
     it was answered (the take-back, or a later commit's publish: a take-back that got no answer
     leaves it, the publish may still land) — every other publish names it as well. A crash
     between publish and record (SIGKILL, power loss: none of the above ran) leaves it: the next
     start (`recover`, before commits are served) takes it back as a publish that got no answer
     is — the recorded CTL published again, or a withdraw — naming it; the signer out of reach,
     it stays pending (named by every publish, DEGRADED with the generation in the Status, tried
     again every RECOVERY_RETRY seconds). A commit's publish whose take-back got no answer while
     running (no crash) is left the same way and taken back by the same retry, started when the
     commit ends unless it runs (`_retry_if_pending`; under `_serial`, DEGRADED until done,
     stopped at shutdown; a warning when the kind of error changes, not every try). Publishes in
     flight are bounded alike (64). The stored set not readable when a take-back is remembered:
     it is sent all the same, and every later write reads and merges the stored rows first
     (`_unread`), so no row it never read is deleted;
  5. `mode.changed` and the RST-3 actions (mode changed), then `ctl.updated` and the RST-4 actions
     are published.

Commits, mode changes and registry edits run one at a time (`_serial`): the CTL-2 check reads
the current CTL and the record comes several awaits later, so two interleaved commits could both
pass against the same CTL and the later-recorded one be signed by a token the earlier one removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets

import grpc

from ccmsec.db.cluster import (
    current_ctl,
    publishes_in_flight,
    record_ctl,
    save_publishes_in_flight,
    save_tftp_registry,
    save_unsettled_take_backs,
    tftp_registry,
    unsettled_take_backs,
)
from ccmsec.db.devices import SETTING_SECURITY_MODE, cluster_security_mode, get_setting, set_setting
from ccmsec.formats.ctl import CTL_FILE_NAME, CtlFormatError, Role, SignatureError, parse_ctl, verify_ctl
from ccmsec.policy.resets import ClusterModeChanged, CtlUpdated, required_actions
from ccmsec.policy.tftp_paths import TftpClusterEntry, TftpPathConflict, check_tftp_clusters
from ccmsec_proto import common_pb2, events_pb2
from ccmsec_proto import tftp_signer_pb2, tftp_signer_pb2_grpc

from ccmsec.domain import ClusterMode, DomainError
from ccmsec.runtime.outbox import DELIVERY_WAIT, stage, stage_actions, stage_owner_change
from ccmsec.runtime.servicer import ChangeActor

log = logging.getLogger("ccmsec.ctl-provider")

LOCAL_CLUSTER_ID = "local"
RPC_TIMEOUT = 5.0
# PublishFile answers by which the signer itself refused the file: it wrote nothing and will not.
# Any other error (no answer in time, connection lost) leaves the outcome open: the commit takes
# the publish back (`takes_back`) as a cancelled commit does.
SIGNER_REFUSALS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DATA_LOSS, grpc.StatusCode.ABORTED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED,
})
# Unanswered take-backs kept (and named by every publish). Reaching it takes that many take-backs
# in a row the signer never answered, each only after a commit whose record failed or that was
# cancelled, with no publish answered in between; the oldest is dropped then (logged: it could
# still land over a later CTL, a chance that shrinks with its age).
MAX_UNSETTLED_TAKE_BACKS = 64
# Seconds between two tries of the start-up take-back (a publish left in flight by a crash) while
# the tftp-signer cannot be reached; commits are served meanwhile and name it in every publish.
RECOVERY_RETRY = 2.0
# Seconds a take-back waits for its store in `ctl_take_backs` before it is sent all the same: the
# store waits for the database (SQLite's busy wait is 30 s), and after a record the database
# refused the unrecorded CTL stays live until the take-back lands. The store goes on meanwhile.
TAKE_BACK_STORE_WAIT = 1.0


async def _to_the_end(step):
    """Await `step` in its own task to its end whatever cancellations arrive meanwhile (it is
    bounded: RPC_TIMEOUT, TAKE_BACK_STORE_WAIT); a cancellation that arrived is raised once it
    is done. A take-back cancelled mid-call could otherwise land at the signer after the next
    commit's publish. What the step ended with, an error included, does not replace that
    cancellation (it is dropped)."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
        except BaseException:
            break  # the step failed: raised below, unless a cancellation arrived meanwhile
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: dropped for the cancellation, not reported as unhandled
        raise asyncio.CancelledError
    return task.result()


def failure(exc: BaseException) -> str:
    """What a failure says, for a log line or a refusal: the database driver's own error for one
    SQLAlchemy raised — never its rendering of the statement and parameters (the CTL file's bytes,
    the signer's serial...) — at most 200 characters."""
    orig = getattr(exc, "orig", None)
    cause = orig if isinstance(orig, BaseException) else exc
    return f"{type(cause).__name__}: {str(cause)[:200]}"


def new_generation() -> int:
    """A fresh PublishFile generation: random, nonzero, never reused in practice (63 bits), so
    no clock or counter has to survive a restart of either service."""
    return secrets.randbits(63) | 1


class Refused(Exception):
    """An operation refused with a gRPC status code and a message for the administrator."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _mode_name(mode: int) -> str | None:
    if mode == common_pb2.CLUSTER_SECURITY_MODE_UNSPECIFIED:
        return None
    try:
        return ClusterMode.from_proto(mode).value
    except DomainError as exc:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


class TrustOperations:
    def __init__(self, service):
        self.service = service
        self._serial = asyncio.Lock()  # see the module docstring
        # The generations of the take-backs that got no answer (they may still land at the
        # signer), oldest first: every publish names them in `takes_back`, so none can land over a
        # later commit's CTL, until a publish naming them is answered. Kept in `ctl_take_backs`
        # (a restart keeps them), loaded on the first commit, written through on every change.
        self._unsettled: list[int] | None = None
        # The write-ahead intents: generations of commits' publishes sent (or about to be) whose
        # record has not landed and that no answered publish named yet, oldest first. Stored in
        # `ctl_take_backs` (kind `publish`) before the publish is sent, removed by the record's
        # transaction; named by every other publish like the take-backs; one left at start is a
        # crash between publish and record, taken back by `recover`.
        self._in_flight: list[int] | None = None
        self._committing: int | None = None  # the generation of the commit under way
        # why the take-back of the unrecorded publishes has not been done yet ("": done); what kind
        # of error it was (a warning is logged when that changes, not at every retry)
        self._recovery_error = ""
        self._recovery_kind = ""
        self._left_at_start: set[int] = set()  # the unrecorded publishes the start found (a crash's)
        # The stored sets could not be read (`_remember`): what is in memory is only what this
        # process added; every write reads and merges the stored rows first (`_load`), so rows
        # never read are never saved over.
        self._unread = False
        self._store: asyncio.Task | None = None  # writing them (`_persist`)
        self._store_again = False  # they changed since that write read them

    # --- MODE-6 ---------------------------------------------------------------------------
    def _local_entry(self, registry: list[TftpClusterEntry], mode: str) -> TftpClusterEntry:
        alternate = next((e.alternate_path for e in registry if e.cluster_id == LOCAL_CLUSTER_ID), "")
        return TftpClusterEntry(LOCAL_CLUSTER_ID, self.service.settings.tftp_path, alternate, mode)

    async def checked_registry(self, session, mode: str) -> list[TftpClusterEntry]:
        registry = await tftp_registry(session)
        try:
            return check_tftp_clusters(registry, self._local_entry(registry, mode))
        except TftpPathConflict as exc:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None

    async def register_cluster(self, entry: TftpClusterEntry, who: ChangeActor) -> list[TftpClusterEntry]:
        # Under `_serial`: a commit saves the registry it checked, which must not undo this.
        async with self._serial, self.service.db() as session, session.begin():
            registry = await tftp_registry(session)
            if entry.cluster_id == LOCAL_CLUSTER_ID:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{LOCAL_CLUSTER_ID!r} is this cluster; its path comes from its settings")
            if not any(e.cluster_id == LOCAL_CLUSTER_ID for e in registry):
                registry = check_tftp_clusters(registry, self._local_entry(
                    registry, await cluster_security_mode(session)))
            try:
                registry = check_tftp_clusters(registry, entry)
            except TftpPathConflict as exc:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
            await save_tftp_registry(session, registry)
            # audited with the write (callmanager records owner.change); no rule asks for a reset
            stage_owner_change(session, self.service.node, action="tftp_cluster.register",
                               target=entry.cluster_id, rule="MODE-6", status=201,
                               detail=f"tftp_path={entry.tftp_path} alternate={entry.alternate_path or '-'} "
                                      f"mode={entry.mode}", **who.audit())
        self.service.outbox.kick()
        return registry

    async def remove_cluster(self, cluster_id: str, who: ChangeActor) -> list[TftpClusterEntry]:
        if cluster_id == LOCAL_CLUSTER_ID:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "this cluster cannot be removed")
        async with self._serial, self.service.db() as session, session.begin():
            before = await tftp_registry(session)
            registry = [e for e in before if e.cluster_id != cluster_id]
            await save_tftp_registry(session, registry)
            if len(registry) != len(before):
                stage_owner_change(session, self.service.node, action="tftp_cluster.remove",
                                   target=cluster_id, rule="MODE-6", **who.audit())
        self.service.outbox.kick()
        return registry

    async def registry(self) -> list[TftpClusterEntry]:
        async with self.service.db() as session:
            registry = await tftp_registry(session)
            if not any(e.cluster_id == LOCAL_CLUSTER_ID for e in registry):
                registry = sorted(registry + [self._local_entry(
                    registry, await cluster_security_mode(session))], key=lambda e: e.cluster_id)
            return registry

    # --- cluster mode ---------------------------------------------------------------------
    async def mode_state(self) -> tuple[str, int | None]:
        async with self.service.db() as session:
            mode = await cluster_security_mode(session)
            version = await get_setting(session, "ctl_version")
        return mode, (int(version) if version and version.isdigit() else None)

    def _stage_mode(self, session, target: str, previous: str, actor: str, ids: list[str]) -> list[str]:
        """mode.changed (callmanager audits it) and the RST-3 actions, into the outbox of the
        transaction that stores the mode."""
        origin = self.service.node
        ids.append(stage(session, origin, "mode.changed", None, mode_changed=events_pb2.SecurityModeChanged(
            mode=ClusterMode.parse(target).to_proto(), previous=ClusterMode.parse(previous).to_proto(),
            actor=actor[:128], rule="MODE-2")).id)
        more, described = stage_actions(session, origin, required_actions(ClusterModeChanged()),
                                        reason=f"cluster security mode {previous} -> {target}")
        ids.extend(more)
        log.warning("cluster security mode changed", extra={"from": previous, "to": target,
                                                            "actor": actor})
        return ["mode.changed"] + described

    async def delivered(self, ids: list[str]) -> bool:
        """True once JetStream acknowledged every event of the change (else: pending delivery)."""
        return await self.service.outbox.wait_sent(ids, DELIVERY_WAIT)

    async def set_mode(self, requested: int, actor: str = "") -> tuple[str, str, list[str], bool]:
        """(target, previous, events described, delivered)."""
        async with self._serial:
            return await self._set_mode(requested, actor)

    async def _set_mode(self, requested: int, actor: str) -> tuple[str, str, list[str], bool]:
        target = _mode_name(requested)
        if target is None:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "give a mode: mixed or non-secure")
        async with self.service.db() as session, session.begin():
            previous = await cluster_security_mode(session)
            if target == ClusterMode.MIXED and await get_setting(session, "ctl_version") is None:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                              "MODE-5: mixed mode needs a CTL; run `ccmsec ctl update --token T1 "
                              "--token T2 --mode mixed` first")
            registry = await self.checked_registry(session, target)
            await save_tftp_registry(session, registry)
            ids: list[str] = []
            events: list[str] = []
            if target != previous:
                await set_setting(session, SETTING_SECURITY_MODE, target)  # MODE-2: persisted
                events = self._stage_mode(session, target, previous, actor, ids)  # same transaction
        if target == previous:
            return target, previous, [], True
        return target, previous, events, await self.delivered(ids)

    # --- trust list -----------------------------------------------------------------------
    async def current(self):
        async with self.service.db() as session:
            return await current_ctl(session)

    def _check_file(self, content: bytes):
        try:
            ctl_file = parse_ctl(content)
            signer = verify_ctl(ctl_file)
        except (CtlFormatError, SignatureError) as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"not a valid signed CTL: {exc}") from None
        distinct = len({t.certificate_der for t in ctl_file.records_for_role(Role.TOKEN)})
        if distinct < 2:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          f"CTL-1: the CTL lists {distinct} distinct security token(s); at least two are needed")
        return ctl_file, signer

    async def commit(self, content: bytes, requested_mode: int, new_trust: bool, actor: str = "") -> dict:
        try:
            async with self._serial:
                return await self._commit(content, requested_mode, new_trust, actor)
        finally:
            self._retry_if_pending()

    def _retry_if_pending(self) -> None:
        """After a commit: a publish it left unrecorded and not taken back (its take-back got no
        answer) may be live at the TFTP server — the take-back is retried in the background, as
        the start-up's is (`recover`, every RECOVERY_RETRY seconds, DEGRADED meanwhile)."""
        if self.unrecorded_publishes():
            if not self._recovery_error:
                self._recovery_error = self._recovery_kind = "its take-back got no answer"
            self.service.take_back_in_background()

    async def _commit(self, content: bytes, requested_mode: int, new_trust: bool, actor: str) -> dict:
        ctl_file, signer = self._check_file(content)
        target = _mode_name(requested_mode)
        sha256 = hashlib.sha256(content).hexdigest()
        settings = self.service.settings
        async with self.service.db() as session:
            previous_mode = await cluster_security_mode(session)
            target = target or previous_mode
            current = await current_ctl(session)
            previous = None if current is None else (current.version, bytes(current.content))
            if current is not None and not new_trust:
                current_file = parse_ctl(current.content)
                trusted = current_file.records_for_role(Role.TOKEN)
                if not any(t.certificate_der == signer.certificate_der for t in trusted):
                    raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"CTL-2: the signing token {signer.subject} is not a token of the "
                                  f"current CTL (version {current.version}); phones would refuse the "
                                  "new file and be stranded. Sign with a token of the current CTL, "
                                  "or pass --new-trust after resetting every phone's trust list")
                # A phone refuses a CTL older than the one it holds (a replay: an old file may still
                # list a token since removed), so recording it would leave every phone on the old one.
                if ctl_file.header.timestamp < current_file.header.timestamp:
                    raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"CTL-2: the CTL was signed at {ctl_file.header.time:%Y-%m-%d %H:%M:%S} "
                                  f"UTC, before the current CTL (version {current.version}, "
                                  f"{current_file.header.time:%Y-%m-%d %H:%M:%S} UTC); phones refuse an "
                                  "older CTL as a replay. Build a new one (is this machine's clock "
                                  "behind?), or pass --new-trust after resetting every phone's trust list")
            registry = await self.checked_registry(session, target)
            await self._load(session)
        stub = tftp_signer_pb2_grpc.TftpSignerStub(self.service.peer_channel("tftp-signer"))
        generation = new_generation()  # a take-back names it: the signer then refuses it, however late
        self._committing = generation
        try:
            return await self._publish_and_record(stub, generation, content, sha256, ctl_file, signer,
                                                  registry, target, previous_mode, previous, actor)
        finally:
            self._committing = None

    async def _publish_and_record(self, stub, generation, content, sha256, ctl_file, signer, registry,
                                  target, previous_mode, previous, actor) -> dict:
        settings = self.service.settings
        # Write-ahead: stored before it is sent, so a crash between publish and record leaves it
        # for the next start to take back (`recover`); not stored, nothing is sent.
        await self._intend(generation)
        try:
            unsettled = self._names(exclude=(generation,))  # every other one the signer may still write
            published = await stub.PublishFile(tftp_signer_pb2.PublishFileRequest(
                cluster_path=settings.tftp_path, name=CTL_FILE_NAME, content=content, sha256=sha256,
                generation=generation, takes_back=unsettled), timeout=RPC_TIMEOUT)
            published_path = published.path
        except grpc.aio.AioRpcError as exc:
            # The signed files are tftp-signer's: without its answer nothing is recorded.
            why = f"the tftp-signer did not publish {CTL_FILE_NAME}: {exc.details()}"
            if exc.code() in SIGNER_REFUSALS:  # it wrote nothing and will not: no intent left
                await self._settle([generation])
            else:
                # No answer (deadline, connection lost): the signer may still be writing it, and
                # would put an unrecorded CTL live after this refusal. Take it back, naming its
                # generation, exactly as for a cancelled commit.
                why += await _to_the_end(self._take_back_unanswered(stub, previous, generation))
            raise Refused(exc.code(), why) from None
        except asyncio.CancelledError:  # the signer may have published it all the same — or yet will
            await self._settle_cancelled(stub, previous, sha256, generation)
            raise
        # The signer answered: the generations it named are refused there from now on. Settled in
        # memory here, in the database with the record (a record that fails leaves them listed
        # there: named once more, or taken back once more at the next start — harmless).
        self._settle_in_memory(unsettled)
        try:
            version, ids, events = await self._record(content, sha256, ctl_file, signer, registry, target,
                                                      previous_mode, actor, generation)
        except Refused:
            raise
        except asyncio.CancelledError:
            # Shutdown or the client gone while recording: the new file is live, so take it back
            # like a failed record — shielded, and still under `_serial` (a commit after this one
            # must not be overwritten by the old file) — then let the cancellation go on.
            await self._settle_cancelled(stub, previous, sha256, generation)
            raise
        except Exception as exc:  # the database refused the record: do not leave the new file live
            # to its end even if the commit is cancelled meanwhile (a take-back cut mid-call
            # could land after the next commit's publish)
            raise await _to_the_end(self._unpublish(stub, previous, exc, generation)) from None
        delivered = await self.delivered(ids)
        log.info("CTL committed", extra={"version": version, "sha256": sha256, "mode": target})
        return {"version": version, "sha256": sha256, "tftp_path": settings.tftp_path,
                "published_path": published_path, "mode": target, "previous_mode": previous_mode,
                "events": events, "delivered": delivered}

    async def _settle_cancelled(self, stub, previous: tuple[int, bytes] | None, sha256: str,
                                generation: int) -> None:
        """A commit cancelled after publishing: unless its record landed (the cancellation came
        during COMMIT, after the database took it), publish the recorded CTL again. Runs to the end
        in its own task, whatever further cancellations arrive (each step is bounded: RPC_TIMEOUT,
        TAKE_BACK_STORE_WAIT)."""
        async def settle() -> None:
            try:
                async with self.service.db() as session:
                    row = await current_ctl(session)
                if row is not None and row.sha256 == sha256:
                    self._settle_in_memory([generation])  # the record removed its intent
                    log.warning("CTL commit cancelled after its record: published and recorded agree",
                                extra={"version": row.version, "sha256": sha256})
                    return
            except Exception as exc:  # cannot tell: the record's transaction rolled back unless it
                log.warning("CTL commit cancelled; reading the record failed: %s", failure(exc))  # committed
            refusal = await self._unpublish(stub, previous, asyncio.CancelledError("commit cancelled"),
                                            generation)
            log.warning("CTL commit cancelled: %s", refusal)

        cleanup = asyncio.ensure_future(settle())
        while not cleanup.done():
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                continue  # cancelled again: the caller re-raises once the clean-up is done
        if not cleanup.cancelled() and cleanup.exception() is not None:
            log.error("CTL commit cancelled; taking the CTL back failed: %s", cleanup.exception())

    # --- unanswered take-backs (module docstring, step 4) --------------------------------------
    def unsettled_take_backs(self) -> list[int]:
        """The take-backs not answered yet, oldest first ([] before the first commit loads them)."""
        return list(self._unsettled or ())

    def publishes_in_flight(self) -> list[int]:
        """The commits' publishes neither recorded nor taken back, oldest first (the commit under
        way included; [] before they are loaded)."""
        return list(self._in_flight or ())

    def unrecorded_publishes(self) -> list[int]:
        """Those of finished commits or of a process that stopped: the CTL the TFTP server serves
        may be one of them, never recorded (Status: `ctl_publishes_unrecorded`)."""
        return [g for g in self._in_flight or () if g != self._committing]

    @property
    def retry_pending(self) -> bool:
        """A take-back of unrecorded publishes is still to be done (`recover` to be tried again)."""
        return bool(self._recovery_error)

    @property
    def recovery_problem(self) -> str:
        """Why ctl-provider is DEGRADED: the take-back of a publish left unrecorded (by a crash, or a
        commit whose take-back got no answer) has not been done; "" once done or settled by a
        publish."""
        pending = self.unrecorded_publishes()
        if not self._recovery_error or not pending:
            return ""
        how = ("sent before ctl-provider stopped" if self._left_at_start & set(pending)
               else "whose take-back got no answer")
        return (f"CHK-6: CTL publish generation(s) {', '.join(map(str, pending))} {how} were never "
                f"recorded and are not taken back yet ({self._recovery_error}): the TFTP server may "
                f"serve a {CTL_FILE_NAME} the cluster did not record; retried every "
                f"{RECOVERY_RETRY:g} s and named by the next commit's publish")

    def _names(self, *, last: int | None = None, exclude=()) -> list[int]:
        """What a publish names in `takes_back`: every publish in flight and every unanswered
        take-back (but `exclude`) — each may still be written by the signer —, then `last` (the
        publish a take-back undoes: a signer of the former singular field keeps the last entry)."""
        skip = {*exclude, last}
        names = [g for g in (*(self._in_flight or ()), *(self._unsettled or ())) if g not in skip]
        return list(dict.fromkeys(names)) + ([] if last is None else [last])

    async def _load(self, session) -> None:
        """Read the stored sets not read yet; after a read that failed (`_unread`), merge them —
        the stored rows first — with what this process added since, so a write never drops rows
        it did not read."""
        if self._unread:
            stored_unsettled = await unsettled_take_backs(session)
            stored_in_flight = await publishes_in_flight(session)
            self._unsettled = list(dict.fromkeys([*stored_unsettled, *(self._unsettled or ())]))
            self._in_flight = list(dict.fromkeys([*stored_in_flight, *(self._in_flight or ())]))
            self._unread = False
            return
        if self._unsettled is None:
            self._unsettled = await unsettled_take_backs(session)
        if self._in_flight is None:
            self._in_flight = await publishes_in_flight(session)

    @staticmethod
    def _bounded(kept: list[int], what: str) -> None:
        if len(kept) > MAX_UNSETTLED_TAKE_BACKS:
            dropped = kept[:-MAX_UNSETTLED_TAKE_BACKS]
            del kept[:-MAX_UNSETTLED_TAKE_BACKS]
            log.warning("CHK-6: %d %s in a row got no answer from the tftp-signer; the oldest "
                        "(generations %s) are no longer named by later publishes and could still land "
                        "over a later CTL: check the tftp-signer and its CTLFile.tlv", len(kept) +
                        len(dropped), what, ", ".join(map(str, dropped)),
                        extra={"dropped": dropped, "limit": MAX_UNSETTLED_TAKE_BACKS})

    async def _intend(self, generation: int) -> None:
        """The write-ahead intent of a commit's publish: stored before it is sent. Not stored (the
        database away), the commit is refused and nothing is sent. A store of the take-backs still
        going on (`_persist` did not wait for it) ends first: it read the intents before this one,
        and would remove it (nothing is live yet, so this wait costs no exposure)."""
        if self._store is not None and not self._store.done():
            await asyncio.wait({self._store})
        try:
            async with self.service.db() as session, session.begin():
                await self._load(session)  # not read yet (commit reads them first): keep them
                self._in_flight.append(generation)
                self._bounded(self._in_flight, "commits' publishes not taken back")
                await save_publishes_in_flight(session, list(self._in_flight))
        except BaseException as exc:
            self._settle_in_memory([generation])
            if not isinstance(exc, Exception):
                raise
            raise Refused(grpc.StatusCode.UNAVAILABLE,
                          f"CHK-6: the publish could not be stored before sending it ({failure(exc)}); "
                          "nothing published, nothing changed: run the CTL client "
                          "again") from None

    async def _remember(self, generation: int) -> None:
        """Before a take-back is sent: it is unsettled until the signer answers it, whatever
        happens meanwhile (no answer, the call cut, this process gone)."""
        if self._unsettled is None or self._in_flight is None:  # not loaded yet: never save over them
            try:
                async with self.service.db() as session:
                    await self._load(session)
            except Exception as exc:  # sent all the same; stored rows merged in before any write
                log.error("CHK-6: the unanswered take-backs could not be read: %s", failure(exc))
                self._unsettled = self._unsettled if self._unsettled is not None else []
                self._in_flight = self._in_flight if self._in_flight is not None else []
                self._unread = True
        self._unsettled.append(generation)
        self._bounded(self._unsettled, "take-backs")
        await self._persist()

    def _settle_in_memory(self, generations) -> bool:
        settled = set(generations)
        changed = False
        for kept in ("_unsettled", "_in_flight"):
            before = getattr(self, kept)
            if before is None:
                continue
            after = [g for g in before if g not in settled]
            changed |= len(after) != len(before)
            setattr(self, kept, after)
        if self._recovery_error and not self.unrecorded_publishes():
            # what was left is settled (a commit's publish named it): the problem is over — a later
            # publish left unanswered gets its own reason (`_retry_if_pending`), no crash's
            self._recovery_error = self._recovery_kind = ""
            self._left_at_start = set()
        return changed

    async def _settle(self, generations) -> None:
        """The signer answered a publish naming `generations`: it refuses them from now on."""
        if self._settle_in_memory(generations):
            await self._persist()

    async def _persist(self) -> None:
        """Write the unanswered take-backs through to `ctl_take_backs`, waiting for that at most
        TAKE_BACK_STORE_WAIT: a database that does not answer (the one that just failed the record,
        maybe) must not hold the take-back up. The write goes on in its own task, one at a time,
        again while the set changed meanwhile, so the latest set is stored (a write that read an
        older one stores a generation settled since at worst: named once more, harmless). A
        failure does not stop the take-back: the set stays in memory, is named by the publishes
        of this process and saved again with its next change."""
        self._store_again = True
        if self._store is None or self._store.done():
            self._store = asyncio.ensure_future(self._store_latest())
        await asyncio.wait({self._store}, timeout=TAKE_BACK_STORE_WAIT)
        if not self._store.done():
            log.warning("CHK-6: the database has not stored the unanswered take-backs (generations %s) "
                        "within %g s; sending on, stored once it answers (a restart meanwhile forgets "
                        "them)", ", ".join(map(str, self._unsettled or ())) or "none", TAKE_BACK_STORE_WAIT)

    async def _store_latest(self) -> None:
        while self._store_again:
            self._store_again = False
            try:
                async with self.service.db() as session, session.begin():
                    if self._unread:  # never save over rows not read: merge them in first
                        await self._load(session)
                    if self._unsettled is not None:
                        await save_unsettled_take_backs(session, list(self._unsettled))
                    if self._in_flight is not None:
                        await save_publishes_in_flight(session, list(self._in_flight))
            except Exception as exc:
                log.error("CHK-6: the unanswered take-backs (generations %s) could not be saved; they "
                          "are named from memory until saved, a restart meanwhile forgets them: %s",
                          ", ".join(map(str, self._unsettled or ())) or "none", failure(exc))
                return

    async def _publish_back(self, stub, old: bytes | None, generation: int) -> None:
        """Publish the recorded CTL `old` again, naming the publish `generation` it takes back;
        with no CTL recorded (`old` None: the cluster's first CTL) withdraw the file instead — the
        signer removes it, serves no CTL (as the record says) and refuses that publish later.
        It names the earlier unanswered take-backs too, and is one itself until answered."""
        own = new_generation()
        await self._remember(own)  # before it is sent: it may land even if this process stops
        # with every other publish in flight and take-back (read by `_remember`); the publish it
        # undoes LAST: a signer of the former singular field keeps the last entry
        names = self._names(last=generation, exclude=(own,))
        if old is None:
            request = tftp_signer_pb2.PublishFileRequest(
                cluster_path=self.service.settings.tftp_path, name=CTL_FILE_NAME,
                generation=own, takes_back=names, withdraw=True)
        else:
            request = tftp_signer_pb2.PublishFileRequest(
                cluster_path=self.service.settings.tftp_path, name=CTL_FILE_NAME, content=old,
                sha256=hashlib.sha256(old).hexdigest(), generation=own, takes_back=names)
        try:
            await stub.PublishFile(request, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in SIGNER_REFUSALS:  # refused: it wrote nothing and will not
                await self._settle([own])
            raise  # no answer: it may still land; every later publish names it
        await self._settle([own, *names])

    async def _take_back_unanswered(self, stub, previous: tuple[int, bytes] | None,
                                    generation: int) -> str:
        """A PublishFile that got no answer (DEADLINE_EXCEEDED, UNAVAILABLE...) may still land at
        the signer: publish the recorded CTL again naming `generation` in `takes_back`, so the
        signer refuses that publish if it arrives later and the take-back wins if it was already
        writing. No CTL recorded yet: the file is withdrawn the same way (the signer serves none).
        Returns what to add to the refusal."""
        version, old = previous if previous is not None else (None, None)
        what = f"version {version}" if previous is not None else f"no CTL ({CTL_FILE_NAME} withdrawn)"
        try:
            await self._publish_back(stub, old, generation)
        except grpc.aio.AioRpcError as again:
            log.error("CTL publish unanswered; putting back %s failed: %s", what, again.details())
            return (f"; putting back {what} (so that publish cannot land later) failed "
                    f"({again.details()}): run the CTL client again")
        log.warning("CTL publish unanswered: %s published again, that publish taken back", what)
        if previous is None:
            return (f"; no earlier CTL exists: {CTL_FILE_NAME} is withdrawn from the TFTP server and "
                    "that publish taken back, nothing changed")
        return f"; version {version} is published again and that publish taken back, nothing changed"

    async def recover(self, *, at_start: bool = False) -> bool:
        """Take back the commits' publishes left unrecorded: at start, before commits are served, a
        publish left in flight — the process stopped (SIGKILL, power loss) after its PublishFile
        reached the signer and before its record committed — may have put live a CTL the cluster
        never recorded; while running, a commit's publish whose take-back got no answer may have
        too. Either way it is taken back as `_take_back_unanswered` does: the recorded CTL
        published again (the file withdrawn when none is recorded) naming it, with every other
        generation the signer may still write — under `_serial`, as commits. Bounded
        (RPC_TIMEOUT); the signer (or the database) not answering leaves it pending — kept, named
        by every publish, `recovery_problem` says so, tried again every RECOVERY_RETRY seconds
        (`CtlProviderService.take_back_in_background`). A warning is logged when the kind of error
        changes, not at every try. True when nothing is left to take back."""
        async with self._serial:
            try:
                async with self.service.db() as session:
                    await self._load(session)  # at start: what the database holds
                    row = await current_ctl(session)
            except Exception as exc:  # the database: tried again like the signer
                return self._not_yet(self.unrecorded_publishes(), failure(exc), type(exc).__name__)
            pending = self.unrecorded_publishes()
            if at_start:
                self._left_at_start = set(pending)
            if not pending:
                self._recovery_error = self._recovery_kind = ""
                return True
            what = (f"version {row.version} published again" if row is not None
                    else f"{CTL_FILE_NAME} withdrawn (no CTL recorded)")
            if at_start:
                log.warning("CHK-6: CTL publish generation(s) %s sent but never recorded (ctl-provider "
                            "stopped between publish and record): taking it back, %s",
                            ", ".join(map(str, pending)), what,
                            extra={"generations": pending, "rule": "CHK-6"})
            stub = tftp_signer_pb2_grpc.TftpSignerStub(self.service.peer_channel("tftp-signer"))
            try:
                await _to_the_end(self._publish_back(stub, None if row is None else bytes(row.content),
                                                     pending[-1]))  # the latest
            except grpc.aio.AioRpcError as exc:
                return self._not_yet(pending, f"tftp-signer: {exc.code().name}: {exc.details()}",
                                     f"tftp-signer: {exc.code().name}")
            except Exception as exc:  # the database, most likely: tried again like the signer
                return self._not_yet(pending, failure(exc), type(exc).__name__)
            self._recovery_error = self._recovery_kind = ""
            log.warning("CHK-6: CTL publish generation(s) %s taken back: %s", ", ".join(map(str, pending)),
                        what, extra={"generations": pending, "rule": "CHK-6"})
            return True

    def _not_yet(self, pending: list[int], error: str, kind: str) -> bool:
        """The take-back could not be done: kept, `error` in the Status; a warning only when the
        kind of error changed (the signer or the database down logs once, not every retry)."""
        if kind != self._recovery_kind:
            log.warning("CHK-6: CTL publish generation(s) %s not taken back yet (%s): kept, named by "
                        "every publish, tried again every %g s", ", ".join(map(str, pending)) or "?",
                        error, RECOVERY_RETRY, extra={"generations": pending, "rule": "CHK-6"})
        self._recovery_error, self._recovery_kind = error, kind
        return False

    async def _unpublish(self, stub, previous: tuple[int, bytes] | None, exc: BaseException,
                         generation: int) -> Refused:
        """The CTL was published but its record failed: publish the recorded CTL again, so what the
        phones download stays what the cluster recorded. Returns the refusal to raise. The take-back
        names the `generation` of the publish it undoes: a PublishFile of it reaching the signer
        later (still in flight when the commit was cancelled) is refused there, so it cannot put
        the unrecorded CTL back. With no CTL recorded (the first commit) the file is withdrawn,
        with the same ordering."""
        log.error("CTL published but not recorded: %s", failure(exc))
        why = f"the CTL was published but could not be recorded ({failure(exc)})"
        version, old = previous if previous is not None else (None, None)
        what = f"version {version}" if previous is not None else f"no CTL ({CTL_FILE_NAME} withdrawn)"
        try:
            await self._publish_back(stub, old, generation)
        except grpc.aio.AioRpcError as again:
            return Refused(grpc.StatusCode.UNAVAILABLE, f"{why}, and putting back {what} failed "
                                                        f"({again.details()}): run the CTL client again")
        if previous is None:  # the cluster's first CTL: nothing recorded, so none is served
            return Refused(grpc.StatusCode.UNAVAILABLE, f"{why}; no earlier CTL exists, so {CTL_FILE_NAME} "
                                                        "is withdrawn from the TFTP server, nothing changed: "
                                                        "run the CTL client again")
        return Refused(grpc.StatusCode.UNAVAILABLE, f"{why}; version {version} is published again, "
                                                    "nothing changed: run the CTL client again")

    async def _record(self, content, sha256, ctl_file, signer, registry, target, previous_mode,
                      actor, generation: int = 0) -> tuple[int, list[str], list[str]]:
        """One transaction: the CTL, the mode and the events they require (outbox); it removes the
        publish's write-ahead intent (`generation`)."""
        settings = self.service.settings
        async with self.service.db() as session, session.begin():
            version = await record_ctl(session, content=content, sha256=sha256, signer=signer.subject,
                                       signer_serial=signer.serial.hex(), records=len(ctl_file.records),
                                       tftp_path=settings.tftp_path)
            await save_tftp_registry(session, registry)
            if self._unread:  # never save over rows not read: merge them in first
                await self._load(session)
            if self._unsettled is not None:  # those the publish named are settled (_commit)
                await save_unsettled_take_backs(session, self.unsettled_take_backs())
            if self._in_flight is not None:  # and so is its own intent: recorded, nothing to take back
                await save_publishes_in_flight(session, [g for g in self._in_flight if g != generation])
            # The CTL, the mode and every event they require commit together (outbox).
            ids: list[str] = []
            events: list[str] = []
            if target != previous_mode:
                await set_setting(session, SETTING_SECURITY_MODE, target)  # MODE-2, with the CTL
                events += self._stage_mode(session, target, previous_mode, actor, ids)
            ids.append(stage(session, self.service.node, "ctl.updated", None,
                             ctl_updated=events_pb2.CtlUpdated(sha256=sha256, version=version,
                                                               tftp_path=settings.tftp_path,
                                                               actor=actor[:128])).id)
            events.append("ctl.updated")
            more, described = stage_actions(session, self.service.node, required_actions(CtlUpdated()),
                                            reason=f"CTL version {version} published ({sha256[:12]})")
            ids += more
            events += described
        self._settle_in_memory([generation])
        return version, ids, events
