"""RecBole atomic files: reading ``<name>.inter`` / ``.item`` (or ``.items.jsonl``), and writing them.

Empty text in the written ``.item`` file is the literal :data:`~recbole_llmesr.prep.readers.normal.MISSING_TEXT`
(``"[UNK]"``), mapped back to ``""`` when read; the text layer renders it as ``"unknown"``. Tab, newline, CR
and other line-break characters inside values are replaced by spaces, surrounding whitespace is stripped,
and a value containing a double quote is CSV-quoted (wrapped in double quotes, inner quotes doubled), which
is how pandas (and therefore RecBole) and these readers parse it.
"""
from __future__ import annotations

import csv
import math
import os
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from recbole_llmesr.fileio import atomic_write
from recbole_llmesr.prep.readers.check import PANDAS_NA, parse_header
from recbole_llmesr.prep.readers.lines import (
    BadLines,
    DataFormatError,
    LineError,
    as_float,
    as_text,
    check_file,
    iter_csv,
    iter_records,
    parse_json,
    parse_time,
    read_header,
    record_id,
)
from recbole_llmesr.prep.readers.normal import (
    ITEM,
    MISSING_TEXT,
    RATING,
    TIME,
    USER,
    EmptyDatasetError,
    InterBuilder,
    RawDataset,
    cell_text,
    items_frame,
    normalize,
)

Meta = Dict[str, Dict[str, str]]

# str.splitlines() breaks on all of these; none may survive inside a written cell.
_LINE_BREAKS = re.compile("[\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00]")
_RESERVED_TEXT_COLUMNS = {USER, ITEM, TIME, RATING}
_INTER_SUFFIX = re.compile(r"\.inter(\.gz)?$")


def ml100k_dir() -> str:
    """The ml-100k atomic files shipped inside the recbole wheel."""
    import recbole

    return os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")


def find_data_file(dirname: str, name: str, suffix: str) -> Optional[str]:
    """``<dirname>/<name>.<suffix>``, else its ``.gz``, else None."""
    for cand in (f"{name}.{suffix}", f"{name}.{suffix}.gz"):
        p = os.path.join(dirname, cand)
        if os.path.isfile(p):
            return p
    return None


def inter_stem(filename: str) -> str:
    """The dataset name of a ``<name>.inter[.gz]`` file name."""
    return _INTER_SUFFIX.sub("", filename)


def inter_stems(dirname: str) -> List[str]:
    """The names of the datasets whose ``.inter[.gz]`` file is in ``dirname``, sorted."""
    return sorted({inter_stem(f) for f in os.listdir(dirname) if _INTER_SUFFIX.search(f)})


def _read_atomic_inter(path: str, user_field: str, item_field: str, time_field: str, rating_field: str,
                       on_bad_line: str, progress: Optional[bool]) -> InterBuilder:
    bad = BadLines(on_bad_line, path)
    rows = iter_csv(path, "\t", progress)
    head = read_header(path, rows)
    names = [f for f, _ in parse_header(path, head)]
    for f in (user_field, item_field):
        if f not in names:
            raise DataFormatError(path, 1, f"no {f!r} column in header {head}")
    iu, ii = names.index(user_field), names.index(item_field)
    it = names.index(time_field) if time_field in names else None
    ir = names.index(rating_field) if rating_field in names else None
    if it is None:
        warnings.warn(f"{path}: no {time_field!r} column; the line order is used as the timestamp")
    b = InterBuilder(with_rating=ir is not None)
    padded: List[Tuple[int, str]] = []
    for lineno, row in rows:
        try:
            if len(row) != len(names):
                raise LineError(f"expected {len(names)} tab-separated fields, found {len(row)}")
            u, i = row[iu].strip(), row[ii].strip()
            if not u or not i:
                raise LineError(f"empty {user_field if not u else item_field!r}")
            if u != row[iu] or i != row[ii]:
                padded.append((lineno, row[iu] if u != row[iu] else row[ii]))
            t = parse_time(row[it], time_field) if it is not None else float(lineno)
            r = as_float(row[ir], rating_field) if ir is not None else math.nan
        except LineError as e:
            bad.handle(lineno, str(e))
            continue
        b.add(u, i, t, r)
    bad.finish()
    if padded:
        # Stripping merges 'u1 ' into 'u1'; RecBole, reading the file itself, would keep them apart.
        warnings.warn(f"{path}, line {padded[0][0]}: id {padded[0][1]!r} has whitespace around it; "
                      f"{len(padded)} such lines in all, read with the spaces removed")
    return b


def read_item_file(path: str, item_field: str = ITEM, on_bad_line: str = "raise",
                   progress: Optional[bool] = None) -> Tuple[Meta, List[str]]:
    """``({item_id: {column: text}}, text columns)`` of an atomic ``.item`` file; a repeated id is a bad line."""
    bad = BadLines(on_bad_line, path)
    rows = iter_csv(path, "\t", progress)
    head = read_header(path, rows)
    names = [f for f, _ in parse_header(path, head)]
    if item_field not in names:
        raise DataFormatError(path, 1, f"no {item_field!r} column in header {head}")
    ii = names.index(item_field)
    columns = [n for n in names if n != item_field]
    meta: Meta = {}
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
        meta[iid] = {n: cell_text(v) for n, v in zip(names, row) if n != item_field}
        first_line[iid] = lineno
    bad.finish()
    return meta, columns


def read_items_jsonl(path: str, on_bad_line: str = "raise", progress: Optional[bool] = None,
                     id_key: str = ITEM) -> Tuple[Meta, List[str]]:
    """``({item_id: {column: text}}, text columns)`` of a file of one JSON object per item (lists are joined
    with ``"; "``); a repeated id is a bad line."""
    bad = BadLines(on_bad_line, path)
    meta: Meta = {}
    first_line: Dict[str, int] = {}
    columns: List[str] = []
    seen = set()
    for lineno, rec in iter_records(path, parse_json, bad, progress):
        try:
            iid = record_id(rec, id_key)
        except LineError as e:
            bad.handle(lineno, str(e))
            continue
        if iid in meta:
            bad.handle(lineno, f"duplicate {id_key} {iid!r} (first on line {first_line[iid]})")
            continue
        for k in rec:
            if k != id_key and k not in seen:
                seen.add(k)
                columns.append(k)
        meta[iid] = {k: as_text(v) for k, v in rec.items() if k != id_key}
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
            cands = inter_stems(dirname)
            if len(cands) != 1:
                raise ValueError(f"{dirname}: cannot infer the dataset name, found .inter files for {cands}; "
                                 f"pass name=")
            name = cands[0]
        inter_path = find_data_file(dirname, name, "inter")
        if inter_path is None:
            raise FileNotFoundError(f"{os.path.join(dirname, name + '.inter')}[.gz]: file not found")
    else:
        inter_path = check_file(path_or_dir)
        dirname = os.path.dirname(inter_path) or "."
        name = name or inter_stem(os.path.basename(inter_path))
    if text_source not in ("auto", "item", "jsonl", "none"):
        raise ValueError(f"text_source must be auto, item, jsonl or none; got {text_source!r}")

    b = _read_atomic_inter(inter_path, user_field, item_field, time_field, rating_field, on_bad_line, progress)
    if len(b) == 0:
        raise EmptyDatasetError(f"{inter_path}: no interactions were read")
    meta: Meta = {}
    columns: List[str] = []
    jsonl_path = (find_data_file(dirname, name, "items.jsonl") or find_data_file(dirname, name, "jsonl")) \
        if text_source in ("auto", "jsonl") else None
    if text_source == "jsonl" and jsonl_path is None:
        raise FileNotFoundError(f"{os.path.join(dirname, name + '.items.jsonl')}[.gz]: file not found")
    if jsonl_path is not None:
        meta, columns = read_items_jsonl(jsonl_path, on_bad_line, progress)
    elif text_source in ("auto", "item"):
        item_path = find_data_file(dirname, name, "item")
        if item_path is None and text_source == "item":
            raise FileNotFoundError(f"{os.path.join(dirname, name + '.item')}[.gz]: file not found")
        if item_path is not None:
            meta, columns = read_item_file(item_path, item_field, on_bad_line, progress)
    return normalize(RawDataset(name, b.frame(), items_frame(meta, columns)))


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
    na = sorted(set(values) & PANDAS_NA)
    if na:
        warnings.warn(f"{what}s {na} look like NA to pandas; RecBole will read them as missing")


def _write_rows(path: str, header: List[str], rows) -> None:
    def write(f) -> None:
        f.write("\t".join(header) + "\n")
        writer = csv.writer(f, delimiter="\t", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerows(rows)

    atomic_write(path, write, text=True)


def write_atomic(ds: RawDataset, out_dir: Any) -> Dict[str, Any]:
    """Write ``<out_dir>/<name>.inter`` (``user_id:token item_id:token timestamp:float [rating:float]``) and
    ``<out_dir>/<name>.item`` (``item_id:token`` + one ``<col>:token`` per text column), each atomically
    (:func:`recbole_llmesr.fileio.atomic_write`). Empty text is written as :data:`MISSING_TEXT`. Output is a
    deterministic function of the dataset.

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
