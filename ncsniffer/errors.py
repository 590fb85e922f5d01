"""The package's exception family: every error a user can act on is one of these."""


class NcSnifferError(Exception):
    """Base class of every ncsniffer error; the CLI turns it into a message and exit code."""

    exit_code = 2


class ConfigError(NcSnifferError):
    """The configuration is missing, unreadable or invalid (exit 1)."""

    exit_code = 1


class UsageError(NcSnifferError):
    """The command line is wrong (exit 1)."""

    exit_code = 1


class CaptureError(NcSnifferError):
    """Opening or reading a capture source failed."""


class DumpFileError(NcSnifferError):
    """A stats file cannot be written, or is not a stats file."""


class PidFileError(NcSnifferError):
    """The pid file cannot be written or read."""


class ResolverError(NcSnifferError):
    """The DNS resolver cannot be set up."""


class ReportError(NcSnifferError):
    """A report, dump request, lock or web configuration failed."""


class LockTimeout(ReportError):
    """Another process held the lock for longer than the timeout."""


class StoreError(NcSnifferError):
    """The shared store (ClickHouse) cannot be reached, or refused a query (exit 2)."""


class CoalesceError(NcSnifferError):
    """The coalescing configuration or one of its steps failed."""

    exit_code = 1
