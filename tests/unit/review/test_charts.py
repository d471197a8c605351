"""The dashboard's SVG charts, computed from plain rows."""

from __future__ import annotations

from datetime import UTC, datetime

from review.charts import HEIGHT, PAD, hourly_bars

NOW = datetime(2026, 3, 2, 15, 40, tzinfo=UTC)


def test_hourly_bars_stack_the_actions_of_each_hour_and_keep_empty_hours() -> None:
    rows = [
        {"hour": "2026-03-02T15:00:00+00:00", "action": "accept", "count": 3},
        {"hour": "2026-03-02T15:00:00+00:00", "action": "override", "count": 1},
        {"hour": "2026-03-02T12:00:00+00:00", "action": "skip", "count": 2},
        # Older than the window: not drawn.
        {"hour": "2026-02-27T09:00:00+00:00", "action": "accept", "count": 50},
    ]
    chart = hourly_bars(rows, NOW, hours=48)
    assert chart["top"] == 4 and chart["total"] == 6
    by_title = {b["title"]: b for b in chart["bars"]}
    assert set(by_title) == {
        "2026-03-02 15:00 UTC, accept: 3",
        "2026-03-02 15:00 UTC, override: 1",
        "2026-03-02 12:00 UTC, skip: 2",
    }
    accept, override = (
        by_title["2026-03-02 15:00 UTC, accept: 3"],
        by_title["2026-03-02 15:00 UTC, override: 1"],
    )
    full = HEIGHT - 2 * PAD
    # The tallest hour fills the chart; the override sits on top of the accepts, in the same slot.
    assert abs(accept["height"] + override["height"] - full) < 1e-6
    assert abs(override["y"] + override["height"] - accept["y"]) < 1e-6 and accept["x"] == override["x"]
    # The current hour is the last slot, three hours earlier is three slots to its left.
    skip = by_title["2026-03-02 12:00 UTC, skip: 2"]
    slot = accept["x"] - skip["x"]
    assert slot > 0 and abs(skip["height"] - full / 2) < 1e-6
    assert abs(slot - 3 * (chart["width"] - 2 * PAD) / 48) < 1e-6


def test_hourly_bars_with_no_decisions_draw_nothing() -> None:
    chart = hourly_bars([], NOW)
    assert chart["bars"] == [] and chart["top"] == 0 and chart["total"] == 0
    assert [label["text"] for label in chart["labels"]][:2] == ["18h", "00h"]
