"""Embedding many texts: each distinct text once, through the cache, several requests at a time."""
from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Dict, List, Optional, Sequence

import numpy as np

from recbole_llmesr.prep.embedders.base import Embedder, EmbeddingAPIError, EmbeddingError, EmbeddingResponseError
from recbole_llmesr.prep.embedders.cache import EmbeddingCache

logger = logging.getLogger(__name__)


def embed_texts(embedder: Embedder, texts: Sequence[str], cache: Optional[EmbeddingCache], *,
                show_progress: bool = True, desc: str = "embedding") -> np.ndarray:
    """Embed ``texts`` (rows in input order), using and filling ``cache``.

    Each distinct text is embedded once; cached texts are not sent again; the rest go out in
    ``embedder.batches`` groups, up to ``embedder.max_concurrency`` at a time, and every completed
    batch is written to the cache as soon as it arrives. On a failure, batches already in flight are
    still awaited and cached, then the error is raised with the number of texts safely cached — so
    rerunning the same call resumes and pays only for what is missing.
    """
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"embed_texts expects strings, got {type(t).__name__}")
    if cache is not None and cache.identity != embedder.identity():
        raise ValueError(f"cache identity {cache.identity} does not match embedder {embedder.identity()}")
    dim = int(embedder.dim)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)

    first: Dict[str, int] = {}
    inverse = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        inverse[i] = first.setdefault(t, len(first))
    unique = list(first)
    result = np.empty((len(unique), dim), dtype=np.float32)
    cached = cache.get_many(unique) if cache is not None else {}
    for i, v in cached.items():
        result[i] = v
    missing = [i for i in range(len(unique)) if i not in cached]
    batches = [[missing[j] for j in b] for b in embedder.batches([unique[i] for i in missing])]
    logger.info("%s: %d texts, %d unique, %d cached, %d to embed in %d batch(es) with %s",
                desc, len(texts), len(unique), len(cached), len(missing), len(batches), embedder)

    done = len(cached)

    def finish(batch: List[int], vecs: np.ndarray) -> None:
        nonlocal done
        vecs = np.asarray(vecs, dtype=np.float32)
        if vecs.shape != (len(batch), dim) or not np.isfinite(vecs).all():
            raise EmbeddingResponseError(
                f"embedder returned {vecs.shape} (or non-finite values) for a batch of {len(batch)}")
        result[batch] = vecs
        if cache is not None:
            cache.put_many([unique[i] for i in batch], vecs)
        done += len(batch)

    def fail(exc: EmbeddingError) -> None:
        saved = done if cache is not None else 0
        if isinstance(exc, EmbeddingAPIError):
            exc.cached_texts = saved
        if cache is not None:
            note = (f"{saved} of {len(unique)} unique texts are cached in {cache.dir}; once the cause is "
                    f"fixed, rerunning embeds only the remaining {len(unique) - saved}.")
        else:
            note = "no cache was given, so nothing was kept."
        exc.args = (f"{exc.args[0] if exc.args else exc} — {note}",) + exc.args[1:]

    from tqdm.auto import tqdm

    with tqdm(total=len(missing), desc=desc, unit="text", disable=not show_progress) as bar:
        if embedder.max_concurrency <= 1 or len(batches) <= 1:
            for batch in batches:
                try:
                    vecs = embedder.embed_batch([unique[i] for i in batch])
                    finish(batch, vecs)
                except EmbeddingError as exc:
                    fail(exc)
                    raise
                bar.update(len(batch))
        else:
            pool = ThreadPoolExecutor(max_workers=embedder.max_concurrency, thread_name_prefix="embed")
            pending: Dict[Future, List[int]] = {}
            todo = iter(batches)
            error: Optional[BaseException] = None
            try:
                # Submit lazily (window = concurrency) so a failure stops new paid requests at once.
                for batch in todo:
                    pending[pool.submit(embedder.embed_batch, [unique[i] for i in batch])] = batch
                    if len(pending) >= embedder.max_concurrency:
                        break
                while pending:
                    finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in finished:
                        batch = pending.pop(fut)
                        try:
                            finish(batch, fut.result())
                            bar.update(len(batch))
                        except BaseException as exc:  # noqa: BLE001 - remembered, re-raised below
                            if error is None:
                                error = exc
                    if error is None:
                        for batch in todo:
                            pending[pool.submit(embedder.embed_batch, [unique[i] for i in batch])] = batch
                            if len(pending) >= embedder.max_concurrency:
                                break
                # Loop ends when nothing is pending: after an error, in-flight batches are drained
                # (and cached) but no new ones are started.
            except BaseException:  # KeyboardInterrupt: do not wait for in-flight requests
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
            if error is not None:
                if isinstance(error, EmbeddingError):
                    fail(error)
                raise error
    return result[inverse]


def embed_by_length(embedder: Embedder, texts: List[str], cache: Optional[EmbeddingCache], *,
                    show_progress: bool = True, desc: str = "embedding") -> np.ndarray:
    """:func:`embed_texts` with the texts sent shortest first, rows returned in the input order.

    A local model pads every batch to its longest text; batching texts of similar length wastes far
    less compute (user histories range from a few words to the model's maximum)."""
    order = np.argsort(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")
    vecs = embed_texts(embedder, [texts[i] for i in order], cache, show_progress=show_progress, desc=desc)
    out = np.empty_like(vecs)
    out[order] = vecs
    return out
