"""recbole-llmesr: LLM-ESR (NeurIPS 2024) as a RecBole plugin.

Importing the package applies the compatibility fixes RecBole 1.2.1 needs on current numpy and torch.
"""
from recbole_llmesr.compat import apply_numpy_shim, apply_scipy_shim

apply_numpy_shim()
apply_scipy_shim()

__version__ = "0.1.0"
