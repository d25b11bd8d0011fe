"""Helpers shared by several test modules (not a test module itself)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = ROOT / "examples" / "acme-reports"
HOST_APP = ROOT / "examples" / "host_app.py"
#: environment variables that would change which plugins a subprocess loads
PLUGIN_ENV = ("PJCORE_LOAD_PLUGINS", "PJCORE_BLOCK_PLUGINS", "PJCORE_STRICT_PLUGINS")


class Concurrency:
    """A job handler that counts its calls in progress: ``level`` now,
    ``peak`` the most at once, ``done`` the run ids of those that returned.
    Each call does *hold* while it counts (a sleep, a gate's wait)."""

    def __init__(self, hold: Callable[[], Any]) -> None:
        self._hold = hold
        self._lock = threading.Lock()
        self.level = self.peak = 0
        self.done: list[str] = []

    def __call__(self, ctx: Any) -> None:
        with self._lock:
            self.level += 1
            self.peak = max(self.peak, self.level)
        self._hold()
        with self._lock:
            self.level -= 1
            self.done.append(ctx.run_id)


def can_build_offline(project: Path) -> bool:
    """Whether this interpreter already has what *project* needs to build."""
    requires = tomllib.loads((project / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in map(Requirement, requires):
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not requirement.specifier.contains(version, prereleases=True):
            return False
    return True


def install_example_plugin(base: Path) -> Path:
    """Install examples/acme-reports under *base* (once) and return the directory.

    Both test modules call it with the session's base temp directory, so the
    second call finds the installation and costs nothing.
    """
    site = base / "acme-reports-site"
    if any(site.glob("acme_reports-*.dist-info")):
        return site
    # pip builds a local project in place (build/, *.egg-info): build a copy,
    # so the checkout is left alone.
    source = shutil.copytree(
        EXAMPLE_PLUGIN, base / "acme-reports-src", dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
               "--target", str(site)]
    if can_build_offline(source):
        command += ["--no-build-isolation", "--no-index"]
    # else pip fetches the build requirements (setuptools>=69) from the index
    done = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"pip could not install {EXAMPLE_PLUGIN}:\n{done.stdout}\n{done.stderr}")
    return site


def plugin_env(site: Path | None, **extra: str) -> dict[str, str]:
    """The environment of a subprocess that sees the plugins in *site* only."""
    env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    env.update(extra)
    return env



def wait_for(condition: Callable[[], Any], timeout: float = 5.0,
             what: str | Callable[[], str] = "condition", *, poll: float = 0.002) -> Any:
    """Poll *condition* every *poll* seconds until truthy; fail after *timeout* real seconds.

    *what* names the condition in the failure; a callable is asked then, so
    the message can show the state the condition last saw."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what} not met within {timeout}s")
        time.sleep(poll)
