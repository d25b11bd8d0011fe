"""The built wheel: ``hookspecs/`` and ``contrib/`` ship as ``pjcore.hookspecs`` and
``pjcore.contrib``, complete, and never as top-level packages.

An editable install maps the folders on the fly and imports a sub-package that
the wheel would leave out, so only a built wheel, installed in a fresh
environment, shows what users get.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: never part of a build: environments, caches, VCS data and earlier build output
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".ci-venv", "build", "dist", "*.egg-info", "__pycache__",
    ".pytest_cache", ".hypothesis", "*.db", "*.db-wal", "*.db-shm",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    # setuptools writes build/ and *.egg-info next to the sources: build a copy,
    # so the checkout (shared with concurrent runs) is left alone.
    source = shutil.copytree(ROOT, tmp / "source", ignore=NOT_SOURCES)
    out = tmp / "dist"
    # With build isolation, as a user's pip does: this also checks that
    # [build-system] requires is enough to build.
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    [built] = out.glob("pjcore-*.whl")
    return built


def expected_modules() -> set[str]:
    """Every module of the checkout, under the name it must have in the wheel."""
    names = {"pjcore/py.typed"}
    for folder, package in (("pjcore", "pjcore"), ("hookspecs", "pjcore/hookspecs"),
                            ("contrib", "pjcore/contrib")):
        for path in (ROOT / folder).rglob("*.py"):
            names.add(f"{package}/{path.relative_to(ROOT / folder).as_posix()}")
    return names


def test_the_wheel_holds_every_module_under_pjcore(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"pjcore/hookspecs/__init__.py", "pjcore/contrib/__init__.py",
            "pjcore/contrib/defaults.py"} <= names
    missing = expected_modules() - names
    # typically a sub-package missing from [tool.setuptools] packages
    assert not missing, f"not in the wheel: {sorted(missing)}"


def test_the_wheel_has_no_top_level_hookspecs_or_contrib(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top_level_txt = [
            zf.read(n).decode().split() for n in names if n.endswith(".dist-info/top_level.txt")
        ]
    packages = {n.split("/", 1)[0] for n in names if ".dist-info/" not in n}
    assert packages == {"pjcore"}
    assert top_level_txt in ([], [["pjcore"]])


CHECK = r"""
import importlib, json, sysconfig
import pjcore, pjcore.hookspecs, pjcore.contrib, pjcore.contrib.defaults
from pjcore.abc import JobStore
from pjcore.plugins import make_plugin_manager

def importable(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        return False
    return True

pm = make_plugin_manager()
store = pm.backends.create("store", "memory")
print(json.dumps({
    "purelib": sysconfig.get_paths()["purelib"],
    "files": {
        m.__name__: m.__file__
        for m in (pjcore, pjcore.hookspecs, pjcore.contrib, pjcore.contrib.defaults)
    },
    "top_level_importable": {name: importable(name) for name in ("hookspecs", "contrib")},
    "stores": pm.backends.names("store"),
    "memory_is_job_store": isinstance(store, JobStore),
    "failures": len(pm.failures),
}))
"""


def test_the_installed_wheel_imports_from_site_packages(wheel, tmp_path):
    venv = tmp_path / "venv"
    # A plain venv: nothing of this environment (or of the checkout) is visible.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The dependencies come from the package index, as for a user.
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True, timeout=300,
    )
    proc = subprocess.run(
        [str(python), "-I", "-c", CHECK],  # -I: no PYTHONPATH, no cwd on sys.path
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    purelib = Path(report["purelib"]).resolve()
    for name, file in report["files"].items():
        assert Path(file).resolve().is_relative_to(purelib / "pjcore"), (name, file)
    hookspecs_file = Path(report["files"]["pjcore.hookspecs"]).resolve()
    assert hookspecs_file == purelib / "pjcore" / "hookspecs" / "__init__.py"
    assert report["top_level_importable"] == {"hookspecs": False, "contrib": False}
    assert report["stores"] == ["memory", "peewee"]
    assert report["memory_is_job_store"]
    assert report["failures"] == 0
