"""pjcore logs like a library: silent by default, never touching handlers."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIBRARY = [ROOT / "pjcore", ROOT / "hookspecs", ROOT / "contrib"]


def test_pjcore_is_silent_until_the_application_enables_it():
    code = """
import sys
from loguru import logger
import pjcore
from pjcore.manifest import Manifest
from pjcore.plugins import notify, make_plugin_manager

class Loud:
    @pjcore.hookimpl
    def run_finished(self, run, job):
        raise RuntimeError("observer broke")

pm = make_plugin_manager(load_entrypoints=False, plugins=[Loud()])
notify(pm, "run_finished", run=None, job=None)          # logged, not raised
print("---enable---", file=sys.stderr, flush=True)
logger.enable("pjcore")
notify(pm, "run_finished", run=None, job=None)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before, _, after = proc.stderr.partition("---enable---")
    assert "observer broke" not in before
    assert "observer broke" in after and "run_finished" in after


def test_library_code_never_adds_or_removes_handlers():
    forbidden = re.compile(r"logger\.(add|remove|configure)\(|@logger\.catch|logging\.basicConfig")
    offenders = []
    for folder in LIBRARY:
        for path in folder.rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if forbidden.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_disable_is_the_first_thing_pjcore_does():
    source = (ROOT / "pjcore" / "__init__.py").read_text()
    assert source.index('logger.disable("pjcore")') < source.index("from pjcore.")
