"""Issue 3: the LLM-ESR models — alignment, frozen table, causality, scoring, switches, distillation."""
import numpy as np
import pytest
import torch
from conftest import build

from recbole_llmesr.prep.artifacts import ArtifactError, artifact_path, save_embeddings, write_manifest
from recbole_llmesr.quick_start import run_recbole

MODELS = ["LLMESR_SASRec", "LLMESR_GRU4Rec", "LLMESR_BERT4Rec"]


def _batch(train, n=8):
    return next(iter(train)).to("cpu")[torch.arange(n)]


def test_embeddings_align_by_original_token(tiny):
    _, model, (train, _, _) = build("LLMESR_SASRec", tiny["config"])
    data = train._dataset
    assert torch.all(data.llm_item_emb[0] == 0)  # [PAD]
    for token, vector in zip(tiny["items"], tiny["item_emb"]):  # the file stores them shuffled
        internal = data.token2id(data.iid_field, token)
        assert torch.allclose(data.llm_item_emb[internal], torch.from_numpy(vector))
        assert torch.allclose(model.llm_item_emb[internal], torch.from_numpy(vector))


def test_sim_users_map_to_internal_ids(tiny):
    _, _, (train, _, _) = build("LLMESR_SASRec", tiny["config"])
    data = train._dataset
    for row, user in enumerate(tiny["users"][:5]):
        expected = [data.token2id(data.uid_field, tiny["users"][j]) for j in tiny["neighbors"][row][:10]]
        assert data.sim_users[data.token2id(data.uid_field, user)][:10].tolist() == expected


@pytest.mark.parametrize("model_name", MODELS)
def test_frozen_table_and_gradients(model_name, tiny):
    _, model, (train, _, _) = build(model_name, {**tiny["config"], "hidden_dropout_prob": 0.0})
    frozen = model.llm_item_emb.clone()
    assert "llm_item_emb" not in dict(model.named_parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for batch in list(train)[:3]:
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        optimizer.step()
    assert torch.equal(model.llm_item_emb, frozen)
    for prefix in ("adapter.", "item_embedding.", "encoders."):
        assert any(n.startswith(prefix) and g is not None and g.abs().sum() > 0 for n, g in grads.items()), prefix


@pytest.mark.parametrize("model_name", ["LLMESR_SASRec", "LLMESR_GRU4Rec"])
def test_later_items_never_change_earlier_positions(model_name, tiny):
    _, model, (train, _, _) = build(model_name, tiny["config"])
    model.eval()
    batch = _batch(train)
    seq = batch["item_id_list"].clone()
    seq[:, :6] = torch.randint(1, model.n_items, (len(seq), 6))
    changed = seq.clone()
    changed[:, 4:6] = torch.randint(1, model.n_items, (len(seq), 2))
    with torch.no_grad():
        tables = model.view_tables()
        before, after = model.encode(seq, tables), model.encode(changed, tables)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-5)
    assert not torch.allclose(before[:, 4:6], after[:, 4:6])


@pytest.mark.parametrize("model_name", MODELS)
def test_predict_equals_full_sort_columns(model_name, tiny):
    _, model, (train, _, test) = build(model_name, tiny["config"])
    model.eval()
    batch = _batch(train)
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        assert full.shape == (len(batch), model.n_items)
        for item in (1, 5, model.n_items - 1):
            batch["item_id"] = torch.full((len(batch),), item)
            assert torch.allclose(model.predict(batch), full[:, item], atol=1e-5)


SWITCHES = [
    {"use_semantic_view": False},
    {"use_collab_view": False},
    {"use_cross_attention": False},
    {"shared_encoder": False},
    {"id_init": "random"},
    {"use_distillation": False},
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: next(iter(s)))
def test_each_switch_changes_parameters_or_output(switch, tiny):
    def outputs(overrides):
        torch.manual_seed(0)
        _, model, (train, _, _) = build("LLMESR_SASRec", {**tiny["config"], **overrides})
        model.eval()
        batch = _batch(train)
        with torch.no_grad():
            return model, model.full_sort_predict(batch), model.calculate_loss(batch)

    base, base_scores, base_loss = outputs({})
    other, scores, loss = outputs(switch)

    def shapes(m):
        return {n: tuple(p.shape) for n, p in m.named_parameters()}

    if "use_distillation" in switch:  # no parameters of its own: it changes the loss
        assert shapes(base) == shapes(other) and torch.allclose(base_scores, scores)
        assert not torch.isclose(base_loss, loss)
    elif "id_init" in switch:  # same parameters, different starting values
        assert shapes(base) == shapes(other)
        assert not torch.allclose(base.item_embedding.weight, other.item_embedding.weight)
        assert not torch.allclose(base_scores, scores)
    else:
        assert shapes(base) != shapes(other)
        assert base_scores.shape != scores.shape or not torch.allclose(base_scores, scores)


def test_plain_backbone_needs_no_llm_artefacts(tmp_path):
    from conftest import FAST, write_tiny_dataset

    root = tmp_path / "dataset_atomic"
    write_tiny_dataset(root)
    plain = {"use_semantic_view": False, "id_init": "random", "use_distillation": False}
    _, model, _ = build("LLMESR_SASRec", {**FAST, "data_path": str(root), **plain})
    assert not hasattr(model, "llm_item_emb") and model.views == ["collab"]


@pytest.mark.parametrize("mode", ["memory_bank", "online"])
def test_training_lowers_distillation_loss(mode, tiny):
    _, model, (train, _, _) = build("LLMESR_SASRec", {**tiny["config"], "teacher_mode": mode, "alpha": 1.0})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    batches = list(train)

    def distill():
        model.eval()
        with torch.no_grad():
            model.teacher.refresh(model) if mode == "memory_bank" else None
            return sum(
                float(model.teacher.loss(b["user_id"], model.forward(b["item_id_list"], b["item_length"]), model))
                for b in batches
            )

    start = distill()
    for _ in range(15):
        model.on_epoch_start()
        model.train()
        for batch in batches:
            optimizer.zero_grad()
            model.calculate_loss(batch).backward()
            optimizer.step()
    assert distill() < 0.7 * start


def test_memory_bank_refresh_every_k_steps(tiny):
    _, model, (train, _, _) = build("LLMESR_SASRec", {**tiny["config"], "teacher_refresh_steps": 2})
    batch = next(iter(train))
    calls = []
    original = model.teacher.refresh
    model.teacher.refresh = lambda encoder: (calls.append(1), original(encoder))
    for _ in range(5):
        model.calculate_loss(batch)
    assert len(calls) == 3  # steps 0, 2 and 4


def test_teacher_update_batch_writes_students_and_skips_epoch_refresh(tiny):
    _, model, (train, _, _) = build("LLMESR_SASRec", {**tiny["config"], "teacher_update": "batch"})
    batches = list(train)
    calls = []
    original = model.teacher.refresh
    model.teacher.refresh = lambda encoder: (calls.append(1), original(encoder))
    model.eval()  # no dropout: the student state is reproducible below
    for _ in range(2):
        model.on_epoch_start()
        for batch in batches:
            model.calculate_loss(batch)
    assert len(calls) == 1  # once at the start; the students keep the bank current after that
    batch = batches[0]
    with torch.no_grad():
        expected = model.forward(batch["item_id_list"], batch["item_length"])
    assert torch.allclose(model.teacher.user_bank[batch["user_id"]], expected, atol=1e-5)

    _, epoch_model, _ = build("LLMESR_SASRec", {**tiny["config"], "teacher_update": "epoch"})
    epoch_model.teacher.refresh = lambda encoder: calls.append(2) or original(encoder)
    for _ in range(2):
        epoch_model.on_epoch_start()
        epoch_model.calculate_loss(batches[0])
    assert calls.count(2) == 2  # every epoch


@pytest.mark.parametrize(
    "model_name,loss", [("LLMESR_SASRec", "BCE"), ("LLMESR_GRU4Rec", "BPR"), ("LLMESR_SASRec", "CE")]
)
def test_batch_item_tables_give_the_same_loss(model_name, loss, tiny):
    _, model, (train, _, _) = build(model_name, {**tiny["config"], "loss_type": loss})
    model.eval()
    batch = next(iter(train))
    losses = []
    for subset in (True, False):
        model.batch_item_tables = subset
        torch.manual_seed(0)  # the same negatives
        losses.append(model.calculate_loss(batch))
    assert torch.allclose(losses[0], losses[1], atol=1e-5)


def test_sequence_mode_keeps_one_row_per_user(tiny):
    _, _, (seq_train, _, _) = build("LLMESR_SASRec", {**tiny["config"], "train_mode": "sequence"})
    _, _, (pre_train, _, _) = build("LLMESR_SASRec", {**tiny["config"], "train_mode": "prefix"})
    seq_users = seq_train._dataset.inter_feat["user_id"]
    assert len(seq_users) == len(torch.unique(seq_users)) < len(pre_train._dataset.inter_feat)


def test_sequence_targets_are_next_items(tiny):
    _, model, _ = build("LLMESR_SASRec", {**tiny["config"], "train_mode": "sequence"})
    seq = torch.tensor([[3, 4, 5, 0, 0]])
    _, positions, targets, valid = model.training_positions(seq, torch.tensor([3]), torch.tensor([6]))
    assert targets[valid].tolist() == [4, 5, 6]


def test_negatives_avoid_history(tiny):
    _, model, _ = build("LLMESR_SASRec", {**tiny["config"], "loss_type": "BCE"})
    history = torch.arange(1, model.n_items - 2).expand(4, -1)  # leaves two items free
    negatives = model.objective.outside_history(history, 50, rounds=200)
    assert set(negatives.flatten().tolist()) <= {model.n_items - 2, model.n_items - 1}


def test_bad_artefacts_get_clear_errors(tiny):
    folder = tiny["folder"]
    path = artifact_path(folder, "tiny", "item_emb.npz")
    items, emb = tiny["items"], tiny["item_emb"]

    save_embeddings(path, items[1:], emb[1:])  # one item missing
    with pytest.raises(ArtifactError, match=f"1 of {len(items)} items.*{items[0]}"):
        build("LLMESR_SASRec", tiny["config"])

    bad = emb.copy()
    bad[3, 2] = np.nan
    save_embeddings(path, items, bad)
    with pytest.raises(ArtifactError, match=f"NaN or inf.*{items[3]}"):
        build("LLMESR_SASRec", tiny["config"])

    save_embeddings(path, items, emb)
    write_manifest(folder, "tiny", {"dim": emb.shape[1] + 1})
    with pytest.raises(ArtifactError, match="dimension 16, the manifest says 17"):
        build("LLMESR_SASRec", tiny["config"])


def test_pca_needs_hidden_size_within_llm_dimension(tiny):
    with pytest.raises(ValueError, match="hidden_size \\(32\\) <= min"):
        build("LLMESR_SASRec", {**tiny["config"], "hidden_size": 32})


def test_wrong_yaml_types_are_rejected(tiny):
    with pytest.raises(TypeError, match="'alpha' must be a number"):
        build("LLMESR_SASRec", {**tiny["config"], "alpha": "0.1x"})
    with pytest.raises(ValueError, match="train_mode"):
        build("LLMESR_SASRec", {**tiny["config"], "train_mode": "prefixes"})


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("mode", ["prefix", "sequence"])
def test_models_train_and_test_through_run_recbole(model_name, mode, tiny, tmp_path):
    loss = "CE" if mode == "prefix" else "BCE"
    result = run_recbole(
        model=model_name, dataset="tiny", config_dict={**tiny["config"], "train_mode": mode, "loss_type": loss}
    )
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    (ckpt,) = (tmp_path / "saved").glob(f"{model_name}-*.pth")
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert "llm_item_emb" in state and "user_bank" not in state


@pytest.fixture
def ml100k_small_embeddings(tmp_path):
    """ml-100k copied from the recbole wheel with small random artefacts beside it."""
    import shutil

    from conftest import write_artifacts

    from recbole_llmesr.config import RECBOLE_ML100K_DIR

    folder = tmp_path / "dataset_atomic" / "ml-100k"
    folder.mkdir(parents=True)
    for ext in ("inter", "item"):
        shutil.copy(RECBOLE_ML100K_DIR / f"ml-100k.{ext}", folder)
    # The artefact writer reads tokens from columns 0 and 1 of the .inter file, as ml-100k has them.
    write_artifacts(folder, "ml-100k", dim=32)
    return {"epochs": 1, "show_progress": False, "hidden_size": 16, "MAX_ITEM_LIST_LENGTH": 20}


@pytest.mark.parametrize("model_name", MODELS)
def test_ml100k_end_to_end(model_name, ml100k_small_embeddings, tmp_path):
    result = run_recbole(model=model_name, dataset="ml-100k", config_dict=ml100k_small_embeddings)
    assert 0.0 <= result["test_result"]["hit@10"] <= 1.0
    assert list((tmp_path / "saved").glob(f"{model_name}-*.pth"))


def test_leaky_attention_reproduces_the_official_leak(tiny):
    _, model, (train, _, _) = build("LLMESR_SASRec", {**tiny["config"], "leaky_attention": True})
    model.eval()
    seq = _batch(train)["item_id_list"].clone()
    seq[:, :6] = torch.randint(1, model.n_items, (len(seq), 6))
    changed = seq.clone()
    changed[:, 5] = torch.randint(1, model.n_items, (len(seq),))
    with torch.no_grad():
        tables = model.view_tables()
        assert not torch.allclose(model.encode(seq, tables)[:, :5], model.encode(changed, tables)[:, :5])


# ---- long-tail option: logit_adjustment ----


@pytest.mark.parametrize("mode", ["prefix", "sequence"])
def test_item_counts_are_the_training_split(mode, tiny):
    lines = (tiny["folder"] / "tiny.inter").read_text().splitlines()[1:]
    by_user = {}
    for user, item, t in (line.split("\t") for line in lines):
        by_user.setdefault(user, []).append((float(t), item))
    expected = {}
    for events in by_user.values():
        for _, item in sorted(events)[:-2]:  # the last two are validation and test
            expected[item] = expected.get(item, 0) + 1
    _, _, (train, _, _) = build("LLMESR_SASRec", {**tiny["config"], "train_mode": mode})
    data = train._dataset
    counts = {data.id2token(data.iid_field, i): int(c) for i, c in enumerate(data.item_counts) if i > 0}
    assert counts == {item: expected.get(item, 0) for item in counts}


def _with_and_without(settings, **option):
    """A model with ``option`` and one without, in eval mode with the same weights, and a training batch."""
    _, model, (train, _, _) = build("LLMESR_SASRec", {**settings, **option})
    _, plain, _ = build("LLMESR_SASRec", settings)
    plain.load_state_dict(model.state_dict())
    model.eval(), plain.eval()
    return model, plain, train, _batch(train)


def test_logit_adjustment_shifts_the_training_softmax_only(tiny):
    # Scores without the history mask, so that they are the training logits.
    settings = {**tiny["config"], "train_mode": "prefix", "loss_type": "CE", "use_distillation": False,
                "exclude_history": False}
    model, plain, train, batch = _with_and_without(settings, logit_adjustment=0.7)
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        assert torch.equal(scores, plain.full_sort_predict(batch))  # inference ignores the prior
        prior = torch.log1p(train._dataset.item_counts.float())
        # [PAD] (item 0) is no candidate of the training softmax.
        expected = torch.nn.functional.cross_entropy((scores + 0.7 * prior)[:, 1:], batch["item_id"] - 1)
        assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)
        assert not torch.allclose(plain.calculate_loss(batch), expected, atol=1e-3)
    with pytest.raises(ValueError, match="logit_adjustment.*loss_type: BCE"):
        build("LLMESR_SASRec", {**tiny["config"], "loss_type": "BCE", "logit_adjustment": 1.0})


def test_exclude_history_masks_the_input_items_when_the_data_never_repeats(tiny):
    _, model, (train, _, _) = build("LLMESR_SASRec", tiny["config"])  # exclude_history: auto
    assert train._dataset.repeat_share == 0.0 and model.exclude_history
    model.eval()
    batch = _batch(train)
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        seq = batch["item_id_list"]
        inputs = torch.zeros_like(scores, dtype=torch.bool).scatter(1, seq, True)
        assert torch.isinf(scores[inputs]).all() and torch.isfinite(scores[~inputs]).all()
        # predict is one column of full_sort_predict, history items included.
        candidates = seq[:, 0]
        batch.interaction["item_id"] = candidates
        assert torch.isinf(model.predict(batch)).all()
    _, off, _ = build("LLMESR_SASRec", {**tiny["config"], "exclude_history": False})
    off.eval()
    with torch.no_grad():
        assert torch.isfinite(off.full_sort_predict(batch)[:, 1:]).all()
    with pytest.raises(ValueError, match="exclude_history"):
        build("LLMESR_SASRec", {**tiny["config"], "exclude_history": "sometimes"})


def test_exclude_history_auto_stays_off_when_users_repeat_items(tmp_path):
    from conftest import write_artifacts

    folder = tmp_path / "data" / "rep"
    folder.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(20):
        first = [(u + k) % 9 for k in range(3)]
        items = first + [first[0]] + [(u + k) % 9 for k in range(3, 6)]  # a training target repeats the first item
        rows += [f"u{u}\ti{i}\t{t}" for t, i in enumerate(items)]
    (folder / "rep.inter").write_text("\n".join(rows) + "\n")
    (folder / "rep.item").write_text(
        "item_id:token\ttitle:token\n" + "\n".join(f"i{i}\titem {i}" for i in range(9)) + "\n"
    )
    write_artifacts(folder, name="rep")
    from conftest import FAST

    _, model, (train, _, _) = build("LLMESR_SASRec", {**FAST, "data_path": str(tmp_path / "data")}, dataset="rep")
    assert train._dataset.repeat_share > 0.01 and not model.exclude_history


def test_score_temperature_scores_each_view_by_cosine(tiny):
    settings = {**tiny["config"], "train_mode": "prefix", "loss_type": "CE", "use_distillation": False,
                "exclude_history": False, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}
    model, plain, _, batch = _with_and_without(settings, score_temperature=0.2)
    with torch.no_grad():
        user = plain.forward(batch["item_id_list"], batch["item_length"])
        items = plain.item_table(plain.view_tables())
        h = model.hidden_size
        unit = torch.nn.functional.normalize
        halves = [slice(v * h, (v + 1) * h) for v in range(len(model.views))]
        expected = sum(unit(user[:, v], dim=1) @ unit(items[:, v], dim=1).T for v in halves) / 0.2
        scores = model.full_sort_predict(batch)
        assert torch.allclose(scores[:, 1:], expected[:, 1:], atol=1e-4)
        assert not torch.allclose(plain.full_sort_predict(batch)[:, 1:], expected[:, 1:], atol=1e-2)
        target_scores = scores.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1)
        assert torch.allclose(model.predict(batch), target_scores, atol=1e-4)
        loss = torch.nn.functional.cross_entropy(expected[:, 1:], batch["item_id"] - 1)
        assert torch.allclose(model.calculate_loss(batch), loss, atol=1e-4)
    # Sampled softmax builds only the batch's rows: the same scoring applies there. With uniform negatives the
    # logQ offsets are one constant, which the softmax drops.
    _, ssm, _ = build("LLMESR_SASRec", {**settings, "loss_type": "SSM", "score_temperature": 0.2,
                                        "num_negatives": 16, "negative_sampling": "uniform"})
    ssm.eval()
    with torch.no_grad():
        torch.manual_seed(7)
        loss = ssm.calculate_loss(batch)
        torch.manual_seed(7)
        pool, _ = ssm.objective.pool(batch["item_id"])
        user = ssm.forward(batch["item_id_list"], batch["item_length"])
        items = ssm.item_table(ssm.view_tables())
        assert torch.allclose(user.view(len(user), -1, h).norm(dim=-1), torch.full((1,), 0.2 ** -0.5), atol=1e-5)
        targets = batch["item_id"]
        pos = (user * items[targets]).sum(-1, keepdim=True)
        neg = (user @ items[pool].T).masked_fill(pool.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        expected_ssm = -torch.log_softmax(torch.cat([pos, neg], dim=1), dim=1)[:, 0].mean()
        assert torch.allclose(loss, expected_ssm, atol=1e-4)
    with pytest.raises(ValueError, match="score_temperature"):
        build("LLMESR_SASRec", {**settings, "score_temperature": 0})


def test_cross_attention_residual_adds_the_fusion_to_each_views_own_input(tiny):
    settings = {**tiny["config"], "use_distillation": False, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}
    paper, residual, _, batch = _with_and_without(settings, cross_attention_residual=False)
    assert residual.options.cross_attention_residual  # the default
    # ... but not for the bidirectional backbone, where it measured worse (properties/model/LLMESR_BERT4Rec.yaml).
    assert not build("LLMESR_BERT4Rec", settings)[1].options.cross_attention_residual
    # Without cross-attention the residual has nothing to add to (the paper's "w/o CA" runs at the defaults).
    _, separate, _ = build("LLMESR_SASRec", {**settings, "use_cross_attention": False})
    separate.load_state_dict(residual.state_dict(), strict=False)
    separate.eval()
    args = batch["item_id_list"], batch["item_length"]
    with torch.no_grad():
        assert not torch.allclose(residual.forward(*args), paper.forward(*args), atol=1e-3)
        # With the fusion's output projections at zero, the residual leaves each view's own input alone.
        for fusion in (residual.semantic_to_collab, residual.collab_to_semantic):
            fusion.attention.out.weight.zero_()
            fusion.attention.out.bias.zero_()
        assert torch.allclose(residual.forward(*args), separate.forward(*args), atol=1e-5)
