"""pjcore: scheduled jobs declared by plugins, run and recorded by the host.

A library: its logging is disabled until the application calls
``logger.enable("pjcore")`` (loguru).
"""

from loguru import logger

logger.disable("pjcore")

from pjcore.hookspecs import hookimpl, hookspec  # noqa: E402
from pjcore.exceptions import (  # noqa: E402
    BackendLookupError,
    ConfigurationError,
    CronError,
    HandlerLookupError,
    InvalidArgument,
    JobAlreadyRunning,
    JobLookupError,
    JobNotActive,
    JobStateError,
    ManifestError,
    PjError,
    PluginError,
    PluginLoadError,
    PluginNotRunning,
    RegistrationConflict,
    RunLookupError,
    SlotAlreadyClaimed,
    StoreError,
)
from pjcore.manifest import (  # noqa: E402
    AbandonPolicy,
    JobDeclaration,
    JobPolicy,
    Manifest,
    MisfirePolicy,
)
from pjcore.models import (  # noqa: E402
    Job,
    JobRun,
    JobStatus,
    PausedBy,
    RunPage,
    RunStatus,
    RunTrigger,
    SyncResult,
)
from pjcore.plugins import make_plugin_manager  # noqa: E402
from pjcore.host import Host  # noqa: E402
from pjcore.context import JobContext, RunCancelled  # noqa: E402
from pjcore.clock import ManualClock, SystemClock  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AbandonPolicy",
    "BackendLookupError",
    "ConfigurationError",
    "InvalidArgument",
    "CronError",
    "HandlerLookupError",
    "Host",
    "JobContext",
    "ManualClock",
    "PluginNotRunning",
    "RunCancelled",
    "SystemClock",
    "Job",
    "JobAlreadyRunning",
    "JobDeclaration",
    "JobLookupError",
    "JobNotActive",
    "JobPolicy",
    "JobRun",
    "JobStateError",
    "JobStatus",
    "Manifest",
    "ManifestError",
    "MisfirePolicy",
    "PausedBy",
    "PjError",
    "PluginError",
    "PluginLoadError",
    "RegistrationConflict",
    "RunLookupError",
    "RunPage",
    "RunStatus",
    "RunTrigger",
    "SlotAlreadyClaimed",
    "StoreError",
    "SyncResult",
    "__version__",
    "hookimpl",
    "hookspec",
    "make_plugin_manager",
]
