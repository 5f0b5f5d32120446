"""XGBoost and LightGBM in their own model formats, never pickle.

XGBoost: a ``Booster`` or a scikit-learn wrapper (``XGBClassifier``,
``XGBRegressor``, ...) is written with ``save_model`` as JSON (the default) or
UBJSON (``serialization="ubj"``); the wrappers' own attributes (classes, ...)
are part of that file. Loading gives back the same kind of object: a wrapper is
rebuilt as one of XGBoost's own wrapper classes, chosen from a fixed list by
name, never imported from a name the record gives.

LightGBM: a ``Booster`` or a wrapper (``LGBMClassifier``, ``LGBMRegressor``,
``LGBMRanker``) is written as LightGBM's text model (``model_to_string``).
A Booster loads as a Booster. A wrapper loads as `LightGBMModel`, which holds
the Booster and answers ``predict`` (class labels for a classifier, from the
classes recorded at save time) and ``predict_proba`` as the wrapper did;
LightGBM has no way to rebuild its wrappers from the text model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import InvalidInput
from ._common import as_array, entry_name, module_top, require
from .base import framework_fields, qualified_class

XGB_WRAPPERS = frozenset(
    {"XGBModel", "XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier",
     "XGBRFRegressor"}
)
_XGB_ENTRIES = {"json": "model.json", "ubj": "model.ubj"}


class XGBoostFlavor:
    name: str = "xgboost"

    def save(self, model: Any, dest: Path, **options: Any) -> dict[str, Any]:
        if "xgboost" not in module_top(model):
            raise InvalidInput(
                f"the xgboost flavor stores an xgboost Booster or XGBModel, "
                f"not a {type(model).__name__}"
            )
        serialization = options.get("serialization") or "json"
        if serialization not in _XGB_ENTRIES:
            raise InvalidInput(
                f"unknown serialization {serialization!r} for an XGBoost model",
                hint="use serialization='json' (the default) or 'ubj'",
            )
        entry = _XGB_ENTRIES[serialization]
        wrapper = type(model).__name__ if hasattr(model, "get_booster") else None
        if wrapper is not None and wrapper not in XGB_WRAPPERS:
            # A subclass of a wrapper: store it as the XGBoost class it derives from.
            wrapper = next(c.__name__ for c in type(model).__mro__ if c.__name__ in XGB_WRAPPERS)
        try:
            model.save_model(os.fspath(dest / entry))
        except Exception as error:
            raise InvalidInput(f"cannot save the XGBoost model: {error}") from None
        booster = model.get_booster() if wrapper else model
        return {
            "name": self.name,
            "serialization": serialization,
            "entry": entry,
            "python_class": qualified_class(model),
            "wrapper": wrapper,
            "feature_names": list(booster.feature_names or []) or None,
            **framework_fields(["xgboost", "numpy"]),
        }

    def load(
        self,
        src: Path,
        record: dict[str, Any],
        *,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
    ) -> Any:
        xgb = require("xgboost", "xgboost", record, what="loading this XGBoost model")
        entry = entry_name(record, "entry", "model.json", flavor="xgboost")
        if Path(entry).suffix not in (".json", ".ubj"):
            raise InvalidInput(f"the xgboost record names {entry!r}, not a .json or .ubj file")
        wrapper = record.get("wrapper")
        if wrapper is None:
            model = xgb.Booster()
        elif wrapper in XGB_WRAPPERS:
            model = getattr(xgb, wrapper)()
        else:
            raise InvalidInput(
                f"the xgboost record names the class {wrapper!r}, not one of XGBoost's wrappers "
                f"({', '.join(sorted(XGB_WRAPPERS))})"
            )
        model.load_model(os.fspath(src / entry))
        return model

    def prepare_for_serving(self, model: Any) -> None:
        """Predict served requests on ``TETHER_XGBOOST_THREADS`` threads (default 1).

        XGBoost's OpenMP pool on every core turns a one-row predict from 0.3 ms into
        16 ms on a busy 2-core machine (bench/bench_oip.py); served requests are small,
        and concurrency comes from the server (and batching), not from OpenMP. Only
        for a model a serving process loaded: it used to be set on the first
        ``predict``, which ``log_model(input_example=...)`` also runs, on the
        caller's own model (an ``XGBClassifier(n_jobs=4)`` had ``n_jobs == 1`` after
        it was logged).
        """
        text = os.environ.get("TETHER_XGBOOST_THREADS", "1").strip()
        try:
            threads = int(text)
        except ValueError:
            threads = 0
        if threads < 1:
            raise InvalidInput(f"TETHER_XGBOOST_THREADS={text!r} is not a number of threads",
                               hint="set it to a whole number of 1 or more (default 1)")
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        booster.set_param({"nthread": threads})
        if hasattr(model, "set_params"):
            model.set_params(n_jobs=threads)

    def predict(self, model: Any, data: Any) -> Any:
        if hasattr(model, "get_booster"):  # a scikit-learn wrapper
            return model.predict(_for_names(data, model.get_booster().feature_names))
        import xgboost as xgb

        names = model.feature_names
        data = _for_names(data, names)
        if hasattr(data, "columns"):
            return model.predict(xgb.DMatrix(data))
        return model.predict(xgb.DMatrix(as_array(data), feature_names=names))


def _for_names(data: Any, names: Sequence[str] | None) -> Any:
    """A table whose columns are not the model's feature names goes as a bare array."""
    if hasattr(data, "columns") and (names is None or list(map(str, data.columns)) != list(names)):
        return data.to_numpy()
    return data


# -- LightGBM ---------------------------------------------------------------------------------

LGBM_WRAPPERS = frozenset({"LGBMModel", "LGBMClassifier", "LGBMRegressor", "LGBMRanker"})
_LGBM_ENTRY = "model.txt"


class LightGBMModel:
    """A LightGBM scikit-learn wrapper as loaded: its Booster, classes and predict.

    ``booster`` is the ``lightgbm.Booster``; ``classes_`` the classes of a
    classifier (None otherwise); ``wrapper`` the class it was logged as.
    """

    def __init__(self, booster: Any, *, wrapper: str, classes: list[Any] | None) -> None:
        import numpy as np

        self.booster = booster
        self.wrapper = wrapper
        self.classes_ = None if classes is None else np.asarray(classes)
        self.feature_names_in_ = np.asarray(booster.feature_name(), dtype=object)
        self.n_features_in_ = int(booster.num_feature())

    def predict_proba(self, X: Any) -> Any:
        import numpy as np

        if self.classes_ is None:
            raise InvalidInput(f"a {self.wrapper} has no predict_proba (it is not a classifier)")
        scores = self.booster.predict(_lgbm_input(X, self.booster))
        if scores.ndim == 1:  # binary: the probability of the second class
            return np.column_stack([1.0 - scores, scores])
        return scores

    def predict(self, X: Any) -> Any:
        import numpy as np

        if self.classes_ is None:
            return self.booster.predict(_lgbm_input(X, self.booster))
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __repr__(self) -> str:
        return f"LightGBMModel({self.wrapper}, {self.booster.num_trees()} trees)"


class LightGBMFlavor:
    name: str = "lightgbm"

    def save(self, model: Any, dest: Path, **options: Any) -> dict[str, Any]:
        import numpy as np

        if "lightgbm" not in module_top(model):
            raise InvalidInput(
                f"the lightgbm flavor stores a lightgbm Booster or LGBMModel, "
                f"not a {type(model).__name__}"
            )
        if options.get("serialization") not in (None, "text"):
            raise InvalidInput(
                "a LightGBM model is stored as its text model (serialization='text')"
            )
        wrapper = None
        classes = None
        booster = model
        if hasattr(model, "booster_"):
            wrapper = next(c.__name__ for c in type(model).__mro__ if c.__name__ in LGBM_WRAPPERS)
            booster = model.booster_  # raises if the wrapper is not fitted
            found = getattr(model, "classes_", None) if hasattr(model, "predict_proba") else None
            classes = None if found is None else np.asarray(found).tolist()
        (dest / _LGBM_ENTRY).write_text(booster.model_to_string(), encoding="utf-8")
        return {
            "name": self.name,
            "serialization": "text",
            "entry": _LGBM_ENTRY,
            "python_class": qualified_class(model),
            "wrapper": wrapper,
            "classes": classes,
            "feature_names": list(booster.feature_name()),
            **framework_fields(["lightgbm", "numpy"]),
        }

    def load(
        self,
        src: Path,
        record: dict[str, Any],
        *,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
    ) -> Any:
        lgb = require("lightgbm", "lightgbm", record, what="loading this LightGBM model")
        entry = entry_name(record, "entry", _LGBM_ENTRY, flavor="lightgbm")
        booster = lgb.Booster(model_str=(src / entry).read_text(encoding="utf-8"))
        wrapper = record.get("wrapper")
        if wrapper is None:
            return booster
        if wrapper not in LGBM_WRAPPERS:
            raise InvalidInput(f"the lightgbm record names the class {wrapper!r}, not a wrapper")
        classes = record.get("classes")
        return LightGBMModel(booster, wrapper=wrapper,
                             classes=list(classes) if classes is not None else None)

    def predict(self, model: Any, data: Any) -> Any:
        if isinstance(model, LightGBMModel):
            return model.predict(data)
        if hasattr(model, "booster_"):  # the wrapper as logged
            return model.predict(_lgbm_input(data, model.booster_))
        return model.predict(_lgbm_input(data, model))


def _lgbm_input(data: Any, booster: Any) -> Any:
    """A table as it is (LightGBM matches its columns), anything else as an array."""
    del booster
    return data if hasattr(data, "columns") else as_array(data)
