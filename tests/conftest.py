"""Shared fixtures: tiny synthetic datasets written in RecBole's atomic format, with LLM artefacts."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from recbole_llmesr.prep import artifacts

# Each test gets a config with few epochs and no progress bars; RecBole also reads sys.argv.
FAST = {
    "epochs": 2, "hidden_size": 8, "inner_size": 16, "show_progress": False, "train_batch_size": 64,
    "eval_batch_size": 256, "seed": 7, "stopping_step": 2,
}
#: RECBOLE_LLMESR_TEST_GPU=1 (benchmarks/gpu_check.sh) trains the tests' runs on GPU 0; otherwise on the CPU, even
#: where CUDA exists (RecBole's default would pick the GPU, and the exact-reproduction tests assume the CPU).
TEST_GPU = os.environ.get("RECBOLE_LLMESR_TEST_GPU", "") not in ("", "0")
FAST.update({"use_gpu": True, "gpu_id": "0"} if TEST_GPU else {"use_gpu": False})


def write_tiny_dataset(root: Path, name: str = "tiny", n_users: int = 40, n_items: int = 30, seed: int = 0) -> Path:
    """Users walk through items with a preference for a cluster, so models can learn something."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        length = int(rng.integers(5, 14))
        start = int(rng.integers(0, n_items))
        items = [(start + int(step)) % n_items for step in np.cumsum(rng.integers(1, 3, size=length))]
        lines += [f"u{u}\ti{it}\t{t}" for t, it in enumerate(items)]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    item_lines = ["item_id:token\ttitle:token"] + [f"i{i}\titem number {i}" for i in range(n_items)]
    (folder / f"{name}.item").write_text("\n".join(item_lines) + "\n")
    return folder


def write_artifacts(folder: Path, name: str = "tiny", dim: int = 16, seed: int = 0, shuffle: bool = True) -> dict:
    """Unit-norm random item embeddings and brute-force similar users, keyed by original tokens."""
    rng = np.random.default_rng(seed)
    items = sorted({line.split("\t")[1] for line in (folder / f"{name}.inter").read_text().splitlines()[1:]})
    users = sorted({line.split("\t")[0] for line in (folder / f"{name}.inter").read_text().splitlines()[1:]})
    emb = rng.normal(size=(len(items), dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    order = rng.permutation(len(items)) if shuffle else np.arange(len(items))
    artifacts.save_embeddings(
        artifacts.artifact_path(folder, name, artifacts.ITEM_EMB), [items[i] for i in order], emb[order]
    )
    user_emb = rng.normal(size=(len(users), dim))
    sims = user_emb @ user_emb.T
    np.fill_diagonal(sims, -np.inf)
    neighbors = np.argsort(-sims, axis=1)[:, : min(100, len(users) - 1)]
    artifacts.save_neighbors(artifacts.artifact_path(folder, name, artifacts.SIM_USERS), users, neighbors)
    return {"items": items, "item_emb": emb, "users": users, "neighbors": neighbors}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run every test in its own folder (RecBole writes log/ and saved/ to the cwd) with a clean argv."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])


@pytest.fixture
def tiny(tmp_path):
    """A tiny dataset with artefacts; returns the config_dict that points RecBole at it."""
    root = tmp_path / "dataset_atomic"
    folder = write_tiny_dataset(root)
    info = write_artifacts(folder)
    return {
        "config": {**FAST, "data_path": str(root), "checkpoint_dir": str(tmp_path / "saved")}, "folder": folder, **info
    }


def build(model: str, config_dict: dict, dataset: str = "tiny"):
    """Config, dataset splits and an initialised model, as run_recbole builds them."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_llmesr.config import LLMESRConfig
    from recbole_llmesr.registry import create_dataset, get_model

    config = LLMESRConfig(model=model, dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    return config, get_model(model)(config, train._dataset), (train, valid, test)


def write_checkpoint_without(checkpoint: Path, key: str, to: Path) -> Path:
    """A copy of ``checkpoint`` whose stored config lacks ``key``, as a checkpoint written before the key existed."""
    import torch

    state = torch.load(checkpoint, weights_only=True)
    del state["config"][key]
    torch.save(state, to)
    return to


# ------------------------------------------------------------------------------------------ preparation
@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """Embedding cache shared by the tests of this session (the ml-100k texts are embedded once)."""
    return tmp_path_factory.mktemp("llmesr_embedding_cache")


@pytest.fixture
def raw(tmp_path):
    """A tiny atomic dataset (30 users, 25 titled items) outside the output folder."""
    folder = write_tiny_dataset(tmp_path / "raw", "tiny", n_users=30, n_items=25, seed=3)
    return folder / "tiny.inter"


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """A dataset prepared once with the real offline model: raw input, output root and embedding cache."""
    from recbole_llmesr.prep.pipeline import prepare

    base = tmp_path_factory.mktemp("prepared")
    raw = write_tiny_dataset(base / "raw", "tiny", n_users=30, n_items=25, seed=3)
    prepare("tiny", inputs={"inter": str(raw / "tiny.inter")}, out_root=str(base / "out"),
            cache_dir=str(base / "cache"), top_k=10, show_progress=False)
    return {"raw": raw, "out": base / "out", "cache": base / "cache"}


@pytest.fixture
def outputs(prepared, tmp_path):
    """This test's own copy of the prepared outputs and cache, and of the raw input to spoil."""
    import shutil

    paths = {k: tmp_path / f"copy-{k}" for k in prepared}
    for k, src in prepared.items():
        shutil.copytree(src, paths[k])
    return paths
