"""LLMESR_SASRec: LLM-ESR with a SASRec encoder."""
from recbole_llmesr.model.dual_view import DualViewRecommender
from recbole_llmesr.model.layers import TransformerEncoder


class LLMESR_SASRec(DualViewRecommender):
    """LLM-ESR (Liu et al., NeurIPS 2024) on SASRec's causal self-attention encoder.

    Hyper-parameters: ``properties/model/LLMESR_SASRec.yaml``; the mechanism: ``DualViewRecommender``.
    """

    def build_encoder(self, config):
        return TransformerEncoder(config, self.max_seq_length)
