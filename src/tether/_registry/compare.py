"""Comparing two versions: params, metrics, signature, environment, files."""

from __future__ import annotations

from typing import Any

from .._environment import compare_environments
from .._records import ModelVersion
from .._schema import Signature, check_compatibility
from .._store.chunklist import KnownChunks

__all__ = ["KnownChunks", "diff_versions"]


def _mapping_diff(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            rows.append({"name": key, "change": "removed", "old": old[key], "new": None})
        elif key not in old:
            rows.append({"name": key, "change": "added", "old": None, "new": new[key]})
        elif old[key] != new[key]:
            rows.append({"name": key, "change": "changed", "old": old[key], "new": new[key]})
    return rows


def _metrics_diff(old: dict[str, float], new: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        delta = b - a if a is not None and b is not None else None
        rows.append({"name": key, "old": a, "new": b, "delta": delta})
    return rows


def _signature_diff(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    if old is None or new is None:
        same = old == new
        return {
            "compatible": same,
            "reasons": [] if same else ["one version has no signature"],
            "changed": not same,
        }
    verdict = check_compatibility(Signature.from_dict(old), Signature.from_dict(new))
    return {
        "compatible": verdict.compatible,
        "reasons": list(verdict.reasons),
        "changed": old != new,
    }


def _files_diff(old: ModelVersion, new: ModelVersion) -> dict[str, Any]:
    before = {f.path: f for f in old.files}
    after = {f.path: f for f in new.files}
    rows = []
    for path in sorted(set(before) | set(after)):
        a, b = before.get(path), after.get(path)
        if a is None:
            change = "added"
        elif b is None:
            change = "removed"
        elif a.digest != b.digest:
            change = "changed"
        else:
            change = "same"
        rows.append(
            {
                "path": path,
                "change": change,
                "old_size": a.size if a else None,
                "new_size": b.size if b else None,
            }
        )
    old_chunks = KnownChunks(f.chunks for f in old.files)
    shared = sum(old_chunks.shared_bytes(f.chunks) for f in new.files)
    return {"files": rows, "new_bytes": new.size - shared, "shared_bytes": shared}


def diff_versions(old: ModelVersion, new: ModelVersion) -> dict[str, Any]:
    frameworks = list(new.flavor.get("framework_packages", []))
    env = compare_environments(old.environment, new.environment, frameworks)
    old_git = old.lineage.get("git") or {}
    new_git = new.lineage.get("git") or {}
    return {
        "old": old.ref,
        "new": new.ref,
        "old_digest": old.short_digest,
        "new_digest": new.short_digest,
        "params": _mapping_diff(old.params, new.params),
        "metrics": _metrics_diff(old.metrics, new.metrics),
        "signature": _signature_diff(old.signature, new.signature),
        "data": _mapping_diff(
            {k: v.get("digest") for k, v in old.data.items()},
            {k: v.get("digest") for k, v in new.data.items()},
        ),
        "environment": [d.to_dict() for d in env],
        "files": _files_diff(old, new),
        "lineage": {
            "old_commit": old_git.get("commit"),
            "new_commit": new_git.get("commit"),
            "old_dirty": old_git.get("dirty"),
            "new_dirty": new_git.get("dirty"),
        },
    }
