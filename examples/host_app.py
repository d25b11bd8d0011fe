"""A small host application that owns its plugins' lifecycle.

The host decides when a plugin is loaded, disabled or unloaded (its own
plugin system, an admin UI, a config file...) and tells pjcore through the
lifecycle hooks. pjcore keeps the jobs in the store and runs them.

    pip install -e . -e examples/acme-reports
    python examples/host_app.py --seconds 5
"""

from __future__ import annotations

import argparse
import time

from loguru import logger

from pjcore import Host, hookimpl


class RunLog:
    """An observer plugin: the host's own reaction to finished runs."""

    @hookimpl
    def run_finished(self, run, job):
        print(f"{job.plugin_key}/{job.job_key}: {run.status.value}"
              + (f" ({run.error})" if run.error else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", default="sqlite:///host-app.db")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    logger.enable("pjcore")  # an application may turn pjcore's log on

    with Host(args.database, plugins=[RunLog()]) as host:
        manifests = {m.key: m for m in host.declared_manifests()}
        if "acme.reports" not in manifests:
            raise SystemExit("install the example plugin first: pip install -e examples/acme-reports")
        manifest = manifests["acme.reports"]
        # The host's own id for this plugin installation (a UUID in Paperclip).
        plugin_id = "plugin-0001"

        host.pm.hook.plugin_loaded(plugin_id=plugin_id, plugin_key=manifest.key, manifest=manifest)
        run_id = host.trigger(plugin_id, "rebuild-index")
        print(f"manual run {run_id} started")
        time.sleep(args.seconds)

        host.pm.hook.plugin_disabled(plugin_id=plugin_id, plugin_key=manifest.key,
                                     reason="maintenance window")
        for job in host.jobs(plugin_id):
            print(f"{job.job_key:<14} {job.status.value:<7} next={job.next_run_at}")
        page = host.runs(plugin_id, limit=5)
        print(f"{len(page.runs)} most recent runs:",
              ", ".join(f"{r.job_key}={r.status.value}" for r in page.runs))
        host.pm.hook.plugin_unloaded(plugin_id=plugin_id, plugin_key=manifest.key,
                                     remove_data=False)


if __name__ == "__main__":
    main()
