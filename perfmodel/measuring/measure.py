"""``python -m perfmodel.measuring.measure MODEL[,MODEL...] [options]``: the ``measure`` command as a module.

Exit codes: 0 done (or stopped by the time budget, resumable), 2 bad input (one line on stderr),
3 the device became unusable mid-sweep (resume with the same command).
"""

from __future__ import annotations

import sys

from perfmodel.errors import PerfModelError


def main(argv: list[str] | None = None) -> int:
    from perfmodel.click_errors import ABORT, EXIT, USAGE_ERRORS
    from perfmodel.measuring.cli import app

    try:
        rc = app(args=argv, prog_name="python -m perfmodel.measuring.measure", standalone_mode=False)
    except PerfModelError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except EXIT as exc:
        return int(exc.exit_code)
    except USAGE_ERRORS as exc:
        line = " ".join(part.strip() for part in exc.format_message().splitlines() if part.strip())
        print(f"error: {line}", file=sys.stderr)
        return 2
    except ABORT:
        return 130
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
