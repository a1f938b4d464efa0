"""Checkpoint files that load under ``torch.load(weights_only=True)``: their names, finding an interrupted
run to resume, the random-number state they carry, and ``other_parameter`` values as plain data.

Stock RecBole pickles its whole ``Config`` into every checkpoint; torch >= 2.6 refuses to load that by
default. Ours hold only tensors and plain Python data, so loading one never executes code.
"""
import glob
import os
import pickle
import random
from typing import List, Optional

import numpy as np
import torch

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.launch import LAUNCH_CONFIG_KEYS, MACHINE_KEYS


class UnsafeCheckpointError(LLMESRError, RuntimeError):
    """A checkpoint holds objects other than tensors and plain data."""


class ResumeError(LLMESRError, ValueError):
    """A checkpoint cannot be resumed by this run (missing, another model, other shapes)."""


#: Suffix of the per-epoch checkpoint beside the best one (``saved/<Model>-<time>.pth``): not ``.pth``, so
#: that globs for best models never pick it up.
LAST_SUFFIX = ".last.pt"
#: Settings that may differ between an interrupted run and its resumption without changing what is trained.
RUN_ONLY_KEYS = {*LAUNCH_CONFIG_KEYS, *MACHINE_KEYS, "device", "single_spec", "config_files", "resume", "epochs",
                 "show_progress", "state", "eval_batch_size", "worker", "log_wandb", "stopping_step",
                 "extra_test_modes"}


#: LLMESR_* settings added with a default other than the behaviour before them, with the value that a
#: checkpoint written before the key existed was trained with. A checkpoint's config holds every key it
#: knew, so only the missing ones are filled in.
KEYS_ADDED_LATER = {"cross_attention_residual": False}


def _trained_config(config: dict) -> dict:
    """A checkpoint's config with :data:`KEYS_ADDED_LATER` filled in where an LLMESR_* checkpoint predates them."""
    if not str(config.get("model", "")).startswith("LLMESR_"):
        return config
    return {**KEYS_ADDED_LATER, **config}


def last_checkpoint_name(best_file: str) -> str:
    """The per-epoch checkpoint that goes with the best checkpoint ``best_file``."""
    stem = best_file[: -len(".pth")] if best_file.endswith(".pth") else best_file
    return stem + LAST_SUFFIX


def interrupted_runs(checkpoint_dir: str, model: str, dataset: str) -> List[str]:
    """The per-epoch checkpoints of unfinished runs of ``model`` on ``dataset`` in ``checkpoint_dir``, newest
    first (a run that finishes removes its own)."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(checkpoint_dir), f"{glob.escape(model)}-*{LAST_SUFFIX}")):
        try:
            config = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["config"]
        except Exception:  # noqa: BLE001 - an unreadable file is not a run to resume
            continue
        if config.get("model") == model and config.get("dataset") == dataset:
            found.append(path)
    return sorted(found, key=os.path.getmtime, reverse=True)


def resume_file(config) -> Optional[str]:
    """The checkpoint that config key ``resume`` names: None (start afresh), a path, or ``auto`` = the newest
    interrupted run of this model and dataset (None when there is none)."""
    value = config["resume"]
    if value is None or value == "":
        return None
    if str(value).lower() == "auto":
        runs = interrupted_runs(config["checkpoint_dir"], config["model"], config["dataset"])
        return runs[0] if runs else None
    if not os.path.isfile(value):
        raise ResumeError(f"resume={value}: file not found; an interrupted run leaves "
                          f"{os.path.join(config['checkpoint_dir'], config['model'] + '-<time>' + LAST_SUFFIX)}, "
                          f"and resume=auto finds the newest")
    return str(value)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(part) if isinstance(part, tuple) else part for part in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a clear error if it carries pickled objects. Its config
    comes with :data:`KEYS_ADDED_LATER` filled in, so every reader sees the settings it was trained with."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it contains pickled Python objects, not only tensors and plain data "
            f"(written by stock RecBole or tampered with). Retrain with recbole_llmesr, or load it yourself "
            f"with torch.load(weights_only=False) only if you trust where it came from. Detail: {err}"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("config"), dict):
        state["config"] = _trained_config(state["config"])
    return state


def encode_plain(value):
    """``other_parameter`` values as tensors and plain data, so that ``weights_only`` loading accepts them.

    RecBole models keep numpy arrays and scipy sparse matrices there (ItemKNN, EASE, SLIMElastic);
    ``nn.Module`` values (FDSA, DIN) are dropped because their weights are already in the state dict.
    """
    import numpy as np
    import scipy.sparse as sp

    if isinstance(value, dict):
        return {k: encode_plain(v) for k, v in value.items() if not isinstance(v, torch.nn.Module)}
    if isinstance(value, (list, tuple)):
        return type(value)(encode_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
    if sp.issparse(value):
        coo = value.tocoo()
        return {
            "__sparse__": value.format,
            "row": torch.from_numpy(coo.row.astype(np.int64)),
            "col": torch.from_numpy(coo.col.astype(np.int64)),
            "data": torch.from_numpy(coo.data),
            "shape": list(coo.shape),
        }
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode_plain(value):
    """Inverse of ``encode_plain``."""
    import scipy.sparse as sp

    if isinstance(value, dict):
        if "__ndarray__" in value:
            return value["__ndarray__"].numpy()
        if "__sparse__" in value:
            coo = sp.coo_matrix(
                (value["data"].numpy(), (value["row"].numpy(), value["col"].numpy())), shape=tuple(value["shape"])
            )
            return coo.asformat(value["__sparse__"])
        return {k: decode_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(decode_plain(v) for v in value)
    return value
