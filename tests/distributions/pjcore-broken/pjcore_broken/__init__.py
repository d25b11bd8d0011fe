"""A plugin whose import fails: discovery must survive it."""

raise RuntimeError("boom")
