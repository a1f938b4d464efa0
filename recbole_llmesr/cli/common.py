"""What every command-line tool shares: one line on stderr and exit status 2 for bad input."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Tuple, Type

from recbole_llmesr.errors import LLMESRError

#: Status of a tool stopped by bad input (argparse's own status for bad flags).
USER_ERROR_STATUS = 2
#: Status of a tool stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED_STATUS = 130
#: Errors about a path the user named; shown like the package's own errors.
PATH_ERRORS: Tuple[Type[BaseException], ...] = (FileNotFoundError, PermissionError, IsADirectoryError,
                                                NotADirectoryError)


def one_line(err: BaseException) -> str:
    """The error's message on one line (a KeyError's without the quotes ``str`` adds)."""
    if isinstance(err, KeyError) and err.args:
        msg = str(err.args[0])
    else:
        msg = str(err) or type(err).__name__
    return " ".join(msg.split())


def run_tool(tool: str, body: Callable[[], int], also: Tuple[Type[BaseException], ...] = (),
             interrupted: Optional[str] = None) -> int:
    """``body()``, with an :class:`LLMESRError`, a :data:`PATH_ERRORS` error or one of ``also`` printed as
    ``<tool>: error: <message>`` and :data:`USER_ERROR_STATUS` returned instead of a traceback.

    ``interrupted``: what to say on Ctrl-C (then :data:`INTERRUPTED_STATUS`); None lets it through.
    """
    try:
        return body()
    except (LLMESRError, *PATH_ERRORS, *also) as err:
        print(f"{tool}: error: {one_line(err)}", file=sys.stderr)
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"{tool}: {interrupted}", file=sys.stderr)
        return INTERRUPTED_STATUS
