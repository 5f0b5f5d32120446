"""The drift baseline: statistics of a version's inputs, recorded when it is logged with data.

The serving layer compares live inputs against them (PSI, KS) to measure drift.
Per feature: numeric ones keep decile edges with the fraction of rows in each
bin and a capped, sorted sample for a two-sample KS test; categorical ones keep
their frequencies. Stored in ``lineage["reference_stats"]``, outside the
version digest: statistics describe data the digest already covers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


#: Quantile cut points of numeric features: deciles make the usual 10-bin PSI.
BINS = 10
#: Categories kept per feature; the rest are counted together as OTHER.
MAX_CATEGORIES = 50
OTHER = "__other__"
#: Values kept per numeric feature for KS, and over all features together.
SAMPLE_CAP = 1000
_TOTAL_SAMPLE_CAP = 20_000
#: Rows read from a CSV file given as ``data=``.
_CSV_ROWS = 200_000
#: Dataset names preferred as the reference, in this order.
_PREFERRED = ("train", "training", "reference", "X_train", "x_train")


def lineage_entry(data: Any, signature: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"reference_stats": ...}`` for a version's lineage, or ``{}`` without usable data."""
    try:
        stats = compute(data, signature)
    except Exception:  # statistics are an extra; they never block a log
        return {}
    return {"reference_stats": stats} if stats else {}


def compute(data: Any, signature: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Per-feature statistics of the first usable dataset in ``data=``, or None."""
    chosen = _choose_dataset(data)
    if chosen is None:
        return None
    name, table = chosen
    columns = _columns(table, _input_names(signature))
    if not columns:
        return None
    per_feature_cap = max(100, min(SAMPLE_CAP, _TOTAL_SAMPLE_CAP // len(columns)))
    features = {
        column: feature_stats(values, sample_cap=per_feature_cap)
        for column, values in columns.items()
    }
    rows = len(next(iter(columns.values())))
    return {"dataset": name, "rows": rows, "features": features}


def feature_stats(values: Any, *, sample_cap: int = SAMPLE_CAP) -> dict[str, Any]:
    """Statistics of one column (numpy array, pandas Series or list)."""
    import numpy as np  # here: `tether versions` and other readers never need it

    array = np.asarray(values)
    if array.dtype.kind in "iuf":
        return _numeric(array.astype(float), sample_cap)
    return _categorical(list(array.tolist()))


def _numeric(array: np.ndarray[Any, Any], sample_cap: int) -> dict[str, Any]:
    import numpy as np

    finite = array[np.isfinite(array)]
    missing = 1.0 - len(finite) / len(array) if len(array) else 0.0
    if len(finite) == 0:
        return {
            "kind": "numeric",
            "count": 0,
            "missing": missing,
            "edges": [],
            "fractions": [1.0],
            "sample": [],
        }
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1)
    sample = finite
    if len(finite) > sample_cap:
        sample = np.random.default_rng(0).choice(finite, size=sample_cap, replace=False)
    return {
        "kind": "numeric",
        "count": len(finite),
        "missing": float(missing),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "edges": [float(e) for e in edges],
        "fractions": [float(c) / len(finite) for c in counts],
        "sample": [float(v) for v in np.sort(sample)],
    }


def _categorical(values: list[Any]) -> dict[str, Any]:
    present = [str(v) for v in values if not _missing(v)]
    missing = 1.0 - len(present) / len(values) if values else 0.0
    counts: dict[str, int] = {}
    for value in present:
        counts[value] = counts.get(value, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    total = max(len(present), 1)
    frequencies = {k: c / total for k, c in ranked[:MAX_CATEGORIES]}
    rest = sum(c for _, c in ranked[MAX_CATEGORIES:])
    if rest:
        frequencies[OTHER] = rest / total
    return {
        "kind": "categorical",
        "count": len(present),
        "missing": float(missing),
        "frequencies": frequencies,
    }


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _input_names(signature: Mapping[str, Any] | None) -> list[str] | None:
    if not signature or not isinstance(signature.get("inputs"), Mapping):
        return None
    fields = signature["inputs"].get("fields") or []
    names = [str(f.get("name")) for f in fields if isinstance(f, Mapping)]
    return names or None


def _choose_dataset(data: Any) -> tuple[str, Any] | None:
    if data is None:
        return None
    if isinstance(data, str | Path):
        data = {Path(data).name: data}
    elif _is_table(data):
        data = {"data": data}
    if not isinstance(data, Mapping):
        return None
    ordered = sorted(
        data.items(),
        key=lambda kv: _PREFERRED.index(kv[0]) if kv[0] in _PREFERRED else len(_PREFERRED),
    )
    for name, value in ordered:
        table = _read(value)
        if table is not None:
            return str(name), table
    return None


def _is_table(value: Any) -> bool:
    if hasattr(value, "columns") and hasattr(value, "iloc"):
        return True
    return hasattr(value, "shape") and hasattr(value, "dtype") and len(value.shape) == 2


def _read(value: Any) -> Any:
    if _is_table(value):
        return value
    if isinstance(value, str | Path) and str(value).endswith(".csv") and Path(value).is_file():
        try:
            import pandas as pd
        except ImportError:
            return None
        return pd.read_csv(value, nrows=_CSV_ROWS)
    return None


def _columns(table: Any, names: list[str] | None) -> dict[str, Any]:
    """Column name -> values, limited to the signature's inputs when it names them."""
    import numpy as np

    if hasattr(table, "columns") and hasattr(table, "iloc"):
        found = {str(c): table[c].to_numpy() for c in table.columns}
    else:
        array = np.asarray(table)
        width = array.shape[1]
        labels = (
            names if names is not None and len(names) == width else [f"f{j}" for j in range(width)]
        )
        found = {labels[j]: array[:, j] for j in range(width)}
    if names is None:
        return found
    return {name: found[name] for name in names if name in found}
