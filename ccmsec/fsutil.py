"""File-system helpers: atomic writes (temp file, fsync, rename) and inter-process locks."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so readers see either the old file or the whole new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """A folder only its owner may list or enter (0700): created so, or tightened if it exists
    with group or world access. For folders holding keys, auth strings or the database."""
    folder = Path(path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    # A setgid folder is one the local runner shares with its services' group (ccmsec.cluster.
    # accounts): it keeps that group's access and a world traverse bit (NATS reaches DATA/nats
    # through it), loses the world's read and write.
    wanted = st.st_mode & (0o3771 if st.st_mode & stat.S_ISGID else 0o700)
    if wanted != stat.S_IMODE(st.st_mode) and st.st_uid == os.geteuid():  # never someone else's folder
        os.chmod(folder, wanted)
    return folder


def private_file(path: str | os.PathLike[str]) -> Path:
    """Make sure `path` exists and only its owner may read or write it (0600), creating it empty
    if missing. For files another program fills (e.g. SQLite's database)."""
    target = Path(path)
    os.close(os.open(target, os.O_CREAT | os.O_RDWR, 0o600))
    if target.stat().st_mode & 0o077:
        os.chmod(target, 0o600)
    return target


@contextlib.contextmanager
def file_lock(lock_path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive advisory lock between processes (e.g. services creating one CA at once)."""
    lock = Path(lock_path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
