"""The one base class of the package's own errors.

Every error the package raises about its input (files, settings, checkpoints, API answers) derives from
:class:`LLMESRError`, next to the built-in class that describes it (``ValueError``, ``RuntimeError``,
...), so callers can catch either. The command-line tools print any ``LLMESRError`` as one line and exit
with status 2 (:mod:`recbole_llmesr.cli.common`).
"""


class LLMESRError(Exception):
    """Base of the errors that mean "the input is wrong", as opposed to a bug."""
