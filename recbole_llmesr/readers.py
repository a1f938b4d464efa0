"""Raw interaction data -> a normalised in-memory form (:class:`RawDataset`) -> RecBole atomic files.

Pipeline::

    ds = read_amazon2014("reviews_Beauty.json.gz", "meta_Beauty.json.gz", "beauty")   # any reader
    ds = apply_filters(ds, min_rating=None, user_k=5, item_k=5, mode="kcore")
    write_atomic(ds, "dataset/beauty")              # beauty.inter + beauty.item
    ds = read_written("dataset/beauty", "beauty")   # later stages load it back

Normal form (every reader and every filter returns it, see :func:`normalize`):

* ``inter``: columns ``user_id`` (str), ``item_id`` (str), ``timestamp`` (float64, seconds) and, when the
  source has one, ``rating`` (float64). Rows are sorted by ``(user_id, timestamp, original file order)``
  with a stable sort, so ties inside one timestamp keep the order of the input file.
* ``items``: ``item_id`` (str) plus text columns (str, ``""`` when missing), one row per item that occurs
  in ``inter`` (items with interactions but no metadata get a row of empty strings), sorted by ``item_id``.

Files may be plain or gzip (``.gz`` suffix, or gzip magic bytes). They are streamed line by line; files
of 32 MiB or more show a tqdm progress bar. Every format error names the file and the line number
(:class:`DataFormatError`).

Bad lines (``on_bad_line``): every reader takes ``on_bad_line="raise"`` (default) or ``"skip"``. With
``"raise"`` the first malformed line raises :class:`DataFormatError` naming file and line; with ``"skip"``
the line is dropped and a :class:`BadLineWarning` naming file and line is issued (the first 20 of them
per file, then one summary warning with the count).

Amazon 2014 metadata lines are Python literals, not JSON. They are parsed with :func:`json.loads` and,
when that fails, :func:`ast.literal_eval`, which only accepts literals: a line such as
``{'asin': 'X', 'title': __import__('os').system('...')}`` is never executed; it is a bad line
(raise by default). ``eval`` is never used anywhere.

Empty text in the written ``.item`` file: RecBole reads atomic files with pandas, which turns an empty
cell into NaN, and NaN token fields silently become ``[PAD]``. So an empty text field is written as the
literal :data:`MISSING_TEXT` (``"[UNK]"``) and mapped back to ``""`` by :func:`read_written` /
:func:`read_atomic`; the text layer (:mod:`recbole_llmesr.text`) renders it as ``"unknown"``.
Tab, newline, CR and other line-break characters inside values are replaced by spaces, surrounding
whitespace is stripped, and a value containing a double quote is CSV-quoted (wrapped in double quotes, inner quotes doubled), which
is how pandas (and therefore RecBole) and this module's readers parse it.
"""
from __future__ import annotations

import ast
import csv
import gzip
import json
import math
import os
import re
import sys
import warnings
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recbole_llmesr.fileio import atomic_write

__all__ = [
    "RawDataset",
    "DataFormatError",
    "EmptyDatasetError",
    "BadLineWarning",
    "MISSING_TEXT",
    "read_atomic",
    "read_beauty_benchmark",
    "read_amazon2014",
    "read_amazon2018",
    "read_amazon2023",
    "read_yelp",
    "read_csv",
    "normalize",
    "dedupe",
    "filter_rating",
    "kcore",
    "single_pass_filter",
    "apply_filters",
    "write_atomic",
    "read_written",
    "ml100k_dir",
]

USER = "user_id"
ITEM = "item_id"
TIME = "timestamp"
RATING = "rating"

#: Written into the ``.item`` file in place of an empty text field (see the module docstring).
MISSING_TEXT = "[UNK]"

#: Files at least this big get a progress bar.
PROGRESS_MIN_BYTES = 32 * 2**20

_MAX_WARNINGS = 20
# str.splitlines() breaks on all of these; none may survive inside a written cell.
_LINE_BREAKS = re.compile("[\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00]")
# pandas' default NA strings: an id spelled like this would be read by RecBole as NaN.
_PANDAS_NA = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
}
_RESERVED_TEXT_COLUMNS = {USER, ITEM, TIME, RATING}


# --------------------------------------------------------------------------------------------------
# data model and errors
# --------------------------------------------------------------------------------------------------
@dataclass
class RawDataset:
    """A dataset in normal form (see the module docstring)."""

    name: str
    inter: pd.DataFrame
    items: pd.DataFrame

    @property
    def text_columns(self) -> List[str]:
        return [c for c in self.items.columns if c != ITEM]

    def counts(self) -> Dict[str, int]:
        return {
            "users": int(self.inter[USER].nunique()),
            "items": int(self.inter[ITEM].nunique()),
            "interactions": int(len(self.inter)),
        }


class DataFormatError(ValueError):
    """A malformed input file; ``path`` and ``line`` (1-based, or None) say where."""

    def __init__(self, path: Any, line: Optional[int], message: str):
        self.path = os.fspath(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class EmptyDatasetError(ValueError):
    """A filter (or a reader) produced no interactions."""


class BadLineWarning(UserWarning):
    """A malformed line was skipped (``on_bad_line="skip"``)."""


class _LineError(Exception):
    """Internal: the current line is bad; the message says why."""


class _BadLines:
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


# --------------------------------------------------------------------------------------------------
# streaming input
# --------------------------------------------------------------------------------------------------
def _check_file(path: Any) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    return path


def _is_gzip(path: str) -> bool:
    if path.endswith(".gz"):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _iter_lines(path: Any, progress: Optional[bool] = None) -> Iterator[Tuple[int, str]]:
    """Yield ``(line_number, text)`` (1-based, line ending removed) of a plain or gzip UTF-8 file."""
    path = _check_file(path)
    size = os.path.getsize(path)
    show = (size >= PROGRESS_MIN_BYTES) if progress is None else progress
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
                    line = bline.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataFormatError(path, lineno, f"not valid UTF-8 ({e})") from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, line.rstrip("\r\n")
        except (EOFError, OSError, zlib.error) as e:
            raise DataFormatError(path, lineno + 1, f"cannot read compressed data ({e})") from None
        if show:
            bar.update(size - done)


def _iter_csv(path: str, delimiter: str, progress: Optional[bool] = None) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(line_number, fields)`` of a delimited file, parsed with the csv module (double-quote
    quoting, as pandas does by default). Blank lines are skipped."""
    csv.field_size_limit(2**31 - 1)
    lines = (line for _, line in _iter_lines(path, progress))
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


def _parse_json(line: str) -> Any:
    return json.loads(line)


def _parse_literal(line: str) -> Any:
    """JSON, or else a Python literal via ast.literal_eval (never eval)."""
    try:
        return json.loads(line)
    except ValueError:
        pass
    return ast.literal_eval(line.strip())


_PARSE_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


def _iter_records(path: str, parser: Callable[[str], Any], bad: _BadLines,
                  progress: Optional[bool]) -> Iterator[Tuple[int, dict]]:
    for lineno, line in _iter_lines(path, progress):
        if not line.strip():
            continue
        try:
            rec = parser(line)
        except _PARSE_ERRORS as e:
            kind = "a JSON object or a Python literal" if parser is _parse_literal else "valid JSON"
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            bad.handle(lineno, f"not {kind} ({type(e).__name__}: {msg}); line starts {_snippet(line)}; "
                               f"it was not executed")
            continue
        if not isinstance(rec, dict):
            bad.handle(lineno, f"expected an object, got {type(rec).__name__}")
            continue
        yield lineno, rec


# --------------------------------------------------------------------------------------------------
# value conversion
# --------------------------------------------------------------------------------------------------
def _text(value: Any, sep: str = "; ") -> str:
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
        parts = (_text(v, sep) for v in value)
        return sep.join(p for p in parts if p)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value).strip()


def _cell(value: Any) -> str:
    """A text cell of the normal form: str, "" for missing (None / NaN / MISSING_TEXT)."""
    if isinstance(value, str):
        s = value.strip()
        return "" if s == MISSING_TEXT else s
    return _text(value)


def _req(rec: Mapping, key: str) -> Any:
    if key not in rec or rec[key] is None:
        raise _LineError(f"missing field {key!r}")
    return rec[key]


def _id(rec: Mapping, key: str) -> str:
    v = _req(rec, key)
    s = str(v).strip() if not isinstance(v, float) else _text(v)
    if not s:
        raise _LineError(f"empty {key!r}")
    return s


def _float(value: Any, what: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise _LineError(f"{what} is not a number: {value!r}") from None
    if not math.isfinite(f):
        raise _LineError(f"{what} is not finite: {value!r}")
    return f


def _parse_time(value: Any, what: str = "timestamp") -> float:
    """Seconds since the epoch from a number or a date string (naive dates are taken as UTC)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return _float(value, what)
    s = str(value).strip()
    if not s:
        raise _LineError(f"empty {what}")
    try:
        return _float(s, what)
    except _LineError:
        pass
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        try:
            ts = pd.Timestamp(s)
        except (ValueError, TypeError, OverflowError):
            raise _LineError(f"{what} is neither a number nor a date: {s!r}") from None
        if ts is pd.NaT or pd.isna(ts):
            raise _LineError(f"{what} is neither a number nor a date: {s!r}")
        dt = ts.to_pydatetime()
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class _InterBuilder:
    def __init__(self, with_rating: bool):
        self.with_rating = with_rating
        self.users: List[str] = []
        self.items: List[str] = []
        self.times: List[float] = []
        self.ratings: List[float] = []

    def add(self, user: str, item: str, time: float, rating: float = math.nan) -> None:
        self.users.append(user)
        self.items.append(item)
        self.times.append(time)
        if self.with_rating:
            self.ratings.append(rating)

    def __len__(self) -> int:
        return len(self.users)

    def frame(self) -> pd.DataFrame:
        data = {
            USER: pd.Series(self.users, dtype=object),
            ITEM: pd.Series(self.items, dtype=object),
            TIME: np.asarray(self.times, dtype=np.float64),
        }
        if self.with_rating:
            data[RATING] = np.asarray(self.ratings, dtype=np.float64)
        return pd.DataFrame(data)


def _items_frame(meta: Mapping[str, Mapping[str, str]], columns: Sequence[str]) -> pd.DataFrame:
    ids = list(meta)
    data: Dict[str, Any] = {ITEM: pd.Series(ids, dtype=object)}
    for c in columns:
        data[c] = pd.Series([meta[i].get(c, "") for i in ids], dtype=object)
    return pd.DataFrame(data)


def _finish(name: str, builder: _InterBuilder, source: str, meta: Mapping[str, Mapping[str, str]],
            columns: Sequence[str]) -> RawDataset:
    if len(builder) == 0:
        raise EmptyDatasetError(f"{source}: no interactions were read")
    return normalize(RawDataset(name, builder.frame(), _items_frame(meta, columns)))


# --------------------------------------------------------------------------------------------------
# normal form
# --------------------------------------------------------------------------------------------------
def normalize(ds: RawDataset) -> RawDataset:
    """Bring a dataset into normal form (idempotent): dtypes, stable sort of the interactions by
    ``(user_id, timestamp, current row order)``, items restricted to the interacted ones, a row of empty
    strings for interacted items without metadata, items sorted by ``item_id``."""
    inter = ds.inter
    for col in (USER, ITEM, TIME):
        if col not in inter.columns:
            raise ValueError(f"dataset {ds.name!r}: interactions lack column {col!r} "
                             f"(have {list(inter.columns)})")
    cols = [USER, ITEM, TIME] + ([RATING] if RATING in inter.columns else [])
    inter = pd.DataFrame({
        USER: inter[USER].astype(str).to_numpy(dtype=object),
        ITEM: inter[ITEM].astype(str).to_numpy(dtype=object),
        TIME: inter[TIME].to_numpy(dtype=np.float64),
        **({RATING: inter[RATING].to_numpy(dtype=np.float64)} if RATING in cols else {}),
        "_order": np.arange(len(inter), dtype=np.int64),
    })
    inter = inter.sort_values([USER, TIME, "_order"], kind="mergesort").drop(columns="_order")
    inter = inter.reset_index(drop=True)

    items = ds.items if ds.items is not None else pd.DataFrame({ITEM: []})
    if ITEM not in items.columns:
        raise ValueError(f"dataset {ds.name!r}: items table lacks column {ITEM!r} (have {list(items.columns)})")
    text_cols = [c for c in items.columns if c != ITEM]
    items = items.assign(**{ITEM: items[ITEM].astype(str)}).drop_duplicates(ITEM, keep="first")
    present = pd.unique(inter[ITEM].to_numpy())
    items = items[items[ITEM].isin(present)]
    have = set(items[ITEM].tolist())
    missing = [str(x) for x in present if x not in have]
    if len(missing):
        filler = pd.DataFrame({ITEM: pd.Series(missing, dtype=object),
                               **{c: pd.Series([""] * len(missing), dtype=object) for c in text_cols}})
        items = pd.concat([items, filler], ignore_index=True) if len(items) else filler
    out = {ITEM: items[ITEM].to_numpy(dtype=object)}
    for c in text_cols:
        out[c] = np.array([_cell(v) for v in items[c].tolist()], dtype=object)
    items = pd.DataFrame(out, columns=[ITEM] + text_cols)
    items = items.sort_values(ITEM, kind="mergesort").reset_index(drop=True)
    return RawDataset(ds.name, inter, items)


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------
def ml100k_dir() -> str:
    """The ml-100k atomic files shipped inside the recbole wheel."""
    import recbole

    return os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")


def _find(dirname: str, name: str, suffix: str) -> Optional[str]:
    for cand in (f"{name}.{suffix}", f"{name}.{suffix}.gz"):
        p = os.path.join(dirname, cand)
        if os.path.isfile(p):
            return p
    return None


def _atomic_header(path: str, row: List[str]) -> List[Tuple[str, str]]:
    fields = []
    for cell in row:
        if ":" not in cell:
            raise DataFormatError(path, 1, f"header field {cell!r} is not 'name:type'")
        fname, ftype = cell.rsplit(":", 1)
        fields.append((fname.strip(), ftype.strip()))
    return fields


def _read_atomic_inter(path: str, name: str, user_field: str, item_field: str, time_field: str,
                       rating_field: str, on_bad_line: str, progress: Optional[bool]) -> _InterBuilder:
    bad = _BadLines(on_bad_line, path)
    rows = _iter_csv(path, "\t", progress)
    try:
        _, head = next(rows)
    except StopIteration:
        raise DataFormatError(path, 1, "empty file (no header)") from None
    header = _atomic_header(path, head)
    names = [f for f, _ in header]
    for f in (user_field, item_field):
        if f not in names:
            raise DataFormatError(path, 1, f"no {f!r} column in header {head}")
    iu, ii = names.index(user_field), names.index(item_field)
    it = names.index(time_field) if time_field in names else None
    ir = names.index(rating_field) if rating_field in names else None
    if it is None:
        warnings.warn(f"{path}: no {time_field!r} column; the line order is used as the timestamp")
    b = _InterBuilder(with_rating=ir is not None)
    for lineno, row in rows:
        try:
            if len(row) != len(names):
                raise _LineError(f"expected {len(names)} tab-separated fields, found {len(row)}")
            u, i = row[iu].strip(), row[ii].strip()
            if not u or not i:
                raise _LineError(f"empty {user_field if not u else item_field!r}")
            t = _parse_time(row[it], time_field) if it is not None else float(lineno)
            r = _float(row[ir], rating_field) if ir is not None else math.nan
        except _LineError as e:
            bad.handle(lineno, str(e))
            continue
        b.add(u, i, t, r)
    bad.finish()
    return b


def _read_atomic_item(path: str, item_field: str, on_bad_line: str,
                      progress: Optional[bool]) -> Tuple[Dict[str, Dict[str, str]], List[str]]:
    bad = _BadLines(on_bad_line, path)
    rows = _iter_csv(path, "\t", progress)
    try:
        _, head = next(rows)
    except StopIteration:
        raise DataFormatError(path, 1, "empty file (no header)") from None
    names = [f for f, _ in _atomic_header(path, head)]
    if item_field not in names:
        raise DataFormatError(path, 1, f"no {item_field!r} column in header {head}")
    ii = names.index(item_field)
    columns = [n for n in names if n != item_field]
    meta: Dict[str, Dict[str, str]] = {}
    first_line: Dict[str, int] = {}
    for lineno, row in rows:
        if len(row) != len(names):
            bad.handle(lineno, f"expected {len(names)} tab-separated fields, found {len(row)}")
            continue
        iid = row[ii].strip()
        if not iid:
            bad.handle(lineno, f"empty {item_field!r}")
            continue
        if iid in meta:
            # Which of two texts is the item's is a guess either way: a bad line (skip keeps the first).
            bad.handle(lineno, f"duplicate {item_field} {iid!r} (first on line {first_line[iid]})")
            continue
        meta[iid] = {n: _cell(v) for n, v in zip(names, row) if n != item_field}
        first_line[iid] = lineno
    bad.finish()
    return meta, columns


def _read_items_jsonl(path: str, on_bad_line: str, progress: Optional[bool],
                      id_key: str = ITEM) -> Tuple[Dict[str, Dict[str, str]], List[str]]:
    bad = _BadLines(on_bad_line, path)
    meta: Dict[str, Dict[str, str]] = {}
    first_line: Dict[str, int] = {}
    columns: List[str] = []
    seen = set()
    for lineno, rec in _iter_records(path, _parse_json, bad, progress):
        try:
            iid = _id(rec, id_key)
        except _LineError as e:
            bad.handle(lineno, str(e))
            continue
        if iid in meta:
            bad.handle(lineno, f"duplicate {id_key} {iid!r} (first on line {first_line[iid]})")
            continue
        for k in rec:
            if k != id_key and k not in seen:
                seen.add(k)
                columns.append(k)
        meta[iid] = {k: _text(v) for k, v in rec.items() if k != id_key}
        first_line[iid] = lineno
    bad.finish()
    return meta, columns


def read_atomic(path_or_dir: Any = None, name: Optional[str] = None, *, text_source: str = "auto",
                user_field: str = USER, item_field: str = ITEM, time_field: str = TIME,
                rating_field: str = RATING, on_bad_line: str = "raise",
                progress: Optional[bool] = None) -> RawDataset:
    """Read RecBole atomic files ``<name>.inter`` (+ ``<name>.item``), plain or ``.gz``.

    ``path_or_dir`` is a directory or the ``.inter`` file itself. With no path and ``name="ml-100k"`` the
    copy inside the recbole wheel is used. With a directory and no name, the directory must hold exactly
    one ``*.inter`` file. Extra ``.inter`` columns are ignored; without a timestamp column the line number
    is used. Every ``.item`` column except ``item_id`` becomes a text column (header types are dropped;
    ``token_seq`` values stay space-joined strings; ``[UNK]`` reads as "").

    ``text_source``: ``"auto"`` uses ``<name>.items.jsonl[.gz]`` when present (one JSON object per line
    with ``item_id``; lists are joined with ``"; "``) and otherwise ``<name>.item``; ``"item"`` /
    ``"jsonl"`` force one; ``"none"`` reads no item text. A missing item file means no text columns. An item
id repeated in the item file is a bad line (``on_bad_line="skip"`` keeps its first line).
    """
    if path_or_dir is None:
        if name != "ml-100k":
            raise ValueError("read_atomic: a path is required (only name='ml-100k' has a built-in default)")
        path_or_dir = ml100k_dir()
    path_or_dir = os.fspath(path_or_dir)
    if os.path.isdir(path_or_dir):
        dirname = path_or_dir
        if name is None:
            cands = sorted({re.sub(r"\.inter(\.gz)?$", "", f) for f in os.listdir(dirname)
                            if re.search(r"\.inter(\.gz)?$", f)})
            if len(cands) != 1:
                raise ValueError(f"{dirname}: cannot infer the dataset name, found .inter files for {cands}; "
                                 f"pass name=")
            name = cands[0]
        inter_path = _find(dirname, name, "inter")
        if inter_path is None:
            raise FileNotFoundError(f"{os.path.join(dirname, name + '.inter')}[.gz]: file not found")
    else:
        inter_path = _check_file(path_or_dir)
        dirname = os.path.dirname(inter_path) or "."
        base = re.sub(r"\.inter(\.gz)?$", "", os.path.basename(inter_path))
        name = name or base
    if text_source not in ("auto", "item", "jsonl", "none"):
        raise ValueError(f"text_source must be auto, item, jsonl or none; got {text_source!r}")

    b = _read_atomic_inter(inter_path, name, user_field, item_field, time_field, rating_field,
                           on_bad_line, progress)
    if len(b) == 0:
        raise EmptyDatasetError(f"{inter_path}: no interactions were read")
    meta: Dict[str, Dict[str, str]] = {}
    columns: List[str] = []
    jsonl_path = (_find(dirname, name, "items.jsonl") or _find(dirname, name, "jsonl")) \
        if text_source in ("auto", "jsonl") else None
    if text_source == "jsonl" and jsonl_path is None:
        raise FileNotFoundError(f"{os.path.join(dirname, name + '.items.jsonl')}[.gz]: file not found")
    if jsonl_path is not None:
        meta, columns = _read_items_jsonl(jsonl_path, on_bad_line, progress)
    elif text_source in ("auto", "item"):
        item_path = _find(dirname, name, "item")
        if item_path is None and text_source == "item":
            raise FileNotFoundError(f"{os.path.join(dirname, name + '.item')}[.gz]: file not found")
        if item_path is not None:
            meta, columns = _read_atomic_item(item_path, item_field, on_bad_line, progress)
    return normalize(RawDataset(name, b.frame(), _items_frame(meta, columns)))


def read_beauty_benchmark(dirname: Any, name: str = "amazon_beauty_5core", **kwargs) -> RawDataset:
    """The Amazon Beauty 2014 5-core benchmark copy (``<name>.inter.gz`` + ``<name>.items.jsonl.gz``).

    Same as :func:`read_atomic`, plus empty ``price`` and ``description`` columns: that copy has neither,
    and adding them lets the paper's ``beauty`` template render them as "unknown" (as the paper does for
    missing fields) instead of failing on an unknown field.
    """
    ds = read_atomic(dirname, name, **kwargs)
    items = ds.items.copy()
    for col in ("title", "brand", "price", "categories", "description"):
        if col not in items.columns:
            items[col] = ""
    return RawDataset(ds.name, ds.inter, items)


def _read_reviews(path: str, parser: Callable[[str], Any], user_key: str, item_key: str, rating_key: str,
                  time_fn: Callable[[Mapping], float], on_bad_line: str,
                  progress: Optional[bool]) -> _InterBuilder:
    bad = _BadLines(on_bad_line, path)
    b = _InterBuilder(with_rating=True)
    for lineno, rec in _iter_records(path, parser, bad, progress):
        try:
            u = _id(rec, user_key)
            i = _id(rec, item_key)
            t = time_fn(rec)
            r = _float(rec[rating_key], rating_key) if rec.get(rating_key) is not None else math.nan
        except _LineError as e:
            bad.handle(lineno, str(e))
            continue
        b.add(u, i, t, r)
    bad.finish()
    return b


def _read_meta(path: str, parser: Callable[[str], Any], id_key: str, extract: Callable[[Mapping], Dict[str, str]],
               keep: set, on_bad_line: str, progress: Optional[bool]) -> Dict[str, Dict[str, str]]:
    """Metadata of the items in ``keep``; the first line of an item wins."""
    bad = _BadLines(on_bad_line, path)
    meta: Dict[str, Dict[str, str]] = {}
    for lineno, rec in _iter_records(path, parser, bad, progress):
        try:
            iid = _id(rec, id_key)
            if iid not in keep or iid in meta:
                continue
            meta[iid] = extract(rec)
        except _LineError as e:
            bad.handle(lineno, str(e))
    bad.finish()
    return meta


def _unix_time(key: str, scale: float = 1.0) -> Callable[[Mapping], float]:
    def fn(rec: Mapping) -> float:
        return _parse_time(_req(rec, key), key) * scale
    return fn


_AMAZON_COLUMNS = ["title", "brand", "price", "categories", "description"]


def _first_category_path(cats: Any) -> str:
    # 2014: a list of category paths (lists); the paper's text uses the first path, joined with "; ".
    if isinstance(cats, (list, tuple)) and cats and isinstance(cats[0], (list, tuple)):
        return _text(cats[0])
    return _text(cats)


def read_amazon2014(reviews_path: Any, meta_path: Any, name: str, *, on_bad_line: str = "raise",
                    progress: Optional[bool] = None) -> RawDataset:
    """Amazon reviews 2014 (McAuley): ``reviews_*.json.gz`` (JSON lines: reviewerID, asin, overall,
    unixReviewTime) and ``meta_*.json.gz`` (one Python literal per line, parsed safely with
    ``ast.literal_eval``; never executed). Text columns: title, brand, price, categories (the first
    category path, ``"; "``-joined, as in the paper), description.

    A metadata line that is not a literal (e.g. ``__import__('os').system(...)``) raises
    :class:`DataFormatError` naming file and line, or with ``on_bad_line="skip"`` is skipped with a
    :class:`BadLineWarning` naming file and line.
    """
    rp, mp = _check_file(reviews_path), _check_file(meta_path)
    b = _read_reviews(rp, _parse_literal, "reviewerID", "asin", "overall", _unix_time("unixReviewTime"),
                      on_bad_line, progress)

    def extract(rec: Mapping) -> Dict[str, str]:
        return {
            "title": _text(rec.get("title")),
            "brand": _text(rec.get("brand")),
            "price": _text(rec.get("price")),
            "categories": _first_category_path(rec.get("categories")),
            "description": _text(rec.get("description"), sep=" "),
        }

    meta = _read_meta(mp, _parse_literal, "asin", extract, set(b.items), on_bad_line, progress)
    return _finish(name, b, rp, meta, _AMAZON_COLUMNS)


def read_amazon2018(reviews_path: Any, meta_path: Any, name: str, *, on_bad_line: str = "raise",
                    progress: Optional[bool] = None) -> RawDataset:
    """Amazon reviews 2018 (Ni et al.): JSON lines. Reviews: reviewerID, asin, overall, unixReviewTime.
    Meta: title, brand, price, category (list -> ``categories``, ``"; "``-joined), description (list or
    str, space-joined), feature (list -> ``features``, ``"; "``-joined)."""
    rp, mp = _check_file(reviews_path), _check_file(meta_path)
    b = _read_reviews(rp, _parse_json, "reviewerID", "asin", "overall", _unix_time("unixReviewTime"),
                      on_bad_line, progress)

    def extract(rec: Mapping) -> Dict[str, str]:
        return {
            "title": _text(rec.get("title")),
            "brand": _text(rec.get("brand")),
            "price": _text(rec.get("price")),
            "categories": _text(rec.get("category")),
            "description": _text(rec.get("description"), sep=" "),
            "features": _text(rec.get("feature")),
        }

    meta = _read_meta(mp, _parse_json, "asin", extract, set(b.items), on_bad_line, progress)
    return _finish(name, b, rp, meta, _AMAZON_COLUMNS + ["features"])


def read_amazon2023(reviews_path: Any, meta_path: Any, name: str, *, on_bad_line: str = "raise",
                    progress: Optional[bool] = None) -> RawDataset:
    """Amazon reviews 2023 (Hou et al.): JSONL. Reviews: user_id, parent_asin (the item id), rating,
    timestamp (milliseconds; converted to seconds). Meta: parent_asin, title, store (-> ``brand``),
    price, categories (``"; "``-joined), features (``"; "``-joined), description (space-joined),
    main_category."""
    rp, mp = _check_file(reviews_path), _check_file(meta_path)
    b = _read_reviews(rp, _parse_json, "user_id", "parent_asin", "rating", _unix_time("timestamp", 1e-3),
                      on_bad_line, progress)

    def extract(rec: Mapping) -> Dict[str, str]:
        price = _text(rec.get("price"))
        return {
            "title": _text(rec.get("title")),
            "brand": _text(rec.get("store")),
            "price": "" if price in ("None", "none", "null") else price,
            "categories": _text(rec.get("categories")),
            "description": _text(rec.get("description"), sep=" "),
            "features": _text(rec.get("features")),
            "main_category": _text(rec.get("main_category")),
        }

    meta = _read_meta(mp, _parse_json, "parent_asin", extract, set(b.items), on_bad_line, progress)
    return _finish(name, b, rp, meta, _AMAZON_COLUMNS + ["features", "main_category"])


def read_yelp(business_path: Any, review_path: Any, name: str, *, on_bad_line: str = "raise",
              progress: Optional[bool] = None) -> RawDataset:
    """Yelp Open Dataset. ``review.json``: user_id, business_id, stars (-> ``rating``), date
    ("YYYY-MM-DD HH:MM:SS", taken as UTC). ``business.json``: name, city, categories (comma string ->
    ``"; "``-joined), stars, review_count become text columns."""
    bp, rp = _check_file(business_path), _check_file(review_path)
    b = _read_reviews(rp, _parse_json, "user_id", "business_id", "stars", _unix_time("date"),
                      on_bad_line, progress)

    def extract(rec: Mapping) -> Dict[str, str]:
        cats = rec.get("categories")
        if isinstance(cats, str):
            cats = [c.strip() for c in cats.split(",")]
        return {
            "name": _text(rec.get("name")),
            "city": _text(rec.get("city")),
            "categories": _text(cats),
            "stars": _text(rec.get("stars")),
            "review_count": _text(rec.get("review_count")),
        }

    meta = _read_meta(bp, _parse_json, "business_id", extract, set(b.items), on_bad_line, progress)
    return _finish(name, b, rp, meta, ["name", "city", "categories", "stars", "review_count"])


def _csv_header(path: str, rows: Iterator[Tuple[int, List[str]]]) -> List[str]:
    try:
        _, head = next(rows)
    except StopIteration:
        raise DataFormatError(path, 1, "empty file (no header)") from None
    return [h.strip() for h in head]


def read_csv(path: Any, name: str, columns: Mapping[str, str], sep: str = ",", item_path: Any = None,
             item_columns: Optional[Mapping[str, str]] = None, *, item_sep: Optional[str] = None,
             on_bad_line: str = "raise", progress: Optional[bool] = None) -> RawDataset:
    """Generic delimited file with a header row (csv-module quoting).

    ``columns`` maps ``user_id``, ``item_id``, ``timestamp`` and optionally ``rating`` to header names.
    Timestamps may be numbers (seconds) or dates (ISO or anything pandas parses; naive = UTC).
    ``item_path`` (same ``sep`` unless ``item_sep``) is an optional item file; ``item_columns`` maps
    ``item_id`` and each output text column to its header name. Without ``item_columns`` the item file's
    column named ``columns["item_id"]`` is the id and every other column is a text column.
    """
    path = _check_file(path)
    unknown = set(columns) - {USER, ITEM, TIME, RATING}
    missing = {USER, ITEM, TIME} - set(columns)
    if unknown or missing:
        raise ValueError(f"read_csv: columns must map user_id, item_id, timestamp [, rating]; "
                         f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    bad = _BadLines(on_bad_line, path)
    rows = _iter_csv(path, sep, progress)
    head = _csv_header(path, rows)
    idx = {}
    for key, col in columns.items():
        if col not in head:
            raise DataFormatError(path, 1, f"column {col!r} (for {key}) is not in the header {head}")
        idx[key] = head.index(col)
    b = _InterBuilder(with_rating=RATING in idx)
    for lineno, row in rows:
        try:
            if len(row) != len(head):
                raise _LineError(f"expected {len(head)} fields, found {len(row)}")
            u, i = row[idx[USER]].strip(), row[idx[ITEM]].strip()
            if not u or not i:
                raise _LineError(f"empty {columns[USER] if not u else columns[ITEM]!r}")
            t = _parse_time(row[idx[TIME]], columns[TIME])
            r = _float(row[idx[RATING]], columns[RATING]) if RATING in idx else math.nan
        except _LineError as e:
            bad.handle(lineno, str(e))
            continue
        b.add(u, i, t, r)
    bad.finish()

    meta: Dict[str, Dict[str, str]] = {}
    text_cols: List[str] = []
    if item_path is not None:
        ipath = _check_file(item_path)
        ibad = _BadLines(on_bad_line, ipath)
        irows = _iter_csv(ipath, item_sep or sep, progress)
        ihead = _csv_header(ipath, irows)
        mapping = dict(item_columns) if item_columns is not None else \
            {ITEM: columns[ITEM], **{h: h for h in ihead if h != columns[ITEM]}}
        if ITEM not in mapping:
            raise ValueError("read_csv: item_columns must map 'item_id'")
        for key, col in mapping.items():
            if col not in ihead:
                raise DataFormatError(ipath, 1, f"column {col!r} (for {key}) is not in the header {ihead}")
        text_cols = [k for k in mapping if k != ITEM]
        iid_idx = ihead.index(mapping[ITEM])
        col_idx = {k: ihead.index(mapping[k]) for k in text_cols}
        for lineno, row in irows:
            if len(row) != len(ihead):
                ibad.handle(lineno, f"expected {len(ihead)} fields, found {len(row)}")
                continue
            iid = row[iid_idx].strip()
            if not iid:
                ibad.handle(lineno, f"empty {mapping[ITEM]!r}")
                continue
            if iid not in meta:
                meta[iid] = {k: _cell(row[j]) for k, j in col_idx.items()}
        ibad.finish()
    return _finish(name, b, path, meta, text_cols)


# --------------------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------------------
def _describe(inter: pd.DataFrame) -> str:
    return (f"{len(inter)} interactions, {inter[USER].nunique()} users, {inter[ITEM].nunique()} items")


def _subset(ds: RawDataset, keep: np.ndarray, what: str) -> RawDataset:
    if not keep.any():
        raise EmptyDatasetError(f"dataset {ds.name!r}: {what} removed every interaction "
                                f"(before: {_describe(ds.inter)})")
    return normalize(RawDataset(ds.name, ds.inter[keep].reset_index(drop=True), ds.items))


def dedupe(ds: RawDataset) -> RawDataset:
    """Drop exact duplicate ``(user_id, item_id, timestamp)`` rows, keeping the first."""
    ds = normalize(ds)
    keep = ~ds.inter.duplicated([USER, ITEM, TIME], keep="first").to_numpy()
    return _subset(ds, keep, "dedupe")


def filter_rating(ds: RawDataset, min_rating: float) -> RawDataset:
    """Keep interactions with ``rating >= min_rating`` (missing ratings are dropped)."""
    if RATING not in ds.inter.columns:
        raise ValueError(f"dataset {ds.name!r}: filter_rating needs a rating column, the data has none")
    ds = normalize(ds)
    keep = (ds.inter[RATING].to_numpy() >= float(min_rating))
    return _subset(ds, keep, f"filter_rating(min_rating={min_rating})")


def _codes(ds: RawDataset) -> Tuple[np.ndarray, np.ndarray]:
    u = pd.factorize(ds.inter[USER])[0]
    i = pd.factorize(ds.inter[ITEM])[0]
    return u, i


def kcore(ds: RawDataset, user_k: int = 5, item_k: int = 5) -> RawDataset:
    """Iterative k-core: repeatedly drop interactions of users with fewer than ``user_k`` and items
    with fewer than ``item_k`` interactions (rows are counted) until nothing changes. The result is the
    unique largest subset in which every user has >= user_k and every item >= item_k interactions."""
    ds = normalize(ds)
    u, i = _codes(ds)
    keep = np.ones(len(u), dtype=bool)
    while True:
        uc = np.bincount(u[keep], minlength=u.max() + 1 if len(u) else 0)
        ic = np.bincount(i[keep], minlength=i.max() + 1 if len(i) else 0)
        new = keep & (uc[u] >= user_k) & (ic[i] >= item_k)
        if np.array_equal(new, keep):
            break
        keep = new
    return _subset(ds, keep, f"kcore(user_k={user_k}, item_k={item_k})")


def single_pass_filter(ds: RawDataset, user_k: int = 3, item_k: int = 3,
                       min_user_len: Optional[int] = None) -> RawDataset:
    """The LLM-ESR paper's filter (``filter_common`` in the official ``data/data_process.py``): ONE pass
    that keeps the interactions whose user has >= ``user_k`` and whose item has >= ``item_k`` interactions
    in the *input*; not iterated, so the result may violate the thresholds. The official script then
    drops users with fewer than 3 remaining interactions (``filter_minmum``); pass ``min_user_len=3`` for
    that second step (default: not applied)."""
    ds = normalize(ds)
    u, i = _codes(ds)
    uc, ic = np.bincount(u), np.bincount(i)
    keep = (uc[u] >= user_k) & (ic[i] >= item_k)
    out = _subset(ds, keep, f"single_pass_filter(user_k={user_k}, item_k={item_k})")
    if min_user_len:
        u2, _ = _codes(out)
        keep2 = np.bincount(u2)[u2] >= min_user_len
        out = _subset(out, keep2, f"single_pass_filter min_user_len={min_user_len}")
    return out


def apply_filters(ds: RawDataset, *, min_rating: Optional[float] = None, user_k: int = 0, item_k: int = 0,
                  mode: str = "kcore", drop_duplicates: bool = True,
                  min_user_len: Optional[int] = None) -> RawDataset:
    """dedupe -> filter_rating (when ``min_rating`` is set) -> ``kcore`` / ``single_pass`` / ``none``."""
    if mode not in ("kcore", "single_pass", "none"):
        raise ValueError(f"mode must be 'kcore', 'single_pass' or 'none', got {mode!r}")
    ds = dedupe(ds) if drop_duplicates else normalize(ds)
    if min_rating is not None:
        ds = filter_rating(ds, min_rating)
    if mode == "kcore" and (user_k > 1 or item_k > 1):
        ds = kcore(ds, user_k, item_k)
    elif mode == "single_pass":
        ds = single_pass_filter(ds, user_k, item_k, min_user_len)
    return ds


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def _fmt_float(x: float) -> str:
    if not math.isfinite(x):
        raise ValueError(f"cannot write a non-finite number: {x!r}")
    if x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    return repr(float(x))


def _clean_text(v: str) -> str:
    s = _LINE_BREAKS.sub(" ", v).strip()
    return s if s else MISSING_TEXT


def _check_ids(values: Sequence[str], what: str) -> None:
    for v in values:
        if not v or _LINE_BREAKS.search(v) or v != v.strip():
            raise ValueError(f"cannot write {what} {v!r}: ids must be non-empty, without surrounding "
                             f"whitespace, tabs or line breaks")
    na = sorted(set(values) & _PANDAS_NA)
    if na:
        warnings.warn(f"{what}s {na} look like NA to pandas; RecBole will read them as missing")


def _write_rows(path: str, header: List[str], rows) -> None:
    def write(f) -> None:
        f.write("\t".join(header) + "\n")
        csv.writer(f, delimiter="\t", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n").writerows(rows)

    atomic_write(path, write, text=True)


def write_atomic(ds: RawDataset, out_dir: Any) -> Dict[str, Any]:
    """Write ``<out_dir>/<name>.inter`` (``user_id:token item_id:token timestamp:float [rating:float]``) and
    ``<out_dir>/<name>.item`` (``item_id:token`` + one ``<col>:token`` per text column), each atomically
    (temporary file in the same directory, then ``os.replace``). Empty text is written as
    :data:`MISSING_TEXT`. Output is a deterministic function of the dataset.

    Returns ``{"users", "items", "interactions", "inter_path", "item_path"}``.
    """
    ds = normalize(ds)
    name = ds.name
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name.startswith("."):
        raise ValueError(f"invalid dataset name {name!r}")
    text_cols = ds.text_columns
    for c in text_cols:
        if not c or not re.fullmatch(r"[^\s:]+", c) or c in _RESERVED_TEXT_COLUMNS:
            raise ValueError(f"cannot write item column {c!r}: names must be non-empty, without spaces or "
                             f"':', and not one of {sorted(_RESERVED_TEXT_COLUMNS)}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    inter, items = ds.inter, ds.items
    users = inter[USER].tolist()
    iids = inter[ITEM].tolist()
    _check_ids(sorted(set(users)), "user id")
    _check_ids(items[ITEM].tolist(), "item id")
    times = [_fmt_float(t) for t in inter[TIME].tolist()]
    cols = [users, iids, times]
    header = [f"{USER}:token", f"{ITEM}:token", f"{TIME}:float"]
    if RATING in inter.columns:
        ratings = inter[RATING].to_numpy(dtype=np.float64)
        if np.isnan(ratings).any():
            raise ValueError(f"dataset {name!r}: some ratings are missing; drop the rating column or "
                             f"filter those rows before writing")
        cols.append([_fmt_float(r) for r in ratings.tolist()])
        header.append(f"{RATING}:float")
    inter_path = os.path.join(out_dir, f"{name}.inter")
    item_path = os.path.join(out_dir, f"{name}.item")
    item_rows = zip(items[ITEM].tolist(), *[[_clean_text(v) for v in items[c].tolist()] for c in text_cols])
    _write_rows(item_path, [f"{ITEM}:token"] + [f"{c}:token" for c in text_cols], item_rows)
    _write_rows(inter_path, header, zip(*cols))
    return {**ds.counts(), "inter_path": inter_path, "item_path": item_path}


def read_written(out_dir: Any, name: str, *, progress: Optional[bool] = None) -> RawDataset:
    """Load back what :func:`write_atomic` wrote (``[UNK]`` text reads as "")."""
    out_dir = os.fspath(out_dir)
    for suffix in ("inter", "item"):
        p = os.path.join(out_dir, f"{name}.{suffix}")
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: file not found (was write_atomic run for {name!r}?)")
    return read_atomic(os.path.join(out_dir, f"{name}.inter"), name, text_source="item", progress=progress)
