"""The normal form every reader and filter returns (:class:`RawDataset`), and :func:`normalize`.

* ``inter``: columns ``user_id`` (str), ``item_id`` (str), ``timestamp`` (float64, seconds) and, when the
  source has one, ``rating`` (float64). Rows are sorted by ``(user_id, timestamp, original file order)``
  with a stable sort, so ties inside one timestamp keep the order of the input file.
* ``items``: ``item_id`` (str) plus text columns (str, ``""`` when missing), one row per item that occurs
  in ``inter`` (items with interactions but no metadata get a row of empty strings), sorted by ``item_id``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import pandas as pd

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.prep.readers.lines import as_text

USER = "user_id"
ITEM = "item_id"
TIME = "timestamp"
RATING = "rating"

#: Written into the ``.item`` file in place of an empty text field: RecBole reads an empty cell as NaN,
#: and NaN token fields silently become ``[PAD]``.
MISSING_TEXT = "[UNK]"


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


class EmptyDatasetError(LLMESRError, ValueError):
    """A filter (or a reader) produced no interactions."""


def cell_text(value: Any) -> str:
    """A text cell of the normal form: str, "" for missing (None / NaN / MISSING_TEXT)."""
    if isinstance(value, str):
        s = value.strip()
        return "" if s == MISSING_TEXT else s
    return as_text(value)


class InterBuilder:
    """Collects interactions row by row; :meth:`frame` gives them as the ``inter`` table."""

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


def items_frame(meta: Mapping[str, Mapping[str, str]], columns: Sequence[str]) -> pd.DataFrame:
    """The items table of ``{item_id: {column: text}}``; a column an item lacks is ""."""
    ids = list(meta)
    data: Dict[str, Any] = {ITEM: pd.Series(ids, dtype=object)}
    for c in columns:
        data[c] = pd.Series([meta[i].get(c, "") for i in ids], dtype=object)
    return pd.DataFrame(data)


def finish(name: str, builder: InterBuilder, source: str, meta: Mapping[str, Mapping[str, str]],
           columns: Sequence[str]) -> RawDataset:
    """The dataset a reader read from ``source``, in normal form; no interactions at all is an error."""
    if len(builder) == 0:
        raise EmptyDatasetError(f"{source}: no interactions were read")
    return normalize(RawDataset(name, builder.frame(), items_frame(meta, columns)))


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
        out[c] = np.array([cell_text(v) for v in items[c].tolist()], dtype=object)
    items = pd.DataFrame(out, columns=[ITEM] + text_cols)
    items = items.sort_values(ITEM, kind="mergesort").reset_index(drop=True)
    return RawDataset(ds.name, inter, items)
