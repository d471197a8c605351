"""Charts as SVG data for the dashboard's template: no JavaScript library, nothing fetched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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


ACTION_COLOURS = {"accept": "#2ca02c", "override": "#1f77b4", "skip": "#999999", "undo": "#d62728"}


def hourly_bars(per_hour: list[dict[str, Any]], now: datetime, hours: int = 48) -> dict[str, Any]:
    """Stacked bars, one per hour of the last `hours` (empty hours too), one colour per action.

    `per_hour`: rows `{hour: ISO start of the hour (UTC), action, count}` as
    `common.moderation.decisions.stats` gives them.
    """
    last = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    starts = [last - timedelta(hours=hours - 1 - i) for i in range(hours)]
    counts: dict[datetime, dict[str, int]] = {start: {} for start in starts}
    for row in per_hour:
        at = datetime.fromisoformat(row["hour"]).astimezone(UTC)
        if at in counts:
            counts[at][row["action"]] = counts[at].get(row["action"], 0) + int(row["count"])
    top = max((sum(c.values()) for c in counts.values()), default=0)
    slot = (WIDTH - 2 * PAD) / hours
    bars = []
    for i, start in enumerate(starts):
        base = float(HEIGHT - PAD)
        for action in ACTION_COLOURS:
            n = counts[start].get(action, 0)
            if not n:
                continue
            height = (HEIGHT - 2 * PAD) * n / top
            base -= height
            bars.append(
                {
                    "x": PAD + i * slot + 1,
                    "y": base,
                    "width": max(slot - 2, 1),
                    "height": height,
                    "colour": ACTION_COLOURS[action],
                    "title": f"{start:%Y-%m-%d %H}:00 UTC, {action}: {n}",
                }
            )
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "bars": bars,
        "top": top,
        "total": sum(sum(c.values()) for c in counts.values()),
        "legend": [{"action": a, "colour": c} for a, c in ACTION_COLOURS.items()],
        "labels": [
            {"x": PAD + i * slot + slot / 2, "text": f"{start:%H}h"}
            for i, start in enumerate(starts)
            if start.hour % 6 == 0
        ],
    }
