"""Tether: a model registry that ties every version to its bytes, code, data,
schema and environment, and refuses to load what does not match.

    import tether
    version = tether.log_model(model, "fraud", params=..., metrics=..., input_example=X[:5])
    model = tether.load("fraud@production")

Module-level functions use the registry named by ``TETHER_URI`` or the nearest
``.tether`` folder above the working directory; ``tether.open(path)`` gives an
explicit one with the same methods.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import import_module
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

# Names are imported on first use (PEP 562), so `import tether` and the `tether`
# command stay fast: numpy, SQLAlchemy and friends load only when a name needs them.
if TYPE_CHECKING:
    from ._contract import RegistryAPI
    from ._environment import EnvironmentWarning
    from ._errors import (
        AmbiguousReference,
        Conflict,
        EnvironmentMismatch,
        IncompatibleBump,
        IntegrityError,
        InvalidInput,
        InvalidReference,
        LoadFailed,
        NotFound,
        PermissionDenied,
        PolicyViolation,
        RegistryNotFound,
        SchemaMismatch,
        StoreError,
        TetherError,
        Unavailable,
        UnsafeArtifact,
    )
    from ._records import AliasMove, Event, ModelInfo, ModelVersion
    from ._reference import Reference, parse_reference
    from ._registry.datasets import DatasetVersion
    from ._registry.loading import DeprecatedVersionWarning
    from ._registry.reads import UnrecordedReadWarning
    from ._registry.registry import Registry
    from ._schema import Signature, infer_signature
    from .remote import RemoteRegistry

_LAZY = {
    "EnvironmentWarning": "._environment",
    **dict.fromkeys(
        (
            "AmbiguousReference",
            "Conflict",
            "EnvironmentMismatch",
            "IncompatibleBump",
            "IntegrityError",
            "LoadFailed",
            "InvalidInput",
            "InvalidReference",
            "NotFound",
            "PermissionDenied",
            "PolicyViolation",
            "RegistryNotFound",
            "SchemaMismatch",
            "StoreError",
            "TetherError",
            "UnsafeArtifact",
        ),
        "._errors",
    ),
    **dict.fromkeys(("AliasMove", "Event", "ModelInfo", "ModelVersion"), "._records"),
    **dict.fromkeys(("Reference", "parse_reference"), "._reference"),
    "DeprecatedVersionWarning": "._registry.loading",
    "DatasetVersion": "._registry.datasets",
    "UnrecordedReadWarning": "._registry.reads",
    "Registry": "._registry.registry",
    "RegistryAPI": "._contract",
    "RemoteRegistry": ".remote",
    "Unavailable": "._errors",
    **dict.fromkeys(("Signature", "infer_signature"), "._schema"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AliasMove",
    "AmbiguousReference",
    "Conflict",
    "DatasetVersion",
    "DeprecatedVersionWarning",
    "EnvironmentMismatch",
    "EnvironmentWarning",
    "Event",
    "IncompatibleBump",
    "IntegrityError",
    "InvalidInput",
    "InvalidReference",
    "LoadFailed",
    "ModelInfo",
    "ModelVersion",
    "NotFound",
    "PermissionDenied",
    "PolicyViolation",
    "Reference",
    "Registry",
    "RegistryAPI",
    "RegistryNotFound",
    "RemoteRegistry",
    "SchemaMismatch",
    "Signature",
    "StoreError",
    "TetherError",
    "Unavailable",
    "UnrecordedReadWarning",
    "UnsafeArtifact",
    "__version__",
    "connect",
    "forget_reads",
    "get",
    "infer_signature",
    "init",
    "load",
    "log_model",
    "open",
    "open_dataset",
    "parse_reference",
    "promote",
    "rollback",
    "use_dataset",
]


def open(uri: str | Path | None = None, *, actor: str | None = None) -> Registry:
    """Open a registry: ``uri``, else ``TETHER_URI``, else the nearest ``.tether``.

    An ``http(s)://`` URI gives a client of a Tether server (token from
    ``TETHER_TOKEN``). Both satisfy ``tether.RegistryAPI``; write code against
    that to run unchanged on either.
    """
    target = uri if uri is not None else os.environ.get("TETHER_URI")
    if target is not None and str(target).startswith(("http://", "https://")):
        # RemoteRegistry satisfies RegistryAPI (checked by mypy in tether._contract);
        # typed as Registry so existing callers keep their embedded-only extras.
        return cast("Registry", connect(str(target)))
    from ._registry.registry import Registry

    return Registry.open(uri, actor=actor)


def connect(url: str, *, token: str | None = None) -> RemoteRegistry:
    """A client of the Tether server at ``url``: a ``RegistryAPI``, like ``tether.open``."""
    from .remote import connect as _connect

    return _connect(url, token=token)


def init(path: str | Path = ".tether", **options: Any) -> Registry:
    """Create a registry folder (SQLite plus a local store by default)."""
    from ._registry.registry import Registry

    return Registry.init(path, **options)


def log_model(
    model: Any,
    name: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    data: Any = None,
    signature: Signature | Mapping[str, Any] | None = None,
    input_example: Any = None,
    notes: str = "",
    bump: str | None = None,
    tags: Mapping[str, str] | None = None,
    flavor: str | None = None,
    serialization: str | None = None,
    registry: str | Path | None = None,
    record_reads: bool = True,
) -> ModelVersion:
    """Register ``model`` (an estimator, a callable, or a path) as a new version of ``name``.

    Captures git lineage, the environment, data digests and (from
    ``input_example``) the signature. The semantic version is proposed from what
    changed; ``bump="major"|"minor"|"patch"`` or ``"2.0.0"`` asks for more.
    Identical content and metadata return the existing version.

    Dataset versions this process read through Tether so far (``open_dataset``,
    ``tether://`` paths, ``use_dataset``) are recorded as links beside ``data=``,
    each marked ``"via"``; ``record_reads=False`` records only ``data=``.
    """
    with open(registry) as reg:
        return reg.log_model(
            model,
            name,
            params=params,
            metrics=metrics,
            data=data,
            signature=signature,
            input_example=input_example,
            notes=notes,
            bump=bump,
            tags=tags,
            flavor=flavor,
            serialization=serialization,
            record_reads=record_reads,
        )


def load(
    ref: str,
    *,
    expect: str | None = None,
    env_policy: str | None = None,
    trusted: bool = False,
    trusted_types: Sequence[str] = (),
    registry: str | Path | None = None,
) -> Any:
    """Load the model ``ref`` names, refusing bytes or environments that do not match.

    ``expect="sha:…"`` refuses any other digest; ``env_policy`` overrides the
    registry's policy for this call (``"strict"``, ``"warn"``, ``"off"``).
    ``trusted=True`` lets code-executing formats (pickle, cloudpickle) run: say
    it only for an author you trust (a signature by a key trusted for loading
    does the same). ``trusted_types`` names the extra types a skops file may
    rebuild (or PyTorch module paths) without trusting everything.
    """
    with open(registry) as reg:
        return reg.load(
            ref, expect=expect, env_policy=env_policy, trusted=trusted, trusted_types=trusted_types
        )


def get(ref: str, *, registry: str | Path | None = None) -> ModelVersion:
    """The recorded version ``ref`` names, without loading it."""
    with open(registry) as reg:
        return reg.get(ref)


def promote(
    ref: str,
    alias: str,
    *,
    reason: str = "",
    create: bool = False,
    registry: str | Path | None = None,
) -> AliasMove:
    """Point ``alias`` at ``ref``; ``create=True`` is needed for a new alias."""
    with open(registry) as reg:
        return reg.promote(ref, alias, reason=reason, create=create)


def rollback(
    name: str, alias: str, *, reason: str = "", registry: str | Path | None = None
) -> AliasMove:
    with open(registry) as reg:
        return reg.rollback(name, alias, reason=reason)


def open_dataset(
    target: str,
    path: str | None = None,
    *,
    repo: str | None = None,
    rev: str | None = None,
    mode: str = "rb",
    encoding: str | None = None,
    registry: str | Path | None = None,
) -> IO[Any]:
    """Open one file of a dataset version for streaming reads (read-only, seekable).

    ``open_dataset("ds@production", "train/part-0.csv")`` (or
    ``open_dataset("ds@2/train/part-0.csv")``) reads a file of a dataset version;
    ``open_dataset("data/train.csv", repo=REPO, rev="v2")`` reads the file a
    ``data/train.csv.tether`` pointer names at git revision ``rev`` of ``repo``
    (a local path or a URL; default: the working tree), like ``dvc.api.open``.
    Chunks are fetched as reads reach them and checked against their digests;
    nothing is downloaded first. ``mode="r"`` gives text. (``tether.open`` opens
    a registry, so this one has its own name.)
    """
    from ._registry.datasets_io import open_dataset as _open_dataset

    return _open_dataset(
        target, path, repo=repo, rev=rev, mode=mode, encoding=encoding, registry=registry
    )


def use_dataset(ref: str, *, registry: str | Path | None = None) -> DatasetVersion:
    """The dataset version ``ref`` names, noted as used by this process.

    For data that reaches the training code some other way than through Tether
    (a `tether data checkout` earlier, a copy made by another tool, a data
    loader's worker processes): every later ``log_model`` in this process links
    the version, as it does for a version read through ``open_dataset``.
    Returns the version (its files, digests and aliases).
    """
    from ._registry import reads

    with open(registry) as reg:
        version = reg.get_dataset(ref)
    reads.note(version, via="use_dataset")
    return version


def forget_reads() -> None:
    """Forget the dataset versions this process read, so no later log links them."""
    from ._registry import reads

    reads.forget()
