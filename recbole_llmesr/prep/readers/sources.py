"""Readers of raw public datasets: the Beauty benchmark copy, Amazon reviews 2014/2018/2023, Yelp, CSV.

Amazon 2014 metadata lines are Python literals, not JSON. They are parsed with :func:`json.loads` and,
when that fails, :func:`ast.literal_eval`, which only accepts literals: a line such as
``{'asin': 'X', 'title': __import__('os').system('...')}`` is never executed; it is a bad line
(raise by default). ``eval`` is never used anywhere.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from recbole_llmesr.prep.readers.atomic import Meta, read_atomic
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
    parse_literal,
    parse_time,
    read_header,
    record_id,
    required,
)
from recbole_llmesr.prep.readers.normal import (
    ITEM,
    RATING,
    TIME,
    USER,
    InterBuilder,
    RawDataset,
    cell_text,
    finish,
)

_AMAZON_COLUMNS = ["title", "brand", "price", "categories", "description"]


def read_beauty_benchmark(dirname: Any, name: str = "amazon_beauty_5core", **kwargs) -> RawDataset:
    """The Amazon Beauty 2014 5-core benchmark copy (``<name>.inter.gz`` + ``<name>.items.jsonl.gz``).

    Same as :func:`read_atomic`, plus empty ``price`` and ``description`` columns: that copy has neither,
    and adding them lets the paper's ``beauty`` template render them as "unknown" (as the paper does for
    missing fields) instead of failing on an unknown field.
    """
    ds = read_atomic(dirname, name, **kwargs)
    items = ds.items.copy()
    for col in _AMAZON_COLUMNS:
        if col not in items.columns:
            items[col] = ""
    return RawDataset(ds.name, ds.inter, items)


def _read_reviews(path: str, parser: Callable[[str], Any], user_key: str, item_key: str, rating_key: str,
                  time_fn: Callable[[Mapping], float], on_bad_line: str,
                  progress: Optional[bool]) -> InterBuilder:
    bad = BadLines(on_bad_line, path)
    b = InterBuilder(with_rating=True)
    for lineno, rec in iter_records(path, parser, bad, progress):
        try:
            u = record_id(rec, user_key)
            i = record_id(rec, item_key)
            t = time_fn(rec)
            r = as_float(rec[rating_key], rating_key) if rec.get(rating_key) is not None else math.nan
        except LineError as e:
            bad.handle(lineno, str(e))
            continue
        b.add(u, i, t, r)
    bad.finish()
    return b


def _read_meta(path: str, parser: Callable[[str], Any], id_key: str, extract: Callable[[Mapping], Dict[str, str]],
               keep: set, on_bad_line: str, progress: Optional[bool]) -> Meta:
    """Metadata of the items in ``keep``; the first line of an item wins."""
    bad = BadLines(on_bad_line, path)
    meta: Meta = {}
    for lineno, rec in iter_records(path, parser, bad, progress):
        try:
            iid = record_id(rec, id_key)
            if iid not in keep or iid in meta:
                continue
            meta[iid] = extract(rec)
        except LineError as e:
            bad.handle(lineno, str(e))
    bad.finish()
    return meta


def _unix_time(key: str, scale: float = 1.0) -> Callable[[Mapping], float]:
    def fn(rec: Mapping) -> float:
        return parse_time(required(rec, key), key) * scale
    return fn


def _first_category_path(cats: Any) -> str:
    # 2014: a list of category paths (lists); the paper's text uses the first path, joined with "; ".
    if isinstance(cats, (list, tuple)) and cats and isinstance(cats[0], (list, tuple)):
        return as_text(cats[0])
    return as_text(cats)


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
    rp, mp = check_file(reviews_path), check_file(meta_path)
    b = _read_reviews(rp, parse_literal, "reviewerID", "asin", "overall", _unix_time("unixReviewTime"),
                      on_bad_line, progress)

    def extract(rec: Mapping) -> Dict[str, str]:
        return {
            "title": as_text(rec.get("title")),
            "brand": as_text(rec.get("brand")),
            "price": as_text(rec.get("price")),
            "categories": _first_category_path(rec.get("categories")),
            "description": as_text(rec.get("description"), sep=" "),
        }

    meta = _read_meta(mp, parse_literal, "asin", extract, set(b.items), on_bad_line, progress)
    return finish(name, b, rp, meta, _AMAZON_COLUMNS)


def read_amazon2018(reviews_path: Any, meta_path: Any, name: str, *, on_bad_line: str = "raise",
                    progress: Optional[bool] = None) -> RawDataset:
    """Amazon reviews 2018 (Ni et al.): JSON lines. Reviews: reviewerID, asin, overall, unixReviewTime.
    Meta: title, brand, price, category (list -> ``categories``, ``"; "``-joined), description (list or
    str, space-joined), feature (list -> ``features``, ``"; "``-joined)."""
    rp, mp = check_file(reviews_path), check_file(meta_path)
    b = _read_reviews(rp, parse_json, "reviewerID", "asin", "overall", _unix_time("unixReviewTime"),
                      on_bad_line, progress)

    def extract(rec: Mapping) -> Dict[str, str]:
        return {
            "title": as_text(rec.get("title")),
            "brand": as_text(rec.get("brand")),
            "price": as_text(rec.get("price")),
            "categories": as_text(rec.get("category")),
            "description": as_text(rec.get("description"), sep=" "),
            "features": as_text(rec.get("feature")),
        }

    meta = _read_meta(mp, parse_json, "asin", extract, set(b.items), on_bad_line, progress)
    return finish(name, b, rp, meta, _AMAZON_COLUMNS + ["features"])


def read_amazon2023(reviews_path: Any, meta_path: Any, name: str, *, on_bad_line: str = "raise",
                    progress: Optional[bool] = None) -> RawDataset:
    """Amazon reviews 2023 (Hou et al.): JSONL. Reviews: user_id, parent_asin (the item id), rating,
    timestamp (milliseconds; converted to seconds). Meta: parent_asin, title, store (-> ``brand``),
    price, categories (``"; "``-joined), features (``"; "``-joined), description (space-joined),
    main_category."""
    rp, mp = check_file(reviews_path), check_file(meta_path)
    b = _read_reviews(rp, parse_json, "user_id", "parent_asin", "rating", _unix_time("timestamp", 1e-3),
                      on_bad_line, progress)

    def extract(rec: Mapping) -> Dict[str, str]:
        price = as_text(rec.get("price"))
        return {
            "title": as_text(rec.get("title")),
            "brand": as_text(rec.get("store")),
            "price": "" if price in ("None", "none", "null") else price,
            "categories": as_text(rec.get("categories")),
            "description": as_text(rec.get("description"), sep=" "),
            "features": as_text(rec.get("features")),
            "main_category": as_text(rec.get("main_category")),
        }

    meta = _read_meta(mp, parse_json, "parent_asin", extract, set(b.items), on_bad_line, progress)
    return finish(name, b, rp, meta, _AMAZON_COLUMNS + ["features", "main_category"])


def read_yelp(business_path: Any, review_path: Any, name: str, *, on_bad_line: str = "raise",
              progress: Optional[bool] = None) -> RawDataset:
    """Yelp Open Dataset. ``review.json``: user_id, business_id, stars (-> ``rating``), date
    ("YYYY-MM-DD HH:MM:SS", taken as UTC). ``business.json``: name, city, categories (comma string ->
    ``"; "``-joined), stars, review_count become text columns."""
    bp, rp = check_file(business_path), check_file(review_path)
    b = _read_reviews(rp, parse_json, "user_id", "business_id", "stars", _unix_time("date"),
                      on_bad_line, progress)

    def extract(rec: Mapping) -> Dict[str, str]:
        cats = rec.get("categories")
        if isinstance(cats, str):
            cats = [c.strip() for c in cats.split(",")]
        return {
            "name": as_text(rec.get("name")),
            "city": as_text(rec.get("city")),
            "categories": as_text(cats),
            "stars": as_text(rec.get("stars")),
            "review_count": as_text(rec.get("review_count")),
        }

    meta = _read_meta(bp, parse_json, "business_id", extract, set(b.items), on_bad_line, progress)
    return finish(name, b, rp, meta, ["name", "city", "categories", "stars", "review_count"])


def _csv_item_file(path: Any, id_column: str, sep: str, item_columns: Optional[Mapping[str, str]],
                   on_bad_line: str, progress: Optional[bool]) -> Tuple[Meta, List[str]]:
    """``(meta, text columns)`` of :func:`read_csv`'s item file; the first row of an item wins."""
    ipath = check_file(path)
    ibad = BadLines(on_bad_line, ipath)
    irows = iter_csv(ipath, sep, progress)
    ihead = read_header(ipath, irows)
    mapping = dict(item_columns) if item_columns is not None else \
        {ITEM: id_column, **{h: h for h in ihead if h != id_column}}
    if ITEM not in mapping:
        raise ValueError("read_csv: item_columns must map 'item_id'")
    for key, col in mapping.items():
        if col not in ihead:
            raise DataFormatError(ipath, 1, f"column {col!r} (for {key}) is not in the header {ihead}")
    text_cols = [k for k in mapping if k != ITEM]
    iid_idx = ihead.index(mapping[ITEM])
    col_idx = {k: ihead.index(mapping[k]) for k in text_cols}
    meta: Meta = {}
    for lineno, row in irows:
        if len(row) != len(ihead):
            ibad.handle(lineno, f"expected {len(ihead)} fields, found {len(row)}")
            continue
        iid = row[iid_idx].strip()
        if not iid:
            ibad.handle(lineno, f"empty {mapping[ITEM]!r}")
            continue
        if iid not in meta:
            meta[iid] = {k: cell_text(row[j]) for k, j in col_idx.items()}
    ibad.finish()
    return meta, text_cols


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
    path = check_file(path)
    unknown = set(columns) - {USER, ITEM, TIME, RATING}
    missing = {USER, ITEM, TIME} - set(columns)
    if unknown or missing:
        raise ValueError(f"read_csv: columns must map user_id, item_id, timestamp [, rating]; "
                         f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    bad = BadLines(on_bad_line, path)
    rows = iter_csv(path, sep, progress)
    head = read_header(path, rows)
    idx = {}
    for key, col in columns.items():
        if col not in head:
            raise DataFormatError(path, 1, f"column {col!r} (for {key}) is not in the header {head}")
        idx[key] = head.index(col)
    b = InterBuilder(with_rating=RATING in idx)
    for lineno, row in rows:
        try:
            if len(row) != len(head):
                raise LineError(f"expected {len(head)} fields, found {len(row)}")
            u, i = row[idx[USER]].strip(), row[idx[ITEM]].strip()
            if not u or not i:
                raise LineError(f"empty {columns[USER] if not u else columns[ITEM]!r}")
            t = parse_time(row[idx[TIME]], columns[TIME])
            r = as_float(row[idx[RATING]], columns[RATING]) if RATING in idx else math.nan
        except LineError as e:
            bad.handle(lineno, str(e))
            continue
        b.add(u, i, t, r)
    bad.finish()

    meta: Meta = {}
    text_cols: List[str] = []
    if item_path is not None:
        meta, text_cols = _csv_item_file(item_path, columns[ITEM], item_sep or sep, item_columns, on_bad_line,
                                         progress)
    return finish(name, b, path, meta, text_cols)
