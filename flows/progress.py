"""Progress of long work, where a user looks: a bar on the terminal, a progress artifact in Prefect.

    with Progress(total=len(chunks), desc="generate darcy", unit="chunk", key="generate-darcy") as p:
        for chunk in chunks:
            ...
            p.update()          # or p.set(done) when the count comes from elsewhere (a resumed epoch)

The bar (tqdm) is drawn only when stderr is a terminal: a worker's log stays free of carriage
returns. Inside a flow or task run the work also gets a Prefect progress artifact (percent done,
shown on the run's page), updated at most once per ``interval`` seconds and once at the end, so
a fast loop does not flood the API. A Prefect API that does not answer never fails the work: the
artifact is given up with one warning.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from types import TracebackType
from typing import Any

from tqdm import tqdm

log = logging.getLogger("sciflow.progress")


def in_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(text: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from ``text``."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-") or "progress"


class Progress:
    """``total`` units of work: a tqdm bar on a terminal, a Prefect progress artifact in a run.

    Args:
        total: units of work (chunks, epochs, steps); 0 is allowed (nothing to do).
        desc: what is being done (the bar's label and the artifact's description).
        unit: the bar's unit.
        key: the artifact's key (default: from ``desc``); keyed artifacts show on Prefect's
            Artifacts page as well as on the run's.
        interval: least seconds between two artifact updates.
        initial: units already done (a resumed training).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        key: str | None = None,
        interval: float = 1.0,
        initial: int = 0,
    ) -> None:
        self.total, self.n, self.desc, self.interval = max(int(total), 0), int(initial), desc, interval
        self.bar = tqdm(
            total=self.total, initial=self.n, desc=desc, unit=unit, file=sys.stderr, disable=not _tty(), leave=False
        )
        self.artifact_id: Any = None
        self._published = -1.0
        self._last = 0.0
        if in_run():
            try:
                from prefect.artifacts import create_progress_artifact

                self.artifact_id = create_progress_artifact(
                    progress=self.percent, key=artifact_key(key or desc), description=desc
                )
                self._published, self._last = self.percent, time.monotonic()
            except Exception as exc:  # the API is down or refuses: the work goes on without it
                log.warning("no Prefect progress artifact for %r: %s", desc, exc)

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * min(self.n, self.total) / self.total, 2)

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.set(self.n + n)

    def set(self, n: int) -> None:
        """``n`` units done in all."""
        self.bar.update(n - self.n)
        self.n = n
        self._publish()

    def _publish(self, final: bool = False) -> None:
        if self.artifact_id is None or self.percent == self._published:
            return
        now = time.monotonic()
        if not final and now - self._last < self.interval:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, progress=self.percent)
            self._published, self._last = self.percent, now
        except Exception as exc:
            log.warning("stopped updating the Prefect progress artifact of %r: %s", self.desc, exc)
            self.artifact_id = None

    def close(self) -> None:
        """Publish the last value and remove the bar."""
        self._publish(final=True)
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


__all__ = ["Progress", "artifact_key", "in_run"]
