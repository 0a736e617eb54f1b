"""The one exception type the CLI turns into a one-line message and exit code 2."""


class PerfModelError(Exception):
    """A user-facing error: bad input, unknown name, malformed spec."""


class SpecError(PerfModelError):
    """A hardware, model or profile specification is missing or invalid."""


class InputError(PerfModelError):
    """A workload or option value is invalid."""
