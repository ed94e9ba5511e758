"""Size-based rotation of the local cluster's log files (DATA/logs/*.log).

The services, NATS and the supervisor write to files opened once in append mode (their standard
output and error), so a file cannot be renamed under them: rotation copies the file to `NAME.1`
(older copies shift to `.2` … `.BACKUPS`, the oldest is dropped) and truncates it in place
("copytruncate"). Writers opened with O_APPEND continue at the new end, so the file never gets a
hole. Lines written between the copy and the truncation are lost (at most one check interval's
worth of a busy file's growth past the copy — in practice a few lines); the copy is written
atomically, so a crash never leaves a half-written backup.

The supervisor checks every `CHECK_SECONDS`; CCMSEC_LOG_MAX_BYTES (default 10 MiB, 0 = never
rotate) and CCMSEC_LOG_BACKUPS (default 5) tune it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
CHECK_SECONDS = 5.0


class RotationSettingsError(ValueError):
    pass


def settings_from_env(env=os.environ) -> tuple[int, int]:
    """(max_bytes, backups) from CCMSEC_LOG_MAX_BYTES / CCMSEC_LOG_BACKUPS."""
    out = []
    for name, default, low, high in (("CCMSEC_LOG_MAX_BYTES", DEFAULT_MAX_BYTES, 0, 1 << 40),
                                     ("CCMSEC_LOG_BACKUPS", DEFAULT_BACKUPS, 1, 100)):
        text = env.get(name, "").strip()
        if not text:
            out.append(default)
            continue
        if not text.isdigit() or not low <= int(text) <= high:
            raise RotationSettingsError(f"{name} must be a whole number from {low} to {high}, got {text!r}")
        out.append(int(text))
    return out[0], out[1]


def rotate_if_large(path: Path, max_bytes: int, backups: int) -> bool:
    """Rotate `path` when it is larger than `max_bytes`; True when it did."""
    if max_bytes <= 0:
        return False
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    first = path.with_name(f"{path.name}.1")
    partial = path.with_name(f".{path.name}.1.partial")
    with open(path, "rb") as src, open(partial, "w+b") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        _trim_to_whole_lines(dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(partial, first)
    with open(path, "r+b") as f:
        f.truncate(0)
    return True


def _trim_to_whole_lines(f, chunk: int = 64 * 1024) -> None:
    """Cut a torn last line from the copy: a read does not wait for a write in progress, so the
    copy can end inside a line a writer was appending. That line is in the truncated window (lost,
    as said above); a backup holds whole lines only."""
    end = f.seek(0, os.SEEK_END)
    pos = end
    while pos > 0:
        start = max(0, pos - chunk)
        f.seek(start)
        data = f.read(pos - start)
        cut = data.rfind(b"\n")
        if cut >= 0:
            if start + cut + 1 < end:
                f.truncate(start + cut + 1)
            return
        pos = start
    # no line end at all (one huge unterminated write): kept whole rather than dropped


def rotate_folder(folder: Path, max_bytes: int, backups: int) -> list[str]:
    """Rotate every `*.log` in `folder` that grew past `max_bytes`; returns the names rotated."""
    rotated = []
    for path in sorted(Path(folder).glob("*.log")):
        if rotate_if_large(path, max_bytes, backups):
            rotated.append(path.name)
    return rotated
