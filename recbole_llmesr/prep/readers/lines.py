"""Reading input files line by line, the bad-line policy, and parsing the fields of one line.

Files may be plain or gzip (``.gz`` suffix, or gzip magic bytes). They are streamed line by line; files of
:data:`PROGRESS_MIN_BYTES` or more show a tqdm progress bar. Every format error names the file and the line
number (:class:`DataFormatError`).

Bad lines (``on_bad_line``): ``"raise"`` (default) raises :class:`DataFormatError` at the first malformed
line; ``"skip"`` drops the line with a :class:`BadLineWarning` naming file and line (the first 20 of them
per file, then one summary warning with the count).
"""
from __future__ import annotations

import ast
import csv
import gzip
import json
import math
import os
import sys
import warnings
import zlib
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recbole_llmesr.errors import LLMESRError

#: Files at least this big get a progress bar.
PROGRESS_MIN_BYTES = 32 * 2**20

_MAX_WARNINGS = 20
PARSE_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


class DataFormatError(LLMESRError, ValueError):
    """A malformed input file; ``path`` and ``line`` (1-based, or None) say where."""

    def __init__(self, path: Any, line: Optional[int], message: str):
        self.path = os.fspath(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class BadLineWarning(UserWarning):
    """A malformed line was skipped (``on_bad_line="skip"``)."""


class LineError(LLMESRError):
    """The current line is bad; the message says why. Readers turn it into the bad-line policy's outcome."""


class BadLines:
    """The bad-line policy of one file: raise at the first bad line, or skip bad lines with a warning."""

    def __init__(self, policy: str, path: str):
        if policy not in ("raise", "skip"):
            raise ValueError(f"on_bad_line must be 'raise' or 'skip', got {policy!r}")
        self.policy = policy
        self.path = path
        self.count = 0

    def handle(self, lineno: int, message: str) -> None:
        if self.policy == "raise":
            raise DataFormatError(self.path, lineno, message)
        self.count += 1
        if self.count <= _MAX_WARNINGS:
            warnings.warn(f"{self.path}, line {lineno}: skipped bad line: {message}", BadLineWarning,
                          stacklevel=4)

    def finish(self) -> None:
        if self.count > _MAX_WARNINGS:
            warnings.warn(f"{self.path}: skipped {self.count} bad lines in all "
                          f"(only the first {_MAX_WARNINGS} were listed)", BadLineWarning, stacklevel=3)


def _snippet(line: str, n: int = 80) -> str:
    return repr(line if len(line) <= n else line[:n] + "...")


def check_file(path: Any) -> str:
    """``path`` as a string, or FileNotFoundError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    return path


def _is_gzip(path: str) -> bool:
    if path.endswith(".gz"):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def iter_lines(path: Any, progress: Optional[bool] = None, encoding: str = "utf-8") -> Iterator[Tuple[int, str]]:
    """Yield ``(line_number, text)`` (1-based, line ending removed, a byte-order mark dropped) of a plain or
    gzip file in ``encoding`` (one that keeps ASCII's newline byte: UTF-8, Latin-1, ...)."""
    path = check_file(path)
    size = os.path.getsize(path)
    show = (size >= PROGRESS_MIN_BYTES) if progress is None else progress
    # utf-8-sig is UTF-8 that may start with a byte-order mark, dropped below for every encoding.
    label = "UTF-8" if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig") else encoding
    raw = open(path, "rb")
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if _is_gzip(path) else raw
    lineno = 0
    with raw, tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(path), disable=not show,
                   leave=False, file=sys.stderr) as bar:
        done = 0
        try:
            for lineno, bline in enumerate(stream, 1):
                if show and lineno % 65536 == 0:
                    pos = raw.tell()
                    bar.update(pos - done)
                    done = pos
                try:
                    line = bline.decode(encoding)
                except UnicodeDecodeError as e:
                    raise DataFormatError(path, lineno, f"not valid {label} ({e})") from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, line.rstrip("\r\n")
        except (EOFError, OSError, zlib.error) as e:
            raise DataFormatError(path, lineno + 1, f"cannot read compressed data ({e})") from None
        if show:
            bar.update(size - done)


def iter_csv(path: str, delimiter: str, progress: Optional[bool] = None,
             encoding: str = "utf-8") -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(line_number, fields)`` of a delimited file, parsed with the csv module (double-quote
    quoting, as pandas does by default). Blank lines are skipped."""
    csv.field_size_limit(2**31 - 1)
    lines = (line for _, line in iter_lines(path, progress, encoding))
    reader = csv.reader(lines, delimiter=delimiter, quotechar='"', doublequote=True, strict=False)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataFormatError(path, reader.line_num, f"cannot parse ({e})") from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        yield reader.line_num, row


def read_header(path: str, rows: Iterator[Tuple[int, List[str]]]) -> List[str]:
    """The first row of :func:`iter_csv`'s ``rows``, stripped; an empty file is a format error."""
    try:
        _, head = next(rows)
    except StopIteration:
        raise DataFormatError(path, 1, "empty file (no header)") from None
    return [h.strip() for h in head]


def parse_json(line: str) -> Any:
    return json.loads(line)


def parse_literal(line: str) -> Any:
    """JSON, or else a Python literal via ast.literal_eval (never eval)."""
    try:
        return json.loads(line)
    except ValueError:
        pass
    return ast.literal_eval(line.strip())


def iter_records(path: str, parser: Callable[[str], Any], bad: BadLines,
                 progress: Optional[bool]) -> Iterator[Tuple[int, dict]]:
    """Yield ``(line_number, object)`` of a file of one JSON object (or Python literal) per line."""
    for lineno, line in iter_lines(path, progress):
        if not line.strip():
            continue
        try:
            rec = parser(line)
        except PARSE_ERRORS as e:
            kind = "a JSON object or a Python literal" if parser is parse_literal else "valid JSON"
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            bad.handle(lineno, f"not {kind} ({type(e).__name__}: {msg}); line starts {_snippet(line)}; "
                               f"it was not executed")
            continue
        if not isinstance(rec, dict):
            bad.handle(lineno, f"expected an object, got {type(rec).__name__}")
            continue
        yield lineno, rec


# --------------------------------------------------------------------------------------------------
# fields of one line (a bad value raises LineError)
# --------------------------------------------------------------------------------------------------
def as_text(value: Any, sep: str = "; ") -> str:
    """Any metadata value as a single string ("" when missing). Lists are joined with ``sep``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if math.isfinite(value) else ""
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = (as_text(v, sep) for v in value)
        return sep.join(p for p in parts if p)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value).strip()


def required(rec: Mapping, key: str) -> Any:
    if key not in rec or rec[key] is None:
        raise LineError(f"missing field {key!r}")
    return rec[key]


def record_id(rec: Mapping, key: str) -> str:
    v = required(rec, key)
    s = str(v).strip() if not isinstance(v, float) else as_text(v)
    if not s:
        raise LineError(f"empty {key!r}")
    return s


def as_float(value: Any, what: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise LineError(f"{what} is not a number: {value!r}") from None
    if not math.isfinite(f):
        raise LineError(f"{what} is not finite: {value!r}")
    return f


def parse_time(value: Any, what: str = "timestamp") -> float:
    """Seconds since the epoch from a number or a date string (naive dates are taken as UTC)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return as_float(value, what)
    s = str(value).strip()
    if not s:
        raise LineError(f"empty {what}")
    try:
        return as_float(s, what)
    except LineError:
        pass
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        try:
            ts = pd.Timestamp(s)
        except (ValueError, TypeError, OverflowError):
            raise LineError(f"{what} is neither a number nor a date: {s!r}") from None
        if ts is pd.NaT or pd.isna(ts):
            raise LineError(f"{what} is neither a number nor a date: {s!r}")
        dt = ts.to_pydatetime()
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
