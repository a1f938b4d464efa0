"""LLMESR_GRU4Rec: LLM-ESR with a GRU4Rec encoder."""
from recbole_llmesr.model.dual_view import DualViewRecommender
from recbole_llmesr.model.layers import GRUEncoder


class LLMESR_GRU4Rec(DualViewRecommender):
    """LLM-ESR (Liu et al., NeurIPS 2024) on GRU4Rec's recurrent encoder.

    Hyper-parameters: ``properties/model/LLMESR_GRU4Rec.yaml``; the mechanism: ``DualViewRecommender``.
    """

    def build_encoder(self, config):
        return GRUEncoder(config)
