"""The plugin manager: specs, built-ins, entry-point discovery, registries, notify()."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Callable

import attrs
import pluggy
import pytest
from pjtest import can_build_offline

import pjcore
import pjcore.contrib.defaults
from pjcore import hookspecs
from pjcore.abc import JobStore
from pjcore.contrib.memory import MemoryJobStore
from pjcore.exceptions import (
    BackendLookupError,
    HandlerLookupError,
    PluginLoadError,
    RegistrationConflict,
)
from pjcore.plugins import DEFAULT_PLUGINS, PluginManager, make_plugin_manager, notify

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTIONS = Path(__file__).resolve().parent / "distributions"

#: hook names and argument names are public API: plugins break if they change
HOOK_ARGS = {
    "plugin_loaded": ("plugin_id", "plugin_key", "manifest"),
    "plugin_disabled": ("plugin_id", "plugin_key", "reason"),
    "plugin_unloaded": ("plugin_id", "plugin_key", "remove_data"),
    "register_backends": ("register",),
    "register_job_handlers": ("register",),
    "register_manifests": ("register",),
    "run_started": ("run", "job"),
    "run_finished": ("run", "job"),
}


def spec_functions() -> dict[str, Callable[..., Any]]:
    return {
        name: func
        for name, func in vars(hookspecs).items()
        if callable(func) and hasattr(func, f"{hookspecs.PROJECT}_spec")
    }


def make_plugin(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """A plugin module called *name* whose hook implementations are *hooks*."""
    module = types.ModuleType(name)
    for hook_name, func in hooks.items():
        setattr(module, hook_name, pjcore.hookimpl(func))
    return module


def backends_plugin(name: str, *stores: str) -> types.ModuleType:
    def register_backends(register):
        for store in stores:
            register("store", store, lambda **options: options)

    return make_plugin(name, register_backends=register_backends)


def handlers_plugin(name: str, *jobs: tuple[str, str, Callable[..., Any]]) -> types.ModuleType:
    def register_job_handlers(register):
        for plugin_key, job_key, func in jobs:
            register(plugin_key, job_key, func)

    return make_plugin(name, register_job_handlers=register_job_handlers)


def build(*plugins: Any) -> PluginManager:
    # Entry points are not loaded: whatever is installed must not leak in.
    return make_plugin_manager(load_entrypoints=False, plugins=plugins)


# -- specs ------------------------------------------------------------------------


class TestSpecs:
    def test_the_hook_names_and_arguments_are_the_public_ones(self):
        """Renaming a hook or one of its arguments would break every plugin."""
        specs = spec_functions()
        args = {name: tuple(inspect.signature(f).parameters) for name, f in specs.items()}
        assert args == HOOK_ARGS

    def test_specs_are_added_before_anything_is_registered(self, monkeypatch):
        """pluggy validates an impl only against specs it already knows."""
        calls = []
        add_hookspecs, register = PluginManager.add_hookspecs, PluginManager.register

        def spy_add_hookspecs(self, module):
            calls.append(("add_hookspecs", module.__name__))
            return add_hookspecs(self, module)

        def spy_register(self, plugin, name=None):
            calls.append(("register", name or self.get_canonical_name(plugin)))
            return register(self, plugin, name)

        monkeypatch.setattr(PluginManager, "add_hookspecs", spy_add_hookspecs)
        monkeypatch.setattr(PluginManager, "register", spy_register)
        build(make_plugin("extra_plugin"))
        assert calls[0] == ("add_hookspecs", "pjcore.hookspecs")
        assert ("register", "extra_plugin") in calls
        assert sum(1 for kind, _ in calls if kind == "add_hookspecs") == 1

    def test_every_hook_has_its_spec(self):
        pm = build()
        for name, args in HOOK_ARGS.items():
            caller = getattr(pm.hook, name)
            assert caller.spec is not None, name
            assert caller.spec.argnames == args

    def test_hookimpl_is_the_pjcore_marker(self):
        assert pjcore.hookimpl is hookspecs.hookimpl
        assert isinstance(pjcore.hookimpl, pluggy.HookimplMarker)
        assert pjcore.hookimpl.project_name == "pjcore"

    def test_hook_calls_are_keyword_only(self):
        pm = build()
        with pytest.raises(TypeError):
            pm.hook.run_finished(object(), object())

    def test_an_impl_may_accept_fewer_arguments_than_the_spec(self):
        seen = []
        pm = build(make_plugin("run_only", run_finished=lambda run: seen.append(run)))
        run = object()
        pm.hook.run_finished(run=run, job=object())
        notify(pm, "run_finished", run=run, job=object())
        assert seen == [run, run]

    def test_an_impl_with_an_argument_the_spec_lacks_is_refused(self):
        def run_finished(run, job, extra):
            pass

        with pytest.raises(PluginLoadError) as excinfo:
            build(make_plugin("too_many_args", run_finished=run_finished))
        assert excinfo.value.plugin == "too_many_args"
        assert "extra" in str(excinfo.value)


# -- built-in plugins ---------------------------------------------------------------


class TestBuiltins:
    def test_registered_by_module_name(self):
        pm = build()
        assert DEFAULT_PLUGINS == ("pjcore.contrib.defaults",)
        assert pm.get_plugin("pjcore.contrib.defaults") is pjcore.contrib.defaults
        info = {p.name: p for p in pm.plugin_infos()}["pjcore.contrib.defaults"]
        assert info.builtin

    def test_defaults_can_be_left_out(self):
        pm = make_plugin_manager(load_entrypoints=False, defaults=False)
        assert pm.get_plugin("pjcore.contrib.defaults") is None
        assert pm.backends.names("store") == []

    def test_store_backends(self):
        pm = build()
        assert pm.backends.names("store") == ["memory", "peewee"]
        for name in ("memory", "peewee"):
            assert pm.backends.get("store", name).plugin == "pjcore.contrib.defaults"

    def test_memory_store_is_created_by_name(self):
        store = build().backends.create("store", "memory")
        try:
            assert isinstance(store, JobStore)
            assert store.list_jobs() == []
        finally:
            store.close()

    def test_a_plugin_store_is_created_by_name_with_its_options(self):
        class TinyStore(MemoryJobStore):
            pass

        received = []

        def tiny_store(url=None, **options):
            received.append((url, options))
            return TinyStore()

        def register_backends(register):
            register("store", "tiny", tiny_store)

        pm = build(make_plugin("tiny_store", register_backends=register_backends))
        assert isinstance(pm.backends.create("store", "tiny", url="tiny://", size=3), TinyStore)
        assert received == [("tiny://", {"size": 3})]


# -- registries -----------------------------------------------------------------------


class TestRegistries:
    def test_two_plugins_registering_one_store_name_conflict(self):
        with pytest.raises(RegistrationConflict) as excinfo:
            build(backends_plugin("store_one", "shared"), backends_plugin("store_two", "shared"))
        message = str(excinfo.value)
        assert "'shared'" in message
        assert "'store_one'" in message and "'store_two'" in message

    def test_a_plugin_cannot_take_a_builtin_store_name(self):
        with pytest.raises(RegistrationConflict, match="pjcore.contrib.defaults"):
            build(backends_plugin("usurper", "memory"))

    def test_one_job_handler_registered_twice_conflicts(self):
        def handler(ctx):
            pass

        with pytest.raises(RegistrationConflict) as excinfo:
            build(
                handlers_plugin("jobs_one", ("acme", "sync", handler)),
                handlers_plugin("jobs_two", ("acme", "sync", handler)),
            )
        message = str(excinfo.value)
        assert "acme/sync" in message
        assert "'jobs_one'" in message and "'jobs_two'" in message

    def test_the_same_job_key_of_two_plugin_keys_is_no_conflict(self):
        pm = build(handlers_plugin("jobs", ("a", "sync", print), ("b", "sync", repr)))
        assert pm.handlers.get("a", "sync").func is print
        assert pm.handlers.get("b", "sync").func is repr

    def test_unknown_backend_kind(self):
        def register_backends(register):
            register("queue", "fast", dict)

        with pytest.raises(RegistrationConflict, match="unknown kind 'queue'") as excinfo:
            build(make_plugin("odd_kind", register_backends=register_backends))
        assert isinstance(excinfo.value, ValueError)
        assert excinfo.value.plugin == "odd_kind"

    def test_unknown_backend_name_lists_the_available_ones(self):
        pm = build(backends_plugin("more_stores", "acme"))
        with pytest.raises(BackendLookupError) as excinfo:
            pm.backends.create("store", "nope")
        assert str(excinfo.value) == (
            "No store backend named 'nope' (available: acme, memory, peewee)"
        )
        assert excinfo.value.available == ["acme", "memory", "peewee"]
        assert isinstance(excinfo.value, LookupError)

    def test_handler_lookup(self):
        calls = []

        def sync(ctx):
            calls.append(ctx)

        pm = build(handlers_plugin("jobs", ("acme", "sync", sync)))
        handler = pm.handlers.get("acme", "sync")
        assert handler.func is sync
        assert handler.plugin == "jobs"
        assert handler.qualified_name.endswith("test_handler_lookup.<locals>.sync")
        handler("ctx")
        assert calls == ["ctx"]
        assert pm.handlers.find("acme", "other") is None

    def test_missing_handler_message(self):
        pm = build()
        with pytest.raises(HandlerLookupError) as excinfo:
            pm.handlers.get("acme", "nightly-report")
        assert str(excinfo.value) == 'No handler registered for job "nightly-report"'
        assert (excinfo.value.plugin_key, excinfo.value.job_key) == ("acme", "nightly-report")

    def test_registries_follow_plugins_registered_after_the_build(self):
        pm = build()
        assert "late" not in pm.backends.names("store")
        assert pm.handlers.find("late", "job") is None
        plugin = backends_plugin("late_plugin", "late")
        pm.register(plugin)
        pm.register(handlers_plugin("late_jobs", ("late", "job", print)))
        assert pm.backends.get("store", "late").plugin == "late_plugin"
        assert pm.handlers.get("late", "job").func is print
        pm.unregister(plugin)
        assert "late" not in pm.backends.names("store")
        pm.unregister(name="late_jobs")
        assert pm.handlers.find("late", "job") is None

    @pytest.mark.parametrize("kind", ["handler", "backend", "manifest"])
    def test_a_plugin_registered_after_the_build_that_conflicts_is_refused(self, kind):
        manifest = {"key": "acme", "jobs": [{"job_key": "a", "display_name": "A"}]}

        def declares(name):
            return make_plugin(name, register_manifests=lambda register: register(manifest))

        first, late, lookup = {
            "handler": (handlers_plugin("first", ("acme", "a", print)),
                        handlers_plugin("late", ("acme", "a", repr)),
                        lambda pm: pm.handlers.get("acme", "a")),
            "backend": (backends_plugin("first", "shared"), backends_plugin("late", "shared"),
                        lambda pm: pm.backends.get("store", "shared").plugin),
            "manifest": (declares("first"), declares("late"), lambda pm: pm.manifests()),
        }[kind]
        pm = build(first)
        before = lookup(pm)
        with pytest.raises(RegistrationConflict) as excinfo:
            pm.register(late)
        assert excinfo.value.plugin == "late"
        assert "'first'" in str(excinfo.value) and "'late'" in str(excinfo.value)
        assert not pm.is_registered(late) and pm.get_plugin("late") is None
        # lookups go on working, with what was registered before
        assert lookup(pm) == before

    def test_a_plugin_that_registers_nothing_keeps_the_registries(self):
        # an observer (or the Host's coordinator) coming or going must not
        # make the first run after it collect every handler again
        collected = []

        def register_job_handlers(register):
            collected.append(1)
            register("acme", "job", print)

        pm = build(make_plugin("jobs", register_job_handlers=register_job_handlers))
        assert pm.handlers.get("acme", "job").func is print and collected == [1]
        observer = make_plugin("observer", run_finished=lambda run, job: None)
        pm.register(observer)
        pm.unregister(observer)
        pm.set_blocked("observer")
        assert pm.handlers.get("acme", "job").func is print and collected == [1]
        pm.register(handlers_plugin("more", ("acme", "other", len)))
        assert pm.handlers.get("acme", "other").func is len and collected == [1, 1]

    def test_a_raising_registration_hook_names_its_plugin(self):
        def register_backends(register):
            raise KeyError("missing setting")

        with pytest.raises(PluginLoadError, match="missing setting") as excinfo:
            build(make_plugin("crashing", register_backends=register_backends))
        assert excinfo.value.plugin == "crashing"

    def test_a_misspelled_hook_in_an_explicit_plugin_is_an_error(self):
        """check_pending(): a typo would otherwise be a hook that is never called."""

        def plugin_loadedd(plugin_id, plugin_key, manifest):
            pass

        with pytest.raises(PluginLoadError, match="plugin_loadedd") as excinfo:
            build(make_plugin("typo_plugin", plugin_loadedd=plugin_loadedd))
        assert excinfo.value.plugin == "typo_plugin"

    def test_an_optional_unknown_hook_is_allowed(self):
        def future_hook(thing):
            pass

        module = types.ModuleType("forward_compatible")
        module.future_hook = pjcore.hookimpl(optionalhook=True)(future_hook)
        assert build(module).get_plugin("forward_compatible") is module


# -- notify() -----------------------------------------------------------------------


class TestNotify:
    def test_one_raising_observer_does_not_stop_the_others(self, pjcore_logs):
        calls = []

        def first(run, job):
            calls.append(("first", run, job))

        def middle(run, job):
            raise RuntimeError("observer down")

        def last(run):
            calls.append(("last", run))

        pm = build(
            make_plugin("obs_first", run_finished=first),
            make_plugin("obs_middle", run_finished=middle),
            make_plugin("obs_last", run_finished=last),
        )
        run, job = object(), object()
        notify(pm, "run_finished", run=run, job=job)  # does not raise
        # pluggy's order: the last registered is called first
        assert calls == [("last", run), ("first", run, job)]
        errors = [m for m in pjcore_logs if m.record["level"].name == "ERROR"]
        assert len(errors) == 1
        assert "run_finished" in errors[0] and "obs_middle" in errors[0]
        assert errors[0].record["exception"].type is RuntimeError

    def test_observers_registered_or_unregistered_later_are_seen(self):
        # notify() keeps each hook's impls between registrations
        calls = []
        pm = build(make_plugin("obs_early", run_finished=lambda run: calls.append("early")))
        notify(pm, "run_finished", run=1, job=2)
        late = make_plugin("obs_late", run_finished=lambda run, job: calls.append("late"))
        pm.register(late, name="obs_late")
        notify(pm, "run_finished", run=1, job=2)
        pm.unregister(name="obs_early")
        notify(pm, "run_finished", run=1, job=2)
        pm.set_blocked("obs_late")
        notify(pm, "run_finished", run=1, job=2)
        assert calls == ["early", "late", "early", "late"]

    def test_a_plain_hook_call_would_stop_at_the_raising_observer(self):
        """Why notify() exists: pluggy re-raises and skips the remaining impls."""
        calls = []

        def raising(run, job):
            raise RuntimeError("observer down")

        pm = build(
            make_plugin("obs_a", run_started=lambda run, job: calls.append("a")),
            make_plugin("obs_b", run_started=raising),
        )
        with pytest.raises(RuntimeError):
            pm.hook.run_started(run=object(), job=object())
        assert calls == []
        notify(pm, "run_started", run=object(), job=object())
        assert calls == ["a"]


# -- entry points (fakes: conflicts and name clashes) ------------------------------------


@attrs.frozen
class FakeDistribution:
    name: str
    version: str
    entry_points: tuple[importlib.metadata.EntryPoint, ...]

    @property
    def metadata(self) -> dict[str, str]:
        return {"name": self.name}


def install_fake(
    monkeypatch, dist_name: str, ep_name: str, plugin: types.ModuleType
) -> FakeDistribution:
    monkeypatch.setitem(sys.modules, plugin.__name__, plugin)
    ep = importlib.metadata.EntryPoint(name=ep_name, value=plugin.__name__, group="pjcore")
    return FakeDistribution(dist_name, "1.0", (ep,))


def use_distributions(monkeypatch, *dists: FakeDistribution) -> None:
    for var in ("PJCORE_LOAD_PLUGINS", "PJCORE_BLOCK_PLUGINS", "PJCORE_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: list(dists))


class TestEntryPointIsolation:
    def test_a_conflicting_entry_point_is_skipped(self, monkeypatch):
        good = backends_plugin("fake_good", "good")
        clash = backends_plugin("fake_clash", "memory")
        use_distributions(
            monkeypatch,
            install_fake(monkeypatch, "pjcore-good", "good", good),
            install_fake(monkeypatch, "pjcore-clash", "clash", clash),
        )
        pm = make_plugin_manager()
        assert pm.backends.get("store", "memory").plugin == "pjcore.contrib.defaults"
        assert pm.backends.get("store", "good").plugin == "good"
        assert pm.get_plugin("clash") is None
        [failure] = pm.failures
        assert (failure.name, failure.distribution, failure.version) == (
            "clash", "pjcore-clash", "1.0",
        )
        assert failure.error.startswith("RegistrationConflict: ")
        assert "pjcore.contrib.defaults" in failure.error

    def test_a_conflicting_entry_point_is_an_error_in_strict_mode(self, monkeypatch):
        clash = backends_plugin("fake_clash", "memory")
        use_distributions(monkeypatch, install_fake(monkeypatch, "pjcore-clash", "clash", clash))
        with pytest.raises(PluginLoadError, match="pjcore-clash") as excinfo:
            make_plugin_manager(strict=True)
        assert excinfo.value.plugin == "clash"

    def test_an_entry_point_name_is_taken_only_once(self, monkeypatch):
        first = install_fake(monkeypatch, "pjcore-one", "same", make_plugin("fake_one"))
        second = install_fake(monkeypatch, "pjcore-two", "same", make_plugin("fake_two"))
        use_distributions(monkeypatch, second, first)
        pm = make_plugin_manager()
        # sorted by entry point value: fake_one wins whatever the discovery order
        assert pm.get_plugin("same") is sys.modules["fake_one"]
        [failure] = pm.failures
        assert failure.distribution == "pjcore-two"
        assert "already taken by pjcore-one" in failure.error

    def test_a_plugin_failing_validation_leaves_nothing_behind(self, monkeypatch):
        def run_finished(run, job, extra):
            pass

        bad = install_fake(monkeypatch, "pjcore-bad-args", "bad_args",
                           make_plugin("fake_bad_args", run_finished=run_finished))
        use_distributions(monkeypatch, bad)
        pm = make_plugin_manager()
        assert pm.get_plugin("bad_args") is None
        assert [i.plugin_name for i in pm.hook.run_finished.get_hookimpls()] == []
        assert pm.failures[0].error.startswith("PluginValidationError")


def install_on_path(monkeypatch, site: Path, dist_name: str, ep_name: str, source: str) -> None:
    """A real distribution in *site* (dist-info, entry point, module), on sys.path."""
    module = f"{dist_name.replace('-', '_')}_plugin"
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist_name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pjcore]\n{ep_name} = {module}\n")


class TestEntryPointsThatExit:
    """sys.exit() at import (e.g. a missing setting) is the plugin's failure, not the host's."""

    @pytest.fixture
    def site(self, tmp_path, monkeypatch):
        for var in ("PJCORE_BLOCK_PLUGINS", "PJCORE_STRICT_PLUGINS"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("PJCORE_LOAD_PLUGINS", "exits,fine")
        install_on_path(monkeypatch, tmp_path, "pjcore-exits", "exits",
                        "raise SystemExit('set ACME_TOKEN first')\n")
        install_on_path(monkeypatch, tmp_path, "pjcore-fine", "fine", inspect.cleandoc("""
            from pjcore import hookimpl

            @hookimpl
            def register_backends(register):
                register("store", "fine", lambda **options: options)
            """))
        monkeypatch.syspath_prepend(str(tmp_path))
        yield tmp_path
        for module in ("pjcore_exits_plugin", "pjcore_fine_plugin"):
            sys.modules.pop(module, None)

    def test_an_entry_point_whose_import_exits_is_recorded_and_skipped(self, site):
        pm = make_plugin_manager()
        [failure] = pm.failures
        assert (failure.name, failure.distribution, failure.version) == (
            "exits", "pjcore-exits", "1.0")
        assert failure.error == "SystemExit: set ACME_TOKEN first"
        assert pm.get_plugin("exits") is None
        # loading went on with the next entry point
        assert pm.backends.get("store", "fine").plugin == "fine"

    def test_an_entry_point_whose_import_exits_is_a_load_error_in_strict_mode(self, site):
        with pytest.raises(PluginLoadError, match="set ACME_TOKEN first") as excinfo:
            make_plugin_manager(strict=True)
        assert excinfo.value.plugin == "exits"

    def test_ctrl_c_during_an_import_is_not_swallowed(self, site):
        (site / "pjcore_exits_plugin.py").write_text("raise KeyboardInterrupt\n")
        with pytest.raises(KeyboardInterrupt):
            make_plugin_manager()


# -- entry points (real distributions, discovered in a subprocess) ------------------------


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A directory holding the fixture distributions, installed (dist-info and all).

    It is put on PYTHONPATH of a subprocess only, so the project's environment
    never sees these plugins.
    """
    root = tmp_path_factory.mktemp("plugin-dists")
    site = root / "site"
    # pip builds a local project in place: build copies, not the checkout.
    sources = [
        shutil.copytree(DISTRIBUTIONS / name, root / name)
        for name in ("pjcore-acme-store", "pjcore-broken", "pjcore-typo")
    ]
    offline = all(can_build_offline(src) for src in sources)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    command += ["--target", str(site)]
    if offline:
        command += ["--no-build-isolation", "--no-index"]
    subprocess.run([*command, *map(str, sources)], check=True, timeout=300)
    assert sorted(p.name for p in site.glob("*.dist-info")) == [
        "pjcore_acme_store-1.2.0.dist-info",
        "pjcore_broken-0.0.1.dist-info",
        "pjcore_typo-0.3.0.dist-info",
    ]
    return site


DISCOVER = r"""
import json, sys
from datetime import datetime, timezone

import attrs
from loguru import logger

from pjcore.abc import JobStore
from pjcore.contrib.memory import MemoryJobStore
from pjcore.exceptions import PluginLoadError
from pjcore.manifest import Manifest
from pjcore.plugins import make_plugin_manager

if "log" in sys.argv:
    logger.enable("pjcore")
try:
    pm = make_plugin_manager(strict=True if "strict" in sys.argv else None)
except PluginLoadError as exc:
    print(json.dumps({"strict_error": {"message": str(exc), "plugin": exc.plugin}}))
    raise SystemExit(0)
out = {
    "stores": {b.name: b.plugin for b in pm.backends.all() if b.kind == "store"},
    "plugins": [attrs.asdict(p) for p in pm.plugin_infos()],
    "failures": [attrs.asdict(f) for f in pm.failures],
    "impls": {
        name: [i.plugin_name for i in caller.get_hookimpls()]
        for name, caller in vars(pm.hook).items() if not name.startswith("_")
    },
}
if "acme" in out["stores"]:
    store = pm.backends.create("store", "acme")
    job = {"job_key": "sync", "display_name": "Sync", "schedule": "*/5 * * * *"}
    manifest = Manifest.from_dict({"key": "demo", "jobs": [job]})
    store.sync_jobs("p1", "demo", manifest.jobs, now=datetime.now(timezone.utc))
    out["acme"] = {
        "class": f"{type(store).__module__}.{type(store).__qualname__}",
        "is_job_store": isinstance(store, JobStore),
        "jobs": [j.job_key for j in store.list_jobs("p1")],
    }
    store.close()
print(json.dumps(out))
"""


def discover(site: Path, *args: str, **env: str) -> tuple[dict[str, Any], str]:
    """Build a manager in a fresh interpreter that sees the fixture distributions.

    :return: what the subprocess reports (JSON) and its stderr.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PJCORE_")}
    environ["PYTHONPATH"] = str(site)
    environ.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", DISCOVER, *args],
        cwd=site.parent,  # not the checkout: its folders must not shadow anything
        env=environ, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def failure_names(report: dict[str, Any]) -> list[str]:
    return sorted(f["name"] for f in report["failures"])


def plugin_names(report: dict[str, Any]) -> list[str]:
    return [p["name"] for p in report["plugins"]]


class TestInstalledDistributions:
    def test_discovery(self, plugin_site):
        report, _ = discover(plugin_site)
        assert report["stores"] == {"acme": "acme", "memory": "pjcore.contrib.defaults",
                                    "peewee": "pjcore.contrib.defaults"}
        assert report["acme"] == {
            "class": "pjcore_acme_store.AcmeJobStore", "is_job_store": True, "jobs": ["sync"],
        }
        plugins = {p["name"]: p for p in report["plugins"]}
        assert plugins["acme"] == {"name": "acme", "distribution": "pjcore-acme-store",
                                   "version": "1.2.0", "builtin": False}
        assert sorted(plugins) == ["acme", "pjcore.contrib.defaults"]
        assert report["impls"]["register_backends"] == ["pjcore.contrib.defaults", "acme"]

    def test_a_broken_distribution_is_reported_and_skipped(self, plugin_site):
        report, _ = discover(plugin_site)
        broken = {f["name"]: f for f in report["failures"]}["broken"]
        assert broken == {"name": "broken", "distribution": "pjcore-broken", "version": "0.0.1",
                          "error": "RuntimeError: boom"}
        assert "acme" in report["stores"]  # discovery went on

    def test_a_misspelled_hook_is_reported_and_skipped(self, plugin_site):
        report, _ = discover(plugin_site)
        typo = {f["name"]: f for f in report["failures"]}["typo"]
        assert typo["distribution"] == "pjcore-typo"
        assert "unknown hook(s) plugin_loadedd" in typo["error"]
        assert "typo" not in plugin_names(report)
        assert not any("typo" in plugins for plugins in report["impls"].values())

    @pytest.mark.parametrize("how", ["argument", "environment"])
    def test_strict_mode_raises(self, plugin_site, how):
        args, env = (["strict"], {}) if how == "argument" else ([], {"PJCORE_STRICT_PLUGINS": "1"})
        report, _ = discover(plugin_site, *args, **env)
        error = report["strict_error"]
        assert error["plugin"] == "broken"  # entry points load in name order
        assert "'broken' from pjcore-broken 0.0.1" in error["message"]
        assert "boom" in error["message"]

    def test_strict_mode_raises_for_a_misspelled_hook(self, plugin_site):
        report, _ = discover(plugin_site, "strict", PJCORE_LOAD_PLUGINS="typo")
        assert report["strict_error"]["plugin"] == "typo"
        assert "plugin_loadedd" in report["strict_error"]["message"]

    def test_strict_mode_can_be_switched_off_by_the_environment(self, plugin_site):
        report, _ = discover(plugin_site, PJCORE_STRICT_PLUGINS="0")
        assert failure_names(report) == ["broken", "typo"]

    @pytest.mark.parametrize("allow", ["acme", "pjcore-acme-store", " acme , nothing-such "])
    def test_allow_list(self, plugin_site, allow):
        report, _ = discover(plugin_site, PJCORE_LOAD_PLUGINS=allow)
        assert plugin_names(report) == ["acme", "pjcore.contrib.defaults"]
        assert report["failures"] == []

    def test_an_empty_allow_list_loads_no_entry_point(self, plugin_site):
        report, _ = discover(plugin_site, PJCORE_LOAD_PLUGINS="")
        assert plugin_names(report) == ["pjcore.contrib.defaults"]  # built-ins stay
        assert report["failures"] == []
        assert sorted(report["stores"]) == ["memory", "peewee"]

    @pytest.mark.parametrize("block", ["acme", "pjcore-acme-store"])
    def test_block_list(self, plugin_site, block):
        report, _ = discover(plugin_site, PJCORE_BLOCK_PLUGINS=block)
        assert "acme" not in report["stores"]
        assert "acme" not in plugin_names(report)
        assert failure_names(report) == ["broken", "typo"]

    def test_block_list_wins_over_allow_list(self, plugin_site):
        report, _ = discover(plugin_site, PJCORE_LOAD_PLUGINS="acme,broken",
                             PJCORE_BLOCK_PLUGINS="broken")
        assert plugin_names(report) == ["acme", "pjcore.contrib.defaults"]
        assert report["failures"] == []

    def test_failures_are_silent_unless_the_app_enables_pjcore_logging(self, plugin_site):
        _, stderr = discover(plugin_site)
        assert "boom" not in stderr and "broken" not in stderr

        _, stderr = discover(plugin_site, "log")
        assert "pjcore plugin broken from pjcore-broken 0.0.1 failed to load" in stderr
        assert "RuntimeError: boom" in stderr
        assert "pjcore plugin typo from pjcore-typo 0.3.0 failed to load" in stderr


# -- meta ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOOK_ARGS))
def test_every_hookspec_has_a_docstring(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc.split()) >= 5, f"hookspec {name} needs a docstring saying when it is called"


@pytest.mark.parametrize("name", sorted(HOOK_ARGS))
def test_every_hook_is_documented_in_the_readme(name):
    readme = ROOT / "README.md"
    assert readme.exists(), "README.md is missing"
    text = readme.read_text(encoding="utf-8")
    assert re.search(rf"\b{name}\b", text), f"README.md does not document hook {name}"
