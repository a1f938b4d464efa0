"""The LLM-ESR mechanism's hyper-parameters, read from a RecBole config and checked in one place.

Every key's default and meaning is in ``properties/model/LLMESR.yaml``; this module only reads and
validates them, so a wrong value fails when the model is built, with the key's name in the message.
"""
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from recbole_llmesr.errors import LLMESRError

TRAIN_MODES = ("prefix", "sequence")
LOSS_TYPES = ("CE", "SSM", "BPR", "BCE")
NEGATIVE_SAMPLING = ("uniform", "in_batch", "mixed")
TEACHER_MODES = ("memory_bank", "online")
TEACHER_UPDATES = ("epoch", "batch")
ID_INITS = ("pca", "random")
#: ``exclude_history: auto`` masks the input's items in full-sort scores when fewer training targets than
#: this repeat an item of their own input (0 on Beauty, ml-100k and ml-1m).
REPEAT_SHARE_LIMIT = 0.01


class ModelConfigError(LLMESRError, ValueError):
    """A model hyper-parameter is missing, of the wrong type or inconsistent with the data."""


class ModelConfigTypeError(ModelConfigError, TypeError):
    """A model hyper-parameter has the wrong type (e.g. ``alpha: "0.1"``)."""


def flag(config, key: str) -> bool:
    value = config[key]
    if not isinstance(value, bool):
        raise ModelConfigTypeError(f"Config key '{key}' must be True or False, got {value!r} ({type(value).__name__})")
    return value


def choice(config, key: str, choices) -> str:
    value = config[key]
    if value not in choices:
        raise ModelConfigError(f"Config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def number(config, key: str, kind, minimum: Optional[float] = None, below: Optional[float] = None):
    """``config[key]`` as ``kind`` (int or float), at least ``minimum`` and under ``below`` when given."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ModelConfigTypeError(
            f"Config key '{key}' must be a{'n integer' if kind is int else ' number'}, got {value!r}"
        )
    if (minimum is not None and value < minimum) or (below is not None and value >= below):
        bounds = " and ".join(
            b for b in (f">= {minimum}" if minimum is not None else "", f"< {below}" if below is not None else "") if b
        )
        raise ModelConfigError(f"Config key '{key}' must be {bounds}; got {value!r}")
    return kind(value)


@dataclass(frozen=True)
class DualViewOptions:
    """The mechanism's settings (the backbone's own, such as ``n_layers``, stay with the backbone)."""

    train_mode: str
    loss_type: str
    use_semantic_view: bool
    use_collab_view: bool
    use_cross_attention: bool
    cross_attention_heads: int
    cross_attention_residual: bool
    shared_encoder: bool
    leaky_attention: bool
    adapter_hidden_size: Optional[int]
    id_init: str
    pca_init_std: Optional[float]
    id_anchor: bool
    id_dropout: float
    exclude_history: Union[str, bool]
    logit_adjustment: float
    view_loss_weight: float
    score_temperature: Optional[float]
    transition_weight: Union[str, float]
    transition_grid: Tuple[float, ...]
    ce_chunk_size: Optional[int]
    num_negatives: int
    negative_sampling: str
    logq_correction: bool
    use_distillation: bool
    alpha: float
    sim_user_num: int
    teacher_mode: str
    teacher_update: str
    teacher_refresh_steps: int

    @classmethod
    def from_config(cls, config) -> "DualViewOptions":
        options = cls(
            train_mode=choice(config, "train_mode", TRAIN_MODES),
            loss_type=choice(config, "loss_type", LOSS_TYPES),
            use_semantic_view=flag(config, "use_semantic_view"),
            use_collab_view=flag(config, "use_collab_view"),
            use_cross_attention=flag(config, "use_cross_attention"),
            cross_attention_heads=number(config, "cross_attention_heads", int, minimum=1),
            cross_attention_residual=flag(config, "cross_attention_residual"),
            shared_encoder=flag(config, "shared_encoder"),
            leaky_attention=flag(config, "leaky_attention"),
            adapter_hidden_size=_optional(config, "adapter_hidden_size", int, minimum=1),
            id_init=choice(config, "id_init", ID_INITS),
            pca_init_std=_optional(config, "pca_init_std", float, minimum=0),
            id_anchor=flag(config, "id_anchor"),
            id_dropout=number(config, "id_dropout", float, minimum=0, below=1),
            exclude_history=choice(config, "exclude_history", ("auto", True, False)),
            logit_adjustment=number(config, "logit_adjustment", float, minimum=0),
            view_loss_weight=number(config, "view_loss_weight", float, minimum=0),
            score_temperature=_optional(config, "score_temperature", float, minimum=1e-6),
            transition_weight="auto" if config["transition_weight"] == "auto"
            else number(config, "transition_weight", float, minimum=0),
            transition_grid=_weights(config, "transition_grid"),
            ce_chunk_size=_optional(config, "ce_chunk_size", int, minimum=1),
            num_negatives=number(config, "num_negatives", int, minimum=1),
            negative_sampling=choice(config, "negative_sampling", NEGATIVE_SAMPLING),
            logq_correction=flag(config, "logq_correction"),
            use_distillation=flag(config, "use_distillation"),
            alpha=number(config, "alpha", float, minimum=0),
            sim_user_num=number(config, "sim_user_num", int, minimum=1),
            teacher_mode=choice(config, "teacher_mode", TEACHER_MODES),
            teacher_update=choice(config, "teacher_update", TEACHER_UPDATES),
            teacher_refresh_steps=number(config, "teacher_refresh_steps", int, minimum=0),
        )
        options.check()
        return options

    def check(self) -> None:
        """Settings that are each valid but not together."""
        if not (self.use_semantic_view or self.use_collab_view):
            raise ModelConfigError("At least one of use_semantic_view and use_collab_view must be True")
        if self.logit_adjustment and self.loss_type not in ("CE", "SSM"):
            raise ModelConfigError(
                f"logit_adjustment corrects a softmax (loss_type: CE or SSM); got loss_type: {self.loss_type}")
        if self.view_loss_weight and self.loss_type != "CE":
            raise ModelConfigError(f"view_loss_weight needs loss_type: CE; got loss_type: {self.loss_type}")
        if self.id_anchor and self.id_init != "pca":
            raise ModelConfigError("id_anchor keeps the PCA map of id_init: pca trainable; it needs id_init: pca")
        if self.id_dropout and not self.id_anchor:
            raise ModelConfigError(
                f"id_dropout drops the residual of id_anchor: it needs id_anchor: True; got {self.id_dropout}"
            )

    @property
    def views(self) -> Tuple[str, ...]:
        """The views in scoring order: the collaborative half of a state comes first."""
        return tuple(v for v, on in (("collab", self.use_collab_view), ("semantic", self.use_semantic_view)) if on)

    def excludes_history(self, repeat_share: Optional[float]) -> bool:
        """Whether full-sort scores hide the input's items, given the training split's repeat share.

        A model rebuilt for serving has no training split (``None``): llmesr-recommend excludes the
        history itself."""
        if self.exclude_history != "auto":
            return bool(self.exclude_history)
        return repeat_share is not None and repeat_share < REPEAT_SHARE_LIMIT


def _weights(config, key: str) -> Tuple[float, ...]:
    value = config[key]
    if (not isinstance(value, (list, tuple)) or not value
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in value)):
        raise ModelConfigError(f"Config key '{key}' must be a non-empty list of numbers >= 0; got {value!r}")
    return tuple(float(v) for v in value)


def _optional(config, key: str, kind, minimum=None):
    return None if config[key] is None else number(config, key, kind, minimum=minimum)
