"""Long-tail evaluation inside RecBole's evaluator, and the paper's 100-negative protocol.

- ``LongTail``: a RecBole metric that reports every requested top-k metric (always hit and ndcg) on
  tail/head users and tail/head items, e.g. ``ndcg@10_tail_user``, plus each group's share of the
  evaluated rows, e.g. ``share_tail_user`` (shares, not counts, so every value stays a rate in [0, 1]).
  Users are split by the length of their input history (training items for validation, training +
  validation items for test, as in LLM-ESR, but not capped), items by how often the target item occurs in
  the *training* split (LLM-ESR's code also counts validation and test interactions; we don't).
- ``GroupCollector``: RecBole's ``Collector`` plus the per-row data those groups need.
- ``paperN`` eval mode (``eval_args: {mode: paper100}``): N distinct uniform negatives per user,
  excluding every item the user has interacted with up to and including the target, drawn from a fixed
  seed per (phase, user), so every model ranks the same candidates. RecBole's ``uniN`` (``RepeatableSampler``)
  only excludes the target, may repeat and redraws at every evaluation.
- ``sampled_scores``: sampled evaluation with one ``full_sort_predict`` per user instead of one
  ``predict`` per candidate (101 encoder passes per user), for models whose scores are dot products.
"""
import math
import re
import weakref
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from recbole.data import data_preparation as recbole_data_preparation
from recbole.evaluator import Collector
from recbole.evaluator.base_metric import AbstractMetric, TopkMetric
from recbole.evaluator.collector import DataStruct
from recbole.evaluator.register import metric_information, metric_types, metrics_dict
from recbole.utils import EvaluatorType

GROUPS = ("tail_user", "head_user", "tail_item", "head_item")
GROUP_SPLITS = ("pareto", "threshold")

# RecBole models whose ``predict`` equals the matching column of ``full_sort_predict`` (checked one by one
# in tests/test_evaluation.py). CORE is not: its ``predict`` skips the item normalisation. Plugin models
# declare it themselves with a ``dot_product_scores`` class attribute.
DOT_PRODUCT_MODELS = frozenset(
    {
        "SASRec", "GRU4Rec", "BERT4Rec", "NARM", "STAMP", "Caser", "NextItNet", "SRGNN", "GCSAN", "LightSANs",
        "FPMC", "BPR",
    }
)

_PAPER_MODE = re.compile(r"^paper(\d+)$")


def paper_sample_num(mode: str) -> Optional[int]:
    """N for an eval mode ``paperN``, else None."""
    match = _PAPER_MODE.match(str(mode))
    return int(match.group(1)) if match else None


# ---- metrics -----------------------------------------------------------------------------------


def _topk_metric_names() -> List[str]:
    return [name for name, cls in metrics_dict.items() if isinstance(cls, type) and issubclass(cls, TopkMetric)]


def pareto_threshold(values: np.ndarray, head_ratio: float) -> float:
    """The smallest value among the top ``head_ratio`` share; ties at the cut count as head."""
    ordered = np.sort(np.asarray(values))[::-1]
    return float(ordered[max(1, math.ceil(head_ratio * len(ordered))) - 1]) if len(ordered) else 0.0


class LongTail(AbstractMetric):
    """Top-k metrics on tail/head users and items (LLM-ESR's groups), computed by RecBole's own metrics.

    A row is a tail user if its input length < ``ts_user``, a tail item if its target's training count
    < ``ts_item``. ``group_split: pareto`` sets the thresholds so that the top ``head_ratio`` of evaluated
    users (by length) and of all items (by popularity) are head; ``threshold`` uses ``ts_user``/``ts_item``.
    Rows with several targets (general models on ratio splits) belong to no item group.
    """

    metric_type = EvaluatorType.RANKING
    metric_need = ["rec.topk", "data.seq_len", "data.pos_item", "data.item_pop"]
    smaller = False

    def __init__(self, config):
        super().__init__(config)
        self.topk = config["topk"]
        requested = [m.lower() for m in config["metrics"]]
        topk_names = _topk_metric_names()
        names = ["hit", "ndcg"] + [m for m in requested if m in topk_names and m not in ("hit", "ndcg")]
        self.metrics = {name: metrics_dict[name](config) for name in names}
        self.split = config["group_split"] or "pareto"
        self.head_ratio = float(config["head_ratio"] if config["head_ratio"] is not None else 0.2)
        if self.split not in GROUP_SPLITS:
            raise ValueError(f"group_split must be one of {', '.join(GROUP_SPLITS)}, got {self.split!r}")
        if self.split == "threshold" and (config["ts_user"] is None or config["ts_item"] is None):
            raise ValueError("group_split: threshold needs ts_user and ts_item (e.g. the paper's Beauty: 9 and 4)")
        if not 0 < self.head_ratio < 1:
            raise ValueError(f"head_ratio must be in (0, 1), got {self.head_ratio}")
        self.ts_user, self.ts_item = config["ts_user"], config["ts_item"]

    def thresholds(self, seq_len: np.ndarray, item_pop: np.ndarray) -> Tuple[float, float]:
        if self.split == "threshold":
            return float(self.ts_user), float(self.ts_item)
        return pareto_threshold(seq_len, self.head_ratio), pareto_threshold(item_pop[1:], self.head_ratio)

    def groups(self, dataobject) -> Dict[str, np.ndarray]:
        seq_len = dataobject.get("data.seq_len").numpy()
        pos_item = dataobject.get("data.pos_item").numpy()
        item_pop = dataobject.get("data.item_pop").numpy()
        ts_user, ts_item = self.thresholds(seq_len, item_pop)
        has_item, target_pop = pos_item > 0, item_pop[pos_item]
        return {
            "tail_user": seq_len < ts_user,
            "head_user": seq_len >= ts_user,
            "tail_item": has_item & (target_pop < ts_item),
            "head_item": has_item & (target_pop >= ts_item),
        }

    def calculate_metric(self, dataobject) -> Dict[str, float]:
        topk = dataobject.get("rec.topk")
        groups = self.groups(dataobject)
        result = {}
        for name, metric in self.metrics.items():
            for group, mask in groups.items():
                if mask.any():
                    part = DataStruct()
                    part.set("rec.topk", topk[torch.from_numpy(mask)])
                    values = metric.calculate_metric(part)
                else:
                    values = {f"{name}@{k}": float("nan") for k in self.topk}
                result.update({f"{key}_{group}": value for key, value in values.items()})
        result.update(
            {f"share_{group}": round(float(mask.mean()), self.decimal_place) for group, mask in groups.items()}
        )
        return result


def register_metrics() -> None:
    """Make ``LongTail`` known to RecBole: its Config validates ``metrics`` against these module-level dicts."""
    for cls in (LongTail,):
        name = cls.__name__.lower()
        metrics_dict[name] = cls
        metric_information[name] = cls.metric_need
        metric_types[name] = cls.metric_type


def add_group_metrics(config_dict: dict) -> None:
    """Append ``LongTail`` to ``metrics`` when ``group_metrics`` is on and a top-k metric is asked for."""
    metrics = [m.lower() for m in config_dict["metrics"]]
    if config_dict.get("group_metrics") and "longtail" not in metrics and set(metrics) & set(_topk_metric_names()):
        config_dict["metrics"] = list(config_dict["metrics"]) + ["LongTail"]


# ---- split statistics ----------------------------------------------------------------------------


def _all_interactions(dataset) -> Tuple[np.ndarray, np.ndarray]:
    """(user, item) of every interaction a dataset holds.

    A sequential dataset keeps one row per target, so each user's first item only appears as the input
    of its length-1 row (the same trick as ``SequentialDataset.inter_matrix``).
    """
    inter = dataset.inter_feat
    uid, iid = inter[dataset.uid_field].numpy(), inter[dataset.iid_field].numpy()
    length_field = getattr(dataset, "item_list_length_field", None)
    if length_field in inter:
        first = inter[length_field].numpy() == 1
        uid = np.concatenate([uid, uid[first]])
        iid = np.concatenate([iid, inter[dataset.item_id_list_field][first, 0].numpy()])
    return uid, iid


def _targets(loader) -> Tuple[np.ndarray, np.ndarray]:
    if loader is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    inter = loader._dataset.inter_feat
    return inter[loader._dataset.uid_field].numpy(), inter[loader._dataset.iid_field].numpy()


@dataclass
class LongTailStats:
    """``item_pop[item]``: training-split count of each item; ``user_len[user]``: length of the user's
    input history in one phase (training interactions for validation, training + validation for test).

    Lengths are not capped at ``MAX_ITEM_LIST_LENGTH``: with RecBole's cap of 50, most ml-100k users
    would tie at the cap and no 80/20 split would exist.
    """

    item_pop: torch.Tensor
    user_len: torch.Tensor

    @classmethod
    def from_counts(cls, dataset, uid: np.ndarray, iid: np.ndarray) -> "LongTailStats":
        return cls(
            item_pop=torch.from_numpy(np.bincount(iid, minlength=dataset.item_num)),
            user_len=torch.from_numpy(np.bincount(uid, minlength=dataset.user_num)),
        )


def split_statistics(dataset, valid_data, test_data, count_all_splits: bool = False) -> Dict[str, LongTailStats]:
    """Per phase: training counts (every interaction minus the validation and test targets) and the
    users' input lengths.

    Counted from the whole dataset rather than the training loader, whose rows depend on the model
    (LLM-ESR's ``train_mode: sequence`` keeps one row per user), so every model gets the same groups.
    """
    everything = LongTailStats.from_counts(dataset, *_all_interactions(dataset))
    valid, test = (
        LongTailStats.from_counts(dataset, *_targets(valid_data)),
        LongTailStats.from_counts(dataset, *_targets(test_data)),
    )
    # The official code counts validation and test interactions too (a leak of the targets into the
    # grouping); `item_pop_all_splits: True` reproduces it for comparison with the paper.
    item_pop = everything.item_pop if count_all_splits else everything.item_pop - valid.item_pop - test.item_pop
    train_len = everything.user_len - valid.user_len - test.user_len
    return {
        "train": LongTailStats(item_pop, train_len),
        "valid": LongTailStats(item_pop, train_len),
        "test": LongTailStats(item_pop, train_len + valid.user_len),
    }


# ---- the paper's candidates --------------------------------------------------------------------


class PaperSampler:
    """Stands in for RecBole's sampler inside ``NegSampleEvalDataLoader`` (it only calls
    ``sample_by_user_ids`` and reads ``phase``): distinct negatives outside the user's history, fixed per
    (seed, phase, user token), so they do not depend on batch order, epoch or model.
    """

    def __init__(self, phase: str, dataset, uid: np.ndarray, iid: np.ndarray, seed: int):
        self.phase = phase
        self.seed = int(seed)
        self.n_items = dataset.item_num
        self.user_tokens = dataset.field2id_token[dataset.uid_field]
        keys = np.unique(uid.astype(np.int64) * self.n_items + iid)
        self.items = keys % self.n_items
        self.indptr = np.searchsorted(keys // self.n_items, np.arange(dataset.user_num + 1))
        self._cache: Dict[int, np.ndarray] = {}

    def history(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def negatives(self, user: int, size: int) -> np.ndarray:
        if user not in self._cache or len(self._cache[user]) != size:
            token = str(self.user_tokens[user]).encode()
            rng = np.random.default_rng([self.seed, ("valid", "test").index(self.phase), zlib.crc32(token)])
            allowed = np.setdiff1d(np.arange(1, self.n_items), self.history(user))
            if len(allowed) < size:
                raise ValueError(
                    f"paperN evaluation: user {token.decode()} needs {size} distinct negatives but only "
                    f"{len(allowed)} items lie outside its {self.phase} history; use a smaller N"
                )
            self._cache[user] = rng.choice(allowed, size, replace=False)
        return self._cache[user]

    def sample_by_user_ids(self, user_ids: np.ndarray, item_ids: np.ndarray, num: int) -> torch.Tensor:
        # The loader asks once per user, for all of its rows: one candidate set per user.
        user = int(user_ids[0])
        return torch.from_numpy(self.negatives(user, num * len(user_ids)))


def data_preparation(config, dataset) -> Tuple[Any, Any, Any]:
    """RecBole's ``data_preparation``, plus the group metrics' statistics on every loader (so that
    evaluate-only runs have them too) and the paper's sampler for ``paperN`` phases."""
    train_data, valid_data, test_data = recbole_data_preparation(config, dataset)
    stats = split_statistics(dataset, valid_data, test_data, count_all_splits=bool(config["item_pop_all_splits"]))
    uid, iid = _all_interactions(dataset)
    later_targets = {"valid": _targets(test_data), "test": (uid[:0], iid[:0])}
    for phase, loader in (("valid", valid_data), ("test", test_data)):
        num = paper_sample_num(config["eval_args"]["mode"][phase])
        if num is None or loader is None:
            continue
        # History = every interaction up to this phase: all of them minus the later phase's targets.
        hu, hi = _remove(uid, iid, *later_targets[phase], dataset.item_num)
        loader._sampler = PaperSampler(phase, dataset, hu, hi, config["paper_neg_seed"] or 0)
    for phase, loader in (("train", train_data), ("valid", valid_data), ("test", test_data)):
        if loader is not None:
            _PHASE_STATS[loader._dataset] = stats[phase]
    return train_data, valid_data, test_data


#: The split statistics of each phase, keyed by the phase's dataset (a loader's ``_dataset``), so that any
#: loader over it (e.g. the whole-split loader of a DDP test) finds them.
_PHASE_STATS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def statistics_of(loader) -> Optional[LongTailStats]:
    """The group metrics' statistics of a loader built by :func:`data_preparation`, else None."""
    return _PHASE_STATS.get(loader._dataset) if loader is not None else None


def _remove(uid: np.ndarray, iid: np.ndarray, ru: np.ndarray, ri: np.ndarray, n_items: int):
    """Multiset difference of (user, item) pairs: an item seen again elsewhere in the history stays."""
    keys, counts = np.unique(uid.astype(np.int64) * n_items + iid, return_counts=True)
    gone, gone_counts = np.unique(ru.astype(np.int64) * n_items + ri, return_counts=True)
    counts[np.searchsorted(keys, gone)] -= gone_counts
    keys = keys[counts > 0]
    return keys // n_items, keys % n_items


# ---- collector and fast sampled scoring ----------------------------------------------------------


def _first_rows(interaction, uid_field: str, n_rows: int) -> torch.Tensor:
    """Index of the first interaction row of each score row (sampled mode: 1 + N rows per user)."""
    if len(interaction) == n_rows:
        return torch.arange(n_rows)
    _, counts = torch.unique_consecutive(interaction[uid_field].cpu(), return_counts=True)
    return torch.cumsum(counts, 0) - counts


class GroupCollector(Collector):
    """RecBole's Collector plus what ``LongTail`` needs: each score row's input length and target item,
    and the training item counts."""

    PER_ROW = ("data.seq_len", "data.pos_item")

    def __init__(self, config):
        super().__init__(config)
        self.uid_field = config["USER_ID_FIELD"]
        self.user_len: Optional[torch.Tensor] = None

    def _use(self, stats: LongTailStats) -> None:
        self.data_struct.set("data.item_pop", stats.item_pop)
        self.user_len = stats.user_len

    def data_collect(self, train_data) -> None:
        super().data_collect(train_data)
        if not self.register.need("data.item_pop"):
            return
        stats = statistics_of(train_data)
        if stats is None:
            # Loaders from RecBole's own data_preparation: count the training split itself (exact for
            # RecBole's one-row-per-prefix training data); every phase then uses training lengths.
            stats = LongTailStats.from_counts(train_data.dataset, *_all_interactions(train_data.dataset))
        self._use(stats)

    def start_evaluation(self, eval_data) -> None:
        """Take the phase's input lengths from the loader (and the item counts, for evaluate-only runs)."""
        if not self.register.need("data.item_pop"):
            return
        stats = statistics_of(eval_data)
        if stats is not None:
            self._use(stats)
        elif self.user_len is None:
            raise ValueError(
                "Group metrics need the training split's statistics: build the loaders with "
                "recbole_llmesr.evaluation.data_preparation, or call trainer.fit first"
            )

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i) -> None:
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if not self.register.need("data.seq_len"):
            return
        n_rows = scores_tensor.size(0)
        users = interaction[self.uid_field].cpu()[_first_rows(interaction, self.uid_field, n_rows)]
        positive_u, positive_i = positive_u.cpu(), positive_i.cpu()
        single = torch.bincount(positive_u, minlength=n_rows)[positive_u] == 1
        pos_item = torch.zeros(n_rows, dtype=torch.long)
        pos_item[positive_u[single]] = positive_i[single]
        self.data_struct.update_tensor("data.seq_len", self.user_len[users])
        self.data_struct.update_tensor("data.pos_item", pos_item)

    def get_data_struct(self):
        struct = super().get_data_struct()
        # RecBole clears only its own per-row keys; ours would otherwise pile up across evaluations.
        for key in self.PER_ROW:
            if key in self.data_struct:
                del self.data_struct[key]
        return struct


def scores_by_dot_product(model) -> bool:
    """Whether ``predict`` equals the matching ``full_sort_predict`` column for this model."""
    return bool(getattr(type(model), "dot_product_scores", type(model).__name__ in DOT_PRODUCT_MODELS))


def sampled_scores(model, interaction, row_idx, positive_u, n_items: int, iid_field: str) -> torch.Tensor:
    """The ``[users, n_items]`` matrix RecBole's sampled evaluation builds (-inf off the candidates), from
    one ``full_sort_predict`` per distinct input instead of one ``predict`` per candidate row.

    ``NegSampleEvalDataLoader`` lays out a user with k targets as k rows, then N copies of them carrying
    the negatives; row j of the user's block has the input of row ``j % k``.
    """
    row_idx = row_idx.to(interaction[iid_field].device)
    rows_per_user = torch.bincount(row_idx)
    targets_per_user = torch.bincount(positive_u.to(row_idx.device), minlength=len(rows_per_user))
    start = (torch.cumsum(rows_per_user, 0) - rows_per_user)[row_idx]
    source = start + (torch.arange(len(row_idx), device=row_idx.device) - start) % targets_per_user[row_idx]
    inputs, which = torch.unique(source, return_inverse=True)
    full = model.full_sort_predict(interaction[inputs]).view(len(inputs), -1)
    items = interaction[iid_field]
    scores = torch.full((len(rows_per_user), n_items), -np.inf, device=full.device)
    scores[row_idx, items] = full[which, items]
    return scores
