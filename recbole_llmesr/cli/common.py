"""The one error boundary of the command-line tools.

A known error (bad input, a setting out of range, a full or read-only disk) prints
``<tool>: error: <what, where, how to fix>`` on one line and exits with status 2. Anything else is a bug:
its traceback is printed with one line asking for a report, and the status is 1. ``--debug`` (or
``RECBOLE_LLMESR_DEBUG=1``) prints the traceback of known errors too.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from typing import Callable, Optional, Tuple, Type

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.fileio import DISK_ERRNOS, disk_error

#: Status of a tool stopped by bad input (argparse's own status for bad flags).
USER_ERROR_STATUS = 2
#: Status of a tool stopped by a bug (what Python itself returns for an uncaught exception).
BUG_STATUS = 1
#: Status of a tool stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED_STATUS = 130
#: Errors about a path the user named; shown like the package's own errors.
PATH_ERRORS: Tuple[Type[BaseException], ...] = (FileNotFoundError, PermissionError, IsADirectoryError,
                                                NotADirectoryError)
#: Setting it to anything but "" or "0" is ``--debug``.
DEBUG_ENV = "RECBOLE_LLMESR_DEBUG"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of every error, not only of bugs (or set {DEBUG_ENV}=1)")


def debug_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(err: BaseException) -> str:
    """The error's message on one line (a KeyError's without the quotes ``str`` adds)."""
    if isinstance(err, KeyError) and err.args:
        msg = str(err.args[0])
    else:
        msg = str(err) or type(err).__name__
    return " ".join(msg.split())


def _message(err: BaseException, also: Tuple[Type[BaseException], ...]) -> Optional[str]:
    """What to print for a known error; None for a bug."""
    if isinstance(err, (LLMESRError, *PATH_ERRORS, *also)):
        return one_line(err)
    found = disk_error(err)
    if found is not None:  # a write outside fileio's atomic writes (RecBole's log file, tensorboard)
        where = f" ({found.filename})" if found.filename else ""
        return (f"{DISK_ERRNOS[found.errno]}{where}: free some space or make the folder writable, "
                f"then run the command again")
    return None


def _warning_printer(tool: str, default: Callable) -> Callable:
    """The package's own warnings as ``<tool>: warning: <message>``; others as Python shows them."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if category.__module__.startswith("recbole_llmesr") or os.path.abspath(filename).startswith(package):
            print(f"{tool}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def run_tool(tool: str, body: Callable[[], int], also: Tuple[Type[BaseException], ...] = (),
             interrupted: Optional[str] = None, debug: bool = False) -> int:
    """``body()`` behind the error boundary (see the module docstring).

    ``also``: further exception types that mean bad input for this tool. ``interrupted``: what to say
    on Ctrl-C (then :data:`INTERRUPTED_STATUS`); None lets it through. ``debug``: ``--debug`` was given.
    """
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(tool, warnings.showwarning)
            return body()
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"{tool}: {interrupted}", file=sys.stderr)
        return INTERRUPTED_STATUS
    except Exception as err:  # noqa: BLE001 - the boundary: every error ends here, known or not
        message = _message(err, also)
        if message is None:
            traceback.print_exc()
            print(f"{tool}: internal error ({type(err).__name__}): this is a bug in recbole-llmesr, not a "
                  f"problem with your input. Please report it with the command line and the traceback above.",
                  file=sys.stderr)
            return BUG_STATUS
        if debug_requested(debug):
            traceback.print_exc()
        print(f"{tool}: error: {message}", file=sys.stderr)
        return USER_ERROR_STATUS
