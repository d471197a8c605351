"""A line chart as SVG data for the dashboard's template: no JavaScript library, nothing fetched."""

from __future__ import annotations

from typing import Any

WIDTH, HEIGHT, PAD = 640, 220, 32
COLOURS = {"ari": "#1f77b4", "nmi": "#2ca02c", "stability_ari": "#d62728"}


def line_chart(xs: list[int], series: dict[str, list[float | None]]) -> dict[str, Any]:
    """Polylines over x = position (one point per clustering version), y in [0, 1] (scores may dip below)."""
    n = len(xs)
    values = [v for points in series.values() for v in points if v is not None]
    low = min([0.0, *values])

    def x(i: int) -> float:
        return PAD + (WIDTH - 2 * PAD) * (i / (n - 1) if n > 1 else 0.5)

    def y(value: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (value - low) / (1.0 - low or 1.0)

    lines = []
    for name, points in series.items():
        coordinates = [(x(i), y(v)) for i, v in enumerate(points) if v is not None]
        lines.append(
            {
                "name": name,
                "colour": COLOURS.get(name, "#555"),
                "points": " ".join(f"{a:.1f},{b:.1f}" for a, b in coordinates),
                "dots": coordinates,
                "last": next((v for v in reversed(points) if v is not None), None),
            }
        )
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "lines": lines,
        "labels": [{"x": x(i), "text": str(v)} for i, v in enumerate(xs)],
        "grid": [{"y": y(t), "text": f"{t:.1f}"} for t in (low, 0.5, 1.0)],
        "empty": n == 0,
    }
