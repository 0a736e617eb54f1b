"""The one exception type the CLI turns into a one-line message and exit code 2."""


class PerfModelError(Exception):
    """A user-facing error: bad input, unknown name, malformed spec."""


class SpecError(PerfModelError):
    """A hardware, model or profile specification is missing or invalid."""


class InputError(PerfModelError):
    """A workload or option value is invalid."""


def validation_message(exc) -> str:
    """The first error of a pydantic ``ValidationError`` as one line: ``field.path: reason``
    (pydantic's "Value error, " prefix dropped; the path left out when the error is the model's)."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
