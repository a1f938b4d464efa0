"""Resolve model, dataset and trainer classes: the plugin's own first, then every RecBole one.

RecBole's ``get_model`` looks only under ``recbole.model.*`` and, for an unknown name, fails with
``No module named 'lightgbm'`` (it probes ``exlib_recommender``, whose ``__init__`` imports lightgbm).
"""
import difflib
import importlib
import importlib.util
from typing import Dict, List

from recbole.utils import ModelType

from recbole_llmesr.compat import disable_anomaly_mode
from recbole_llmesr.errors import LLMESRError

# RecBole's model sub-packages, in RecBole's own search order. exlib needs lightgbm/xgboost and is only
# probed for the two names it defines.
_RECBOLE_SUBPACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)
_EXLIB_MODELS = {"lightgbm": "LightGBM", "xgboost": "XGBoost"}


class UnknownModelError(LLMESRError, ValueError):
    """Raised for a model name that neither the plugin nor RecBole defines."""


def plugin_models() -> Dict[str, type]:
    """The plugin's models by class name."""
    from recbole_llmesr import model

    return {name: getattr(model, name) for name in model.__all__}


def _recbole_model(name: str):
    file_name = name.lower()
    for sub in _RECBOLE_SUBPACKAGES:
        path = f"recbole.model.{sub}.{file_name}"
        if importlib.util.find_spec(path) is not None:
            module = importlib.import_module(path)
            if hasattr(module, name):
                return getattr(module, name)
    if file_name in _EXLIB_MODELS:
        try:
            module = importlib.import_module(f"recbole.model.exlib_recommender.{file_name}")
        except ImportError as err:
            raise UnknownModelError(
                f"Model '{name}' needs the optional package '{err.name}': pip install {err.name}"
            ) from err
        return getattr(module, _EXLIB_MODELS[file_name])
    return None


def known_model_names() -> List[str]:
    """Every model name that ``get_model`` accepts (RecBole's and the plugin's)."""
    from recbole.model.abstract_recommender import AbstractRecommender

    names = set(plugin_models())
    for sub in _RECBOLE_SUBPACKAGES:
        module = importlib.import_module(f"recbole.model.{sub}")
        names.update(
            attr
            for attr, obj in vars(module).items()
            if isinstance(obj, type)
            and issubclass(obj, AbstractRecommender)
            and obj.__module__.startswith(module.__name__)
        )
    names.update(_EXLIB_MODELS.values())
    disable_anomaly_mode()
    return sorted(names)


def get_model(name: str) -> type:
    """Return the model class called ``name``: the plugin's first, then RecBole's."""
    models = plugin_models()
    model_class = models.get(name) or _recbole_model(name)
    disable_anomaly_mode()  # importing recbole.model.sequential_recommender switched it on
    if model_class is None:
        names = known_model_names()
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        close += [n for n in names if n.lower() == name.lower() and n not in close]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"Unknown model '{name}'.{hint} Models are RecBole's ({len(names) - len(models)}) and the "
            f"plugin's ({', '.join(sorted(models))}); names are case-sensitive."
        )
    return model_class


def get_trainer(model_type: ModelType, model_name: str) -> type:
    """Return the trainer class for a model, with the plugin's safe checkpointing mixed in.

    Baselines keep their own RecBole trainer (KGTrainer, PretrainTrainer, ...) so they behave as in
    stock RecBole; only checkpoint saving and loading and the anomaly switch change.
    """
    from recbole.utils import get_trainer as recbole_get_trainer

    from recbole_llmesr.trainer import SafeCheckpointMixin, Trainer

    base = recbole_get_trainer(model_type, model_name)
    if base.__name__ == "Trainer" and base.__module__.startswith("recbole."):
        return Trainer
    return type(f"Safe{base.__name__}", (SafeCheckpointMixin, base), {})


class DatasetLoadError(LLMESRError, ValueError):
    """RecBole could not load a dataset's atomic files."""


def create_dataset(config):
    """Build the dataset: the model's own ``dataset_class`` if it declares one, else RecBole's choice.

    The atomic files are checked first (:func:`~recbole_llmesr.prep.from_config.check_dataset_files`), so
    that what RecBole would misread fails with file and line; RecBole's own ``ValueError``s are reported as
    :class:`DatasetLoadError` naming the dataset's folder."""
    from recbole_llmesr.prep.from_config import check_dataset_files
    from recbole_llmesr.prep.readers import EmptyDatasetError

    check_dataset_files(config)
    model_class = plugin_models().get(config["model"])
    dataset_class = getattr(model_class, "dataset_class", None)
    if dataset_class is None:
        from recbole.data import create_dataset as dataset_class
    try:
        return dataset_class(config)
    except LLMESRError:
        raise
    except ValueError as err:
        where = f"dataset {config['dataset']!r} in {config['data_path']}"
        if "Some feat is empty" not in str(err):
            raise DatasetLoadError(f"{where}: RecBole could not load it: {err}") from err
        # RecBole's own words name neither the dataset nor the settings that emptied it.
        settings = {k: config[k] for k in ("user_inter_num_interval", "item_inter_num_interval", "val_interval")
                    if config[k] is not None}
        raise EmptyDatasetError(
            f"{where}: no interactions (or no users / items) are left after RecBole's loading and filtering "
            f"({settings or 'no filters set'}); check the .inter file and loosen these settings"
        ) from err
