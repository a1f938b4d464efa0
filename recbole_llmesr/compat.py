"""Make RecBole 1.2.1 run on today's numpy and torch without patching RecBole itself.

Each fix is applied where the breakage would happen, and is safe to apply twice.
"""
import numpy as np
import torch

# numpy 2 removed these aliases; RecBole's Config assigns ``np.float = np.float_`` and its metrics use
# ``np.float``. With the aliases present RecBole works on numpy 1.x and 2.x alike.
_NUMPY_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_", "bool8": "bool_"}


def apply_numpy_shim() -> None:
    for alias, target in _NUMPY_ALIASES.items():
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))


def disable_anomaly_mode() -> None:
    """Undo ``torch.autograd.set_detect_anomaly(True)``, which RecBole's ``sine.py`` runs at import.

    Importing any RecBole sequential model turns anomaly detection on for the whole process and makes
    every training step about 30 % slower; nothing in RecBole needs it.
    """
    if torch.is_anomaly_enabled():
        torch.autograd.set_detect_anomaly(False)


def apply_scipy_shim() -> None:
    """Give ``dok_matrix`` back the private ``_update`` that RecBole's graph models call.

    LightGCN, NGCF, NCL, GCMC, SpectralCF, KGIN and MCCLK build their adjacency matrix with
    ``A._update(dict)``, a dict bulk-update that newer scipy no longer has (dok now wraps ``_dict``).
    """
    import scipy.sparse as sp

    for cls in (sp.dok_matrix, getattr(sp, "dok_array", None)):
        if cls is not None and not hasattr(cls, "_update"):
            cls._update = lambda self, data: self._dict.update(data)
