"""Tests of recbole_llmesr.prep.from_config: the runner's preparation from a RecBole config.

Real RecBole configs and datasets; the ml-100k texts go through the real offline model.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import yaml
from conftest import FAST, write_tiny_dataset
from prep_helpers import ST_IDENTITY, settings_of, sha

from recbole_llmesr.prep import artifacts
from recbole_llmesr.prep.freshness import LOCK_NAME, is_fresh
from recbole_llmesr.prep.from_config import CONFIG_KEYS, ensure_prepared, settings_from_config
from recbole_llmesr.prep.settings import PrepareSettings


# ----------------------------------------------------------------------------------------- settings


def test_yaml_states_no_default_of_its_own():
    # The YAML lists the keys for RecBole users; a value it states must be PrepareSettings' own default.
    props = Path(__file__).resolve().parents[1] / "properties" / "model" / "LLMESR.yaml"
    stated = yaml.safe_load(props.read_text(encoding="utf-8"))
    defaults = {f.name: f.default for f in dataclasses.fields(PrepareSettings)}
    for key, name in CONFIG_KEYS.items():
        if key in stated and stated[key] is not None:
            assert stated[key] == defaults[name], (key, stated[key], defaults[name])


def test_missing_or_null_keys_take_the_defaults():
    assert settings_from_config({}) == PrepareSettings()
    assert settings_from_config({key: None for key in CONFIG_KEYS}) == PrepareSettings()
    got = settings_from_config({"sim_top_k": 7, "text_max_chars": 300, "embedder": "st", "show_progress": 0})
    assert (got.top_k, got.max_chars, got.kind, got.show_progress) == (7, 300, "sentence-transformers", False)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        settings_from_config({"sim_top_k": 0})


# ------------------------------------------------------------------------------------- RecBole hook


def test_ensure_prepared_ml100k_end_to_end(shared_cache):
    from recbole_llmesr.config import RECBOLE_ML100K_DIR, LLMESRConfig
    from recbole_llmesr.registry import create_dataset

    # All 2.6k texts go through the real model. User texts are capped at 200 characters (~50 tokens; by
    # default most ml-100k users fill MiniLM's 256) to keep this test under a minute on 2 CPU cores.
    cfg = {"embedding_cache_dir": str(shared_cache), "show_progress": False, "user_text_max_chars": 200}
    config = LLMESRConfig(model="LLMESR_SASRec", dataset="ml-100k", config_dict=cfg)
    assert Path(config["data_path"]) == RECBOLE_ML100K_DIR
    wheel_files = {p.name: sha(p) for p in RECBOLE_ML100K_DIR.iterdir() if p.is_file()}
    ensure_prepared(config)
    folder = Path("dataset_atomic") / "ml-100k"
    assert Path(config["data_path"]) == folder
    m = artifacts.read_manifest(folder, "ml-100k")
    assert m["counts"] == {"users": 943, "items": 1682, "interactions": 100000}
    assert m["template_name"] == "movie" and m["user_name_field"] == "movie_title"
    assert m["embedder"] == ST_IDENTITY and m["user_max_chars"] == 200 and is_fresh(folder, "ml-100k", settings_of(m))
    assert {p.name: sha(p) for p in RECBOLE_ML100K_DIR.iterdir() if p.is_file()} == wheel_files

    # the next run finds the prepared copy (RecBole's config does) and leaves it alone
    config2 = LLMESRConfig(model="LLMESR_SASRec", dataset="ml-100k", config_dict=cfg)
    assert Path(config2["data_path"]) == folder
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    ensure_prepared(config2)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before

    # and the plugin's dataset loads the artefacts
    data = create_dataset(config2)
    assert tuple(data.llm_item_emb.shape) == (data.item_num, 384)
    assert data.sim_users.shape[0] == data.user_num and data.sim_users.shape[1] == 100


def test_ensure_prepared_in_place_never_rewrites_atomic_files(tmp_path, shared_cache):
    from recbole_llmesr.config import LLMESRConfig

    root = tmp_path / "dataset_atomic"
    folder = write_tiny_dataset(root, "tiny", n_users=30, n_items=25, seed=3)
    original = {f: (folder / f).read_bytes() for f in ("tiny.inter", "tiny.item")}
    config = LLMESRConfig(model="LLMESR_SASRec", dataset="tiny",
                          config_dict={**FAST, "data_path": str(root), "embedding_cache_dir": str(shared_cache),
                                       "sim_top_k": 20, "text_template": "movie-ish: {title}"})
    ensure_prepared(config)
    assert {f: (folder / f).read_bytes() for f in original} == original
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [LOCK_NAME]
    m = artifacts.read_manifest(folder, "tiny")
    assert m["top_k"] == 20 and m["template"] == "movie-ish: {title}" and is_fresh(folder, "tiny", settings_of(m))
    assert m["files"]["tiny.inter"] == hashlib.sha256(original["tiny.inter"]).hexdigest()
    assert config["data_path"] == str(folder)


def test_ensure_prepared_keeps_artefacts_made_elsewhere(tiny):
    from recbole_llmesr.config import LLMESRConfig

    before = {p.name: sha(p) for p in tiny["folder"].iterdir()}
    config = LLMESRConfig(model="LLMESR_SASRec", dataset="tiny", config_dict=tiny["config"])
    ensure_prepared(config)
    assert {p.name: sha(p) for p in tiny["folder"].iterdir()} == before


def test_ensure_prepared_skips_configs_without_llm_parts(tmp_path):
    from recbole_llmesr.config import LLMESRConfig

    root = tmp_path / "dataset_atomic"
    folder = write_tiny_dataset(root, "tiny")
    config = LLMESRConfig(model="LLMESR_SASRec", dataset="tiny",
                          config_dict={**FAST, "data_path": str(root), "use_semantic_view": False,
                                       "id_init": "random", "use_distillation": False})
    ensure_prepared(config)
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.inter", "tiny.item"]


def test_run_recbole_builds_missing_artefacts(tmp_path, shared_cache):
    from recbole_llmesr.quick_start import run_recbole

    root = tmp_path / "dataset_atomic"
    folder = write_tiny_dataset(root, "tiny", n_users=30, n_items=25, seed=3)
    cfg = {**FAST, "epochs": 1, "data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"),
           "embedding_cache_dir": str(shared_cache), "sim_top_k": 10}
    result = run_recbole(model="LLMESR_SASRec", dataset="tiny", config_dict=cfg)
    assert "ndcg@10" in result["test_result"]
    m = artifacts.read_manifest(folder, "tiny")
    assert m is not None and m["top_k"] == 10 and is_fresh(folder, "tiny", settings_of(m))
