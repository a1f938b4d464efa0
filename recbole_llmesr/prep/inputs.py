"""What preparation reads: the raw-data sources, the inputs each needs, and the filters each gets by default."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.prep import readers
from recbole_llmesr.prep.readers import DEFAULT_CORE, ITEM, TIME, USER

SOURCES = ("atomic", "beauty", "amazon2014", "amazon2018", "amazon2023", "yelp", "csv")
#: RecBole's usual 5-core, what raw review dumps get unless told otherwise.
KCORE: Mapping[str, Any] = {"mode": "kcore", "user_k": DEFAULT_CORE, "item_k": DEFAULT_CORE}
#: Filters applied when none are given: raw review dumps get :data:`KCORE`; atomic files, the Beauty
#: benchmark copy (already 5-core) and CSV files are taken as they are.
DEFAULT_FILTERS: Dict[str, Optional[Dict[str, Any]]] = {
    "atomic": None,
    "beauty": None,
    "csv": None,
    **{source: dict(KCORE) for source in ("amazon2014", "amazon2018", "amazon2023", "yelp")},
}
_FILTER_KEYS = {"mode", "user_k", "item_k", "min_rating", "min_user_len", "drop_duplicates"}
_ATOMIC_FIELDS = ("user_field", "item_field", "time_field", "rating_field")


class SourceError(LLMESRError, ValueError):
    """A source is unknown, or lacks an input it needs."""


def filter_kwargs(filters: Mapping[str, Any]) -> Dict[str, Any]:
    """Keyword arguments of :func:`~recbole_llmesr.prep.readers.apply_filters` for a ``filters`` mapping;
    a setting left out (or None) is :data:`KCORE`'s."""
    unknown = set(filters) - _FILTER_KEYS
    if unknown:
        raise SourceError(f"unknown filter settings {sorted(unknown)}; allowed: {sorted(_FILTER_KEYS)}")
    return {**KCORE, **{k: v for k, v in filters.items() if v is not None}}


def atomic_location(path: Any, name: str) -> Tuple[Path, str]:
    """(file or folder to pass to read_atomic, file stem) for a ``.inter`` file or a folder holding one."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_dir():
        if readers.find_data_file(str(p), name, "inter") is not None:
            return p, name
        stems = readers.inter_stems(str(p))
        if len(stems) == 1:
            return p, stems[0]
        hint = f" (the folder holds .inter files for {stems}; pass the file itself)" if stems else ""
        raise FileNotFoundError(f"{p / (name + '.inter')}: file not found{hint}")
    if p.is_file():
        return p, readers.inter_stem(p.name)
    raise FileNotFoundError(f"{p}: file not found")


def check_in_place(folder: Path, name: str, inputs: Mapping[str, Any], sep: str = "\t",
                   encoding: str = "utf-8-sig") -> None:
    """:func:`~recbole_llmesr.prep.readers.check_atomic_file` on the ``.inter`` / ``.item`` / ``.user`` files of
    ``name`` in ``folder``, with the id fields named in ``inputs`` (the atomic reader's ``user_field`` ...)."""
    user, item = inputs.get("user_field") or USER, inputs.get("item_field") or ITEM
    for suffix, ids in (("inter", (user, item)), ("item", (item,)), ("user", (user,))):
        path = Path(folder) / f"{name}.{suffix}"
        if path.is_file():
            readers.check_atomic_file(path, sep, encoding, ids, inputs.get("time_field") or TIME)


def _need(inputs: Mapping[str, Any], source: str, *keys: str) -> List[Any]:
    missing = [k for k in keys if not inputs.get(k)]
    if missing:
        raise SourceError(f"source {source!r} needs inputs {list(keys)}; missing {missing}")
    return [inputs[k] for k in keys]


def read_source(name: str, source: str, inputs: Mapping[str, Any], out_dir: Path,
                progress: Optional[bool]) -> Tuple[readers.RawDataset, bool]:
    """Read the raw data; returns (dataset named ``name``, in_place).

    ``in_place``: the input is the uncompressed ``<out_dir>/<name>.inter`` itself, so the atomic files are
    used as they are, never rewritten.
    """
    in_place = False
    if source in ("atomic", "beauty"):
        path = inputs.get("inter") or inputs.get("dir")
        if path is None:
            if source == "atomic" and name == "ml-100k":
                path = readers.ml100k_dir()
            else:
                raise SourceError(f"source {source!r} needs inputs['inter']: a .inter file or the folder holding it")
        location, stem = atomic_location(path, name)
        if source == "atomic":
            fields = {k: inputs[k] for k in _ATOMIC_FIELDS if inputs.get(k)}
            inter_dir = location if location.is_dir() else location.parent
            inter_file = readers.find_data_file(str(inter_dir), stem, "inter")
            in_place = (stem == name and inter_file is not None and not inter_file.endswith(".gz")
                        and os.path.realpath(inter_dir) == os.path.realpath(out_dir))
            if in_place:  # RecBole will read these very files: what it would misread fails here, not later
                check_in_place(out_dir, name, fields)
            ds = readers.read_atomic(location, stem, progress=progress, **fields)
        else:
            ds = readers.read_beauty_benchmark(location, stem, progress=progress)
    elif source in ("amazon2014", "amazon2018", "amazon2023"):
        reviews, meta = _need(inputs, source, "reviews", "meta")
        reader = getattr(readers, f"read_{source}")
        ds = reader(reviews, meta, name, progress=progress)
    elif source == "yelp":
        inputs = dict(inputs)
        inputs.setdefault("review", inputs.get("reviews"))
        business, review = _need(inputs, source, "business", "review")
        ds = readers.read_yelp(business, review, name, progress=progress)
    elif source == "csv":
        (inter,) = _need(inputs, source, "inter")
        columns = inputs.get("columns") or {k: k for k in (USER, ITEM, TIME)}
        ds = readers.read_csv(inter, name, columns, sep=inputs.get("sep") or ",", item_path=inputs.get("item"),
                              item_columns=inputs.get("item_columns"), item_sep=inputs.get("item_sep"),
                              progress=progress)
    else:
        raise SourceError(f"unknown source {source!r}; expected one of {SOURCES}")
    return readers.RawDataset(name, ds.inter, ds.items), in_place
