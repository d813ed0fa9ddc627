"""Geometry of the overview's small charts, drawn by the templates as inline SVG.

Each chart is a row of one bar per minute in a 0..WIDTH x 0..HEIGHT box; the template
stretches it to the card's width. Numbers only: nothing here comes from a task's data.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

WIDTH = 600
HEIGHT = 120
#: Segments of a throughput bar, bottom up, with the CSS class that colours each.
FINISHED = ("success", "failed", "cancelled")


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above `value` (at least 1): the axis top."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def _minute(row: dict[str, Any]) -> str:
    minute = row["minute"]
    return minute.strftime("%H:%M") if isinstance(minute, datetime) else str(minute)


def throughput(series: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked bars of tasks finished per minute by status, and a tick per minute of submitted."""
    count = max(len(series), 1)
    slot = WIDTH / count
    top = nice_ceiling(max([sum(r["finished"].values()) for r in series] + [r["submitted"] for r in series] + [0]))
    bars = []
    for i, row in enumerate(series):
        x = i * slot
        base = HEIGHT
        segments = []
        for status in FINISHED:
            n = row["finished"].get(status, 0)
            if n:
                height = HEIGHT * n / top
                base -= height
                segments.append({"status": status, "y": round(base, 2), "height": round(height, 2)})
        submitted_y = round(HEIGHT - HEIGHT * row["submitted"] / top, 2) if row["submitted"] else None
        done = ", ".join(f"{row['finished'].get(s, 0)} {s}" for s in FINISHED if row["finished"].get(s))
        bars.append({
            "x": round(x + slot * 0.1, 2), "width": round(slot * 0.8, 2), "segments": segments,
            "submitted_y": submitted_y,
            "label": f"{_minute(row)}: {row['submitted']} submitted, {row['started']} started"
                     + (f", finished {done}" if done else ", none finished"),
        })
    return {"width": WIDTH, "height": HEIGHT, "top": _number(top), "bars": bars, "gridlines": _gridlines()}


def queue_wait(series: list[dict[str, Any]]) -> dict[str, Any]:
    """Per minute, a light bar to the p95 queue wait and a dark one to the p50 (seconds)."""
    count = max(len(series), 1)
    slot = WIDTH / count
    waits = [r.get("queue_wait") or {} for r in series]
    top = nice_ceiling(max([w.get("p95") or 0 for w in waits] + [0]))
    bars = []
    for i, (row, wait) in enumerate(zip(series, waits, strict=True)):
        p50, p95 = wait.get("p50"), wait.get("p95")
        if p95 is None:
            continue
        bars.append({
            "x": round(i * slot + slot * 0.1, 2), "width": round(slot * 0.8, 2),
            "p95_y": round(HEIGHT - HEIGHT * p95 / top, 2), "p95_height": round(HEIGHT * p95 / top, 2),
            "p50_y": round(HEIGHT - HEIGHT * (p50 or 0) / top, 2), "p50_height": round(HEIGHT * (p50 or 0) / top, 2),
            "label": f"{_minute(row)}: queue wait p50 {seconds(p50)}, p95 {seconds(p95)}",
        })
    return {"width": WIDTH, "height": HEIGHT, "top": seconds(top), "bars": bars, "gridlines": _gridlines()}


def _gridlines() -> list[float]:
    return [round(HEIGHT * f, 2) for f in (0.0, 0.5)]


def _number(value: float) -> str:
    return f"{value:g}"


def seconds(value: float | None) -> str:
    """A duration in seconds as an operator reads it: 40 ms, 2.5 s, 3 min 20 s, 2 h 5 min."""
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.3g} s"
    if value < 3600:
        minutes, secs = divmod(round(value), 60)
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, rest = divmod(round(value), 3600)
    return f"{hours} h {rest // 60} min" if rest // 60 else f"{hours} h"
