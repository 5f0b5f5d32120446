"""Input examples: what a flavor predicts on them, and how they are stored."""

from __future__ import annotations

from typing import Any

#: Rows of an input example kept in the registry; enough to show the shape.
_EXAMPLE_ROWS = 5


def feature_names(model: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None


def predictions_for(model: Any, flavor_record: dict[str, Any], example: Any) -> Any:
    """Predictions on the example, to infer the output schema; None when not a predictor."""
    if flavor_record.get("name") == "files":
        return None
    try:
        from .. import _flavors as flavors  # imported when a model runs

        return flavors.model_predict(model, flavor_record, example)
    except Exception:
        return None


def example_to_json(example: Any) -> Any:
    """A small JSON form of the example: the first rows as records or lists."""
    if example is None:
        return None
    if hasattr(example, "to_dict") and hasattr(example, "columns"):
        return example.head(_EXAMPLE_ROWS).to_dict(orient="records")
    if hasattr(example, "tolist"):
        return example[:_EXAMPLE_ROWS].tolist()
    if isinstance(example, list):
        return example[:_EXAMPLE_ROWS]
    if isinstance(example, dict):
        return {k: (v[:_EXAMPLE_ROWS] if isinstance(v, list) else v) for k, v in example.items()}
    return example
