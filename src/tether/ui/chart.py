"""A metric across versions as SVG geometry (drawn by the template, no JavaScript)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WIDTH = 640
HEIGHT = 220
PAD_LEFT = 56
PAD_RIGHT = 16
PAD_TOP = 14
PAD_BOTTOM = 34


def _tick(value: float) -> str:
    return f"{value:.4g}"


def line_chart(points: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """Coordinates for a polyline of ``(label, value)`` points, oldest first.

    Returns the viewBox size, the polyline, one marker per point (with its
    label and value for a tooltip), and a few y-axis ticks.
    """
    if not points:
        return {"width": WIDTH, "height": HEIGHT, "points": "", "markers": [], "ticks": []}
    values = [v for _, v in points]
    low, high = min(values), max(values)
    if high == low:
        spread = abs(high) * 0.05 or 1.0
        low, high = low - spread, high + spread
    inner_w = WIDTH - PAD_LEFT - PAD_RIGHT
    inner_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    step = inner_w / max(len(points) - 1, 1)

    def y_of(value: float) -> float:
        return PAD_TOP + inner_h * (1 - (value - low) / (high - low))

    markers = []
    for i, (label, value) in enumerate(points):
        x = PAD_LEFT + (step * i if len(points) > 1 else inner_w / 2)
        markers.append(
            {"x": round(x, 1), "y": round(y_of(value), 1), "label": label, "value": _tick(value)}
        )
    every = max(1, len(markers) // 8)
    for i, marker in enumerate(markers):
        marker["show_label"] = i % every == 0 or i == len(markers) - 1
    ticks = [
        {"y": round(y_of(low + (high - low) * k / 4), 1), "text": _tick(low + (high - low) * k / 4)}
        for k in range(5)
    ]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": PAD_LEFT,
        "right": WIDTH - PAD_RIGHT,
        "bottom": HEIGHT - PAD_BOTTOM,
        "points": " ".join(f"{m['x']},{m['y']}" for m in markers),
        "markers": markers,
        "ticks": ticks,
    }
