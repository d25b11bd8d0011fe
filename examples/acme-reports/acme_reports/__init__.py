"""An example pjcore plugin distribution.

Its ``pyproject.toml`` declares the entry point ``acme_reports = "acme_reports"``
in the ``pjcore`` group; pjcore imports this module and registers it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pjcore import hookimpl
from pjcore.context import JobContext

PLUGIN_KEY = "acme.reports"

MANIFEST = {
    "key": PLUGIN_KEY,
    "version": "1.0.0",
    "jobs": [
        {
            "job_key": "hourly-digest",
            "display_name": "Hourly digest",
            "schedule": "0 * * * *",
            "policy": {"timeout_seconds": 120, "misfire": "run_once"},
        },
        {
            "job_key": "tick",
            "display_name": "Write a line every 2 seconds",
            "schedule": "*/2 * * * * *",
            "policy": {"misfire": "skip"},
        },
        {
            "job_key": "rebuild-index",
            "display_name": "Rebuild the search index (manual only)",
        },
    ],
}


def _outbox() -> Path:
    return Path(os.environ.get("ACME_OUTBOX", "acme-outbox.jsonl"))


def _write(ctx: JobContext, what: str) -> None:
    # One line per run. pjcore claims each (job, slot) once, even with several
    # `pjcore run` processes on one database, so a slot never shows up twice.
    # A job with policy on_abandoned="retry" may see its slot again and would
    # need to overwrite by slot rather than append.
    record = {"job": ctx.job_key, "slot": ctx.scheduled_for.isoformat(), "run": ctx.run_id,
              "what": what}
    with _outbox().open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def hourly_digest(ctx: JobContext) -> None:
    _write(ctx, "digest")


def tick(ctx: JobContext) -> None:
    _write(ctx, "tick")


async def rebuild_index(ctx: JobContext) -> None:
    for _ in range(5):
        if await ctx.sleep(0.1):
            ctx.check()  # asked to stop: raise, so the run is recorded cancelled
    _write(ctx, "index rebuilt")


@hookimpl
def register_manifests(register):
    register(MANIFEST)


@hookimpl
def register_job_handlers(register):
    register(PLUGIN_KEY, "hourly-digest", hourly_digest)
    register(PLUGIN_KEY, "tick", tick)
    register(PLUGIN_KEY, "rebuild-index", rebuild_index)
