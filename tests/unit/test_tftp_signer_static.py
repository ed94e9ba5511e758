"""Static TFTP files of the tftp-signer (files.py): large files (firmware bundles, up to 16 MiB) are
held in memory under one byte budget like small ones, stat-checked so nothing stale is served, and
a file written while it is read is never served (or held) as a mix of two versions."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading

import pytest

from ccmsec.aio.tftp import TftpServer, tftp_get
from ccmsec.domain import ClusterMode
from ccmsec.formats.sgn import parse_sgn, verify_sgn
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec.pki.tokens import FileSigner
from ccmsec.wire.tftp import ERR_NOT_DEFINED, TftpError
from ccmsec_tftp_signer.content import ClusterEndpoints
from ccmsec_tftp_signer.files import TftpContent
from ccmsec_tftp_signer.layout import ClusterPath, Layout
from ccmsec_tftp_signer.owners import OwnerReads
from ccmsec_tftp_signer.signing import SignedStore, SigningPool

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024


def _content(root, cls=TftpContent) -> TftpContent:
    (root / "cluster1").mkdir(exist_ok=True)
    return cls(root, Layout(ClusterPath("local", "cluster1")), None, None, None, None)


def _replace(path, data: bytes) -> None:
    """What an administrator's copy tool does: write beside it, rename over it."""
    tmp = path.with_name("." + path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def test_a_large_static_file_is_read_once_and_shared_by_every_transfer(tmp_path):
    content = _content(tmp_path)
    image = os.urandom(3 * MIB)
    (tmp_path / "cluster1" / "P0030801SR02.zz").write_bytes(image)
    first = await content.resolve("P0030801SR02.zz")
    second = await content.resolve("P0030801SR02.zz")
    assert first == image
    assert second is first  # served from memory: no second read of 3 MiB, no second copy
    assert content.static_reads == 1


async def test_a_replaced_large_file_is_served_new_at_the_next_request(tmp_path):
    content = _content(tmp_path)
    path = tmp_path / "cluster1" / "firmware.bin"
    old, new = os.urandom(2 * MIB), os.urandom(2 * MIB)  # same size: only the stat stamp tells
    path.write_bytes(old)
    assert await content.resolve("firmware.bin") == old
    _replace(path, new)
    assert await content.resolve("firmware.bin") == new
    path.write_bytes(new[: MIB])  # written in place, shorter
    assert await content.resolve("firmware.bin") == new[: MIB]
    path.unlink()
    assert await content.resolve("firmware.bin") is None


async def test_held_static_files_stay_within_the_memory_budget(tmp_path):
    content = _content(tmp_path)
    content.static_budget = 5 * MIB
    files = {f"f{i}.bin": os.urandom(2 * MIB) for i in range(3)}
    for name, data in files.items():
        (tmp_path / "cluster1" / name).write_bytes(data)
    for name in files:
        assert await content.resolve(name) == files[name]
    assert content._held_bytes <= 5 * MIB and len(content._static) == 2  # least recently served dropped
    reads = content.static_reads
    assert await content.resolve("f2.bin") == files["f2.bin"] and content.static_reads == reads
    assert await content.resolve("f0.bin") == files["f0.bin"] and content.static_reads == reads + 1
    assert content._held_bytes == sum(len(d) for _k, (_s, d, _h) in content._static.items()) <= 5 * MIB
    (tmp_path / "cluster1" / "huge.bin").write_bytes(b"h" * (6 * MIB))  # above the budget: served, not held
    assert await content.resolve("huge.bin") == b"h" * (6 * MIB)
    assert ("cluster1", "huge.bin") not in content._static


class _WrittenWhileRead(TftpContent):
    """The administrator writes the file in place while the server is half-way through reading it."""

    writes = 1

    def _read_fd(self, fd: int, size: int) -> bytes:
        head = os.read(fd, size // 2)
        if self.writes:
            self.writes -= 1
            path = self.root / "cluster1" / "firmware.bin"
            with open(path, "r+b") as f:
                f.write(b"N" * size)
            os.utime(path, ns=(self.writes + 1, self.writes + 1))  # a distinct stamp even within one clock tick
        return head + super()._read_fd(fd, size - len(head))


async def test_a_file_written_while_it_is_read_is_never_served_as_a_mix(tmp_path):
    content = _content(tmp_path, _WrittenWhileRead)
    path = tmp_path / "cluster1" / "firmware.bin"
    path.write_bytes(b"O" * (2 * MIB))
    data = await content.resolve("firmware.bin")
    assert content.writes == 0  # the write did happen mid-read
    assert data == b"N" * (2 * MIB)  # read again: the new version whole, not half old, half new
    held = content._static[("cluster1", "firmware.bin")][1]
    assert held == data

    content = _content(tmp_path, _WrittenWhileRead)
    content.writes = 10  # it keeps changing: refused with a clear error, nothing held
    with pytest.raises(TftpError) as err:
        await content.resolve("firmware.bin")
    assert err.value.code == ERR_NOT_DEFINED and "being changed" in err.value.message
    assert not content._static


async def test_a_transfer_running_when_the_file_is_replaced_sends_one_version(tmp_path):
    """Over real UDP on loopback: the transfer that started sends the old file whole; the next one
    the new file."""
    content = _content(tmp_path)
    path = tmp_path / "cluster1" / "firmware.bin"
    old, new = os.urandom(MIB + 12345), os.urandom(MIB + 12345)
    path.write_bytes(old)
    started = []

    async def resolve(name, client):
        data = await content.resolve(name, client)
        started.append(name)
        _replace(path, new)  # replaced as soon as the transfer has its file
        return data

    async with TftpServer("127.0.0.1", 0, resolve, timeout=0.2) as server:
        host, port = server.address
        assert await tftp_get(host, port, "firmware.bin", blksize=1428, windowsize=16) == old
        assert await tftp_get(host, port, "firmware.bin", blksize=1428, windowsize=16) == new
    assert len(started) == 2


# --- signed copies (.sgn) of large static files ---------------------------------------------------

class _MixedOwners(OwnerReads):
    """No call control or CAPF configured (no devices); the CTL Provider says mixed mode."""

    def __init__(self):
        super().__init__({})

    async def mode(self) -> ClusterMode:
        return ClusterMode.MIXED


@pytest.fixture(scope="module")
def tftp_cert(tmp_path_factory):
    return ensure_server_certificate(tmp_path_factory.mktemp("tftp"), "tftp-signer", ip="127.0.0.1")


def _signing_content(root, tftp_cert, *, caching: bool) -> TftpContent:
    (root / "cluster1").mkdir(exist_ok=True)
    signer = FileSigner.from_issued(tftp_cert)
    store = SignedStore(SigningPool(signer), root, caching=caching)
    return TftpContent(root, Layout(ClusterPath("local", "cluster1")), _MixedOwners(),
                       ClusterEndpoints(("127.0.0.1",)), store, signer)


@pytest.fixture
def big_hashes(monkeypatch):
    """Every sha256 of 1 MiB or more, with whether it ran on the event loop's thread (a spy: the
    real hash still runs)."""
    real, seen = hashlib.sha256, []

    def sha256(data=b"", **kw):
        if len(data) >= MIB:
            seen.append((len(data), threading.current_thread() is threading.main_thread()))
        return real(data, **kw)
    monkeypatch.setattr(hashlib, "sha256", sha256)
    return seen


def _payload_of(signed: bytes, tftp_cert, name: str) -> bytes:
    parsed = parse_sgn(signed)
    verify_sgn(parsed, tftp_cert.cert)
    assert parsed.header.file_name == name + ".sgn"
    return parsed.payload


async def test_a_repeated_sgn_request_for_an_unchanged_large_file_hashes_nothing(tmp_path, tftp_cert, big_hashes):
    """The .sgn of a 16 MiB bundle re-hashed the whole file on every request (about 18 ms with the
    event loop blocked). Its sha256 is kept with the held file (same stat stamp): a repeated request
    is a memory look-up; a replaced file is hashed and signed anew, never served stale."""
    content = _signing_content(tmp_path, tftp_cert, caching=True)
    path = tmp_path / "cluster1" / "bundle.zz"
    old, new = os.urandom(16 * MIB), os.urandom(16 * MIB)
    path.write_bytes(old)
    first = await content.resolve("bundle.zz.sgn")
    assert _payload_of(first, tftp_cert, "bundle.zz") == old
    hashed, signed = len(big_hashes), content.store.signed
    for _ in range(3):
        assert await content.resolve("bundle.zz.sgn") is first
    assert len(big_hashes) == hashed and content.store.signed == signed  # no hash, no signature
    _replace(path, new)  # same size: only the stat stamp tells
    second = await content.resolve("bundle.zz.sgn")
    assert _payload_of(second, tftp_cert, "bundle.zz") == new and content.store.signed == signed + 1
    assert await content.resolve("bundle.zz.sgn") is second
    assert all(not on_loop for _size, on_loop in big_hashes)  # what was hashed, off the event loop


async def test_with_signed_caching_off_a_large_file_is_hashed_off_the_event_loop(tmp_path, tftp_cert, big_hashes):
    """Caching off: each request reads the signed copy from disk and checks it; for a large file
    every hash of it runs in a thread, so running transfers are not starved meanwhile."""
    content = _signing_content(tmp_path, tftp_cert, caching=False)
    path = tmp_path / "cluster1" / "bundle.zz"
    old, new = os.urandom(4 * MIB), os.urandom(4 * MIB)
    path.write_bytes(old)
    first = await content.resolve("bundle.zz.sgn")
    assert await content.resolve("bundle.zz.sgn") == first
    assert _payload_of(first, tftp_cert, "bundle.zz") == old
    assert (tmp_path / "cluster1" / "signed" / "bundle.zz.sgn").read_bytes() == first
    _replace(path, new)
    assert _payload_of(await content.resolve("bundle.zz.sgn"), tftp_cert, "bundle.zz") == new
    restarted = _signing_content(tmp_path, tftp_cert, caching=False)  # a copy found on disk: checked
    assert _payload_of(await restarted.resolve("bundle.zz.sgn"), tftp_cert, "bundle.zz") == new
    assert restarted.store.signed == 0
    assert big_hashes and all(not on_loop for _size, on_loop in big_hashes)


class _ReadWhere(TftpContent):
    """Records on which thread each read of a file's bytes runs."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read_on_loop: list[bool] = []

    def _read_fd(self, fd: int, size: int) -> bytes:
        self.read_on_loop.append(threading.current_thread() is threading.main_thread())
        return super()._read_fd(fd, size)


async def test_a_large_file_is_read_off_the_event_loop_once_for_requests_arriving_together(tmp_path):
    """A 16 MiB bundle not held yet (first request, replaced, or dropped from the budget) was read
    on the event loop, stalling running transfers for the whole read. It is read in a thread, once
    for all the requests that ask for it meanwhile (not one 16 MiB copy each); small files are
    read at once, as before."""
    content = _content(tmp_path, _ReadWhere)
    path = tmp_path / "cluster1" / "bundle.zz"
    image = os.urandom(16 * MIB)
    path.write_bytes(image)
    got = await asyncio.gather(*(content.resolve("bundle.zz") for _ in range(8)))
    assert got[0] == image and all(g is got[0] for g in got)
    assert content.read_on_loop == [False] and content.static_reads == 1
    assert content._held_bytes == 16 * MIB and not content._loading
    (tmp_path / "cluster1" / "RingList.xml").write_bytes(b"<list/>")
    assert await content.resolve("RingList.xml") == b"<list/>" and content.read_on_loop == [False, True]
    path.unlink()
    assert await content.resolve("bundle.zz") is None and content._held_bytes == 7


@pytest.mark.parametrize("caching", [True, False])
async def test_resigning_static_files_hashes_and_signs_a_large_one_off_the_event_loop(
        tmp_path, tftp_cert, big_hashes, monkeypatch, caching):
    """Resign(all) and a change to mixed mode re-sign the static files: a few files were signed
    inline, so a 16 MiB bundle among them was hashed and signed with the event loop blocked."""
    import ccmsec_tftp_signer.signing as signing

    real, signed_on_loop = signing.sign_file, []

    def sign_file(payload, *args, **kw):
        if len(payload) >= MIB:
            signed_on_loop.append(threading.current_thread() is threading.main_thread())
        return real(payload, *args, **kw)
    monkeypatch.setattr(signing, "sign_file", sign_file)
    content = _signing_content(tmp_path, tftp_cert, caching=caching)
    image = os.urandom(4 * MIB)
    (tmp_path / "cluster1" / "bundle.zz").write_bytes(image)
    (tmp_path / "cluster1" / "RingList.xml").write_bytes(b"<list/>")
    assert await content.resign_static() == 2
    assert await content.resign_static() == 0  # current: nothing signed again
    assert await content.resign_static(force=True) == 2
    assert _payload_of(await content.resolve("bundle.zz.sgn"), tftp_cert, "bundle.zz") == image
    assert signed_on_loop == [False, False]
    assert big_hashes and all(not on_loop for _size, on_loop in big_hashes)


class _SlowFirstRead(TftpContent):
    """The first threaded read returns only when the test lets it (a thread scheduled late)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.read_done, self.release, self._calls = threading.Event(), threading.Event(), 0

    def _read_checked(self, folder, name):
        self._calls += 1
        got = super()._read_checked(folder, name)
        if self._calls == 1:
            self.read_done.set()
            self.release.wait(10)
        return got


async def test_a_read_of_a_replaced_file_that_finishes_late_does_not_replace_the_new_copy(tmp_path):
    """Version A is being read in a thread when the file is replaced by B; B's read finishes first
    and is held. A's late result used to be held over it: the next request read B again (16 MiB),
    and holding A evicted other files from the budget for a copy nobody would be served."""
    content = _content(tmp_path, _SlowFirstRead)
    path = tmp_path / "cluster1" / "bundle.zz"
    old, new = os.urandom(2 * MIB), os.urandom(2 * MIB)
    path.write_bytes(old)
    first = asyncio.ensure_future(content.resolve("bundle.zz"))
    assert await asyncio.to_thread(content.read_done.wait, 10)
    _replace(path, new)
    assert await content.resolve("bundle.zz") == new
    content.release.set()
    assert await first == old  # the request that asked before the replace gets one whole version
    reads = content.static_reads
    assert await content.resolve("bundle.zz") == new
    assert content.static_reads == reads  # B is still the held copy: no read again
    assert content._held_bytes == 2 * MIB and not content._loading


async def test_concurrent_first_sgn_requests_for_a_large_file_hash_and_sign_it_once(
        tmp_path, tftp_cert, big_hashes, monkeypatch):
    """AUTH-3: phones booting together ask for the `.sgn` of a bundle not hashed yet at the same
    moment. Each request hashed the whole file itself (its sha256, before the signing single-flight
    could see it was the same bytes): 8 requests, 8 hashes of 4 MiB. They now share one hash and one
    signature — as many sha256 runs of the file as a single request makes — and all get the same
    signed copy."""
    import ccmsec_tftp_signer.signing as signing

    real, signs = signing.sign_file, []

    def sign_file(payload, *args, **kw):
        signs.append(len(payload))
        return real(payload, *args, **kw)
    monkeypatch.setattr(signing, "sign_file", sign_file)
    (tmp_path / "alone").mkdir()
    (tmp_path / "together").mkdir()
    alone = _signing_content(tmp_path / "alone", tftp_cert, caching=True)
    (tmp_path / "alone" / "cluster1" / "bundle.zz").write_bytes(os.urandom(4 * MIB))
    await alone.resolve("bundle.zz.sgn")
    one_request, big_hashes[:], signs[:] = len(big_hashes), [], []
    assert one_request >= 1

    content = _signing_content(tmp_path / "together", tftp_cert, caching=True)
    image = os.urandom(4 * MIB)
    (tmp_path / "together" / "cluster1" / "bundle.zz").write_bytes(image)
    got = await asyncio.gather(*(content.resolve("bundle.zz.sgn") for _ in range(8)))
    assert len(big_hashes) == one_request, big_hashes  # hashed as often as by one request alone
    assert signs == [4 * MIB] and content.store.signed == 1
    assert all(signed is got[0] for signed in got)
    assert _payload_of(got[0], tftp_cert, "bundle.zz") == image


class _SlowSigning(SigningPool):
    """Signs as usual, after a pause (a 16 MiB bundle on a busy machine); counts the signatures."""

    pause = 0.3

    def __init__(self, signer):
        super().__init__(signer)
        self.calls = 0

    def sign_one(self, name, payload, timestamp=None):
        self.calls += 1
        threading.Event().wait(self.pause)  # in the signing thread (a big payload)
        return super().sign_one(name, payload, timestamp)


@pytest.mark.parametrize("caching", [True, False])
async def test_requests_waiting_for_a_signature_get_it_when_the_first_requester_is_cancelled(
        tmp_path, tftp_cert, caching):
    """AUTH-3/AUTH-4: the request that started signing a file is cancelled (its transfer was
    cancelled: the phone went away, the server closes): the others waiting for the same file got
    CancelledError — their tasks ended without even a TFTP error to their phones. The signing goes
    on (shielded) and each waiter gets the signed copy; it is signed once, and kept."""
    signer = FileSigner.from_issued(tftp_cert)
    pool = _SlowSigning(signer)
    store = SignedStore(pool, tmp_path, caching=caching)
    payload = os.urandom(2 * MIB)
    first = asyncio.ensure_future(store.get("cluster1", "bundle.zz", payload))
    await asyncio.sleep(0.05)  # signing has started in its thread
    waiters = [asyncio.ensure_future(store.get("cluster1", "bundle.zz", payload)) for _ in range(3)]
    await asyncio.sleep(0.05)
    first.cancel()
    got = await asyncio.gather(*waiters, return_exceptions=True)
    assert first.cancelled()
    assert [type(g) for g in got] == [bytes] * 3, got
    assert _payload_of(got[0], tftp_cert, "bundle.zz") == payload
    assert pool.calls == 1 and store.signed == 1
    assert await store.get("cluster1", "bundle.zz", payload) == got[0] and store.hits == 1  # kept


async def test_a_cancelled_first_request_does_not_cancel_the_shared_hash_of_a_large_file(
        tmp_path, tftp_cert, monkeypatch):
    """The hash of a large file, shared by the requests that ask for its `.sgn` together, goes on
    when the request that started it is cancelled: the others get the signed file."""
    import ccmsec_tftp_signer.files as files

    real, hashes = files.payload_digest, []

    async def slow_digest(payload):  # a 16 MiB bundle on a busy machine
        hashes.append(len(payload))
        await asyncio.sleep(0.2)
        return await real(payload)
    monkeypatch.setattr(files, "payload_digest", slow_digest)
    content = _signing_content(tmp_path, tftp_cert, caching=True)
    image = os.urandom(2 * MIB)
    (tmp_path / "cluster1" / "bundle.zz").write_bytes(image)
    await content.resolve("bundle.zz")  # held, not hashed yet
    first = asyncio.ensure_future(content.resolve("bundle.zz.sgn"))
    for _ in range(100):
        if hashes:
            break
        await asyncio.sleep(0.01)
    others = [asyncio.ensure_future(content.resolve("bundle.zz.sgn")) for _ in range(3)]
    await asyncio.sleep(0.05)  # all waiting for the hash
    first.cancel()
    got = await asyncio.gather(*others, return_exceptions=True)
    assert first.cancelled()
    assert [type(g) for g in got] == [bytes] * 3, got
    assert hashes == [2 * MIB]
    assert _payload_of(got[0], tftp_cert, "bundle.zz") == image and content.store.signed == 1
