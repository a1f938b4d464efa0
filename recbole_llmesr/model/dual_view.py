"""LLM-ESR's dual-view modelling and retrieval-augmented self-distillation, for any sequence encoder.

A backbone binds to ``DualViewRecommender`` by building its encoder in ``build_encoder`` and, when it
is not left-to-right, by overriding how training positions and the user position are chosen.
"""
import copy
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_llmesr.dataset import LLMESRDataset
from recbole_llmesr.model.cold_start import add_items as add_cold_items
from recbole_llmesr.model.layers import CrossAttention, attention_mask, init_weights
from recbole_llmesr.model.objectives import Negatives, build_objective
from recbole_llmesr.model.options import DualViewOptions, ModelConfigError
from recbole_llmesr.model.teacher import SimilarUserTeacher

#: Rows encoded together when ``forward`` gets a large batch (see there).
LENGTH_GROUP = 256


class DualViewRecommender(SequentialRecommender):
    """Base class of the LLM-ESR models.

    - Semantic view: frozen LLM item embeddings through a two-layer adapter (d -> d/2 -> hidden).
    - Collaborative view: trainable ID embeddings, initialised by PCA of the LLM embeddings
      (``id_anchor``: a trainable map of the LLM embedding plus a free residual).
    - Both views run through one shared encoder (or two), fused at sequence level by two
      cross-attention modules (added to each view's own input; ``cross_attention_residual: False``
      replaces the input, as in the paper) and at logit level by concatenation: the score is
      ``<concat(h_collab, h_sem), concat(e_id, adapter(e_llm))>`` (``score_temperature``: each view's cosine / tau).
    - Self-distillation adds ``alpha * MSE(user, mean of similar users)`` with the similar users found
      offline from LLM user embeddings (``teacher.SimilarUserTeacher``).
    - Training objective: ``objectives`` (CE over all items, sampled softmax, or the paper's BCE).
    - ``transition_weight`` (not in the paper; inference only): scores get ``w * cos(e_llm(last input item),
      e_llm(item))``, a content-based item-to-item term that ranks a rare item by its text (``transition_scores``).
    """

    input_type = InputType.POINTWISE
    dataset_class = LLMESRDataset
    property_files = ("LLMESR",)  # properties/model/LLMESR.yaml, then the backbone's own file
    uses_llm_artifacts = True  # the runner builds the dataset's LLM artefacts before loading it

    causal = True  # left-to-right backbones; bidirectional ones override
    batch_item_tables = True  # sampled losses look up only the batch's items (exact; False = whole tables)
    dot_product_scores = True  # predict == a full_sort_predict column: fast sampled evaluation applies

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # hyper-parameters: the mechanism's (properties/model/LLMESR.yaml), then the shared backbone's
        self.options = options = DualViewOptions.from_config(config)
        self.hidden_size = config["hidden_size"]
        self.initializer_range = config["initializer_range"]
        self.n_users = dataset.user_num
        self.train_mode = options.train_mode
        self.alpha = options.alpha
        self.exclude_history = options.excludes_history(getattr(dataset, "repeat_share", None))
        # A plain float, not a parameter: the term is never trained, and a trained model's w may be retuned
        # on validation (benchmarks/transition_sweep.py) without touching its checkpoint.
        # auto: trained and validated without the term; the trainer then picks w from transition_grid.
        auto = options.transition_weight == "auto"
        self.transition_weight = 0.0 if auto else options.transition_weight
        self.transition_grid = options.transition_grid if auto else None
        if options.leaky_attention:
            self.causal = False  # the official code's attention: every position sees the whole sequence

        # define layers
        self.views: List[str] = list(options.views)
        self.n_tokens = self.n_items + self.extra_tokens()
        llm = dataset.llm_item_emb
        if llm is not None:
            # Extra tokens (e.g. [MASK]) have no text: a zero row, like [PAD].
            llm = torch.cat([llm, llm.new_zeros(self.n_tokens - len(llm), llm.size(1))])
            self.register_buffer("llm_item_emb", llm)  # frozen, and saved with the model for serving
        if options.use_semantic_view:
            adapter_hidden = options.adapter_hidden_size or llm.size(1) // 2
            self.adapter = nn.Sequential(
                nn.Linear(llm.size(1), adapter_hidden), nn.Linear(adapter_hidden, self.hidden_size)
            )
        if options.use_collab_view:
            self.item_embedding = nn.Embedding(self.n_tokens, self.hidden_size, padding_idx=0)
        encoder = self.build_encoder(config)
        self.encoders = nn.ModuleDict(
            {
                view: encoder if options.shared_encoder or i == 0 else copy.deepcopy(encoder)
                for i, view in enumerate(self.views)
            }
        )
        if options.use_cross_attention and len(self.views) == 2:
            self.semantic_to_collab = CrossAttention(  # semantic queries
                self.hidden_size, options.cross_attention_heads
            )
            self.collab_to_semantic = CrossAttention(self.hidden_size, options.cross_attention_heads)
        counts = getattr(dataset, "item_counts", None)  # None when a saved model is rebuilt for serving
        self.objective = build_objective(options, self.n_items, counts, [self.hidden_size] * len(self.views))
        self.teacher = None
        if options.use_distillation:
            fields = (self.USER_ID, self.ITEM_SEQ, self.ITEM_SEQ_LEN)
            self.teacher = SimilarUserTeacher.from_dataset(
                dataset, fields, self.n_users, self.hidden_size * len(self.views), options
            )

        # parameters initialization
        self.apply(lambda m: init_weights(m, self.initializer_range))
        if options.use_collab_view and options.id_init == "pca":
            self._init_ids_from_pca(llm)

    # ---- hooks for backbones -------------------------------------------------------------------

    def build_encoder(self, config) -> nn.Module:
        """The sequence encoder, shared by the views (or copied per view, ``shared_encoder: False``).

        Contract: ``prepare(x [B, L, H], item_seq [B, L]) -> [B, L, H]`` turns a view's item vectors into
        the encoder's input (positions, normalisation, dropout); ``forward(x [B, L, H], item_seq [B, L],
        mask [B, 1, L, L] or None) -> [B, L, H]`` gives every position's state, where ``mask`` is True where
        query i may attend to key j. Sequences are left-aligned (padding, id 0, on the right), and a
        position's state must not depend on padding.
        """
        raise NotImplementedError

    def extra_tokens(self) -> int:
        """Tokens beyond the item ids (BERT4Rec's [MASK]), given ids ``n_items, n_items + 1, ...``."""
        return 0

    def training_positions(self, item_seq, item_seq_len, pos_items):
        """The training input and what it supervises.

        Args:
            item_seq: ``[B, L]`` histories; item_seq_len: ``[B]`` their lengths; pos_items: ``[B]`` the
                item after each history.

        Returns:
            ``(input [B, T], positions [B, P], targets [B, P], valid [B, P])``: the sequence to encode, the
            positions whose states are supervised, each one's target item and which of them count.
            Left-to-right backbones: the last position (``prefix``) or every position (``sequence``).
        """
        if self.train_mode == "prefix":
            last = (item_seq_len - 1).unsqueeze(1)
            return item_seq, last, pos_items.unsqueeze(1), torch.ones_like(last, dtype=torch.bool)
        targets = torch.cat([item_seq[:, 1:], torch.zeros_like(item_seq[:, :1])], dim=1)
        targets = targets.scatter(1, (item_seq_len - 1).unsqueeze(1), pos_items.unsqueeze(1))
        positions = torch.arange(item_seq.size(1), device=item_seq.device).expand_as(item_seq)
        return item_seq, positions, targets, positions < item_seq_len.unsqueeze(1)

    def user_position(self, item_seq, item_seq_len) -> Tuple[torch.Tensor, torch.Tensor]:
        """The input to encode for inference (``[B, T]``) and the position whose state is the user
        representation (``[B]``)."""
        return item_seq, item_seq_len - 1

    # ---- item tables and the encoder ------------------------------------------------------------

    def fit_pca(self, llm: torch.Tensor):
        """PCA of the real items' LLM embeddings down to ``hidden_size`` (deterministic)."""
        from sklearn.decomposition import PCA

        items = llm[1 : self.n_items].cpu().numpy()
        if self.hidden_size > min(items.shape):
            raise ModelConfigError(
                f"id_init=pca needs hidden_size ({self.hidden_size}) <= min(#items, LLM dimension) = "
                f"{min(items.shape)}; lower hidden_size or set id_init: random"
            )
        return PCA(n_components=self.hidden_size, random_state=0).fit(items)

    def _init_ids_from_pca(self, llm: torch.Tensor) -> None:
        pca = self.fit_pca(llm)
        weight = torch.from_numpy(pca.components_).float()  # PCA.transform(x) = (x - mean) @ components.T
        bias = -weight @ torch.from_numpy(pca.mean_).float()
        if self.options.pca_init_std is not None:
            # Keep the LLM's geometry but start at the initializer's magnitude: raw PCA coordinates are
            # several times larger than a trained-from-scratch table, which makes the first softmaxes sharp.
            std = (llm[1 : self.n_items] @ weight.T + bias).std()
            weight, bias = weight * (self.options.pca_init_std / std), bias * (self.options.pca_init_std / std)
        if self.options.id_anchor:
            # ID vector = a shared, trainable map of the LLM embedding (starting as the PCA) + a free
            # residual (starting at 0). A rare item's residual barely moves, but the map moves with
            # training, so its vector follows the space the encoder learns instead of staying at init.
            self.id_projection = nn.Linear(llm.size(1), self.hidden_size)
            self.id_projection.weight.data.copy_(weight)
            self.id_projection.bias.data.copy_(bias)
            self.item_embedding.weight.data.zero_()
        else:
            table = torch.zeros(self.n_tokens, self.hidden_size)
            table[1 : self.n_items] = llm[1 : self.n_items] @ weight.T + bias
            self.item_embedding.weight.data.copy_(table)

    def view_tables(self, rows: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Per-view token tables ``[n_tokens, hidden]``, or only their ``rows``.

        The adapter runs once per call over the rows needed, not per token occurrence; sampled losses ask
        for the few thousand items of a batch rather than the whole catalogue.
        """
        llm = getattr(self, "llm_item_emb", None)
        if llm is not None and rows is not None:
            llm = llm[rows]
        return [self._collab_table(rows, llm) if view == "collab" else self.adapter(llm) for view in self.views]

    def _collab_table(self, rows: Optional[torch.Tensor], llm: Optional[torch.Tensor]) -> torch.Tensor:
        table = self.item_embedding.weight if rows is None else self.item_embedding(rows)
        if not self.options.id_anchor:
            return table
        has_text = (llm != 0).any(-1, keepdim=True)  # [PAD] and [MASK] keep the residual alone
        if self.training and self.options.id_dropout:
            # Items trained without their residual teach the encoder to rank by the mapped LLM vector
            # alone, which is all a rare item has (DropoutNet's idea, per item).
            keep = torch.rand(len(table), 1, device=table.device) >= self.options.id_dropout
            table = table * (keep | ~has_text)
        return table + self.id_projection(llm) * has_text

    def item_table(self, tables: List[torch.Tensor]) -> torch.Tensor:
        """Scoring vectors of the real items ``[n_items, hidden * n_views]``."""
        return self.scoring(torch.cat(tables, dim=-1)[: self.n_items])

    def scoring(self, x: torch.Tensor) -> torch.Tensor:
        """Vectors ``[..., hidden * n_views]`` as the score's dot product sees them.

        With ``score_temperature`` each view's half is unit-normalised and scaled by ``1 / sqrt(tau)``, so the
        score is ``sum over views of cos / tau``: every view weighs the same whatever its vectors' norms, and
        no item gains rank from a long vector.
        """
        tau = self.options.score_temperature
        if tau is None:
            return x
        halves = x.split(self.hidden_size, dim=-1)
        return torch.cat([F.normalize(h, dim=-1) for h in halves], dim=-1) / math.sqrt(tau)

    def encode(self, item_seq: torch.Tensor, tables: List[torch.Tensor]) -> torch.Tensor:
        """Hidden states ``[B, L, hidden * n_views]`` for every position (zeros after the batch's longest row),
        as scored (``scoring``)."""
        # Sequences are left-aligned: columns after the longest one are padding in every row, and a row's
        # states do not depend on its padding, so they are not computed.
        length = item_seq.size(1)
        filled = (item_seq != 0).any(0).nonzero()
        width = int(filled.max()) + 1 if len(filled) else 1
        item_seq = item_seq[:, :width]
        mask = attention_mask(item_seq, self.causal)
        inputs = [self.encoders[v].prepare(F.embedding(item_seq, t), item_seq) for v, t in zip(self.views, tables)]
        if len(inputs) == 2 and self.options.use_cross_attention:
            collab, semantic = inputs
            blends = [self.semantic_to_collab(semantic, collab, mask), self.collab_to_semantic(collab, semantic, mask)]
            # The paper's fusion replaces each item's own vector by a blend of the sequence's items, so the encoder
            # never sees the last item itself; the residual keeps it and adds the blend.
            inputs = [x + b for x, b in zip(inputs, blends)] if self.options.cross_attention_residual else blends
        hidden = self.scoring(torch.cat([self.encoders[v](x, item_seq, mask) for v, x in zip(self.views, inputs)], -1))
        return F.pad(hidden, (0, 0, 0, length - width)) if width < length else hidden

    # ---- RecBole's interface ------------------------------------------------------------------

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, tables=None) -> torch.Tensor:
        """User representations ``[B, hidden * n_views]``."""
        tables = self.view_tables() if tables is None else tables
        item_seq, position = self.user_position(item_seq, item_seq_len)
        if len(item_seq) <= LENGTH_GROUP:
            return self.gather_indexes(self.encode(item_seq, tables), position)
        # Large batches (evaluation, the teacher's memory bank): rows of similar length are encoded together,
        # so a group of short histories is cut short instead of padded to the batch's longest (on Beauty,
        # seven times fewer token positions).
        out = None
        for rows in torch.argsort(position).split(LENGTH_GROUP):
            part = self.gather_indexes(self.encode(item_seq[rows], tables), position[rows])
            out = part.new_empty(len(item_seq), part.size(1)) if out is None else out
            out[rows] = part
        return out

    def calculate_loss(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        seq, positions, targets, valid = self.training_positions(item_seq, item_seq_len, pos_items)
        targets = targets[valid]
        negatives = self.objective.sample(torch.cat([item_seq, pos_items.unsqueeze(1)], dim=1), targets, valid)
        seq, targets, negatives, tables, items = self._scored_items(seq, targets, negatives)
        hidden = self.encode(seq, tables)
        h = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))[valid]
        loss = self.objective(h, targets, items, negatives)
        if self.teacher is not None and self.alpha > 0:
            student = self._student(hidden, h, item_seq, item_seq_len, tables)
            user_ids = interaction[self.USER_ID]
            loss = loss + self.alpha * self.teacher.loss(user_ids, student, self)
            self.teacher.record(user_ids, item_seq_len, student)
        return loss

    def transition_scores(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor,
                          candidates: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """``w * cos(e_llm(last input item), e_llm(item))`` for every real item ``[B, n_items]``, or for one
        candidate per row ``[B]``; None when ``transition_weight`` is 0.

        Why at inference only: trained into the scores, the ID view learns to cancel it, and rare items gain
        nothing (Beauty, BENCHMARKS.md); added to a trained model's scores, it lifts them, because an ID vector
        that saw an item a few times cannot say what follows it, and its text can. Read from the frozen buffer
        at each call, so cold-start items get it too.
        """
        if not self.transition_weight:
            return None
        last = item_seq.gather(1, (item_seq_len - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        unit = F.normalize(self.llm_item_emb, dim=-1)
        if candidates is None:
            return self.transition_weight * (unit[last] @ unit[: self.n_items].T)
        return self.transition_weight * (unit[last] * unit[candidates]).sum(-1)

    def predict(self, interaction):
        item_seq, candidates = interaction[self.ITEM_SEQ], interaction[self.ITEM_ID]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        user = self.forward(item_seq, item_seq_len)
        scores = (user * self.item_table(self.view_tables())[candidates]).sum(-1)
        transition = self.transition_scores(item_seq, item_seq_len, candidates)
        scores = scores if transition is None else scores + transition.to(scores.dtype)
        if self.exclude_history:  # as in full_sort_predict, of which this is one column
            scores = scores.masked_fill((item_seq == candidates.unsqueeze(1)).any(1), float("-inf"))
        return scores

    def full_sort_predict(self, interaction):
        tables = self.view_tables()
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        scores = self.forward(item_seq, item_seq_len, tables) @ self.item_table(tables).T
        transition = self.transition_scores(item_seq, item_seq_len)
        scores = scores if transition is None else scores + transition.to(scores.dtype)
        if self.exclude_history:
            # Users of this data never take an item twice: an item of the input cannot be next.
            scores = scores.scatter(1, item_seq, float("-inf"))
        return scores

    # ---- training helpers -------------------------------------------------------------------------

    def _scored_items(self, seq, targets, negatives: Optional[Negatives]):
        """The tables the step needs: every item's for CE; for sampled losses only the batch's items,
        relabelled ``0..R-1`` (0 stays [PAD]) so that R rows are built instead of the catalogue."""
        if self.objective.whole_catalogue or not (self.causal and self.batch_item_tables):
            tables = self.view_tables()
            return seq, targets, negatives, tables, self.item_table(tables)
        parts = [seq.new_zeros(1), seq.reshape(-1), targets, negatives.items.reshape(-1)]
        rows, local = torch.unique(torch.cat(parts), return_inverse=True)
        _, seq, targets, neg = (
            p.view_as(o)
            for p, o in zip(local.split([x.numel() for x in parts]), (parts[0], seq, targets, negatives.items))
        )
        tables = self.view_tables(rows)
        return (
            seq, targets, Negatives(neg, negatives.pos_offset, negatives.neg_offset), tables,
            self.scoring(torch.cat(tables, dim=-1)),
        )

    def _student(self, hidden, h, item_seq, item_seq_len, tables) -> torch.Tensor:
        """Each row's user representation, from the main pass where it holds it."""
        if self.causal and self.train_mode == "prefix":
            return h  # the last position is the user representation: no second pass needed
        if self.causal:
            return self.gather_indexes(hidden, item_seq_len - 1)
        return self.forward(item_seq, item_seq_len, tables)

    def on_epoch_start(self) -> None:
        """Called by the trainer before each training epoch."""
        if self.teacher is not None:
            self.teacher.on_epoch_start()

    def add_items(self, llm_vectors: torch.Tensor, collab: str = "regression") -> torch.Tensor:
        """Cold-start items known only by their LLM embedding; see ``cold_start.add_items``."""
        return add_cold_items(self, llm_vectors, collab)
