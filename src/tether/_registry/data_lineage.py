"""`tether lineage`: which data a model version used, which models used a dataset version.

Built only on the registry interface (``get``, ``get_dataset``), so a server's
client answers the same as an embedded registry. A model's ``data`` entries are
of two kinds: links to dataset versions (from ``data={"train": "ds@2"}``, a read
through Tether, or ``use_dataset``), which are looked up again for their status
and the other models trained on them, and digests of data Tether does not hold
(a path, an array, a frame).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import AmbiguousReference, NotFound, PermissionDenied
from .datasets import find_by_digest

if TYPE_CHECKING:
    from .._contract import RegistryAPI
    from .._records import ModelVersion
    from .datasets import DatasetVersion

KINDS = ("model", "dataset")


def lineage(registry: RegistryAPI, ref: str, kind: str | None = None) -> dict[str, Any]:
    """The lineage of ``ref``: a model version's data, or a dataset version's models.

    ``kind`` ("model" or "dataset") settles a name that is both; without it such
    a reference is ambiguous.
    """
    model = _found(lambda: registry.get(ref)) if kind in (None, "model") else None
    dataset = _found(lambda: registry.get_dataset(ref)) if kind in (None, "dataset") else None
    if model is not None and dataset is not None:
        raise AmbiguousReference(
            f"{ref} names a model version and a dataset version",
            hint="say which: --model or --dataset",
        )
    if model is not None:
        return model_lineage(registry, model)
    if dataset is not None:
        return dataset_lineage(dataset)
    what = {"model": "a model version", "dataset": "a dataset version"}.get(
        kind or "", "a model version or a dataset version")
    raise NotFound(f"{ref} is not {what} of this registry",
                   hint="`tether models` and `tether data list` list what is registered")


def model_lineage(registry: RegistryAPI, version: ModelVersion) -> dict[str, Any]:
    inputs = []
    for role, entry in sorted(version.data.items()):
        if not entry.get("dataset"):
            inputs.append({"role": role, "kind": "digest", "digest": entry.get("digest"),
                           "what": entry.get("path") or entry.get("kind") or "in-memory object"})
            continue
        item: dict[str, Any] = {
            "role": role, "kind": "dataset", "dataset": entry["dataset"],
            "ref": entry.get("ref"), "digest": entry.get("digest"),
            "via": entry.get("via", "declared"),
        }
        try:
            here = find_by_digest(registry, str(entry["dataset"]), str(entry.get("digest")))
        except PermissionDenied:
            # The caller may read this model but not that dataset: say so, show no more.
            item.update(status="no access", also_used_by=[])
        else:
            if here is None:
                item.update(status="missing", also_used_by=[])
            else:
                item.update(status=here.status, aliases=list(here.aliases),
                            also_used_by=[u for u in here.used_by if u.get("ref") != version.ref])
        inputs.append(item)
    return {"kind": "model", "ref": version.ref, "digest": f"sha:{version.digest}",
            "status": version.status, "data": inputs}


def dataset_lineage(version: DatasetVersion) -> dict[str, Any]:
    return {"kind": "dataset", "ref": version.ref, "digest": f"sha:{version.digest}",
            "status": version.status, "aliases": list(version.aliases),
            "used_by": [dict(u) for u in version.used_by]}


def _found(lookup: Any) -> Any:
    try:
        return lookup()
    except NotFound:
        return None
