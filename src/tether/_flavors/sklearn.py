"""scikit-learn estimators and pipelines: pickle (scanned before loading) or skops."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from .._errors import InvalidInput, UnsafeArtifact
from .base import TRUST_HINT, framework_fields, qualified_class
from .pickle_scan import check_pickle_safe

FRAMEWORK = ["scikit-learn", "scipy", "numpy"]
_ENTRIES = {"pickle": "model.pkl", "skops": "model.skops"}


class SklearnFlavor:
    name: str = "sklearn"

    def save(self, model: Any, dest: Path, **options: Any) -> dict[str, Any]:
        serialization = options.get("serialization") or "pickle"
        if serialization not in _ENTRIES:
            raise InvalidInput(
                f"unknown serialization {serialization!r} for a scikit-learn model",
                hint="use serialization='pickle' (the default) or 'skops'",
            )
        entry = _ENTRIES[serialization]
        if serialization == "pickle":
            with open(dest / entry, "wb") as handle:
                pickle.dump(model, handle, protocol=5)
            packages = FRAMEWORK
        else:
            import skops.io

            skops.io.dump(model, dest / entry)
            packages = [*FRAMEWORK, "skops"]
        return {
            "name": self.name,
            "serialization": serialization,
            "entry": entry,
            "python_class": qualified_class(model),
            **framework_fields(packages),
        }

    def load(self, src: Path, record: dict[str, Any], *, trusted: bool = False) -> Any:
        serialization = record.get("serialization", "pickle")
        if serialization not in _ENTRIES:
            raise InvalidInput(
                f"this scikit-learn model was saved as {serialization!r}, "
                "which this version of Tether cannot load",
                hint="upgrade Tether",
            )
        path = src / str(record.get("entry") or _ENTRIES[serialization])
        if serialization == "skops":
            return _load_skops(path, trusted=trusted)
        raw = path.read_bytes()  # scanned and unpickled from the same bytes
        if not trusted:
            check_pickle_safe(raw, label=f"{record.get('python_class', 'the model')} ({path.name})")
        return pickle.loads(raw)

    def predict(self, model: Any, data: Any) -> Any:
        if not hasattr(model, "predict"):
            raise InvalidInput(f"{type(model).__name__} has no predict method")
        return model.predict(data)


def _load_skops(path: Path, *, trusted: bool) -> Any:
    import skops.io

    untrusted = [str(t) for t in skops.io.get_untrusted_types(file=path)]
    if untrusted and not trusted:
        raise UnsafeArtifact(
            f"{path.name} holds types skops does not trust by default: {', '.join(untrusted)}",
            hint=TRUST_HINT,
        )
    return skops.io.load(path, trusted=untrusted)
