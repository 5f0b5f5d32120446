"""scikit-learn estimators and pipelines: skops (the default) or pickle.

skops stores a model as data plus the names of the types to rebuild. Without
trust, Tether rebuilds only the types skops trusts by default plus those the
*caller* names in ``trusted_types``. Trees (``sklearn.tree._tree.Tree``, inside
every forest and boosted model) are not among skops's defaults.

pickle runs code when loaded, so a pickled model loads only with
``trusted=True`` (given by the caller, or by the registry for a version signed
by a key it trusts for loading). The import scan is reported, never obeyed.

The record's ``trusted_types`` (what skops reported as untrusted at save time)
is information for people; it travels with the artifact, so whoever wrote the
artifact wrote it too, and loading never takes trust from it.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import IntegrityError, InvalidInput, UnsafeArtifact
from .base import TRUST_HINT, framework_fields, qualified_class
from .pickle_scan import untrusted_pickle_error

FRAMEWORK = ["scikit-learn", "scipy", "numpy"]
_ENTRIES = {"skops": "model.skops", "pickle": "model.pkl"}
DEFAULT_SERIALIZATION = "skops"


class SklearnFlavor:
    name: str = "sklearn"

    def save(self, model: Any, dest: Path, **options: Any) -> dict[str, Any]:
        serialization = options.get("serialization") or DEFAULT_SERIALIZATION
        if serialization not in _ENTRIES:
            raise InvalidInput(
                f"unknown serialization {serialization!r} for a scikit-learn model",
                hint="use serialization='skops' (the default) or 'pickle' (loads only trusted)",
            )
        entry = _ENTRIES[serialization]
        extra: dict[str, Any] = {}
        if serialization == "pickle":
            with open(dest / entry, "wb") as handle:
                pickle.dump(model, handle, protocol=5)
            packages = FRAMEWORK
        else:
            import skops.io

            skops.io.dump(model, dest / entry)
            _canonical_skops(dest / entry)
            packages = [*FRAMEWORK, "skops"]
            needed = skops.io.get_untrusted_types(file=dest / entry)
            extra["trusted_types"] = [str(t) for t in needed]
        return {
            "name": self.name,
            "serialization": serialization,
            "entry": entry,
            "python_class": qualified_class(model),
            **extra,
            **framework_fields(packages),
        }

    def load(
        self,
        src: Path,
        record: dict[str, Any],
        *,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
    ) -> Any:
        serialization = record.get("serialization", "pickle")
        if serialization not in _ENTRIES:
            raise InvalidInput(
                f"this scikit-learn model was saved as {serialization!r}, "
                "which this version of Tether cannot load",
                hint="upgrade Tether",
            )
        path = src / _entry_name(record, _ENTRIES[serialization])
        label = f"{record.get('python_class', 'a scikit-learn model')} ({path.name})"
        if serialization == "skops":
            return _load_skops(path, label=label, trusted=trusted, trusted_types=trusted_types)
        raw = path.read_bytes()
        if not trusted:
            raise untrusted_pickle_error(raw, serialization="pickle", label=label)
        return pickle.loads(raw)

    def predict(self, model: Any, data: Any) -> Any:
        if not hasattr(model, "predict"):
            raise InvalidInput(f"{type(model).__name__} has no predict method")
        return model.predict(data)


def _entry_name(record: dict[str, Any], default: str) -> str:
    entry = str(record.get("entry") or default)
    if "/" in entry or "\\" in entry or entry in (".", ".."):
        raise InvalidInput(f"the scikit-learn record names {entry!r}, not a file name")
    return entry


def _canonical_skops(path: Path) -> None:
    """Rewrite a skops dump so that the same model always gives the same bytes.

    skops names its memo entries and array files after ``id()`` of the objects
    (and ``bytes`` files after a random uuid) and stamps each zip entry with the
    time; both change on every save, so an identical model would register as a
    new version. Ids and file names are renumbered from 1 in order of first
    appearance (one-to-one, so every shared object stays shared), except that
    immutable values (JSON literals, types) each get their own id: whether two
    equal floats were one object in memory says nothing about the model. The
    entries are written in a fixed order with a fixed time.
    """
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
        contents = {name: archive.read(name) for name in archive.namelist()}
    ids: dict[int, int] = {}
    files: dict[str, str] = {}
    fresh = iter(range(1, 1 << 62))  # 0 would read as "no id" to skops

    def renumber(node: Any) -> Any:
        if isinstance(node, list):
            return [renumber(item) for item in node]
        if not isinstance(node, dict):
            return node
        immutable = node.get("__loader__") in ("JsonNode", "TypeNode")
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "__id__" and isinstance(value, int) and not isinstance(value, bool):
                out[key] = next(fresh) if immutable or value not in ids else ids[value]
                ids.setdefault(value, out[key])
            elif key == "file" and isinstance(value, str) and value in contents:
                suffix = value[value.rfind(".") :] if "." in value else ""
                out[key] = files.setdefault(value, f"{len(files)}{suffix}")
            else:
                out[key] = renumber(value)
        return out

    canonical = renumber(schema)
    written = {files[name]: data for name, data in contents.items() if name in files}
    written["schema.json"] = json.dumps(canonical, indent=2).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(written):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, written[name])


#: The most a skops file's entries may inflate to, together (its schema is read whole).
MAX_SKOPS_INFLATED = 4 << 30
#: ... and its schema.json alone (a description of the objects, not their arrays).
MAX_SKOPS_SCHEMA = 256 << 20


def _refuse_a_zip_bomb(path: Path, label: str) -> None:
    """Refuse a skops file whose entries inflate past the limits, before skops reads it: a
    2 MB model.skops whose schema.json inflated to 2 GB took 4.5 GB and 55 s to read its
    types (a review), whoever sent it (an import source, a registry)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as error:
        raise IntegrityError(f"{label} is not a skops file: {error}") from None
    schema = sum(i.file_size for i in infos if i.filename == "schema.json")
    total = sum(i.file_size for i in infos)
    if schema > MAX_SKOPS_SCHEMA or total > MAX_SKOPS_INFLATED:
        raise UnsafeArtifact(
            f"refusing to load {label}: its skops entries inflate to {total} bytes "
            f"(schema {schema}), past {MAX_SKOPS_INFLATED} ({MAX_SKOPS_SCHEMA} for the "
            "schema)", hint="a skops file that large is not a model skops wrote")


def _load_skops(path: Path, *, label: str, trusted: bool, trusted_types: Sequence[str]) -> Any:
    import skops.io

    _refuse_a_zip_bomb(path, label)
    # Reads the schema only: nothing is imported or built yet.
    untrusted = [str(t) for t in skops.io.get_untrusted_types(file=path)]
    if trusted:
        accepted = untrusted  # the caller trusts the author: every type the file names
    else:
        allowed = {_type_name(t) for t in trusted_types}
        refused = [t for t in untrusted if t not in allowed]
        if refused:
            raise UnsafeArtifact(
                f"refusing to load {label}: it is stored as skops and names types skops "
                f"does not trust by default, which the caller did not trust: "
                f"{', '.join(refused)}{_why(refused)}",
                hint=(
                    f"after reviewing them, pass trusted_types={refused!r} to the flavor's load; "
                    f"or {TRUST_HINT}"
                ),
            )
        accepted = [t for t in untrusted if t in allowed]
    return skops.io.load(path, trusted=accepted)


def _type_name(t: Any) -> str:
    return t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}"


def _why(refused: list[str]) -> str:
    if any(t.startswith("sklearn.tree.") for t in refused):
        return (
            " (skops does not trust decision trees by default, so every forest and "
            "boosted model needs sklearn.tree._tree.Tree trusted)"
        )
    return ""
