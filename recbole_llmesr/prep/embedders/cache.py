"""The on-disk embedding cache: every embedded text is stored once per embedding space, so an interrupted
run resumes and never pays for the same text twice."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from recbole_llmesr.fileio import DISK_ERRNOS, WriteError, atomic_write, write_error
from recbole_llmesr.prep.embedders.base import CacheWriteError

logger = logging.getLogger(__name__)


def default_cache_root() -> Path:
    """``$RECBOLE_LLMESR_CACHE`` or ``~/.cache/recbole_llmesr``, user-expanded."""
    return Path(os.path.expanduser(os.environ.get("RECBOLE_LLMESR_CACHE", "~/.cache/recbole_llmesr")))


def text_key(text: str) -> str:
    """Cache key of a text: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def identity_slug(identity: Dict[str, Any]) -> str:
    """Directory name for an identity: readable prefix + hash of the full canonical JSON."""
    canon = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", str(identity.get("model", ""))).strip("-.")[-60:] or "model"
    kind = re.sub(r"[^A-Za-z0-9._-]+", "-", str(identity.get("kind", "embedder")))
    return f"{kind}__{model}__d{identity.get('dim', 'x')}__{digest}"


def _cache_error(err: WriteError) -> CacheWriteError:
    return CacheWriteError(f"embedding cache: {err}; or put the cache elsewhere ($RECBOLE_LLMESR_CACHE, "
                           f"llmesr-prepare --cache-dir, or embedding_cache_dir for run_recbole)")


class EmbeddingCache:
    """On-disk cache of embeddings, keyed by (embedder identity, sha256 of text).

    Layout::

        <root>/<identity slug>/identity.json          the identity (no secrets), for humans
        <root>/<identity slug>/chunk-<ns>-<rand>.npz  one per put_many(): keys <U64 hex, vectors float32

    Chunks are written to a temp file in the same directory, fsynced, then ``os.replace``d, so a
    crash leaves either a whole chunk or none. A chunk that still fails to load (truncated, corrupt,
    wrong shape) is moved aside to ``*.corrupt`` with a warning and its texts are simply missing,
    so they get re-embedded. Several processes may share a directory: names never collide and new
    chunks written by others are picked up on the next lookup.
    """

    def __init__(self, root: "str | os.PathLike[str]", identity: Dict[str, Any]) -> None:
        self.identity = dict(identity)
        self.root = Path(root).expanduser()
        self.dir = self.root / identity_slug(self.identity)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            if err.errno not in DISK_ERRNOS:
                raise
            raise _cache_error(write_error(self.dir, err)) from err
        self._dim = self.identity.get("dim")
        self._lock = threading.Lock()
        self._chunks: List[np.ndarray] = []
        self._index: Dict[str, Tuple[int, int]] = {}
        self._seen: set[str] = set()
        manifest = self.dir / "identity.json"
        if not manifest.exists():
            text = json.dumps(self.identity, sort_keys=True, indent=2).encode("utf-8")
            self._write(manifest, lambda f: f.write(text))

    @staticmethod
    def _write(path: Path, write) -> None:
        try:
            atomic_write(path, write)
        except WriteError as err:
            raise _cache_error(err) from err

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._index)

    def _load_chunk(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = np.asarray(z["keys"])
                vectors = np.asarray(z["vectors"])
            if keys.ndim != 1 or keys.dtype.kind != "U":
                raise ValueError(f"bad keys array {keys.dtype} {keys.shape}")
            if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != keys.shape[0]:
                raise ValueError(f"bad vectors array {vectors.dtype} {vectors.shape} for {keys.shape[0]} keys")
            if self._dim is not None and vectors.shape[1] != int(self._dim):
                raise ValueError(f"vectors are {vectors.shape[1]}-d, identity says {self._dim}")
            if not np.isfinite(vectors).all():
                raise ValueError("vectors contain NaN or inf")
        except Exception as exc:  # noqa: BLE001 - any unreadable chunk is handled the same way
            aside = path.with_name(path.name + ".corrupt")
            logger.warning("embedding cache chunk %s is unreadable (%s: %s); moving it to %s, its texts "
                           "will be re-embedded", path, type(exc).__name__, exc, aside.name)
            try:
                os.replace(path, aside)
            except OSError:
                pass
            return
        self._add(keys, vectors)

    def _add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        ci = len(self._chunks)
        self._chunks.append(vectors)
        for row, k in enumerate(keys.tolist()):
            self._index[k] = (ci, row)

    def _refresh(self) -> None:
        for path in sorted(self.dir.glob("chunk-*.npz")):
            if path.name not in self._seen:
                self._seen.add(path.name)
                self._load_chunk(path)

    def get_many(self, texts: Sequence[str]) -> Dict[int, np.ndarray]:
        """Return ``{index in texts: vector}`` for the texts already cached."""
        with self._lock:
            self._refresh()
            found: Dict[int, np.ndarray] = {}
            for i, t in enumerate(texts):
                hit = self._index.get(text_key(t))
                if hit is not None:
                    found[i] = self._chunks[hit[0]][hit[1]]
            return found

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Durably and atomically store one chunk of ``(text, vector)`` pairs."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(f"put_many: {len(texts)} texts but vectors of shape {vectors.shape}")
        if self._dim is not None and vectors.shape[1] != int(self._dim):
            raise ValueError(f"put_many: {vectors.shape[1]}-d vectors for a {self._dim}-d cache")
        if not texts:
            return
        keys = np.array([text_key(t) for t in texts], dtype="<U64")
        name = f"chunk-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        with self._lock:
            self._write(self.dir / name, lambda f: np.savez(f, keys=keys, vectors=vectors))
            self._seen.add(name)
            self._add(keys, vectors.copy())
