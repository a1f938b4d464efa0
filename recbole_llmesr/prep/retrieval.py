"""Similar users for LLM-ESR's retrieval-augmented self-distillation.

:func:`similar_users` finds, for every user, the ``k`` most similar other users by cosine similarity of
their LLM user embeddings (faiss inner product on L2-normalised float32 vectors):

* up to ``exact_max`` users: exact search (``IndexFlatIP``, what the paper does);
* more: an approximate HNSW graph (``IndexHNSWFlat``) with ``efSearch`` high enough that recall@10
  against exact search stays at or above 0.95 (see ``tests/test_retrieval.py``).

The result is int64 ``[n, k]`` of row indices into ``embeddings``, most similar first, the query itself
never included (excluded by id, not by position: with duplicate vectors the query need not come first),
``-1`` where fewer than ``k`` others exist.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["similar_users", "recall_at_k", "available_cpus", "DEFAULT_EF_SEARCH", "DEFAULT_TOP_K",
           "DEFAULT_EXACT_MAX"]

#: Similar users kept per user (the paper keeps the top 100; the teacher reads the first ``sim_user_num``).
DEFAULT_TOP_K = 100
#: Exact search up to this many users, HNSW above.
DEFAULT_EXACT_MAX = 200_000
#: efSearch floor of the HNSW index; the actual value is ``max(DEFAULT_EF_SEARCH, 2 * (k + 1))``.
DEFAULT_EF_SEARCH = 128
#: efConstruction of the HNSW index (graph quality at build time).
DEFAULT_EF_CONSTRUCTION = 80
#: Queries per faiss search call (one progress-bar step).
DEFAULT_BATCH_SIZE = 4096


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2/v1 CPU quota if one is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = None
    try:  # cgroup v2
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            q, period = f.read().split()[:2]
            if q != "max":
                quota = int(q) / int(period)
    except (OSError, ValueError):
        try:  # cgroup v1
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", encoding="ascii") as f:
                q = int(f.read().strip())
            with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as f:
                period = int(f.read().strip())
            if q > 0 and period > 0:
                quota = q / period
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def _normalise(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"similar_users: embeddings must be 2-D [n, d], got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError("similar_users: embeddings have dimension 0")
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"similar_users: {len(bad)} rows hold NaN or inf (e.g. rows {bad[:5].tolist()})")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero vector stays zero (similarity 0 to everyone) instead of becoming NaN.
    x /= np.maximum(norms, np.float32(1e-12))
    return x


def _drop_self(ids: np.ndarray, first_row: int, k: int) -> np.ndarray:
    """Remove each query's own id (and faiss' -1 misses), keep order, cut to ``k``, pad with -1."""
    rows = np.arange(first_row, first_row + len(ids), dtype=np.int64)[:, None]
    keep = (ids != rows) & (ids >= 0)
    # Stable sort of the "drop" flags moves kept entries to the left in their original order.
    order = np.argsort(~keep, axis=1, kind="stable")
    packed = np.take_along_axis(ids, order, axis=1)
    counts = keep.sum(axis=1)
    packed[np.arange(packed.shape[1])[None, :] >= counts[:, None]] = -1
    out = np.full((len(ids), k), -1, dtype=np.int64)
    w = min(k, packed.shape[1])
    out[:, :w] = packed[:, :w]
    return out


def similar_users(embeddings: np.ndarray, k: int = DEFAULT_TOP_K, exact_max: int = DEFAULT_EXACT_MAX,
                  show_progress: bool = True, hnsw_m: int = 32, ef_search: Optional[int] = None, *,
                  ef_construction: int = DEFAULT_EF_CONSTRUCTION, batch_size: int = DEFAULT_BATCH_SIZE,
                  threads: Optional[int] = None) -> np.ndarray:
    """Top-``k`` most similar *other* rows of ``embeddings`` by cosine similarity.

    ``embeddings``: float ``[n, d]`` (normalised here; zero rows are allowed). Exact ``IndexFlatIP`` when
    ``n <= exact_max``, else ``IndexHNSWFlat(d, hnsw_m, METRIC_INNER_PRODUCT)`` searched with
    ``efSearch = ef_search or max(128, 2 * (k + 1))``. Each query asks for ``k + 1`` results and its own
    id is removed wherever it appears. ``threads`` (default: :func:`available_cpus`) sets faiss' OpenMP
    threads for the call. Returns int64 ``[n, k]``, ``-1`` padded.
    """
    import faiss
    from tqdm.auto import tqdm

    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"similar_users: k must be a positive integer, got {k!r}")
    if batch_size < 1:
        raise ValueError("similar_users: batch_size must be >= 1")
    x = _normalise(embeddings)
    n, d = x.shape
    out = np.full((n, int(k)), -1, dtype=np.int64)
    if n <= 1:
        return out
    kk = min(int(k) + 1, n)

    previous_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads) if threads else available_cpus())
    try:
        if n <= exact_max:
            index = faiss.IndexFlatIP(d)
            kind = "exact (IndexFlatIP)"
        else:
            index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            ef = int(ef_search) if ef_search else max(DEFAULT_EF_SEARCH, 2 * kk)
            index.hnsw.efSearch = max(ef, kk)
            kind = f"approximate (HNSW M={hnsw_m}, efSearch={index.hnsw.efSearch})"
        logger.info("similar users: %d users, %d-d, top %d, %s search", n, d, k, kind)
        if isinstance(index, faiss.IndexHNSWFlat):
            # Building the graph is the slow part of HNSW; add in chunks so the bar moves.
            with tqdm(total=n, desc="HNSW build", unit="user", disable=not show_progress) as bar:
                for s in range(0, n, 16 * batch_size):
                    index.add(x[s:s + 16 * batch_size])
                    bar.update(min(n, s + 16 * batch_size) - s)
        else:
            index.add(x)
        with tqdm(total=n, desc="similar users", unit="user", disable=not show_progress) as bar:
            for s in range(0, n, batch_size):
                _, ids = index.search(x[s:s + batch_size], kk)
                out[s:s + len(ids)] = _drop_self(ids.astype(np.int64, copy=False), s, int(k))
                bar.update(len(ids))
    finally:
        faiss.omp_set_num_threads(previous_threads)
    return out


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean over rows of ``|approx[:, :k] & exact[:, :k]| / |exact[:, :k]|`` (``-1`` entries ignored;
    rows whose exact list is empty are skipped)."""
    approx = np.asarray(approx)[:, :k]
    exact = np.asarray(exact)[:, :k]
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"recall_at_k: {approx.shape[0]} approximate rows but {exact.shape[0]} exact rows")
    total, rows = 0.0, 0
    for a, e in zip(approx, exact):
        truth = set(e[e >= 0].tolist())
        if not truth:
            continue
        total += len(truth & set(a[a >= 0].tolist())) / len(truth)
        rows += 1
    return total / rows if rows else 1.0
