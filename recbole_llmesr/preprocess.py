"""Build a dataset's LLM artefacts: raw data -> atomic files -> texts -> embeddings -> similar users.

:func:`prepare` is the pipeline behind the ``llmesr-prepare`` command; :func:`ensure_prepared` is the hook
``run_recbole`` calls for the LLM-ESR models (through ``DualViewRecommender.prepare_data``).

Steps of :func:`prepare`:

1. read the raw data with the reader of ``source`` and apply the filters;
2. write the atomic files ``<out_root>/<name>/<name>.inter`` / ``.item`` (``source="atomic"`` reading
   the very folder it would write to is used *in place*: the user's files are never rewritten);
3. item texts from a template (``"auto"`` picks one from the columns), user texts from each user's
   history without the last ``holdout`` items (validation + test, so nothing leaks into the teacher);
4. log a text/token count and, for the OpenAI kinds, a cost estimate, before any embedding call
   (``dry_run`` stops here and writes nothing);
5. embed item texts, then user texts, through the on-disk :class:`~recbole_llmesr.embedders.EmbeddingCache`
   (an unchanged text is never embedded twice, also across rebuilds);
6. similar users (:func:`recbole_llmesr.retrieval.similar_users`);
7. save ``<name>.item_emb.npz``, ``<name>.user_emb.npz``, ``<name>.sim_users.npz`` and, last, the manifest
   ``<name>.llmesr.json`` (a run that dies half-way leaves no manifest claiming completeness).

Freshness (:func:`is_fresh`): the outputs are reused only if the manifest exists, every file it lists
(atomic files and artefacts) exists with the recorded sha256, and the embedder, template hash,
``max_chars``, ``user_max_chars``, ``holdout``, ``top_k`` and the hash of the atomic data all match.
Otherwise everything after step 2 is redone (the cache makes that cheap for unchanged texts).

Concurrency: a build holds an exclusive ``fcntl.flock`` on ``<out>/<name>/.llmesr.lock`` and re-checks
freshness once it has the lock, so concurrent runs on one dataset (several terminals, DDP ranks) build
once and the others reuse the result. Every file is written to a temporary name and renamed into place.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from recbole_llmesr import artifacts, readers
from recbole_llmesr.fileio import atomic_write
from recbole_llmesr import text as T
from recbole_llmesr.embedders import (
    DEFAULT_OPENAI_MODEL,
    KINDS,
    Embedder,
    EmbeddingCache,
    EmbeddingConfigError,
    build_embedder,
    default_cache_root,
    embed_texts,
    estimate_cost,
    identity_slug,
    redact_url,
)

logger = logging.getLogger(__name__)

__all__ = [
    "prepare",
    "ensure_prepared",
    "is_fresh",
    "stale_reason",
    "choose_template",
    "dataset_lock",
    "SOURCES",
    "FORMAT",
    "LOCK_NAME",
    "DEFAULT_FILTERS",
]

FORMAT = 1
SOURCES = ("atomic", "beauty", "amazon2014", "amazon2018", "amazon2023", "yelp", "csv")
LOCK_NAME = ".llmesr.lock"
#: Filters applied when ``filters`` is None: raw review dumps get RecBole's usual 5-core; atomic files,
#: the Beauty benchmark copy (already 5-core) and CSV files are taken as they are.
DEFAULT_FILTERS: Dict[str, Optional[Dict[str, Any]]] = {
    "atomic": None,
    "beauty": None,
    "csv": None,
    "amazon2014": {"mode": "kcore", "user_k": 5, "item_k": 5},
    "amazon2018": {"mode": "kcore", "user_k": 5, "item_k": 5},
    "amazon2023": {"mode": "kcore", "user_k": 5, "item_k": 5},
    "yelp": {"mode": "kcore", "user_k": 5, "item_k": 5},
}
#: Keys of the manifest that :func:`is_fresh` compares with the requested settings.
FRESH_KEYS = ("embedder", "embedder_request", "template_hash", "max_chars", "user_max_chars", "holdout",
              "top_k", "data_hash")
#: Item-name columns for user texts, in order of preference.
NAME_FIELDS = ("title", "movie_title", "name")
_ARTEFACT_KINDS = (artifacts.ITEM_EMB, artifacts.USER_EMB, artifacts.SIM_USERS)
_OPENAI_KINDS = ("openai", "openai-compatible")

# Sentence-transformers models are loaded once per process (repeated prepare() calls, sweeps).
_ST_EMBEDDERS: Dict[Tuple[Optional[str], Optional[int]], Embedder] = {}


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _data_hash(inter_path: Path, item_path: Optional[Path]) -> str:
    """sha256 over the .inter bytes, then the .item bytes (if any)."""
    h = hashlib.sha256()
    for tag, path in ((b"inter", inter_path), (b"item", item_path)):
        h.update(b"\0" + tag + b"\0")
        if path is not None and path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _canon(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


# Default user-text budget per embedder kind. all-MiniLM-L6-v2 reads 256 word pieces (about 1000
# characters of English) and its tokenizer cuts from the end, so a longer text would lose exactly the
# most recent items and only cost tokenisation time. OpenAI models read 8191 tokens; 8000 characters is
# the paper's budget.
USER_TEXT_CHARS = {"sentence-transformers": 1000, "openai": 8000, "openai-compatible": 8000}


def _normalise_kind(kind: str) -> str:
    k = (kind or "sentence-transformers").strip().lower()
    if k in ("sentence_transformers", "st", "local"):
        k = "sentence-transformers"
    if k == "openai_compatible":
        k = "openai-compatible"
    if k not in KINDS:
        raise EmbeddingConfigError(f"unknown embedder kind {kind!r}; expected one of {KINDS}")
    return k


def _embedder_request(kind: str, model: Optional[str], dim: Optional[int], base_url: Optional[str]) -> Dict[str, Any]:
    """What was asked for (a cheap stand-in for the identity, so a fresh dataset needs no model load).
    ``base_url`` is stored only as a hash, and without its ``user:password@``: a fast hash of a URL that
    holds a password would let anyone with the manifest test guesses of it."""
    if kind == "sentence-transformers" and model is not None and os.path.isdir(os.path.expanduser(model)):
        model = str(Path(model).expanduser().resolve())
    url_hash = None if not base_url else hashlib.sha256(redact_url(base_url).encode("utf-8")).hexdigest()[:16]
    return {"kind": kind, "model": model, "dim": None if dim is None else int(dim), "base_url_sha256": url_hash}


def _get_embedder(kind: str, model: Optional[str], base_url: Optional[str], dim: Optional[int]) -> Embedder:
    if kind == "sentence-transformers":
        key = (model, None if dim is None else int(dim))
        if key not in _ST_EMBEDDERS:
            _ST_EMBEDDERS[key] = build_embedder(kind, model, dim=dim)
        return _ST_EMBEDDERS[key]
    return build_embedder(kind, model, base_url=base_url, dim=dim)


def _check_positive(value: Any, what: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{what} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")
    return int(value)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name \
            or name != name.strip():
        raise ValueError(f"invalid dataset name {name!r}: use a plain folder name such as 'amazon_beauty'")
    return name


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def _atomic_location(path: Any, name: str) -> Tuple[Path, str]:
    """(file or folder to pass to read_atomic, file stem) for a ``.inter`` file or a folder holding one."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_dir():
        if readers._find(str(p), name, "inter") is not None:
            return p, name
        stems = sorted({re.sub(r"\.inter(\.gz)?$", "", f) for f in os.listdir(p) if re.search(r"\.inter(\.gz)?$", f)})
        if len(stems) == 1:
            return p, stems[0]
        raise FileNotFoundError(f"{p / (name + '.inter')}: file not found"
                                + (f" (the folder holds .inter files for {stems}; pass the file itself)" if stems else ""))
    if p.is_file():
        return p, re.sub(r"\.inter(\.gz)?$", "", p.name)
    raise FileNotFoundError(f"{p}: file not found")


def _need(inputs: Mapping[str, Any], source: str, *keys: str) -> List[Any]:
    missing = [k for k in keys if not inputs.get(k)]
    if missing:
        raise ValueError(f"source {source!r} needs inputs {list(keys)}; missing {missing}")
    return [inputs[k] for k in keys]


def _read_source(name: str, source: str, inputs: Mapping[str, Any], out_dir: Path,
                 progress: Optional[bool]) -> Tuple[readers.RawDataset, bool]:
    """Read the raw data; returns (dataset named ``name``, in_place)."""
    in_place = False
    if source in ("atomic", "beauty"):
        path = inputs.get("inter") or inputs.get("dir")
        if path is None:
            if source == "atomic" and name == "ml-100k":
                path = readers.ml100k_dir()
            else:
                raise ValueError(f"source {source!r} needs inputs['inter']: a .inter file or the folder holding it")
        location, stem = _atomic_location(path, name)
        if source == "atomic":
            fields = {k: inputs[k] for k in ("user_field", "item_field", "time_field", "rating_field") if inputs.get(k)}
            ds = readers.read_atomic(location, stem, progress=progress, **fields)
            inter_dir = location if location.is_dir() else location.parent
            inter_file = readers._find(str(inter_dir), stem, "inter")
            in_place = (stem == name and inter_file is not None and not inter_file.endswith(".gz")
                        and os.path.realpath(inter_dir) == os.path.realpath(out_dir))
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
        columns = inputs.get("columns") or {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}
        ds = readers.read_csv(inter, name, columns, sep=inputs.get("sep") or ",", item_path=inputs.get("item"),
                              item_columns=inputs.get("item_columns"), item_sep=inputs.get("item_sep"),
                              progress=progress)
    else:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    return readers.RawDataset(name, ds.inter, ds.items), in_place


def _filter_kwargs(filters: Mapping[str, Any]) -> Dict[str, Any]:
    allowed = {"mode", "user_k", "item_k", "min_rating", "min_user_len", "drop_duplicates"}
    unknown = set(filters) - allowed
    if unknown:
        raise ValueError(f"unknown filter settings {sorted(unknown)}; allowed: {sorted(allowed)}")
    kw = {"mode": "kcore", "user_k": 5, "item_k": 5}
    kw.update({k: v for k, v in filters.items() if v is not None})
    return kw


# --------------------------------------------------------------------------------------------------
# texts
# --------------------------------------------------------------------------------------------------
def choose_template(columns: List[str], name: str, source: str, template: str = "auto") -> Tuple[str, str, str]:
    """``(template text, label, missing_fields policy)``.

    ``"auto"``: ``movie`` when there is a ``movie_title`` column (ml-100k-like); ``beauty`` for the Beauty
    benchmark (source ``beauty``, or Amazon columns title+brand+categories and "beauty" in the name);
    ``fashion`` likewise for fashion/clothing data with a ``features`` column; ``yelp`` for Yelp (source or
    name+categories+city columns); ``amazon`` for other data with title+brand+categories; else
    ``generic`` (all columns). Fields an auto-picked template names but the data lacks render as
    "unknown". A template name or a literal template string is used as given (a missing field is an
    error).
    """
    if template != "auto":
        text = T.get_template(template)
        return text, (template if template in T.TEMPLATES else "custom"), "error"
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
    return T.TEMPLATES[label], label, "unknown"


def _name_field(columns: List[str]) -> Optional[str]:
    for c in NAME_FIELDS:
        if c in columns:
            return c
    return columns[0] if columns else None


def _texts(ds: readers.RawDataset, source: str, template: str, max_chars: int, user_max_chars: int,
           holdout: int) -> Dict[str, Any]:
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
            ids = ds.items.loc[blank, readers.ITEM].tolist()
            logger.warning("dataset %r: %d of %d items have no text (no row in the item file, or only empty "
                           "fields), e.g. %s; they are embedded with every field as %r", ds.name, len(ids),
                           len(ds.items), ", ".join(ids[:10]), T.UNKNOWN)
    text, label, missing = choose_template(columns, ds.name, source, template)
    try:
        items = T.item_texts(ds.items, text, max_chars, missing_fields=missing)
    except KeyError as err:
        raise ValueError(str(err.args[0]) if err.args else str(err)) from None
    field = _name_field(columns)
    if field is not None:
        names = T.item_names(ds.items, field)
    else:
        names = {str(i): str(i) for i in ds.items[readers.ITEM].tolist()}
    users = T.user_texts(ds.inter, names, holdout=holdout, max_chars=user_max_chars)
    return {"template": text, "template_label": label, "item_texts": items, "user_texts": users,
            "name_field": field}


# --------------------------------------------------------------------------------------------------
# freshness and locking
# --------------------------------------------------------------------------------------------------
def stale_reason(data_dir: Any, name: str, settings: Mapping[str, Any]) -> Optional[str]:
    """Why the outputs in ``data_dir`` are not fresh for ``settings`` (None when they are).

    Fresh = the manifest exists and has this format, every file it lists exists with the recorded
    sha256, the three artefacts are among them, and each key of ``settings`` (see :data:`FRESH_KEYS`)
    equals the manifest's value.
    """
    data_dir = Path(data_dir)
    try:
        manifest = artifacts.read_manifest(data_dir, name)
    except (artifacts.ArtifactError, OSError) as err:
        return f"unreadable manifest ({err})"
    if manifest is None:
        return "no manifest"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"manifest format {manifest.get('format') if isinstance(manifest, dict) else '?'} != {FORMAT}"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "manifest lists no files"
    for kind in _ARTEFACT_KINDS:
        if f"{name}.{kind}" not in files:
            return f"manifest lacks {name}.{kind}"
    for key, value in settings.items():
        if key not in FRESH_KEYS:
            raise ValueError(f"is_fresh: unknown setting {key!r}; expected some of {FRESH_KEYS}")
        if _canon(manifest.get(key)) != _canon(value):
            return f"{key} changed ({manifest.get(key)!r} -> {value!r})"
    for fname, digest in files.items():
        path = data_dir / fname
        if Path(fname).name != fname or not path.is_file():
            return f"{fname} is missing"
        if _sha256_file(path) != digest:
            return f"{fname} was modified"
    return None


def is_fresh(data_dir: Any, name: str, settings: Mapping[str, Any]) -> bool:
    """True if the artefacts in ``data_dir`` are complete, unmodified and built with ``settings``."""
    return stale_reason(data_dir, name, settings) is None


@contextlib.contextmanager
def dataset_lock(folder: Any) -> Iterator[Path]:
    """Exclusive ``flock`` on ``<folder>/.llmesr.lock`` (created if needed, never deleted: deleting a
    lock file races with processes waiting on it). Released when the block exits or the process dies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        logger.warning("no fcntl on this platform: concurrent prepare runs on %s are not serialised", folder)
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is preparing %s; waiting for its lock (%s)", folder, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def _staging() -> Iterator[Path]:
    """A scratch folder in the system temp dir: nothing lands in the output folder unless a build happens."""
    path = Path(tempfile.mkdtemp(prefix="llmesr-staging-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _install(src: Path, dst: Path) -> None:
    """Copy ``src`` over ``dst`` atomically (:func:`fileio.atomic_write`); identical files are left alone."""
    if dst.is_file() and _sha256_file(dst) == _sha256_file(src):
        return

    def copy(out) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)

    atomic_write(dst, copy)


# --------------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------------
def _log_estimate(kind: str, identity: Dict[str, Any], est: Dict[str, Any]) -> None:
    if kind in _OPENAI_KINDS:
        cost = "unknown price" if est["usd"] is None else f"about ${est['usd']:.4f}"
        logger.info("embedding estimate (%s %s): %d texts, %d unique, %d not cached -> about %d tokens, %s",
                    kind, identity.get("model"), est["texts"], est["unique_texts"], est["uncached_texts"],
                    est["tokens"], cost)
    else:
        logger.info("embedding estimate (%s, local, no cost): %d texts, %d unique, %d not cached (~%d tokens)",
                    identity.get("model"), est["texts"], est["unique_texts"], est["uncached_texts"], est["tokens"])


def prepare(name: str, *, source: str = "atomic", inputs: Optional[Mapping[str, Any]] = None,
            out_root: Any = "dataset_atomic", embedder: str = "sentence-transformers",
            embedder_model: Optional[str] = None, base_url: Optional[str] = None, dim: Optional[int] = None,
            template: str = "auto", max_chars: int = 2048, user_max_chars: Optional[int] = None, holdout: int = 2,
            filters: Optional[Mapping[str, Any]] = None, top_k: int = 100, exact_max: int = 200_000,
            cache_dir: Any = None, dry_run: bool = False, force: bool = False,
            show_progress: bool = True) -> Dict[str, Any]:
    """Build (or reuse) the atomic files and LLM artefacts of dataset ``name`` in ``<out_root>/<name>/``.

    ``source`` and ``inputs``:

    * ``"atomic"``: ``{"inter": <.inter file or folder>}`` (+ optional ``user_field``/``item_field``/
      ``time_field``/``rating_field``); none for ``name="ml-100k"`` = RecBole's bundled copy. When the
      input folder *is* the output folder the files are used in place, never rewritten.
    * ``"beauty"``: ``{"inter": <folder or .inter.gz of the Beauty 5-core benchmark copy>}``.
    * ``"amazon2014"``/``"amazon2018"``/``"amazon2023"``: ``{"reviews": ..., "meta": ...}``.
    * ``"yelp"``: ``{"business": ..., "review": ...}``.
    * ``"csv"``: ``{"inter": ..., "columns": {"user_id": .., "item_id": .., "timestamp": .., ["rating": ..]},
      "sep": ",", "item": <optional item file>, "item_columns": {...}}``.

    ``filters``: None = :data:`DEFAULT_FILTERS` of the source; else keys of
    :func:`readers.apply_filters` (``mode`` kcore/single_pass/none, ``user_k``, ``item_k`` (default 5),
    ``min_rating``, ``min_user_len``, ``drop_duplicates``).

    Returns the manifest (also when the outputs were already fresh: then nothing is written and
    "up to date" is logged), or for ``dry_run`` the estimate (nothing is written at all).
    """
    _check_name(name)
    out_dir = Path(os.path.expanduser(os.fspath(out_root))) / name
    return _prepare(name, out_dir, source=source, inputs=inputs, embedder=embedder,
                    embedder_model=embedder_model, base_url=base_url, dim=dim, template=template,
                    max_chars=max_chars, user_max_chars=user_max_chars, holdout=holdout, filters=filters,
                    top_k=top_k, exact_max=exact_max, cache_dir=cache_dir, dry_run=dry_run, force=force,
                    show_progress=show_progress)


def _prepare(name: str, out_dir: Path, *, source: str, inputs: Optional[Mapping[str, Any]], embedder: str,
             embedder_model: Optional[str], base_url: Optional[str], dim: Optional[int], template: str,
             max_chars: int, user_max_chars: Optional[int], holdout: int, filters: Optional[Mapping[str, Any]], top_k: int,
             exact_max: int, cache_dir: Any, dry_run: bool, force: bool, show_progress: bool) -> Dict[str, Any]:
    t_start = time.monotonic()
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    max_chars = _check_positive(max_chars, "max_chars")
    kind = _normalise_kind(embedder)
    user_max_chars = _check_positive(user_max_chars or USER_TEXT_CHARS[kind], "user_max_chars")
    holdout = _check_positive(holdout, "holdout", allow_zero=True)
    top_k = _check_positive(top_k, "top_k")
    exact_max = _check_positive(exact_max, "exact_max", allow_zero=True)
    if dim is not None:
        dim = _check_positive(dim, "dim")
    if template != "auto":
        T.get_template(template)  # fail on a bad template before reading anything
    cache_root = Path(os.path.expanduser(os.fspath(cache_dir))) if cache_dir else default_cache_root()
    progress = None if show_progress else False

    # 1. read + filter
    t0 = time.monotonic()
    ds, in_place = _read_source(name, source, dict(inputs or {}), out_dir, progress)
    filters = DEFAULT_FILTERS[source] if filters is None else dict(filters)
    if filters is not None:
        if in_place:
            raise ValueError(f"{out_dir}: cannot filter the atomic files in place; write them to another "
                             f"out_root, or filter with RecBole's own settings")
        ds = readers.apply_filters(ds, **_filter_kwargs(filters))
    logger.info("%s: read %s (%s) in %.1f s", name, source, ", ".join(f"{v} {k}" for k, v in ds.counts().items()),
                time.monotonic() - t0)

    with contextlib.ExitStack() as stack:
        # 2. atomic files: written to a staging folder first, copied into place only when a build happens
        if in_place:
            data = ds
            inter_path = out_dir / f"{name}.inter"
            item_path = out_dir / f"{name}.item"
            staged: List[Path] = []
        else:
            data_dir = stack.enter_context(_staging())
            readers.write_atomic(ds, data_dir)
            data = readers.read_written(data_dir, name, progress=False)
            inter_path, item_path = data_dir / f"{name}.inter", data_dir / f"{name}.item"
            staged = [inter_path, item_path]
        data_hash = _data_hash(inter_path, item_path if item_path.is_file() else None)

        # 3. texts
        texts = _texts(data, source, template, max_chars, user_max_chars, holdout)
        item_texts, user_texts = texts["item_texts"], texts["user_texts"]
        all_texts = list(item_texts.values()) + list(user_texts.values())
        request = _embedder_request(kind, embedder_model, dim, base_url)
        base = {"template_hash": T.template_hash(texts["template"], max_chars), "max_chars": max_chars,
                "user_max_chars": user_max_chars, "holdout": holdout, "top_k": top_k, "data_hash": data_hash}

        if dry_run:
            return _dry_run(name, kind, embedder_model, base_url, dim, request, cache_root, data, texts, all_texts)

        if not force:
            reason = stale_reason(out_dir, name, {**base, "embedder_request": request})
            if reason is None:
                logger.info("%s: LLM artefacts in %s are up to date", name, out_dir)
                return artifacts.read_manifest(out_dir, name)
        emb = _get_embedder(kind, embedder_model, base_url, dim)
        settings = {**base, "embedder": emb.identity()}
        if not force:
            reason = stale_reason(out_dir, name, settings)
            if reason is None:
                logger.info("%s: LLM artefacts in %s are up to date", name, out_dir)
                return artifacts.read_manifest(out_dir, name)
            logger.info("%s: building LLM artefacts in %s (%s)", name, out_dir, reason)

        with dataset_lock(out_dir):
            if not force and is_fresh(out_dir, name, settings):
                logger.info("%s: LLM artefacts in %s are up to date (built by another process meanwhile)",
                            name, out_dir)
                return artifacts.read_manifest(out_dir, name)
            manifest = _build(name, out_dir, emb, kind, request, settings, cache_root, data, texts, staged,
                              source, filters, exact_max, show_progress)
    logger.info("%s: done in %.1f s", name, time.monotonic() - t_start)
    return manifest


def _dry_run(name, kind, model, base_url, dim, request, cache_root, data, texts, all_texts) -> Dict[str, Any]:
    emb = None
    if not (kind == "openai-compatible" and dim is None):  # that one would probe the server
        try:
            emb = _get_embedder(kind, model, base_url, dim)
        except EmbeddingConfigError as err:
            logger.warning("dry run: cannot create the embedder (%s); estimating as if nothing were cached", err)
    cache = None
    identity = emb.identity() if emb is not None else request
    if emb is not None and (cache_root / identity_slug(identity)).is_dir():
        cache = EmbeddingCache(cache_root, identity)  # exists already: nothing is written
    price_model = emb.model if emb is not None else (model or (DEFAULT_OPENAI_MODEL if kind == "openai" else ""))
    est = estimate_cost(all_texts, price_model, cache=cache)
    if kind not in _OPENAI_KINDS:
        est["usd"] = 0.0
    _log_estimate(kind, identity, est)
    return {
        "dry_run": True,
        "dataset": name,
        "embedder": identity,
        "template": texts["template"],
        "template_label": texts["template_label"],
        "counts": data.counts(),
        "item_texts": len(texts["item_texts"]),
        "user_texts": len(texts["user_texts"]),
        **est,
    }


def _embed_by_length(emb: Embedder, texts: List[str], cache: EmbeddingCache, show_progress: bool,
                     desc: str) -> np.ndarray:
    """:func:`embed_texts` with the texts sent shortest first, rows returned in the input order.

    A local model pads every batch to its longest text; batching texts of similar length wastes far
    less compute (user histories range from a few words to the model's maximum)."""
    order = np.argsort(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")
    vecs = embed_texts(emb, [texts[i] for i in order], cache, show_progress=show_progress, desc=desc)
    out = np.empty_like(vecs)
    out[order] = vecs
    return out


def _build(name: str, out_dir: Path, emb: Embedder, kind: str, request: Dict[str, Any], settings: Dict[str, Any],
           cache_root: Path, data: readers.RawDataset, texts: Dict[str, Any], staged: List[Path], source: str,
           filters: Optional[Mapping[str, Any]], exact_max: int, show_progress: bool) -> Dict[str, Any]:
    from recbole_llmesr.retrieval import similar_users

    # The old manifest goes first: from here until the new one is written, nothing claims completeness.
    manifest_path = artifacts.artifact_path(out_dir, name, artifacts.MANIFEST)
    with contextlib.suppress(FileNotFoundError):
        manifest_path.unlink()
    for path in staged:
        _install(path, out_dir / path.name)

    item_texts, user_texts = texts["item_texts"], texts["user_texts"]
    cache = EmbeddingCache(cache_root, emb.identity())
    est = estimate_cost(list(item_texts.values()) + list(user_texts.values()), emb.model, cache=cache)
    if kind not in _OPENAI_KINDS:
        est["usd"] = 0.0
    _log_estimate(kind, emb.identity(), est)

    timings: Dict[str, float] = {}
    t0 = time.monotonic()
    item_vecs = _embed_by_length(emb, list(item_texts.values()), cache, show_progress, "item texts")
    timings["items"] = time.monotonic() - t0
    t0 = time.monotonic()
    user_vecs = _embed_by_length(emb, list(user_texts.values()), cache, show_progress, "user texts")
    timings["users"] = time.monotonic() - t0
    for what, n, secs in (("item", len(item_texts), timings["items"]), ("user", len(user_texts), timings["users"])):
        logger.info("%s: %d %s texts embedded or read from the cache in %.1f s (%.0f texts/s)",
                    name, n, what, secs, n / max(secs, 1e-9))
    t0 = time.monotonic()
    neighbors = similar_users(user_vecs, k=settings["top_k"], exact_max=exact_max, show_progress=show_progress)
    logger.info("%s: top-%d similar users of %d users in %.1f s", name, settings["top_k"], len(user_texts),
                time.monotonic() - t0)

    paths = {kind_: artifacts.artifact_path(out_dir, name, kind_) for kind_ in _ARTEFACT_KINDS}
    artifacts.save_embeddings(paths[artifacts.ITEM_EMB], list(item_texts), item_vecs)
    artifacts.save_embeddings(paths[artifacts.USER_EMB], list(user_texts), user_vecs)
    artifacts.save_neighbors(paths[artifacts.SIM_USERS], list(user_texts), neighbors)

    files = {}
    for suffix in ("inter", "item"):
        p = out_dir / f"{name}.{suffix}"
        if p.is_file():
            files[p.name] = _sha256_file(p)
    for p in paths.values():
        files[p.name] = _sha256_file(p)
    manifest = {
        "format": FORMAT,
        "dataset": name,
        "embedder": emb.identity(),
        "embedder_request": request,
        "dim": int(item_vecs.shape[1]),
        "template": texts["template"],
        "template_name": texts["template_label"],
        "template_hash": settings["template_hash"],
        "max_chars": settings["max_chars"],
        "user_max_chars": settings["user_max_chars"],
        "holdout": settings["holdout"],
        "user_name_field": texts["name_field"],
        "top_k": settings["top_k"],
        "source": source,
        "filters": None if filters is None else _canon(dict(filters)),
        "counts": data.counts(),
        "data_hash": settings["data_hash"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }
    artifacts.write_manifest(out_dir, name, manifest)
    return manifest


# --------------------------------------------------------------------------------------------------
# run_recbole hook
# --------------------------------------------------------------------------------------------------
def _cfg(config: Any, key: str, default: Any = None) -> Any:
    try:
        value = config[key]
    except KeyError:
        value = None
    return default if value is None else value


def _unredacted_cfg(config: Any, key: str) -> Any:
    """``config[key]`` with the URL credentials that :class:`~recbole_llmesr.config.LLMESRConfig` hides from
    its dumps put back: connecting needs them."""
    unredacted = getattr(config, "unredacted", None)
    return unredacted(key) if unredacted is not None else _cfg(config, key)


def _data_root(config: Any) -> str:
    """The data folder the user configured (RecBole replaces data_path by the bundled ml-100k)."""
    root = _cfg(config, "data_root")
    if root:
        return str(root)
    # RecBole keeps the merged-in settings apart from final_config_dict, whose data_path it rewrote.
    for attr in ("external_config_dict", "internal_config_dict"):
        value = (vars(config).get(attr) or {}).get("data_path") if hasattr(config, "__dict__") else None
        if value:
            return str(value)
    return "dataset_atomic/"


def _needed_artefacts(config: Any) -> List[str]:
    needed = []
    if _cfg(config, "use_semantic_view", True) or _cfg(config, "id_init") == "pca":
        needed.append(artifacts.ITEM_EMB)
    if _cfg(config, "use_distillation", True):
        needed.append(artifacts.SIM_USERS)
    return needed


def ensure_prepared(config: Any) -> None:
    """Make sure ``config["data_path"]`` holds fresh LLM artefacts for ``config["dataset"]``; build them if
    not. Settings come from the config keys ``embedder``, ``embedder_model``, ``embedder_base_url``,
    ``embedder_dim``, ``text_template``, ``text_max_chars``, ``user_text_max_chars``, ``user_holdout``,
    ``sim_top_k`` and ``embedding_cache_dir``.

    * ml-100k read from RecBole's bundled copy is first converted into ``<data root>/ml-100k`` and
      ``config["data_path"]`` is pointed there.
    * Any other dataset is used in place: its atomic files are read, never rewritten.
    * Artefacts present *without* a manifest were made by other means and are left alone.
    """
    from recbole_llmesr.config import RECBOLE_ML100K_DIR

    name = config["dataset"]
    data_path = Path(config["data_path"])
    kw = dict(
        embedder=_cfg(config, "embedder", "sentence-transformers"),
        embedder_model=_cfg(config, "embedder_model"),
        base_url=_unredacted_cfg(config, "embedder_base_url"),
        dim=_cfg(config, "embedder_dim"),
        template=_cfg(config, "text_template", "auto"),
        max_chars=_cfg(config, "text_max_chars", 2048),
        user_max_chars=_cfg(config, "user_text_max_chars"),
        holdout=_cfg(config, "user_holdout", 2),
        top_k=_cfg(config, "sim_top_k", 100),
        cache_dir=_cfg(config, "embedding_cache_dir"),
        show_progress=bool(_cfg(config, "show_progress", True)),
        dry_run=False,
        force=False,
        filters=None,
        exact_max=200_000,
    )
    sim_user_num = _cfg(config, "sim_user_num")
    if sim_user_num is not None and int(kw["top_k"]) < int(sim_user_num):
        logger.warning("sim_top_k=%s is smaller than sim_user_num=%s: the teacher gets at most %s similar users",
                       kw["top_k"], sim_user_num, kw["top_k"])

    needed = _needed_artefacts(config)
    if not needed:
        logger.info("%s: this configuration uses no LLM artefacts (no semantic view, no PCA init, no "
                    "distillation); nothing to prepare", name)
        return

    if name == "ml-100k" and data_path.exists() and os.path.realpath(data_path) == os.path.realpath(RECBOLE_ML100K_DIR):
        target = Path(_data_root(config)) / "ml-100k"
        logger.info("ml-100k: converting RecBole's bundled copy into %s", target)
        _prepare(name, target, source="atomic", inputs=None, **kw)
        config["data_path"] = str(target)
        return

    if not (data_path / f"{name}.inter").is_file():
        raise FileNotFoundError(f"{data_path / (name + '.inter')}: file not found; put the dataset's atomic files "
                                f"there or build them with `llmesr-prepare --dataset {name} ...`")
    if artifacts.read_manifest(data_path, name) is None:
        if all(artifacts.artifact_path(data_path, name, k).is_file() for k in needed):
            logger.info("%s: using the LLM artefacts in %s as they are (no manifest: not built by llmesr-prepare)",
                        name, data_path)
            return
    inputs = {"inter": str(data_path)}
    for key, field in (("USER_ID_FIELD", "user_field"), ("ITEM_ID_FIELD", "item_field"), ("TIME_FIELD", "time_field"),
                       ("RATING_FIELD", "rating_field")):
        if _cfg(config, key):
            inputs[field] = _cfg(config, key)
    _prepare(name, data_path, source="atomic", inputs=inputs, **kw)
