"""LLMESR_BERT4Rec: LLM-ESR with a BERT4Rec encoder."""
import torch

from recbole_llmesr.model.dual_view import DualViewRecommender
from recbole_llmesr.model.layers import TransformerEncoder


class LLMESR_BERT4Rec(DualViewRecommender):
    """LLM-ESR (Liu et al., NeurIPS 2024) on BERT4Rec's bidirectional encoder.

    Trained by cloze: a share ``mask_ratio`` of the sequence (the target appended) is replaced by a
    [MASK] token and predicted; with probability ``ft_ratio`` a sequence has only its last item masked,
    which is the inference setting. The user representation is the state of a [MASK] appended to the
    history.
    """

    causal = False

    def __init__(self, config, dataset):
        self.mask_ratio = config["mask_ratio"]
        self.ft_ratio = config["ft_ratio"]
        super().__init__(config, dataset)

    @property
    def mask_token(self) -> int:
        return self.n_items  # the row after the items; moves when cold-start items are added

    def build_encoder(self, config):
        return TransformerEncoder(config, self.max_seq_length + 1)

    def extra_tokens(self) -> int:
        return 1

    def _append(self, item_seq, item_seq_len, tokens):
        seq = torch.cat([item_seq, torch.zeros_like(item_seq[:, :1])], dim=1)
        return seq.scatter(1, item_seq_len.unsqueeze(1), tokens.unsqueeze(1))

    def user_position(self, item_seq, item_seq_len):
        return self._append(item_seq, item_seq_len, torch.full_like(item_seq_len, self.mask_token)), item_seq_len

    def training_positions(self, item_seq, item_seq_len, pos_items):
        full = self._append(item_seq, item_seq_len, pos_items)
        positions = torch.arange(full.size(1), device=full.device).expand_as(full)
        real = positions <= item_seq_len.unsqueeze(1)
        last = positions == item_seq_len.unsqueeze(1)
        masked = (torch.rand(full.shape, device=full.device) < self.mask_ratio) & real
        last_only = torch.rand(len(full), 1, device=full.device) < self.ft_ratio
        masked = torch.where(last_only | ~masked.any(1, keepdim=True), last, masked)
        return full.masked_fill(masked, self.mask_token), positions, full, masked
