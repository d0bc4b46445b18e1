"""A local spool for MLflow calls made while the tracking server is unreachable.

Every run-scoped write that :mod:`flows.tracking` makes (metrics, params and tags as
``log_batch``, artifacts, texts, the final status) goes to the server directly while it answers.
When a call fails because the server cannot be reached (:func:`is_outage`), that call and every
later one of the same run are appended to ``<home>/spool/<run_id>.jsonl`` instead, in order, and
delivered (:meth:`Spool.replay`) once the server answers again; training and data generation go on
meanwhile. An artifact is copied into ``<home>/spool/<run_id>/`` when it is spooled (the original
may be a temporary file).

File format: one entry per line, ``<sha256[:16]> <json>``, appended with ``O_APPEND`` and fsynced,
so a crash can at most leave a torn last line. A line whose checksum does not match its JSON (a torn
or edited line) is skipped with a warning naming the file and line, never replayed half. Delivery
is in order; after each delivered entry the remaining ones are written back atomically
(:func:`data.io.atomic_path`), so an interrupted replay delivers nothing twice except possibly the
entry in flight (MLflow's ``log_batch`` of the same metric value, step and timestamp is idempotent
for the metric history; a param logged twice with the same value is accepted).

``sciflow tracking flush`` delivers every spool left on disk (e.g. after a run that outlived the
outage limit, :data:`data.settings.Settings.tracking_outage_s`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from data.errors import InputError
from data.io import atomic_path, fsync_dir
from data.paths import home

#: the text of an MLflow / requests error when the server cannot be reached (connection refused
#: or reset, DNS, timeouts, a proxy's 502-504 while the server restarts)
_OUTAGE_TEXT = (
    "Max retries exceeded",
    "Failed to establish a new connection",
    "Connection refused",
    "Connection aborted",
    "Connection reset",
    "RemoteDisconnected",
    "Read timed out",
    "timed out",
    "too many 500 error responses",  # a server whose database is restarting (retried, then spooled)
    "too many 502 error responses",
    "too many 503 error responses",
    "too many 504 error responses",
)


class SpoolError(InputError):
    """A spool folder that cannot be written, or a spool file that cannot be read."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the tracking server could not be reached (not that it refused the call)."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
            return True
        if any(text in str(seen) for text in _OUTAGE_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def root() -> Path:
    """The folder of every run's spool: ``<home>/spool``."""
    return home() / "spool"


def _line(entry: dict) -> str:
    text = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return f"{hashlib.sha256(text.encode()).hexdigest()[:16]} {text}\n"


class Spool:
    """The spooled MLflow calls of one run (module docstring). ``folder``: default :func:`root`."""

    def __init__(self, run_id: str, folder: str | os.PathLike | None = None):
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise SpoolError(f"not a run id: {run_id!r}")
        self.run_id = run_id
        self.folder = Path(folder) if folder is not None else root()
        self.path = self.folder / f"{run_id}.jsonl"
        self.blobs = self.folder / run_id

    def pending(self) -> bool:
        """Whether entries are waiting (the file exists and is not empty)."""
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def _writable(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the tracking spool folder {folder}: {exc}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SpoolError(f"the tracking spool folder {folder} is not writable")

    def append(self, op: str, **args: Any) -> None:
        """Append one call (``op`` with JSON-able ``args``); ``args["local_path"]``, an artifact
        file, is copied into the spool first."""
        self._writable(self.folder)
        if "local_path" in args:
            self._writable(self.blobs)
            src = Path(args["local_path"])
            dst = self.blobs / f"{len(os.listdir(self.blobs)):06d}" / src.name  # the file keeps its name
            dst.parent.mkdir()
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            args = {**args, "local_path": str(dst)}
        data = _line({"op": op, "args": args}).encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolError(f"cannot append to the tracking spool {self.path}: {exc}") from None

    def entries(self) -> Iterator[dict]:
        """The intact entries in order; a corrupt line is skipped with a warning naming it."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            raise SpoolError(f"cannot read the tracking spool {self.path}: {exc}") from None
        for number, line in enumerate(lines, 1):
            digest, _, text = line.partition(" ")
            try:
                entry = json.loads(text)
                intact = digest == hashlib.sha256(text.encode()).hexdigest()[:16] and isinstance(entry, dict)
            except ValueError:
                intact = False
            if not intact or "op" not in entry:
                warnings.warn(f"{self.path}:{number}: corrupt tracking spool entry skipped", stacklevel=2)
                continue
            yield entry

    def replay(self, deliver: Callable[[str, dict], None]) -> int:
        """Deliver every entry in order through ``deliver(op, args)``; after each one the rest are
        written back atomically. Returns how many were delivered; an exception from ``deliver``
        leaves the undelivered entries (the failed one first) on disk and propagates."""
        todo = list(self.entries())
        done = 0
        while todo:
            deliver(todo[0]["op"], todo[0]["args"])
            todo, done = todo[1:], done + 1
            if todo:
                with atomic_path(self.path) as tmp:
                    tmp.write_text("".join(_line(e) for e in todo))
        self.clear()
        return done

    def clear(self) -> None:
        """Remove the spool file and its artifact copies."""
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.blobs, ignore_errors=True)
        if self.folder.exists():
            fsync_dir(self.folder)


def spooled_runs(folder: str | os.PathLike | None = None) -> list[str]:
    """The run ids with a spool waiting under ``folder`` (default :func:`root`)."""
    folder = Path(folder) if folder is not None else root()
    return sorted(p.stem for p in folder.glob("*.jsonl") if p.stat().st_size > 0) if folder.is_dir() else []


__all__ = ["Spool", "SpoolError", "is_outage", "root", "spooled_runs"]
