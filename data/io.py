"""Atomic file writes: the one place every writer (datasets, manifests, checkpoints, results) goes through.

A writer fills a hidden temporary beside the final name (:func:`temporary_name`), fsyncs it and
renames it into place (:func:`atomic_path`), so a crash never leaves a partial file under a real
name and the previous version survives a failed write. Temporaries carry host and PID, so
:func:`sweep_temporaries` can remove a killed writer's litter without touching a live write.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOST = "".join(c for c in socket.gethostname() if c.isalnum())[:24] or "host"
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[A-Za-z0-9]+)\.(?P<pid>\d+)\.[0-9a-f]+$")


def temporary_name(final: Path) -> Path:
    """The hidden temporary beside ``final`` that a writer fills before renaming it into place:
    ``.<name>.tmp-<host>.<pid>.<random>``. Host and PID let :func:`sweep_temporaries` tell
    the litter of a killed writer from a write in progress."""
    return final.with_name(f".{final.name}.tmp-{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:12]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_temporaries(folder: str | os.PathLike, max_age_s: float = 86400.0) -> list[Path]:
    """Remove the temporaries (:func:`temporary_name`) a killed writer left in ``folder``:
    those of a process of this host that no longer exists, and any untouched for ``max_age_s``
    (a writer on another host sharing the folder). Returns the paths removed. Files that do
    not match the pattern are never touched."""
    import time

    removed: list[Path] = []
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except FileNotFoundError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TMP.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:  # renamed into place meanwhile
            continue
        if (m["host"] == _HOST and not _pid_alive(int(m["pid"]))) or age > max_age_s:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed


@contextmanager
def atomic_path(final: Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success (fsync if ``durable``) rename it into
    place, on any error remove it. The previous ``final`` (if any) survives a failed write.

    The rename alone makes the write atomic against a crashed process; the fsync also against a
    crashed machine. Chunk files skip it: they are a cache whose digest is checked on every use."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # disk full, quota, I/O error: say which file and what survived
            exc.add_note(
                f"while writing {final}; nothing was written under that name (a previous version is unchanged)"
            )
        raise


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (the directory entry itself is fsynced)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """Atomically replace ``path`` with ``data``; returns the path."""
    path = Path(path)
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8); returns the path."""
    return write_bytes(path, text.encode(), durable)


__all__ = ["atomic_path", "fsync_dir", "sweep_temporaries", "temporary_name", "write_bytes", "write_text"]
