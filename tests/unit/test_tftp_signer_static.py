"""Static TFTP files of the tftp-signer (files.py): large files (firmware bundles, up to 16 MiB) are
held in memory under one byte budget like small ones, stat-checked so nothing stale is served, and
a file written while it is read is never served (or held) as a mix of two versions."""

from __future__ import annotations

import os

import pytest

from ccmsec.aio.tftp import TftpServer, tftp_get
from ccmsec.wire.tftp import ERR_NOT_DEFINED, TftpError
from ccmsec_tftp_signer.files import TftpContent
from ccmsec_tftp_signer.layout import ClusterPath, Layout

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
    assert content._held_bytes == sum(len(d) for _k, (_s, d) in content._static.items()) <= 5 * MIB
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
