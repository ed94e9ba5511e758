"""Signed copies of served files (AUTH-3, AUTH-4) and the process pool that makes them.

`SignedStore.get(folder, name, payload)` returns `NAME.sgn` for exactly these payload bytes: a copy
is reused only when the sha256 of its payload equals the payload asked for, so a changed source is
always re-signed before it is served (never stale), and a copy is only ever replaced whole (never
half-written).
Requests for the same bytes arriving together share one signing job (a task of its own: a request
cancelled meanwhile does not cancel it, the others get the signed copy).

- caching on: signed copies live in memory, in an LRU bounded by entries and bytes;
- caching off: they are written atomically to `DATA/tftp/<folder>/signed/NAME.sgn`; a changed
  source is re-signed and the new file replaces the old one (atomic rename). A file found there is
  reused only if it is this server's signature of that name and it verifies (checked once per file
  version: the index holds the whole file's sha256).

`SigningPool` signs one file inline (about a millisecond) and many files in a process pool using
every core (`FileSigner` pickles as key bytes and is loaded once per worker).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ccmsec.formats.sgn import SgnFormatError, SignatureError, parse_sgn, sign_file, verify_sgn
from ccmsec.fsutil import atomic_write
from ccmsec.procutil import exit_with_parent

log = logging.getLogger("ccmsec.tftp-signer")

SIGNED_FOLDER = "signed"
POOL_WAIT = 0.5  # longest a request waits for its file queued in the signing pool before signing it itself
SGN = ".sgn"
# Above this, a payload is hashed and signed (and its signed copy read and checked) in a thread:
# a 16 MiB firmware bundle is tens of milliseconds of work that must not stall running transfers.
BIG_PAYLOAD = 1024 * 1024


def sign_batch(signer, items: list[tuple[str, bytes]], timestamp: int) -> list[bytes]:
    """Worker function: sign each (served name, payload) as `<name>.sgn`."""
    return [sign_file(payload, name + SGN, signer, timestamp) for name, payload in items]


class SigningPool:
    def __init__(self, signer, workers: int | None = None, chunk: int = 50):
        self.signer = signer
        self.workers = workers or os.cpu_count() or 2
        self.chunk = chunk
        self._pool: ProcessPoolExecutor | None = None

    def sign_one(self, name: str, payload: bytes, timestamp: int | None = None) -> bytes:
        return sign_file(payload, name + SGN, self.signer, int(timestamp or time.time()))

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a fork of a process running asyncio, gRPC and NATS threads is not safe.
            # The workers hold the TFTP signing key: they exit when this service dies, however.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=exit_with_parent, initargs=(os.getpid(),))
        return self._pool

    async def warm_up(self) -> None:
        """Start the workers and load the key in each, so the first re-sign storm is not slowed."""
        loop = asyncio.get_running_loop()
        pool = self._executor()
        await asyncio.gather(*(loop.run_in_executor(pool, sign_batch, self.signer, [], 0)
                               for _ in range(self.workers)))

    async def sign_many(self, items: list[tuple[str, bytes]], timestamp: int | None = None) -> list[bytes]:
        chunks = self.sign_chunks(items, timestamp)
        return [signed for chunk in await asyncio.gather(*chunks) for signed in chunk]

    def sign_chunks(self, items: list[tuple[str, bytes]], timestamp: int | None = None) -> list[asyncio.Future]:
        """One future per chunk of `items`, in order: a few are signed inline, many in the pool."""
        timestamp = int(timestamp or time.time())
        loop = asyncio.get_running_loop()
        if len(items) <= self.chunk:
            if sum(len(payload) for _name, payload in items) > BIG_PAYLOAD:
                # a firmware bundle among the static files: tens of ms of hashing, not on the loop
                return [asyncio.ensure_future(asyncio.to_thread(sign_batch, self.signer, items, timestamp))]
            future = loop.create_future()
            future.set_result(sign_batch(self.signer, items, timestamp))
            return [future]
        pool = self._executor()
        return [loop.run_in_executor(pool, sign_batch, self.signer, items[i:i + self.chunk], timestamp)
                for i in range(0, len(items), self.chunk)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _digest(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


async def payload_digest(payload: bytes) -> bytes:
    """The sha256 a signed copy is matched by; a big payload is hashed off the event loop."""
    if len(payload) > BIG_PAYLOAD:
        return await asyncio.to_thread(_digest, payload)
    return _digest(payload)


class SignedStore:
    def __init__(self, pool: SigningPool, root: Path, *, caching: bool,
                 max_entries: int = 20_000, max_bytes: int = 64 * 1024 * 1024):
        self.pool = pool
        self.root = Path(root)
        self.caching = caching
        self.max_entries = max_entries
        self.pool_wait = POOL_WAIT
        self.max_bytes = max_bytes
        self._memory: OrderedDict[tuple[str, str], tuple[bytes, bytes]] = OrderedDict()
        self._memory_bytes = 0
        # key -> (payload digest, digest of the whole file) of a file on disk known to be ours
        self._on_disk: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        # (folder, name, payload digest) -> what is signing it now: the pool (refresh), or a job one
        # request started and every request for the same bytes shares (get).
        self._inflight: dict[tuple[str, str, bytes], asyncio.Future] = {}
        self._jobs: dict[tuple[str, str, bytes], asyncio.Task] = {}
        self.hits = 0
        self.misses = 0
        self.signed = 0
        self.evictions = 0

    def path(self, folder: str, name: str) -> Path:
        return self.root / folder / SIGNED_FOLDER / (name + SGN)

    def stats(self) -> dict[str, str]:
        return {"cache_hits": str(self.hits), "cache_misses": str(self.misses),
                "files_signed": str(self.signed), "cache_entries": str(len(self._memory) or len(self._on_disk)),
                "cache_bytes": str(self._memory_bytes), "cache_evictions": str(self.evictions)}

    # --- lookup ---------------------------------------------------------------------------------
    def _cached(self, key: tuple[str, str], digest: bytes, payload: bytes) -> bytes | None:
        if self.caching:
            entry = self._memory.get(key)
            if entry is not None and entry[0] == digest:
                self._memory.move_to_end(key)
                return entry[1]
            return None
        known = self._on_disk.get(key)
        return self._kept_on_disk(key, digest, known, self._read_disk(key, known))

    async def _cached_async(self, key: tuple[str, str], digest: bytes, payload: bytes) -> bytes | None:
        """_cached; with caching off, a big file's signed copy is read and checked in a thread (the
        thread touches no state: what it learned is applied here, on the event loop)."""
        if self.caching or len(payload) <= BIG_PAYLOAD:
            return self._cached(key, digest, payload)
        known = self._on_disk.get(key)
        return self._kept_on_disk(key, digest, known, await asyncio.to_thread(self._read_disk, key, known))

    def _read_disk(self, key: tuple[str, str], known: tuple[bytes, bytes] | None
                   ) -> tuple[bytes, bytes, bytes | None] | None:
        """(file, its digest, its payload's digest or None if it is not ours and intact), or None
        if there is no file. A file already known (same whole digest) is not checked again."""
        try:
            data = self.path(*key).read_bytes()
        except OSError:
            return None
        whole = _digest(data)
        if known is not None and known[1] == whole:
            return data, whole, known[0]
        # Not written by this process, or replaced since: served only if it is ours and intact
        # — signed under this name by this server's certificate, signature valid. A damaged
        # signature, a copy signed by another (or an earlier) key or under another name would
        # be refused by every phone (AUTH-5): sign again, the rename replaces it.
        try:
            signed = parse_sgn(data)
            if signed.header.file_name != key[1] + SGN:
                return data, whole, None
            verify_sgn(signed, self.pool.signer.certificate)
        except (SgnFormatError, SignatureError):
            return data, whole, None
        return data, whole, _digest(signed.payload)

    def _kept_on_disk(self, key: tuple[str, str], digest: bytes, known: tuple[bytes, bytes] | None,
                      found: tuple[bytes, bytes, bytes | None] | None) -> bytes | None:
        if found is None:
            return None
        data, whole, payload = found
        if known is None or known[1] != whole:
            self._on_disk.pop(key, None)
            if payload is None:
                return None
            self._on_disk[key] = (payload, whole)
        return data if payload == digest else None

    async def _sign(self, name: str, payload: bytes) -> bytes:
        if len(payload) > BIG_PAYLOAD:
            return await asyncio.to_thread(self.pool.sign_one, name, payload)
        return self.pool.sign_one(name, payload)

    def _remember(self, key: tuple[str, str], digest: bytes, signed: bytes) -> None:
        if self.caching:
            old = self._memory.pop(key, None)
            if old is not None:
                self._memory_bytes -= len(old[1])
            self._memory[key] = (digest, signed)
            self._memory_bytes += len(signed)
            while self._memory and (len(self._memory) > self.max_entries or self._memory_bytes > self.max_bytes):
                _, (_, dropped) = self._memory.popitem(last=False)
                self._memory_bytes -= len(dropped)
                self.evictions += 1

    def _write(self, key: tuple[str, str], digest: bytes, signed: bytes) -> None:
        atomic_write(self.path(*key), signed)
        self._on_disk[key] = (digest, _digest(signed))

    # --- API ------------------------------------------------------------------------------------
    async def get(self, folder: str, name: str, payload: bytes, digest: bytes | None = None) -> bytes:
        """`name.sgn` for exactly `payload`, signed now if no current copy exists. `digest`: the
        payload's sha256 if the caller already knows it (a held static file), so a repeated
        request for a big file is a memory look-up, not a hash of the whole file."""
        key = (folder, name)
        if digest is None:
            digest = await payload_digest(payload)
        hit = await self._cached_async(key, digest, payload)
        if hit is not None:
            self.hits += 1
            return hit
        flight = (folder, name, digest)
        pending = self._inflight.get(flight)
        if pending is not None and flight not in self._jobs:  # queued in the signing pool (refresh)
            try:
                return await asyncio.wait_for(asyncio.shield(pending), self.pool_wait)
            except Exception:
                # Still queued behind thousands of others (or that signing failed): this phone is
                # waiting now, so sign its file here, once for all asking meanwhile (the pool's
                # copy, same payload, replaces it when it comes).
                pass
        job = self._jobs.get(flight)
        if job is not None:
            # Another request is signing these very bytes: the same work, so wait for it whole
            # (a 16 MiB bundle is signed once, however many phones ask at once). The job is a
            # task of its own: it goes on when the request that started it is cancelled.
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                if not job.cancelled():
                    raise  # this request was cancelled, not the job
            except Exception:
                pass  # that signing failed: sign it again (once, shared, like the first)
            job = self._jobs.get(flight)
        if job is None:
            self.misses += 1
            job = asyncio.ensure_future(self._sign_and_keep(key, digest, name, payload))
            self._jobs[flight] = job
            job.add_done_callback(lambda done, flight=flight: self._job_done(flight, done))
        # Shielded: when this request is cancelled (its transfer ended, the phone went away) the
        # job goes on, and the others waiting for the same file get it, never a CancelledError.
        return await asyncio.shield(job)

    async def _sign_and_keep(self, key: tuple[str, str], digest: bytes, name: str, payload: bytes) -> bytes:
        signed = await self._sign(name, payload)
        self.signed += 1
        if self.caching:
            self._remember(key, digest, signed)
        else:
            await asyncio.to_thread(self._write, key, digest, signed)
        return signed

    def _job_done(self, flight: tuple[str, str, bytes], job: asyncio.Future) -> None:
        if self._jobs.get(flight) is job:
            del self._jobs[flight]
        if not job.cancelled():
            job.exception()  # retrieved: the requests waiting for it got it, nobody else needs to

    async def refresh(self, folder: str, items: list[tuple[str, bytes]], *, force: bool = False) -> int:
        """Re-sign every (name, payload) whose signed copy is missing or stale (every one when
        `force`), unless it is being signed right now; returns how many were signed. Each file is
        kept as soon as its chunk is signed, and a request for a file being signed here waits for
        it instead of signing it again."""
        loop = asyncio.get_running_loop()
        # Big payloads (static files) are hashed, and their copies on disk checked, in a thread
        # first; the claim below uses that answer (a copy signed meanwhile is at worst signed again).
        known: dict[int, tuple[bytes, bool]] = {}
        for index, (name, payload) in enumerate(items):
            if len(payload) > BIG_PAYLOAD:
                digest = await payload_digest(payload)
                stale = force or await self._cached_async((folder, name), digest, payload) is None
                known[index] = (digest, stale)
        todo = []
        for index, (name, payload) in enumerate(items):  # claimed with no await: no one signs them twice
            digest, stale = known.get(index) or (_digest(payload), None)
            flight = (folder, name, digest)
            if flight in self._inflight or flight in self._jobs:
                continue
            if stale is None:
                stale = force or self._cached((folder, name), digest, payload) is None
            if stale:
                self._inflight[flight] = loop.create_future()
                todo.append((name, payload, digest))
        if not todo:
            return 0
        pending = [(folder, name, digest) for name, _, digest in todo]
        try:
            chunks = self.pool.sign_chunks([(n, p) for n, p, _ in todo])
            size = self.pool.chunk
            done = 0

            async def keep(index: int, chunk: asyncio.Future) -> None:
                nonlocal done
                signed = await chunk
                part = todo[index * size:index * size + len(signed)]
                self.signed += len(signed)
                if self.caching:
                    for (name, _, digest), data in zip(part, signed):
                        self._remember((folder, name), digest, data)
                else:
                    def write_all() -> None:
                        for (name, _, digest), data in zip(part, signed):
                            self._write((folder, name), digest, data)
                    await asyncio.to_thread(write_all)
                for (name, _, digest), data in zip(part, signed):
                    future = self._inflight.pop((folder, name, digest), None)
                    if future is not None and not future.done():
                        future.set_result(data)
                done += len(signed)

            await asyncio.gather(*(keep(i, c) for i, c in enumerate(chunks)))
            return done
        finally:
            for flight in pending:  # a failed chunk: waiters get the error and sign it themselves
                future = self._inflight.pop(flight, None)
                if future is not None and not future.done():
                    future.set_exception(RuntimeError("signing in the pool failed"))
                    future.exception()

    def forget(self, folder: str, name: str) -> None:
        """Drop a signed copy whose source is gone (a deleted device)."""
        key = (folder, name)
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_bytes -= len(old[1])
        if self._on_disk.pop(key, None) is not None or not self.caching:
            try:
                self.path(folder, name).unlink()
            except OSError:
                pass
