"""LLM-ESR's dual-view modelling and retrieval-augmented self-distillation, for any sequence encoder.

A backbone binds to ``DualViewRecommender`` by building its encoder in ``build_encoder`` and, when it
is not left-to-right, by overriding how training positions and the user position are chosen.
"""
import copy
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_llmesr.dataset import LLMESRDataset, longest_prefix_rows
from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.model.layers import CrossAttention, attention_mask, init_weights
from recbole_llmesr.model.losses import chunked_cross_entropy, sampled_softmax

class ModelConfigError(LLMESRError, ValueError):
    """A model hyper-parameter is missing, of the wrong type or inconsistent with the data."""


class ModelConfigTypeError(ModelConfigError, TypeError):
    """A model hyper-parameter has the wrong type (e.g. ``alpha: "0.1"``)."""


TRAIN_MODES = ("prefix", "sequence")
LOSS_TYPES = ("CE", "SSM", "BPR", "BCE")
NEGATIVE_SAMPLING = ("uniform", "in_batch", "mixed")
TEACHER_MODES = ("memory_bank", "online")
TEACHER_UPDATES = ("epoch", "batch")
ID_INITS = ("pca", "random")
COLD_COLLAB = ("regression", "pca", "zero")
#: Rows encoded together when ``forward`` gets a large batch (see there).
LENGTH_GROUP = 256


class DualViewRecommender(SequentialRecommender):
    """Base class of the LLM-ESR models.

    - Semantic view: frozen LLM item embeddings through a two-layer adapter (d -> d/2 -> hidden).
    - Collaborative view: trainable ID embeddings, initialised by PCA of the LLM embeddings.
    - Both views run through one shared encoder (or two), fused at sequence level by two
      cross-attention modules and at logit level by concatenation: the score is
      ``<concat(h_collab, h_sem), concat(e_id, adapter(e_llm))>``.
    - Long-tail option, off by default (not in the paper): ``logit_adjustment`` adds
      ``tau * log(1 + training count)`` to the CE training logits, not to the inference scores.
    - Self-distillation adds ``alpha * MSE(user, mean of similar users)`` with the similar users found
      offline from LLM user embeddings; the teacher comes from a memory bank or an online forward pass.
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
        self.hidden_size = config["hidden_size"]
        self.n_users = dataset.user_num
        self.train_mode = _choice(config, "train_mode", TRAIN_MODES)
        self.loss_type = _choice(config, "loss_type", LOSS_TYPES)
        self.use_semantic_view = _flag(config, "use_semantic_view")
        self.use_collab_view = _flag(config, "use_collab_view")
        self.use_cross_attention = _flag(config, "use_cross_attention")
        self.shared_encoder = _flag(config, "shared_encoder")
        self.id_init = _choice(config, "id_init", ID_INITS)
        self.id_anchor = _flag(config, "id_anchor")
        if self.id_anchor and self.id_init != "pca":
            raise ModelConfigError("id_anchor keeps the PCA map of id_init: pca trainable; it needs id_init: pca")
        self.id_dropout = _number(config, "id_dropout", float)
        if not 0 <= self.id_dropout < 1 or (self.id_dropout and not self.id_anchor):
            raise ModelConfigError(f"id_dropout must be in [0, 1) and needs id_anchor: True; got {self.id_dropout}")
        self.use_distillation = _flag(config, "use_distillation")
        self.alpha = _number(config, "alpha", float)
        self.sim_user_num = _number(config, "sim_user_num", int)
        self.teacher_mode = _choice(config, "teacher_mode", TEACHER_MODES)
        self.teacher_refresh_steps = _number(config, "teacher_refresh_steps", int)
        self.teacher_update = _choice(config, "teacher_update", TEACHER_UPDATES)
        self.initializer_range = config["initializer_range"]
        self.logit_adjustment = _number(config, "logit_adjustment", float)
        if self.logit_adjustment and self.loss_type not in ("CE", "SSM"):
            raise ModelConfigError(f"logit_adjustment corrects a softmax (loss_type: CE or SSM); got loss_type: {self.loss_type}")
        self.ce_chunk_size = config["ce_chunk_size"]
        if self.ce_chunk_size is not None:
            self.ce_chunk_size = _number(config, "ce_chunk_size", int)
        self.num_negatives = _number(config, "num_negatives", int)
        self.negative_sampling = _choice(config, "negative_sampling", NEGATIVE_SAMPLING)
        self.logq_correction = _flag(config, "logq_correction")
        if _flag(config, "leaky_attention"):
            self.causal = False  # the official code's attention: every position sees the whole sequence
        if not (self.use_semantic_view or self.use_collab_view):
            raise ModelConfigError("At least one of use_semantic_view and use_collab_view must be True")

        self.views: List[str] = [v for v, on in (("collab", self.use_collab_view), ("semantic", self.use_semantic_view)) if on]
        self.n_tokens = self.n_items + self.extra_tokens()
        llm = dataset.llm_item_emb
        if llm is not None:
            # Extra tokens (e.g. [MASK]) have no text: a zero row, like [PAD].
            llm = torch.cat([llm, llm.new_zeros(self.n_tokens - len(llm), llm.size(1))])
            self.register_buffer("llm_item_emb", llm)  # frozen, and saved with the model for serving
        if self.use_semantic_view:
            d = llm.size(1)
            adapter_hidden = config["adapter_hidden_size"] or d // 2
            self.adapter = nn.Sequential(nn.Linear(d, adapter_hidden), nn.Linear(adapter_hidden, self.hidden_size))
        if self.use_collab_view:
            self.item_embedding = nn.Embedding(self.n_tokens, self.hidden_size, padding_idx=0)

        encoder = self.build_encoder(config)
        self.encoders = nn.ModuleDict(
            {view: encoder if self.shared_encoder or i == 0 else copy.deepcopy(encoder) for i, view in enumerate(self.views)}
        )
        if self.use_cross_attention and len(self.views) == 2:
            heads = config["cross_attention_heads"]
            self.semantic_to_collab = CrossAttention(self.hidden_size, heads)  # semantic queries, collab keys
            self.collab_to_semantic = CrossAttention(self.hidden_size, heads)

        self.apply(lambda m: init_weights(m, self.initializer_range))
        if self.use_collab_view and self.id_anchor:
            # ID vector = a shared, trainable map of the LLM embedding (starting as the PCA) + a free
            # residual (starting at 0). A rare item's residual barely moves, but the map moves with
            # training, so its vector follows the space the encoder learns instead of staying at init.
            pca = self._pca(llm)
            self.id_projection = nn.Linear(llm.size(1), self.hidden_size)
            self.id_projection.weight.data.copy_(torch.from_numpy(pca.components_).float())
            self.id_projection.bias.data.copy_(-torch.from_numpy(pca.components_ @ pca.mean_).float())
            self.item_embedding.weight.data.zero_()
        elif self.use_collab_view and self.id_init == "pca":
            self.item_embedding.weight.data.copy_(self._pca_init(llm))
        counts = getattr(dataset, "item_counts", None)  # None when a saved model is rebuilt for serving
        # Only training uses the prior and the sampling probabilities, so they are not saved with the model.
        prior = torch.log1p(counts.float()) if self.logit_adjustment and counts is not None else None
        self.register_buffer("log_prior", prior, persistent=False)
        self.register_buffer("popularity", self._sampling_popularity(counts), persistent=False)

        if self.use_distillation:
            self._init_teacher(dataset)

    # ---- hooks for backbones -------------------------------------------------------------------

    def build_encoder(self, config) -> nn.Module:
        """The sequence encoder: ``prepare(x, item_seq)`` then ``forward(x, item_seq, mask)``."""
        raise NotImplementedError

    def extra_tokens(self) -> int:
        """Tokens beyond the item ids (BERT4Rec's [MASK])."""
        return 0

    def training_positions(self, item_seq, item_seq_len, pos_items):
        """Input sequence, supervised positions ``[B, P]``, their targets ``[B, P]`` and validity.

        Left-to-right backbones: the last position (``prefix``) or every position (``sequence``).
        """
        if self.train_mode == "prefix":
            return item_seq, (item_seq_len - 1).unsqueeze(1), pos_items.unsqueeze(1), torch.ones_like(pos_items, dtype=torch.bool).unsqueeze(1)
        targets = torch.cat([item_seq[:, 1:], torch.zeros_like(item_seq[:, :1])], dim=1)
        targets = targets.scatter(1, (item_seq_len - 1).unsqueeze(1), pos_items.unsqueeze(1))
        positions = torch.arange(item_seq.size(1), device=item_seq.device).expand_as(item_seq)
        return item_seq, positions, targets, positions < item_seq_len.unsqueeze(1)

    def user_position(self, item_seq, item_seq_len) -> Tuple[torch.Tensor, torch.Tensor]:
        """The input to encode for inference and the position whose state is the user representation."""
        return item_seq, item_seq_len - 1

    # ---- the mechanism ------------------------------------------------------------------------

    def _pca(self, llm: torch.Tensor):
        """PCA of the real items' LLM embeddings down to ``hidden_size`` (deterministic)."""
        from sklearn.decomposition import PCA

        items = llm[1 : self.n_items].cpu().numpy()
        if self.hidden_size > min(items.shape):
            raise ModelConfigError(
                f"id_init=pca needs hidden_size ({self.hidden_size}) <= min(#items, LLM dimension) = "
                f"{min(items.shape)}; lower hidden_size or set id_init: random"
            )
        return PCA(n_components=self.hidden_size, random_state=0).fit(items)

    def _pca_init(self, llm: torch.Tensor) -> torch.Tensor:
        table = torch.zeros(self.n_tokens, self.hidden_size)
        table[1 : self.n_items] = torch.from_numpy(self._pca(llm).transform(llm[1 : self.n_items].numpy()))
        return table

    # ---- cold-start items ----------------------------------------------------------------------

    @torch.no_grad()
    def add_items(self, llm_vectors: torch.Tensor, collab: str = "regression") -> torch.Tensor:
        """Append items known only by their LLM embedding (no interactions); returns their new ids.

        The new items take ids ``n_items, n_items + 1, ...`` (extra tokens such as [MASK] move behind
        them), so they can be scored and can appear in input sequences. The semantic view embeds them
        like any item. The collaborative view has no trained vector for them; ``collab`` chooses one:

        - ``regression``: a ridge map from LLM embeddings to the *trained* ID embeddings, fitted on the
          known items, rescaled to their mean norm. It follows training, which moved the IDs away from
          their initialisation.
        - ``pca``: the PCA projection used by ``id_init: pca`` at initialisation.
        - ``zero``: no collaborative signal; the item is ranked by the semantic view alone.

        With ``id_anchor`` the trained map of the LLM embedding already gives new items a collaborative
        vector; their residual is 0 and ``collab`` is not used.
        """
        if collab not in COLD_COLLAB:
            raise ModelConfigError(f"collab must be one of {', '.join(COLD_COLLAB)}; got {collab!r}")
        if getattr(self, "llm_item_emb", None) is None:
            raise ModelConfigError("Cold-start items need the LLM item embeddings (use_semantic_view or id_init: pca)")
        llm_vectors = torch.as_tensor(llm_vectors, dtype=self.llm_item_emb.dtype, device=self.llm_item_emb.device)
        if llm_vectors.ndim != 2 or llm_vectors.size(1) != self.llm_item_emb.size(1):
            raise ModelConfigError(
                f"Cold-start item embeddings must have shape [n, {self.llm_item_emb.size(1)}] (the dataset's "
                f"embedder dimension), got {tuple(llm_vectors.shape)}"
            )
        if not torch.isfinite(llm_vectors).all():
            raise ModelConfigError("Cold-start item embeddings hold NaN or inf")
        n_new, old = len(llm_vectors), self.n_items
        known = self.llm_item_emb[: self.n_items]
        self.llm_item_emb = torch.cat([known, llm_vectors, self.llm_item_emb[self.n_items :]])
        if self.use_collab_view:
            ids = self.item_embedding.weight
            if self.id_anchor:
                new_ids = ids.new_zeros(n_new, ids.size(1))
            elif collab == "regression":
                new_ids = _ridge(known[1:], ids[1 : self.n_items]).predict(llm_vectors)
                # Ridge predictions shrink towards the mean; give them the known items' mean norm, or the
                # new items would lose every dot product to trained ones by their length alone.
                new_ids = new_ids * (ids[1 : self.n_items].norm(dim=1).mean() / new_ids.norm(dim=1).mean().clamp(min=1e-12))
            elif collab == "pca":
                new_ids = torch.from_numpy(self._pca(known).transform(llm_vectors.cpu().numpy())).to(ids)
            else:
                new_ids = ids.new_zeros(n_new, ids.size(1))
            table = torch.cat([ids[: self.n_items], new_ids.to(ids), ids[self.n_items :]])
            self.item_embedding = nn.Embedding.from_pretrained(table, freeze=False, padding_idx=0)
        if self.log_prior is not None:  # a new item has no training interaction: log(1 + 0) = 0
            self.log_prior = torch.cat([self.log_prior[: self.n_items], self.log_prior.new_zeros(n_new), self.log_prior[self.n_items :]])
        self.n_items += n_new
        self.n_tokens += n_new
        return torch.arange(old, self.n_items, device=llm_vectors.device)

    def view_tables(self, rows: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Per-view token tables ``[n_tokens, hidden]``, or only their ``rows``.

        The adapter runs once per call over the rows needed, not per token occurrence; sampled losses ask
        for the few thousand items of a batch rather than the whole catalogue.
        """
        tables = []
        for view in self.views:
            if view == "collab":
                table = self.item_embedding.weight if rows is None else self.item_embedding(rows)
                if self.id_anchor:
                    llm = self.llm_item_emb if rows is None else self.llm_item_emb[rows]
                    # [PAD] (and [MASK]) have no text: their rows stay the residual alone.
                    has_text = (llm != 0).any(-1, keepdim=True)
                    if self.training and self.id_dropout:
                        # Items trained without their residual teach the encoder to rank by the mapped LLM
                        # vector alone, which is all a rare item has (DropoutNet's idea, per item).
                        keep = torch.rand(len(table), 1, device=table.device) >= self.id_dropout
                        table = table * (keep | ~has_text)
                    table = table + self.id_projection(llm) * has_text
                tables.append(table)
            else:
                tables.append(self.adapter(self.llm_item_emb if rows is None else self.llm_item_emb[rows]))
        return tables

    def encode(self, item_seq: torch.Tensor, tables: List[torch.Tensor]) -> torch.Tensor:
        """Hidden states ``[B, L, hidden * n_views]`` for every position (zeros after the batch's longest row)."""
        # Sequences are left-aligned: columns after the longest one are padding in every row, and a row's
        # states do not depend on its padding, so they are not computed.
        length = item_seq.size(1)
        filled = (item_seq != 0).any(0).nonzero()
        width = int(filled.max()) + 1 if len(filled) else 1
        item_seq = item_seq[:, :width]
        mask = attention_mask(item_seq, self.causal)
        inputs = [self.encoders[v].prepare(F.embedding(item_seq, t), item_seq) for v, t in zip(self.views, tables)]
        if len(inputs) == 2 and self.use_cross_attention:
            collab, semantic = inputs
            inputs = [self.semantic_to_collab(semantic, collab, mask), self.collab_to_semantic(collab, semantic, mask)]
        hidden = torch.cat([self.encoders[v](x, item_seq, mask) for v, x in zip(self.views, inputs)], dim=-1)
        return F.pad(hidden, (0, 0, 0, length - width)) if width < length else hidden

    def item_table(self, tables: List[torch.Tensor]) -> torch.Tensor:
        """Scoring vectors of the real items ``[n_items, hidden * n_views]``."""
        return torch.cat(tables, dim=-1)[: self.n_items]

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
        negatives, offsets = None, None
        if self.loss_type in ("BCE", "BPR"):
            history = torch.cat([item_seq, pos_items.unsqueeze(1)], dim=1)
            negatives = self._sample_negatives(history, valid.size(1))[valid]
        elif self.loss_type == "SSM":
            negatives, share = self._negative_pool(targets)
            offsets = self._sampled_offsets(targets, share), self._sampled_offsets(negatives, share)
        if self.loss_type != "CE" and self.causal and self.batch_item_tables:
            # Only the batch's items are looked up: relabel them 0..R-1 (0 stays [PAD]) and build R rows.
            parts = [seq.new_zeros(1), seq.reshape(-1), targets, negatives.reshape(-1)]
            rows, local = torch.unique(torch.cat(parts), return_inverse=True)
            _, seq, targets, negatives = (p.view_as(o) for p, o in zip(local.split([x.numel() for x in parts]), (parts[0], seq, targets, negatives)))
            tables = self.view_tables(rows)
            items = torch.cat(tables, dim=-1)
        else:
            tables = self.view_tables()
            items = self.item_table(tables)
        hidden = self.encode(seq, tables)
        h = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))[valid]
        loss = self._rec_loss(h, targets, items, negatives, offsets)
        if self.use_distillation and self.alpha > 0:
            if self.causal and self.train_mode == "prefix":
                student = h  # the last position is the user representation: no second pass needed
            elif self.causal:
                student = self.gather_indexes(hidden, item_seq_len - 1)
            else:
                student = self.forward(item_seq, item_seq_len, tables)
            user_ids = interaction[self.USER_ID]
            loss = loss + self.alpha * self.distillation_loss(user_ids, student)
            if self.teacher_mode == "memory_bank" and self.teacher_update == "batch":
                # The student just encoded these users; where its input is the teacher's (the user's
                # longest training prefix), its state replaces the stored one: no extra forward pass.
                same = item_seq_len == self.teacher_len[user_ids]
                self.user_bank[user_ids[same]] = student[same].detach()
        return loss

    def _rec_loss(self, h, targets, items, negatives, offsets) -> torch.Tensor:
        if self.loss_type == "CE":
            # Item 0 is [PAD]: never a target, never a candidate.
            bias = self._logit_prior()
            return chunked_cross_entropy(h, items[1:], targets - 1, None if bias is None else bias[1:], self.ce_chunk_size)
        if self.loss_type == "SSM":
            return sampled_softmax(h, items[targets], items[negatives], targets, negatives, *offsets)
        pos_score = (h * items[targets]).sum(-1)
        neg_score = (h * items[negatives]).sum(-1)
        if self.loss_type == "BPR":
            return -F.logsigmoid(pos_score - neg_score).mean()
        return F.binary_cross_entropy_with_logits(pos_score, torch.ones_like(pos_score)) + F.binary_cross_entropy_with_logits(
            neg_score, torch.zeros_like(neg_score)
        )

    def _logit_prior(self) -> Optional[torch.Tensor]:
        """``tau * log(1 + training count)`` per item for logit-adjusted training, or None when off."""
        if not self.logit_adjustment:
            return None
        if self.log_prior is None:
            raise ModelConfigError("logit_adjustment needs the training split's item counts: build the model on train_data.dataset")
        # Logit adjustment (Menon et al., ICLR 2021): the loss sees each item's log-prior, the scores at
        # inference do not, so the embeddings need not learn popularity themselves.
        return self.logit_adjustment * self.log_prior[: self.n_items]

    def _sampling_popularity(self, counts: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Each item's share of the training interactions: the chance that an in-batch draw (a training
        target) is that item. Only sampled softmax needs it."""
        if self.loss_type != "SSM" or counts is None:
            return None
        popularity = counts.float() / counts[1:].sum().clamp(min=1)
        popularity[0] = 0.0  # [PAD] is never drawn
        return popularity

    def _negative_pool(self, targets: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """``[K]`` negatives shared by the batch (uniform items, other positions' targets, or half of each),
        and the share of them drawn in-batch."""
        k = self.num_negatives
        n_batch = {"uniform": 0, "in_batch": k, "mixed": k // 2}[self.negative_sampling]
        n_batch = min(n_batch, len(targets))
        n_uniform = 0 if self.negative_sampling == "in_batch" else k - n_batch
        picked = targets[torch.randint(len(targets), (n_batch,), device=targets.device)]
        uniform = torch.randint(1, self.n_items, (n_uniform,), device=targets.device)
        return torch.cat([picked, uniform]), n_batch / max(1, n_batch + n_uniform)

    def _sampled_offsets(self, items: torch.Tensor, in_batch_share: float) -> torch.Tensor:
        """Constants added to the sampled logits: ``-log q`` (logQ correction) plus the logit adjustment.

        ``q``: the probability that one draw of the pool is the item, a mix of the in-batch draws
        (popularity) and the uniform ones.
        """
        offset = torch.zeros(items.shape, device=items.device)
        if self.logq_correction:
            if self.popularity is None:
                raise ModelConfigError("logq_correction needs the training split's item counts: build the model on train_data.dataset")
            q = in_batch_share * self.popularity[items] + (1 - in_batch_share) / (self.n_items - 1)
            offset = offset - torch.log(q.clamp(min=1e-12))
        prior = self._logit_prior()
        if prior is not None:
            offset = offset + prior[items]
        return offset

    def _sample_negatives(self, history: torch.Tensor, n: int, rounds: int = 10) -> torch.Tensor:
        """``[B, n]`` uniform items not in each user's history (rejection sampling, a few rounds)."""
        neg = torch.randint(1, self.n_items, (history.size(0), n), device=history.device)
        for _ in range(rounds):
            clash = (neg.unsqueeze(-1) == history.unsqueeze(1)).any(-1)
            if not clash.any():
                break
            neg[clash] = torch.randint(1, self.n_items, (int(clash.sum()),), device=history.device)
        return neg

    def predict(self, interaction):
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        items = self.item_table(self.view_tables())[interaction[self.ITEM_ID]]
        return (user * items).sum(-1)

    def full_sort_predict(self, interaction):
        tables = self.view_tables()
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], tables)
        return user @ self.item_table(tables).T

    # ---- retrieval-augmented self-distillation --------------------------------------------------

    def _init_teacher(self, dataset) -> None:
        if dataset.sim_users is None:
            raise ModelConfigError("use_distillation needs the similar-user lists (<dataset>.sim_users.npz)")
        self.register_buffer("sim_users", dataset.sim_users[:, : self.sim_user_num].clone(), persistent=False)
        # Each user's teacher input: its longest training prefix (the training history minus its last
        # item), never a validation or test item.
        inter = dataset.inter_feat
        uid, seq, length = inter[self.USER_ID], inter[self.ITEM_SEQ], inter[self.ITEM_SEQ_LEN]
        rows = torch.from_numpy(longest_prefix_rows(uid.numpy(), length.numpy()))
        teacher_seq = torch.zeros(self.n_users, seq.size(1), dtype=torch.long)
        teacher_len = torch.zeros(self.n_users, dtype=torch.long)
        teacher_seq[uid[rows]] = seq[rows]
        teacher_len[uid[rows]] = length[rows]
        self.register_buffer("teacher_seq", teacher_seq, persistent=False)
        self.register_buffer("teacher_len", teacher_len, persistent=False)
        width = self.hidden_size * len(self.views)
        self.register_buffer("user_bank", torch.zeros(self.n_users, width), persistent=False)
        self.bank_fresh = False
        self.steps_since_refresh = 0

    def on_epoch_start(self) -> None:
        """Called by the trainer before each training epoch."""
        if self.use_distillation and self.teacher_update == "epoch":
            self.bank_fresh = False

    @torch.no_grad()
    def refresh_user_bank(self, batch_size: int = 1024) -> None:
        """Recompute every user's representation (the teacher memory bank) in eval mode."""
        was_training = self.training
        self.eval()
        tables = self.view_tables()
        users = torch.nonzero(self.teacher_len > 0).squeeze(1)
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            self.user_bank[batch] = self.forward(self.teacher_seq[batch], self.teacher_len[batch], tables)
        self.train(was_training)
        self.bank_fresh = True
        self.steps_since_refresh = 0

    def teacher(self, user_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean representation of each user's similar users, and which users have any."""
        neighbors = self.sim_users[user_ids]  # [B, N], 0 = none
        valid = (neighbors > 0) & (self.teacher_len[neighbors] > 0)
        if self.teacher_mode == "memory_bank":
            if not self.bank_fresh or 0 < self.teacher_refresh_steps <= self.steps_since_refresh:
                # epoch: every epoch; batch: once at the start (then the students keep it current)
                self.refresh_user_bank()
            self.steps_since_refresh += 1
            reps = self.user_bank[neighbors]
        else:  # the official code's online teacher: encode the N similar users with every batch
            with torch.no_grad():
                flat = neighbors.reshape(-1)
                reps = self.forward(self.teacher_seq[flat], self.teacher_len[flat].clamp(min=1)).view(*neighbors.shape, -1)
        weights = valid.unsqueeze(-1).float()
        mean = (reps * weights).sum(1) / weights.sum(1).clamp(min=1)
        return mean.detach(), valid.any(1)

    def distillation_loss(self, user_ids: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        target, has_teacher = self.teacher(user_ids)
        if not has_teacher.any():
            return student.new_zeros(())
        return F.mse_loss(student[has_teacher], target[has_teacher])


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


def _flag(config, key: str) -> bool:
    value = config[key]
    if not isinstance(value, bool):
        raise ModelConfigTypeError(f"Config key '{key}' must be True or False, got {value!r} ({type(value).__name__})")
    return value


def _choice(config, key: str, choices) -> str:
    value = config[key]
    if value not in choices:
        raise ModelConfigError(f"Config key '{key}' must be one of {', '.join(choices)}; got {value!r}")
    return value


def _number(config, key: str, kind):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ModelConfigTypeError(f"Config key '{key}' must be a{'n integer' if kind is int else ' number'}, got {value!r}")
    return kind(value)
