"""Tests of recbole_llmesr.prep.artifacts: malformed LLM artefacts are refused when the dataset loads.

Each case loads the dataset the way ``run_recbole`` does and expects an error naming the file and the item,
user or setting at fault, with every artefact left as it was.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import build
from prep_helpers import run_recbole_cli_error, snapshot

from recbole_llmesr.prep import artifacts
from recbole_llmesr.prep.artifacts import ArtifactError


def artefact_error(tiny, match: str, error: type = ArtifactError) -> None:
    """Loading the dataset fails with ``match``, and leaves every artefact as it was."""
    before = snapshot(tiny["folder"])
    with pytest.raises(error, match=match):
        build("LLMESR_SASRec", tiny["config"])
    assert snapshot(tiny["folder"]) == before


def item_emb_path(tiny) -> Path:
    return artifacts.artifact_path(tiny["folder"], "tiny", artifacts.ITEM_EMB)


@pytest.mark.parametrize("what", ["rows", "tokens"])
def test_embedding_rows_disagree(what, tiny):
    items, emb = tiny["items"], tiny["item_emb"]
    if what == "rows":  # 30 tokens, 29 vectors: written by something other than save_embeddings
        np.savez(item_emb_path(tiny), tokens=np.asarray(items), embeddings=emb[:-1])
        artefact_error(tiny, r"tiny\.item_emb\.npz: 30 tokens but embeddings of shape \(29, 16\)")
    else:  # fewer rows than the manifest's 30 items: the missing one is named
        artifacts.save_embeddings(item_emb_path(tiny), items[1:], emb[1:])
        artifacts.write_manifest(tiny["folder"], "tiny", {"dim": 16, "counts": {"items": 30}})
        artefact_error(tiny, rf"tiny\.item_emb\.npz: 1 of 30 items in the dataset have no vector, e\.g\. {items[0]}")


def test_embedding_dimension_disagrees_with_manifest(tiny):
    artifacts.write_manifest(tiny["folder"], "tiny", {"dim": 17})
    artefact_error(tiny, r"tiny\.item_emb\.npz: embeddings have dimension 16, the manifest says 17")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_vectors(bad, tiny, capsys):
    emb = tiny["item_emb"].copy()
    emb[3, 2] = bad
    artifacts.save_embeddings(item_emb_path(tiny), tiny["items"], emb)
    artefact_error(tiny, rf"tiny\.item_emb\.npz: 1 rows hold NaN or inf, e\.g\. for tokens {tiny['items'][3]}")
    line = run_recbole_cli_error(capsys, "--model=LLMESR_SASRec", "--dataset=tiny",
                                 f"--data_path={tiny['config']['data_path']}")
    assert "NaN or inf" in line and tiny["items"][3] in line


@pytest.mark.parametrize("index", [40, -2])
def test_similar_user_index_out_of_range(index, tiny):
    path = artifacts.artifact_path(tiny["folder"], "tiny", artifacts.SIM_USERS)
    neighbors = tiny["neighbors"].copy()
    neighbors[5, 0] = index
    artifacts.save_neighbors(path, tiny["users"], neighbors)
    artefact_error(tiny, r"tiny\.sim_users\.npz: neighbour indices must lie in \[-1, 39\], found \[")


def test_users_without_similar_user_lists(tiny):
    # Users with no user embedding have no similar-user list either: the teacher would have no target.
    path = artifacts.artifact_path(tiny["folder"], "tiny", artifacts.SIM_USERS)
    keep = [i for i, u in enumerate(tiny["users"]) if u not in ("u7", "u8", "u9")]
    remap = -np.ones(len(tiny["users"]) + 1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    neighbors = remap[tiny["neighbors"][keep]]
    artifacts.save_neighbors(path, [tiny["users"][i] for i in keep], neighbors)
    artefact_error(tiny, r"tiny\.sim_users\.npz: 3 users have no similar-user list \(no user embedding\), "
                         r"e\.g\. u7, u8, u9")


@pytest.mark.parametrize("kind,what", [(artifacts.ITEM_EMB, "embedding"), (artifacts.SIM_USERS, "similar-user")])
def test_truncated_artefact_file(kind, what, tiny):
    path = artifacts.artifact_path(tiny["folder"], "tiny", kind)
    path.write_bytes(path.read_bytes()[:300])
    artefact_error(tiny, rf"tiny\.{kind.replace('.', '[.]')} is not a valid {what} file")


def test_corrupt_manifest(tiny):
    (tiny["folder"] / "tiny.llmesr.json").write_text('{"dim": 16, ')
    artefact_error(tiny, r"tiny\.llmesr\.json is not valid JSON")
