"""The LLM artefacts stored beside a dataset's atomic files, and their validation.

In ``<data_path>/<dataset>/``:

- ``<dataset>.item_emb.npz``: ``tokens`` (original item ids, unicode) and ``embeddings`` (float32 [n, d]).
- ``<dataset>.user_emb.npz``: the same for users (text of each user's training history).
- ``<dataset>.sim_users.npz``: ``tokens`` (user ids) and ``neighbors`` (int64 [n, k], row indices into
  ``tokens``, most similar first, the user itself excluded, -1 where fewer than k exist).
- ``<dataset>.llmesr.json``: the manifest (embedder, model, dimension, template hash, counts, data hash).

Everything is keyed by the *original* token, never by RecBole's internal id, which depends on load order.
"""
import json
import zipfile
from pathlib import Path
import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.fileio import StagedFiles, atomic_write

ITEM_EMB = "item_emb.npz"
USER_EMB = "user_emb.npz"
SIM_USERS = "sim_users.npz"
MANIFEST = "llmesr.json"

PathLike = Union[str, "os.PathLike[str]"]


class ArtifactError(LLMESRError, ValueError):
    """An LLM artefact is missing, malformed or disagrees with the dataset."""


def artifact_path(data_dir: PathLike, dataset: str, kind: str) -> Path:
    """Where artefact ``kind`` (:data:`ITEM_EMB`, ..., :data:`MANIFEST`) of ``dataset`` lives in ``data_dir``."""
    return Path(data_dir) / f"{dataset}.{kind}"


def _write(path: Path, write, stage: Optional[StagedFiles]) -> None:
    if stage is None:
        atomic_write(path, write)
    else:
        stage.write(path, write)


def save_embeddings(path: PathLike, tokens: Sequence[str], embeddings: np.ndarray,
                    stage: Optional[StagedFiles] = None) -> None:
    """Write ``tokens`` and their float32 ``embeddings`` (one row each) atomically (or into ``stage``, to be
    renamed into place with the files staged beside it)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    tokens = np.asarray([str(t) for t in tokens], dtype=np.str_)
    if embeddings.ndim != 2 or len(tokens) != len(embeddings):
        raise ArtifactError(f"{path}: {len(tokens)} tokens for embeddings of shape {embeddings.shape}")
    _write(Path(path), lambda f: np.savez(f, tokens=tokens, embeddings=embeddings), stage)


def _load_pair(path: Path, values: str, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(tokens, <values>)`` of an artefact file; a missing or unreadable file is an :class:`ArtifactError`."""
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; run `llmesr-prepare` for this dataset first")
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["tokens"], data[values]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # truncated files: BadZipFile
        raise ArtifactError(f"{path} is not a valid {what} file (tokens + {values}): {err}; rebuild it with "
                            f"`llmesr-prepare --force`") from err


def load_embeddings(path: PathLike, expected_dim: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Read and validate an embedding file: 2-D, finite, one row per unique token."""
    path = Path(path)
    tokens, emb = _load_pair(path, "embeddings", "embedding")
    if emb.ndim != 2 or len(tokens) != len(emb):
        raise ArtifactError(f"{path}: {len(tokens)} tokens but embeddings of shape {emb.shape}")
    if expected_dim is not None and emb.shape[1] != expected_dim:
        raise ArtifactError(f"{path}: embeddings have dimension {emb.shape[1]}, the manifest says {expected_dim}")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        shown = ", ".join(map(str, tokens[bad][:5]))
        raise ArtifactError(f"{path}: {int(bad.sum())} rows hold NaN or inf, e.g. for tokens {shown}")
    if len(np.unique(tokens)) != len(tokens):
        raise ArtifactError(f"{path}: duplicate tokens")
    return tokens, emb.astype(np.float32, copy=False)


def save_neighbors(path: PathLike, tokens: Sequence[str], neighbors: np.ndarray,
                   stage: Optional[StagedFiles] = None) -> None:
    """Write ``tokens`` and their int64 neighbour rows atomically (or into ``stage``)."""
    neighbors = np.asarray(neighbors, dtype=np.int64)
    tokens = np.asarray([str(t) for t in tokens], dtype=np.str_)
    _write(Path(path), lambda f: np.savez(f, tokens=tokens, neighbors=neighbors), stage)


def load_neighbors(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read and validate a similar-user file: one row of row indices (or -1) per token."""
    path = Path(path)
    tokens, neighbors = _load_pair(path, "neighbors", "similar-user")
    if neighbors.ndim != 2 or len(neighbors) != len(tokens):
        raise ArtifactError(f"{path}: {len(tokens)} users but a neighbour table of shape {neighbors.shape}")
    if neighbors.size and (neighbors.min() < -1 or neighbors.max() >= len(tokens)):
        raise ArtifactError(
            f"{path}: neighbour indices must lie in [-1, {len(tokens) - 1}], found "
            f"[{neighbors.min()}, {neighbors.max()}]"
        )
    return tokens, neighbors


def read_manifest(data_dir: PathLike, dataset: str) -> Optional[dict]:
    """The dataset's manifest, None when there is none."""
    path = artifact_path(data_dir, dataset, MANIFEST)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from err


def write_manifest(data_dir: PathLike, dataset: str, manifest: dict, stage: Optional[StagedFiles] = None) -> None:
    """Write the dataset's manifest atomically (or into ``stage``)."""
    text = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    _write(artifact_path(data_dir, dataset, MANIFEST), lambda f: f.write(text), stage)


def align_rows(tokens: np.ndarray, vectors: np.ndarray, id2token: Sequence[str], what: str,
               source: object) -> np.ndarray:
    """Rows of ``vectors`` ordered by RecBole internal id; row 0 ([PAD]) is zero.

    ``id2token`` is RecBole's ``field2id_token[field]``. Every real id must have a vector.
    """
    index = {t: i for i, t in enumerate(tokens.tolist())}
    wanted = list(id2token[1:])
    missing = [t for t in wanted if t not in index]
    if missing:
        shown = ", ".join(missing[:10])
        raise ArtifactError(
            f"{source}: {len(missing)} of {len(wanted)} {what}s in the dataset have no vector, e.g. {shown}. "
            f"Rebuild the artefacts with `llmesr-prepare` for this dataset."
        )
    out = np.zeros((len(id2token), vectors.shape[1]), dtype=np.float32)
    out[1:] = vectors[[index[t] for t in wanted]]
    return out
