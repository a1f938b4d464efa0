"""Serve a trained model: top-K items per user from a checkpoint, and cold-start items by their text.

Everything needed for known items lives in the checkpoint (weights, the frozen LLM item embeddings, the
configuration) or beside the dataset (its atomic files): no LLM or embedder is called for them. Items
given only with text (no interactions) are embedded once with the dataset's own embedder (the one in its
``llmesr.json`` manifest, through the embedding cache) and scored by the semantic view; see
``DualViewRecommender.add_items`` for how the collaborative view treats them.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.fileio import atomic_write
from recbole_llmesr.launch import LAUNCH_CONFIG_KEYS, MACHINE_KEYS, RECBOLE_DERIVED_KEYS
from recbole_llmesr.prep import artifacts

# Set by RecBole or at run time, not by the user: never fed back into the rebuilt configuration.
_RUNTIME_KEYS = {*RECBOLE_DERIVED_KEYS, *LAUNCH_CONFIG_KEYS, *MACHINE_KEYS, "is_ddp", "model_class",
                 "train_neg_sample_args"}


class RecommendError(LLMESRError, ValueError):
    """The checkpoint, the dataset or the request cannot be served."""


@dataclass
class Recommender:
    """A trained model, its dataset's id mapping and every user's full history (train + valid + test)."""

    model: torch.nn.Module
    config: object
    item_tokens: List[str]
    user_tokens: List[str]
    histories: List[np.ndarray]  # internal user id -> internal item ids, oldest first
    cold_items: List[str] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.item_tokens)

    def user_ids(self, users: Optional[Iterable[str]] = None) -> np.ndarray:
        """Internal ids of ``users`` (original tokens), or of every user."""
        if users is None:
            return np.arange(1, len(self.user_tokens))
        index = {t: i for i, t in enumerate(self.user_tokens)}
        users = [str(u) for u in users]
        unknown = [u for u in users if u not in index or u == "[PAD]"]
        if unknown:
            raise RecommendError(f"{len(unknown)} unknown user(s), e.g. {', '.join(unknown[:5])}")
        return np.array([index[u] for u in users], dtype=np.int64)

    def batch(self, uids: np.ndarray, histories: Optional[Sequence[np.ndarray]] = None):
        """The model's input for these users: each history's last ``MAX_ITEM_LIST_LENGTH`` items (the users'
        own histories unless given), left-aligned, as a RecBole ``Interaction`` on the model's device."""
        from recbole.data.interaction import Interaction

        histories = [self.histories[u] for u in uids] if histories is None else histories
        max_len = self.config["MAX_ITEM_LIST_LENGTH"]
        seq = torch.zeros(len(uids), max_len, dtype=torch.long)
        lengths = torch.zeros(len(uids), dtype=torch.long)
        for row, items in enumerate(histories):
            items = items[-max_len:]
            seq[row, : len(items)] = torch.from_numpy(np.asarray(items, dtype=np.int64))
            lengths[row] = len(items)
        if (lengths == 0).any():
            raise RecommendError("a user without history cannot be scored by a sequential model")
        model = self.model
        return Interaction({
            model.USER_ID: torch.as_tensor(uids, dtype=torch.long),
            model.ITEM_SEQ: seq,
            model.ITEM_SEQ_LEN: lengths,
        }).to(self.config["device"])

    @torch.no_grad()
    def scores(self, uids: np.ndarray, histories: Optional[Sequence[np.ndarray]] = None) -> torch.Tensor:
        """Scores ``[len(uids), n_items]`` of the model's full-sort prediction from each history's last
        ``MAX_ITEM_LIST_LENGTH`` items (the users' own histories unless given)."""
        model, batch = self.model, self.batch(uids, histories)
        scores = model.full_sort_predict(batch).view(len(uids), -1).float().cpu()
        if scores.size(1) < self.n_items:  # a model that knows fewer items (no cold-start support)
            pad = scores.new_full((len(uids), self.n_items - scores.size(1)), -torch.inf)
            scores = torch.cat([scores, pad], dim=1)
        return scores[:, : self.n_items]

    def topk(self, uids: np.ndarray, k: int, exclude_history: bool = True,
             histories: Optional[Sequence[np.ndarray]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-``k`` internal item ids and scores per user; history items and [PAD] never appear."""
        histories = [self.histories[u] for u in uids] if histories is None else histories
        scores = self.scores(uids, histories)
        scores[:, 0] = -torch.inf
        if exclude_history:
            rows = np.concatenate([np.full(len(h), r) for r, h in enumerate(histories)]) if len(histories) else []
            cols = np.concatenate(histories) if len(histories) else []
            scores[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = -torch.inf
        k = min(k, self.n_items - 1)
        # Ties break by item id, so the export is deterministic.
        order = torch.argsort(-scores, dim=1, stable=True)[:, :k]
        return order.numpy(), torch.gather(scores, 1, order).numpy()


def _rebuilt_config(saved: dict, data_path: Optional[str], overrides: Optional[dict]):
    from recbole_llmesr.config import LLMESRConfig, without_command_line

    settings = {k: v for k, v in saved.items() if k not in _RUNTIME_KEYS}
    # RecBole stores <root>/<dataset>; the config wants the root.
    settings["data_path"] = data_path or os.path.dirname(os.path.normpath(saved["data_path"]))
    # Serving needs neither the teacher (similar users) nor training-time evaluation settings.
    settings.update({"use_distillation": False, "show_progress": False, "state": "WARNING"})
    settings.update(overrides or {})
    with without_command_line():  # RecBole's Config would read our flags as settings
        return LLMESRConfig(model=saved["model"], dataset=saved["dataset"], config_dict=settings)


def load_recommender(checkpoint: str, data_path: Optional[str] = None, overrides: Optional[dict] = None) -> Recommender:
    """A :class:`Recommender` from a checkpoint written by this package's trainers.

    ``data_path`` is the folder holding ``<dataset>/`` (default: the one used in training). The dataset's
    atomic files must be the ones the model was trained on: internal ids come from them.
    """
    from recbole.utils import init_seed

    from recbole_llmesr.registry import create_dataset, get_model
    from recbole_llmesr.checkpoints import load_checkpoint

    if not Path(checkpoint).is_file():
        raise RecommendError(f"{checkpoint}: checkpoint not found")
    state = load_checkpoint(checkpoint)
    if not isinstance(state.get("config"), dict) or "state_dict" not in state:
        raise RecommendError(f"{checkpoint}: not a checkpoint of recbole_llmesr (no config dict / state_dict)")
    config = _rebuilt_config(state["config"], data_path, overrides)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    model = get_model(config["model"])(config, dataset)
    missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise RecommendError(
            f"{checkpoint} does not fit the model built from dataset {config['dataset']} at {config['data_path']}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}. Is it the dataset the model was trained on?"
        )
    model.to(config["device"]).eval()
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    return Recommender(
        model=model,
        config=config,
        item_tokens=list(dataset.field2id_token[iid_field]),
        user_tokens=list(dataset.field2id_token[uid_field]),
        histories=_histories(dataset),
    )


def _histories(dataset) -> List[np.ndarray]:
    """Every user's interactions in time order (all of them: serving comes after the test split)."""
    inter = dataset.inter_feat  # a DataFrame until RecBole's build(), an Interaction after

    def column(name):
        return np.asarray(inter[name].values if hasattr(inter[name], "values") else inter[name].numpy())

    uid, iid = column(dataset.uid_field), column(dataset.iid_field)
    if dataset.time_field and dataset.time_field in inter.columns:
        order = np.lexsort((column(dataset.time_field), uid))  # by user, then time
    else:
        order = np.argsort(uid, kind="stable")  # file order within a user
    uid, iid = uid[order], iid[order]
    bounds = np.searchsorted(uid, np.arange(dataset.user_num + 1))
    return [iid[bounds[u] : bounds[u + 1]] for u in range(dataset.user_num)]


# ---- cold-start items --------------------------------------------------------------------------


def cold_item_texts(path: str, dataset: str, data_dir: str) -> Dict[str, str]:
    """``item_id -> text`` for the items in an atomic ``.item`` file (or ``.items.jsonl``), rendered with
    the template the dataset's item embeddings were built with."""
    from recbole_llmesr.prep import readers
    from recbole_llmesr.prep import text as T

    manifest = artifacts.read_manifest(data_dir, dataset)
    if manifest is None:
        raise RecommendError(f"{data_dir}: no {dataset}.llmesr.json manifest; cold-start items need the embedder and "
                             f"template the dataset was prepared with (run llmesr-prepare)")
    path = Path(path)
    if not path.is_file():
        raise RecommendError(f"{path}: file not found")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        meta, columns = readers.read_items_jsonl(str(path), progress=False)
    else:
        meta, columns = readers.read_item_file(str(path), progress=False)
    items = readers.items_frame(meta, columns)
    if items.empty:
        raise RecommendError(f"{path}: no items")
    return T.item_texts(items, manifest["template"], manifest["max_chars"], missing_fields="unknown")


def embed_cold_items(texts: Dict[str, str], dataset: str, data_dir: str, base_url: Optional[str] = None,
                     cache_dir: Optional[str] = None, show_progress: bool = True) -> np.ndarray:
    """LLM vectors of the texts, with the embedder named in the dataset's manifest (cached: each text is
    embedded once across runs). ``base_url``: the server of an openai-compatible embedder (the training
    config's ``embedder_base_url``); the API key comes from ``OPENAI_API_KEY``."""
    from recbole_llmesr.prep.embedders import EmbeddingCache, default_cache_root, embed_texts, get_embedder

    manifest = artifacts.read_manifest(data_dir, dataset)
    request = manifest["embedder_request"]
    identity = manifest["embedder"]
    emb = get_embedder(request["kind"], request.get("model"), base_url, request.get("dim"))
    if emb.identity() != identity:
        raise RecommendError(f"the embedder available now ({emb.identity()}) is not the one the dataset was "
                             f"prepared with ({identity}); cold-start vectors would not be comparable")
    cache = EmbeddingCache(cache_dir or default_cache_root(), identity)
    return embed_texts(emb, list(texts.values()), cache, show_progress=show_progress, desc="cold-start items")


def add_cold_items(
    rec: Recommender, tokens: Sequence[str], vectors: np.ndarray, collab: str = "regression"
) -> np.ndarray:
    """Make items known only by their LLM vectors candidates of ``rec``; returns their internal ids."""
    add = getattr(rec.model, "add_items", None)
    if add is None:
        raise RecommendError(f"{type(rec.model).__name__} cannot rank items without interactions; cold-start items "
                             f"need an LLM-ESR model with its semantic view")
    known = set(rec.item_tokens)
    clash = [t for t in tokens if t in known]
    if clash:
        raise RecommendError(f"{len(clash)} cold-start item(s) are already in the dataset, e.g. {', '.join(clash[:5])}")
    if len(set(tokens)) != len(tokens):
        raise RecommendError("duplicate cold-start item ids")
    ids = add(torch.from_numpy(np.asarray(vectors, dtype=np.float32)), collab=collab)
    rec.item_tokens.extend(tokens)
    rec.cold_items.extend(tokens)
    return ids.cpu().numpy()


# ---- evaluation -----------------------------------------------------------------------------------


def evaluate_cases(rec: Recommender, uids: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray,
                   k: int = 10, batch_size: int = 1024, candidates: Optional[np.ndarray] = None) -> Dict[str, float]:
    """HR@k and NDCG@k of ranking each case's target among all items (cold-start ones included), or among
    ``candidates`` (internal ids), the case's history excluded. Ties count against the target, so a model
    that cannot score an item (score -inf, e.g. SASRec on a cold-start item) never hits it."""
    allowed = None
    if candidates is not None:
        allowed = torch.zeros(rec.n_items, dtype=torch.bool)
        allowed[torch.as_tensor(np.asarray(candidates), dtype=torch.long)] = True
    hits = np.zeros(len(uids))
    ndcg = np.zeros(len(uids))
    for start in range(0, len(uids), batch_size):
        sl = slice(start, start + batch_size)
        hist = list(histories[sl])
        scores = rec.scores(np.asarray(uids[sl]), hist)
        scores[:, 0] = -torch.inf
        if allowed is not None:
            scores[:, ~allowed] = -torch.inf
        rows = np.concatenate([np.full(len(h), r) for r, h in enumerate(hist)])
        scores[
            torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(np.concatenate(hist), dtype=torch.long)
        ] = -torch.inf
        target = torch.as_tensor(np.asarray(targets[sl]), dtype=torch.long)
        t = scores.gather(1, target.unsqueeze(1))
        rank = ((scores > t).sum(1) + (scores == t).sum(1) - 1).numpy()  # 0-based, pessimistic on ties
        finite = torch.isfinite(t.squeeze(1)).numpy()
        hit = (rank < k) & finite
        hits[sl] = hit
        ndcg[sl] = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    return {f"hit@{k}": float(hits.mean()), f"ndcg@{k}": float(ndcg.mean()), "cases": int(len(uids))}


# ---- export --------------------------------------------------------------------------------------


def export(rec: Recommender, out: str, k: int = 10, users: Optional[Iterable[str]] = None, fmt: Optional[str] = None,
           batch_size: int = 1024, exclude_history: bool = True, show_progress: bool = True) -> Dict[str, float]:
    """Write the top-``k`` items of each user to ``out`` (CSV: user_id,rank,item_id,score; JSONL: one
    object per user). Written atomically (:func:`recbole_llmesr.fileio.atomic_write`): ``out`` is never half
    written."""
    fmt = fmt or ("jsonl" if str(out).endswith(".jsonl") else "csv")
    if fmt not in ("csv", "jsonl"):
        raise RecommendError(f"format must be csv or jsonl, got {fmt!r}")
    if k < 1:
        raise RecommendError(f"k must be at least 1, got {k}")
    uids = rec.user_ids(users)
    out = Path(out)
    start = time.monotonic()

    def write(f) -> None:
        if fmt == "csv":
            f.write("user_id,rank,item_id,score\n")
        bar = tqdm(total=len(uids), desc="recommend", unit="user", disable=not show_progress, file=sys.stderr)
        for chunk in _chunks(uids, batch_size):
            items, scores = rec.topk(chunk, k, exclude_history)
            for u, row_items, row_scores in zip(chunk, items, scores):
                f.write(_format(rec.user_tokens[u], [rec.item_tokens[i] for i in row_items], row_scores, fmt))
            bar.update(len(chunk))
        bar.close()

    atomic_write(out, write, text=True)
    seconds = time.monotonic() - start
    stats = {"users": int(len(uids)), "seconds": seconds, "users_per_s": len(uids) / max(seconds, 1e-9)}
    getLogger().info("llmesr-recommend: %d users in %.1f s (%.0f users/s) -> %s", stats["users"], seconds,
                     stats["users_per_s"], out)
    return stats


def _chunks(values: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _format(user: str, items: List[str], scores: np.ndarray, fmt: str) -> str:
    if fmt == "jsonl":
        return json.dumps({"user_id": user, "items": items, "scores": [round(float(s), 6) for s in scores]}) + "\n"
    return "".join(f"{_csv(user)},{rank},{_csv(item)},{float(score):.6f}\n"
                   for rank, (item, score) in enumerate(zip(items, scores), start=1))


def _csv(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n') else value
