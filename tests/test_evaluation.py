"""Issue 5: long-tail group metrics, the paper's 100-negative protocol and fast sampled scoring."""
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from recbole.evaluator.collector import DataStruct

from recbole_llmesr import evaluation
from recbole_llmesr.config import LLMESRConfig
from recbole_llmesr.evaluation import DOT_PRODUCT_MODELS, LongTail, data_preparation, statistics_of
from recbole_llmesr.registry import create_dataset, get_model, get_trainer

LOO = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user"}


def _build(model: str, config_dict: dict):
    """Like conftest.build, but through the plugin's data_preparation (as run_recbole does)."""
    from recbole.utils import init_seed

    config = LLMESRConfig(model=model, dataset="tiny", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    loaders = data_preparation(config, dataset)
    return config, get_model(model)(config, loaders[0]._dataset), loaders


def _paper(tiny, n=10, **extra):
    return {**tiny["config"], "eval_args": {**LOO, "mode": f"paper{n}"}, **extra}


def _raw_sequences(tiny):
    seqs = defaultdict(list)
    for line in (tiny["folder"] / "tiny.inter").read_text().splitlines()[1:]:
        user, item, _ = line.split("\t")
        seqs[user].append(item)
    return seqs


# ---- group metrics -------------------------------------------------------------------------------


def _struct(seq_len, pos_item, item_pop):
    # Four users, hits at rank 1, 2, 3 and none (top-3 flags, then the number of targets).
    topk = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]])
    struct = DataStruct()
    struct.set("rec.topk", topk)
    struct.set("data.seq_len", torch.tensor(seq_len))
    struct.set("data.pos_item", torch.tensor(pos_item))
    struct.set("data.item_pop", torch.tensor(item_pop))
    return struct


def _metric_config(**extra):
    settings = {
        "topk": [1, 3], "metrics": ["Hit", "NDCG", "MRR"], "valid_metric": "MRR@3", "group_split": "threshold",
        "ts_user": 5, "ts_item": 4,
    }
    return LLMESRConfig(model="SASRec", dataset="tiny", config_dict={**settings, **extra})


def test_group_metrics_hand_computed(tiny):
    # Users 0 and 2 are short (< 5); targets 2 and 3 are rare (< 4 training occurrences).
    result = LongTail(_metric_config()).calculate_metric(_struct([2, 10, 3, 20], [1, 2, 3, 1], [0, 10, 1, 2]))
    expected = {
        "hit@1_tail_user": 0.5, "hit@3_tail_user": 1.0, "ndcg@3_tail_user": (1 + 1 / math.log2(4)) / 2,
        "hit@1_head_user": 0.0, "hit@3_head_user": 0.5, "ndcg@3_head_user": (1 / math.log2(3)) / 2,
        "hit@3_tail_item": 1.0, "ndcg@3_tail_item": (1 / math.log2(3) + 1 / math.log2(4)) / 2,
        "hit@1_head_item": 0.5, "hit@3_head_item": 0.5, "ndcg@3_head_item": 0.5,
        "mrr@3_tail_user": (1 + 1 / 3) / 2, "mrr@3_head_item": 0.5,
        "share_tail_user": 0.5, "share_head_user": 0.5, "share_tail_item": 0.5, "share_head_item": 0.5,
    }
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-4), key


def test_pareto_split_and_rows_without_a_single_target(tiny):
    # Top 25 %: the longest user (20) and the most popular item (pop 10) are head; row 3 has no single
    # target (pos_item 0) and belongs to no item group.
    metric = LongTail(_metric_config(group_split="pareto", head_ratio=0.25, ts_user=None, ts_item=None))
    result = metric.calculate_metric(_struct([2, 10, 3, 20], [1, 2, 3, 0], [0, 10, 1, 2]))
    assert (result["share_tail_user"], result["share_head_user"]) == (0.75, 0.25)
    assert (result["share_tail_item"], result["share_head_item"]) == (0.5, 0.25)
    assert result["hit@3_head_user"] == 0.0 and result["hit@1_head_item"] == 1.0
    empty = LongTail(_metric_config(ts_user=1)).calculate_metric(_struct([2, 10, 3, 20], [1, 2, 3, 1], [0, 10, 1, 2]))
    assert empty["share_tail_user"] == 0 and math.isnan(empty["ndcg@3_tail_user"])


def test_config_registers_group_metrics_and_paper_mode(tiny):
    config = LLMESRConfig(model="SASRec", dataset="tiny", config_dict=_paper(tiny, 100))
    assert config["metrics"][-1] == "LongTail" and config["test_neg_sample_args"]["sample_num"] == 100
    off = LLMESRConfig(model="SASRec", dataset="tiny", config_dict={**tiny["config"], "group_metrics": False})
    assert "LongTail" not in off["metrics"]
    with pytest.raises(ValueError, match="group_split"):
        LongTail(LLMESRConfig(model="SASRec", dataset="tiny", config_dict={**tiny["config"], "group_split": "median"}))


# ---- statistics, candidates ------------------------------------------------------------------------


def test_statistics_count_the_training_split_only_and_are_model_independent(tiny):
    seqs = _raw_sequences(tiny)
    train_counts = defaultdict(int)
    for items in seqs.values():
        for item in items[:-2]:  # leave-one-out: the last two are validation and test
            train_counts[item] += 1
    for model in ("SASRec", "LLMESR_SASRec"):  # the latter keeps one training row per user
        _, _, (train, valid, test) = _build(model, _paper(tiny))
        dataset = train._dataset
        pop = statistics_of(train).item_pop
        assert torch.equal(statistics_of(valid).item_pop, pop) and torch.equal(statistics_of(test).item_pop, pop)
        assert {
            dataset.id2token(dataset.iid_field, i): int(pop[i]) for i in range(1, len(pop)) if pop[i]
        } == dict(train_counts)
        # Input history: training items for validation, training + validation items for test.
        for loader, held_out in ((valid, 2), (test, 1)):
            lengths = statistics_of(loader).user_len
            assert {u: len(items) - held_out for u, items in seqs.items()} == {
                dataset.id2token(dataset.uid_field, u): int(lengths[u]) for u in range(1, len(lengths))
            }


def test_item_pop_all_splits_reproduces_the_official_counting(tiny):
    all_counts = defaultdict(int)
    for items in _raw_sequences(tiny).values():
        for item in items:
            all_counts[item] += 1
    _, _, (train, _, _) = _build("SASRec", {**_paper(tiny), "item_pop_all_splits": True})
    dataset, pop = train._dataset, statistics_of(train).item_pop
    assert {
        dataset.id2token(dataset.iid_field, i): int(pop[i]) for i in range(1, len(pop)) if pop[i]
    } == dict(all_counts)


def _candidates(loader):
    """user token -> candidate item tokens (target first), from the loader's 1 + N rows per user."""
    dataset, out = loader._dataset, {}
    for interaction, row_idx, positive_u, _ in loader:
        for user_row in positive_u.unique():
            rows = (row_idx == user_row).nonzero().squeeze(1)
            user = dataset.id2token(dataset.uid_field, int(interaction[dataset.uid_field][rows[0]]))
            out[user] = list(dataset.id2token(dataset.iid_field, interaction[dataset.iid_field][rows].numpy()))
    return out


def test_paper_candidates_exclude_history_never_repeat_and_are_shared_across_models(tiny):
    seqs = _raw_sequences(tiny)
    _, _, (_, valid, test) = _build("SASRec", _paper(tiny))
    _, _, (_, valid_llm, test_llm) = _build("LLMESR_SASRec", _paper(tiny))
    for loader, other, cut in ((valid, valid_llm, -1), (test, test_llm, None)):
        candidates = _candidates(loader)
        assert len(candidates) == len(seqs)
        for user, (target, *negatives) in candidates.items():
            history = seqs[user][:cut]  # validation: train + validation item; test: train + validation + test
            assert target == history[-1]
            assert len(negatives) == 10 == len(set(negatives))
            assert not set(negatives) & set(history)
        assert _candidates(other) == candidates  # another model, another dataset class: same candidates
        assert _candidates(loader) == candidates  # and the same at every evaluation


def test_too_few_items_for_paper_n_fails_clearly(tiny):
    _, _, (_, _, test) = _build("SASRec", _paper(tiny, 25))
    with pytest.raises(ValueError, match="needs 25 distinct negatives"):
        next(iter(test))


# ---- trainer: collector, fast path ---------------------------------------------------------------


def _evaluate(trainer, loader, fast: bool):
    trainer.fast_sampled_eval = fast
    return trainer.evaluate(loader, load_best_model=False)


@pytest.mark.parametrize(
    "model, eval_args",
    [
        ("SASRec", {**LOO, "mode": "paper10"}),
        ("LLMESR_SASRec", {**LOO, "mode": "paper10"}),
        # Several targets per user: the fast path must still encode each row's own input.
        ("BPR", {"split": {"RS": [0.7, 0.15, 0.15]}, "order": "TO", "group_by": "user", "mode": "paper5"}),
    ],
)
def test_fast_and_slow_sampled_scoring_agree(model, eval_args, tiny, monkeypatch):
    config, net, (_, _, test) = _build(model, {**tiny["config"], "eval_args": eval_args})
    trainer = get_trainer(config["MODEL_TYPE"], model)(config, net)
    assert trainer.fast_sampled_eval
    slow = _evaluate(trainer, test, fast=False)  # evaluate-only: no fit() collected the training counts
    calls = []
    monkeypatch.setattr(net, "predict", lambda *a: calls.append(1))
    fast = _evaluate(trainer, test, fast=True)
    assert not calls and fast == slow
    assert "data.seq_len" not in trainer.eval_collector.data_struct  # per-row data never piles up
    assert _evaluate(trainer, test, fast=True) == fast


def test_groups_add_up_to_overall(tiny):
    config, net, (_, _, test) = _build("SASRec", _paper(tiny))
    result = get_trainer(config["MODEL_TYPE"], "SASRec")(config, net).evaluate(test, load_best_model=False)
    for metric in ("hit@10", "ndcg@10", "mrr@10"):
        for side in ("user", "item"):
            tail, head = result[f"share_tail_{side}"], result[f"share_head_{side}"]
            assert tail + head == pytest.approx(1.0) and 0 < tail < 1
            mean = tail * result[f"{metric}_tail_{side}"] + head * result[f"{metric}_head_{side}"]
            assert mean == pytest.approx(result[metric], abs=2e-4)  # RecBole rounds to 4 decimals


@pytest.fixture(scope="module")
def test_batch(tmp_path_factory):
    """One dataset and one paper5 test batch, shared by the RecBole models below."""
    from conftest import FAST, write_artifacts, write_tiny_dataset

    root = tmp_path_factory.mktemp("shared") / "dataset_atomic"
    write_artifacts(write_tiny_dataset(root))
    config_dict = {**FAST, "data_path": str(root), "eval_args": {**LOO, "mode": "paper5"}, "MAX_ITEM_LIST_LENGTH": 20}
    _, _, (train, _, test) = _build("SASRec", config_dict)
    return config_dict, train._dataset, next(iter(test))[0]


@pytest.mark.parametrize("model", sorted(DOT_PRODUCT_MODELS) + ["LLMESR_SASRec", "LLMESR_BERT4Rec"])
def test_allowlisted_models_predict_a_full_sort_column(model, test_batch):
    config_dict, dataset, interaction = test_batch
    if model.startswith("LLMESR"):  # needs its own dataset class (LLM embeddings)
        _, net, _ = _build(model, config_dict)
    else:
        net = get_model(model)(LLMESRConfig(model=model, dataset="tiny", config_dict=config_dict), dataset)
    net.eval()
    with torch.no_grad():
        columns = net.full_sort_predict(interaction).view(len(interaction), -1)
        expected = columns[torch.arange(len(interaction)), interaction[dataset.iid_field]]
        assert torch.allclose(net.predict(interaction), expected, atol=1e-5)
    assert evaluation.scores_by_dot_product(net)


def test_core_is_not_a_dot_product_model():
    assert not evaluation.scores_by_dot_product(type("CORE", (), {})())
    assert "CORE" not in DOT_PRODUCT_MODELS and np.isin(["SASRec", "GRU4Rec"], list(DOT_PRODUCT_MODELS)).all()


def test_extra_test_modes_reuse_the_trained_model(tiny):
    """paper10 training and test, plus a full-ranking test of the same best model: the full-ranking
    numbers equal those of evaluating that checkpoint under full ranking directly."""
    from recbole_llmesr.quick_start import run_recbole

    config = _paper(tiny, extra_test_modes=["full"], epochs=1)
    result = run_recbole("LLMESR_SASRec", "tiny", config_dict=config)["test_result"]
    assert "ndcg@10" in result and "full:ndcg@10" in result and "full:ndcg@10_tail_user" in result
    # Full ranking among all items is harder than among 11 candidates.
    assert result["full:hit@10"] <= result["hit@10"]

    cfg, model, (train, _, test) = _build(
        "LLMESR_SASRec", {**tiny["config"], "eval_args": {**LOO, "mode": "full"}, "epochs": 1}
    )
    trainer = get_trainer(cfg["MODEL_TYPE"], cfg["model"])(cfg, model)
    checkpoint = sorted((tiny["folder"].parent.parent / "saved").glob("LLMESR_SASRec-*.pth"))[-1]
    direct = trainer.evaluate(test, load_best_model=True, model_file=str(checkpoint))
    assert direct["ndcg@10"] == pytest.approx(result["full:ndcg@10"])
