"""The flavor contract: save a model object to a folder and load it back.

A flavor writes a model under an empty folder and returns its *record*, a
JSON-friendly dict stored with the version. Every record holds ``name``,
``framework_packages`` (distributions whose versions matter for loading) and
``framework_versions`` (their versions at save time), plus what ``load`` needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

#: Said wherever loading is refused for want of trust: the two ways to give it.
TRUST_HINT = (
    "load it only if you trust its author, in one of two ways: pass trusted=True "
    "(tether.load(ref, trusted=True) in Python, --trusted on the command line), or have "
    "the version signed by a key this registry trusts for loading "
    "(tether sign REF --key KEYFILE; the key named in the model policy's "
    "trusted_for_loading, or in tether config set trust.load_signers NAME)"
)


class Flavor(Protocol):
    name: str

    def save(self, model: Any, dest: Path, **options: Any) -> dict[str, Any]:
        """Write ``model`` under the existing empty folder ``dest``; return the record."""
        ...

    def load(
        self,
        src: Path,
        record: dict[str, Any],
        *,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
    ) -> Any:
        """The model saved under ``src`` as ``record`` describes it.

        ``trusted`` is the one switch for formats that run code when loaded
        (pickle, cloudpickle): without it they are refused. ``trusted_types``
        names, for formats that list the types they build (skops), the types
        the *caller* accepts beyond the format's own safe defaults. Nothing in
        ``record`` widens what is trusted: the record travels with the artifact.
        """
        ...

    def predict(self, model: Any, data: Any) -> Any:
        """What the loaded model answers for ``data``."""
        ...


def installed_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed version of each distribution; those not installed are left out."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def framework_fields(packages: list[str]) -> dict[str, Any]:
    """The ``framework_packages`` and ``framework_versions`` of a record."""
    return {"framework_packages": packages, "framework_versions": installed_versions(packages)}


def qualified_class(obj: Any) -> str:
    """``module.QualName`` of the object's class, e.g. ``sklearn.pipeline.Pipeline``."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
