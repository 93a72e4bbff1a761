"""Command-line entry points (also used by ``training_scripts/``): parse, build, call the library.

:func:`run_cli` runs a script's ``main`` the way a user at a terminal needs: an error is one line (plus a hint), not
a traceback; ``--debug`` or ``MEMCTL_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from ..errors import USER_ERRORS

__all__ = ["run_cli"]


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("MEMCTL_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _one_line(error: BaseException) -> str:
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; turn an exception into one line on stderr and an exit status.

    Args:
        main (`Callable`): A script's ``main(argv)``.
        argv (`list[str]`, *optional*): Arguments (default: ``sys.argv[1:]``).

    Returns:
        `int`: 0 on success, 1 for an error, 130 when interrupted.
    """
    argv = sys.argv[1:] if argv is None else argv
    if _debug_requested(argv):
        main(argv)
        return 0
    # In a launch of several processes every rank fails alike: one of them speaks.
    speaks = os.environ.get("LOCAL_RANK", "0") == "0"
    hint = "(--debug or MEMCTL_DEBUG=1 shows the traceback)"
    try:
        main(argv)
    except KeyboardInterrupt:
        if speaks:
            print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if speaks:
            print(f"error: {_one_line(error)} {hint}", file=sys.stderr)
        return 1
    except Exception as error:  # anything else is a bug: still one line, with the type to report it by
        if speaks:
            print(f"error: unexpected {type(error).__name__}: {_one_line(error)} {hint}", file=sys.stderr)
        return 1
    return 0
