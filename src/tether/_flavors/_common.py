"""Helpers shared by the framework flavors (ONNX, XGBoost, LightGBM, PyTorch, Hugging Face).

``require`` imports a framework for loading; when it is not installed the
caller gets an `EnvironmentMismatch` naming the distribution, the version the
model was saved with and the command that installs it, never an ImportError.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .._errors import EnvironmentMismatch, InvalidInput

#: The Tether extra that installs each framework (``pip install 'tether[onnx]'``).
EXTRAS = {
    "onnxruntime": "onnx",
    "onnx": "onnx",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "safetensors": "torch",
    "torch": "torch",
    "transformers": "hf",
}


def require(module: str, distribution: str, record: dict[str, Any] | None, *, what: str) -> Any:
    """``import module``; EnvironmentMismatch naming ``distribution`` when it is missing.

    ``record`` is the version's flavor record: its ``framework_versions`` give
    the version to install. ``what`` says what needs it ("loading this ONNX model").
    """
    try:
        found: ModuleType = importlib.import_module(module)
    except ImportError as error:
        raise missing_framework(distribution, record, what=what, error=error) from None
    return found


def missing_framework(
    distribution: str, record: dict[str, Any] | None, *, what: str, error: BaseException | None
) -> EnvironmentMismatch:
    version = ((record or {}).get("framework_versions") or {}).get(distribution)
    wanted = f"{distribution}=={version}" if version else distribution
    saved = f" (the model was saved with {distribution} {version})" if version else ""
    extra = EXTRAS.get(distribution)
    also = f", or pip install 'tether[{extra}]'" if extra else ""
    shown = error is not None and not isinstance(error, ModuleNotFoundError)
    detail = f": {error}" if shown else ""
    return EnvironmentMismatch(
        f"{what} needs {distribution}, which is not installed here{saved}{detail}",
        hint=f"pip install '{wanted}'{also}",
    )


def entry_name(record: dict[str, Any], key: str, default: str, *, flavor: str) -> str:
    """A file name the record names; refused if it is a path (it must stay in the folder)."""
    entry = str(record.get(key) or default)
    if "/" in entry or "\\" in entry or entry in ("", ".", ".."):
        raise InvalidInput(f"the {flavor} record names {entry!r}, not a file name")
    return entry


def as_array(data: Any) -> Any:
    """A DataFrame, Series, list or array as a numpy array (records become rows)."""
    import numpy as np  # here: logging a model whose flavor never predicts needs no numpy

    if hasattr(data, "to_numpy"):
        return data.to_numpy()
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return np.asarray([list(r.values()) for r in data])
    return np.asarray(data)


def module_top(obj: Any) -> set[str]:
    """Top-level packages of the object's class and its bases (no import needed)."""
    return {c.__module__.partition(".")[0] for c in type(obj).__mro__}


def class_names(obj: Any) -> set[str]:
    """``module.QualName`` of the object's class and every base."""
    return {f"{c.__module__}.{c.__qualname__}" for c in type(obj).__mro__}
