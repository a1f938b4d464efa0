"""Filters on a dataset in normal form: duplicates, ratings, iterative k-core and the paper's one-pass filter.

Every filter returns the normal form; one that leaves no interaction raises :class:`EmptyDatasetError`
naming the filter.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pandas as pd

from recbole_llmesr.prep.readers.normal import ITEM, RATING, TIME, USER, EmptyDatasetError, RawDataset, normalize

#: The k of RecBole's usual k-core (users and items with at least 5 interactions).
DEFAULT_CORE = 5
FILTER_MODES = ("kcore", "single_pass", "none")


def _describe(inter: pd.DataFrame) -> str:
    return f"{len(inter)} interactions, {inter[USER].nunique()} users, {inter[ITEM].nunique()} items"


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


def kcore(ds: RawDataset, user_k: int = DEFAULT_CORE, item_k: int = DEFAULT_CORE) -> RawDataset:
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
    if mode not in FILTER_MODES:
        raise ValueError(f"mode must be 'kcore', 'single_pass' or 'none', got {mode!r}")
    ds = dedupe(ds) if drop_duplicates else normalize(ds)
    if min_rating is not None:
        ds = filter_rating(ds, min_rating)
    if mode == "kcore" and (user_k > 1 or item_k > 1):
        ds = kcore(ds, user_k, item_k)
    elif mode == "single_pass":
        ds = single_pass_filter(ds, user_k, item_k, min_user_len)
    return ds
