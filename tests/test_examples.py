"""The examples work as their docstrings say: ``examples/acme-reports`` is an
installable plugin distribution, and ``examples/host_app.py`` runs it.

The plugin is installed with pip into a temporary directory that only the
subprocesses see (on their PYTHONPATH), never into the project's environment.
``install_example_plugin`` lives in ``pjtest.py``, shared with ``test_cli.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pjtest import EXAMPLE_PLUGIN, HOST_APP, install_example_plugin, plugin_env


@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    return install_example_plugin(tmp_path_factory.getbasetemp())


# -- the plugin distribution ------------------------------------------------------


def test_the_example_plugin_declares_its_pjcore_entry_point():
    project = tomllib.loads((EXAMPLE_PLUGIN / "pyproject.toml").read_text())
    assert project["project"]["name"] == "acme-reports"
    assert project["project"]["entry-points"]["pjcore"] == {"acme_reports": "acme_reports"}
    assert "pjcore" in project["project"]["dependencies"]
    assert project["tool"]["setuptools"]["packages"] == ["acme_reports"]
    assert (EXAMPLE_PLUGIN / "acme_reports" / "__init__.py").is_file()


def test_the_installed_example_plugin_is_found_with_a_handler_per_job(example_site):
    # A fresh interpreter, as `pjcore run` would see it: discovered through
    # the entry point, its manifest valid, every declared job with a handler.
    script = (
        "from pjcore.plugins import make_plugin_manager\n"
        "pm = make_plugin_manager(strict=True)\n"
        "[m] = [m for m in pm.manifests() if m.key == 'acme.reports']\n"
        "print(sorted(j.job_key for j in m.jobs))\n"
        "print(sorted(j for j in ('hourly-digest', 'tick', 'rebuild-index')\n"
        "             if pm.handlers.find('acme.reports', j) is not None))\n"
        "print([(p.name, p.distribution, p.version) for p in pm.plugin_infos()\n"
        "       if p.name == 'acme_reports'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=plugin_env(example_site),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    jobs, handled, info = done.stdout.splitlines()
    assert jobs == handled == "['hourly-digest', 'rebuild-index', 'tick']"
    assert info == "[('acme_reports', 'acme-reports', '1.0.0')]"


# -- the host application ----------------------------------------------------------


@pytest.mark.slow
def test_host_app_runs_the_example_plugin_to_completion(example_site, tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    database = tmp_path / "host-app.db"
    done = subprocess.run(
        [sys.executable, str(HOST_APP), "--seconds", "3", "--database", f"sqlite:///{database}"],
        cwd=tmp_path, env=plugin_env(example_site, ACME_OUTBOX=str(outbox)),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    run_id = re.search(r"^manual run (\S+) started$", out, re.M)
    assert run_id, out
    assert "acme.reports/rebuild-index: succeeded" in out
    assert out.count("acme.reports/tick: succeeded") >= 1
    # After plugin_disabled the jobs are listed, then the most recent runs.
    assert re.search(r"^tick +active +next=", out, re.M), out
    assert re.search(r"^\d+ most recent runs: .*rebuild-index=succeeded", out, re.M), out
    # Its log goes to stderr (the app turned pjcore's logging on).
    assert "synced plugin acme.reports" in done.stderr

    from pjcore.contrib.peewee_store import PeeweeJobStore

    store = PeeweeJobStore(f"sqlite:///{database}")
    try:
        manual = store.get_run(run_id.group(1))
        assert manual is not None and manual.status.value == "succeeded"
        assert manual.plugin_id == "plugin-0001"  # the host's own id, not the key
        runs = store.list_runs(plugin_id="plugin-0001", limit=1000).runs
    finally:
        store.close()
    # The handlers wrote one outbox line per successful run.
    assert len(outbox.read_text().splitlines()) == sum(r.status.value == "succeeded" for r in runs)


def test_host_app_says_how_to_install_a_missing_plugin(tmp_path):
    done = subprocess.run(
        [sys.executable, str(HOST_APP), "--seconds", "0.1",
         "--database", f"sqlite:///{tmp_path / 'h.db'}"],
        cwd=tmp_path, env=plugin_env(None), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "install the example plugin first" in done.stderr
