"""What RecBole would trip over, or silently misread, in an atomic file: found before it loads the file.

RecBole reads ``.inter`` / ``.item`` / ``.user`` with pandas and reports a malformed file as a bare
``KeyError``, ``Length mismatch`` or ``could not convert`` without file or line, or not at all (an id with a
trailing space is a different user; a short line becomes missing values). :func:`check_atomic_file` reads the
file once and stops at the first problem with a :class:`~.lines.DataFormatError` naming file and line:

- a UTF-8 byte-order mark while ``encoding`` is plain ``utf-8`` (the plugin's default, ``utf-8-sig``, reads it);
- a header field that is not ``name:type``, a type RecBole does not have (``token``, ``token_seq``, ``float``,
  ``float_seq``) or a name given twice;
- a line with more or fewer fields than the header;
- a ``float`` value that is not a number (an ISO-8601 date gets its own message: ``llmesr-prepare`` converts
  dates to seconds, RecBole cannot), or an empty timestamp;
- an id (user or item field) that is empty, has surrounding whitespace or reads as missing to pandas (``NA``).

Windows line endings (CRLF) are fine for RecBole and for these readers alike.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from recbole_llmesr.prep.readers.lines import DataFormatError, LineError, iter_csv, parse_time, read_header

FEATURE_TYPES = ("token", "token_seq", "float", "float_seq")
#: pandas' default NA strings: an id spelled like this is read by RecBole as missing.
PANDAS_NA = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})
_BOM = b"\xef\xbb\xbf"
_checked: Dict[Tuple, None] = {}


def parse_header(path: str, row: Sequence[str]) -> List[Tuple[str, str]]:
    """``[(name, type)]`` of an atomic header row; a malformed field, an unknown type or a repeated name is a
    :class:`DataFormatError` on line 1."""
    fields: List[Tuple[str, str]] = []
    first: Dict[str, int] = {}
    for pos, cell in enumerate(row, 1):
        if cell.count(":") != 1 or not cell.split(":")[0].strip():
            hint = (" (the header holds several ':'-typed fields in one: is the file separated by something "
                    "other than a tab? set field_separator)") if cell.count(":") > 1 else ""
            raise DataFormatError(path, 1, f"header field {cell!r} is not 'name:type'{hint}")
        name, ftype = (s.strip() for s in cell.split(":"))
        if ftype not in FEATURE_TYPES:
            raise DataFormatError(path, 1, f"header field {cell!r} has type {ftype!r}; RecBole's types are "
                                           f"{', '.join(FEATURE_TYPES)} (ids are token, numbers and timestamps float)")
        if name in first:
            raise DataFormatError(path, 1, f"header fields {first[name]} and {pos} are both named {name!r}; "
                                           f"rename or remove one")
        first[name] = pos
        fields.append((name, ftype))
    return fields


def check_id(value: str, field: str) -> None:
    """An id RecBole reads as it is written; else :class:`~.lines.LineError`."""
    if not value.strip():
        raise LineError(f"empty {field!r}")
    if value != value.strip():
        raise LineError(f"{field} {value!r} has whitespace around it; RecBole would read it as a different id "
                        f"from {value.strip()!r}: remove the spaces")
    if value in PANDAS_NA:
        raise LineError(f"{field} {value!r} is read by pandas (and so RecBole) as a missing value; rename it")


def _check_number(value: str, field: str, required: bool) -> None:
    if not value.strip():
        if required:
            raise LineError(f"empty {field!r}; RecBole would fill in the column's mean, which moves the interaction "
                            f"to the middle of the user's history")
        return  # pandas reads an empty float as NaN, which RecBole fills in with the column's mean
    try:
        float(value)
        return
    except ValueError:
        pass
    try:
        parse_time(value, field)
    except LineError:
        raise LineError(f"{field} {value!r} is not a number") from None
    raise LineError(f"{field} {value!r} is a date, not a number: RecBole reads float columns as numbers only. "
                    f"Convert the dates to seconds since the epoch, e.g. with `llmesr-prepare --dataset <name> "
                    f"--inter <this file> --out <another folder>`, which reads ISO-8601 dates (those without a time "
                    f"zone as UTC)")


def check_atomic_file(path: "str | os.PathLike[str]", sep: str = "\t", encoding: str = "utf-8",
                      id_fields: Iterable[str] = (), time_field: Optional[str] = None) -> None:
    """Read one atomic file as RecBole will and raise :class:`DataFormatError` at its first problem (see the
    module docstring). A file already checked unchanged (same size and modification time) is not read again."""
    path = os.fspath(path)
    stat = os.stat(path)
    id_fields = tuple(id_fields)
    memo = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, sep, encoding, id_fields, time_field)
    if memo in _checked:
        return
    with open(path, "rb") as f:
        bom = f.read(len(_BOM)) == _BOM
    if bom and encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        raise DataFormatError(path, 1, "the file starts with a UTF-8 byte-order mark, which encoding: utf-8 reads "
                                       "as part of the first field name; set encoding: utf-8-sig (the plugin's "
                                       "default) or remove the mark")
    rows = iter_csv(path, sep, progress=False, encoding=encoding)
    fields = parse_header(path, read_header(path, rows))
    ids = [(i, name) for i, (name, _) in enumerate(fields) if name in id_fields]
    numbers = [(i, name) for i, (name, ftype) in enumerate(fields) if ftype == "float"]
    for lineno, row in rows:
        try:
            if len(row) != len(fields):
                raise LineError(f"expected {len(fields)} {'tab' if sep == chr(9) else repr(sep)}-separated fields, "
                                f"found {len(row)}")
            for i, name in ids:
                check_id(row[i], name)
            for i, name in numbers:
                _check_number(row[i], name, name == time_field)
        except LineError as err:
            raise DataFormatError(path, lineno, str(err)) from None
    _checked[memo] = None
