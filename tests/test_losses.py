"""recbole_llmesr.model.losses and the training recipes that use them: exact chunked CE, sampled softmax
with logQ correction, anchored ID vectors."""
import pytest
import torch
import torch.nn.functional as F
from conftest import build

from recbole_llmesr.model.losses import chunked_cross_entropy, sampled_softmax


def _batch(train, n=8):
    return next(iter(train)).to("cpu")[torch.arange(n)]


@pytest.mark.parametrize("block", [1, 5, 37, None])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_cross_entropy_equals_autograd_cross_entropy(block, with_bias):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(37, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    items = torch.randn(50, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.randint(50, (37,), generator=gen)
    bias = torch.randn(50, dtype=torch.float64, generator=gen) if with_bias else None
    ours = chunked_cross_entropy(h, items, targets, bias, block)
    grads = torch.autograd.grad(2.5 * ours, [h, items])
    reference = F.cross_entropy(h @ items.T + (0 if bias is None else bias), targets)
    expected = torch.autograd.grad(2.5 * reference, [h, items])
    assert torch.allclose(ours, reference, atol=1e-12)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-12)


def test_chunked_cross_entropy_without_grad_and_empty_input():
    h, items = torch.randn(6, 4), torch.randn(9, 4)
    targets = torch.randint(9, (6,))
    with torch.no_grad():
        assert torch.allclose(chunked_cross_entropy(h, items, targets, block=2), F.cross_entropy(h @ items.T, targets))
    empty = chunked_cross_entropy(torch.zeros(0, 4, requires_grad=True), items.requires_grad_(), targets[:0])
    assert empty.item() == 0.0
    empty.backward()  # no positions: zero gradients, no error


def test_sampled_softmax_masks_accidental_hits_and_applies_offsets():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    vectors = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    pos_ids, neg_ids = torch.tensor([1, 2]), torch.tensor([1, 2, 3])
    loss = sampled_softmax(h, vectors[pos_ids], vectors[neg_ids], pos_ids, neg_ids)
    # Row 0: target 1 (logit 2) against negatives 2 (0) and 3 (1); its own id among the negatives is masked.
    row0 = -torch.log_softmax(torch.tensor([2.0, 0.0, 1.0]), 0)[0]
    row1 = -torch.log_softmax(torch.tensor([3.0, 0.0, 1.0]), 0)[0]
    assert torch.allclose(loss, (row0 + row1) / 2)
    offsets = torch.tensor([0.0, 0.0, 0.0, -5.0])  # e.g. -log q: item 3 drawn very often
    corrected = sampled_softmax(
        h, vectors[pos_ids], vectors[neg_ids], pos_ids, neg_ids, offsets[pos_ids], offsets[neg_ids]
    )
    assert corrected < loss  # the over-drawn negative weighs less


def test_sequence_ce_equals_full_softmax_over_real_items(tiny):
    settings = {**tiny["config"], "train_mode": "sequence", "loss_type": "CE", "use_distillation": False,
                "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}
    _, model, (train, _, _) = build("LLMESR_SASRec", {**settings, "ce_chunk_size": 3})
    model.eval()
    batch = _batch(train)
    with torch.no_grad():
        tables = model.view_tables()
        hidden = model.encode(batch["item_id_list"], tables)
        seq, positions, targets, valid = model.training_positions(
            batch["item_id_list"], batch["item_length"], batch["item_id"]
        )
        h = hidden[valid]
        logits = h @ model.item_table(tables).T
        expected = F.cross_entropy(logits[:, 1:], targets[valid] - 1)  # [PAD] is no candidate
        assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)


@pytest.mark.parametrize("sampling", ["uniform", "in_batch", "mixed"])
def test_sampled_softmax_trains_every_model(sampling, tiny):
    no_dropout = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "dropout_prob": 0.0}
    for name in ("LLMESR_SASRec", "LLMESR_GRU4Rec", "LLMESR_BERT4Rec"):
        _, model, (train, _, _) = build(name, {**tiny["config"], **no_dropout, "loss_type": "SSM", "num_negatives": 16,
                                               "negative_sampling": sampling, "use_distillation": False})
        batch = _batch(train, 16)

        def fixed_draw_loss():  # the same negatives (and BERT4Rec masks) before and after training
            torch.manual_seed(123)
            with torch.no_grad():
                return model.calculate_loss(batch).item()

        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        model.train()
        before = fixed_draw_loss()
        for _ in range(20):
            optimizer.zero_grad()
            loss = model.calculate_loss(batch)
            assert torch.isfinite(loss)
            loss.backward()
            optimizer.step()
        assert fixed_draw_loss() < before, name


def test_logq_of_each_sampler(tiny):
    settings = {**tiny["config"], "loss_type": "SSM", "num_negatives": 8}
    models = {
        s: build("LLMESR_SASRec", {**settings, "negative_sampling": s})[1] for s in ("uniform", "in_batch", "mixed")
    }
    _, _, (train, _, _) = build("LLMESR_SASRec", settings)
    counts = train._dataset.item_counts.float()
    popularity = counts[1:] / counts[1:].sum()
    n = models["uniform"].n_items - 1
    items = torch.arange(1, n + 1)
    targets = torch.tensor([3, 3, 5])
    # in-batch: only the batch's targets, at most one draw per position; q = popularity.
    pool, share = models["in_batch"].objective.pool(targets)
    assert len(pool) == 3 and set(pool.tolist()) <= {3, 5} and share == 1.0
    assert torch.allclose(models["in_batch"].objective.offsets(items, share), -torch.log(popularity))
    # uniform: any real item; q is the same for all, so the correction shifts every logit alike.
    pool, share = models["uniform"].objective.pool(targets)
    assert len(pool) == 8 and share == 0.0 and (pool >= 1).all() and (pool <= n).all()
    assert torch.allclose(
        models["uniform"].objective.offsets(items, share), torch.full((n,), float(torch.log(torch.tensor(n))))
    )
    # mixed: half of each (in-batch draws capped by the batch's positions), q the matching mixture.
    pool, share = models["mixed"].objective.pool(targets)
    assert len(pool) == 8 and share == 3 / 8
    expected = -torch.log(share * popularity + (1 - share) / n)
    assert torch.allclose(models["mixed"].objective.offsets(items, share), expected)


def test_id_anchor_starts_at_the_pca_and_moves_rare_items_with_the_map(tiny):
    settings = {**tiny["config"], "loss_type": "CE", "use_distillation": False}
    _, anchored, (train, _, _) = build("LLMESR_SASRec", {**settings, "id_anchor": True})
    _, free, _ = build("LLMESR_SASRec", settings)
    with torch.no_grad():
        start = anchored.view_tables()[0]
        assert torch.allclose(start[1 : anchored.n_items], free.view_tables()[0][1 : free.n_items], atol=1e-5)
        assert torch.equal(start[0], torch.zeros_like(start[0]))  # [PAD] has no text: zero row
    optimizer = torch.optim.Adam(anchored.parameters(), lr=0.01)
    anchored.train()
    batch = _batch(train, 4)
    seen = torch.unique(torch.cat([batch["item_id_list"].reshape(-1), batch["item_id"]]))
    unseen = torch.tensor([i for i in range(1, anchored.n_items) if i not in set(seen.tolist())], dtype=torch.long)
    for _ in range(3):
        optimizer.zero_grad()
        anchored.calculate_loss(batch).backward()
        optimizer.step()
    with torch.no_grad():
        moved = (anchored.view_tables()[0] - start).norm(dim=1)
    # Every item moves through the shared map, items the batch never shows included.
    assert len(unseen) and (moved[unseen] > 0).all()
    assert anchored.id_projection.weight.grad is not None


def test_id_dropout_needs_the_anchor(tiny):
    with pytest.raises(ValueError, match="id_dropout"):
        build("LLMESR_SASRec", {**tiny["config"], "id_dropout": 0.5})
    _, model, (train, _, _) = build("LLMESR_SASRec", {**tiny["config"], "id_anchor": True, "id_dropout": 0.5})
    model.eval()
    with torch.no_grad():
        first = model.view_tables()[0]
        assert torch.equal(first, model.view_tables()[0])  # no dropout at inference
