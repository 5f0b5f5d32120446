"""Flavors: how each kind of model is saved, loaded and asked to predict.

``detect_flavor`` picks one for a model object, ``get_flavor`` finds one by the
name a version records, ``model_predict`` asks a loaded model for predictions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._errors import InvalidInput
from ._common import class_names, module_top
from .base import Flavor
from .boosting import LightGBMFlavor, LightGBMModel, XGBoostFlavor
from .files import FilesFlavor
from .huggingface_model import HuggingFaceFlavor, HuggingFaceModel
from .onnx_model import OnnxFlavor
from .pickle_scan import (
    DEFAULT_ALLOW,
    check_pickle_safe,
    pickle_findings,
    scan_pickle,
    unsafe_globals,
)
from .python import PythonFlavor
from .pytorch_model import PyTorchFlavor, TorchModule
from .sklearn import SklearnFlavor

_FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        SklearnFlavor(),
        FilesFlavor(),
        PythonFlavor(),
        OnnxFlavor(),
        XGBoostFlavor(),
        LightGBMFlavor(),
        PyTorchFlavor(),
        HuggingFaceFlavor(),
    )
}

_ACCEPTED = (
    "log a scikit-learn estimator or pipeline, an ONNX, XGBoost, LightGBM, PyTorch or "
    "Hugging Face model, a function or object with predict(), "
    "or the path of an existing file or folder"
)


def get_flavor(name: str) -> Flavor:
    try:
        return _FLAVORS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown flavor {name!r}", hint=f"known flavors: {', '.join(sorted(_FLAVORS))}"
        ) from None


def detect_flavor(model: Any) -> Flavor:
    """The flavor for a model object; InvalidInput for anything no flavor stores."""
    if isinstance(model, str | os.PathLike):
        if not Path(model).exists():
            raise InvalidInput(f"{os.fspath(model)!s} does not exist", hint=_ACCEPTED)
        if Path(model).is_file() and Path(model).suffix.lower() == ".onnx":
            return _FLAVORS["onnx"]
        return _FLAVORS["files"]
    framework = _framework_flavor(model)
    if framework is not None:
        return _FLAVORS[framework]
    if _is_sklearn_estimator(model):
        return _FLAVORS["sklearn"]
    if isinstance(model, type):
        raise InvalidInput(
            f"{model.__module__}.{model.__qualname__} is a class, not a model",
            hint="pass a fitted instance",
        )
    if callable(model) or hasattr(model, "predict"):
        return _FLAVORS["python"]
    raise InvalidInput(f"cannot log a {type(model).__name__} as a model", hint=_ACCEPTED)


def model_predict(model: Any, record: dict[str, Any], data: Any) -> Any:
    """Predictions of a loaded ``model`` saved with the flavor ``record`` names."""
    return get_flavor(record["name"]).predict(model, data)


def prepare_for_serving(model: Any, record: dict[str, Any]) -> None:
    """Set up a model a serving process loaded (thread pools sized for small requests).

    Only the serving pool calls it, never ``predict``: a model the caller passed to
    ``log_model`` (whose input example is predicted on) is the caller's to tune.
    """
    prepare = getattr(get_flavor(record["name"]), "prepare_for_serving", None)
    if prepare is not None:
        prepare(model)


def _framework_flavor(model: Any) -> str | None:
    """The framework flavor for a model object, from its classes' names (no import)."""
    tops = module_top(model)
    names = class_names(model)
    if "onnx" in tops and type(model).__name__ == "ModelProto":
        return "onnx"
    if "xgboost" in tops:
        return "xgboost"
    if "lightgbm" in tops:
        return "lightgbm"
    if isinstance(model, TorchModule):
        return "pytorch"
    if "transformers" in tops and (
        "transformers.modeling_utils.PreTrainedModel" in names
        or "transformers.pipelines.base.Pipeline" in names
    ):
        return "huggingface"
    if isinstance(model, dict) and "transformers" in module_top(model.get("model")):
        return "huggingface"
    if "torch" in tops and (
        "torch.nn.modules.module.Module" in names
        or "torch.export.exported_program.ExportedProgram" in names
    ):
        return "pytorch"
    return None


def _is_sklearn_estimator(model: Any) -> bool:
    try:
        from sklearn.base import BaseEstimator
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        return False
    return isinstance(model, BaseEstimator)


__all__ = [
    "DEFAULT_ALLOW",
    "Flavor",
    "HuggingFaceModel",
    "LightGBMModel",
    "TorchModule",
    "check_pickle_safe",
    "detect_flavor",
    "get_flavor",
    "model_predict",
    "pickle_findings",
    "prepare_for_serving",
    "scan_pickle",
    "unsafe_globals",
]
