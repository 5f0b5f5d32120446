"""Flavors: how each kind of model is saved, loaded and asked to predict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._errors import InvalidInput
from .base import Flavor
from .files import FilesFlavor
from .pickle_scan import DEFAULT_ALLOW, check_pickle_safe, scan_pickle, unsafe_globals
from .python import PythonFlavor
from .sklearn import SklearnFlavor

_FLAVORS: dict[str, Flavor] = {}
for _flavor in (SklearnFlavor(), FilesFlavor(), PythonFlavor()):
    _FLAVORS[_flavor.name] = _flavor

def get_flavor(name: str) -> Flavor:
    try:
        return _FLAVORS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown flavor {name!r}", hint=f"flavors: {', '.join(sorted(_FLAVORS))}"
        ) from None


def _is_sklearn(model: Any) -> bool:
    try:
        from sklearn.base import BaseEstimator
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        return False
    return isinstance(model, BaseEstimator)


def detect_flavor(model: Any) -> Flavor:
    if isinstance(model, str | os.PathLike):
        if not Path(model).exists():
            raise InvalidInput(
                f"{model} does not exist",
                hint="pass a model object, or the path of an existing file/folder",
            )
        return _FLAVORS["files"]
    if _is_sklearn(model):
        return _FLAVORS["sklearn"]
    if callable(model) or hasattr(model, "predict"):
        return _FLAVORS["python"]
    raise InvalidInput(
        f"cannot log a {type(model).__name__}",
        hint="log a scikit-learn estimator, a callable or object with predict(), "
        "or a path to a file or folder",
    )


def model_predict(model: Any, record: dict[str, Any], data: Any) -> Any:
    return get_flavor(record["name"]).predict(model, data)


__all__ = [
    "DEFAULT_ALLOW",
    "Flavor",
    "check_pickle_safe",
    "detect_flavor",
    "get_flavor",
    "model_predict",
    "scan_pickle",
    "unsafe_globals",
]
