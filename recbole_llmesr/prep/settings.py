"""Every setting of a preparation, in one frozen value: :class:`PrepareSettings`.

Its field defaults are the only place the defaults are written: :func:`~recbole_llmesr.prep.pipeline.prepare`,
``llmesr-prepare`` and the RecBole-config adapter (:mod:`~recbole_llmesr.prep.from_config`) all start from
them (the numbers themselves belong to the module whose behaviour they set: text budgets to
:mod:`~recbole_llmesr.prep.text`, the neighbour search to :mod:`~recbole_llmesr.prep.retrieval`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.prep import retrieval
from recbole_llmesr.prep import text as T
from recbole_llmesr.prep.embedders import DEFAULT_KIND, default_cache_root, normalise_kind
from recbole_llmesr.prep.inputs import SOURCES, SourceError

#: Default user-text budget per embedder kind. all-MiniLM-L6-v2 reads 256 word pieces (about 1000
#: characters of English) and its tokenizer cuts from the end, so a longer text would lose exactly the
#: most recent items and only cost tokenisation time. OpenAI models read 8191 tokens: the paper's budget.
USER_TEXT_CHARS: Dict[str, int] = {"sentence-transformers": 1000, "openai": T.USER_TEXT_MAX_CHARS,
                                   "openai-compatible": T.USER_TEXT_MAX_CHARS}


class PrepareSettingsError(LLMESRError, ValueError):
    """A preparation setting is out of range or of the wrong type."""


def _check_count(value: Any, what: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        kind = "non-negative" if allow_zero else "positive"
        raise PrepareSettingsError(f"{what} must be a {kind} integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class PrepareSettings:
    """What to read, how to embed it and how to run; validated (and counts made ``int``) on creation.

    ``source``/``inputs``: see :func:`~recbole_llmesr.prep.inputs.read_source`. ``embedder``: a kind
    (aliases accepted), with ``embedder_model``, ``base_url`` and ``dim`` as for
    :func:`~recbole_llmesr.prep.embedders.build_embedder`. ``template``: ``"auto"``, a template name or a
    literal template string. ``max_chars``: item text budget; ``user_max_chars``: user text budget, None for
    the embedder kind's (:data:`USER_TEXT_CHARS`); ``holdout``: last items of each user left out of the user
    text. ``filters``: None for the source's default (:data:`~recbole_llmesr.prep.inputs.DEFAULT_FILTERS`).
    ``top_k`` similar users per user, exact search up to ``exact_max`` users. ``cache_dir``: None for
    :func:`~recbole_llmesr.prep.embedders.default_cache_root`. ``dry_run`` only estimates; ``force``
    rebuilds even fresh outputs.
    """

    source: str = "atomic"
    inputs: Mapping[str, Any] = field(default_factory=dict)
    embedder: str = DEFAULT_KIND
    embedder_model: Optional[str] = None
    base_url: Optional[str] = field(default=None, repr=False)  # may carry user:password
    dim: Optional[int] = None
    template: str = T.AUTO_TEMPLATE
    max_chars: int = T.ITEM_TEXT_MAX_CHARS
    user_max_chars: Optional[int] = None
    holdout: int = T.DEFAULT_HOLDOUT
    filters: Optional[Mapping[str, Any]] = None
    top_k: int = retrieval.DEFAULT_TOP_K
    exact_max: int = retrieval.DEFAULT_EXACT_MAX
    cache_dir: Any = None
    dry_run: bool = False
    force: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise SourceError(f"unknown source {self.source!r}; expected one of {SOURCES}")
        # Frozen: the checked, plain-int values replace the given ones through object.__setattr__.
        checked: Dict[str, Any] = {
            "inputs": dict(self.inputs or {}),
            "filters": None if self.filters is None else dict(self.filters),
            "max_chars": _check_count(self.max_chars, "max_chars"),
        }
        normalise_kind(self.embedder)
        if self.user_max_chars:  # 0, like None, means the embedder kind's budget
            checked["user_max_chars"] = _check_count(self.user_max_chars, "user_max_chars")
        checked["holdout"] = _check_count(self.holdout, "holdout", allow_zero=True)
        checked["top_k"] = _check_count(self.top_k, "top_k")
        checked["exact_max"] = _check_count(self.exact_max, "exact_max", allow_zero=True)
        if self.dim is not None:
            checked["dim"] = _check_count(self.dim, "dim")
        if self.template != T.AUTO_TEMPLATE:
            T.get_template(self.template)  # fail on a bad template before reading anything
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def kind(self) -> str:
        """The embedder kind, canonical."""
        return normalise_kind(self.embedder)

    @property
    def user_text_chars(self) -> int:
        """The user text budget: ``user_max_chars``, else the embedder kind's."""
        return self.user_max_chars or USER_TEXT_CHARS[self.kind]

    @property
    def cache_root(self) -> Path:
        """The embedding cache folder."""
        return Path(os.path.expanduser(os.fspath(self.cache_dir))) if self.cache_dir else default_cache_root()

    @property
    def progress(self) -> Optional[bool]:
        """The readers' ``progress``: None = a bar for large files only."""
        return None if self.show_progress else False
