"""What the CTL Provider does with a trust list the CTL client hands over, and with the cluster
security mode — the server half of `ccmsec ctl update` and `ccmsec mode set`.

ctl-provider owns the cluster mode, the CTL and the shared-TFTP registry (issue 9 §5): it is the
only writer of `cluster_settings`, `ctl_files`, `ctl_take_backs` and `tftp_clusters`. The signed files are
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
     it is sent — a second unanswered take-back in a row, or a restart, forgets none — and
     removed once the signer answered a publish naming it (with the next record, for a commit's
     publish). At most MAX_UNSETTLED_TAKE_BACKS (64) are kept: beyond, that many take-backs in a
     row got no answer, and the oldest is dropped with a warning;
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
    record_ctl,
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


async def _to_the_end(step):
    """Await `step` in its own task to its end whatever cancellations arrive meanwhile (it is
    bounded: RPC_TIMEOUT); a cancellation that arrived is raised once it is done. A take-back
    cancelled mid-call could otherwise land at the signer after the next commit's publish."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


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
        async with self._serial:
            return await self._commit(content, requested_mode, new_trust, actor)

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
            if self._unsettled is None:
                self._unsettled = await unsettled_take_backs(session)
        stub = tftp_signer_pb2_grpc.TftpSignerStub(self.service.peer_channel("tftp-signer"))
        generation = new_generation()  # a take-back names it: the signer then refuses it, however late
        try:
            unsettled = list(self._unsettled)
            published = await stub.PublishFile(tftp_signer_pb2.PublishFileRequest(
                cluster_path=settings.tftp_path, name=CTL_FILE_NAME, content=content, sha256=sha256,
                generation=generation, takes_back=unsettled), timeout=RPC_TIMEOUT)
            published_path = published.path
        except grpc.aio.AioRpcError as exc:
            # The signed files are tftp-signer's: without its answer nothing is recorded.
            why = f"the tftp-signer did not publish {CTL_FILE_NAME}: {exc.details()}"
            if exc.code() not in SIGNER_REFUSALS:
                # No answer (deadline, connection lost): the signer may still be writing it, and
                # would put an unrecorded CTL live after this refusal. Take it back, naming its
                # generation, exactly as for a cancelled commit.
                why += await _to_the_end(self._take_back_unanswered(stub, previous, generation))
            raise Refused(exc.code(), why) from None
        except asyncio.CancelledError:  # the signer may have published it all the same — or yet will
            await self._settle_cancelled(stub, previous, sha256, generation)
            raise
        # The signer answered: the take-backs it named are refused there from now on. Settled in
        # memory here, in the database with the record (a record that fails leaves them listed
        # there: named once more, harmless).
        self._settle_in_memory(unsettled)
        try:
            version, ids, events = await self._record(content, sha256, ctl_file, signer, registry, target,
                                                      previous_mode, actor)
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
        in its own task, whatever further cancellations arrive (each step is bounded: RPC_TIMEOUT)."""
        async def settle() -> None:
            try:
                async with self.service.db() as session:
                    row = await current_ctl(session)
                if row is not None and row.sha256 == sha256:
                    log.warning("CTL commit cancelled after its record: published and recorded agree",
                                extra={"version": row.version, "sha256": sha256})
                    return
            except Exception as exc:  # cannot tell: the record's transaction rolled back unless it
                log.warning("CTL commit cancelled; reading the record failed: %s", exc)  # committed
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

    async def _remember(self, generation: int) -> None:
        """Before a take-back is sent: it is unsettled until the signer answers it, whatever
        happens meanwhile (no answer, the call cut, this process gone)."""
        if self._unsettled is None:  # not loaded yet (commit loads them first): never save over them
            try:
                async with self.service.db() as session:
                    self._unsettled = await unsettled_take_backs(session)
            except Exception as exc:
                log.error("CHK-6: the unanswered take-backs could not be read: %s", exc)
                self._unsettled = []
        unsettled = self._unsettled
        unsettled.append(generation)
        if len(unsettled) > MAX_UNSETTLED_TAKE_BACKS:
            dropped = unsettled[:-MAX_UNSETTLED_TAKE_BACKS]
            del unsettled[:-MAX_UNSETTLED_TAKE_BACKS]
            log.warning("CHK-6: %d take-backs in a row got no answer from the tftp-signer; the oldest "
                        "(generations %s) are no longer named by later publishes and could still land "
                        "over a later CTL: check the tftp-signer and its CTLFile.tlv", len(unsettled) +
                        len(dropped), ", ".join(map(str, dropped)),
                        extra={"dropped": dropped, "limit": MAX_UNSETTLED_TAKE_BACKS})
        self._unsettled = unsettled
        await self._persist()

    def _settle_in_memory(self, generations) -> bool:
        if self._unsettled is None:
            return False
        settled = set(generations)
        before = self._unsettled
        self._unsettled = [g for g in before if g not in settled]
        return len(self._unsettled) != len(before)

    async def _settle(self, generations) -> None:
        """The signer answered a publish naming `generations`: it refuses them from now on."""
        if self._settle_in_memory(generations):
            await self._persist()

    async def _persist(self) -> None:
        """Write the unanswered take-backs through to `ctl_take_backs`. A failure (the database is
        what just failed the record, maybe) does not stop the take-back: the set stays in memory,
        is named by the publishes of this process and saved again with its next change."""
        try:
            async with self.service.db() as session, session.begin():
                await save_unsettled_take_backs(session, list(self._unsettled or ()))
        except Exception as exc:
            log.error("CHK-6: the unanswered take-backs (generations %s) could not be saved; they are "
                      "named from memory until saved, a restart meanwhile forgets them: %s",
                      ", ".join(map(str, self._unsettled or ())) or "none", exc)

    async def _publish_back(self, stub, old: bytes | None, generation: int) -> None:
        """Publish the recorded CTL `old` again, naming the publish `generation` it takes back;
        with no CTL recorded (`old` None: the cluster's first CTL) withdraw the file instead — the
        signer removes it, serves no CTL (as the record says) and refuses that publish later.
        It names the earlier unanswered take-backs too, and is one itself until answered."""
        own = new_generation()
        earlier = self.unsettled_take_backs()
        # The publish it undoes LAST: a signer of the former singular field keeps the last entry.
        names = [*earlier, generation]
        await self._remember(own)  # before it is sent: it may land even if this process stops
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
        await self._settle([own, *earlier])

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

    async def _unpublish(self, stub, previous: tuple[int, bytes] | None, exc: BaseException,
                         generation: int) -> Refused:
        """The CTL was published but its record failed: publish the recorded CTL again, so what the
        phones download stays what the cluster recorded. Returns the refusal to raise. The take-back
        names the `generation` of the publish it undoes: a PublishFile of it reaching the signer
        later (still in flight when the commit was cancelled) is refused there, so it cannot put
        the unrecorded CTL back. With no CTL recorded (the first commit) the file is withdrawn,
        with the same ordering."""
        log.error("CTL published but not recorded: %s", exc)
        why = f"the CTL was published but could not be recorded ({type(exc).__name__}: {str(exc)[:200]})"
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
                      actor) -> tuple[int, list[str], list[str]]:
        """One transaction: the CTL, the mode and the events they require (outbox)."""
        settings = self.service.settings
        async with self.service.db() as session, session.begin():
            version = await record_ctl(session, content=content, sha256=sha256, signer=signer.subject,
                                       signer_serial=signer.serial.hex(), records=len(ctl_file.records),
                                       tftp_path=settings.tftp_path)
            await save_tftp_registry(session, registry)
            if self._unsettled is not None:  # those the publish named are settled (_commit)
                await save_unsettled_take_backs(session, self.unsettled_take_backs())
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
        return version, ids, events
