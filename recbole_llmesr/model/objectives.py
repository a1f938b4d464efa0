"""What a training step scores its supervised positions against, and with which loss.

- ``FullSoftmax`` (``loss_type: CE``): every item, exact CE computed in blocks (``losses.chunked_cross_entropy``).
- ``SampledSoftmax`` (``SSM``): the target against ``num_negatives`` items shared by the batch, drawn
  uniformly, from the batch's targets, or half of each, with the logQ correction.
- ``OneNegative`` (``BCE``, the paper's, or ``BPR``): one uniform item outside the user's history per position.

Each reads only the training split's item counts (for logit adjustment and logQ), so the model can build
it from the dataset it is trained on; none of its state is saved with the model.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole_llmesr.model.losses import chunked_cross_entropy, sampled_softmax
from recbole_llmesr.model.options import DualViewOptions, ModelConfigError


@dataclass
class Negatives:
    """The negatives of one step: ``items`` ``[P]`` (one per position) or ``[K]`` (shared), and the constants
    added to the sampled logits of the targets (``[P]``) and of the negatives."""

    items: torch.Tensor
    pos_offset: Optional[torch.Tensor] = None
    neg_offset: Optional[torch.Tensor] = None


class Objective(nn.Module):
    """Base: the item count prior that logit adjustment adds to the training logits."""

    #: Whether the loss needs every item's scoring vector (else only those of the batch's items).
    whole_catalogue = False

    def __init__(self, n_items: int, counts: Optional[torch.Tensor], options: DualViewOptions):
        super().__init__()
        self.n_items = n_items
        self.logit_adjustment = options.logit_adjustment
        prior = torch.log1p(counts.float()) if self.logit_adjustment and counts is not None else None
        self.register_buffer("log_prior", prior, persistent=False)

    def prior(self) -> Optional[torch.Tensor]:
        """``tau * log(1 + training count)`` per item (logit adjustment, Menon et al., ICLR 2021), or None.

        The loss sees each item's log-prior and the scores at inference do not, so the embeddings need not
        learn popularity themselves."""
        if not self.logit_adjustment:
            return None
        if self.log_prior is None:
            raise ModelConfigError(
                "logit_adjustment needs the training split's item counts: build the model on train_data.dataset"
            )
        return self.logit_adjustment * self.log_prior[: self.n_items]

    def sample(self, history: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> Optional[Negatives]:
        """Negatives for the supervised ``targets`` (``[P]``); ``history``: each row's items ``[B, L+1]``,
        ``valid``: which of the ``[B, T]`` training positions are supervised."""
        return None

    def forward(
        self, h: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, negatives: Optional[Negatives]
    ) -> torch.Tensor:
        """Mean loss of the states ``h`` ``[P, D]`` against their ``targets`` (rows of ``items`` ``[R, D]``)."""
        raise NotImplementedError

    def add_items(self, n_new: int) -> None:
        """Cold-start items have no training interaction: log(1 + 0) = 0."""
        if self.log_prior is not None:
            tail = self.log_prior[self.n_items :]
            self.log_prior = torch.cat([self.log_prior[: self.n_items], self.log_prior.new_zeros(n_new), tail])
        self.n_items += n_new


class FullSoftmax(Objective):
    """CE over every real item ([PAD] is no candidate), optionally with each view's part also trained as a
    ranker of its own (``view_loss_weight``)."""

    whole_catalogue = True

    def __init__(self, n_items, counts, options: DualViewOptions, view_widths: Sequence[int]):
        super().__init__(n_items, counts, options)
        self.chunk_size = options.ce_chunk_size
        self.view_widths = list(view_widths)
        self.view_loss_weight = options.view_loss_weight

    def forward(self, h, targets, items, negatives=None):
        bias = self.prior()
        return chunked_cross_entropy(h, items[1:], targets - 1, None if bias is None else bias[1:], self.chunk_size,
                                     splits=self.view_widths, part_weight=self.view_loss_weight)


class SampledSoftmax(Objective):
    """CE of each target against a pool of negatives shared by the batch, logQ-corrected."""

    def __init__(self, n_items, counts, options: DualViewOptions):
        super().__init__(n_items, counts, options)
        self.num_negatives = options.num_negatives
        self.sampling = options.negative_sampling
        self.logq_correction = options.logq_correction
        popularity = None
        if counts is not None:
            # The chance that an in-batch draw (a training target) is each item.
            popularity = counts.float() / counts[1:].sum().clamp(min=1)
            popularity[0] = 0.0  # [PAD] is never drawn
        self.register_buffer("popularity", popularity, persistent=False)

    def sample(self, history, targets, valid):
        pool, share = self.pool(targets)
        return Negatives(pool, self.offsets(targets, share), self.offsets(pool, share))

    def pool(self, targets: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """``[K]`` negatives shared by the batch (uniform items, other positions' targets, or half of each),
        and the share of them drawn in-batch."""
        k = self.num_negatives
        n_batch = min({"uniform": 0, "in_batch": k, "mixed": k // 2}[self.sampling], len(targets))
        n_uniform = 0 if self.sampling == "in_batch" else k - n_batch
        picked = targets[torch.randint(len(targets), (n_batch,), device=targets.device)]
        uniform = torch.randint(1, self.n_items, (n_uniform,), device=targets.device)
        return torch.cat([picked, uniform]), n_batch / max(1, n_batch + n_uniform)

    def offsets(self, items: torch.Tensor, in_batch_share: float) -> torch.Tensor:
        """Constants added to the sampled logits: ``-log q`` (logQ correction) plus the logit adjustment.

        ``q``: the probability that one draw of the pool is the item, a mix of the in-batch draws
        (popularity) and the uniform ones.
        """
        offset = torch.zeros(items.shape, device=items.device)
        if self.logq_correction:
            if self.popularity is None:
                raise ModelConfigError(
                    "logq_correction needs the training split's item counts: build the model on train_data.dataset"
                )
            q = in_batch_share * self.popularity[items] + (1 - in_batch_share) / (self.n_items - 1)
            offset = offset - torch.log(q.clamp(min=1e-12))
        prior = self.prior()
        if prior is not None:
            offset = offset + prior[items]
        return offset

    def forward(self, h, targets, items, negatives):
        return sampled_softmax(h, items[targets], items[negatives.items], targets, negatives.items,
                               negatives.pos_offset, negatives.neg_offset)


class OneNegative(Objective):
    """The paper's loss (``BCE``: the target against one uniform item outside the history, per position)
    or ``BPR`` with the same negatives."""

    def __init__(self, n_items, counts, options: DualViewOptions):
        super().__init__(n_items, counts, options)
        self.pairwise = options.loss_type == "BPR"

    def sample(self, history, targets, valid):
        return Negatives(self.outside_history(history, valid.size(1))[valid])

    def outside_history(self, history: torch.Tensor, n: int, rounds: int = 10) -> torch.Tensor:
        """``[B, n]`` uniform items not in each user's history (rejection sampling, a few rounds)."""
        neg = torch.randint(1, self.n_items, (history.size(0), n), device=history.device)
        for _ in range(rounds):
            clash = (neg.unsqueeze(-1) == history.unsqueeze(1)).any(-1)
            if not clash.any():
                break
            neg[clash] = torch.randint(1, self.n_items, (int(clash.sum()),), device=history.device)
        return neg

    def forward(self, h, targets, items, negatives):
        # float32 scores: under autocast the products may be half precision.
        pos_score = (h * items[targets]).sum(-1).float()
        neg_score = (h * items[negatives.items]).sum(-1).float()
        if self.pairwise:
            return -F.logsigmoid(pos_score - neg_score).mean()
        return (F.binary_cross_entropy_with_logits(pos_score, torch.ones_like(pos_score))
                + F.binary_cross_entropy_with_logits(neg_score, torch.zeros_like(neg_score)))


def build_objective(options: DualViewOptions, n_items: int, counts: Optional[torch.Tensor],
                    view_widths: Sequence[int]) -> Objective:
    if options.loss_type == "CE":
        return FullSoftmax(n_items, counts, options, view_widths)
    if options.loss_type == "SSM":
        return SampledSoftmax(n_items, counts, options)
    return OneNegative(n_items, counts, options)
