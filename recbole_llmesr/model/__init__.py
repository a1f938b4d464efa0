"""The plugin's RecBole models: one mechanism (``dual_view``), three backbones."""
from recbole_llmesr.model.llmesr_bert4rec import LLMESR_BERT4Rec
from recbole_llmesr.model.llmesr_gru4rec import LLMESR_GRU4Rec
from recbole_llmesr.model.llmesr_sasrec import LLMESR_SASRec

__all__ = ["LLMESR_SASRec", "LLMESR_GRU4Rec", "LLMESR_BERT4Rec"]
