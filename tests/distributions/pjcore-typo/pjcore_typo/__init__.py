"""A plugin that misspells a hook name: it must be reported, not silently ignored."""

from pjcore import hookimpl


@hookimpl
def plugin_loadedd(plugin_id, plugin_key, manifest):
    raise AssertionError("a hook that does not exist is never called")
