"""The store conformance suite (:mod:`pjcore.testing`) against every built-in
backend; the parametrized ``store`` fixture lives in ``conftest.py``."""

from pjcore.testing import JobStoreContract


class TestJobStores(JobStoreContract):
    """Runs once per backend: ``[memory]``, ``[sqlite]``, ``[postgres]``."""
