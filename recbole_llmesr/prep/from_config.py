"""The RecBole side of preparation: the one place that reads a RecBole config's preparation keys.

:func:`settings_from_config` turns a config into :class:`~recbole_llmesr.prep.settings.PrepareSettings`;
:func:`ensure_prepared` is what the runner (``run_recbole``, ``llmesr-compare``) calls before loading the
dataset of a model whose class says ``uses_llm_artifacts = True``.

A key that is missing or ``~`` (None) takes the :class:`~recbole_llmesr.prep.settings.PrepareSettings`
default; ``properties/model/LLMESR.yaml`` lists the keys for RecBole users, and where it states a value it is
that default (``tests/test_from_config.py`` checks it). The config is only duck-typed (``config[key]``,
``unredacted``, ``external_config_dict``): nothing here imports the plugin's config or models.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Dict, List

from recbole_llmesr.prep import artifacts
from recbole_llmesr.prep.inputs import check_in_place
from recbole_llmesr.prep.pipeline import DEFAULT_OUT_ROOT, prepare_folder
from recbole_llmesr.prep.readers import ml100k_dir
from recbole_llmesr.prep.settings import PrepareSettings

logger = logging.getLogger(__name__)

#: RecBole config key -> :class:`PrepareSettings` field.
CONFIG_KEYS: Dict[str, str] = {
    "embedder": "embedder",
    "embedder_model": "embedder_model",
    "embedder_base_url": "base_url",
    "embedder_dim": "dim",
    "text_template": "template",
    "text_max_chars": "max_chars",
    "user_text_max_chars": "user_max_chars",
    "user_holdout": "holdout",
    "sim_top_k": "top_k",
    "embedding_cache_dir": "cache_dir",
    "show_progress": "show_progress",
}
#: RecBole's field-name keys -> the atomic reader's inputs.
_FIELD_KEYS = (("USER_ID_FIELD", "user_field"), ("ITEM_ID_FIELD", "item_field"), ("TIME_FIELD", "time_field"),
               ("RATING_FIELD", "rating_field"))


def _get(config: Any, key: str) -> Any:
    """``config[key]``, None when missing (RecBole's Config answers None; a plain dict raises)."""
    try:
        return config[key]
    except KeyError:
        return None


def _unredacted(config: Any, key: str) -> Any:
    """``config[key]`` with the URL credentials that the plugin's config hides from its dumps put back:
    connecting needs them."""
    unredacted = getattr(config, "unredacted", None)
    return unredacted(key) if unredacted is not None else _get(config, key)


def settings_from_config(config: Any) -> PrepareSettings:
    """The preparation settings a RecBole config asks for (see :data:`CONFIG_KEYS`)."""
    values = {}
    for key, name in CONFIG_KEYS.items():
        value = _unredacted(config, key) if key == "embedder_base_url" else _get(config, key)
        if value is not None:
            values[name] = bool(value) if name == "show_progress" else value
    return PrepareSettings(**values)


def _switched_on(config: Any, key: str) -> bool:
    """A model switch that a config without the key leaves on."""
    value = _get(config, key)
    return value is None or bool(value)


def needed_artifacts(config: Any) -> List[str]:
    """The artefacts the configured model reads: item embeddings for the semantic view or the PCA
    initialisation, similar users for distillation."""
    needed = []
    if _switched_on(config, "use_semantic_view") or _get(config, "id_init") == "pca":
        needed.append(artifacts.ITEM_EMB)
    if _switched_on(config, "use_distillation"):
        needed.append(artifacts.SIM_USERS)
    return needed


def _data_root(config: Any) -> str:
    """The data folder the user configured (RecBole replaces data_path by the bundled ml-100k)."""
    root = _get(config, "data_root")
    if root:
        return str(root)
    # RecBole keeps the merged-in settings apart from final_config_dict, whose data_path it rewrote.
    for attr in ("external_config_dict", "internal_config_dict"):
        value = (vars(config).get(attr) or {}).get("data_path") if hasattr(config, "__dict__") else None
        if value:
            return str(value)
    return DEFAULT_OUT_ROOT


def _reader_fields(config: Any) -> Dict[str, str]:
    """The atomic reader's field-name inputs for the fields the config names."""
    return {field: _get(config, key) for key, field in _FIELD_KEYS if _get(config, key)}


def check_dataset_files(config: Any) -> None:
    """Refuse atomic files of ``config["dataset"]`` that RecBole would misread, with file and line
    (:mod:`recbole_llmesr.prep.readers.check`); absent files are RecBole's to report."""
    check_in_place(Path(config["data_path"]), config["dataset"], _reader_fields(config),
                   sep=_get(config, "field_separator") or "\t", encoding=_get(config, "encoding") or "utf-8")


def ensure_prepared(config: Any) -> None:
    """Make sure ``config["data_path"]`` holds fresh LLM artefacts for ``config["dataset"]``; build them if
    not, with the settings of :func:`settings_from_config`.

    * ml-100k read from RecBole's bundled copy is first converted into ``<data root>/ml-100k`` and
      ``config["data_path"]`` is pointed there.
    * Any other dataset is used in place: its atomic files are read, never rewritten.
    * Artefacts present *without* a manifest were made by other means and are left alone.
    """
    name = config["dataset"]
    data_path = Path(config["data_path"])
    check_dataset_files(config)
    needed = needed_artifacts(config)
    if not needed:
        logger.info("%s: this configuration uses no LLM artefacts (no semantic view, no PCA init, no "
                    "distillation); nothing to prepare", name)
        return
    settings = settings_from_config(config)
    sim_user_num = _get(config, "sim_user_num")
    if sim_user_num is not None and settings.top_k < int(sim_user_num):
        logger.warning("sim_top_k=%s is smaller than sim_user_num=%s: the teacher gets at most %s similar users",
                       settings.top_k, sim_user_num, settings.top_k)

    if name == "ml-100k" and data_path.exists() and os.path.realpath(data_path) == os.path.realpath(ml100k_dir()):
        target = Path(_data_root(config)) / "ml-100k"
        logger.info("ml-100k: converting RecBole's bundled copy into %s", target)
        prepare_folder(name, target, settings)
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
    inputs = {"inter": str(data_path), **_reader_fields(config)}
    prepare_folder(name, data_path, dataclasses.replace(settings, inputs=inputs))
