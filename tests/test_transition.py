"""Issue 16: ``transition_weight``, the content-based item-to-item term added to inference scores."""
import pytest
import torch
import torch.nn.functional as F
from conftest import build, write_checkpoint_without

from recbole_llmesr.quick_start import run_recbole
from recbole_llmesr.recommend import load_recommender

#: No history mask, so that full_sort_predict is the raw score of every item.
RAW = {"use_distillation": False, "exclude_history": False}
PLAIN = {"use_semantic_view": False, "id_init": "random"}


def _cosine_to_last(model, batch) -> torch.Tensor:
    seq, length = batch["item_id_list"], batch["item_length"]
    last = seq.gather(1, (length - 1).unsqueeze(1)).squeeze(1)
    unit = F.normalize(model.llm_item_emb[: model.n_items], dim=1)
    return unit[last] @ unit.T


@pytest.mark.parametrize("model_name,settings", [("LLMESR_SASRec", {}), ("LLMESR_GRU4Rec", {}),
                                                 ("LLMESR_BERT4Rec", {}), ("LLMESR_SASRec", PLAIN)])
def test_inference_scores_add_w_times_the_llm_cosine_to_the_last_input_item(model_name, settings, tiny):
    _, model, (train, _, _) = build(model_name, {**tiny["config"], **RAW, **settings, "transition_weight": 2.5})
    model.eval()
    batch = next(iter(train)).to("cpu")[torch.arange(8)]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        model.transition_weight = 0.0
        expected = model.full_sort_predict(batch) + 2.5 * _cosine_to_last(model, batch)
        assert torch.allclose(scores, expected, atol=1e-5)
        model.transition_weight = 2.5
        for item in (1, 7, model.n_items - 1):  # predict stays one column of full_sort_predict
            batch["item_id"] = torch.full((len(batch),), item)
            assert torch.allclose(model.predict(batch), scores[:, item], atol=1e-5)


def test_training_loss_does_not_see_the_term(tiny):
    # Trained in, the ID view learns to cancel the term (BENCHMARKS.md): the loss must be that of w = 0.
    _, model, (train, _, _) = build("LLMESR_SASRec", {**tiny["config"], **RAW, "transition_weight": 4.0,
                                                      "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0})
    batch = next(iter(train))
    loss = model.calculate_loss(batch)
    model.transition_weight = 0.0
    assert torch.equal(model.calculate_loss(batch), loss)
    model.eval()
    with torch.no_grad():
        model.transition_weight = 4.0
        with_term = model.full_sort_predict(batch)
        model.transition_weight = 0.0
        assert not torch.allclose(model.full_sort_predict(batch), with_term, atol=1e-3)


def test_cold_start_items_get_the_term(tiny):
    from recbole_llmesr.model.cold_start import add_items

    _, model, (train, _, _) = build("LLMESR_SASRec", {**tiny["config"], **RAW, "transition_weight": 1.0})
    model.eval()
    batch = next(iter(train)).to("cpu")[torch.arange(4)]
    seq, length = batch["item_id_list"], batch["item_length"]
    last = seq.gather(1, (length - 1).unsqueeze(1)).squeeze(1)
    twin = model.llm_item_emb[last[:1]] * 3.0  # same direction as row 0's last item: cosine 1
    add_items(model, twin)
    with torch.no_grad():
        term = model.transition_scores(seq, length)
    assert term.shape == (4, model.n_items)
    assert torch.allclose(term[0, -1], torch.tensor(1.0), atol=1e-5)


def test_run_recbole_tests_with_the_term_and_old_checkpoints_load_without_it(tiny, tmp_path):
    config = {**tiny["config"], **PLAIN, "use_distillation": False, "epochs": 2}
    off = run_recbole(model="LLMESR_SASRec", dataset="tiny", config_dict=config)
    on = run_recbole(model="LLMESR_SASRec", dataset="tiny", config_dict={**config, "transition_weight": 3.0})
    # Same seed, same training (the term is not trained), different scores at validation and test.
    assert on["test_result"] != off["test_result"]
    ckpt = sorted((tmp_path / "saved").glob("LLMESR_SASRec-*.pth"))[0]
    old = write_checkpoint_without(ckpt, "transition_weight", tmp_path / "old.pth")
    assert load_recommender(str(old)).model.transition_weight == 0.0


def test_plain_backbone_with_the_term_loads_the_llm_embeddings(tiny):
    _, model, _ = build("LLMESR_SASRec", {**tiny["config"], **PLAIN, "use_distillation": False,
                                          "transition_weight": 1.0})
    assert model.views == ["collab"] and model.llm_item_emb.shape[0] == model.n_items
    with pytest.raises(ValueError, match="transition_weight"):
        build("LLMESR_SASRec", {**tiny["config"], "transition_weight": -1.0})


def test_auto_chooses_the_weight_on_validation_and_writes_it_into_the_checkpoint(tiny, tmp_path):
    from benchmarks import transition_sweep

    config = {**tiny["config"], "use_distillation": False, "transition_weight": "auto", "transition_grid": [0, 3]}
    run = run_recbole(model="LLMESR_SASRec", dataset="tiny", config_dict=config)
    assert len(run["history"]) == config["epochs"]  # the weights' validations are not training history
    (ckpt,) = (tmp_path / "saved").glob("LLMESR_SASRec-*.pth")
    state = torch.load(ckpt, weights_only=True)
    scores = {float(w): s for w, s in state["transition_validation"].items()}
    chosen = max(scores, key=lambda w: (scores[w], -w))
    assert state["config"]["transition_weight"] == chosen
    assert run["best_valid_score"] == pytest.approx(scores[chosen])
    assert load_recommender(str(ckpt)).model.transition_weight == chosen
    # The test ran at that weight: the same checkpoint scored again at it gives the same figures.
    (swept,) = transition_sweep.main(["--checkpoint", str(ckpt), "--weights", "0", "3", "--test_modes", "full"])
    assert swept["validation"] == pytest.approx(scores, abs=1e-4)
    assert swept["test"]["full"][chosen]["ndcg@10"] == pytest.approx(run["test_result"]["ndcg@10"], abs=1e-4)


@pytest.mark.parametrize("key,value", [("transition_weight", "big"), ("transition_grid", []),
                                       ("transition_grid", [1, -2]), ("transition_grid", 4)])
def test_bad_transition_settings_name_the_key(key, value, tiny):
    with pytest.raises(ValueError, match=key):
        build("LLMESR_SASRec", {**tiny["config"], "transition_weight": "auto", key: value})
