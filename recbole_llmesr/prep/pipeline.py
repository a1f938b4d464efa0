"""Build a dataset's LLM artefacts: raw data -> atomic files -> texts -> embeddings -> similar users.

:func:`prepare` is the pipeline behind ``llmesr-prepare``; :func:`prepare_folder` builds into a given folder
(the RecBole runner's entry point, :func:`recbole_llmesr.prep.from_config.ensure_prepared`, uses it).

Steps:

1. read the raw data with the reader of ``source`` and apply the filters (:mod:`.inputs`);
2. write the atomic files ``<out_root>/<name>/<name>.inter`` / ``.item`` (``source="atomic"`` reading
   the very folder it would write to is used *in place*: the user's files are never rewritten);
3. item texts from a template (``"auto"`` picks one from the columns), user texts from each user's
   history without the last ``holdout`` items (validation + test, so nothing leaks into the teacher)
   (:func:`recbole_llmesr.prep.text.dataset_texts`);
4. log a text/token count and, for the OpenAI kinds, a cost estimate, before any embedding call
   (``dry_run`` stops here and writes nothing);
5. embed item texts, then user texts, through the on-disk :class:`~recbole_llmesr.prep.embedders.EmbeddingCache`
   (an unchanged text is never embedded twice, also across rebuilds);
6. similar users (:func:`recbole_llmesr.prep.retrieval.similar_users`);
7. save ``<name>.item_emb.npz``, ``<name>.user_emb.npz``, ``<name>.sim_users.npz`` and, last, the manifest
   ``<name>.llmesr.json`` (a run that dies half-way leaves no manifest claiming completeness).

Outputs that are fresh (:mod:`.freshness`) are reused; otherwise everything after step 2 is redone (the
cache makes that cheap for unchanged texts). Every file is written to a temporary name and renamed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

from recbole_llmesr.fileio import StagedFiles, staged_files
from recbole_llmesr.prep import artifacts, readers
from recbole_llmesr.prep import text as T
from recbole_llmesr.prep.embedders import (
    DEFAULT_OPENAI_MODEL,
    OPENAI_KINDS,
    Embedder,
    EmbeddingCache,
    EmbeddingConfigError,
    embed_by_length,
    estimate_cost,
    get_embedder,
    identity_slug,
)
from recbole_llmesr.prep.freshness import (
    ARTEFACT_KINDS,
    FORMAT,
    MODIFIED,
    canon,
    data_hash,
    dataset_lock,
    embedder_request,
    is_fresh,
    sha256_file,
    stale_reason,
)
from recbole_llmesr.prep.inputs import DEFAULT_FILTERS, filter_kwargs, read_source
from recbole_llmesr.prep.retrieval import similar_users
from recbole_llmesr.prep.settings import PrepareSettings, PrepareSettingsError

logger = logging.getLogger(__name__)

#: Where ``prepare`` writes ``<name>/`` unless told otherwise (the ``data_path`` of the plugin's YAML).
DEFAULT_OUT_ROOT = "dataset_atomic"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name \
            or name != name.strip():
        raise PrepareSettingsError(f"invalid dataset name {name!r}: use a plain folder name such as 'amazon_beauty'")
    return name


def prepare(name: str, settings: Optional[PrepareSettings] = None, *, out_root: Any = DEFAULT_OUT_ROOT,
            **overrides: Any) -> Dict[str, Any]:
    """Build (or reuse) the atomic files and LLM artefacts of dataset ``name`` in ``<out_root>/<name>/``.

    ``settings`` (default: :class:`PrepareSettings`'s defaults), with any of its fields replaced by
    ``overrides`` (``prepare("beauty", source="amazon2014", inputs={...}, top_k=50)``). ``source`` and
    ``inputs``:

    * ``"atomic"``: ``{"inter": <.inter file or folder>}`` (+ optional ``user_field``/``item_field``/
      ``time_field``/``rating_field``); none for ``name="ml-100k"`` = RecBole's bundled copy. When the
      input folder *is* the output folder the files are used in place, never rewritten.
    * ``"beauty"``: ``{"inter": <folder or .inter.gz of the Beauty 5-core benchmark copy>}``.
    * ``"amazon2014"``/``"amazon2018"``/``"amazon2023"``: ``{"reviews": ..., "meta": ...}``.
    * ``"yelp"``: ``{"business": ..., "review": ...}``.
    * ``"csv"``: ``{"inter": ..., "columns": {"user_id": .., "item_id": .., "timestamp": .., ["rating": ..]},
      "sep": ",", "item": <optional item file>, "item_columns": {...}}``.

    ``filters``: None = :data:`~recbole_llmesr.prep.inputs.DEFAULT_FILTERS` of the source; else keys of
    :func:`~recbole_llmesr.prep.readers.apply_filters` (``mode`` kcore/single_pass/none, ``user_k``,
    ``item_k`` (default :data:`~recbole_llmesr.prep.readers.DEFAULT_CORE`), ``min_rating``, ``min_user_len``,
    ``drop_duplicates``).

    Returns the manifest (also when the outputs were already fresh: then nothing is written and
    "up to date" is logged), or for ``dry_run`` the estimate (nothing is written at all).
    """
    _check_name(name)
    settings = dataclasses.replace(settings or PrepareSettings(), **overrides)
    return prepare_folder(name, Path(os.path.expanduser(os.fspath(out_root))) / name, settings)


def prepare_folder(name: str, out_dir: Path, settings: PrepareSettings) -> Dict[str, Any]:
    """:func:`prepare` into the folder ``out_dir`` itself (which is ``<out_root>/<name>`` there)."""
    t_start = time.monotonic()
    cache_root = settings.cache_root

    # 1. read + filter
    t0 = time.monotonic()
    ds, in_place = read_source(name, settings.source, settings.inputs, out_dir, settings.progress)
    filters = DEFAULT_FILTERS[settings.source] if settings.filters is None else settings.filters
    if filters is not None:
        if in_place:
            raise PrepareSettingsError(f"{out_dir}: cannot filter the atomic files in place; write them to "
                                       f"another out_root, or filter with RecBole's own settings")
        ds = readers.apply_filters(ds, **filter_kwargs(filters))
    logger.info("%s: read %s (%s) in %.1f s", name, settings.source,
                ", ".join(f"{v} {k}" for k, v in ds.counts().items()), time.monotonic() - t0)

    with contextlib.ExitStack() as stack:
        # 2. atomic files: written to a staging folder first, copied into place only when a build happens
        if in_place:
            data = ds
            inter_path, item_path = out_dir / f"{name}.inter", out_dir / f"{name}.item"
            staged: List[Path] = []
        else:
            data_dir = stack.enter_context(_staging())
            readers.write_atomic(ds, data_dir)
            data = readers.read_written(data_dir, name, progress=False)
            inter_path, item_path = data_dir / f"{name}.inter", data_dir / f"{name}.item"
            staged = [inter_path, item_path]
        data_digest = data_hash(inter_path, item_path if item_path.is_file() else None)

        # 3. texts
        texts = T.dataset_texts(data, settings.source, settings.template, settings.max_chars,
                                settings.user_text_chars, settings.holdout)
        request = embedder_request(settings)
        base = {"template_hash": T.template_hash(texts.template, settings.max_chars),
                "max_chars": settings.max_chars, "user_max_chars": settings.user_text_chars,
                "holdout": settings.holdout, "top_k": settings.top_k, "data_hash": data_digest}

        if settings.dry_run:
            return _dry_run(name, settings, request, cache_root, data, texts)

        if not settings.force and stale_reason(out_dir, name, {**base, "embedder_request": request}) is None:
            logger.info("%s: LLM artefacts in %s are up to date", name, out_dir)
            return artifacts.read_manifest(out_dir, name)
        emb = get_embedder(settings.kind, settings.embedder_model, settings.base_url, settings.dim)
        fresh = {**base, "embedder": emb.identity()}
        if not settings.force:
            reason = stale_reason(out_dir, name, fresh)
            if reason is None:
                logger.info("%s: LLM artefacts in %s are up to date", name, out_dir)
                return artifacts.read_manifest(out_dir, name)
            if reason.endswith(MODIFIED):  # someone replaced a built file: say so louder than a rebuild
                logger.warning("%s: %s since it was built (its sha256 differs from the manifest's: edited, or "
                               "copied in from elsewhere); rebuilding the LLM artefacts in %s", name, reason, out_dir)
            else:
                logger.info("%s: building LLM artefacts in %s (%s)", name, out_dir, reason)

        with dataset_lock(out_dir):
            if not settings.force and is_fresh(out_dir, name, fresh):
                logger.info("%s: LLM artefacts in %s are up to date (built by another process meanwhile)",
                            name, out_dir)
                return artifacts.read_manifest(out_dir, name)
            manifest = _build(name, out_dir, emb, request, fresh, settings, cache_root, data, texts, staged,
                              filters)
    logger.info("%s: done in %.1f s", name, time.monotonic() - t_start)
    return manifest


def _estimate(kind: str, identity: Dict[str, Any], model: str, texts: List[str],
              cache: Optional[EmbeddingCache]) -> Dict[str, Any]:
    """What embedding ``texts`` costs (local models: nothing), logged before any embedding call."""
    est = estimate_cost(texts, model, cache=cache)
    if kind not in OPENAI_KINDS:
        est["usd"] = 0.0
        logger.info("embedding estimate (%s, local, no cost): %d texts, %d unique, %d not cached (~%d tokens)",
                    identity.get("model"), est["texts"], est["unique_texts"], est["uncached_texts"], est["tokens"])
    else:
        cost = "unknown price" if est["usd"] is None else f"about ${est['usd']:.4f}"
        logger.info("embedding estimate (%s %s): %d texts, %d unique, %d not cached -> about %d tokens, %s",
                    kind, identity.get("model"), est["texts"], est["unique_texts"], est["uncached_texts"],
                    est["tokens"], cost)
    return est


def _dry_run(name: str, settings: PrepareSettings, request: Dict[str, Any], cache_root: Path,
             data: readers.RawDataset, texts: T.DatasetTexts) -> Dict[str, Any]:
    kind, model = settings.kind, settings.embedder_model
    emb: Optional[Embedder] = None
    if not (kind == "openai-compatible" and settings.dim is None):  # that one would probe the server
        try:
            emb = get_embedder(kind, model, settings.base_url, settings.dim)
        except EmbeddingConfigError as err:
            logger.warning("dry run: cannot create the embedder (%s); estimating as if nothing were cached", err)
    cache = None
    identity = emb.identity() if emb is not None else request
    if emb is not None and (cache_root / identity_slug(identity)).is_dir():
        cache = EmbeddingCache(cache_root, identity)  # exists already: nothing is written
    price_model = emb.model if emb is not None else (model or (DEFAULT_OPENAI_MODEL if kind == "openai" else ""))
    est = _estimate(kind, identity, price_model, texts.all_texts(), cache)
    return {
        "dry_run": True,
        "dataset": name,
        "embedder": identity,
        "template": texts.template,
        "template_label": texts.template_label,
        "counts": data.counts(),
        "item_texts": len(texts.item_texts),
        "user_texts": len(texts.user_texts),
        **est,
    }


def _build(name: str, out_dir: Path, emb: Embedder, request: Dict[str, Any], fresh: Dict[str, Any],
           settings: PrepareSettings, cache_root: Path, data: readers.RawDataset, texts: T.DatasetTexts,
           staged: List[Path], filters: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    item_texts, user_texts = texts.item_texts, texts.user_texts
    cache = EmbeddingCache(cache_root, emb.identity())
    _estimate(settings.kind, emb.identity(), emb.model, texts.all_texts(), cache)

    show = settings.show_progress
    t0 = time.monotonic()
    item_vecs = embed_by_length(emb, list(item_texts.values()), cache, show_progress=show, desc="item texts")
    item_secs, t0 = time.monotonic() - t0, time.monotonic()
    user_vecs = embed_by_length(emb, list(user_texts.values()), cache, show_progress=show, desc="user texts")
    user_secs = time.monotonic() - t0
    for what, n, secs in (("item", len(item_texts), item_secs), ("user", len(user_texts), user_secs)):
        logger.info("%s: %d %s texts embedded or read from the cache in %.1f s (%.0f texts/s)",
                    name, n, what, secs, n / max(secs, 1e-9))
    t0 = time.monotonic()
    neighbors = similar_users(user_vecs, k=settings.top_k, exact_max=settings.exact_max, show_progress=show)
    logger.info("%s: top-%d similar users of %d users in %.1f s", name, settings.top_k, len(user_texts),
                time.monotonic() - t0)

    paths = {kind: artifacts.artifact_path(out_dir, name, kind) for kind in ARTEFACT_KINDS}
    # Every output is staged beside its target and renamed into place only once all of them are written: a
    # full or read-only disk leaves the previous atomic files, artefacts and manifest as they were, together.
    # The manifest is renamed last, so a process killed between the renames leaves a manifest whose hashes
    # disagree with the new files: stale, rebuilt by the next run (from the cache), never trusted.
    with staged_files() as stage:
        for path in staged:
            _install(path, out_dir / path.name, stage)
        artifacts.save_embeddings(paths[artifacts.ITEM_EMB], list(item_texts), item_vecs, stage)
        artifacts.save_embeddings(paths[artifacts.USER_EMB], list(user_texts), user_vecs, stage)
        artifacts.save_neighbors(paths[artifacts.SIM_USERS], list(user_texts), neighbors, stage)
        atomic_files = [out_dir / f"{name}.{suffix}" for suffix in ("inter", "item")]
        files = {p.name: sha256_file(stage.written(p)) for p in [*atomic_files, *paths.values()]
                 if stage.written(p).is_file()}
        manifest = {
            "format": FORMAT,
            "dataset": name,
            "embedder": emb.identity(),
            "embedder_request": request,
            "dim": int(item_vecs.shape[1]),
            "template": texts.template,
            "template_name": texts.template_label,
            "template_hash": fresh["template_hash"],
            "max_chars": fresh["max_chars"],
            "user_max_chars": fresh["user_max_chars"],
            "holdout": fresh["holdout"],
            "user_name_field": texts.name_field,
            "top_k": fresh["top_k"],
            "source": settings.source,
            "filters": None if filters is None else canon(dict(filters)),
            "counts": data.counts(),
            "data_hash": fresh["data_hash"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": files,
        }
        artifacts.write_manifest(out_dir, name, manifest, stage)
    return manifest


@contextlib.contextmanager
def _staging() -> Iterator[Path]:
    """A scratch folder in the system temp dir: nothing lands in the output folder unless a build happens."""
    path = Path(tempfile.mkdtemp(prefix="llmesr-staging-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _install(src: Path, dst: Path, stage: StagedFiles) -> None:
    """Stage a copy of ``src`` to replace ``dst``; identical files are left alone."""
    if dst.is_file() and sha256_file(dst) == sha256_file(src):
        return

    def copy(out) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)

    stage.write(dst, copy)
