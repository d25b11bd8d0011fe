"""What a job handler receives: the run's identity, a logger, and a cancel signal."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime
from typing import Any

import attrs

from pjcore.models import RunTrigger

__all__ = ["JobContext", "RunCancelled"]


class RunCancelled(Exception):
    """Raised by :meth:`JobContext.check` when the run was asked to stop.

    A control-flow signal, not an error: a handler may let it propagate.
    """


@attrs.frozen(kw_only=True)
class JobContext:
    """Passed to every handler call.

    :ivar scheduled_for: the slot of a scheduled run; the trigger time of a
        manual run.
    :ivar logger: a loguru logger bound with ``pj_plugin``, ``pj_job`` and
        ``pj_run``.
    """

    plugin_id: str
    plugin_key: str
    job_key: str
    run_id: str
    trigger: RunTrigger
    scheduled_for: datetime
    logger: Any
    _cancel: threading.Event = attrs.field(factory=threading.Event, alias="cancel_event")
    _reason: list = attrs.field(factory=list, alias="reason_box")

    @property
    def cancelled(self) -> bool:
        """Whether the run was asked to stop (timeout, disable, shutdown)."""
        return self._cancel.is_set()

    @property
    def cancel_reason(self) -> str | None:
        return self._reason[0] if self._reason else None

    def check(self) -> None:
        """Raise :class:`RunCancelled` if the run was asked to stop."""
        if self._cancel.is_set():
            raise RunCancelled(self.cancel_reason or "cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to *seconds*, returning early (True) if the run is cancelled."""
        return self._cancel.wait(seconds)

    async def sleep(self, seconds: float) -> bool:
        """``await``-able :meth:`wait` for ``async def`` handlers."""
        end = time.monotonic() + seconds
        while not self._cancel.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, 0.05))
        return True

    def request_cancel(self, reason: str) -> None:
        """Used by the scheduler; handlers only read the signal."""
        if not self._reason:
            self._reason.append(reason)
        self._cancel.set()
