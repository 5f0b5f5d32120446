"""Any Python callable or object with ``predict``, stored with cloudpickle.

cloudpickle stores functions and classes defined in ``__main__`` or notebooks
by value: loading them rebuilds code objects, i.e. runs code. Like any pickle,
it loads only with ``trusted=True``; the import scan is reported in the refusal.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from .._errors import InvalidInput
from .base import framework_fields, qualified_class
from .pickle_scan import untrusted_pickle_error


class PythonFlavor:
    name: str = "python"

    def save(self, model: Any, dest: Path, **_options: Any) -> dict[str, Any]:
        import cloudpickle

        if isinstance(model, type) or not (hasattr(model, "predict") or callable(model)):
            raise InvalidInput(
                f"the python flavor stores a callable or an object with predict(), not {model!r}",
                hint="pass a function or a fitted instance (not its class)",
            )
        entry = "model.pkl"
        try:
            with open(dest / entry, "wb") as handle:
                cloudpickle.dump(model, handle, protocol=5)
        except Exception as error:
            raise InvalidInput(
                f"cannot serialise {qualified_class(model)} with cloudpickle: {error}",
                hint="objects holding open files, locks or connections do not pickle",
            ) from error
        return {
            "name": self.name,
            "serialization": "cloudpickle",
            "entry": entry,
            "callable": "predict" if hasattr(model, "predict") else "__call__",
            "python_class": qualified_class(model),
            **framework_fields(["cloudpickle", *_distributions_of(model)]),
        }

    def load(
        self,
        src: Path,
        record: dict[str, Any],
        *,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
    ) -> Any:
        import cloudpickle

        if record.get("serialization", "cloudpickle") != "cloudpickle":
            raise InvalidInput(
                f"this python model was saved as {record.get('serialization')!r}, "
                "which this version of Tether cannot load",
                hint="upgrade Tether",
            )
        entry = str(record.get("entry", "model.pkl"))
        if "/" in entry or "\\" in entry or entry in ("", ".", ".."):
            raise InvalidInput(f"the python record names {entry!r}, not a file name")
        raw = (src / entry).read_bytes()
        if not trusted:  # trusted_types has no meaning for a pickle: it names no types
            label = f"{record.get('python_class', 'a Python object')} ({entry})"
            raise untrusted_pickle_error(raw, serialization="cloudpickle", label=label)
        return cloudpickle.loads(raw)

    def predict(self, model: Any, data: Any) -> Any:
        return model.predict(data) if hasattr(model, "predict") else model(data)


def _distributions_of(model: Any) -> list[str]:
    """The installed distribution that provides the model's class, when one does."""
    top = type(model).__module__.partition(".")[0]
    if top in ("__main__", "builtins", "tether") or top in sys.stdlib_module_names:
        return []
    return sorted(_top_level_distributions().get(top, []))


@cache
def _top_level_distributions() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())
