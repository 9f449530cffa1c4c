"""Progress of the long steps, shown where people look while a run goes on.

A terminal gets a tqdm bar; a run started from the Prefect UI gets a progress artifact
on its run page, updated as the step advances.  Both are best effort: a step never
fails because its progress could not be shown.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger(__name__)

# Each update is one API call; a few per minute is plenty for a person watching.
ARTIFACT_MIN_INTERVAL_SECONDS = 2.0


BAR_CELLS = 20


def text_bar(done: int, total: int) -> str:
    """``▰▰▰▰▱▱▱▱ 40 %``: the UI renders a progress artifact as a bare percentage, so its
    description carries a bar a person sees move between refreshes."""
    frac = min(done / total, 1.0) if total else 1.0
    full = int(round(frac * BAR_CELLS))
    return f"{'▰' * full}{'▱' * (BAR_CELLS - full)} {100 * frac:.0f} %"


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-") or "progress"


class Progress:
    """``with Progress(total, "embedding photos", unit="photo") as p: ... p.advance(n)``."""

    def __init__(self, total: int, description: str, unit: str = "it", key: str | None = None) -> None:
        self.total = max(int(total), 0)
        self.done = 0
        self.description = description
        # disable=None: a bar on a terminal, nothing in logs or captured output.
        self._bar = tqdm(total=self.total, desc=description, unit=unit, disable=None, leave=False,
                         dynamic_ncols=True, mininterval=0.5)
        self._artifact_id = None
        self._last_push = 0.0
        self._pushed = 0
        if self.total and _in_prefect_run():
            try:
                from prefect.artifacts import create_progress_artifact

                self._artifact_id = create_progress_artifact(
                    0.0, key=artifact_key(key or description),
                    description=f"{description}: 0 of {self.total}  {text_bar(0, self.total)}")
                self._last_push = time.monotonic()
            except Exception as exc:  # noqa: BLE001  (the UI is a nicety, the step is not)
                log.warning("progress artifact not created: %s", exc)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done (capped at ``total``); refresh the Prefect artifact at most every
        ``ARTIFACT_MIN_INTERVAL_SECONDS``, and at the end."""
        self.done = min(self.done + int(n), self.total) if self.total else self.done + int(n)
        self._bar.update(n)
        if self._artifact_id is not None and (self.done >= self.total
                                              or time.monotonic() - self._last_push >= ARTIFACT_MIN_INTERVAL_SECONDS):
            self._push()

    def _push(self) -> None:
        try:
            from prefect.artifacts import update_progress_artifact

            pct = 100.0 * self.done / self.total if self.total else 100.0
            update_progress_artifact(self._artifact_id, round(pct, 1),
                                     description=f"{self.description}: {self.done} of {self.total}  "
                                                 f"{text_bar(self.done, self.total)}")
            self._pushed = self.done
        except Exception as exc:  # noqa: BLE001
            log.warning("progress artifact not updated: %s", exc)
            self._artifact_id = None
        self._last_push = time.monotonic()

    def close(self) -> None:
        """Push the final count to the Prefect artifact if it is behind, and close the terminal bar."""
        if self._artifact_id is not None and self._pushed != self.done:
            self._push()
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "it",
          key: str | None = None) -> Iterator[T]:
    """Iterate ``items``, advancing the progress by one after each item is handled."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, description, unit=unit, key=key) as p:
        for item in items:
            yield item
            p.advance(1)
