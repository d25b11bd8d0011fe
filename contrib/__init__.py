"""Built-in backends (installed as ``pjcore.contrib``)."""
