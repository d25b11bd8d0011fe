"""The demo plugin that ships with pjcore (``pjcore demo``).

A plugin like any other: it declares its manifest and its handlers through
hooks. Its jobs fire every few seconds so a short demo shows real runs:
one quick, one slow, one that always fails, one ``async def``, and a daily
one in Paris time that only shows up in the calendar.
"""

from __future__ import annotations

import asyncio

from pjcore.context import JobContext
from pjcore.hookspecs import hookimpl

PLUGIN_KEY = "pjcore.demo"

MANIFEST = {
    "key": PLUGIN_KEY,
    "version": "1.0",
    "jobs": [
        {
            "job_key": "heartbeat",
            "display_name": "Heartbeat",
            "description": "Quick job every 2 seconds",
            "schedule": "*/2 * * * * *",
        },
        {
            "job_key": "slow-report",
            "display_name": "Slow report",
            "description": "Takes 3 seconds; starts every 5 seconds",
            "schedule": "*/5 * * * * *",
        },
        {
            "job_key": "flaky-sync",
            "display_name": "Flaky sync",
            "description": "Always fails: shows how failures are recorded",
            "schedule": "*/3 * * * * *",
        },
        {
            "job_key": "async-ping",
            "display_name": "Async ping",
            "description": "An async def handler every 4 seconds",
            "schedule": "*/4 * * * * *",
        },
        {
            "job_key": "nightly-cleanup",
            "display_name": "Nightly cleanup",
            "description": "03:00 Paris time",
            "schedule": "0 3 * * *",
            "timezone": "Europe/Paris",
        },
    ],
}


def heartbeat(ctx: JobContext) -> None:
    ctx.logger.info("heartbeat for slot {slot}", slot=ctx.scheduled_for.isoformat())


def slow_report(ctx: JobContext) -> None:
    if ctx.wait(3.0):
        ctx.check()  # cancelled (timeout, disable, shutdown): stop here


def flaky_sync(ctx: JobContext) -> None:
    raise ConnectionError("upstream returned 503 Service Unavailable")


async def async_ping(ctx: JobContext) -> None:
    await asyncio.sleep(0.2)


def nightly_cleanup(ctx: JobContext) -> None:
    ctx.logger.info("nothing to clean")


@hookimpl
def register_manifests(register):
    register(MANIFEST)


@hookimpl
def register_job_handlers(register):
    register(PLUGIN_KEY, "heartbeat", heartbeat)
    register(PLUGIN_KEY, "slow-report", slow_report)
    register(PLUGIN_KEY, "flaky-sync", flaky_sync)
    register(PLUGIN_KEY, "async-ping", async_ping)
    register(PLUGIN_KEY, "nightly-cleanup", nightly_cleanup)
