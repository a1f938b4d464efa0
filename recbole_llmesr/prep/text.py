"""Item and user texts for the frozen LLM embeddings of LLM-ESR.

Item text: a ``str.format``-style template filled from the items table (:func:`item_texts`). The
templates follow the official LLM-ESR notebooks (``data/<domain>/get_item_embedding.ipynb``):

* a missing, empty or whitespace-only field (also ``None``/NaN and the ``[UNK]`` placeholder of the
  written ``.item`` file) becomes ``"unknown"``;
* list values are joined with ``"; "``;
* the text is cut to ``max_chars`` characters (:data:`ITEM_TEXT_MAX_CHARS`, as in the paper). The cut is on
  a character (Unicode code point) boundary: a multi-byte character is never split, but a word may be.

Field names are taken literally as column names (``{class}`` is the column ``class``; no attribute or
index lookup); ``{{`` and ``}}`` are literal braces; format specs (``{price:>8}``) are applied to the
field's text. The special field ``{__all__}`` (used by the ``generic`` template) expands to
``"<col> is <value>; <col> is <value>"`` over all non-id columns in table order.

User text (:func:`user_texts`): the names of the user's items in time order, without the last ``holdout``
items (the leave-one-out validation and test items), joined with ``", "``, keeping the last ``max_chars``
characters (the most recent history), between ``prefix`` and ``suffix``. Items without a name are left
out, as in the official notebook. A user whose training part is empty (or has no named items) gets
``prefix + "nothing yet" + suffix``.

Dataset texts (:func:`dataset_texts`): the template a dataset gets (:func:`choose_template`), its item
texts, and its user texts named by the first column of :data:`NAME_FIELDS` the items have.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import string
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.prep.readers.normal import ITEM, MISSING_TEXT, USER, RawDataset

logger = logging.getLogger(__name__)

__all__ = [
    "TEMPLATES",
    "UNKNOWN",
    "EMPTY_HISTORY",
    "ALL_FIELDS",
    "USER_PREFIX",
    "USER_SUFFIX",
    "get_template",
    "template_fields",
    "item_texts",
    "item_names",
    "user_texts",
    "template_hash",
    "choose_template",
    "dataset_texts",
    "DatasetTexts",
    "TemplateError",
    "AUTO_TEMPLATE",
    "ITEM_TEXT_MAX_CHARS",
    "USER_TEXT_MAX_CHARS",
    "DEFAULT_HOLDOUT",
    "NAME_FIELDS",
]

UNKNOWN = "unknown"
EMPTY_HISTORY = "nothing yet"
ALL_FIELDS = "__all__"
USER_PREFIX = "The user has interacted with following items: "
USER_SUFFIX = " Please conclude the user's preference."
#: Template "name" that picks one from the data's columns (:func:`choose_template`).
AUTO_TEMPLATE = "auto"
#: Item texts are cut to this many characters (the paper's budget).
ITEM_TEXT_MAX_CHARS = 2048
#: User texts keep their last this many characters (the paper's budget; OpenAI models read 8191 tokens).
USER_TEXT_MAX_CHARS = 8000
#: Last items of each user left out of the user text: the leave-one-out validation and test items.
DEFAULT_HOLDOUT = 2
#: Item-name columns for user texts, in order of preference.
NAME_FIELDS = ("title", "movie_title", "name")


class TemplateError(LLMESRError, ValueError):
    """An item text template is unknown, malformed, or names a column the items lack."""

_AMAZON_TAIL = ("The item has following features: {categories}. "
                "The item has following descriptions: {description}.")

TEMPLATES: Dict[str, str] = {
    # LLM-ESR data/beauty/get_item_embedding.ipynb (line breaks dropped)
    "beauty": "The beauty item has following attributes: name is {title}; brand is {brand}; price is {price}. "
              + _AMAZON_TAIL,
    # LLM-ESR data/fashion/get_item_embedding.ipynb uses the 2018 "feature" list as the features; its
    # "score is <DATE>" slot is left out.
    "fashion": "The fashion item has following attributes: name is {title}; brand is {brand}; price is {price}. "
               "The item has following features: {features}. "
               "The item has following descriptions: {description}.",
    # any Amazon domain (2014/2018/2023 readers all provide these columns)
    "amazon": "The item has following attributes: name is {title}; brand is {brand}; price is {price}. "
              + _AMAZON_TAIL,
    # ml-100k .item: movie_title, release_year, class
    "movie": "The movie has following attributes: name is {movie_title}; release year is {release_year}; "
             "genre is {class}.",
    # Yelp business.json (read_yelp columns)
    "yelp": "The point of interest has following attributes: name is {name}; category is {categories}; "
            "city is {city}; average score is {stars}; review count is {review_count}.",
    "generic": "The item has following attributes: {" + ALL_FIELDS + "}.",
}

_FORMATTER = string.Formatter()
_Parsed = List[Tuple[str, Optional[str], str, Optional[str]]]


def _parse(template: str) -> _Parsed:
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as e:
        raise TemplateError(f"invalid item text template {template!r}: {e}") from None
    for _, field, spec, _ in parsed:
        if field is not None and field == "":
            raise TemplateError(f"invalid item text template {template!r}: empty field '{{}}' "
                             f"(name the column, e.g. '{{title}}')")
        if spec and "{" in spec:
            raise TemplateError(f"invalid item text template {template!r}: nested fields are not supported")
    return parsed


def get_template(name_or_text: str) -> str:
    """A template by name (a key of :data:`TEMPLATES`), or a literal template string (anything with a
    ``{field}``), so a YAML config can name one or spell one out."""
    if not isinstance(name_or_text, str) or not name_or_text.strip():
        raise TemplateError(f"item text template must be a template name or a template string, "
                         f"got {name_or_text!r}")
    if name_or_text in TEMPLATES:
        return TEMPLATES[name_or_text]
    parsed = _parse(name_or_text)
    if not any(field is not None for _, field, _, _ in parsed):
        raise TemplateError(f"unknown item text template {name_or_text!r}: not one of {sorted(TEMPLATES)} "
                         f"and not a template string (it has no {{field}})")
    return name_or_text


def template_fields(template: str) -> List[str]:
    """The column names a template (name or string) refers to, in order, without repeats."""
    out: List[str] = []
    for _, field, _, _ in _parse(get_template(template)):
        if field is not None and field not in out:
            out.append(field)
    return out


def _is_missing_scalar(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float):
        return math.isnan(v)
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _field_text(v: Any) -> str:
    """A field value as text; "" when missing."""
    if isinstance(v, str):
        s = v.strip()
        return "" if s == MISSING_TEXT else s
    if isinstance(v, (list, tuple, np.ndarray, pd.Series)):
        parts = (_field_text(x) for x in v)
        return "; ".join(p for p in parts if p)
    if _is_missing_scalar(v):
        return ""
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, ensure_ascii=False)
    return str(v).strip()


def _check_max_chars(max_chars: Optional[int], what: str) -> None:
    if max_chars is not None and (not isinstance(max_chars, (int, np.integer)) or max_chars <= 0):
        raise ValueError(f"{what}: max_chars must be a positive integer or None, got {max_chars!r}")


def item_texts(items: pd.DataFrame, template: str, max_chars: Optional[int] = ITEM_TEXT_MAX_CHARS, *,
               missing_fields: str = "error") -> Dict[str, str]:
    """``item_id -> text`` for every row of ``items`` (in table order).

    ``template`` is a template name or string (see :func:`get_template`). A field the table lacks raises
    ``KeyError`` naming the field and the available columns, unless ``missing_fields="unknown"``, which
    renders it as "unknown". ``max_chars=None`` disables the cut.
    """
    if missing_fields not in ("error", "unknown"):
        raise ValueError(f"missing_fields must be 'error' or 'unknown', got {missing_fields!r}")
    _check_max_chars(max_chars, "item_texts")
    if ITEM not in items.columns:
        raise KeyError(f"items table has no {ITEM!r} column (columns: {list(items.columns)})")
    parsed = _parse(get_template(template))
    columns = [c for c in items.columns if c != ITEM]
    values: Dict[str, List[str]] = {}
    n = len(items)
    for _, field, _, _ in parsed:
        if field is None or field in values:
            continue
        if field == ALL_FIELDS:
            cols = {c: [_field_text(v) for v in items[c].tolist()] for c in columns}
            values[field] = ["; ".join(f"{c} is {cols[c][r] or UNKNOWN}" for c in columns) for r in range(n)]
        elif field in items.columns and field != ITEM:
            values[field] = [_field_text(v) or UNKNOWN for v in items[field].tolist()]
        elif field == ITEM:
            values[field] = [str(v) for v in items[ITEM].tolist()]
        elif missing_fields == "unknown":
            values[field] = [UNKNOWN] * n
        else:
            raise KeyError(f"item text template refers to field {field!r}, which the items table lacks; "
                           f"available columns: {columns}")
    out: Dict[str, str] = {}
    for r, iid in enumerate(items[ITEM].tolist()):
        pieces = []
        for literal, field, spec, conv in parsed:
            pieces.append(literal)
            if field is None:
                continue
            v = values[field][r]
            if conv:
                v = _FORMATTER.convert_field(v, conv)
            pieces.append(format(v, spec) if spec else v)
        text = "".join(pieces)
        out[str(iid)] = text[:max_chars] if max_chars is not None else text
    return out


def item_names(items: pd.DataFrame, field: str = "title") -> Dict[str, str]:
    """``item_id -> short name`` (e.g. the title) for :func:`user_texts`; "" when missing."""
    if field not in items.columns:
        raise KeyError(f"items table has no column {field!r}; available columns: "
                       f"{[c for c in items.columns if c != ITEM]}")
    return {str(i): _field_text(v) for i, v in zip(items[ITEM].tolist(), items[field].tolist())}


def user_texts(inter: pd.DataFrame, item_text_field: Mapping[str, str], holdout: int = DEFAULT_HOLDOUT,
               max_chars: Optional[int] = USER_TEXT_MAX_CHARS, prefix: str = USER_PREFIX,
               suffix: str = USER_SUFFIX) -> Dict[str, str]:
    """``user_id -> text`` from each user's training history (see the module docstring).

    ``inter`` must already be in time order within each user (as every reader returns it);
    ``item_text_field`` maps item ids to names (:func:`item_names`). The last ``holdout`` interactions of
    each user are dropped so no validation/test item reaches the teacher. Users are returned sorted.
    """
    if not isinstance(holdout, (int, np.integer)) or holdout < 0:
        raise ValueError(f"user_texts: holdout must be a non-negative integer, got {holdout!r}")
    _check_max_chars(max_chars, "user_texts")
    for col in (USER, ITEM):
        if col not in inter.columns:
            raise KeyError(f"interactions lack column {col!r} (columns: {list(inter.columns)})")
    users = inter[USER].astype(str).to_numpy()
    items = inter[ITEM].astype(str).to_numpy()
    history: Dict[str, List[str]] = {}
    for u, i in zip(users.tolist(), items.tolist()):
        history.setdefault(u, []).append(i)
    out: Dict[str, str] = {}
    for u in sorted(history):
        seq = history[u]
        train = seq[:len(seq) - holdout] if holdout else seq
        names = [_field_text(item_text_field.get(i, "")) for i in train]
        joined = ", ".join(n for n in names if n)
        if max_chars is not None and len(joined) > max_chars:
            joined = joined[-max_chars:]
        out[u] = prefix + (joined or EMPTY_HISTORY) + suffix
    return out


def template_hash(template: str, max_chars: Optional[int] = ITEM_TEXT_MAX_CHARS) -> str:
    """A short sha256 hex digest of (template text, max_chars), for cache staleness checks. A template
    name is resolved first, so a name and its text hash alike."""
    text = get_template(template)
    payload = json.dumps([text, None if max_chars is None else int(max_chars)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def choose_template(columns: List[str], name: str, source: str,
                    template: str = AUTO_TEMPLATE) -> Tuple[str, str, str]:
    """``(template text, label, missing_fields policy)``.

    ``"auto"``: ``movie`` when there is a ``movie_title`` column (ml-100k-like); ``beauty`` for the Beauty
    benchmark (source ``beauty``, or Amazon columns title+brand+categories and "beauty" in the name);
    ``fashion`` likewise for fashion/clothing data with a ``features`` column; ``yelp`` for Yelp (source or
    name+categories+city columns); ``amazon`` for other data with title+brand+categories; else
    ``generic`` (all columns). Fields an auto-picked template names but the data lacks render as
    "unknown". A template name or a literal template string is used as given (a missing field is an
    error).
    """
    if template != AUTO_TEMPLATE:
        text = get_template(template)
        return text, (template if template in TEMPLATES else "custom"), "error"
    cols = set(columns)
    lname = name.lower()
    amazon_cols = {"title", "brand", "categories"} <= cols
    if "movie_title" in cols:
        label = "movie"
    elif source == "beauty" or (amazon_cols and "beauty" in lname):
        label = "beauty"
    elif amazon_cols and "features" in cols and ("fashion" in lname or "clothing" in lname):
        label = "fashion"
    elif source == "yelp" or {"name", "categories", "city"} <= cols:
        label = "yelp"
    elif source.startswith("amazon") or amazon_cols:
        label = "amazon"
    else:
        label = "generic"
    return TEMPLATES[label], label, "unknown"


def _name_field(columns: List[str]) -> Optional[str]:
    for c in NAME_FIELDS:
        if c in columns:
            return c
    return columns[0] if columns else None


@dataclass(frozen=True)
class DatasetTexts:
    """The texts a dataset's embeddings are made of, and how they were made."""

    template: str
    template_label: str
    item_texts: Dict[str, str]
    user_texts: Dict[str, str]
    name_field: Optional[str]

    def all_texts(self) -> List[str]:
        """Item texts, then user texts: everything there is to embed."""
        return list(self.item_texts.values()) + list(self.user_texts.values())


def dataset_texts(ds: RawDataset, source: str, template: str, max_chars: int, user_max_chars: int,
                  holdout: int) -> DatasetTexts:
    """Item and user texts of ``ds`` (read from ``source``) with ``template`` (see :func:`choose_template`)."""
    columns = ds.text_columns
    if not columns:
        logger.warning("dataset %r has no item text columns: every item gets the same text, so the "
                       "semantic view carries no information", ds.name)
    else:
        # Policy: an item with no text (no row in the item file, or only empty / whitespace fields) is
        # embedded like any other, its fields rendered as "unknown" (the paper's missing-field handling).
        # Such items get one and the same text, so say which they are.
        blank = ds.items[columns].apply(lambda col: col.astype(str).str.strip() == "").all(axis=1)
        if blank.any():
            ids = ds.items.loc[blank, ITEM].tolist()
            logger.warning("dataset %r: %d of %d items have no text (no row in the item file, or only empty "
                           "fields), e.g. %s; they are embedded with every field as %r", ds.name, len(ids),
                           len(ds.items), ", ".join(ids[:10]), UNKNOWN)
    text, label, missing = choose_template(columns, ds.name, source, template)
    try:
        items = item_texts(ds.items, text, max_chars, missing_fields=missing)
    except KeyError as err:
        raise TemplateError(str(err.args[0]) if err.args else str(err)) from None
    field = _name_field(columns)
    if field is not None:
        names = item_names(ds.items, field)
    else:
        names = {str(i): str(i) for i in ds.items[ITEM].tolist()}
    users = user_texts(ds.inter, names, holdout=holdout, max_chars=user_max_chars)
    return DatasetTexts(template=text, template_label=label, item_texts=items, user_texts=users, name_field=field)
