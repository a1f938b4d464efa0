"""Cold-start items: items known only by their text (an LLM embedding, no interactions) added to a trained
LLM-ESR model, so that they can be scored and can appear in histories."""
import torch
from torch import nn

from recbole_llmesr.model.options import ModelConfigError

COLD_COLLAB = ("regression", "pca", "zero")


@torch.no_grad()
def add_items(model, llm_vectors: torch.Tensor, collab: str = "regression") -> torch.Tensor:
    """Append items to ``model`` (a ``DualViewRecommender``); returns their new ids.

    The new items take ids ``n_items, n_items + 1, ...`` (extra tokens such as [MASK] move behind them).
    The semantic view embeds them like any item. The collaborative view has no trained vector for them;
    ``collab`` chooses one:

    - ``regression``: a ridge map from LLM embeddings to the *trained* ID embeddings, fitted on the known
      items, rescaled to their mean norm. It follows training, which moved the IDs away from their
      initialisation.
    - ``pca``: the PCA projection used by ``id_init: pca`` at initialisation.
    - ``zero``: no collaborative signal; the item is ranked by the semantic view alone.

    With ``id_anchor`` the trained map of the LLM embedding already gives new items a collaborative vector;
    their residual is 0 and ``collab`` is not used.
    """
    if collab not in COLD_COLLAB:
        raise ModelConfigError(f"collab must be one of {', '.join(COLD_COLLAB)}; got {collab!r}")
    if getattr(model, "llm_item_emb", None) is None:
        raise ModelConfigError("Cold-start items need the LLM item embeddings (use_semantic_view or id_init: pca)")
    llm_vectors = torch.as_tensor(llm_vectors, dtype=model.llm_item_emb.dtype, device=model.llm_item_emb.device)
    if llm_vectors.ndim != 2 or llm_vectors.size(1) != model.llm_item_emb.size(1):
        raise ModelConfigError(
            f"Cold-start item embeddings must have shape [n, {model.llm_item_emb.size(1)}] (the dataset's "
            f"embedder dimension), got {tuple(llm_vectors.shape)}"
        )
    if not torch.isfinite(llm_vectors).all():
        raise ModelConfigError("Cold-start item embeddings hold NaN or inf")
    n_new, old = len(llm_vectors), model.n_items
    known = model.llm_item_emb[: model.n_items]
    model.llm_item_emb = torch.cat([known, llm_vectors, model.llm_item_emb[model.n_items :]])
    if model.options.use_collab_view:
        ids = model.item_embedding.weight
        new_ids = _collab_vectors(model, known, ids, llm_vectors, collab)
        table = torch.cat([ids[: model.n_items], new_ids.to(ids), ids[model.n_items :]])
        model.item_embedding = nn.Embedding.from_pretrained(table, freeze=False, padding_idx=0)
    model.objective.add_items(n_new)
    model.n_items += n_new
    model.n_tokens += n_new
    return torch.arange(old, model.n_items, device=llm_vectors.device)


def _collab_vectors(
    model, known: torch.Tensor, ids: torch.Tensor, llm_vectors: torch.Tensor, collab: str
) -> torch.Tensor:
    n_new = len(llm_vectors)
    if model.options.id_anchor or collab == "zero":
        return ids.new_zeros(n_new, ids.size(1))
    if collab == "pca":
        return torch.from_numpy(model.fit_pca(known).transform(llm_vectors.cpu().numpy())).to(ids)
    new_ids = _ridge(known[1:], ids[1 : model.n_items]).predict(llm_vectors)
    # Ridge predictions shrink towards the mean; give them the known items' mean norm, or the new items
    # would lose every dot product to trained ones by their length alone.
    return new_ids * (ids[1 : model.n_items].norm(dim=1).mean() / new_ids.norm(dim=1).mean().clamp(min=1e-12))


class _Ridge:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight, bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() @ self.weight + self.bias).float()


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float = 1e-2) -> _Ridge:
    """Least squares ``y ~ x W + b`` with an L2 penalty scaled to the data (float64 for stability)."""
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    gram = xc.T @ xc
    gram += lam * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    weight = torch.linalg.solve(gram, xc.T @ (y - y_mean))
    return _Ridge(weight, y_mean - x_mean @ weight)
