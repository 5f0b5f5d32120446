"""scikit-learn estimators and pipelines: pickle (scanned on load) or skops."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from .._errors import InvalidInput, UnsafeArtifact
from .base import installed_versions, qualified_class
from .pickle_scan import check_pickle_safe

FRAMEWORK = ["scikit-learn", "scipy", "numpy"]


class SklearnFlavor:
    name: str = "sklearn"

    def save(self, model: Any, dest: Path, **options: Any) -> dict[str, Any]:
        serialization = options.get("serialization") or "pickle"
        if serialization == "pickle":
            entry = "model.pkl"
            with open(dest / entry, "wb") as handle:
                pickle.dump(model, handle, protocol=5)
        elif serialization == "skops":
            import skops.io

            entry = "model.skops"
            skops.io.dump(model, dest / entry)
        else:
            raise InvalidInput(
                f"unknown serialization {serialization!r} for scikit-learn",
                hint="use pickle or skops",
            )
        return {
            "name": self.name,
            "serialization": serialization,
            "entry": entry,
            "python_class": qualified_class(model),
            "framework_packages": FRAMEWORK + (["skops"] if serialization == "skops" else []),
            "framework_versions": installed_versions([*FRAMEWORK, "skops"]),
        }

    def load(self, src: Path, record: dict[str, Any], *, trusted: bool = False) -> Any:
        path = src / record["entry"]
        if record.get("serialization") == "skops":
            import skops.io

            untrusted = skops.io.get_untrusted_types(file=path)
            if untrusted and not trusted:
                raise UnsafeArtifact(
                    f"{path.name} holds types skops does not trust: {', '.join(untrusted)}",
                    hint="load it only if you trust its author: trusted=True / --trust",
                )
            return skops.io.load(path, trusted=untrusted)
        if not trusted:
            check_pickle_safe(path, label=path.name)
        with open(path, "rb") as handle:
            return pickle.load(handle)

    def predict(self, model: Any, data: Any) -> Any:
        return model.predict(data)
