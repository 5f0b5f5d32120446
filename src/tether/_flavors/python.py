"""Any Python callable or object with ``predict``, stored with cloudpickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._errors import UnsafeArtifact
from .base import installed_versions, qualified_class


class PythonFlavor:
    name: str = "python"

    def save(self, model: Any, dest: Path, **_options: Any) -> dict[str, Any]:
        import cloudpickle

        entry = "model.pkl"
        with open(dest / entry, "wb") as handle:
            cloudpickle.dump(model, handle)
        return {
            "name": self.name,
            "serialization": "cloudpickle",
            "entry": entry,
            "callable": "predict" if hasattr(model, "predict") else "__call__",
            "python_class": qualified_class(model),
            "framework_packages": ["cloudpickle"],
            "framework_versions": installed_versions(["cloudpickle"]),
        }

    def load(self, src: Path, record: dict[str, Any], *, trusted: bool = False) -> Any:
        if not trusted:
            # cloudpickle rebuilds functions from code objects: arbitrary code by design.
            raise UnsafeArtifact(
                f"{record.get('python_class', 'this object')} is a pickled Python object whose "
                "code runs when loaded",
                hint="load it only if you trust its author: tether.load(ref, trusted=True) "
                "or --trust",
            )
        import cloudpickle

        with open(src / record["entry"], "rb") as handle:
            return cloudpickle.load(handle)

    def predict(self, model: Any, data: Any) -> Any:
        return model.predict(data) if hasattr(model, "predict") else model(data)
