"""Loaded versions: load through the registry, warm, predict.

`ModelPool.load` goes through `Registry.load`, so every byte is verified and
the environment is judged under the registry's policy (or the deployment's);
a version that does not match is refused with the registry's message, never
served. A loaded version is warmed on its stored input example before any
route switches to it.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _flavors as flavors
from .._errors import InvalidInput, UnsafeArtifact
from .._records import ModelVersion
from .._schema import RecordSchemaError, Signature, validate_records
from .drift import DriftMonitor
from .guard import refuse_non_finite

if TYPE_CHECKING:
    from .._contract import RegistryAPI


@dataclass
class LoadedModel:
    """One version, loaded and warmed, ready to predict on JSON records."""

    version: ModelVersion
    model: Any
    signature: Signature | None
    drift: DriftMonitor
    #: Whether it was loaded as trusted (its code ran because the endpoint vouched for it).
    loaded_trusted: bool = False
    labels: tuple[str, str, str] = field(init=False)  # model, version, digest

    #: Column order of the fast path for all-double inputs (None: no fast path).
    numeric_order: list[str] | None = field(init=False, default=None)
    #: Whether the fast path hands the model a bare float matrix (scikit-learn).
    matrix: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        v = self.version
        self.labels = (v.name, v.semver, f"sha:{v.digest}")
        self.numeric_order, self.matrix = _fast_path(self.signature, self.model, v.flavor)

    @property
    def ref(self) -> str:
        return self.version.ref

    @property
    def digest(self) -> str:
        return f"sha:{self.version.digest}"

    def prepare(self, records: list[dict[str, Any]],
                allow_non_finite: bool | Collection[str] = True) -> Any:
        """Records as the model takes them; RecordSchemaError names a bad field.

        Unless ``allow_non_finite`` is True, NaN, infinities and integers beyond
        the float range are refused (except in the fields it names). Whatever a
        record holds, a refusal is a RecordSchemaError, never another exception.
        """
        matrix = None
        if self.numeric_order is not None:
            matrix = _numeric_matrix(records, self.numeric_order)
            if matrix is not None and (allow_non_finite is True or np.isfinite(matrix).all()):
                return self._shaped(matrix)
        if allow_non_finite is not True:
            refuse_non_finite(records, self.signature, allow_non_finite)
        if matrix is not None:  # non-finite values, all in fields that allow them
            return self._shaped(matrix)
        try:
            if self.signature is not None:
                return validate_records(self.signature, records)
            return _frame(records)
        except (OverflowError, ValueError, TypeError, RecursionError) as error:
            raise RecordSchemaError(f"records cannot be read as this model's inputs: {error}",
                                    field=None, index=None,
                                    hint=None if self.signature is None else
                                    f"the model takes: {self.signature.inputs.describe()}"
                                    ) from None

    def named(self, rows: list[Any]) -> list[dict[str, Any]]:
        """Positional rows (``[[5.1, 3.5, 1.4, 0.2], ...]``) as records of this version.

        A row's values go to the signature's input fields in order; a tensor
        input takes each row whole, a one-field schema takes a bare value.
        """
        signature = self.signature
        if signature is None:
            raise RecordSchemaError(
                f"{self.ref} has no input schema, so values cannot be matched to fields by "
                "position", field=None, index=None,
                hint="send records with field names: {\"records\": [{\"name\": value, ...}]}")
        names = signature.inputs.names
        hint = f"the model takes, in this order: {signature.inputs.describe()}"
        if signature.inputs.kind == "tensor":
            return [{names[0]: row} for row in rows]
        width = len(names)
        out: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            if isinstance(row, list | tuple):
                if len(row) != width:
                    raise RecordSchemaError(
                        f"row {index} has {len(row)} value(s); {self.ref} takes {width}",
                        field=None, index=index, hint=hint)
                out.append(dict(zip(names, row, strict=True)))
            elif isinstance(row, Mapping):
                raise RecordSchemaError(
                    f"row {index} is an object among positional rows; send all rows as "
                    "lists of values or all as objects", field=None, index=index, hint=hint)
            elif width == 1:
                out.append({names[0]: row})
            else:
                raise RecordSchemaError(
                    f"row {index} is a single value; {self.ref} takes {width}",
                    field=None, index=index, hint=hint)
        return out

    def _shaped(self, matrix: Any) -> Any:
        if self.matrix:
            return matrix
        import pandas as pd

        return pd.DataFrame(matrix, columns=self.numeric_order)

    def predict(self, records: list[dict[str, Any]]) -> list[Any]:
        return self.predict_prepared(self.prepare(records))

    def predict_prepared(self, inputs: Any) -> list[Any]:
        output = flavors.model_predict(self.model, self.version.flavor, inputs)
        return jsonable(output)

    def warm(self) -> None:
        """Predict once on the stored input example (no-op without one)."""
        records = example_records(self.version.input_example, self.signature)
        if records:
            self.predict(records)


class ModelPool:
    """Loads versions for one endpoint (its trust and environment policy), once each."""

    def __init__(self, registry: RegistryAPI, *, trusted: bool = False,
                 trusted_until: Mapping[str, float] | None = None,
                 env_policy: str | None = None, drift_window: int = 1000,
                 deployment: str | None = None) -> None:
        self.registry = registry
        #: (trusted, the digests that may load as trusted and until when, or None for
        #: all): one value, so a load reads a whole revision's trust without a lock.
        self.trust = (trusted, trusted_until)
        self.deployment = deployment
        self.env_policy = env_policy
        self.drift_window = drift_window
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # one load at a time: the store is read serially

    def resolve(self, ref: str) -> ModelVersion:
        return self.registry.get(ref)

    def load(self, version: ModelVersion) -> LoadedModel:
        """The loaded, warmed version (cached by digest). Raises the registry's errors."""
        with self._lock:
            cached = self.reuse(self._loaded.get(version.digest))
            if cached is not None:
                return cached
            model, trusted = self._load_model(version)
            flavors.prepare_for_serving(model, version.flavor)
            signature = Signature.from_dict(version.signature) if version.signature else None
            reference = (version.lineage or {}).get("reference_stats")
            loaded = LoadedModel(version, model, signature,
                                 DriftMonitor(reference, window=self.drift_window), trusted)
            loaded.warm()
            self._loaded[version.digest] = loaded
            return loaded

    def set_trust(self, trusted: bool, until: Mapping[str, float] | None) -> None:
        """Trust as a new revision of the deployment says, for every load from now on (a
        revision that drops ``trusted`` let the next target, any contributor's, load
        trusted: the pool kept the trust it started with)."""
        self.trust = (trusted, until)

    def reuse(self, loaded: LoadedModel | None) -> LoadedModel | None:
        """``loaded`` (kept from before) if the endpoint's trust still allows it, else None.
        One loaded trusted once was switched back to after its signature was withdrawn or
        had expired (a review): its code had run, but serving it again is a new decision."""
        if loaded is None or not loaded.loaded_trusted or self._trusts(loaded.version.digest):
            return loaded
        return None

    def _trusts(self, digest: str) -> bool:
        """Whether a version with ``digest`` loads as trusted now: the endpoint is trusted
        and, when signatures decide, one lists it unexpired (checked at every load, not
        only when the record changes)."""
        trusted, until = self.trust
        return trusted and (until is None or until.get(digest, 0.0) > time.time())

    def _load_model(self, version: ModelVersion) -> tuple[Any, bool]:
        """The model, and whether it was loaded as trusted."""
        # version.digest was checked against its manifest (require_intact) by the registry
        # that answered, and the load below asks for exactly that digest.
        trusts = self._trusts(version.digest)
        try:
            return self.registry.load(
                f"{version.name}@sha:{version.digest}", env_policy=self.env_policy,
                trusted=trusts, use_lock=False,
            ), trusts
        except UnsafeArtifact as error:
            if trusts or not self.trust[0]:
                raise
            from .._registry.deployment_signing import sign_hint

            raise UnsafeArtifact(
                f"{error.message}. The endpoint is trusted in the deployment, but no "
                f"signature this replica checked (by a key in TETHER_LOAD_KEYS) lists "
                f"{version.ref} (sha:{version.digest[:12]})",
                hint=sign_hint(self.deployment or "NAME")) from error

    def forget(self, keep: Sequence[LoadedModel]) -> None:
        """Drop loaded versions not in ``keep`` (in-flight requests keep their own reference)."""
        digests = {m.version.digest for m in keep}
        with self._lock:
            for digest in [d for d in self._loaded if d not in digests]:
                del self._loaded[digest]


def _fast_path(signature: Signature | None, model: Any,
               flavor: Mapping[str, Any]) -> tuple[list[str] | None, bool]:
    """Whether records can skip the general validation: every input a non-null double.

    Such records become one float matrix; a DataFrame of it in signature order,
    or, for a scikit-learn model fitted on those very columns, the matrix itself
    in the order the model was fitted with (its feature-name check on a
    DataFrame costs more than the prediction).
    """
    if signature is None or signature.inputs.kind != "columns":
        return None, False
    fields = signature.inputs.fields
    if not fields or any(f.type != "double" or f.nullable for f in fields):
        return None, False
    names = [f.name for f in fields]
    fitted = getattr(model, "feature_names_in_", None)
    if flavor.get("name") == "sklearn" and fitted is not None and sorted(
            str(n) for n in fitted) == sorted(names):
        _quiet_feature_name_warning()
        return [str(n) for n in fitted], True
    return names, False


def _quiet_feature_name_warning() -> None:
    # Idempotent: an identical filter replaces the earlier one.
    warnings.filterwarnings("ignore", message="X does not have valid feature names",
                            category=UserWarning)


def _numeric_matrix(records: list[dict[str, Any]], order: list[str]) -> Any:
    """The float matrix of ``records``; None to take the general path."""
    try:
        rows = [[record[name] for name in order] for record in records]
    except (KeyError, TypeError):
        return None  # the general path names the missing field
    if not all(type(v) is float or type(v) is int for row in rows for v in row):
        return None
    try:
        return np.array(rows, dtype=float)
    except OverflowError:  # an int beyond the float range: the check names it
        return None


def example_records(example: Any, signature: Signature | None) -> list[dict[str, Any]]:
    """A stored input example as a list of records, when it can be one."""
    if isinstance(example, list) and example and all(isinstance(r, Mapping) for r in example):
        return [dict(r) for r in example]
    if isinstance(example, Mapping):
        columns = {k: v if isinstance(v, list) else [v] for k, v in example.items()}
        length = min((len(v) for v in columns.values()), default=0)
        return [{k: v[i] for k, v in columns.items()} for i in range(length)]
    if signature is not None and isinstance(example, list) and example:
        names = signature.inputs.names
        rows = [r for r in example if isinstance(r, list) and len(r) == len(names)]
        if len(rows) == len(example):
            return [dict(zip(names, r, strict=True)) for r in rows]
        if signature.inputs.kind == "vector":
            return [{names[0]: v} for v in example]
    return []


def jsonable(output: Any) -> list[Any]:
    """Predictions as a JSON-ready list (one item per record where the model gives that)."""
    if hasattr(output, "to_dict") and hasattr(output, "columns"):
        return list(output.to_dict(orient="records"))
    if hasattr(output, "tolist"):
        value = output.tolist()
        return value if isinstance(value, list) else [value]
    if isinstance(output, list | tuple):
        return [v.item() if isinstance(v, np.generic) else v for v in output]
    if isinstance(output, np.generic):
        return [output.item()]
    return [output]


def _frame(records: list[dict[str, Any]]) -> Any:
    """Records for a model without a signature: a DataFrame when pandas is there."""
    if not isinstance(records, list):
        raise RecordSchemaError("records must be a list of objects", field=None, index=None)
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas ships with the dev extras
        return records
    try:
        return pd.DataFrame.from_records(records)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"records cannot be read as a table: {error}") from error
