"""The TFTP resolver: a requested name -> the bytes to serve, or None (file not found).

Decisions, in order:
1. The name is split by the shared-TFTP layout (MODE-6): `<path>/NAME` goes to that cluster's folder,
   a bare `NAME` to this cluster's. Traversal, odd characters and our `signed/` folder are refused
   (TFTP error 2). Another cluster's folder is served exactly as it is on disk.
2. Firmware images `<load>.sbn` are always served signed (AUTH-1), whatever the mode.
3. `NAME.sgn`: in non-secure mode nothing is signed, so it is "file not found" (AUTH-3); in mixed
   mode it is NAME signed with the TFTP certificate — device configs and static files alike. Trust
   lists (`CTLFile.tlv`) are signed by a token already and have no `.sgn`.
4. `SEP<MAC>.cnf.xml` is built when its inputs change, not when it is requested (devicefiles.py):
   a request is one version check (has anything been committed since?) and a memory look-up; a
   commit makes the next request ask the owners (call control, CAPF, the CTL Provider) again and
   compare their answers first, so nothing stale is ever served; an owner that does not answer
   makes the request fail with TFTP error 0 naming it (never a stale or guessed file). A signed copy is reused only if its payload is byte-identical (SignedStore). Change
   events and a poll build and sign what changed ahead of the phones (`catch_up`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import stat
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ccmsec import firmware
from ccmsec.domain import ClusterMode
from ccmsec.formats.cnfxml import DefaultConfig
from ccmsec.formats.ctl import MAX_CTL_SIZE, CtlFormatError, parse_ctl
from ccmsec.fsutil import atomic_write
from ccmsec.wire.tftp import ERR_ACCESS_VIOLATION, ERR_NOT_DEFINED, TftpError
from ccmsec_tftp_signer.content import ClusterEndpoints
from ccmsec_tftp_signer.devicefiles import ChangeDetector, DeviceFiles
from ccmsec_tftp_signer.owners import OwnerReads, OwnersUnavailable
from ccmsec_tftp_signer.layout import RESERVED, BadName, ClusterPath, Layout
from ccmsec_tftp_signer.signing import BIG_PAYLOAD, SGN, SignedStore, payload_digest

log = logging.getLogger("ccmsec.tftp-signer")

TRUST_LISTS = ("CTLFile.tlv", "ITLFile.tlv")
DEVICE_NAME = re.compile(r"SEP[0-9A-F]{12}")
DEVICE_CONFIG = re.compile(r"(SEP[0-9A-F]{12})\.cnf\.xml")
MAX_STATIC_FILE = 16 * 1024 * 1024
MAX_TAKEN_BACK = 1024  # take-back generations remembered (PublishFile ordering)
MAX_TAKES_BACK = 256  # generations one PublishFile may name (ctl-provider names at most 65)
# Static files (firmware bundles included, up to MAX_STATIC_FILE) are kept in memory while a stat
# shows the same file, least recently served dropped first: one budget for all of them, so a few
# large images cannot grow the process without bound, and one copy is shared by every transfer.
MAX_HELD_STATIC_BYTES = 64 * 1024 * 1024
MAX_HELD_STATICS = 1024
READ_ATTEMPTS = 3  # a file that changes while it is read is read again, then refused (TFTP error 0)
BUILD_BLOCK = 200  # device configs built (and sent to the signing pool) per turn of the event loop

KIND_TRUST_LIST = "trust-list"
KIND_DEVICE_CONFIG = "device-config"
KIND_DEFAULT_CONFIG = "default-config"
KIND_FIRMWARE = "firmware"
KIND_STATIC = "static"
FILE_KINDS = (KIND_TRUST_LIST, KIND_DEVICE_CONFIG, KIND_DEFAULT_CONFIG, KIND_FIRMWARE, KIND_STATIC,
              "other-cluster")


def classify(name: str) -> str:
    if name in TRUST_LISTS:
        return KIND_TRUST_LIST
    if DEVICE_CONFIG.fullmatch(name):
        return KIND_DEVICE_CONFIG
    if firmware.load_for_filename(name):
        return KIND_FIRMWARE
    if name == DefaultConfig.FILENAME:
        return KIND_DEFAULT_CONFIG
    return KIND_STATIC


class PublishError(ValueError):
    """A refused PublishFile; `status` names the gRPC status code to answer with."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class ListedFile:
    name: str
    size: int
    signed: bool
    kind: str


class TftpContent:
    def __init__(self, root: Path, layout: Layout, owners: OwnerReads | None, endpoints: ClusterEndpoints,
                 store: SignedStore, signer, detector: ChangeDetector | None = None):
        """`owners`: where the device inputs and the mode are asked (owners.py); `detector`: the
        version check (None: every request asks the owners again)."""
        self.root = Path(root)
        self.layout = layout
        self.endpoints = endpoints
        self.store = store
        self.signer = signer
        self._firmware: dict[str, bytes] = {}
        # (folder, name) -> (stamp, bytes, sha256 of the bytes once a `.sgn` of them was asked)
        self._static: OrderedDict[tuple[str, str], tuple[tuple, bytes, bytes | None]] = OrderedDict()
        self._held_bytes = 0
        # (folder, name) -> (stamp, the read running in a thread): requests for a big file that is
        # not held yet share one read instead of each reading (and holding a copy of) 16 MiB.
        self._loading: dict[tuple[str, str], tuple[tuple, asyncio.Future]] = {}
        # (folder, name) -> (the bytes, their sha256 being computed in a thread): one hash of a big
        # file for all the `.sgn` requests that ask for it meanwhile.
        self._hashing: dict[tuple[str, str], tuple[bytes, asyncio.Future]] = {}
        self.static_budget = MAX_HELD_STATIC_BYTES
        self.static_reads = 0  # files read from disk (a held file served again is no read)
        self.devices = DeviceFiles(owners, endpoints, detector)
        self.unavailable = 0
        self.caught_up = 0
        self.served: Counter[str] = Counter()
        self.not_found = 0
        self.refused = 0
        # Publishing is ordered (PublishFile generation/takes_back): the check and the write of
        # one publish run under this lock in the writing thread — a cancelled call's thread still
        # holds it until its write is done — and the generations taken back are remembered here.
        self._publish_lock = threading.Lock()
        # (name, generation taken back) -> the generation of the publish that named it (last)
        self._taken_back: OrderedDict[tuple[str, int], int] = OrderedDict()

    @property
    def own_folder(self) -> Path:
        return self.root / self.layout.own.tftp_path

    # --- serving ----------------------------------------------------------------------------------
    def kind_of(self, filename: str) -> str:
        """Kind of file a request names (metrics): another cluster's, a bad name, or classify()."""
        try:
            owner, _folder, name = self.layout.split(filename)
        except BadName:
            return "invalid"
        if owner is not self.layout.own:
            return "other-cluster"
        return classify(name[:-len(SGN)] if name.endswith(SGN) else name)

    async def resolve(self, filename: str, client: tuple[str, int] | None = None) -> bytes | None:
        try:
            owner, folder, name = self.layout.split(filename)
        except BadName as exc:
            self.refused += 1
            raise TftpError(ERR_ACCESS_VIOLATION, str(exc)) from None
        try:
            data, kind = await self._lookup(owner, folder, name)
        except OwnersUnavailable as exc:
            # What this file is built from (or whether to sign it) is not known now: say so, never
            # serve a stale or guessed file. The phone asks again (and the poll asks the owners).
            self.unavailable += 1
            raise TftpError(ERR_NOT_DEFINED, f"{name[:64]} is not available now: {exc}"[:200]) from None
        if data is None:
            self.not_found += 1
        else:
            self.served[kind] += 1
        return data

    async def _lookup(self, owner: ClusterPath, folder: str, name: str) -> tuple[bytes | None, str]:
        if owner is not self.layout.own:
            return await self._read(folder, name), "other-cluster"
        load = firmware.load_for_filename(name)
        if load is not None:  # AUTH-1: images are signed in every mode, under the name asked for
            return self.firmware_image(load, name), KIND_FIRMWARE
        signed = name.endswith(SGN)
        base = name[: -len(SGN)] if signed else name
        kind = classify(base)
        if kind == KIND_FIRMWARE:
            return None, kind  # '<load>.sbn.sgn': images are never signed twice
        if signed and kind == KIND_TRUST_LIST:
            return None, kind
        if kind == KIND_DEVICE_CONFIG:
            # One version check; after a commit, this device's inputs re-read at once (devicefiles).
            mode, payload = await self.devices.config(base[:15])
        else:
            if signed:
                await self.devices.current()  # the mode, as fresh as the version check
            mode, payload = self.devices.mode, None
        # AUTH-3: a non-secure cluster signs nothing; a committed mode change applies to the very
        # next download.
        if signed and mode is not ClusterMode.MIXED:
            return None, kind
        if kind != KIND_DEVICE_CONFIG:
            payload = await self._read(folder, base)
        if payload is None or not signed:
            return payload, kind
        digest = None if kind == KIND_DEVICE_CONFIG else await self._static_digest(folder, base, payload)
        return await self.store.get(folder, base, payload, digest), kind

    async def _static_digest(self, folder: str, name: str, payload: bytes) -> bytes:
        """The sha256 of a static file's bytes, kept with the held file (same stat stamp): a
        repeated `.sgn` request for a 16 MiB bundle is then a memory look-up, where it re-hashed
        the whole file each time; a changed file is a new held entry, hashed (and signed) anew."""
        key = (folder, name)
        held = self._static.get(key)
        if held is not None and held[1] is payload and held[2] is not None:
            return held[2]
        if len(payload) <= BIG_PAYLOAD:  # hashed here, on the loop: kept before anyone else asks
            digest = await payload_digest(payload)
            self._keep_digest(key, payload, digest)
            return digest
        # Hashed in a thread, once for every request asking meanwhile (phones booting together ask
        # for the same bundle's .sgn at once): one job, shielded, so a request that gives up (its
        # transfer cancelled) does not cancel the others' hash.
        job = self._hashing.get(key)
        if job is None or job[0] is not payload:
            future = asyncio.ensure_future(payload_digest(payload))
            job = self._hashing[key] = (payload, future)
            future.add_done_callback(lambda f, key=key, job=job: self._hashed(key, job, f))
        return await asyncio.shield(job[1])

    def _hashed(self, key: tuple[str, str], job: tuple, future: asyncio.Future) -> None:
        if self._hashing.get(key) is job:
            del self._hashing[key]
        if not future.cancelled() and future.exception() is None:
            self._keep_digest(key, job[0], future.result())

    def _keep_digest(self, key: tuple[str, str], payload: bytes, digest: bytes) -> None:
        held = self._static.get(key)  # re-read: the file may have been replaced meanwhile
        if held is not None and held[1] is payload:
            self._static[key] = (held[0], payload, digest)

    async def _read(self, folder: str, name: str) -> bytes | None:
        """A static file's bytes. Kept in memory while one `stat` shows the same file (inode,
        size, modification and change times): an administrator's edit or replacement (rename) is
        seen by the next request; a changed file goes through the full checks again. Raises
        TftpError(0) for a file that keeps changing while it is read (never a mix of versions).
        A file above 1 MiB is read in a thread (a cold 16 MiB read must not stall running
        transfers), once for all the requests that ask for it meanwhile."""
        key = (folder, name)
        try:
            st = os.stat(self.root / folder / name)
        except (OSError, ValueError):
            self._drop(key)
            self._loading.pop(key, None)  # a read still running is of a file that is gone: not held
            return None
        stamp = _stamp(st)
        held = self._static.get(key)
        if held is not None and held[0] == stamp:
            self._static.move_to_end(key)
            return held[1]
        if st.st_size <= BIG_PAYLOAD:
            self.static_reads += 1
            got = self._read_checked(folder, name)
            self._loading.pop(key, None)  # a big read still running is of an older version: not held
            self._keep(key, got)
            return None if got is None else got[1]
        loading = self._loading.get(key)
        if loading is None or loading[0] != stamp:
            self.static_reads += 1
            future = asyncio.ensure_future(asyncio.to_thread(self._read_checked, folder, name))
            loading = self._loading[key] = (stamp, future)
            future.add_done_callback(lambda f, key=key, entry=loading: self._loaded(key, entry, f))
        got = await asyncio.shield(loading[1])
        return None if got is None else got[1]

    def _loaded(self, key: tuple[str, str], entry: tuple, future: asyncio.Future) -> None:
        """A threaded read finished: held here, on the event loop, once for all its requests —
        unless a newer version was asked for meanwhile (replaced file): a read that finishes late
        must not put the old copy over the new one (and evict other files to make room for it)."""
        if future.cancelled() or future.exception() is not None:
            current = False  # each request waiting for it gets the error (TftpError: being changed)
        else:
            current = self._loading.get(key) is entry
        if self._loading.get(key) is entry:
            del self._loading[key]
        if current:
            self._keep(key, future.result())

    def _keep(self, key: tuple[str, str], got: tuple[tuple, bytes] | None) -> None:
        self._drop(key)
        if got is not None:
            self._hold(key, *got)

    def _drop(self, key: tuple[str, str]) -> None:
        held = self._static.pop(key, None)
        if held is not None:
            self._held_bytes -= len(held[1])

    def _hold(self, key: tuple[str, str], stamp: tuple, data: bytes) -> None:
        self._drop(key)  # never two copies of one file counted
        if len(data) > self.static_budget:
            return
        while self._static and (self._held_bytes + len(data) > self.static_budget
                                or len(self._static) >= MAX_HELD_STATICS):
            _key, (_stamp_, old, _digest) = self._static.popitem(last=False)
            self._held_bytes -= len(old)
        self._static[key] = (stamp, data, None)
        self._held_bytes += len(data)

    def _read_checked(self, folder: str, name: str) -> tuple[tuple, bytes] | None:
        """(stamp, bytes) of a regular file inside the folder, read whole from one open file whose
        stamp is the same before and after the read: a file written in place meanwhile is read
        again, so what is served (and held) is one version of it, never a mix."""
        base = (self.root / folder).resolve()
        path = (base / name).resolve()
        # Layout.split already refused '..'; this also catches a symlink that leads out of the folder.
        if base not in path.parents or path.name.startswith("."):
            return None
        for _attempt in range(READ_ATTEMPTS):
            try:
                # O_NONBLOCK: a FIFO put there is refused below instead of hanging the event loop.
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return None
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode) or before.st_size > MAX_STATIC_FILE:
                    return None
                data = self._read_fd(fd, before.st_size)
                after = os.fstat(fd)
            except OSError:
                return None
            finally:
                os.close(fd)
            if len(data) == before.st_size and _stamp(after) == _stamp(before):
                return _stamp(before), data
            log.info("static file changed while it was read; reading it again",
                     extra={"tftp_file": f"{folder}/{name}"[:200]})
        raise TftpError(ERR_NOT_DEFINED, f"{name[:64]} is being changed on the server; try again")

    def _read_fd(self, fd: int, size: int) -> bytes:
        """Up to size + 1 bytes (one more shows a file that grew while it was read)."""
        chunks, left = [], size + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def firmware_image(self, load: str, filename: str | None = None) -> bytes:
        """AUTH-1: the signed image; built once (the TFTP certificate is never re-issued, CERT-5)."""
        filename = filename or firmware.image_filename(load)
        image = self._firmware.get(filename)
        if image is None:
            image = firmware.sign_image(load, self.signer, int(time.time()), filename)
            self._firmware[filename] = image
        return image

    # --- re-signing -------------------------------------------------------------------------------
    async def mode(self) -> ClusterMode:
        await self.devices.current()
        return self.devices.mode

    async def _build_and_sign(self, names: list[str], *, sign: bool, force: bool = False) -> int:
        """Build the config of each device still configured (only if its inputs changed) and, when
        `sign`, sign it in the pool: in blocks, so the first files are signing while later ones
        are built and a phone asking for one meanwhile waits for it rather than signing it again."""
        folder = self.layout.own.tftp_path
        signing = []
        for start in range(0, len(names), BUILD_BLOCK):
            items = []
            for name in names[start:start + BUILD_BLOCK]:
                if not DEVICE_NAME.fullmatch(name):
                    continue  # not a device name (the file name is built from it): nothing to sign or drop
                xml = self.devices.xml(name)
                if xml is None:
                    self.store.forget(folder, f"{name}.cnf.xml")  # a deleted device
                else:
                    items.append((f"{name}.cnf.xml", xml))
            if sign and items:
                signing.append(asyncio.ensure_future(self.store.refresh(folder, items, force=force)))
            await asyncio.sleep(0)  # building 10,000 files must not stall running transfers
        return sum(await asyncio.gather(*signing))

    async def resign_devices(self, names: list[str] | None, *, force: bool = False) -> int:
        """Sign the configs of `names` (all when None) now if stale (all of them when `force`), in
        the process pool. Non-secure: 0."""
        await self.devices.current()
        if self.devices.mode is not ClusterMode.MIXED:
            return 0
        return await self._build_and_sign(sorted(self.devices.inputs) if names is None else names,
                                           sign=True, force=force)

    async def catch_up(self) -> int:
        """Build (and in mixed mode sign) what changed since the last call, version check first:
        what events and the poll run, so the phones' requests find their files ready. Returns
        how many files were signed."""
        await self.devices.current()
        names, mode_changed = self.devices.take_dirty()
        if not names and not mode_changed:
            return 0
        self.caught_up += 1
        if mode_changed:
            names = sorted(self.devices.inputs)
        mixed = self.devices.mode is ClusterMode.MIXED
        count = await self._build_and_sign(names, sign=mixed)
        if mode_changed and mixed:
            count += await self.resign_static()
        return count

    async def resign_static(self, *, force: bool = False) -> int:
        if await self.mode() is not ClusterMode.MIXED:
            return 0
        items = []
        for entry in self.list_static():
            try:
                data = await self._read(self.layout.own.tftp_path, entry.name)
            except TftpError:
                continue  # being written: the next request (or refresh) signs the finished file
            if data is not None and entry.kind in (KIND_STATIC, KIND_DEFAULT_CONFIG):
                items.append((entry.name, data))
        return await self.store.refresh(self.layout.own.tftp_path, items, force=force)

    # --- listing and publishing ---------------------------------------------------------------------
    def list_static(self, folder: str | None = None) -> list[ListedFile]:
        top = self.root / (folder or self.layout.own.tftp_path)
        out = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel_dir = Path(dirpath).relative_to(top)
            dirnames[:] = sorted(d for d in dirnames
                                 if not d.startswith(".") and not (rel_dir == Path(".") and d in RESERVED))
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                rel = (rel_dir / f).as_posix()
                try:
                    size = (Path(dirpath) / f).stat().st_size
                except OSError:
                    continue  # removed since the walk listed it, or a dangling link: not served either
                out.append(ListedFile(rel, size, False, classify(rel)))
        return out

    async def list_files(self, folder: str | None, include_devices: bool) -> tuple[str, list[ListedFile]]:
        mode = await self.mode()
        own = folder in (None, "", self.layout.own.tftp_path)
        files = self.list_static(None if own else folder)
        if not own:
            return mode, files
        for f in files:
            f.signed = mode is ClusterMode.MIXED and f.kind in (KIND_STATIC, KIND_DEFAULT_CONFIG)
        for load in firmware.all_loads():
            for image in firmware.image_filenames(load):
                files.append(ListedFile(image, len(self.firmware_image(load, image)), True, KIND_FIRMWARE))
        if include_devices:
            for name in sorted(self.devices.inputs):
                files.append(ListedFile(f"{name}.cnf.xml", len(self.devices.xml(name)), mode is ClusterMode.MIXED,
                                        KIND_DEVICE_CONFIG))
        return mode, sorted(files, key=lambda f: f.name)

    def publish(self, cluster_path: str, name: str, content: bytes, sha256: str, *,
                generation: int = 0, takes_back: Sequence[int] = (), withdraw: bool = False
                ) -> tuple[Path, str]:
        """Write a trust list (from the CTL client) into this cluster's folder, atomically.

        A take-back (`takes_back`: the generations ctl-provider undoes — the publish it takes back
        and every earlier take-back of its that got no answer) is remembered, each generation,
        before its write; a publish of a generation taken back is refused (ABORTED), whenever it
        arrives — so a late publish cannot put back a CTL the cluster took back, nor a late
        take-back put back or withdraw a CTL committed since. Check and write
        run under one lock: a publish already past its check finishes writing before the
        take-back's write, which then wins. A `withdraw` take-back (the cluster's first CTL was
        not recorded: nothing to put back) removes the file instead of writing one — same
        ordering, so the TFTP server serves no trust list and the late publish is refused.
        Returns (path, sha256 written; "" for a withdraw)."""
        if len(takes_back) > MAX_TAKES_BACK:
            raise PublishError("INVALID_ARGUMENT", f"a publish names at most {MAX_TAKES_BACK} generations "
                               f"in takes_back, not {len(takes_back)}; nothing taken back")
        named = [g for g in takes_back if g]
        if withdraw and not named:
            raise PublishError("INVALID_ARGUMENT", "a withdraw is a take-back: it must name the "
                               "publish generation it undoes (takes_back)")
        if withdraw and (content or sha256):
            raise PublishError("INVALID_ARGUMENT", "a withdraw removes the file: it carries no "
                               "content or sha256")
        if named:  # remembered first: even a take-back refused below keeps its publishes out
            with self._publish_lock:
                for taken in named:
                    self._taken_back[(name, taken)] = generation
                    self._taken_back.move_to_end((name, taken))  # named again: kept the longest
                while len(self._taken_back) > MAX_TAKEN_BACK:
                    self._taken_back.popitem(last=False)
        own = self.layout.own
        path = cluster_path or own.tftp_path
        if path != own.tftp_path:
            owner = self.layout.owner(path)
            if owner is not None:
                raise PublishError("PERMISSION_DENIED", f"MODE-6: TFTP path {path!r} belongs to cluster "
                                   f"{owner.name!r}; this cluster may only publish into {own.tftp_path!r}")
            raise PublishError("NOT_FOUND", f"TFTP path {path!r} is not configured on this TFTP server "
                               f"(this cluster's path is {own.tftp_path!r})")
        if name not in TRUST_LISTS:
            raise PublishError("INVALID_ARGUMENT", f"only trust-list files ({', '.join(TRUST_LISTS)}) "
                               f"are published, not {name[:64]!r}")
        target = self.root / own.tftp_path / name
        if withdraw:
            with self._publish_lock:  # after a publish already writing, as a take-back's write
                if generation and (name, generation) in self._taken_back:  # itself taken back
                    raise PublishError("ABORTED", f"{name} withdraw generation {generation} was taken "
                                       f"back by ctl-provider ({self._named_by(name, generation)}: "
                                       "a later commit published since); nothing removed")
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
                _sync_dir(target.parent)
            return target, ""
        if len(content) > MAX_CTL_SIZE:
            raise PublishError("INVALID_ARGUMENT", f"{name} is {len(content)} bytes; trust lists are at "
                               f"most {MAX_CTL_SIZE}")
        actual = hashlib.sha256(content).hexdigest()
        if sha256.lower() != actual:
            raise PublishError("DATA_LOSS", f"sha256 mismatch: announced {sha256[:64]!r}, received {actual}")
        try:
            parse_ctl(content)
        except CtlFormatError as exc:
            raise PublishError("INVALID_ARGUMENT", f"{name} is not a valid trust list: {exc}") from None
        with self._publish_lock:
            if generation and (name, generation) in self._taken_back:
                raise PublishError("ABORTED", f"{name} publish generation {generation} was taken back "
                                   f"by ctl-provider ({self._named_by(name, generation)}: its commit "
                                   "was cancelled or not recorded, or it is a take-back a later "
                                   "commit's publish superseded); not published")
            atomic_write(target, content)
        return target, actual

    def _named_by(self, name: str, generation: int) -> str:
        by = self._taken_back.get((name, generation))
        return f"named by publish generation {by}" if by else "named by an unordered publish"


def _sync_dir(folder: Path) -> None:
    """fsync a folder, so a removal in it survives a crash (as atomic_write's rename does)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stamp(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
