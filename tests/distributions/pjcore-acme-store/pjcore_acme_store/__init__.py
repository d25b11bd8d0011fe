"""A third-party store backend, selected by the name "acme"."""

from pjcore import hookimpl
from pjcore.contrib.memory import MemoryJobStore


class AcmeJobStore(MemoryJobStore):
    """The memory store under another name: what matters is where it comes from."""


def _acme_store(url=None, **options):
    return AcmeJobStore(**options)


@hookimpl
def register_backends(register):
    register("store", "acme", _acme_store)
