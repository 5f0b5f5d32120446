"""The flavor contract: save a model object to a folder and load it back."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any, Protocol


class Flavor(Protocol):
    name: str

    def save(self, model: Any, dest: Path, **options: Any) -> dict[str, Any]:
        """Write ``model`` under the empty folder ``dest``; return the flavor record."""
        ...

    def load(self, src: Path, record: dict[str, Any], *, trusted: bool = False) -> Any: ...

    def predict(self, model: Any, data: Any) -> Any: ...


def installed_versions(names: list[str]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def qualified_class(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
